"""The transparency report: released figures against a ground truth kept while the workflow ran (on SQLite and on
Redis), as means over many independent releases within the noise the report states; a month released once and
read back unchanged; an open month refused unless previewed; the pages and the CLI. The statistical attack on the
guarantee is in ``test_transparency_privacy.py``."""

from __future__ import annotations

import collections
import csv
import inspect
import io
import math
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dispatcher.cli import main
from dispatcher.dispatch.gate import OwnerGate
from dispatcher.errors import DispatchError, InvalidReportSettings, MonthNotClosed, ReleaseStoreError
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.reports import privacy
from dispatcher.reports.privacy import PrivacySettings
from dispatcher.reports.releases import ReleaseStore
from dispatcher.reports.transparency import (
    ALL,
    COUNTS,
    NOT_PARTNER,
    RULE_ORDER,
    RULES,
    TransparencyReport,
    build_report,
    tally,
)
from dispatcher.workflow import pipeline, policy
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.review import STATES, TRANSITIONS, Workflow
from dispatcher.workflow.store import RedisStore, SqliteStore
from tests.video_requests import JOINED, LAT0, LNG0, square
from tests.video_requests import request as make_request

HOSTILE = '=HYPERLINK("http://x.invalid")<script>alert(1)</script>&amp;'
K = 4
MONTHS = (datetime(2026, 9, 1, tzinfo=timezone.utc), datetime(2026, 10, 1, tzinfo=timezone.utc))
#: both months closed (October closes 7 days after its last day)
CLOSED = datetime(2026, 11, 9, tzinfo=timezone.utc)
SETTINGS = PrivacySettings(k=K)
#: what each published column adds up, by the report's definitions (kept here, not taken from the library)
COLUMN_CELLS = {
    "submitted": ("pending", "approved_not_dispatched", "dispatched", "rejected_by_reviewer", "refused"),
    "approved": ("approved_not_dispatched", "dispatched"),
    "rejected": ("rejected_by_reviewer", "refused"),
    "dispatched": ("dispatched",),
    "notifications": ("shared", "not_shared"),
    "shares": ("shared",),
    "rule:reviewer": ("rejected_by_reviewer",),
    **{f"rule:{c}": (f"rule:{c}",) for c in (*policy.RULE_CODES, "other")},
}
MEASUREMENT = {c: "residents" if c in ("notifications", "shares") else "rules" if c.startswith("rule:")
               and c != "rule:reviewer" else "requests" for c in COLUMN_CELLS}


def _registry() -> AgencyRegistry:
    return AgencyRegistry([
        Agency("il-chicago", "Chicago Police Department", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED),
        Agency("il-evanston", "Evanston Police Department", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED),
        Agency("il-evil", HOSTILE, "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED),
    ])


class Truth:
    """What the report must say, kept by the test as it drives the workflow: per (month, row) the count of
    each request outcome, of refusals by their first rule, of notifications shared and not."""

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
        self.areas: dict[str, list[float]] = collections.defaultdict(list)
        self.windows: dict[str, list[float]] = collections.defaultdict(list)

    def row(self, month: str, agency: str) -> collections.Counter:
        if agency == ALL:
            c: collections.Counter = collections.Counter()
            for (m, _), v in self.cells.items():
                if m == month:
                    c.update(v)
            return c
        return self.cells[(month, agency)]

    def column(self, month: str, agency: str, column: str) -> int:
        c = self.row(month, agency)
        return sum(c[x] for x in COLUMN_CELLS[column])


def drive(wf: Workflow, seed: int = 7) -> Truth:
    """Requests for three partners and some from nobody, over two months: accepted, refused for one or several
    rules, approved, rejected by a reviewer, left pending, dispatched to owners who share or decline."""
    rng = np.random.default_rng(seed)
    truth = Truth()
    owner = 1000
    n = 0
    plan = {"il-chicago": (19, 6), "il-evanston": (6, 2), "il-evil": (3, 1), "xx-nobody": (0, 2)}
    for month0 in MONTHS:
        m = f"{month0:%Y-%m}"
        for agency, (n_ok, n_bad) in plan.items():
            c = truth.cells[(m, agency if agency != "xx-nobody" else NOT_PARTNER)]
            for j in range(n_ok + n_bad):
                n += 1
                t = month0 + timedelta(days=1 + j, hours=int(rng.integers(0, 20)))
                rid = f"r{n}"
                hours = float(rng.choice([0.5, 1, 2, 4]))
                sq = float(rng.choice([0.05, 0.1, 0.2, 0.4]))
                kw = dict(request_id=rid, agency_id=agency, submitted_at=t, area=square(sq),
                          start=t - timedelta(hours=3 + hours), end=t - timedelta(hours=3))
                if j >= n_ok:  # refused: one rule, or two (counted under the one the policy checks first)
                    if agency == "xx-nobody":
                        first = "unknown_agency"
                    elif j % 2:
                        kw["case_number"], first = "!", "case_number"
                    else:
                        kw["case_number"], kw["incident_type"], first = "!", "protest", "case_number"
                    with pytest.raises(DispatchError):
                        wf.submit(make_request(**kw), t)
                    c["refused"] += 1
                    c[f"rule:{first}"] += 1
                    continue
                wf.submit(make_request(**kw), t)
                truth.areas[m].append(sq)
                truth.windows[m].append(hours * 60)
                fate = rng.random()
                if fate < 0.12:
                    c["pending"] += 1
                    continue
                if fate < 0.25:
                    wf.reject(rid, "rev", t + timedelta(minutes=5), "not specific enough")
                    c["rejected_by_reviewer"] += 1
                    continue
                wf.approve(rid, "rev", t + timedelta(minutes=5))
                if rng.random() < 0.2:
                    c["approved_not_dispatched"] += 1
                    continue
                owners = np.arange(owner, owner + int(rng.integers(0, 6)), dtype=np.int64)
                owner += 10
                OwnerGate(wf.store, wf.policy).admit(rid, owners, t + timedelta(minutes=6))
                wf.mark_dispatched(rid, t + timedelta(minutes=7))
                c["dispatched"] += 1
                for o in owners.tolist():
                    if rng.random() < 0.4:
                        wf.share(rid, o, ["clip-a"], t + timedelta(hours=1))
                        c["shared"] += 1
                    else:
                        c["not_shared"] += 1
                        if rng.random() < 0.5:
                            wf.decline(rid, o, t + timedelta(hours=1))
    return truth


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "store.sqlite")
        yield s
        s.close()
    else:
        yield RedisStore.from_url(request.getfixturevalue("redis_server").url)


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth, TransparencyReport]:
    path = tmp_path_factory.mktemp("transparency") / "store.sqlite"
    store = SqliteStore(path)
    registry = _registry()
    truth = drive(Workflow(store, registry))
    return path, truth, _build(store, registry)


def _build(store, registry, settings: PrivacySettings = SETTINGS, releases: ReleaseStore | None = None,
           **kw) -> TransparencyReport:
    kw = {"since": "2026-09", "until": "2026-10", "now": CLOSED, **kw}
    return build_report(store, registry, releases=releases or ReleaseStore(":memory:"), privacy_settings=settings,
                        **kw)


def test_rows_columns_and_the_floor(sqlite_run) -> None:
    """Every partner has a row each month, active or not, with every rule column; nothing under k is shown."""
    _, truth, report = sqlite_run
    assert report.months == ["2026-09", "2026-10"] and not report.preview
    assert report.rules == RULES and RULES[-2:] == ("other", "reviewer")
    for month in report.months:
        rows = [r for r in report.rows if r.month == month]
        assert [r.agency_id for r in rows] == [ALL, "il-evil", "il-chicago", "il-evanston", NOT_PARTNER]
        assert rows[0].agency == "All agencies" and rows[-1].agency == "Not a partner agency"
        for r in rows:
            assert set(r.released) == {*COUNTS, *(f"rule:{x}" for x in RULES)}
            for col, v in r.released.items():
                assert v is not None  # every count is released with the default budget
                assert r.counts[col] == (v if v >= K else None)
                assert r.text(col) == (str(v) if v >= K else f"< {K}")
            if r.share_rate is not None:
                assert r.counts["shares"] is not None and r.counts["notifications"]
                assert 0 <= r.share_rate <= 1
            else:
                assert r.counts["shares"] is None or r.counts["notifications"] is None
            if r.agency_id != ALL:
                assert r.median_area_sq_mi is None and r.median_window_min is None
    # a month where nobody did anything still has every row: a row's presence is not data
    quiet = _build(SqliteStore(":memory:"), _registry(), since="2026-08", until="2026-08")
    assert [r.agency_id for r in quiet.rows] == [ALL, "il-evil", "il-chicago", "il-evanston", NOT_PARTNER]


def test_the_all_agencies_row_is_the_sum_of_the_rows(sqlite_run) -> None:
    _, _, report = sqlite_run
    for month in report.months:
        rows = [r for r in report.rows if r.month == month]
        for col in rows[0].released:
            assert rows[0].released[col] == sum(r.released[col] for r in rows[1:]), (month, col)
    assert all(rel.derived == ("requests_all", "rules_all", "residents_all") for rel in report.releases)


def _sd(rel, column: str, agency: str) -> float:
    """The noise of a released column, from the scale the release states and the cells the column adds up."""
    meas, cells = MEASUREMENT[column], len(COLUMN_CELLS[column])
    if agency == ALL and f"{meas}_all" in rel.scales:
        return privacy.noise_sd(rel.scales[f"{meas}_all"], cells)
    n = len(rel.rows) - 1 if agency == ALL else 1
    return privacy.noise_sd(rel.scales[meas], cells * n)


@pytest.mark.parametrize("settings", [
    SETTINGS,
    # the all-agencies row as measurements of its own, with shares of the budget
    PrivacySettings(k=K, epsilon=2.0, budget_requests=0.2, budget_requests_all=0.1, budget_rules=0.05,
                    budget_rules_all=0.05, budget_residents=0.3, budget_residents_all=0.2),
], ids=["all-is-the-sum", "all-on-its-own"])
def test_released_figures_match_the_truth_on_average(sqlite_run, settings: PrivacySettings) -> None:
    """Over many independent releases (fresh release stores), each figure's mean is the true count within the
    sampling error of the noise the release states, and the noise is as wide as stated (pooled variance)."""
    path, truth, _ = sqlite_run
    store, registry = SqliteStore(path), _registry()
    n = 150
    got: dict[tuple[str, str, str], list[int]] = collections.defaultdict(list)
    for _ in range(n):
        report = _build(store, registry, settings)
        for r in report.rows:
            for col, v in r.released.items():
                got[(r.month, r.agency_id, col)].append(v)  # type: ignore[arg-type]
    rel = {m.month: m for m in report.releases}
    eps = settings.epsilon_of
    for m in rel.values():
        # the scales are the ones the stated sensitivities and budgets give
        assert m.scales["requests"] == pytest.approx(1 / eps("requests"), rel=1e-6)
        assert m.scales["rules"] == pytest.approx(1 / eps("rules"), rel=1e-6)
        assert m.scales["residents"] == pytest.approx(m.resident_sensitivity / eps("residents"), rel=1e-6)
        days = (CLOSED - datetime.strptime(m.month, "%Y-%m").replace(tzinfo=timezone.utc)) / timedelta(days=1)
        assert m.resident_sensitivity == 3 * math.ceil(days)
    z = []
    for (month, agency, col), values in got.items():
        want = truth.column(month, agency, col)
        sd = _sd(rel[month], col, agency)
        mean = float(np.mean(values))
        assert abs(mean - want) <= 5 * sd / math.sqrt(n), (month, agency, col, mean, want, sd)
        if MEASUREMENT[col] == "requests":
            z += [(v - want) / sd for v in values]
    # pooled over many figures, the noise has the stated spread: not less (the guarantee), not more (utility)
    assert 0.85 < float(np.var(z)) < 1.15


def test_medians_are_private_medians_of_the_right_requests(sqlite_run) -> None:
    """With a large median budget the exponential mechanism all but always picks a candidate that splits the
    month's accepted requests about in half (between their 40th and 60th percentiles, give or take one step of
    the grid); and it picks only candidates of the grid the policy's bounds make."""
    path, truth, _ = sqlite_run
    settings = PrivacySettings(k=K, epsilon=20.0, budget_requests=0.05, budget_rules=0.05, budget_median_area=0.4,
                               budget_median_window=0.4, budget_residents=0.1)
    got: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for _ in range(40):
        report = _build(SqliteStore(path), _registry(), settings)
        for r in report.rows:
            if r.agency_id == ALL:
                got[(r.month, "area")].append(r.median_area_sq_mi)  # type: ignore[arg-type]
                got[(r.month, "window")].append(r.median_window_min)  # type: ignore[arg-type]
    grids = {"area": (privacy.median_candidates(0.025, 0.5), 0.025), "window": (privacy.median_candidates(15, 720), 15)}
    for month in report.months:
        for what, values in (("area", truth.areas[month]), ("window", truth.windows[month])):
            grid, step = grids[what]
            lo, hi = np.quantile(values, 0.4) - step - 1e-9, np.quantile(values, 0.6) + step + 1e-9
            released = np.array(got[(month, what)])
            assert set(released) <= set(grid)
            assert np.mean((lo <= released) & (released <= hi)) > 0.8, (month, what, lo, hi, released)


def test_a_month_is_released_once_and_never_revised(sqlite_run, tmp_path: Path) -> None:
    path, _, _ = sqlite_run
    store, registry = SqliteStore(path), _registry()
    first = _build(store, registry, releases=ReleaseStore(tmp_path / "releases.sqlite"))
    # another process, later, with other settings: the figures as published, and the settings they were under
    again = _build(store, registry, PrivacySettings(k=K, epsilon=3.0), ReleaseStore(tmp_path / "releases.sqlite"),
                   now=CLOSED + timedelta(days=40))
    assert again.rows == first.rows and again.releases == first.releases
    assert again.to_csv() == first.to_csv()
    assert all(rel.settings.epsilon == 1.0 for rel in again.releases)
    assert ReleaseStore(tmp_path / "releases.sqlite").months() == ["2026-09", "2026-10"]
    # the file refuses to change a release
    db = sqlite3.connect(tmp_path / "releases.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="never revised"):
        db.execute("UPDATE releases SET body = x'00'")
    with pytest.raises(sqlite3.DatabaseError, match="never revised"):
        db.execute("DELETE FROM releases")
    # a release of another format, or not a release file at all, is refused with a typed error
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(ReleaseStoreError):
        ReleaseStore(tmp_path / "junk.sqlite")
    odd = ReleaseStore(tmp_path / "odd.sqlite")
    with sqlite3.connect(tmp_path / "odd.sqlite") as db:
        db.execute("INSERT INTO releases VALUES ('2026-09', 0, ?)", (b'{"format": 99}',))
    with pytest.raises(ReleaseStoreError, match="format 99"):
        _build(store, registry, releases=odd)


def test_an_open_month_is_refused_unless_previewed(sqlite_run) -> None:
    path, _, _ = sqlite_run
    store, registry = SqliteStore(path), _registry()
    releases = ReleaseStore(":memory:")
    october_open = datetime(2026, 11, 5, tzinfo=timezone.utc)  # October closes on November 8
    with pytest.raises(MonthNotClosed, match="2026-10 closes at 2026-11-08") as ei:
        _build(store, registry, releases=releases, now=october_open)
    assert isinstance(ei.value, ValueError)
    assert releases.months() == []  # nothing released, not even the closed September
    # by default a report stops at the last closed month
    assert _build(store, registry, releases=releases, now=october_open, until=None).months == ["2026-09"]
    assert releases.months() == ["2026-09"]
    # an operator's preview: fresh noise for the open month, stored nowhere, marked on every page
    preview = _build(store, registry, releases=releases, now=october_open, preview=True)
    assert preview.preview and preview.months == ["2026-09", "2026-10"]
    assert [r.preview for r in preview.releases] == [False, True]
    assert releases.months() == ["2026-09"]
    html, text = preview.to_html(), preview.to_csv()
    assert "INTERNAL PREVIEW, NOT FOR PUBLICATION" in html and "(internal preview)" in html
    assert text.splitlines()[1].startswith("# INTERNAL PREVIEW, NOT FOR PUBLICATION")
    assert "PREVIEW" not in _build(store, registry, releases=releases, now=october_open, until=None).to_html()


@pytest.mark.redis
def test_both_stores_give_the_same_tally(store, sqlite_run) -> None:
    path, truth, _ = sqlite_run
    registry = _registry()
    got_truth = drive(Workflow(store, registry))
    assert got_truth.cells == truth.cells
    months = ["2026-09", "2026-10"]
    want = tally(SqliteStore(path), registry, months)
    got = tally(store, registry, months)
    assert {m: {a: (t.cells, t.areas, t.windows) for a, t in rows.items()} for m, rows in got.items()} == \
        {m: {a: (t.cells, t.areas, t.windows) for a, t in rows.items()} for m, rows in want.items()}
    for m in months:
        for (month, agency), cells in truth.cells.items():
            if month == m:
                assert +got[m][agency].cells == +cells, (m, agency)
    refused = [e for e in store.audit() if e["action"] == "submission_refused"]
    assert {e["detail"]["agency_id"] for e in refused} == {"il-chicago", "il-evanston", "il-evil", "xx-nobody"}


def test_rule_codes_and_states_come_from_the_workflow() -> None:
    """The report's rule columns are the policy's own list, in the order the rules are checked, and it counts the
    review's own states: the policy's list names every code :func:`validate` (with its area shape rules) and the
    pipeline can give."""
    source = inspect.getsource(policy.validate)
    shapes = re.findall(r'out\.append\(\("(\w+)"', inspect.getsource(policy._shape_problems))
    emitted = re.findall(r'v\.(?:append\(\("(\w+)"|(extend)\(_shape_problems)', source)
    codes = [c for code, ext in emitted for c in ([code] if code else shapes)]
    codes += re.findall(r'RequestRejected\(\[\("(\w+)"', inspect.getsource(pipeline))
    assert tuple(dict.fromkeys(codes)) == policy.RULE_CODES
    assert RULE_ORDER == (*policy.RULE_CODES, "reviewer")
    assert RULES == (*policy.RULE_CODES, "other", "reviewer")
    assert set(STATES) == set(TRANSITIONS) and set(COUNTS[:4]) <= set(STATES)


def _csv_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    lines = text.splitlines()
    notes = [x for x in lines if x.startswith("#")]
    return notes, list(csv.DictReader(io.StringIO("\n".join(x for x in lines if not x.startswith("#")))))


def test_csv(sqlite_run) -> None:
    _, _, report = sqlite_run
    notes, rows = _csv_rows(report.to_csv())
    header = "\n".join(notes)
    for fact in ("epsilon = 1 for the month", "sensitivity 1", "sensitivity 207", "sensitivity 117",
                 "epsilon 0.3 for the agency rows' outcomes", "epsilon 0.5 for the agency rows' notifications",
                 "95 times in 100"):
        assert fact in header, fact
    assert len(rows) == len(report.rows)
    assert list(rows[0])[:7] == ["month", "agency_id", "agency", "state", "submitted", "approved", "rejected"]
    evil = [r for r in rows if r["agency_id"] == "il-evil"]
    assert evil and all(r["agency"] == "'" + HOSTILE for r in evil)  # never a formula in a spreadsheet
    for r, pub in zip(rows, report.rows):
        assert r["submitted"] == pub.text("submitted").replace(" ", "")
        for col in ("submitted", "approved", "rejected", "dispatched", "notifications_sent"):
            assert r[col] == f"<{K}" or int(r[col]) >= K


def test_html_in_chromium(sqlite_run, visit) -> None:
    _, _, report = sqlite_run
    html = report.to_html()
    assert "<script>alert" not in html and HOSTILE not in html
    v = visit(html, "transparency-report")
    page = v.page
    assert page.locator("#report tbody tr").count() == len(report.rows)
    assert page.locator("#report tbody tr.all").count() == len(report.months)
    evil = page.locator('#report tbody tr[data-agency="il-evil"]')
    assert evil.count() == 2 and evil.first.locator("td").nth(1).inner_text() == HOSTILE
    cols = [*("submitted", "approved", "rejected"), *(f"rule:{x}" for x in report.rules), "dispatched",
            "notifications"]
    n_floor = sum(r.text(c).startswith("<") for r in report.rows for c in cols)
    assert page.locator("td.floor").count() == n_floor > 20
    assert page.locator("td.floor").first.inner_text() == f"< {K}"
    n_withheld = sum(x is None for r in report.rows for x in (r.median_area_sq_mi, r.median_window_min))
    n_withheld += sum(r.rate_text == "" for r in report.rows)
    assert page.locator("td.withheld").count() == n_withheld
    header = page.locator("#report thead").inner_text()
    for label in ("submitted", "approved", "rejected", "by a reviewer", "case number", "other or malformed",
                  "dispatched", "median area (sq mi)", "median window (min)", "notifications sent", "share rate"):
        assert label in header
    # every number a person can read in the table is a released figure of at least k
    for cell in page.locator("#report tbody td.n").all_inner_texts():
        if cell.isdigit():
            assert int(cell) >= K
    guarantee = page.locator("#guarantee").inner_text()
    assert "epsilon = 1 for the month" in guarantee and "sensitivity 117" in guarantee
    assert page.locator("#guarantee table.noise tbody tr").count() == 2 * 8
    assert page.locator("#preview").count() == 0
    v.screenshot("transparency-report")
    v.assert_clean()


def test_periods_and_bad_settings(sqlite_run) -> None:
    path, _, _ = sqlite_run
    store, registry = SqliteStore(path), _registry()
    releases = ReleaseStore(":memory:")
    full = _build(store, registry, releases=releases)
    oct_only = _build(store, registry, releases=releases, since="2026-10")
    assert oct_only.months == ["2026-10"]
    assert oct_only.rows == tuple(r for r in full.rows if r.month == "2026-10")
    empty = _build(store, registry, since="2026-11", until="2026-10")
    assert empty.rows == () and "No closed month in this period" in empty.to_html()
    # by default, from the month the first partner joined
    assert _build(store, registry, since=None, until="2020-02").months == ["2020-01", "2020-02"]
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(InvalidReportSettings, match="k must be"):
            PrivacySettings(k=bad)
    for bad in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(InvalidReportSettings, match="epsilon must be"):
            PrivacySettings(epsilon=bad)
    with pytest.raises(InvalidReportSettings, match="add up to 1"):
        PrivacySettings(budget_requests=0.5)
    with pytest.raises(InvalidReportSettings, match="budget_rules must be"):
        PrivacySettings(budget_rules=-0.1, budget_requests=0.5)
    with pytest.raises(InvalidReportSettings, match="unknown setting 'epsilom'"):
        PrivacySettings.from_dict({"epsilom": 2})
    assert PrivacySettings.from_dict({"epsilon": 2, "settle": 86400}).settle == timedelta(days=1)
    with pytest.raises(InvalidReportSettings, match="YYYY-MM"):
        _build(store, registry, since="2026-13")


def test_cli_report(sqlite_run, tmp_path: Path) -> None:
    path, _, _ = sqlite_run
    runner = CliRunner()
    _registry().save_parquet(tmp_path / "agencies.parquet")
    args = ["report", "transparency", "--store", str(path), "--agencies", str(tmp_path / "agencies.parquet"),
            "--releases", str(tmp_path / "releases.sqlite"), "--since", "2026-09", "--until", "2026-10",
            "--k", str(K), "--html", str(tmp_path / "t.html"), "--csv", str(tmp_path / "t.csv")]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "over 2 months" in r.output and "2 released now" in r.output
    assert (tmp_path / "t.html").read_text().count("<tr class=") > 5
    first = (tmp_path / "t.csv").read_text()
    assert first.startswith("# Transparency report\n")
    assert "\nmonth,agency_id,agency,state,submitted" in first
    r = runner.invoke(main, [*args, "--epsilon", "4"])
    assert r.exit_code == 0, r.output
    assert "0 released now" in r.output and (tmp_path / "t.csv").read_text() == first
    future = [*args[:-4], "--since", "2099-01", "--until", "2099-01", "--html", str(tmp_path / "p.html"),
              "--csv", str(tmp_path / "p.csv")]
    r = runner.invoke(main, future)
    assert isinstance(r.exception, MonthNotClosed)
    r = runner.invoke(main, [*future, "--preview"])
    assert r.exit_code == 0, r.output
    assert "INTERNAL PREVIEW" in r.output and "INTERNAL PREVIEW" in (tmp_path / "p.html").read_text()
    assert ReleaseStore(tmp_path / "releases.sqlite").months() == ["2026-09", "2026-10"]
    (tmp_path / "settings.json").write_text('{"epsilon": 2, "budget_residents": 0.4, "budget_residents_all": 0.1}')
    r = runner.invoke(main, [*args[:-4], "--since", "2026-08", "--until", "2026-08", "--settings",
                             str(tmp_path / "settings.json"), "--html", str(tmp_path / "s.html"), "--csv",
                             str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    assert "epsilon = 2 for the month" in (tmp_path / "s.csv").read_text()
    r = runner.invoke(main, [*args, "--k", "0"])
    assert isinstance(r.exception, InvalidReportSettings)

"""The transparency report: figures against a ground truth kept while the workflow ran (on SQLite and on Redis),
small counts withheld, and an attacker who knows every published figure and every relation between them solving
integer programs (scipy's MILP) for each withheld count: none is narrowed below the width of "1 to k-1"."""

from __future__ import annotations

import collections
import csv
import inspect
import io
import re
import statistics
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.optimize import Bounds, LinearConstraint, milp

from dispatcher.cli import main
from dispatcher.dispatch.gate import OwnerGate
from dispatcher.errors import DispatchError, InvalidReportSettings, SuppressionAuditFailed
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.reports.suppression import Relation, suppress
from dispatcher.reports.transparency import ALL, COUNTS, NOT_PARTNER, RULE_ORDER, TransparencyReport, build_report
from dispatcher.workflow import pipeline, policy
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.review import STATES, TRANSITIONS, Workflow
from dispatcher.workflow.store import RedisStore, SqliteStore
from tests.video_requests import JOINED, LAT0, LNG0, square
from tests.video_requests import request as make_request

HOSTILE = '=HYPERLINK("http://x.invalid")<script>alert(1)</script>&amp;'
K = 4
MONTHS = (datetime(2026, 9, 1, tzinfo=timezone.utc), datetime(2026, 10, 1, tzinfo=timezone.utc))


def _registry() -> AgencyRegistry:
    return AgencyRegistry([
        Agency("il-chicago", "Chicago Police Department", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED),
        Agency("il-evanston", "Evanston Police Department", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED),
        Agency("il-evil", HOSTILE, "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED),
    ])


class Truth:
    """What the report must say, kept by the test as it drives the workflow."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
        self.areas: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self.windows: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self.pending: collections.Counter = collections.Counter()
        self.extra: collections.Counter = collections.Counter()

    def total(self, month: str) -> tuple[collections.Counter, list[float], list[float], int, int]:
        keys = [key for key in self.counts if key[0] == month]
        c: collections.Counter = collections.Counter()
        for key in keys:
            c.update(self.counts[key])
        return (c, sum((self.areas[x] for x in keys), []), sum((self.windows[x] for x in keys), []),
                sum(self.pending[x] for x in keys), sum(self.extra[x] for x in keys))


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
            row = (m, agency if agency != "xx-nobody" else NOT_PARTNER)
            for j in range(n_ok + n_bad):
                n += 1
                t = month0 + timedelta(days=1 + j, hours=int(rng.integers(0, 20)))
                rid = f"r{n}"
                hours = float(rng.choice([0.5, 1, 2, 4]))
                sq = float(rng.choice([0.05, 0.1, 0.2, 0.4]))
                kw = dict(request_id=rid, agency_id=agency, submitted_at=t, area=square(sq),
                          start=t - timedelta(hours=3 + hours), end=t - timedelta(hours=3))
                c = truth.counts[row]
                c["submitted"] += 1
                if j >= n_ok:  # refused: one rule, or two
                    if agency == "xx-nobody":
                        codes = {"unknown_agency"}
                    elif j % 2:
                        kw["case_number"], codes = "!", {"case_number"}
                    else:
                        kw["case_number"], kw["incident_type"], codes = "!", "protest", {"case_number",
                                                                                         "incident_type"}
                    with pytest.raises(DispatchError):
                        wf.submit(make_request(**kw), t)
                    c["rejected"] += 1
                    c.update(f"rule:{x}" for x in codes)
                    truth.extra[row] += len(codes) - 1
                    continue
                wf.submit(make_request(**kw), t)
                truth.areas[row].append(sq)
                truth.windows[row].append(hours * 60)
                fate = rng.random()
                if fate < 0.12:
                    truth.pending[row] += 1
                    continue
                if fate < 0.25:
                    wf.reject(rid, "rev", t + timedelta(minutes=5), "not specific enough")
                    c["rejected"] += 1
                    c["rule:reviewer"] += 1
                    continue
                wf.approve(rid, "rev", t + timedelta(minutes=5))
                c["approved"] += 1
                if rng.random() < 0.2:
                    continue
                owners = np.arange(owner, owner + int(rng.integers(0, 6)), dtype=np.int64)
                owner += 10
                OwnerGate(wf.store, wf.policy).admit(rid, owners, t + timedelta(minutes=6))
                wf.mark_dispatched(rid, t + timedelta(minutes=7))
                c["dispatched"] += 1
                c["notifications"] += len(owners)
                for o in owners.tolist():
                    if rng.random() < 0.4:
                        wf.share(rid, o, ["clip-a"], t + timedelta(hours=1))
                        c["shares"] += 1
                    elif rng.random() < 0.5:
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
    return path, truth, build_report(store, registry, k=K, now=datetime(2026, 11, 2, tzinfo=timezone.utc))


def _published_shares(row) -> int | None:
    if row.rate_text == "n/a":
        return 0  # no notification sent, so no share
    if row.share_rate is None:
        return None
    return round(row.share_rate * row.counts["notifications"])


def check_against_truth(report: TransparencyReport, truth: Truth, k: int) -> None:
    months = sorted({m for m, _ in truth.counts})
    assert report.months == months
    for month in months:
        rows = [r for r in report.rows if r.month == month]
        keys = [key for key in truth.counts if key[0] == month]
        assert rows[0].agency_id == ALL and rows[0].agency == "All agencies"
        assert sorted(r.agency_id for r in rows[1:]) == sorted(a for _, a in keys)
        for r in rows:
            if r.agency_id == ALL:
                c, areas, windows, _, _ = truth.total(month)
            else:
                key = (month, r.agency_id)
                c, areas, windows = truth.counts[key], truth.areas[key], truth.windows[key]
            for col, v in r.counts.items():
                if col == "shares":
                    continue  # not a column of the report: published through the share rate
                if v is None:
                    continue
                assert v == c[col], (month, r.agency_id, col)
                assert not 0 < v < k
            for col, v in c.items():
                if 0 < v < k and col != "shares":
                    assert r.counts[col] is None, (month, r.agency_id, col, v)
            assert (r.median_area_sq_mi is None) == (len(areas) < k)
            if len(areas) >= k:
                assert r.median_area_sq_mi == pytest.approx(statistics.median(areas), rel=1e-6)
                assert r.median_window_min == pytest.approx(statistics.median(windows), rel=1e-9)
            shares = _published_shares(r)
            if shares is not None:
                assert shares == c["shares"] and not 0 < shares < k
                assert r.counts["notifications"] is not None
            elif 0 < c["shares"] < k or r.counts["notifications"] is None:
                assert r.share_rate is None


def attack(report: TransparencyReport, truth: Truth, k: int) -> dict[tuple, tuple[float, float]]:
    """Integer ranges an attacker can prove for each withheld count a month holds, from what is published and the
    relations the report's definitions imply (set up here from those definitions, not from the library's)."""
    out = {}
    rules = [f"rule:{r}" for r in report.rules]
    cols = ["submitted", "approved", "rejected", "dispatched", "notifications", "shares", *rules]
    for month in report.months:
        rows = [r for r in report.rows if r.month == month]
        known: dict[tuple[str, str], int | None] = {}
        for r in rows:
            for col in cols:
                known[(r.agency_id, col)] = _published_shares(r) if col == "shares" else r.counts[col]
        var = [key for key, v in known.items() if v is None]
        if not var:
            continue
        idx = {key: j for j, key in enumerate(var)}
        specs: list[tuple[list[tuple[tuple[str, str], int]], float, bool]] = []
        parts = [r.agency_id for r in rows if r.agency_id != ALL]
        for col in cols:
            specs.append(([((ALL, col), 1), *(((a, col), -1) for a in parts)], 0, True))
        for r in rows:
            a = r.agency_id
            if a == ALL:
                _, _, _, pending, extra = truth.total(month)
            else:
                pending, extra = truth.pending[(month, a)], truth.extra[(month, a)]
            specs.append(([((a, "submitted"), 1), ((a, "approved"), -1), ((a, "rejected"), -1)], pending, True))
            specs.append(([((a, "rejected"), 1), *(((a, x), -1) for x in rules)], -extra, True))
            specs.append(([((a, "dispatched"), 1), ((a, "approved"), -1)], 0, False))
            specs.append(([((a, "shares"), 1), ((a, "notifications"), -1)], 0, False))
            specs += [([((a, x), 1), ((a, "rejected"), -1)], 0, False) for x in rules]
        eq, ub = [], []
        for terms, const, equal in specs:
            row, c = np.zeros(len(var)), float(const)
            for key, coef in terms:
                if key in idx:
                    row[idx[key]] += coef
                else:
                    c -= coef * known[key]
            (eq if equal else ub).append((row, c))
        cons = [LinearConstraint(np.array([r for r, _ in eq]), [c for _, c in eq], [c for _, c in eq])] if eq else []
        if ub:
            cons.append(LinearConstraint(np.array([r for r, _ in ub]), -np.inf, [c for _, c in ub]))
        for key in var:
            ends = []
            for sign in (1, -1):
                obj = np.zeros(len(var))
                obj[idx[key]] = sign
                res = milp(obj, constraints=cons, integrality=np.ones(len(var)), bounds=Bounds(0, 10**6))
                assert res.status == 0, res.message
                ends.append(sign * res.fun)
            out[(month, *key)] = (ends[0], ends[1])
    return out


def check_attack(report: TransparencyReport, truth: Truth, k: int) -> int:
    ranges = attack(report, truth, k)
    primary = 0
    for (month, a, col), (lo, hi) in ranges.items():
        c = truth.total(month)[0] if a == ALL else truth.counts[(month, a)]
        assert lo <= c[col] <= hi  # the truth is consistent with what the attacker sees
        if 0 < c[col] < k:
            primary += 1
            assert hi - lo >= k - 1, (month, a, col, c[col], lo, hi)
    return primary


def test_report_matches_the_truth_and_protects_small_counts(sqlite_run) -> None:
    _, truth, report = sqlite_run
    check_against_truth(report, truth, K)
    assert check_attack(report, truth, K) > 10  # many small counts were there to protect
    assert report.rules == ("unknown_agency", "case_number", "incident_type", "reviewer")
    # the big agency's first month is published; a refusal naming no partner has its row
    chicago = next(r for r in report.rows if r.month == "2026-09" and r.agency_id == "il-chicago")
    assert chicago.counts["submitted"] == 25 and chicago.median_area_sq_mi is not None
    assert any(r.agency_id == NOT_PARTNER and r.agency == "Not a partner agency" for r in report.rows)


@pytest.mark.redis
def test_both_stores_give_the_same_report(store, sqlite_run) -> None:
    _, truth, want = sqlite_run
    registry = _registry()
    got_truth = drive(Workflow(store, registry))
    assert got_truth.counts == truth.counts
    got = build_report(store, registry, k=K, now=want.generated_at)
    assert got == want
    refused = [e for e in store.audit() if e["action"] == "submission_refused"]
    assert {e["detail"]["agency_id"] for e in refused} == {"il-chicago", "il-evanston", "il-evil", "xx-nobody"}


def test_suppression_without_totals_of_one_small_cell() -> None:
    """The textbook case: a total beside one small cell. Withholding the cell alone would give it away."""
    values = {"total": 30, "a": 27, "b": 3, "c": 0}
    hidden = suppress(values, [Relation.total("total", ["a", "b", "c"])], k=5)
    assert hidden == {"a", "b"}  # the smallest non-zero partner goes with it; zero tells nothing
    assert suppress({"t": 12, "a": 6, "b": 6}, [Relation.total("t", ["a", "b"])], k=5) == set()


def test_suppression_errors_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidReportSettings, match="unknown cell 'd'"):
        suppress({"t": 3, "a": 3}, [Relation.total("t", ["a", "d"])], k=5)
    import scipy.optimize

    failed = SimpleNamespace(status=4, message="numerical difficulties", fun=0.0)
    monkeypatch.setattr(scipy.optimize, "linprog", lambda *a, **kw: failed)
    with pytest.raises(SuppressionAuditFailed, match="numerical difficulties") as ei:
        suppress({"total": 30, "a": 27, "b": 3, "c": 0}, [Relation.total("total", ["a", "b", "c"])], k=5)
    assert isinstance(ei.value, RuntimeError)


def test_rule_codes_and_states_come_from_the_workflow() -> None:
    """The report orders its rule columns by the policy's own list, and counts the review's own states: the
    policy's list names every code :func:`validate` (with its area shape rules) and the pipeline can give, in the
    order they are checked."""
    source = inspect.getsource(policy.validate)
    shapes = re.findall(r'out\.append\(\("(\w+)"', inspect.getsource(policy._shape_problems))
    emitted = re.findall(r'v\.(?:append\(\("(\w+)"|(extend)\(_shape_problems)', source)
    codes = [c for code, ext in emitted for c in ([code] if code else shapes)]
    codes += re.findall(r'RequestRejected\(\[\("(\w+)"', inspect.getsource(pipeline))
    assert tuple(dict.fromkeys(codes)) == policy.RULE_CODES
    assert RULE_ORDER == (*policy.RULE_CODES, "reviewer")
    assert set(STATES) == set(TRANSITIONS) and set(COUNTS[:4]) <= set(STATES)


def test_suppression_random_tables() -> None:
    """Random tables with row and column totals: nothing under k shown, and each withheld small count keeps a
    range of at least k - 1 for an attacker solving integer programs."""
    rng = np.random.default_rng(3)
    for trial in range(25):
        k = int(rng.integers(2, 8))
        n_rows, n_cols = int(rng.integers(2, 5)), int(rng.integers(2, 5))
        grid = rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 40], size=(n_rows, n_cols))
        values = {(i, j): int(grid[i, j]) for i in range(n_rows) for j in range(n_cols)}
        values |= {(i, "T"): int(grid[i].sum()) for i in range(n_rows)}
        values |= {("T", j): int(grid[:, j].sum()) for j in range(n_cols)}
        values[("T", "T")] = int(grid.sum())
        rels = [Relation.total((i, "T"), [(i, j) for j in range(n_cols)]) for i in (*range(n_rows), "T")]
        rels += [Relation.total(("T", j), [(i, j) for i in range(n_rows)]) for j in (*range(n_cols), "T")]
        hidden = suppress(values, rels, k)
        assert all(key in hidden for key, v in values.items() if 0 < v < k)
        keys = sorted(hidden, key=repr)
        if not keys:
            continue
        idx = {key: j for j, key in enumerate(keys)}
        a, b = [], []
        for rel in rels:
            row, c = np.zeros(len(keys)), float(rel.const)
            for key, coef in rel.terms:
                if key in idx:
                    row[idx[key]] += coef
                else:
                    c -= coef * values[key]
            a.append(row)
            b.append(c)
        cons = LinearConstraint(np.array(a), b, b)
        for key in keys:
            if not 0 < values[key] < k:
                continue
            ends = []
            for sign in (1, -1):
                obj = np.zeros(len(keys))
                obj[idx[key]] = sign
                res = milp(obj, constraints=[cons], integrality=np.ones(len(keys)), bounds=Bounds(0, 10**6))
                ends.append(sign * res.fun)
            assert ends[1] - ends[0] >= k - 1, (trial, key, values[key], ends)


def test_csv(sqlite_run) -> None:
    _, truth, report = sqlite_run
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert len(rows) == len(report.rows)
    assert list(rows[0])[:7] == ["month", "agency_id", "agency", "state", "submitted", "approved", "rejected"]
    evil = [r for r in rows if r["agency_id"] == "il-evil"]
    assert evil and all(r["agency"] == "'" + HOSTILE for r in evil)  # never a formula in a spreadsheet
    for r, pub in zip(rows, report.rows):
        assert r["submitted"] == ("" if pub.counts["submitted"] is None else str(pub.counts["submitted"]))
        for col in ("submitted", "approved", "rejected", "dispatched", "notifications_sent"):
            assert r[col] == "" or not 0 < int(r[col]) < K


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
    withheld = page.locator("td.withheld")
    n_withheld = sum(v is None for r in report.rows for c, v in r.counts.items() if c != "shares")
    n_withheld += sum(x is None for r in report.rows for x in (r.median_area_sq_mi, r.median_window_min))
    n_withheld += sum(r.rate_text == "" for r in report.rows)
    assert withheld.count() == n_withheld > 20
    assert withheld.first.inner_text() == "\u2013"
    header = page.locator("#report thead").inner_text()
    for label in ("submitted", "approved", "rejected", "by a reviewer", "case number", "dispatched",
                  "median area (sq mi)", "median window (min)", "notifications sent", "share rate"):
        assert label in header
    # every number a person can read in the table is a published figure: 0 or at least k
    for cell in page.locator("#report tbody td.n").all_inner_texts():
        if cell.isdigit():
            assert int(cell) == 0 or int(cell) >= K
    v.screenshot("transparency-report")
    v.assert_clean()


def test_periods_and_bad_settings(sqlite_run) -> None:
    path, _, full = sqlite_run
    store, registry = SqliteStore(path), _registry()
    oct_only = build_report(store, registry, k=K, since="2026-10", now=full.generated_at)
    assert oct_only.months == ["2026-10"]
    assert oct_only.rows == tuple(r for r in full.rows if r.month == "2026-10")
    assert build_report(store, registry, k=K, until="2026-08").rows == ()
    assert "No request reached the platform" in build_report(store, registry, until="2026-08").to_html()
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(InvalidReportSettings, match="k must be"):
            build_report(store, registry, k=bad)
    with pytest.raises(InvalidReportSettings, match="YYYY-MM"):
        build_report(store, registry, since="2026-13")


def test_cli_report(sqlite_run, tmp_path: Path) -> None:
    path, _, _ = sqlite_run
    runner = CliRunner()
    _registry().save_parquet(tmp_path / "agencies.parquet")
    r = runner.invoke(main, ["report", "transparency", "--store", str(path), "--agencies",
                             str(tmp_path / "agencies.parquet"), "--k", str(K), "--html", str(tmp_path / "t.html"),
                             "--csv", str(tmp_path / "t.csv")])
    assert r.exit_code == 0, r.output
    assert "over 2 months" in r.output
    assert (tmp_path / "t.html").read_text().count("<tr class=") > 5
    assert (tmp_path / "t.csv").read_text().startswith("month,agency_id,agency,state,submitted")
    r = runner.invoke(main, ["report", "transparency", "--store", str(path), "--agencies",
                             str(tmp_path / "agencies.parquet"), "--k", "0"])
    assert isinstance(r.exception, InvalidReportSettings)

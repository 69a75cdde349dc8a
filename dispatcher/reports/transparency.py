"""The public transparency report: per agency and per month, requests submitted, approved and rejected (by rule),
dispatched, the median area and window, notifications sent and the share rate; as HTML and CSV.

Everything comes from what the workflow store records:

- the audit log: ``submitted`` (a request accepted for review), ``submission_refused`` (refused by the policy;
  its ``codes`` are the broken rules and ``agency_id`` the agency it named), ``approved``, ``rejected`` (by a
  reviewer: counted under the rule ``reviewer``), ``dispatched``;
- the stored request: its agency, area (square miles, as the policy measured it) and window;
- the notified set the owners' gate keeps per request (an owner is recorded once, when admitted for sending):
  notifications sent;
- owner choices: a share is an owner who shared clips.

A request counts in the month it reached the platform (UTC), in every column: a row describes one cohort of
requests and what became of them. Every partner that had joined by the end of a month has a row in it, whatever
it did (the list of partners is public; a row that appeared only with activity would tell of it); a refusal
naming anyone else counts in the row "not a partner agency". A refused submission counts under the first rule it
broke, in the order the policy checks them.

The figures are released with differential privacy (:mod:`dispatcher.reports.privacy`), once per month after the
month closes, and kept (:mod:`dispatcher.reports.releases`): a later build publishes the same figures. A released
figure under ``k`` is shown as "< k" (:func:`dispatcher.reports.suppression.floor`).
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from dispatcher.errors import InvalidReportSettings, MonthNotClosed
from dispatcher.reports import privacy
from dispatcher.reports.pages import esc, page
from dispatcher.reports.privacy import PrivacySettings
from dispatcher.reports.releases import MonthRelease, ReleasedRow, ReleaseStore
from dispatcher.reports.suppression import floor
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.policy import RULE_CODES, Policy
from dispatcher.workflow.review import APPROVED, DISPATCHED, REJECTED, SHARE, SUBMITTED, aware_now
from dispatcher.workflow.store import Store

log = logging.getLogger(__name__)

#: The rule a reviewer's rejection counts under, and the one a code the policy does not list counts under.
REVIEWER = "reviewer"
OTHER = "other"
#: Rules in the order the policy checks them, then the reviewer.
RULE_ORDER = (*RULE_CODES, REVIEWER)
#: The report's rule columns, the same every month whatever happened in it.
RULES = (*RULE_CODES, OTHER, REVIEWER)
COUNTS = (SUBMITTED, APPROVED, REJECTED, DISPATCHED, "notifications", "shares")
COLUMNS = (*COUNTS, *(f"rule:{r}" for r in RULES))
ALL = "*"            # the row key of a month's "all agencies" row
NOT_PARTNER = ""     # the row key of refusals naming no partner agency

#: The cells each count measurement releases: a request is in exactly one outcome cell, a refused submission in
#: one rule cell, a notification in one of shared / not shared.
CELLS: dict[str, tuple[str, ...]] = {
    "requests": ("pending", "approved_not_dispatched", "dispatched", "rejected_by_reviewer", "refused"),
    "rules": tuple(f"rule:{c}" for c in (*RULE_CODES, OTHER)),
    "residents": ("shared", "not_shared"),
}
#: Each published count: the measurement it comes from and the cells it adds up.
FIGURES: dict[str, tuple[str, tuple[str, ...]]] = {
    SUBMITTED: ("requests", CELLS["requests"]),
    APPROVED: ("requests", ("approved_not_dispatched", "dispatched")),
    REJECTED: ("requests", ("rejected_by_reviewer", "refused")),
    DISPATCHED: ("requests", ("dispatched",)),
    "notifications": ("residents", CELLS["residents"]),
    "shares": ("residents", ("shared",)),
    f"rule:{REVIEWER}": ("requests", ("rejected_by_reviewer",)),
    **{c: ("rules", (c,)) for c in CELLS["rules"]},
}
_ACCEPTED = ("pending", "approved_not_dispatched", "dispatched", "rejected_by_reviewer")


# ------------------------------------------------------------------------------------------------- months

def _month(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m")


def check_month(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m").strftime("%Y-%m")
    except (TypeError, ValueError):
        raise InvalidReportSettings(f"{what} must be a month as YYYY-MM, got {str(value)[:40]!r}") from None


def month_start(month: str) -> datetime:
    return datetime.strptime(month, "%Y-%m").replace(tzinfo=timezone.utc)


def next_month(month: str) -> str:
    y, m = int(month[:4]), int(month[5:7])
    return f"{y + m // 12:04d}-{m % 12 + 1:02d}"


def prev_month(month: str) -> str:
    y, m = int(month[:4]), int(month[5:7])
    return f"{y - (m == 1):04d}-{(m - 2) % 12 + 1:02d}"


def closes_at(month: str, settings: PrivacySettings) -> datetime:
    """When ``month`` closes: ``settings.settle`` after its last day, when its requests have been reviewed and
    dispatched."""
    return month_start(next_month(month)) + settings.settle


def _months(since: str, until: str) -> list[str]:
    out = []
    m = since
    while m <= until:
        out.append(m)
        m = next_month(m)
    return out


def last_closed(now: datetime, settings: PrivacySettings) -> str:
    m = _month(now)
    while closes_at(m, settings) > now:
        m = prev_month(m)
    return m


def partners(registry: AgencyRegistry, month: str) -> list[Agency]:
    """The partners that had joined by the end of ``month``, in the order of the report's rows."""
    end = month_start(next_month(month))
    return sorted((a for a in registry if a.joined_at < end), key=lambda a: (a.name, a.agency_id))


# ------------------------------------------------------------------------------------------------- tally

@dataclass
class _Tally:
    cells: Counter[str] = field(default_factory=Counter)
    #: accepted requests' areas and windows (minutes)
    areas: list[float] = field(default_factory=list)
    windows: list[float] = field(default_factory=list)

    def add(self, other: _Tally) -> None:
        self.cells.update(other.cells)
        self.areas += other.areas
        self.windows += other.windows


def first_rule(codes: list[str]) -> str:
    """The rule a refusal counts under: the first of its codes in the order the policy checks them."""
    listed = [c for c in RULE_CODES if c in codes]
    return listed[0] if listed else OTHER


def tally(store: Store, registry: AgencyRegistry, months: list[str]) -> dict[str, dict[str, _Tally]]:
    """The true cells per month and row key (agency id, or ``NOT_PARTNER``), from the store; every row of a
    month is there, empty or not."""
    out = {m: {**{a.agency_id: _Tally() for a in partners(registry, m)}, NOT_PARTNER: _Tally()} for m in months}
    accepted: dict[str, datetime] = {}
    acts: dict[str, set[str]] = {APPROVED: set(), REJECTED: set(), DISPATCHED: set()}

    def row(at: datetime, agency: object) -> _Tally | None:
        rows = out.get(_month(at))
        if rows is None:
            return None
        return rows[agency] if isinstance(agency, str) and agency in rows and agency != NOT_PARTNER \
            else rows[NOT_PARTNER]

    for e in store.audit():
        action = e["action"]
        if action == "submission_refused":
            detail = e["detail"] if isinstance(e["detail"], dict) else {}
            t = row(e["at"], detail.get("agency_id", str(e["actor"]).removeprefix("agency:")))
            if t is not None:
                t.cells["refused"] += 1
                t.cells[f"rule:{first_rule([str(c) for c in detail.get('codes', []) or []])}"] += 1
        elif action == SUBMITTED:
            accepted.setdefault(e["request_id"], e["at"])
        elif action in acts:
            acts[action].add(e["request_id"])
    for rid, at in accepted.items():
        if _month(at) not in out:
            continue
        got = store.get_request(rid)
        if got is None:
            continue
        _, p = got
        t = row(at, str(p["agency_id"]))
        assert t is not None
        if rid in acts[REJECTED]:
            t.cells["rejected_by_reviewer"] += 1
        elif rid in acts[DISPATCHED]:
            t.cells["dispatched"] += 1
        elif rid in acts[APPROVED]:
            t.cells["approved_not_dispatched"] += 1
        else:
            t.cells["pending"] += 1
        sent = store.notified_count(rid)
        shared = min(sent, sum(choice == SHARE for _, choice, _ in store.choices(rid)))
        t.cells["shared"] += shared
        t.cells["not_shared"] += sent - shared
        t.areas.append(float(p["area_sq_mi"]))
        span = datetime.fromisoformat(p["end"]) - datetime.fromisoformat(p["start"])
        t.windows.append(span.total_seconds() / 60)
    return out


# ------------------------------------------------------------------------------------------------- release

def release_month(month: str, tallies: dict[str, _Tally], registry: AgencyRegistry, settings: PrivacySettings,
                  policy: Policy, released_at: datetime, *, preview: bool = False) -> MonthRelease:
    """Release one month's tallies: every measurement through its OpenDP mechanism, once."""
    keys = [*(a.agency_id for a in partners(registry, month)), NOT_PARTNER]
    total = _Tally()
    for key in keys:
        total.add(tallies[key])
    delta = privacy.resident_sensitivity(policy, month_start(month), released_at)
    cells: dict[str, dict[str, int]] = {key: {} for key in (ALL, *keys)}
    scales: dict[str, float] = {}
    derived: list[str] = []
    for meas, names in CELLS.items():
        sens = delta if meas == "residents" else 1
        eps, eps_all = settings.epsilon_of(meas), settings.epsilon_of(f"{meas}_all")
        if eps > 0:
            noisy = iter(privacy.noisy_counts([tallies[k].cells[c] for k in keys for c in names], sens, eps))
            for key in keys:
                cells[key].update({c: next(noisy) for c in names})
            scales[meas] = privacy.count_scale(sens, eps)
        if eps_all > 0:
            cells[ALL].update(zip(names, privacy.noisy_counts([total.cells[c] for c in names], sens, eps_all),
                                  strict=True))
            scales[f"{meas}_all"] = privacy.count_scale(sens, eps_all)
        elif eps > 0:
            cells[ALL].update({c: sum(cells[k][c] for k in keys) for c in names})
            derived.append(f"{meas}_all")
    bounds = {"median_area": (policy.min_area_sq_mi, policy.max_area_sq_mi),
              "median_window": (policy.min_window.total_seconds() / 60, policy.max_window.total_seconds() / 60)}
    medians: dict[str, float | None] = {"median_area": None, "median_window": None}
    for meas, values in (("median_area", total.areas), ("median_window", total.windows)):
        eps = settings.epsilon_of(meas)
        if eps > 0:
            candidates = privacy.median_candidates(*bounds[meas])
            medians[meas] = privacy.noisy_median(values, candidates, eps)
            scales[meas] = privacy.median_scale(candidates, eps)
    rows = [ReleasedRow(ALL, "All agencies", "", cells[ALL], medians["median_area"], medians["median_window"])]
    for key in keys:
        if key == NOT_PARTNER:
            rows.append(ReleasedRow(key, "Not a partner agency", "", cells[key]))
        else:
            a = registry.get(key)
            rows.append(ReleasedRow(key, a.name, a.state, cells[key]))
    return MonthRelease(month, released_at, settings, delta, policy.owner_cap, policy.owner_cap_period, scales,
                        tuple(derived), tuple(rows), preview, bounds)


# ------------------------------------------------------------------------------------------------- report

@dataclass(frozen=True)
class ReportRow:
    month: str
    agency_id: str
    agency: str
    state: str
    #: the released value of each column, rules as ``rule:<code>`` (``None``: not released this month)
    released: dict[str, int | None]
    #: as published: ``None`` where not released or under ``k``
    counts: dict[str, int | None]
    median_area_sq_mi: float | None
    median_window_min: float | None
    #: shares / notifications where both are published, else ``None``
    share_rate: float | None
    k: int
    preview: bool = False

    def text(self, column: str) -> str:
        """A count as shown: the number, "< k" under the floor, "" when not released."""
        v = self.released[column]
        if v is None:
            return ""
        return f"< {self.k}" if floor(v, self.k) is None else str(v)

    @property
    def rate_text(self) -> str:
        """The share rate as shown: a percentage, "" when withheld."""
        return "" if self.share_rate is None else f"{100 * self.share_rate:.1f}%"


def report_row(release: MonthRelease, row: ReleasedRow) -> ReportRow:
    k = release.settings.k
    released: dict[str, int | None] = {}
    for col in COLUMNS:
        _, names = FIGURES[col]
        released[col] = sum(row.cells[c] for c in names) if all(c in row.cells for c in names) else None
    counts = {c: None if v is None else floor(v, k) for c, v in released.items()}
    shares, sent = counts["shares"], counts["notifications"]
    rate = min(1.0, shares / sent) if shares is not None and sent else None
    area, window = row.median_area_sq_mi, row.median_window_min
    if all(c in row.cells for c in _ACCEPTED) and floor(sum(row.cells[c] for c in _ACCEPTED), k) is None:
        area = window = None  # a median over (by the released count) fewer than k requests says nothing
    return ReportRow(release.month, row.agency_id, row.agency, row.state, released, counts, area, window, rate, k,
                     release.preview)


@dataclass(frozen=True)
class TransparencyReport:
    rules: tuple[str, ...]
    rows: tuple[ReportRow, ...]
    releases: tuple[MonthRelease, ...]
    generated_at: datetime

    @property
    def months(self) -> list[str]:
        return [r.month for r in self.releases]

    @property
    def preview(self) -> bool:
        """Whether any month is an internal preview: then the whole report is one, never to be published."""
        return any(r.preview for r in self.releases)

    def to_csv(self) -> str:
        return report_csv(self)

    def to_html(self) -> str:
        return report_html(self)


def build_report(store: Store, registry: AgencyRegistry, *, releases: ReleaseStore,
                 privacy_settings: PrivacySettings | None = None, policy: Policy | None = None,
                 since: str | None = None, until: str | None = None, now: datetime | None = None,
                 preview: bool = False) -> TransparencyReport:
    """The report for ``since`` to ``until`` (default: from the month the first partner joined to the last
    closed month; with ``preview``, to the current month).

    A month released before is read back from ``releases`` as it was published. A closed month not released yet
    is released now, with ``privacy_settings``, and stored. A month still open raises :class:`MonthNotClosed`,
    unless ``preview``: then it, and any closed month not released yet, is computed with fresh noise, not stored,
    and the whole report is marked as an internal preview. ``policy`` is the one the owners' gate runs with: its
    cap bounds what one resident adds to the counts."""
    settings = privacy_settings or PrivacySettings()
    policy = policy or Policy()
    now = aware_now(now) if now is not None else datetime.now(timezone.utc)
    first = check_month(since, "since") or (min(_month(a.joined_at) for a in registry) if len(registry) else None)
    last = check_month(until, "until") or (_month(now) if preview else last_closed(now, settings))
    months = _months(first, last) if first is not None else []
    got: dict[str, MonthRelease] = {}
    todo = []
    for m in months:
        old = releases.get(m)
        if old is not None:
            got[m] = old
            continue
        if closes_at(m, settings) > now and not preview:
            raise MonthNotClosed(f"month {m} closes at {closes_at(m, settings):%Y-%m-%d %H:%M} UTC "
                                 f"({settings.settle} after its last day); it can be published once after that, "
                                 "or shown now as an internal preview")
        todo.append(m)
    if todo:
        raw = tally(store, registry, todo)
        for m in todo:
            rel = release_month(m, raw[m], registry, settings, policy, now, preview=preview)
            got[m] = rel if preview else releases.put(rel)
            if not preview:
                log.info("released %s: epsilon %s, one resident's bound %d notifications (%s after it closed)",
                         m, settings.epsilon, got[m].resident_sensitivity, now - closes_at(m, settings))
    ordered = tuple(got[m] for m in months)
    rows = tuple(report_row(rel, r) for rel in ordered for r in rel.rows)
    return TransparencyReport(RULES, rows, ordered, now)


# ------------------------------------------------------------------------------------------------- the guarantee

def _num(x: float) -> str:
    return f"{x:.4g}"


def _spent(release: MonthRelease, meas: str, what: str) -> str:
    """How a count measurement was released, in words: its epsilon for the agency rows and for the total."""
    e = release.settings.epsilon_of
    rows = f"epsilon {_num(e(meas))} for the agency rows' {what}" if e(meas) > 0 else f"no {what} for agency rows"
    if e(f"{meas}_all") > 0:
        return f"{rows} and {_num(e(f'{meas}_all'))} for the all-agencies row's"
    return rows + (" (the all-agencies row's are their sums)" if f"{meas}_all" in release.derived else "")


def guarantee(release: MonthRelease) -> list[str]:
    """The guarantee a month was released under, in words, one paragraph per item."""
    s = release.settings
    e = s.epsilon_of
    d = release.resident_sensitivity
    req, res = s.unit_epsilon(privacy.REQUEST_UNIT), s.unit_epsilon(privacy.RESIDENT_UNIT)
    medians = " and ".join(f"{what} with epsilon {_num(e(m))}" for m, what in
                           (("median_area", "the area"), ("median_window", "the window")) if e(m) > 0)
    summed = [m.removesuffix("_all") for m in release.derived]
    own = [m for m in ("requests", "rules", "residents") if e(f"{m}_all") > 0]
    total = "; ".join(x for x in (
        f"the all-agencies row's {_and(summed)} counts are the sums of the agency rows'" if summed else "",
        f"the all-agencies row's {_and(own)} counts are released on their own" if own else "") if x)
    return [
        f"Differential privacy (pure epsilon-DP, OpenDP): each figure is released with noise, once, after the month "
        f"closed ({_days(s.settle)} after its last day), and never revised: every later build publishes the same "
        f"figures. Budget: epsilon = {_num(s.epsilon)} for the month, split over the measurements below (they add "
        "up: basic composition).",
        "Requests. Neighbouring data differ by one request an agency submitted, accepted or refused, with "
        "everything recorded about it. It is in one of five outcome counts of its agency's row (pending, approved, "
        "dispatched, rejected by a reviewer, refused), and, refused, in one rule count (the first rule it broke): "
        "sensitivity 1 for each measurement. Discrete Laplace noise (OpenDP's geometric mechanism) with "
        f"{_spent(release, 'requests', 'outcomes')}; {_spent(release, 'rules', 'rules')}"
        + (f"; the medians of the all-agencies row by the exponential mechanism, {medians}" if medians else "")
        + f". One request is covered with epsilon {_num(req)} over the whole report: it counts in one month only.",
        "Residents. Neighbouring data differ by one resident (a camera owner) over the month, with every "
        "notification sent to them and every choice they made. The owners' gate notifies a resident at most "
        f"{release.owner_cap} times in any {_days(release.owner_cap_period)}, so at most {d} of the notifications "
        f"counted for the month (sent from its first day to the release, {release.released_at:%Y-%m-%d %H:%M} UTC) "
        f"are theirs, each counted once, as shared or not shared: sensitivity {d}. Discrete Laplace noise with "
        f"{_spent(release, 'residents', 'notifications')}: one resident is covered with epsilon {_num(res)} per "
        "month.",
        "A request that notified one resident (a single house) is covered, with that resident's notification and "
        f"choice, with epsilon {_num(req + res / d)}. The neighbours are defined on the records the report reads: "
        "how one request changed the platform's handling of others (the agencies' rate limit, the residents' "
        "notification cap) is not covered.",
        "Submitted, approved, rejected and notifications are sums of released counts and the share rate is shares "
        f"over notifications{'; ' + total if total else ''}. Computed from released figures only, none of this "
        "costs budget or weakens the guarantee. Every partner that had joined by the end of the month has a row, "
        "active or not.",
        f"A figure under {s.k} is shown as \u201c< {s.k}\u201d: decided on the released, noisy figure, never on "
        "the true count, so it tells nothing the released figure would not, and a small noisy number is not read "
        "as an exact one. The share rate is shown where both of its counts are; a median where the all-agencies "
        f"row's released number of accepted requests is {s.k} or more. Agency rows have no median: at their numbers "
        "of requests a private median would be close to a random value in the policy's range.",
    ]


def _and(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]


def _days(t: Any) -> str:
    days = t.total_seconds() / 86_400
    return f"{days:g} day" + ("" if days == 1 else "s")


def noise_table(release: MonthRelease) -> list[tuple[str, str, str]]:
    """For each count: how far a released figure is from the true one, 95 times in 100 (agency rows, all
    agencies)."""
    n_rows = len(release.rows) - 1
    out = []
    for col in (*COUNTS, "rule:case_number", f"rule:{REVIEWER}"):
        meas, names = FIGURES[col]
        cells = len(names)
        if meas not in release.scales:
            continue
        rows = f"\u00b1{privacy.error_bound(release.scales[meas], cells)}"
        if f"{meas}_all" in release.scales:
            total = f"\u00b1{privacy.error_bound(release.scales[f'{meas}_all'], cells)}"
        else:
            total = f"\u00b1{privacy.error_bound(release.scales[meas], cells * n_rows)}"
        label = ("a rule (each)" if col == "rule:case_number" else "by a reviewer" if col == f"rule:{REVIEWER}"
                 else "notifications sent" if col == "notifications" else col)
        out.append((label, rows, total))
    return out


# ------------------------------------------------------------------------------------------------- output

PREVIEW_MARK = "INTERNAL PREVIEW, NOT FOR PUBLICATION: figures drawn afresh, outside the published guarantee"


def _rule_label(code: str) -> str:
    return "by a reviewer" if code == REVIEWER else "other or malformed" if code == OTHER else code.replace("_", " ")


def _fmt(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _csv_safe(text: str) -> str:
    """A spreadsheet must not take a cell for a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _groups(report: TransparencyReport) -> list[tuple[list[str], MonthRelease]]:
    """Months released under the same guarantee, together."""
    out: list[tuple[list[str], MonthRelease]] = []
    for rel in report.releases:
        if out and guarantee(out[-1][1]) == guarantee(rel) and noise_table(out[-1][1]) == noise_table(rel):
            out[-1][0].append(rel.month)
        else:
            out.append(([rel.month], rel))
    return out


def _span(months: list[str]) -> str:
    return months[0] if len(months) == 1 else f"{months[0]} to {months[-1]}"


def report_csv(report: TransparencyReport) -> str:
    """The guarantee as ``#`` lines, then one line per month and agency (the month's "all agencies" line
    first); a figure under k reads "<k", one not released is empty."""
    buf = io.StringIO()
    buf.write("# Transparency report\n")
    if report.preview:
        buf.write(f"# {PREVIEW_MARK}\n")
    for months, rel in _groups(report):
        buf.write(f"# {_span(months)}, released {rel.released_at:%Y-%m-%d %H:%M} UTC:\n")
        for line in guarantee(rel):
            buf.write(f"#   {line}\n")
        buf.write("#   95 times in 100 a figure is within: "
                  + "; ".join(f"{c} {r} (agency row), {t} (all agencies)" for c, r, t in noise_table(rel)) + "\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["month", "agency_id", "agency", "state", "submitted", "approved", "rejected",
                *(f"rejected_{c}" for c in report.rules), "dispatched", "median_area_sq_mi", "median_window_min",
                "notifications_sent", "share_rate"])
    for r in report.rows:
        def n(col: str, r: ReportRow = r) -> str:
            return r.text(col).replace(" ", "")
        w.writerow([r.month, _csv_safe(r.agency_id), _csv_safe(r.agency), _csv_safe(r.state),
                    n(SUBMITTED), n(APPROVED), n(REJECTED), *(n(f"rule:{x}") for x in report.rules), n(DISPATCHED),
                    _fmt(r.median_area_sq_mi, 3), _fmt(r.median_window_min, 0), n("notifications"),
                    _fmt(r.share_rate, 4)])
    return buf.getvalue()


REPORT_STYLE = """
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 8px 20px 20px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; }
td:first-child { white-space: nowrap; }
th { background: #f3f5f8; font-weight: 600; vertical-align: bottom; }
td.n { text-align: right; }
td.withheld, td.floor { text-align: center; color: var(--muted); background: #fafafa; white-space: nowrap; }
tr.all td { font-weight: 600; background: #f7f9ff; }
tr.month-start td { border-top: 2px solid #98a2b3; }
ul.how, section.guarantee p { max-width: 900px; }
section.guarantee { padding: 0 20px; }
table.noise { margin-left: 0; }
p.preview { background: #fde8e8; color: #8a1c1c; border: 2px solid #c81e1e; padding: 8px 12px; font-weight: 700; }
"""


def _cell(text: str) -> str:
    """A figure's cell: "" is not released, "< k" under the floor."""
    if text == "":
        return '<td class="withheld" title="not released">&ndash;</td>'
    if text.startswith("<"):
        return f'<td class="floor" title="under the floor">{esc(text)}</td>'
    return f'<td class="n">{esc(text)}</td>'


def _text(text: str) -> str:
    return f"<td>{esc(text)}</td>"


def _guarantee_html(report: TransparencyReport) -> str:
    parts = ['<section class="guarantee" id="guarantee"><h2>Privacy guarantee</h2>']
    for months, rel in _groups(report):
        parts.append(f"<h3>{esc(_span(months))}</h3>")
        parts += [f"<p>{esc(line)}</p>" for line in guarantee(rel)]
        rows = "".join(f"<tr><td>{esc(c)}</td><td class=\"n\">{esc(r)}</td><td class=\"n\">{esc(t)}</td></tr>"
                       for c, r, t in noise_table(rel))
        parts.append('<table class="noise"><thead><tr><th>figure</th><th>agency row</th><th>all agencies</th>'
                     f"</tr></thead><tbody>{rows}</tbody></table>"
                     "<p class=\"note\">95 times in 100 a released figure is within this of the true count.</p>")
    parts.append("</section>")
    return "".join(parts)


def report_html(report: TransparencyReport) -> str:
    """The report as one self-contained HTML page."""
    months = report.months
    period = f"{months[0]} to {months[-1]}" if months else "no closed month yet"
    n_rules = len(report.rules)
    head = ('<thead><tr><th rowspan="2">month</th><th rowspan="2">agency</th><th rowspan="2">state</th>'
            '<th rowspan="2">submitted</th><th rowspan="2">approved</th>'
            f'<th colspan="{1 + n_rules}">rejected</th><th rowspan="2">dispatched</th>'
            '<th rowspan="2">median area (sq mi)</th><th rowspan="2">median window (min)</th>'
            '<th rowspan="2">notifications sent</th><th rowspan="2">share rate</th></tr><tr><th>total</th>'
            + "".join(f"<th>{esc(_rule_label(c))}</th>" for c in report.rules) + "</tr></thead>")
    body_rows = []
    last = None
    for r in report.rows:
        cls = " ".join(x for x in ("all" if r.agency_id == ALL else "", "month-start" if r.month != last else "") if x)
        last = r.month
        cells = [_text(r.month), _text(r.agency), _text(r.state),
                 _cell(r.text(SUBMITTED)), _cell(r.text(APPROVED)), _cell(r.text(REJECTED)),
                 *(_cell(r.text(f"rule:{x}")) for x in report.rules), _cell(r.text(DISPATCHED)),
                 _cell(_fmt(r.median_area_sq_mi, 3)), _cell(_fmt(r.median_window_min, 0)),
                 _cell(r.text("notifications")), _cell(r.rate_text)]
        body_rows.append(f'<tr class="{cls}" data-agency="{esc(r.agency_id)}">' + "".join(cells) + "</tr>")
    table = (f'<table id="report">{head}<tbody>{"".join(body_rows)}</tbody></table>' if body_rows
             else '<p id="empty">No closed month in this period.</p>')
    how = (
        '<ul class="how">'
        "<li>A request counts in the month it reached the platform (UTC), in every column. Every figure carries "
        "random noise (see the privacy guarantee below): it is close to the true count, not equal to it, and "
        "figures need not add up exactly.</li>"
        "<li><strong>&lt; k</strong> marks a released figure under the floor k; <strong>&ndash;</strong> a figure "
        "not released.</li>"
        "<li>Rejected: refused by the policy on submission, or by a reviewer. A submission refused for several "
        "rules counts under the first one the policy checks.</li>"
        "<li>Notifications sent: residents notified (one per resident and request). Share rate: residents who "
        "shared footage, over notifications sent.</li></ul>")
    title = "Transparency report" + (" (internal preview)" if report.preview else "")
    mark = f'<p class="preview" id="preview">{esc(PREVIEW_MARK)}</p>' if report.preview else ""
    body = (f"<header><h1>{esc(title)}</h1>{mark}<p>{esc(period)}. Generated "
            f"{report.generated_at:%Y-%m-%d %H:%M} UTC.</p></header><main>{how}</main>{table}"
            f"{_guarantee_html(report) if months else ''}")
    return page(title, body, style=REPORT_STYLE)

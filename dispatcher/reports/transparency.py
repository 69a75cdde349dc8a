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
requests and what became of them. A refusal naming an agency that is not a partner counts in the row "not a
partner agency". A submission refused for several rules counts once in "rejected" and once under each rule.

Disclosure control (:mod:`dispatcher.reports.suppression`): every count from 1 to ``k - 1`` is withheld, with the
complementary cells that keep the month's "all agencies" totals and each row's own relations (submitted =
approved + rejected + still pending; rejected against its rules; dispatched <= approved; shares <= notifications)
from giving one back. A median over fewer than ``k`` requests is withheld; the share rate is shown only where
both shares and notifications are. Withheld cells read "–" (HTML) or are empty (CSV), the same for every reason,
so a reader cannot tell a small count from a complementary one.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from dispatcher.errors import InvalidReportSettings
from dispatcher.reports.pages import esc, page
from dispatcher.reports.suppression import Relation, check_k, suppress
from dispatcher.workflow.agencies import AgencyRegistry
from dispatcher.workflow.policy import RULE_CODES
from dispatcher.workflow.review import APPROVED, DISPATCHED, REJECTED, SHARE, SUBMITTED
from dispatcher.workflow.store import Store

#: The rule a reviewer's rejection counts under.
REVIEWER = "reviewer"
#: Rules in the order the policy checks them, then the reviewer; codes outside this list follow in alphabetical
#: order.
RULE_ORDER = (*RULE_CODES, REVIEWER)
COUNTS = (SUBMITTED, APPROVED, REJECTED, DISPATCHED, "notifications", "shares")
ALL = "*"            # the row key of a month's "all agencies" row
NOT_PARTNER = ""     # the row key of refusals naming no partner agency


def _month(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m")


def check_month(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m").strftime("%Y-%m")
    except (TypeError, ValueError):
        raise InvalidReportSettings(f"{what} must be a month as YYYY-MM, got {str(value)[:40]!r}") from None


@dataclass
class _Tally:
    counts: Counter[str] = field(default_factory=Counter)
    areas: list[float] = field(default_factory=list)
    windows: list[float] = field(default_factory=list)
    #: accepted requests neither approved nor rejected yet; distinct codes beyond the first per refusal
    pending: int = 0
    extra_codes: int = 0

    def add(self, other: _Tally) -> None:
        self.counts.update(other.counts)
        self.areas += other.areas
        self.windows += other.windows
        self.pending += other.pending
        self.extra_codes += other.extra_codes


def tally(store: Store, registry: AgencyRegistry, since: str | None = None,
          until: str | None = None) -> dict[tuple[str, str], _Tally]:
    """Raw figures per (month, agency id | NOT_PARTNER), from the store."""
    since, until = check_month(since, "since"), check_month(until, "until")
    out: dict[tuple[str, str], _Tally] = {}
    accepted: dict[str, datetime] = {}
    acts: dict[str, set[str]] = {APPROVED: set(), REJECTED: set(), DISPATCHED: set()}

    def row(at: datetime, agency: str) -> _Tally | None:
        m = _month(at)
        if (since and m < since) or (until and m > until):
            return None
        return out.setdefault((m, agency), _Tally())

    for e in store.audit():
        action = e["action"]
        if action == "submission_refused":
            detail = e["detail"] if isinstance(e["detail"], dict) else {}
            named = detail.get("agency_id", str(e["actor"]).removeprefix("agency:"))
            t = row(e["at"], named if isinstance(named, str) and named in registry else NOT_PARTNER)
            if t is not None:
                codes = sorted({str(c) for c in detail.get("codes", []) or ["unknown"]})
                t.counts.update([SUBMITTED, REJECTED, *(f"rule:{c}" for c in codes)])
                t.extra_codes += len(codes) - 1
        elif action == SUBMITTED:
            accepted.setdefault(e["request_id"], e["at"])
        elif action in acts:
            acts[action].add(e["request_id"])
    for rid, at in accepted.items():
        got = store.get_request(rid)
        if got is None:
            continue
        _, p = got
        t = row(at, str(p["agency_id"]))
        if t is None:
            continue
        approved, rejected = rid in acts[APPROVED], rid in acts[REJECTED]
        t.counts[SUBMITTED] += 1
        t.counts[APPROVED] += approved
        t.counts[REJECTED] += rejected
        t.counts[f"rule:{REVIEWER}"] += rejected
        t.counts[DISPATCHED] += rid in acts[DISPATCHED]
        t.pending += not (approved or rejected)
        t.counts["notifications"] += store.notified_count(rid)
        t.counts["shares"] += sum(choice == SHARE for _, choice, _ in store.choices(rid))
        t.areas.append(float(p["area_sq_mi"]))
        span = datetime.fromisoformat(p["end"]) - datetime.fromisoformat(p["start"])
        t.windows.append(span.total_seconds() / 60)
    return out


@dataclass(frozen=True)
class ReportRow:
    month: str
    agency_id: str
    agency: str
    state: str
    #: published counts by column (``None``: withheld), rules as ``rule:<code>``
    counts: dict[str, int | None]
    median_area_sq_mi: float | None
    median_window_min: float | None
    #: shares / notifications; ``None`` when withheld or when no notification was sent (``counts`` tells which)
    share_rate: float | None

    @property
    def rate_text(self) -> str:
        """The share rate as shown: a percentage, "n/a" with no notification sent, "" when withheld."""
        if self.share_rate is not None:
            return f"{100 * self.share_rate:.1f}%"
        return "n/a" if self.counts["notifications"] == 0 and self.counts["shares"] == 0 else ""


@dataclass(frozen=True)
class TransparencyReport:
    k: int
    rules: tuple[str, ...]
    rows: tuple[ReportRow, ...]
    generated_at: datetime

    @property
    def months(self) -> list[str]:
        return sorted({r.month for r in self.rows})

    def to_csv(self) -> str:
        return report_csv(self)

    def to_html(self) -> str:
        return report_html(self)


def build_report(store: Store, registry: AgencyRegistry, *, k: int = 10, since: str | None = None,
                 until: str | None = None, now: datetime | None = None) -> TransparencyReport:
    k = check_k(k)
    raw = tally(store, registry, since, until)
    codes = {c.removeprefix("rule:") for t in raw.values() for c in t.counts if c.startswith("rule:")}
    rules = tuple(sorted(codes, key=lambda c: (RULE_ORDER.index(c) if c in RULE_ORDER else len(RULE_ORDER), c)))
    columns = (*COUNTS, *(f"rule:{c}" for c in rules))
    rows: list[ReportRow] = []
    for month in sorted({m for m, _ in raw}):
        keys = sorted((a for m, a in raw if m == month), key=lambda a: (a == NOT_PARTNER, _name(registry, a), a))
        total = _Tally()
        for a in keys:
            total.add(raw[(month, a)])
        tallies = {ALL: total, **{a: raw[(month, a)] for a in keys}}
        hidden = _withheld(tallies, columns, rules, k)
        for a, t in tallies.items():
            counts = {c: (None if (a, c) in hidden else int(t.counts[c])) for c in columns}
            enough = len(t.areas) >= k
            shares, sent = counts["shares"], counts["notifications"]
            rate = shares / sent if shares is not None and sent else None
            name = "All agencies" if a == ALL else "Not a partner agency" if a == NOT_PARTNER else _name(registry, a)
            state = "" if a in (ALL, NOT_PARTNER) or a not in registry else registry.get(a).state
            rows.append(ReportRow(month, a, name, state, counts,
                                  statistics.median(t.areas) if enough else None,
                                  statistics.median(t.windows) if enough else None, rate))
    return TransparencyReport(k, rules, tuple(rows), now or datetime.now(timezone.utc))


def _name(registry: AgencyRegistry, agency_id: str) -> str:
    return registry.get(agency_id).name if agency_id in registry else agency_id


def _withheld(tallies: dict[str, _Tally], columns: tuple[str, ...], rules: tuple[str, ...], k: int) -> set[Any]:
    """The cells of one month to withhold (see :mod:`dispatcher.reports.suppression`)."""
    values: dict[Any, int] = {(a, c): int(t.counts[c]) for a, t in tallies.items() for c in columns}
    parts = [a for a in tallies if a != ALL]
    relations = [Relation.total((ALL, c), [(a, c) for a in parts]) for c in columns]
    for a, t in tallies.items():
        relations.append(Relation.total((a, SUBMITTED), [(a, APPROVED), (a, REJECTED)], t.pending))
        relations.append(Relation.total((a, REJECTED), [(a, f"rule:{r}") for r in rules], -t.extra_codes))
        relations.append(Relation.at_most((a, DISPATCHED), (a, APPROVED)))
        relations.append(Relation.at_most((a, "shares"), (a, "notifications")))
        relations += [Relation.at_most((a, f"rule:{r}"), (a, REJECTED)) for r in rules]
    # the share rate is published with the notifications: withholding those must withhold the shares too
    return suppress(values, relations, k, implies=[((a, "notifications"), (a, "shares")) for a in tallies])


# ------------------------------------------------------------------------------------------------- output

def _rule_label(code: str) -> str:
    return "by a reviewer" if code == REVIEWER else code.replace("_", " ")


def _count(v: int | None) -> str:
    return "" if v is None else str(v)


def _fmt(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _csv_safe(text: str) -> str:
    """A spreadsheet must not take a cell for a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report_csv(report: TransparencyReport) -> str:
    """One line per month and agency (the month's "all agencies" line first); withheld cells are empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["month", "agency_id", "agency", "state", "submitted", "approved", "rejected",
                *(f"rejected_{c}" for c in report.rules), "dispatched", "median_area_sq_mi", "median_window_min",
                "notifications_sent", "share_rate"])
    for r in report.rows:
        c = r.counts
        w.writerow([r.month, _csv_safe(r.agency_id), _csv_safe(r.agency), _csv_safe(r.state),
                    _count(c["submitted"]), _count(c["approved"]), _count(c["rejected"]),
                    *(_count(c[f"rule:{x}"]) for x in report.rules), _count(c["dispatched"]),
                    _fmt(r.median_area_sq_mi, 3), _fmt(r.median_window_min, 0), _count(c["notifications"]),
                    _fmt(r.share_rate, 4) if r.share_rate is not None else r.rate_text])
    return buf.getvalue()


REPORT_STYLE = """
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 8px 20px 20px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; }
td:first-child { white-space: nowrap; }
th { background: #f3f5f8; font-weight: 600; vertical-align: bottom; }
td.n { text-align: right; }
td.withheld { text-align: center; color: var(--muted); background: #fafafa; }
tr.all td { font-weight: 600; background: #f7f9ff; }
tr.month-start td { border-top: 2px solid #98a2b3; }
ul.how { max-width: 900px; margin: 0; }
"""


def _num(text: str) -> str:
    """A figure's cell; an empty text is a withheld figure."""
    if text == "":
        return '<td class="withheld" title="withheld">&ndash;</td>'
    return f'<td class="n">{esc(text)}</td>'


def _text(text: str) -> str:
    return f"<td>{esc(text)}</td>"


def report_html(report: TransparencyReport) -> str:
    """The report as one self-contained HTML page."""
    months = report.months
    period = f"{months[0]} to {months[-1]}" if months else "no requests yet"
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
        c = r.counts
        cls = " ".join(x for x in ("all" if r.agency_id == ALL else "", "month-start" if r.month != last else "") if x)
        last = r.month
        cells = [_text(r.month), _text(r.agency), _text(r.state),
                 _num(_count(c["submitted"])), _num(_count(c["approved"])), _num(_count(c["rejected"])),
                 *(_num(_count(c[f"rule:{x}"])) for x in report.rules), _num(_count(c["dispatched"])),
                 _num(_fmt(r.median_area_sq_mi, 3)), _num(_fmt(r.median_window_min, 0)),
                 _num(_count(c["notifications"])), _num(r.rate_text)]
        body_rows.append(f'<tr class="{cls}" data-agency="{esc(r.agency_id)}">' + "".join(cells) + "</tr>")
    table = (f'<table id="report">{head}<tbody>{"".join(body_rows)}</tbody></table>' if body_rows
             else '<p id="empty">No request reached the platform in this period.</p>')
    k = report.k
    how = (
        '<ul class="how">'
        "<li>A request counts in the month it reached the platform (UTC), in every column.</li>"
        f"<li><strong>&ndash;</strong> marks a withheld figure: a count from 1 to {k - 1}, or one withheld with it "
        f"so that a total or another figure of the row cannot give it back. A median over fewer than {k} requests "
        "and a share rate whose counts are withheld are withheld too. Zero is shown.</li>"
        "<li>Rejected: refused by the policy on submission, or by a reviewer. A request refused for several "
        "rules counts once in the total and once under each rule.</li>"
        "<li>Notifications sent: residents notified (one per resident and request). Share rate: residents who "
        "shared footage, over notifications sent.</li></ul>")
    body = (f"<header><h1>Transparency report</h1><p>{esc(period)}; every count under {k} withheld. Generated "
            f"{report.generated_at:%Y-%m-%d %H:%M} UTC.</p></header><main>{how}</main>{table}")
    return page("Transparency report", body, style=REPORT_STYLE)

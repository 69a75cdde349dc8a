"""The dispatcher: stream a request's recipients, in batches, to a sink with no loss and no duplicates.

The owners of a :class:`RecipientSet` are ascending, so ``(request_id, batch size)`` fixes the batches: batch ``k``
is owners ``[k * size, (k + 1) * size)``. The first dispatch of a request records its *plan* (batch size, owner
count and a digest of the owner and camera ids); later attempts reuse the recorded batch size and refuse a different
recipient set (:class:`DispatchConflict`). (A request approved at once has its plan written by the step that records
the request, :meth:`Dispatcher.plan_recorder`, and its first dispatch is handed it.) Each batch is appended by one
atomic step that checks the request's *done* marks, appends the batch and marks it: a retry, a racing worker or a
worker restarted after SIGKILL skips every batch already appended and appends the rest. The gate (opt-outs,
per-owner cap) is asked at send time, batch by batch; it is idempotent per (request, owner), so a batch retried
after a crash admits the same owners.

**The gate is the append.** A gate whose records live with the sink (:meth:`RecipientGate.terms`: the
:class:`~dispatcher.dispatch.gate.OwnerGate` on the sink's own Redis or SQLite file) is not asked beforehand: the
sink looks the batch's owners up, records the admitted ones as notified and appends the entry naming them alone,
in one atomic step. So no owner who opts out or reaches the cap a moment before is ever sent to, and the step
costs **the same one round trip whoever the recipients are**: an agency can time its own submissions, and what a
dispatch asks of the sink must not depend on one resident (admitted, opted out or capped). A request without
recipients still appends its one, empty, batch (a done mark, nothing on the stream), as a request to one owner
does. With a sink of several gate shards, each batch goes out as one part per shard (its owners there, or none),
each part with its own done mark in its shard. Another gate (``terms`` None) is asked first, and its verdicts
travel with each part.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson

from dispatcher.dispatch.gate import AdmitAll, RecipientGate
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import ALREADY_DONE, Plan, PlanState, Sink
from dispatcher.dispatch.wire import (
    BatchPart,
    NotificationHeader,
    batch_part,
    decode_recipients,
    encode_recipients,
    plan_digest,
)
from dispatcher.errors import DispatchConflict
from dispatcher.index.recipients import RecipientSet
from dispatcher.workflow.store import WithRecord

__all__ = ["DispatchReport", "Dispatcher"]

log = logging.getLogger(__name__)


@dataclass
class DispatchReport:
    """What one dispatch call did for one request (counts of this call's batches and owners)."""

    request_id: str
    batches_total: int = 0
    batches_sent: int = 0          # appended by this call
    recipients_notified: int = 0   # owners appended by this call
    suppressed: int = 0            # owners the gate refused (in batches this call completed)
    already_done: int = 0          # owners in batches an earlier attempt completed
    backpressure_wait_s: float = 0.0
    stream_ids: list[str] = field(default_factory=list)
    #: The index version (change feed position) of the recipient set sent: the first attempt's, on a retry too.
    index_version: int | None = None


#: One part of a batch to send: (job, batch number, owners lo, hi, gate shard).
Unit = tuple[int, int, int, int, int]


class Dispatcher:
    """``Dispatcher(sink, settings).dispatch(header, recipients)``: append every batch exactly once."""

    def __init__(self, sink: Sink, settings: QueueSettings | None = None) -> None:
        self.sink = sink
        self.settings = settings or getattr(sink, "settings", None) or QueueSettings()

    def dispatch(self, header: NotificationHeader, recipients: RecipientSet, gate: RecipientGate | None = None,
                 now: datetime | None = None) -> DispatchReport:
        return self.dispatch_many([(header, recipients)], gate, now)[0]

    def recorded(self, request_ids: list[str]) -> list[RecipientSet | None]:
        """The recipient set each request's first dispatch recorded (None where none has started): what every
        later attempt sends, whatever the time, the index or the worker."""
        return [None if b is None else decode_recipients(b) for b in self.sink.recorded_plans(request_ids)]

    def plan(self, request_id: str, recipients: RecipientSet) -> Plan:
        """The plan a first dispatch of the request to ``recipients`` records."""
        return (request_id, self.settings.batch_size, recipients.n_owners, plan_digest(recipients),
                encode_recipients(recipients))

    def plan_recorder(self, store: Any) -> Callable[[Plan], WithRecord] | None:
        """How ``store`` records a plan with its request, in the step that creates the request (None: it
        cannot, and the plan is registered by the dispatch): see :meth:`Sink.plan_record`."""
        return self.sink.plan_record(store)

    def dispatch_many(self, jobs: list[tuple[NotificationHeader, RecipientSet]], gate: RecipientGate | None = None,
                      now: datetime | None = None, *, adopt_recorded: bool = False,
                      recorded_plans: Sequence[Plan | None] = ()) -> list[DispatchReport]:
        """Dispatch several requests together: each step (plans, the gate, appends) is one round trip for all of
        them, ``pipeline_batches`` batches of each request a round. Each request keeps its own exactly-once
        effect: its plan, its done-marks, its report.

        A request whose first dispatch recorded another recipient set raises :class:`DispatchConflict`, or with
        ``adopt_recorded`` is sent the recorded set (two workers that judged it a moment apart). A request with a
        plan in ``recorded_plans`` had it recorded by the step that created the request (:meth:`plan_recorder`),
        by this run: that plan is the request's, with nothing done yet, and asks no round trip."""
        gate = gate or AdmitAll()
        now = now or datetime.now(timezone.utc)
        given = list(recorded_plans) or [None] * len(jobs)
        ask = [self.plan(h.request_id, rs) for (h, rs), p in zip(jobs, given, strict=True) if p is None]
        asked = iter(self.sink.register_plans(ask, now) if ask else [])
        plans = [next(asked) if p is None else PlanState(p[1], set(), p[2], p[3]) for p in given]
        jobs = [(h, self._settle(h.request_id, rs, plan, adopt_recorded))
                for (h, rs), plan in zip(jobs, plans, strict=True)]
        reports = [DispatchReport(h.request_id, index_version=rs.version) for h, rs in jobs]
        header_json = [orjson.dumps(h.to_dict()) for h, _ in jobs]
        for rep, plan, (_, rs) in zip(reports, plans, jobs, strict=True):  # one batch at least (empty: the same work)
            rep.batches_total = max(1, -(-rs.n_owners // plan.batch_size))
        step = self.settings.pipeline_batches
        shards = self.sink.shards
        for first in range(0, max((r.batches_total for r in reports), default=0), step):
            # (job, batch number, owners lo, hi, gate shard) still to send this round; the rest were done by an
            # earlier attempt. Every shard has a part of every batch (with none of its owners, a done mark alone).
            units: list[Unit] = []
            for j, (plan, (_, rs), rep) in enumerate(zip(plans, jobs, reports, strict=True)):
                for b in range(first, min(first + step, rep.batches_total)):
                    lo, hi = b * plan.batch_size, min((b + 1) * plan.batch_size, rs.n_owners)
                    per_shard = ((hi - lo,) if shards == 1 else
                                 np.bincount(self.sink.owner_shards(rs.owner_ids[lo:hi]), minlength=shards))
                    for g in range(shards):
                        if (b, g) in plan.done:
                            rep.already_done += int(per_shard[g])
                        else:
                            units.append((j, b, lo, hi, g))
            # Wait for room first, then send: opt-outs and caps are checked at send time.
            if units:
                reports[units[0][0]].backpressure_wait_s += self.sink.wait_for_room(jobs[units[0][0]][0].request_id)
                self._send(units, jobs, header_json, reports, gate, now)
        for rep in reports:
            log.debug("dispatched %s: %d batches sent, %d notified, %d suppressed, %d already done, %.2f s waited",
                      rep.request_id, rep.batches_sent, rep.recipients_notified, rep.suppressed, rep.already_done,
                      rep.backpressure_wait_s)
        return reports

    @staticmethod
    def _settle(request_id: str, offered: RecipientSet, plan: PlanState, adopt: bool) -> RecipientSet:
        """The recipient set to send: the one offered, unless the request's plan recorded another."""
        if plan.recorded is None:
            return offered
        if not adopt:
            raise DispatchConflict(f"request {request_id!r} was first dispatched to {plan.n_owners} owners (digest "
                                   f"{plan.digest}); this attempt has {offered.n_owners} owners "
                                   f"(digest {plan_digest(offered)})")
        log.info("%s: sending the recipient set its first dispatch recorded (%d owners), not this attempt's (%d)",
                 request_id, plan.n_owners, offered.n_owners)
        return decode_recipients(plan.recorded)

    def _send(self, units: list[Unit], jobs: list[tuple[NotificationHeader, RecipientSet]],
              header_json: list[bytes], reports: list[DispatchReport], gate: RecipientGate, now: datetime) -> None:
        """Append ``units``, each with the owners of its batch in its gate shard: gated by the sink in the append
        when the gate's records are the sink's, else with the verdicts the gate gives first."""
        one = self.sink.shards == 1
        parts: list[BatchPart] = []
        for j, b, lo, hi, g in units:
            rs = jobs[j][1]
            where = None if one else self.sink.owner_shards(rs.owner_ids[lo:hi]) == g
            parts.append(batch_part(header_json[j], b, g, rs, lo, hi, where))
        terms = gate.terms(now)
        if terms is None:
            asks = [(jobs[j][0].request_id, part.owners) for (j, *_), part in zip(units, parts, strict=True)]
            verdicts = gate.check_many(asks, now) if one else gate.check_many(asks, now, shards=[u[4] for u in units])
            for part, v in zip(parts, verdicts, strict=True):
                part.verdicts = v
        work: dict[int, list[BatchPart]] = {}
        for (j, *_), part in zip(units, parts, strict=True):
            work.setdefault(j, []).append(part)
        results = self.sink.append_many([(jobs[j][0].request_id, work[j]) for j in work], terms)
        for j, got in zip(work, results, strict=True):
            rep = reports[j]
            for part, done in zip(work[j], got, strict=True):
                if done is ALREADY_DONE:  # another worker completed it meanwhile
                    rep.already_done += part.n_owners
                else:
                    rep.batches_sent += done.admitted > 0
                    rep.recipients_notified += done.admitted
                    rep.suppressed += done.opted_out + done.capped

"""The dispatcher: stream a request's recipients, in batches, to a sink with no loss and no duplicates.

The owners of a :class:`RecipientSet` are ascending, so ``(request_id, batch size)`` fixes the batches: batch
``k`` is owners ``[k * size, (k + 1) * size)``. The first dispatch of a request records its *plan* (batch size,
owner count and a digest of the owner and camera ids); later attempts reuse the recorded batch size and refuse a
different recipient set (:class:`DispatchConflict`). Each batch is appended by one atomic step that checks the
request's *done* marks, appends the batch and marks it: a retry, a racing worker or a worker restarted after
SIGKILL skips every batch already appended and appends the rest. The gate (opt-outs, per-owner cap) is asked at
send time, batch by batch; it is idempotent per (request, owner), so a batch retried after a crash admits the
same owners.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson

from dispatcher.dispatch.gate import AdmitAll, RecipientGate
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import Sink
from dispatcher.dispatch.wire import NotificationHeader, PreparedBatch, encode_gated, plan_digest
from dispatcher.index.recipients import RecipientSet

__all__ = ["DispatchReport", "Dispatcher"]

log = logging.getLogger(__name__)


@dataclass
class DispatchReport:
    request_id: str
    batches_total: int = 0
    batches_sent: int = 0          # appended by this call
    recipients_notified: int = 0   # owners appended by this call
    suppressed: int = 0            # owners the gate refused (in batches this call completed)
    already_done: int = 0          # owners in batches an earlier attempt completed
    backpressure_wait_s: float = 0.0
    stream_ids: list[str] = field(default_factory=list)


class Dispatcher:
    """``Dispatcher(sink, settings).dispatch(header, recipients)``: append every batch exactly once."""

    def __init__(self, sink: Sink, settings: QueueSettings | None = None) -> None:
        self.sink = sink
        self.settings = settings or getattr(sink, "settings", None) or QueueSettings()

    def dispatch(self, header: NotificationHeader, recipients: RecipientSet, gate: RecipientGate | None = None,
                 now: datetime | None = None) -> DispatchReport:
        return self.dispatch_many([(header, recipients)], gate, now)[0]

    def dispatch_many(self, jobs: list[tuple[NotificationHeader, RecipientSet]], gate: RecipientGate | None = None,
                      now: datetime | None = None) -> list[DispatchReport]:
        """Dispatch several requests together: each step (plans, the gate, appends) is one round trip for all of
        them, ``pipeline_batches`` batches of each request a round. Each request keeps its own exactly-once
        effect: its plan, its done-marks, its report."""
        gate = gate or AdmitAll()
        now = now or datetime.now(timezone.utc)
        reports = [DispatchReport(h.request_id) for h, _ in jobs]
        plans = self.sink.register_plans([(h.request_id, self.settings.batch_size, rs.n_owners, plan_digest(rs))
                                          for h, rs in jobs])
        header_json = [orjson.dumps(h.to_dict()) for h, _ in jobs]
        for rep, (size, _), (_, rs) in zip(reports, plans, jobs, strict=True):
            rep.batches_total = -(-rs.n_owners // size)
        step = self.settings.pipeline_batches
        for first in range(0, max((r.batches_total for r in reports), default=0), step):
            # (job, batch number, owners lo, hi) still to send this round; the rest were done by an earlier attempt
            units: list[tuple[int, int, int, int]] = []
            for j, ((size, done), (_, rs), rep) in enumerate(zip(plans, jobs, reports, strict=True)):
                for b in range(first, min(first + step, rep.batches_total)):
                    lo, hi = b * size, min((b + 1) * size, rs.n_owners)
                    if b in done:
                        rep.already_done += hi - lo
                    else:
                        units.append((j, b, lo, hi))
            if not units:
                continue
            # Wait for room first, then ask the gate: opt-outs and caps are checked at send time.
            reports[units[0][0]].backpressure_wait_s += self.sink.wait_for_room(jobs[units[0][0]][0].request_id)
            asks = [(jobs[j][0].request_id, jobs[j][1].owner_ids[lo:hi]) for j, _, lo, hi in units]
            masks = gate.admit_many(asks, now)
            work: dict[int, list[PreparedBatch]] = {}
            for (j, b, lo, hi), mask in zip(units, masks, strict=True):
                work.setdefault(j, []).append(encode_gated(header_json[j], b, jobs[j][1], lo, hi, mask))
            order = list(work)
            for j, appended_all in zip(order, self.sink.append_many([(jobs[j][0].request_id, work[j]) for j in order]),
                                       strict=True):
                rep = reports[j]
                for batch, appended in zip(work[j], appended_all, strict=True):
                    if not appended:        # another worker completed it meanwhile
                        rep.already_done += batch.n_owners
                        continue
                    rep.batches_sent += batch.payload is not None
                    rep.recipients_notified += batch.n_admitted
                    rep.suppressed += batch.n_owners - batch.n_admitted
        for rep in reports:
            log.debug("dispatched %s: %d batches sent, %d notified, %d suppressed, %d already done, %.2f s waited",
                      rep.request_id, rep.batches_sent, rep.recipients_notified, rep.suppressed, rep.already_done,
                      rep.backpressure_wait_s)
        return reports

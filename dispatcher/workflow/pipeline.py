"""The request pipeline: every command of a batch through validate -> record -> resolve -> dispatch -> mark.

This is the one place a request's life runs end to end. The transports (the Redis-stream worker, the CLI demo,
the tests) only decode commands, call :meth:`Pipeline.run` and encode its outcomes.

A batch of commands is run together, each step one round trip to the store or the sink for the whole batch:

1. **decode**: a submission becomes a :class:`VideoRequest` (one that cannot even be parsed is refused and
   audited); a dispatch command names a stored request;
2. **look up** every request named and what the policy needs to know of earlier ones (duplicate ids, the
   agencies' recent request counts): one round trip;
3. **validate** the new submissions against the policy (the rate limit counts those accepted earlier in the
   same batch); a refusal is audited;
4. **record** the accepted ones, each with its audit entries in one atomic step (approved at once with
   auto-approval): one round trip;
5. **resolve** every approved request's area and window to its recipients in the index;
6. **dispatch** them: plans, the owners' gate, the batch appends (see :class:`Dispatcher`). A request's first
   attempt records its recipient set with its plan; a retry sends exactly that set;
7. **mark** them dispatched: one round trip.

Running a command twice is harmless: a recorded request continues from its recorded state, and the dispatcher
skips the batches already appended. That is what lets a transport redeliver a batch after any failure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.gate import OwnerGate, RecipientGate
from dispatcher.dispatch.sinks import Plan
from dispatcher.dispatch.wire import NotificationHeader
from dispatcher.errors import DispatchError, InvalidTransition, QueueUnavailable, RequestRejected, UnknownRequest
from dispatcher.index.camera_index import CameraIndex
from dispatcher.index.recipients import RecipientSet
from dispatcher.workflow.policy import prepare_areas
from dispatcher.workflow.policy import warm_up as warm_up_rules
from dispatcher.workflow.requests import StoredRequest, ValidRequest, VideoRequest
from dispatcher.workflow.review import APPROVED, DISPATCHED, Workflow, aware_now

__all__ = ["Command", "Dispatch", "Malformed", "Outcome", "Pipeline", "Submit", "scoped_id"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submit:
    """A new request, as sent: a mapping of :class:`VideoRequest`'s fields, validated by the pipeline.

    ``agency`` is who sent it, as the transport authenticated it (an agency's own stream, a credential). Then the
    request must name that agency, and its id is the agency's own: it is stored as ``<agency>:<id>``, so no agency
    can name, continue or block another's request; and it was submitted when the pipeline judges it (whatever
    ``submitted_at`` it names, if any: a backdated submission would dodge the rate limit and the retention rule).
    Without it the sender is the platform itself (a trusted writer), and the request is taken as it says."""

    request: Any
    trace: Any = None
    agency: str | None = None

    @property
    def request_id(self) -> str | None:
        """The id the request is stored under."""
        rid = self.request.get("request_id") if isinstance(self.request, dict) else None
        if not isinstance(rid, str):
            return None
        return rid if self.agency is None else scoped_id(self.agency, rid)


def scoped_id(agency_id: str, request_id: str) -> str:
    """An agency's request id as the platform stores it."""
    return f"{agency_id}:{request_id}"


@dataclass(frozen=True)
class Dispatch:
    """A reviewer approved a stored request: resolve and dispatch it."""

    request_id: str
    trace: Any = None


@dataclass(frozen=True)
class Malformed:
    """What a transport received that is no command at all; refused, with the reason."""

    reason: str
    trace: Any = None
    request_id: str | None = None


Command = Submit | Dispatch | Malformed


@dataclass(frozen=True)
class Outcome:
    """What became of one command: the request's state (``submitted``, ``approved``, ``dispatched``...) or
    ``refused: <reason>``; whether this run dispatched it (not an earlier one), and how many owners it notified."""

    request_id: str | None
    status: str
    notified: int = 0
    dispatched_now: bool = False
    #: A refusal's rule codes (the policy's, or the error's class name).
    codes: tuple[str, ...] = ()
    #: A dispatch's index version (change feed position): the one its recipient set was resolved at, recorded
    #: with the plan by the first attempt, so a retry names the same. Not part of an outcome's equality: two runs
    #: with the same effect are equal whatever the index versions they ran at.
    index_version: int | None = field(default=None, compare=False)

    @property
    def refused(self) -> bool:
        return self.status.startswith("refused")


def _refused(request_id: str | None, exc: DispatchError) -> Outcome:
    codes = getattr(exc, "codes", None) or [type(exc).__name__]
    return Outcome(request_id, f"refused: {type(exc).__name__}", codes=tuple(codes))


@dataclass
class _Job:
    """One command on its way through the steps."""

    k: int                          # its place in the batch
    request_id: str
    new: VideoRequest | None        # a submission not yet judged
    stored: StoredRequest | None = None
    valid: ValidRequest | None = None
    #: recorded by this run (so no dispatch of it can have started before)
    created: bool = False
    #: approved at once and ``created``: its recipients, resolved before it was recorded, and the plan of its
    #: first dispatch, recorded with it (both None otherwise)
    recipients: RecipientSet | None = None
    plan: Plan | None = None


class Pipeline:
    """``Pipeline(workflow, index, dispatcher).run(commands, now)``: run a batch of commands to their end."""

    def __init__(self, workflow: Workflow, index: CameraIndex, dispatcher: Dispatcher,
                 gate: RecipientGate | None = None) -> None:
        self.workflow = workflow
        self.index = index
        self.dispatcher = dispatcher
        warm_up_rules()  # the rules' kernels compiled (or loaded) now, not in the first request
        #: Asked at send time, batch by batch: opt-outs and the per-owner cap of the workflow's policy.
        self.gate = gate or OwnerGate(workflow.store, workflow.policy)

    def run(self, commands: Sequence[Command], now: datetime) -> list[Outcome]:
        """One outcome per command, in order. Raises only for failures worth retrying (Redis unreachable, a
        dispatch that could not be marked): running the same batch again is then harmless."""
        now = aware_now(now)
        out: list[Outcome | None] = [None] * len(commands)
        jobs, followers = self._decode(commands, now, out)
        jobs = self._judge(jobs, now, out)
        approved = self._record(jobs, now, out)
        for job, (notified, version) in zip(approved, self._dispatch(approved, now), strict=True):
            out[job.k] = Outcome(job.request_id, DISPATCHED, notified, dispatched_now=True, index_version=version)
        for k, leader in followers.items():  # a request named twice in the batch: the others learn the leader's end
            while leader in followers:
                leader = followers[leader]
            done = out[leader]
            out[k] = Outcome(done.request_id, done.status, codes=done.codes) if done is not None else None
        return [o if o is not None else Outcome(c.request_id, "refused: unknown request")
                for o, c in zip(out, commands, strict=True)]

    # ------------------------------------------------------------------------------------------ the steps

    def _decode(self, commands: Sequence[Command], now: datetime, out: list[Outcome | None]
                ) -> tuple[list[_Job], dict[int, int]]:
        """Submissions parsed, dispatch commands named; the rest refused. Of several commands naming one
        request in a batch, the first acts and the others (returned: command -> the first's) learn its end."""
        jobs: list[_Job] = []
        first: dict[str, int] = {}
        followers: dict[int, int] = {}
        for k, cmd in enumerate(commands):
            if isinstance(cmd, Submit):
                try:
                    job = _Job(k, "", self._authenticated(cmd, now))
                except DispatchError as exc:  # not even a request, or not the sender's: refused, and audited
                    self.workflow.refuse(cmd.request, exc, now, agency=cmd.agency)
                    out[k] = _refused(cmd.request_id, exc)
                    continue
                job.request_id = job.new.request_id  # type: ignore[union-attr]
            elif isinstance(cmd, Dispatch):
                job = _Job(k, cmd.request_id, None)
            else:
                out[k] = Outcome(cmd.request_id, f"refused: {cmd.reason}")
                continue
            leader = first.get(job.request_id)
            if leader is not None and not (job.new is not None and jobs[leader].new is None):
                followers[k] = jobs[leader].k
                continue
            if leader is not None:  # a submission leads a dispatch of the same id sent before it in the batch
                followers[jobs[leader].k] = k
                jobs[leader] = job
            else:
                first[job.request_id] = len(jobs)
                jobs.append(job)
        return jobs, followers

    @staticmethod
    def _authenticated(cmd: Submit, now: datetime) -> VideoRequest:
        """The submission as a request of its sender: an agency's own id scoped to it, submitted ``now``, and
        refused when it names another agency."""
        if cmd.agency is None:
            return VideoRequest.from_dict(cmd.request)
        vr = VideoRequest.from_dict({**cmd.request, "submitted_at": now} if isinstance(cmd.request, dict)
                                    else cmd.request)
        if vr.agency_id != cmd.agency:
            raise RequestRejected([("agency_mismatch", f"sent by {cmd.agency}, the request names "
                                                       f"{vr.agency_id[:80]!r}")])
        return replace(vr, request_id=scoped_id(cmd.agency, vr.request_id))

    def _judge(self, jobs: list[_Job], now: datetime, out: list[Outcome | None]) -> list[_Job]:
        """Look up every request named (one round trip), then validate the new ones."""
        wf = self.workflow
        found, log_ = wf.prefetch([j.request_id for j in jobs], [j.new for j in jobs if j.new is not None])
        new = [job.new for job, stored in zip(jobs, found, strict=True) if stored is None and job.new is not None]
        areas = iter(prepare_areas([v.area for v in new], wf.policy))  # their shapes measured together
        kept = []
        for job, stored in zip(jobs, found, strict=True):
            if stored is not None:         # recorded already: a redelivery, or a reviewer's dispatch command
                job.stored = stored
            elif job.new is None:
                out[job.k] = Outcome(job.request_id, "refused: unknown request")
                continue
            else:
                try:
                    job.valid = wf.check(job.new, now, log=log_, prepared=next(areas))
                except DispatchError as exc:  # refused: the audit log has it; a retry would refuse it again
                    out[job.k] = _refused(job.request_id, exc)
                    continue
                log_.accept(job.valid.request_id, job.valid.agency_id, job.valid.submitted_at)
            kept.append(job)
        return kept

    def _record(self, jobs: list[_Job], now: datetime, out: list[Outcome | None]) -> list[_Job]:
        """Record the new ones (one round trip); the approved requests to dispatch, each with its
        :class:`ValidRequest`. The others' outcome is their state. Approved at once (auto-approval), a new
        request is resolved first, and the plan of its first dispatch recorded with it, in the same atomic step
        (when the store can: a round trip saved)."""
        fresh = [(j, j.valid) for j in jobs if j.valid is not None]
        recorder = (self.dispatcher.plan_recorder(self.workflow.store)
                    if fresh and self.workflow.policy.auto_approve else None)
        with_plans = []
        if recorder is not None:
            for job, valid in fresh:
                job.recipients = self._resolve(valid, now)
                job.plan = self.dispatcher.plan(job.request_id, job.recipients)
                with_plans.append(recorder(job.plan))
        states = self.workflow.record_many([v for _, v in fresh], now, with_records=with_plans)
        for (job, valid), state in zip(fresh, states, strict=True):
            if state is None:  # another worker recorded it a moment ago: continue from its state, its request
                job.stored, job.recipients, job.plan = self.workflow.get(job.request_id), None, None
            else:
                job.stored, job.created = StoredRequest(state, valid), True
        approved = []
        for job in jobs:
            assert job.stored is not None
            if job.stored.state == APPROVED:
                approved.append(job)
            else:              # awaiting review, or dispatched, closed, rejected already: nothing to do
                out[job.k] = Outcome(job.request_id, job.stored.state)
        return approved

    def _dispatch(self, jobs: list[_Job], now: datetime) -> list[tuple[int, int | None]]:
        """Resolve, dispatch and mark the approved requests; the owners each one's run notified, and the index
        version its recipients were resolved at. What a request is sent to is decided once, by its first attempt:
        a retry (after a crash, at a later time, on another worker or index) sends the recipient set that attempt
        recorded, with its version, and resolves nothing."""
        if not jobs:
            return []
        # A request this run recorded has no plan yet (none could start before it existed): only the others' are
        # asked for (a round trip saved in the common case). Should another worker start one meanwhile, the plans'
        # registration hands this one the recorded set all the same (adopt_recorded).
        older = [j.request_id for j in jobs if not j.created]
        plans = iter(self.dispatcher.recorded(older) if older else [])
        recorded = [None if j.created else next(plans) for j in jobs]
        work = []
        for job, frozen in zip(jobs, recorded, strict=True):
            v = job.stored.request  # type: ignore[union-attr]
            header = NotificationHeader(v.request_id, v.agency_id, self.workflow.agency_name(v.agency_id),
                                        v.case_number, v.incident_type, v.start, v.end, v.message)
            work.append((header, frozen if frozen is not None else
                         job.recipients if job.recipients is not None else self._resolve(v, now)))
        reports = self.dispatcher.dispatch_many(work, gate=self.gate, now=now, adopt_recorded=True,
                                                recorded_plans=[j.plan for j in jobs])
        marked = self.workflow.mark_dispatched_many([j.request_id for j in jobs], now)
        for job, ok in zip(jobs, marked, strict=True):
            if ok:
                continue
            try:
                state = self.workflow.state(job.request_id)
            except UnknownRequest:  # the store lost it under us (Redis came back empty): run the batch again
                raise QueueUnavailable(f"request {job.request_id}: its record vanished while it was dispatched; "
                                       "the store came back without its data") from None
            if state != DISPATCHED:  # marked by another worker meanwhile: fine
                raise InvalidTransition(f"request {job.request_id}: dispatched, but could not be marked so")
        for job, rep in zip(jobs, reports, strict=True):
            log.debug("%s: %d owners notified, %d suppressed", job.request_id, rep.recipients_notified,
                      rep.suppressed)
        return [(rep.recipients_notified, rep.index_version) for rep in reports]

    def _resolve(self, v: ValidRequest, now: datetime) -> RecipientSet:
        return self.index.resolve(v.area, v.start, v.end, now=now)

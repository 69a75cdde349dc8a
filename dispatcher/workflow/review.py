"""The request workflow: an explicit state machine with an append-only audit log, owner choices, and the
:class:`OwnerGate` the dispatcher calls at send time (opt-outs and the per-owner rolling-day cap).

States: ``submitted -> approved | rejected``, ``approved -> dispatched | closed``, ``dispatched -> closed``.
Every transition, and every rejected submission, is one audit entry with its actor and time.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import numpy as np

from dispatcher.errors import DispatchError, InvalidChoice, InvalidRequest, InvalidTransition
from dispatcher.workflow.agencies import AgencyRegistry
from dispatcher.workflow.policy import Policy, RequestLog, validate
from dispatcher.workflow.requests import ValidRequest, VideoRequest
from dispatcher.workflow.store import AuditEntry, Store

log = logging.getLogger(__name__)

SUBMITTED, APPROVED, REJECTED, DISPATCHED, CLOSED = "submitted", "approved", "rejected", "dispatched", "closed"
STATES = (SUBMITTED, APPROVED, REJECTED, DISPATCHED, CLOSED)
TRANSITIONS: dict[str, frozenset[str]] = {
    SUBMITTED: frozenset({APPROVED, REJECTED}),
    APPROVED: frozenset({DISPATCHED, CLOSED}),
    DISPATCHED: frozenset({CLOSED}),
    REJECTED: frozenset(),
    CLOSED: frozenset(),
}
SHARE, DECLINE = "share", "decline"
MAX_CLIPS = 100


def _aware(now: datetime) -> datetime:
    if now.utcoffset() is None:
        raise InvalidTransition(f"now must be an aware datetime, got {now!r}")
    return now.astimezone(timezone.utc)


def _payload(v: ValidRequest) -> dict[str, Any]:
    return {"agency_id": v.agency_id, "case_number": v.case_number, "incident_type": v.incident_type,
            "investigator_contact": v.investigator_contact, "message": v.message,
            "area": v.area.to_geojson(), "start": v.start.isoformat(), "end": v.end.isoformat(),
            "submitted_at": v.submitted_at.isoformat(), "area_sq_mi": v.area_sq_mi}


class Workflow:
    """Submit, review, dispatch and close requests; record owner choices. State lives in ``store``."""

    def __init__(self, store: Store, registry: AgencyRegistry, policy: Policy | None = None) -> None:
        self.store = store
        self.registry = registry
        self.policy = policy or Policy()

    def submit(self, request: VideoRequest | Any, now: datetime, actor: str | None = None) -> str:
        """Validate and record a request; returns its state. A rejected one leaves only an audit entry and
        raises (``RequestRejected``, ``InvalidRequest``...)."""
        valid = self.check(request, now, actor)
        state = self.record_many([valid], now, actor)[0]
        if state is None:
            raise InvalidRequest(f"request id {valid.request_id!r} already exists")
        return state

    def check(self, request: VideoRequest | Any, now: datetime, actor: str | None = None,
              log: RequestLog | None = None) -> ValidRequest:
        """Validate against the policy, with ``log`` (the store by default) answering for earlier requests; a
        refusal is recorded in the audit log and raised. Nothing else is written."""
        now = _aware(now)
        rid = getattr(request, "request_id", None)
        who = actor or f"agency:{getattr(request, 'agency_id', '?')}"
        try:
            if not isinstance(request, VideoRequest):
                request = VideoRequest.from_dict(request)
            valid = validate(request, self.registry, log or self.store, now, self.policy)
        except DispatchError as exc:
            codes = getattr(exc, "codes", [type(exc).__name__])
            named = request.get("agency_id") if isinstance(request, dict) else getattr(request, "agency_id", None)
            # the agency it named, whatever it is: the transparency report counts refusals per agency
            detail = {"codes": codes, "agency_id": named[:64] if isinstance(named, str) else None}
            self.store.append_audit(str(rid)[:64] if isinstance(rid, str) else "?", str(who)[:120],
                                    "submission_refused", now, detail)
            raise
        return valid

    def record_many(self, valids: list[ValidRequest], now: datetime, actor: str | None = None) -> list[str | None]:
        """Record validated requests, each with its audit entries in one atomic step (with auto-approval,
        approved in that same step), all in one round trip; returns each one's state, None where its id exists
        already."""
        now = _aware(now)
        items = []
        for v in valids:
            entries = [AuditEntry(actor or f"agency:{v.agency_id}", SUBMITTED, now)]
            if self.policy.auto_approve:
                entries.append(AuditEntry("system:auto-approval", APPROVED, now))
            items.append((v.request_id, v.agency_id, v.submitted_at, entries[-1].action, _payload(v), entries))
        return [it[3] if ok else None for it, ok in zip(items, self.store.create_many(items), strict=True)]

    def state(self, request_id: str) -> str:
        got = self.store.get_request(request_id)
        if got is None:
            raise InvalidTransition(f"no request {request_id!r}")
        return got[0]

    def _move(self, request_id: str, new: str, actor: str, now: datetime, detail: dict[str, Any] | None = None) -> None:
        """State ``new`` with its audit entry, atomically, from the state read now."""
        now = _aware(now)
        old = self.state(request_id)
        if new not in TRANSITIONS[old] or not self.store.transition(request_id, old, new,
                                                                    AuditEntry(actor, new, now, detail or {})):
            raise InvalidTransition(f"request {request_id}: cannot go from {self.state(request_id)} to {new}")

    def approve(self, request_id: str, reviewer: str, now: datetime) -> None:
        self._move(request_id, APPROVED, f"reviewer:{reviewer}", now)

    def reject(self, request_id: str, reviewer: str, now: datetime, reason: str = "") -> None:
        self._move(request_id, REJECTED, f"reviewer:{reviewer}", now, {"reason": reason[:500]})

    def mark_dispatched(self, request_id: str, now: datetime, actor: str = "system:dispatcher") -> None:
        self._move(request_id, DISPATCHED, actor, now)

    def mark_dispatched_many(self, request_ids: list[str], now: datetime,
                             actor: str = "system:dispatcher") -> list[bool]:
        """Approved -> dispatched for each, with its audit entry, all in one round trip; False where the request
        was not approved (another worker marked it first, say)."""
        now = _aware(now)
        return self.store.transition_many([(rid, APPROVED, DISPATCHED, AuditEntry(actor, DISPATCHED, now))
                                           for rid in request_ids])

    def close(self, request_id: str, actor: str, now: datetime) -> None:
        self._move(request_id, CLOSED, actor, now)

    # -- owner choices -------------------------------------------------------------------------------------

    def _owner_choice(self, request_id: str, owner_id: int, choice: str, clips: list[str], now: datetime) -> None:
        now = _aware(now)
        if self.state(request_id) != DISPATCHED:
            raise InvalidChoice(f"request {request_id} is {self.state(request_id)}, not open for answers")
        if not self.store.was_notified(request_id, owner_id):
            raise InvalidChoice(f"owner {owner_id} was not notified of request {request_id}")
        if len(clips) > MAX_CLIPS or any(not isinstance(c, str) or not 0 < len(c) <= 128 for c in clips):
            raise InvalidChoice(f"clips must be at most {MAX_CLIPS} ids of 1-128 characters")
        self.store.set_choice(request_id, owner_id, choice, clips, now)
        self.store.append_audit(request_id, f"owner:{owner_id}", choice, now, {"clips": len(clips)})

    def share(self, request_id: str, owner_id: int, clips: list[str], now: datetime) -> None:
        if not clips:
            raise InvalidChoice("share needs at least one clip")
        self._owner_choice(request_id, owner_id, SHARE, list(clips), now)

    def decline(self, request_id: str, owner_id: int, now: datetime) -> None:
        self._owner_choice(request_id, owner_id, DECLINE, [], now)

    def opt_out(self, owner_id: int, now: datetime) -> None:
        """Opt out of every future request, at once: the gate refuses this owner from now on."""
        now = _aware(now)
        self.store.set_opted_out(owner_id, True, now)
        self.store.append_audit("-", f"owner:{owner_id}", "opt_out", now, {})

    def opt_in(self, owner_id: int, now: datetime) -> None:
        now = _aware(now)
        self.store.set_opted_out(owner_id, False, now)
        self.store.append_audit("-", f"owner:{owner_id}", "opt_in", now, {})


class PrefetchedLog:
    """The policy's view of earlier requests (:class:`RequestLog`) for a batch judged together: what the store
    said in one lookup, plus the requests accepted earlier in the same batch. Anything not prefetched is asked
    of the store."""

    def __init__(self, store: Store, known: dict[str, bool], counts: dict[tuple[str, datetime], int]) -> None:
        self.store = store
        self.known = dict(known)
        self.counts = counts
        self.accepted: list[tuple[str, datetime]] = []

    def has_request(self, request_id: str) -> bool:
        got = self.known.get(request_id)
        return self.store.has_request(request_id) if got is None else got

    def count_agency_requests(self, agency_id: str, since: datetime) -> int:
        base = self.counts.get((agency_id, since))
        if base is None:
            base = self.store.count_agency_requests(agency_id, since)
        return base + sum(1 for a, t in self.accepted if a == agency_id and t >= since)

    def accept(self, request_id: str, agency_id: str, submitted_at: datetime) -> None:
        self.known[request_id] = True
        self.accepted.append((agency_id, submitted_at))


class OwnerGate:
    """Checked by the dispatcher at send time: which owners may be notified now.

    An owner is admitted when not opted out and under ``policy.owner_cap`` notifications in the rolling
    ``policy.owner_cap_period``. Admitted owners are recorded as notified for the request, idempotently (the
    same owner for the same request is counted once and admitted again); suppressed ones are counted per
    reason (``opted_out``, ``capped``) in the store.
    """

    def __init__(self, store: Store, policy: Policy | None = None) -> None:
        self.store = store
        self.policy = policy or Policy()

    def admit(self, request_id: str, owner_ids: np.ndarray, now: datetime) -> np.ndarray:
        return self.admit_many([(request_id, owner_ids)], now)[0]

    def admit_many(self, items: list[tuple[str, np.ndarray]], now: datetime) -> list[np.ndarray]:
        now = _aware(now)
        checked = []
        for rid, owners in items:
            ids = np.ascontiguousarray(owners, dtype=np.int64)
            if ids.ndim != 1:
                raise ValueError(f"owner_ids must be one-dimensional, got shape {ids.shape}")
            checked.append((rid, ids))
        return self.store.admit_many(checked, now, self.policy.owner_cap, now - self.policy.owner_cap_period)

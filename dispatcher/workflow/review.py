"""The request workflow: an explicit state machine with an append-only audit log, and owner choices.

States: ``submitted -> approved | rejected``, ``approved -> dispatched | closed``, ``dispatched -> closed``.
Every transition, and every rejected submission, is one audit entry with its actor and time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from dispatcher.errors import DispatchError, InvalidChoice, InvalidRequest, InvalidTransition, UnknownRequest
from dispatcher.workflow.agencies import AgencyRegistry
from dispatcher.workflow.policy import Policy, PreparedArea, RequestLog, validate
from dispatcher.workflow.requests import StoredRequest, ValidRequest, VideoRequest
from dispatcher.workflow.store import AuditEntry, Store, WithRecord

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


def aware_now(now: datetime) -> datetime:
    """``now`` in UTC; a naive datetime is refused (the time a step is judged at must be unambiguous)."""
    if now.utcoffset() is None:
        raise InvalidTransition(f"now must be an aware datetime, got {now!r}")
    return now.astimezone(timezone.utc)


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
              log: RequestLog | None = None, prepared: PreparedArea | None = None) -> ValidRequest:
        """Validate against the policy, with ``log`` (the store by default) answering for earlier requests
        (``prepared``: the area, from :func:`prepare_areas` over a batch); a refusal is recorded in the audit log
        and raised. Nothing else is written."""
        now = aware_now(now)
        try:
            if not isinstance(request, VideoRequest):
                request = VideoRequest.from_dict(request)
            return validate(request, self.registry, log or self.store, now, self.policy, prepared)
        except DispatchError as exc:
            self.refuse(request, exc, now, actor)
            raise

    def refuse(self, request: VideoRequest | Any, exc: DispatchError, now: datetime, actor: str | None = None,
               agency: str | None = None) -> None:
        """Record a refused submission in the audit log: its rule codes and the agency it came from: ``agency``
        when the transport authenticated the sender, else the one it named, whatever it is (the transparency
        report counts refusals per agency)."""
        # the id only of a well-formed request: a malformed one's is not even known to be a request id
        rid = request.request_id if isinstance(request, VideoRequest) else None
        named = request.get("agency_id") if isinstance(request, dict) else getattr(request, "agency_id", None)
        who_named = agency if agency is not None else named
        codes = getattr(exc, "codes", [type(exc).__name__])
        detail = {"codes": codes, "agency_id": who_named[:64] if isinstance(who_named, str) else None}
        who = actor or f"agency:{who_named if isinstance(who_named, str) else '?'}"
        self.store.append_audit(rid[:64] if isinstance(rid, str) else "?", who[:120], "submission_refused",
                                aware_now(now), detail)

    def prefetch(self, request_ids: Sequence[str], new: Sequence[VideoRequest]
                 ) -> tuple[list[StoredRequest | None], PrefetchedLog]:
        """In one round trip: each named request as stored (None where there is none), and the policy's view of
        earlier requests for judging the ``new`` submissions together (:class:`PrefetchedLog`)."""
        windows = [(vr.agency_id, vr.submitted_at - self.policy.rate_period) for vr in new]
        found, counts = self.store.lookup(request_ids, windows)
        log = PrefetchedLog(self.store, {rid: got is not None for rid, got in zip(request_ids, found, strict=True)},
                            dict(zip(windows, counts, strict=True)))
        return [None if got is None else StoredRequest.from_record(rid, got)
                for rid, got in zip(request_ids, found, strict=True)], log

    def get(self, request_id: str) -> StoredRequest:
        got = self.store.get_request(request_id)
        if got is None:
            raise UnknownRequest(f"no request {request_id!r}")
        return StoredRequest.from_record(request_id, got)

    def agency_name(self, agency_id: str) -> str:
        return self.registry.get(agency_id).name

    def record_many(self, valids: list[ValidRequest], now: datetime, actor: str | None = None,
                    with_records: Sequence[WithRecord | None] = ()) -> list[str | None]:
        """Record validated requests, each with its audit entries in one atomic step (with auto-approval,
        approved in that same step; with ``with_records``, its hash written in it too: the dispatch plan), all
        in one round trip; returns each one's state, None where its id exists already (nothing written)."""
        now = aware_now(now)
        items = []
        for v in valids:
            entries = [AuditEntry(actor or f"agency:{v.agency_id}", SUBMITTED, now)]
            if self.policy.auto_approve:
                entries.append(AuditEntry("system:auto-approval", APPROVED, now))
            items.append((v.request_id, v.agency_id, v.submitted_at, entries[-1].action, v.to_payload(), entries))
        return [it[3] if ok else None for it, ok in zip(items, self.store.create_many(items, with_records),
                                                           strict=True)]

    def state(self, request_id: str) -> str:
        got = self.store.get_request(request_id)
        if got is None:
            raise UnknownRequest(f"no request {request_id!r}")
        return got[0]

    def _move(self, request_id: str, new: str, actor: str, now: datetime, detail: dict[str, Any] | None = None) -> None:
        """State ``new`` with its audit entry, atomically, from the state read now."""
        now = aware_now(now)
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
        now = aware_now(now)
        return self.store.transition_many([(rid, APPROVED, DISPATCHED, AuditEntry(actor, DISPATCHED, now))
                                           for rid in request_ids])

    def close(self, request_id: str, actor: str, now: datetime) -> None:
        self._move(request_id, CLOSED, actor, now)

    # -- owner choices -------------------------------------------------------------------------------------

    def _owner_choice(self, request_id: str, owner_id: int, choice: str, clips: list[str], now: datetime) -> None:
        now = aware_now(now)
        if self.state(request_id) != DISPATCHED:
            raise InvalidChoice(f"request {request_id} is {self.state(request_id)}, not open for answers")
        if not self.store.was_notified(request_id, owner_id):
            raise InvalidChoice(f"owner {owner_id} was not notified of request {request_id}")
        if len(clips) > MAX_CLIPS or any(not isinstance(c, str) or not 0 < len(c) <= 128 for c in clips):
            raise InvalidChoice(f"clips must be at most {MAX_CLIPS} ids of 1-128 characters")
        self.store.set_choice(request_id, owner_id, choice, clips, now)
        # the audit log is kept for good: it says that a resident chose, never which one (the choice itself, which
        # names them, expires with the request's other records)
        self.store.append_audit(request_id, "owner", choice, now, {"clips": len(clips)})

    def share(self, request_id: str, owner_id: int, clips: list[str], now: datetime) -> None:
        """Record that a notified owner shares ``clips`` (at least one) with the request's agency."""
        if not clips:
            raise InvalidChoice("share needs at least one clip")
        self._owner_choice(request_id, owner_id, SHARE, list(clips), now)

    def decline(self, request_id: str, owner_id: int, now: datetime) -> None:
        """Record that a notified owner declines the request (the agency sees no difference from silence)."""
        self._owner_choice(request_id, owner_id, DECLINE, [], now)

    def opt_out(self, owner_id: int, now: datetime) -> None:
        """Opt out of every future request, at once: the gate refuses this owner from now on."""
        now = aware_now(now)
        self.store.set_opted_out(owner_id, True, now)
        self.store.append_audit("-", "owner", "opt_out", now, {})

    def opt_in(self, owner_id: int, now: datetime) -> None:
        now = aware_now(now)
        self.store.set_opted_out(owner_id, False, now)
        self.store.append_audit("-", "owner", "opt_in", now, {})

    def is_opted_out(self, owner_id: int) -> bool:
        """Whether the owner has opted out of every request (what :meth:`opt_out` and :meth:`opt_in` set, and the
        gate checks at send time)."""
        return self.store.is_opted_out(owner_id)


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

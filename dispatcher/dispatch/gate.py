"""The send-time gate: which of a batch's owners may be notified now (opt-outs, the per-owner cap).

The dispatcher asks the gate batch by batch, just before a batch is appended; owners it refuses are left out of
the entry and counted as suppressed. A gate is idempotent per (request, owner), so a batch retried after a crash
admits the same owners.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

from dispatcher.errors import InvalidData
from dispatcher.workflow.notices import ADMIT
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.review import aware_now
from dispatcher.workflow.store import Store

__all__ = ["AdmitAll", "GateTerms", "OwnerGate", "RecipientGate"]


@dataclass(frozen=True)
class GateTerms:
    """What a sink re-checks and records for each batch in the same atomic step as its append: the gate's store
    (the sink must share its database), the cap, the start of the cap's window and the time of sending."""

    store: Store
    cap: int
    since: datetime
    now: datetime


class RecipientGate(Protocol):
    """Send-time admission (opt-outs, per-owner cap)."""

    def check_many(self, items: list[tuple[str, np.ndarray]], now: datetime) -> list[np.ndarray]:
        """For each (request, owner ids): the verdict of each owner (int8: ``ADMIT``, ``OPTED_OUT``,
        ``CAPPED``), all answered together and changing nothing."""
        ...

    def terms(self, now: datetime) -> GateTerms | None:
        """What the sink must record with each batch (None: nothing)."""
        ...


class AdmitAll:
    """The default gate: every recipient is admitted, nothing is recorded."""

    def check_many(self, items: list[tuple[str, np.ndarray]], now: datetime) -> list[np.ndarray]:
        return [np.full(owners.shape[0], ADMIT, dtype=np.int8) for _, owners in items]

    def terms(self, now: datetime) -> GateTerms | None:
        return None


class OwnerGate:
    """Checked by the dispatcher at send time: which owners may be notified now.

    An owner is admitted when not opted out and under ``policy.owner_cap`` notifications in the rolling
    ``policy.owner_cap_period``, counted by UTC day (:mod:`dispatcher.workflow.notices`: from 00:00 UTC of the
    day the period starts in, so never more than the cap in any rolling period, and up to a day stricter).
    Admitted owners are recorded as notified for the request, idempotently (the same owner for the same request
    is counted once and admitted again); suppressed ones are counted per reason (``opted_out``, ``capped``) in
    the store. The dispatcher checks (:meth:`check_many`) and the sink
    records with each batch's append (:meth:`terms`); :meth:`admit` checks and records at once.
    """

    def __init__(self, store: Store, policy: Policy | None = None) -> None:
        self.store = store
        self.policy = policy or Policy()

    def admit(self, request_id: str, owner_ids: np.ndarray, now: datetime) -> np.ndarray:
        return self.admit_many([(request_id, owner_ids)], now)[0]

    def admit_many(self, items: list[tuple[str, np.ndarray]], now: datetime) -> list[np.ndarray]:
        t = self.terms(now)
        return self.store.admit_many(_checked(items), t.now, t.cap, t.since)

    def check_many(self, items: list[tuple[str, np.ndarray]], now: datetime) -> list[np.ndarray]:
        t = self.terms(now)
        return self.store.check_many(_checked(items), t.now, t.cap, t.since)

    def terms(self, now: datetime) -> GateTerms:
        now = aware_now(now)
        return GateTerms(self.store, self.policy.owner_cap, now - self.policy.owner_cap_period, now)


def _checked(items: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    out = []
    for rid, owners in items:
        ids = np.ascontiguousarray(owners, dtype=np.int64)
        if ids.ndim != 1:
            raise InvalidData(f"owner_ids must be one-dimensional, got shape {ids.shape}")
        out.append((rid, ids))
    return out

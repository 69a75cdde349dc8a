"""The send-time gate: which of a batch's owners may be notified now (opt-outs, the per-owner cap).

The dispatcher asks the gate batch by batch, just before a batch is appended; owners it refuses are left out of
the entry and counted as suppressed. A gate is idempotent per (request, owner), so a batch retried after a crash
admits the same owners.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import numpy as np

from dispatcher.errors import InvalidData
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.review import aware_now
from dispatcher.workflow.store import Store

__all__ = ["AdmitAll", "OwnerGate", "RecipientGate"]


class RecipientGate(Protocol):
    """Send-time admission (opt-outs, per-owner cap). Idempotent per (request, owner)."""

    def admit_many(self, items: list[tuple[str, np.ndarray]], now: datetime) -> list[np.ndarray]:
        """For each (request, owner ids): a bool mask aligned with the owners, which may be notified now. All
        of them are answered together (one round trip to a shared store)."""
        ...


class AdmitAll:
    """The default gate: every recipient is admitted."""

    def admit_many(self, items: list[tuple[str, np.ndarray]], now: datetime) -> list[np.ndarray]:
        return [np.ones(owners.shape[0], dtype=bool) for _, owners in items]



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
        now = aware_now(now)
        checked = []
        for rid, owners in items:
            ids = np.ascontiguousarray(owners, dtype=np.int64)
            if ids.ndim != 1:
                raise InvalidData(f"owner_ids must be one-dimensional, got shape {ids.shape}")
            checked.append((rid, ids))
        return self.store.admit_many(checked, now, self.policy.owner_cap, now - self.policy.owner_cap_period)

"""The send-time gate: which of a batch's owners may be notified now (opt-outs, the per-owner cap).

The gate decides batch by batch, as each batch is appended: the :class:`OwnerGate`'s look-up and records are
part of the sink's atomic append (:meth:`RecipientGate.terms`), another gate is asked just before. Owners it
refuses are left out of the entry and counted as suppressed. A gate is idempotent per (request, owner), so a batch
retried after a crash admits the same owners.

**Upgrading from the sorted sets.** The gate once kept each owner's notices in a sorted set
(:meth:`~dispatcher.keys.Keys.legacy_owner_notices`) and now counts them per owner and UTC day; it does not read
the sorted sets (that would cost a key per owner in every append, for ever). :func:`migrate_legacy_notices`
(``geodispatch migrate-gate``) counts the notices they still hold that the cap's window can reach into the day
counters and deletes them, each owner in one script (in the owner's shard: one slot), so that the cap holds across
the upgrade; run it once the old workers are stopped, before the new ones send. Run again, it finds nothing to
count twice.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import numpy as np

from dispatcher.connections import script, with_retries
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.errors import InvalidData
from dispatcher.workflow.notices import ADMIT, DAY_US, keep_s
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.review import aware_now
from dispatcher.workflow.store import Store

__all__ = ["AdmitAll", "GateMigration", "GateTerms", "OwnerGate", "RecipientGate", "migrate_legacy_notices"]


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

    def check_many(self, items: list[tuple[str, np.ndarray]], now: datetime,
                   shards: Sequence[int] | None = None) -> list[np.ndarray]:
        """For each (request, owner ids): the verdict of each owner (int8: ``ADMIT``, ``OPTED_OUT``,
        ``CAPPED``), all answered together and changing nothing. With ``shards``, each item's owners are all
        of that gate shard, and its look-up is made there even when it has none (the same work either way)."""
        ...

    def terms(self, now: datetime) -> GateTerms | None:
        """What the sink looks up and records itself, in the same atomic step as each batch's append (then
        :meth:`check_many` is not asked); None: nothing, and the sink appends the owners :meth:`check_many`
        admits."""
        ...


class AdmitAll:
    """The default gate: every recipient is admitted, nothing is recorded."""

    def check_many(self, items: list[tuple[str, np.ndarray]], now: datetime,
                   shards: Sequence[int] | None = None) -> list[np.ndarray]:
        return [np.full(owners.shape[0], ADMIT, dtype=np.int8) for _, owners in items]

    def terms(self, now: datetime) -> GateTerms | None:
        return None


class OwnerGate:
    """Checked at send time: which owners may be notified now.

    An owner is admitted when not opted out and under ``policy.owner_cap`` notifications in the rolling
    ``policy.owner_cap_period``, counted by UTC day (:mod:`dispatcher.workflow.notices`: from 00:00 UTC of the
    day the period starts in, so never more than the cap in any rolling period, and up to a day stricter).
    Admitted owners are recorded as notified for the request, idempotently (the same owner for the same request
    is counted once and admitted again); suppressed ones are counted per reason (``opted_out``, ``capped``) in
    the store. The dispatcher's sink looks them up and records them in each batch's append (:meth:`terms`);
    :meth:`check_many` only looks, and :meth:`admit` looks and records at once.
    """

    def __init__(self, store: Store, policy: Policy | None = None) -> None:
        self.store = store
        self.policy = policy or Policy()

    def admit(self, request_id: str, owner_ids: np.ndarray, now: datetime) -> np.ndarray:
        return self.admit_many([(request_id, owner_ids)], now)[0]

    def admit_many(self, items: list[tuple[str, np.ndarray]], now: datetime) -> list[np.ndarray]:
        t = self.terms(now)
        return self.store.admit_many(_checked(items), t.now, t.cap, t.since)

    def check_many(self, items: list[tuple[str, np.ndarray]], now: datetime,
                   shards: Sequence[int] | None = None) -> list[np.ndarray]:
        t = self.terms(now)
        return self.store.check_many(_checked(items), t.now, t.cap, t.since, shards)

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


# KEYS: an owner's sorted set of before, then day counters of the owner's shard; ARGV: owner, DAY_US, the first µs
# counted, then (day, keep_s) for each day counter. Each notice from the first µs on is added to its day's counter
# (kept at least keep_s), and the sorted set deleted; the number of notices counted. -1, with nothing written, when
# a notice falls on a day not given (an old worker added it since the caller read them: read again); -2 when the
# sorted set is gone.
_MIGRATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
local at = {}
for j = 2, #KEYS do at[tonumber(ARGV[2 * j])] = j end
local got = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf', 'WITHSCORES')
local per = {}
for i = 2, #got, 2 do
  local d = math.floor(tonumber(got[i]) / tonumber(ARGV[2]))
  if not at[d] then return -1 end
  per[d] = (per[d] or 0) + 1
end
local n = 0
for d, c in pairs(per) do
  local j = at[d]
  redis.call('HINCRBY', KEYS[j], ARGV[1], c)
  local keep = tonumber(ARGV[2 * j + 1])
  local t = redis.call('TTL', KEYS[j])
  if t < 0 or t < keep then redis.call('EXPIRE', KEYS[j], keep) end
  n = n + c
end
redis.call('DEL', KEYS[1])
return n
"""
_OWNER = re.compile(r"-?[0-9]{1,19}")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class GateMigration:
    """What :func:`migrate_legacy_notices` did."""

    #: Owners' sorted sets counted into the day counters and deleted.
    owners: int = 0
    #: Notices counted (those the cap's window still reaches; older ones only deleted).
    notices: int = 0
    #: Keys left as they are: under a shard that is not their owner's (the shard count changed since), or not
    #: named by an owner id.
    skipped: list[str] = field(default_factory=list)


def migrate_legacy_notices(client: Any, settings: QueueSettings, policy: Policy | None = None,
                           now: datetime | None = None) -> GateMigration:
    """Count the notices of the owners' sorted sets of before that the cap's window can still reach (from 00:00
    UTC of the day ``now - policy.owner_cap_period`` falls in) into the day counters the gate reads, and delete
    the sorted sets: one script per owner, in the owner's shard, so an owner is counted once whatever is
    interrupted or run again. ``client`` is a Redis or Redis Cluster client on ``settings``' keys."""
    policy = policy or Policy()
    now_us = (aware_now(now or datetime.now(timezone.utc)) - _EPOCH) // timedelta(microseconds=1)
    period_us = policy.owner_cap_period // timedelta(microseconds=1)
    first_us = (now_us - period_us) // DAY_US * DAY_US
    keys = settings.keys
    run = script(client, _MIGRATE_LUA)
    done = GateMigration()
    for shard, k in enumerate(keys.all_shards):
        # a scan is not retried: interrupted, the whole migration is run again, and finds what is left
        for raw in client.scan_iter(match=k.legacy_owner_notices_pattern, count=1000, _type="zset"):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            owner = key.rsplit(":", 1)[1]
            if not _OWNER.fullmatch(owner) or keys.owner_shard(int(owner)) != shard:
                done.skipped.append(key)
                continue
            n = _migrate_owner(client, settings, run, k, key, owner, first_us, period_us, now_us)
            if n >= 0:  # else gone since the scan saw it (a scan may return a key twice)
                done.owners += 1
                done.notices += n
    return done


def _migrate_owner(client: Any, settings: QueueSettings, run: Any, k: Any, key: str, owner: str, first_us: int,
                   period_us: int, now_us: int) -> int:
    """The notices counted from ``key``, or -2 if it is gone."""
    while True:  # again only when an old worker added a notice on a new day between the read and the script
        scores = with_retries(settings, "read an owner's notices of before",
                              lambda: client.zrangebyscore(key, first_us, "+inf", withscores=True))
        days = sorted({int(s) // DAY_US for _, s in scores})
        args: list[Any] = [owner, DAY_US, first_us]
        for d in days:
            args += [d, max(1, keep_s(d, period_us, now_us))]
        call = functools.partial(run, keys=[key, *(k.notices(d) for d in days)], args=args)
        n = int(with_retries(settings, "count an owner's notices of before", call))
        if n != -1:
            return n

"""Every Redis key name geodispatch uses, in one place.

Keys share one prefix and a hash tag (``geodispatch:{gd}:...`` by default), and every multi-key script or
MULTI/EXEC names keys of one tag only, so each atomic step touches a single Redis Cluster slot. Lua scripts never
build key names: callers pass every key in ``KEYS``.

With ``shards`` above 1 the work is spread over that many hash tags, each in a slot of its own (:meth:`Keys.shard`
gives the key names of one shard: the same names under that shard's tag): a request's commands, state and plan
live in the shard of its id (:meth:`Keys.request_shard`), an owner's gate records (opt-out, cap, notified) in
the shard of the owner (:meth:`Keys.owner_shards`), a batch's done mark and the notifications stream it goes to
in the shard of its owners. What is read whole (the change feed, the API keys, the address book, evidence) keeps
the base tag. With one shard every name is the base tag's, as before shards existed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    """Key names under ``prefix`` and ``{hash_tag}``, in ``shards`` shards."""

    prefix: str = "geodispatch"
    hash_tag: str = "gd"
    shards: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.shards, int) or self.shards < 1:
            raise ValueError(f"shards must be a positive integer, got {self.shards!r}")

    # -- shards ------------------------------------------------------------------------------------------
    @cached_property
    def _shard_keys(self) -> tuple[Keys, ...]:
        if self.shards == 1:
            return (self,)
        return tuple(Keys(self.prefix, _shard_tag(self.hash_tag, s, self.shards)) for s in range(self.shards))

    def shard(self, shard: int) -> Keys:
        """The key names of shard ``shard`` (0 <= shard < shards): a one-shard :class:`Keys` under its own hash tag,
        whose slot lies in the ``shard``-th of ``shards`` equal ranges of the 16,384 slots, so that the shards fall
        on distinct masters of a cluster whose slots are split evenly (as ``redis-cli --cluster create`` does)."""
        return self._shard_keys[shard]

    @property
    def all_shards(self) -> tuple[Keys, ...]:
        return self._shard_keys

    def request_shard(self, request_id: str) -> int:
        """The shard of a request's commands and state: a CRC-32 of its id, modulo the shards."""
        return 0 if self.shards == 1 else zlib.crc32(request_id.encode()) % self.shards

    def for_request(self, request_id: str) -> Keys:
        """The key names of the request's shard."""
        return self._shard_keys[self.request_shard(request_id)]

    def owner_shards(self, owner_ids: np.ndarray) -> np.ndarray:
        """The gate shard of each owner (int64 ids): the id modulo the shards."""
        return np.asarray(owner_ids, dtype=np.int64) % self.shards

    def owner_shard(self, owner_id: int) -> int:
        return int(owner_id) % self.shards

    @property
    def notification_streams(self) -> list[str]:
        """Every shard's notifications stream (what the senders read)."""
        return [k.notifications for k in self._shard_keys]

    @cached_property
    def _base(self) -> str:
        return f"{self.prefix}:{{{self.hash_tag}}}"

    def _key(self, *parts: str) -> str:
        return ":".join((self._base, *parts))

    # -- service: the commands stream and what the workers publish ---------------------------------------
    @property
    def requests(self) -> str:
        """The platform's own stream of commands (submit, dispatch), for trusted writers: the front door that
        authenticates agencies, reviewers, operators."""
        return self._key("requests")

    def intake(self, agency_id: str) -> str:
        """One agency's own commands stream: the agency is whoever can append to it (a Redis ACL user per agency),
        never what a command says."""
        return self._key("intake", agency_id)

    def agency_outcomes(self, agency_id: str) -> str:
        """The outcomes of one agency's intake, readable by that agency alone."""
        return self._key("outcomes", "agency", agency_id)

    @property
    def dead_letters(self) -> str:
        """Commands set aside after failing every delivery."""
        return self._key("requests", "dead")

    @property
    def outcomes(self) -> str:
        """What submitters may learn of each command: the request's status (and a refusal's rule codes)."""
        return self._key("outcomes")

    @property
    def operator_outcomes(self) -> str:
        """The operators' channel: each command's outcome with its figures (owners notified, times, worker)."""
        return self._key("ops", "outcomes")

    @property
    def worker_reports(self) -> str:
        """Each worker's latest report (worker name -> its counters and batch times as JSON), for operators
        (:mod:`dispatcher.service.metrics`)."""
        return self._key("ops", "workers")

    @property
    def worker_seen(self) -> str:
        """When each worker last reported (a sorted set of worker names by unix time)."""
        return self._key("ops", "workers", "seen")

    @property
    def sender_reports(self) -> str:
        """Each notification sender's latest report (consumer name -> its counts as JSON), for operators."""
        return self._key("ops", "senders")

    @property
    def sender_seen(self) -> str:
        """When each sender last reported (a sorted set of consumer names by unix time)."""
        return self._key("ops", "senders", "seen")

    # -- the camera registry change feed ---------------------------------------------------------------
    @property
    def feed(self) -> str:
        """The change feed: camera registry changes (add, remove, sharing, opt-out), in order; every worker reads
        all of it (no consumer group)."""
        return self._key("feed")

    @property
    def feed_floor(self) -> str:
        """The feed position below which entries may have been trimmed (the oldest published snapshot's)."""
        return self._key("feed", "floor")

    @property
    def feed_rejected(self) -> str:
        """Feed entries no index could apply: position -> the error (recorded once, never retried)."""
        return self._key("feed", "rejected")

    @property
    def feed_applied(self) -> str:
        """Each feed follower's position (worker name -> the last position it applied)."""
        return self._key("feed", "applied")

    @property
    def feed_lag(self) -> str:
        """Change-to-applied times (ms) each follower measured, a capped stream for operators and benchmarks."""
        return self._key("feed", "lag")

    # -- dispatch: the notifications stream and the exactly-once bookkeeping -----------------------------
    @property
    def notifications(self) -> str:
        return self._key("notifications")

    def plan(self, request_id: str) -> str:
        return self._key("plan", request_id)

    def done(self, request_id: str) -> str:
        return self._key("done", request_id)

    @property
    def notification_dead_letters(self) -> str:
        """Notification entries no consumer could read."""
        return self._key("notifications", "dead")

    def sent(self, group: str, request_id: str) -> str:
        """Idempotency keys of the notifications of a request a consumer group has sent."""
        return self._key("sent", group, request_id)

    # -- workflow store --------------------------------------------------------------------------------
    def request(self, request_id: str) -> str:
        return self._key("req", request_id)

    @property
    def request_ids(self) -> str:
        return self._key("reqids")

    @property
    def submitted(self) -> str:
        """The requests awaiting review, by submission time (the reviewers' queue)."""
        return self._key("submitted")

    def agency_requests(self, agency_id: str) -> str:
        """An agency's requests by submission time (for the rate limit)."""
        return self._key("agency", agency_id)

    @property
    def audit(self) -> str:
        return self._key("audit")

    @property
    def opted_out(self) -> str:
        return self._key("optout")

    def notified(self, request_id: str) -> str:
        """The owners the gate admitted for a request."""
        return self._key("notified", request_id)

    def notices(self, day: int) -> str:
        """The owners' notices on one UTC day (numbered from 1970-01-01): a hash of owner -> count, for the
        per-owner cap, kept while the cap's window can reach that day."""
        return self._key("notices", str(int(day)))

    def legacy_owner_notices(self, owner_id: int | str) -> str:
        """One owner's notices as the gate kept them before the day counters: a sorted set of request ids scored by
        the time of the notice (µs), in the owner's shard. No longer written;
        :func:`dispatcher.dispatch.gate.migrate_legacy_notices` counts what is left of them into the day counters,
        once."""
        return self._key("owner", str(owner_id))

    @property
    def legacy_owner_notices_pattern(self) -> str:
        """The ``SCAN`` pattern of this shard's :meth:`legacy_owner_notices` keys."""
        return "".join("\\" + c if c in "*?[]\\" else c for c in self._base) + ":owner:*"

    def counters(self, request_id: str) -> str:
        return self._key("counters", request_id)

    def choices(self, request_id: str) -> str:
        return self._key("choices", request_id)

    # -- the HTTP API's credentials ----------------------------------------------------------------------
    @property
    def api_keys(self) -> str:
        """API keys by the SHA-256 digest of the key: each one's role, principal, key id and times."""
        return self._key("apikeys")

    @property
    def api_key_ids(self) -> str:
        """Key id -> digest, for revoking a key by the id the operator was shown."""
        return self._key("apikeys", "ids")

    # -- evidence: clips, shares (the chain of custody) and public posts ---------------------------------
    def clip(self, clip_id: str) -> str:
        """One clip: its record (``meta``, JSON) and its bytes (``data``)."""
        return self._key("clip", clip_id)

    def owner_clips(self, owner_id: int | str) -> str:
        """One owner's clip ids by recorded start (µs)."""
        return self._key("clips", "owner", str(owner_id))

    def shares(self, request_id: str) -> str:
        """The custody records of a request's shared clips: share id -> JSON."""
        return self._key("shares", request_id)

    @property
    def posts(self) -> str:
        """Public posts: post id -> JSON."""
        return self._key("posts")

    def post_cells(self, res: int) -> str:
        """The public posts placed at H3 resolution ``res``: members ``<cell>:<recorded start µs>:<post id>`` (the
        first two in fixed-width hex), all at score 0, so one H3 cell's descendants are one lexicographic range."""
        return self._key("posts", "cells", str(res))

    @property
    def posts_due(self) -> str:
        """Public posts by the time their period ends (µs): members ``<res>:<the post's member in its cells set>``,
        so that a sweep removes an expired post's record and index entry together."""
        return self._key("posts", "due")

    @property
    def evidence_secret(self) -> str:
        """The server secret of the sharers' per-request references and the share ids (made once)."""
        return self._key("evidence", "secret")

    # -- the senders' address book ----------------------------------------------------------------------
    @property
    def addresses(self) -> str:
        """Owner id -> the resident's e-mail address and push URL: read by the senders only."""
        return self._key("addresses")


def _shard_tag(base: str, shard: int, shards: int) -> str:
    """The first tag ``<base>-<shard>-<i>`` whose slot is in the ``shard``-th of ``shards`` equal slot ranges."""
    lo, hi = shard * REDIS_CLUSTER_HASH_SLOTS // shards, (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
    i = 0
    while not lo <= key_slot(f"{base}-{shard}-{i}".encode()) < hi:
        i += 1
    return f"{base}-{shard}-{i}"

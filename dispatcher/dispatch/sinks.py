"""Send-time sinks for notification batches: Redis Streams in production, an SQLite file embedded.

Both keep the exactly-once effect the same way: the first dispatch of a request records its *plan* (batch
size, owner count, digest of the recipients), and each batch is appended and marked done in one atomic step
(a Lua script on Redis, a transaction on SQLite), so a retry skips what was done.

On Redis with several shards (:class:`dispatcher.keys.Keys`), the plan lives in the request's shard and each
batch goes out as one part per gate shard: the part's owners are recorded as notified, its entry appended to that
shard's notifications stream and its done mark set, in one script in that shard's slot. With ``wait_replicas``,
the dispatch step ends with ``WAIT`` on every master it wrote to: a batch counts as done (and the command that
sent it can be acknowledged) only once a replica holds it, so a failover to that replica loses none of it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import redis

from dispatcher.connections import SlotPipeline, connect, pipeline, script, with_retries
from dispatcher.dispatch.gate import GateTerms
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.wire import BatchPart
from dispatcher.errors import InvalidData, InvalidQueueSettings, QueueFull, QueueUnavailable
from dispatcher.keys import Keys
from dispatcher.workflow.notices import (
    ADMIT,
    CAPPED,
    GATE_LUA,
    OPTED_OUT,
    CapDays,
    sqlite_record,
    sqlite_setup,
    sqlite_verdicts,
)
from dispatcher.workflow.store import RedisStore, SqliteStore, WithRecord

__all__ = ["ALREADY_DONE", "Appended", "LocalSink", "Plan", "PlanState", "RedisSink", "Sink"]

log = logging.getLogger(__name__)


#: A plan as a sink records it: (request, batch size, owners, digest, the recipient set encoded).
Plan = tuple[str, int, int, str, bytes]


@dataclass(frozen=True)
class PlanState:
    """What a sink holds of a request's plan: the batch size to use, the parts of batches already done (batch
    number, gate shard), and, when the recorded recipient set is not the one offered, the recorded one (encoded),
    with its owner count and digest."""

    batch_size: int
    done: set[tuple[int, int]]
    n_owners: int
    digest: str
    recorded: bytes | None = None


class Appended(NamedTuple):
    """What ``append_many`` did with a batch part it appended: how many of its owners the entry names, and how
    many were refused, by reason (a part whose entry would name none is marked done alone)."""

    admitted: int
    opted_out: int = 0
    capped: int = 0


#: What ``append_many`` says of a batch part an earlier attempt (or another worker) appended.
ALREADY_DONE = None


class Sink(Protocol):
    """Where batches go. ``append`` is atomic and idempotent per (request, batch number, gate shard)."""

    #: Gate shards: each batch goes out as one part per shard, each part with its own done mark.
    shards: int

    def owner_shards(self, owner_ids: np.ndarray) -> np.ndarray:
        """The gate shard of each owner."""
        ...

    def recorded_plans(self, request_ids: list[str]) -> list[bytes | None]:
        """The recipient set (encoded) each request's first dispatch recorded; None where there is none yet."""
        ...

    def register_plans(self, plans: list[Plan], now: datetime) -> list[PlanState]:
        """Record each plan on a request's first dispatch, made at ``now`` (the pipeline's clock, which also
        dates the gate's records); what is recorded for each."""
        ...

    def plan_record(self, store: Any) -> Callable[[Plan], WithRecord] | None:
        """How ``store`` can record a plan with the request itself (in the step that creates the request, so
        that the plan costs no round trip of its own): the plan as the hash the store writes. None when it
        cannot (another store, or another database than this sink's): the plan is then registered here."""
        ...

    def append_many(self, work: list[tuple[str, list[BatchPart]]], terms: GateTerms | None = None
                    ) -> list[list[Appended | None]]:
        """For each (request, batch parts): append every part not yet done and mark it done. With ``terms`` the
        sink is the gate: a part's owners are looked up (opted out, capped) and the admitted ones recorded as
        notified in the same atomic step as the entry naming them alone is appended. Without, each part carries
        its verdicts. Per part: what was appended, or ALREADY_DONE."""
        ...

    def wait_for_room(self, request_id: str) -> float:
        """Block while the queue is full (back-pressure); the seconds waited."""
        ...

    def read_all(self) -> list[tuple[str, bytes]]:
        """Every appended (request_id, payload), in order: for tests and the demo."""
        ...


# KEYS: stream, done, notified, optout, counters, then the day counters of the cap's window (today's last)
# ARGV: batch, request, ttl_s, then either '0' and the entry ('' for none), or '1' (the sink is the gate), the cap,
#       keep_s (today's counter) and the entry of every owner in pieces (BatchPart.pieces: the JSON up to the first
#       owner; the owners as decimals; the offsets and where each owner's cameras start, as int32s; the cameras as
#       decimals; the offsets as decimals). The owners are looked up and the entry of the admitted ones built here:
#       one look-up and one round trip, whoever is refused. With all of them admitted the pieces are joined as
#       they are: cutting them up per owner was a quarter of the script's time.
#   -> {} when the batch was done already, else {admitted, opted out, capped}
_APPEND_LUA = GATE_LUA + """
if redis.call('HGET', KEYS[2], ARGV[1]) then return {} end
local entry, n = ARGV[5], {0, 0, 0}
if ARGV[4] == '1' then
  local days = {}
  for i = 6, #KEYS do days[#days + 1] = KEYS[i] end
  local owners = split(ARGV[8])
  local v, seen, today = verdicts(KEYS[3], KEYS[4], days, owners, ARGV[5])
  for i = 1, #owners do n[v[i] + 1] = n[v[i] + 1] + 1 end
  local new = record(KEYS[3], KEYS[#KEYS], owners, v, seen, today, ARGV[6])
  if n[2] > 0 then redis.call('HINCRBY', KEYS[5], 'opted_out', n[2]) end
  if n[3] > 0 then redis.call('HINCRBY', KEYS[5], 'capped', n[3]) end
  keep_records(KEYS[3], KEYS[5], new, ARGV[3])
  entry = ''
  if n[1] > 0 and n[1] == #owners then
    entry = ARGV[7] .. ARGV[8] .. '],"offsets":[' .. ARGV[11] .. '],"cameras":[' .. ARGV[10] .. ']}'
  elseif n[1] > 0 then
    -- at: the owners' n + 1 offsets, then where each one's cameras start in the cameras' text (from base on)
    local at, cameras = int32s(ARGV[9]), ARGV[10]
    local o, off, cams, k, total = {}, {0}, {}, 0, 0
    local base = #owners + 1
    for i = 1, #owners do
      if v[i] == 0 then
        local c = at[i + 1] - at[i]
        k = k + 1
        o[k] = owners[i]
        if c > 0 then cams[#cams + 1] = string.sub(cameras, at[base + i] + 1, at[base + i + 1] - 1) end
        total = total + c
        off[k + 1] = total
      end
    end
    entry = ARGV[7] .. table.concat(o, ',') .. '],"offsets":[' .. table.concat(off, ',') .. '],"cameras":[' ..
      table.concat(cams, ',') .. ']}'
  end
end
local id = '-'
if entry ~= '' then
  id = redis.call('XADD', KEYS[1], '*', 'request', ARGV[2], 'batch', ARGV[1], 'data', entry)
end
redis.call('HSET', KEYS[2], ARGV[1], id)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return n
"""

# KEYS: plan, done; ARGV: batch_size, n_owners, digest, recipients, ttl_s
#   -> {batch_size, n_owners, digest, recorded recipients ('' when the same), done batch numbers...}
# (RedisSink.plan_record writes the same hash, with the request's record.)
_PLAN_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'batch_size', 'n_owners', 'digest')
if not cur[1] then
  redis.call('HSET', KEYS[1], 'batch_size', ARGV[1], 'n_owners', ARGV[2], 'digest', ARGV[3], 'recipients', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return {ARGV[1], ARGV[2], ARGV[3], ''}
end
if cur[3] == ARGV[3] then cur[4] = '' else cur[4] = redis.call('HGET', KEYS[1], 'recipients') or '' end
local done = redis.call('HKEYS', KEYS[2])
for i = 1, #done do cur[#cur + 1] = done[i] end
return cur
"""


def _given(b: BatchPart) -> np.ndarray:
    """The verdicts a part carries from a gate the sink does not hold."""
    if b.verdicts is None:
        raise InvalidData(f"batch {b.batch_no} carries no verdicts, and the sink was given no gate terms to decide")
    return b.verdicts


def _counted(verdicts: np.ndarray) -> Appended:
    """A part's owners admitted and refused, by reason, counted from their verdicts."""
    return Appended(int((verdicts == ADMIT).sum()), int((verdicts == OPTED_OUT).sum()),
                    int((verdicts == CAPPED).sum()))


def _us(t: datetime) -> int:
    return int(round(t.timestamp() * 1_000_000))


class RedisSink:
    """The production sink: one stream, per-request plan and done hashes, all under one hash tag."""

    def __init__(self, client_or_settings: redis.Redis | QueueSettings, settings: QueueSettings | None = None,
                 keys: Keys | None = None) -> None:
        if isinstance(client_or_settings, QueueSettings):
            self.settings = client_or_settings
            self.client = connect(client_or_settings)
        else:
            self.settings = settings or QueueSettings(url="redis://")
            self.client = client_or_settings
        self.keys = keys or self.settings.keys
        self.shards = self.keys.shards
        self._append = script(self.client, _APPEND_LUA)
        self._plan = script(self.client, _PLAN_LUA)

    def owner_shards(self, owner_ids: np.ndarray) -> np.ndarray:
        return self.keys.owner_shards(owner_ids)

    def recorded_plans(self, request_ids: list[str]) -> list[bytes | None]:
        def run() -> list[Any]:
            pipe = pipeline(self.client)
            for rid in request_ids:
                pipe.hget(self.keys.for_request(rid).plan(rid), "recipients")
            return list(pipe.execute())
        return [bytes(x) if x else None for x in with_retries(self.settings, "plans", run)] if request_ids else []

    def register_plans(self, plans: list[Plan], now: datetime) -> list[PlanState]:
        """Each plan recorded (or read) in its request's shard by one script, which also answers the done marks
        kept there; the other gate shards' done marks read in the same round trip. A plan lives ``retention_s``
        from its first dispatch as its key's time to live, so ``now`` dates nothing here."""
        k = self.keys

        def run() -> list[Any]:
            pipe = pipeline(self.client)
            for rid, size, n, digest, blob in plans:
                home = k.for_request(rid)
                self._plan(keys=[home.plan(rid), home.done(rid)],
                           args=[size, n, digest, blob, self.settings.retention_s], client=pipe)
                for g in range(k.shards):
                    if k.shard(g) is not home:
                        pipe.hkeys(k.shard(g).done(rid))
            return list(pipe.execute())

        got = iter(with_retries(self.settings, "plan", run))
        out = []
        for rid, *_ in plans:
            home = k.request_shard(rid)
            plan = next(got)
            done = {(int(x), home) for x in plan[4:]}
            for g in range(k.shards):
                if g != home:
                    done.update((int(x), g) for x in next(got))
            out.append(PlanState(int(plan[0]), done, int(plan[1]), _s(plan[2]), bytes(plan[3]) if plan[3] else None))
        return out

    def plan_record(self, store: Any) -> Callable[[Plan], WithRecord] | None:
        """A :class:`RedisStore` on this sink's keys writes the plan hash as ``_PLAN_LUA`` would, in the
        request's slot (the plan lives in the request's shard), with the same time to live."""
        if not isinstance(store, RedisStore) or store.k != self.keys:
            return None
        ttl = self.settings.retention_s

        def record(plan: Plan) -> WithRecord:
            rid, size, n, digest, blob = plan
            return (self.keys.for_request(rid).plan(rid),
                    ("batch_size", size, "n_owners", n, "digest", digest, "recipients", blob), ttl)
        return record

    def append_many(self, work: list[tuple[str, list[BatchPart]]], terms: GateTerms | None = None
                    ) -> list[list[Appended | None]]:
        if terms is not None and (not isinstance(terms.store, RedisStore) or terms.store.k != self.keys):
            raise InvalidQueueSettings("the gate's store must be a RedisStore on this sink's Redis and keys: an "
                                       "owner is counted as notified in the same step as their batch is appended")

        calls = [(rid, b) for rid, batches in work for b in batches]
        days = None if terms is None else CapDays.of(_us(terms.since), _us(terms.now))
        day_keys = [[] if days is None else days.redis_keys(k) for k in self.keys.all_shards]
        ttl = self.settings.retention_s
        # each part's arguments after its batch, request and ttl (built once: a retry resends the same)
        args: list[list[Any]] = []
        for _, b in calls:
            if terms is None or days is None:
                args.append(["0", b.entry(_given(b) == ADMIT) or b""])
            else:
                args.append(["1", terms.cap, days.keep_s, *b.pieces()])

        def queue(pipe: Any, rid: str, b: BatchPart, rest: list[Any]) -> None:
            k = self.keys.shard(b.shard)
            self._append(keys=[k.notifications, k.done(rid), k.notified(rid), k.opted_out, k.counters(rid),
                               *day_keys[b.shard]],
                         args=[b.batch_no, rid, ttl, *rest], client=pipe)

        def run() -> list[Any]:
            pipe = pipeline(self.client)
            for (rid, b), rest in zip(calls, args, strict=True):
                queue(pipe, rid, b, rest)
            if not self.settings.wait_replicas:
                return list(pipe.execute())
            wait = (self.settings.wait_replicas, self.settings.wait_timeout_ms)
            if isinstance(pipe, SlotPipeline):
                return pipe.execute(wait=wait)
            pipe.execute_command("WAIT", *wait)  # the same connection as the writes: WAIT counts those
            *got, acked = pipe.execute()
            if int(acked) < wait[0]:
                raise QueueUnavailable(f"{acked} of {wait[0]} replicas confirmed the dispatch step in {wait[1]} ms")
            return list(got)

        # Safe to resend the whole pipeline: the script skips batches already done.
        flat = iter(with_retries(self.settings, "append", run))
        out: list[list[Appended | None]] = []
        for _, batches in work:
            out.append([])
            for b in batches:
                got = next(flat)
                if not got:
                    out[-1].append(ALREADY_DONE)
                elif terms is None:
                    out[-1].append(_counted(_given(b)))
                else:
                    out[-1].append(Appended(*(int(x) for x in got)))
        return out

    def _groups(self, stream: str) -> list[dict[str, Any]] | None:
        """The stream's consumer groups; None when the stream does not exist yet."""
        try:
            return list(self.client.xinfo_groups(stream))
        except redis.ResponseError:
            return None

    def backlog(self) -> int:
        """Entries not yet acknowledged by every consumer group (the stream length when there is no group): the
        largest over the shards' notifications streams."""
        return max(self._backlog(stream) for stream in self.keys.notification_streams)

    def _backlog(self, stream: str) -> int:
        def run() -> int:
            groups = self._groups(stream)
            if groups is None:
                return 0
            if not groups:
                return int(self.client.xlen(stream))
            worst = 0
            last = None
            for g in groups:
                lag = g.get("lag")
                if lag != 0:
                    # After a restart Redis 7.0 forgets how far a group has read (lag None) and can then report a
                    # wrong lag: a group whose last delivered entry is the stream's last has none, else count
                    # the entries after it (up to the limit, which is all a full-queue check needs).
                    last = last or self.client.xinfo_stream(stream)["last-generated-id"]
                    delivered = g.get("last-delivered-id")
                    if delivered == last:
                        lag = 0
                    elif lag is None:
                        cap = (self.settings.max_backlog or 100_000) + 1
                        after: Any = self.client.xrange(stream, min=b"(" + _b(delivered or b"0-0"), count=cap)
                        lag = len(after or [])
                worst = max(worst, int(lag) + int(g.get("pending", 0)))
            return worst
        return with_retries(self.settings, "backlog", run)

    def wait_for_room(self, request_id: str) -> float:
        limit = self.settings.max_backlog
        if not limit:
            return 0.0
        t0 = time.monotonic()
        warned = False
        while (n := self.backlog()) >= limit:
            waited = time.monotonic() - t0
            if not warned:
                log.warning("queue full (%d entries unacknowledged, limit %d): dispatch of %s waits",
                            n, limit, request_id)
                warned = True
            if waited > self.settings.backpressure_timeout:
                raise QueueFull(f"queue still full after {waited:.1f} s ({n} entries unacknowledged, limit {limit})")
            time.sleep(self.settings.backpressure_poll)
        return time.monotonic() - t0

    def trim_acknowledged(self) -> int:
        """Trim entries every group has acknowledged (never one still pending or undelivered), in every shard."""
        return sum(with_retries(self.settings, "trim", partial(trim_acknowledged, self.client, stream))
                   for stream in self.keys.notification_streams)

    def read_all(self) -> list[tuple[str, bytes]]:
        """Every entry of every shard's stream (shard by shard, each in order)."""
        out = []
        for stream in self.keys.notification_streams:
            entries: Any = self.client.xrange(stream)
            out += [(bytes(f[b"request"]).decode(), bytes(f[b"data"])) for _id, f in entries]
        return out


def trim_acknowledged(client: Any, stream: str) -> int:
    """Trim the entries of ``stream`` that every consumer group has acknowledged: never one still pending or not
    yet delivered to some group (a stream without groups is left alone). Returns the entries trimmed."""
    try:
        groups = list(client.xinfo_groups(stream))
    except redis.ResponseError:  # no such stream
        return 0
    if not groups:
        return 0
    bound: tuple[int, int] | None = None
    for g in groups:
        pend = client.xpending(stream, g["name"])
        if pend["pending"]:
            ms, seq = (int(x) for x in _s(pend["min"]).split("-"))
            cand = (ms, seq)
        else:
            ms, seq = (int(x) for x in _s(g["last-delivered-id"]).split("-"))
            cand = (ms, seq + 1)
        bound = cand if bound is None or cand < bound else bound
    assert bound is not None
    return int(client.xtrim(stream, minid=f"{bound[0]}-{bound[1]}", approximate=False))


def _b(x: str | bytes) -> bytes:
    return x if isinstance(x, bytes) else x.encode()


def _s(x: str | bytes) -> str:
    return x.decode() if isinstance(x, bytes) else x


class LocalSink:
    """The embedded sink: an SQLite file (WAL, synchronous=FULL). One transaction per group of batches, with the
    (request, batch) primary key making a re-append a no-op: the same exactly-once guarantee, no server. With an
    owners' gate, the sink and the gate's :class:`SqliteStore` are one file, so that the gate's records are
    written in the same transaction as the batch."""

    #: One file: no gate shards.
    shards = 1

    def owner_shards(self, owner_ids: np.ndarray) -> np.ndarray:
        return np.zeros(np.shape(owner_ids), np.int64)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = threading.local()
        c = self._conn()
        c.execute("CREATE TABLE IF NOT EXISTS plans (request_id TEXT PRIMARY KEY, batch_size INTEGER NOT NULL,"
                  " n_owners INTEGER NOT NULL, digest TEXT NOT NULL, recipients BLOB, created_us INTEGER)")
        columns = {row[1] for row in c.execute("PRAGMA table_info(plans)")}
        for column in ("recipients BLOB", "created_us INTEGER"):
            if column.split()[0] not in columns:  # a file of before
                c.execute(f"ALTER TABLE plans ADD COLUMN {column}")
        c.execute("CREATE TABLE IF NOT EXISTS done (request_id TEXT NOT NULL, batch_no INTEGER NOT NULL,"
                  " seq INTEGER, PRIMARY KEY (request_id, batch_no))")
        c.execute("CREATE TABLE IF NOT EXISTS notifications (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                  " request_id TEXT NOT NULL, batch_no INTEGER NOT NULL, payload BLOB NOT NULL)")
        sqlite_setup(c)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            self._local.conn = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def recorded_plans(self, request_ids: list[str]) -> list[bytes | None]:
        c = self._conn()
        rows = [c.execute("SELECT recipients FROM plans WHERE request_id = ?", (rid,)).fetchone()
                for rid in request_ids]
        return [bytes(r[0]) if r is not None and r[0] is not None else None for r in rows]

    def plan_record(self, store: Any) -> None:
        """Plans are rows of this file, registered here."""
        return None

    def register_plans(self, plans: list[Plan], now: datetime) -> list[PlanState]:
        """Each plan recorded on its first dispatch, dated ``now`` (the pipeline's clock, as the store's records
        are), from which :meth:`expire_records` counts its retention."""
        return [self._register_plan(*p, _us(now)) for p in plans]

    def _register_plan(self, request_id: str, batch_size: int, n_owners: int, digest: str,
                       blob: bytes, created_us: int) -> PlanState:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT OR IGNORE INTO plans VALUES (?, ?, ?, ?, ?, ?)",
                      (request_id, batch_size, n_owners, digest, blob, created_us))
            size, n, dig, recorded = c.execute("SELECT batch_size, n_owners, digest, recipients FROM plans "
                                               "WHERE request_id = ?", (request_id,)).fetchone()
            done = {(r[0], 0) for r in c.execute("SELECT batch_no FROM done WHERE request_id = ?", (request_id,))}
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return PlanState(int(size), done, int(n), dig, None if dig == digest or recorded is None else bytes(recorded))

    def append_many(self, work: list[tuple[str, list[BatchPart]]], terms: GateTerms | None = None
                    ) -> list[list[Appended | None]]:
        if terms is not None and (not isinstance(terms.store, SqliteStore)
                                  or Path(terms.store.path).resolve() != self.path.resolve()):
            raise InvalidQueueSettings(f"the gate's store must be a SqliteStore on this sink's file {self.path}: "
                                       "an owner is counted as notified in the same step as their batch is appended")
        return [self._append_one(rid, batches, terms) for rid, batches in work]

    def _append_one(self, request_id: str, batches: list[BatchPart], terms: GateTerms | None
                    ) -> list[Appended | None]:
        c = self._conn()
        days = CapDays.of(_us(terms.since), _us(terms.now)) if terms is not None else CapDays(0, 0, 0)
        out: list[Appended | None] = []
        c.execute("BEGIN IMMEDIATE")
        try:
            for b in batches:
                if c.execute("SELECT 1 FROM done WHERE request_id = ? AND batch_no = ?",
                             (request_id, b.batch_no)).fetchone():
                    out.append(ALREADY_DONE)
                    continue
                verdicts = (_given(b) if terms is None else
                            sqlite_verdicts(c, request_id, b.owners.tolist(), terms.cap, days))
                done = _counted(verdicts)
                if terms is not None:  # the gate's look-up and its records, in the append's transaction
                    sqlite_record(c, request_id, b.owners[verdicts == ADMIT].tolist(), _us(terms.now), days,
                                  {"opted_out": done.opted_out, "capped": done.capped})
                entry = b.entry(verdicts == ADMIT)
                seq = None
                if entry is not None:
                    seq = c.execute("INSERT INTO notifications (request_id, batch_no, payload) VALUES (?, ?, ?)",
                                    (request_id, b.batch_no, entry)).lastrowid
                c.execute("INSERT INTO done VALUES (?, ?, ?)", (request_id, b.batch_no, seq))
                out.append(done)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return out

    def wait_for_room(self, request_id: str) -> float:
        return 0.0

    def expire_records(self, now: datetime, retention: timedelta) -> int:
        """Delete what names residents of the requests first dispatched more than ``retention`` ago: their plan
        (the recipient set), done marks and notification batches. Returns the requests expired."""
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            old = [r[0] for r in c.execute("SELECT request_id FROM plans WHERE created_us < ?",
                                           (_us(now - retention),))]
            for table in ("notifications", "done", "plans"):
                c.executemany(f"DELETE FROM {table} WHERE request_id = ?", [(r,) for r in old])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return len(old)

    def read_all(self) -> list[tuple[str, bytes]]:
        rows = self._conn().execute("SELECT request_id, payload FROM notifications ORDER BY seq").fetchall()
        return [(r, bytes(p)) for r, p in rows]

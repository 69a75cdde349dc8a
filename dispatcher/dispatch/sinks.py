"""Send-time sinks for notification batches: Redis Streams in production, an SQLite file embedded.

Both keep the exactly-once effect the same way: the first dispatch of a request records its *plan* (batch
size, owner count, digest of the recipients), and each batch is appended and marked done in one atomic step
(a Lua script on Redis, a transaction on SQLite), so a retry skips what was done.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import redis

from dispatcher.connections import connect, with_retries
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.wire import PreparedBatch
from dispatcher.errors import DispatchConflict, QueueFull
from dispatcher.keys import Keys

__all__ = ["LocalSink", "RedisSink", "Sink"]

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where batches go. ``append`` is atomic and idempotent per (request, batch number)."""

    def register_plans(self, plans: list[tuple[str, int, int, str]]) -> list[tuple[int, set[int]]]:
        """For each (request, batch size, owners, digest): record the plan on first dispatch; return the batch
        size to use and the batches already done; raise DispatchConflict on a mismatch."""
        ...

    def append_many(self, work: list[tuple[str, list[PreparedBatch]]]) -> list[list[bool]]:
        """For each (request, batches): append every batch not yet done (marking it done); True where this
        call appended it."""
        ...

    def wait_for_room(self, request_id: str) -> float:
        """Block while the queue is full (back-pressure); the seconds waited."""
        ...

    def read_all(self) -> list[tuple[str, bytes]]:
        """Every appended (request_id, payload), in order: for tests and the demo."""
        ...


_APPEND_LUA = """
local done = redis.call('HGET', KEYS[2], ARGV[1])
if done then return 0 end
local id = '-'
if ARGV[3] ~= '' then
  id = redis.call('XADD', KEYS[1], '*', 'request', ARGV[2], 'batch', ARGV[1], 'data', ARGV[3])
end
redis.call('HSET', KEYS[2], ARGV[1], id)
return 1
"""

# KEYS: plan, done; ARGV: batch_size, n_owners, digest -> {batch_size, n_owners, digest, done batch numbers...}
_PLAN_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'batch_size', 'n_owners', 'digest')
if not cur[1] then
  redis.call('HSET', KEYS[1], 'batch_size', ARGV[1], 'n_owners', ARGV[2], 'digest', ARGV[3])
  return {ARGV[1], ARGV[2], ARGV[3]}
end
local done = redis.call('HKEYS', KEYS[2])
for i = 1, #done do cur[#cur + 1] = done[i] end
return cur
"""


def _check_plan(request_id: str, n: int, dig: str, n_owners: int, digest: str) -> None:
    if n != n_owners or dig != digest:
        raise DispatchConflict(f"request {request_id!r} was first dispatched to {n} owners (digest {dig}); "
                               f"this attempt has {n_owners} owners (digest {digest})")


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
        self._append = self.client.register_script(_APPEND_LUA)
        self._plan = self.client.register_script(_PLAN_LUA)

    def register_plans(self, plans: list[tuple[str, int, int, str]]) -> list[tuple[int, set[int]]]:
        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for rid, size, n, digest in plans:
                self._plan(keys=[self.keys.plan(rid), self.keys.done(rid)], args=[size, n, digest], client=pipe)
            return pipe.execute()

        out = []
        for (rid, _, n_owners, digest), got in zip(plans, with_retries(self.settings, "plan", run), strict=True):
            size, n, dig = int(got[0]), int(got[1]), got[2].decode() if isinstance(got[2], bytes) else got[2]
            _check_plan(rid, n, dig, n_owners, digest)
            out.append((size, {int(x) for x in got[3:]}))
        return out

    def append_many(self, work: list[tuple[str, list[PreparedBatch]]]) -> list[list[bool]]:
        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for rid, batches in work:
                for b in batches:
                    self._append(keys=[self.keys.notifications, self.keys.done(rid)],
                                 args=[b.batch_no, rid, b.payload or b""], client=pipe)
            return pipe.execute()

        # Safe to resend the whole pipeline: the script skips batches already done.
        flat = iter(with_retries(self.settings, "append", run))
        return [[bool(next(flat)) for _ in batches] for _, batches in work]

    def _groups(self) -> list[dict[str, Any]] | None:
        """The stream's consumer groups; None when the stream does not exist yet."""
        try:
            return list(self.client.xinfo_groups(self.keys.notifications))
        except redis.ResponseError:
            return None

    def backlog(self) -> int:
        """Entries not yet acknowledged by every consumer group (the stream length when there is no group)."""
        def run() -> int:
            groups = self._groups()
            if groups is None:
                return 0
            if not groups:
                return int(self.client.xlen(self.keys.notifications))
            worst = 0
            last = None
            for g in groups:
                lag = g.get("lag")
                if lag != 0:
                    # After a restart Redis 7.0 forgets how far a group has read (lag None) and can then report a
                    # wrong lag: a group whose last delivered entry is the stream's last has none, else count
                    # the entries after it (up to the limit, which is all a full-queue check needs).
                    last = last or self.client.xinfo_stream(self.keys.notifications)["last-generated-id"]
                    delivered = g.get("last-delivered-id")
                    if delivered == last:
                        lag = 0
                    elif lag is None:
                        cap = (self.settings.max_backlog or 100_000) + 1
                        after: Any = self.client.xrange(self.keys.notifications, min=b"(" + _b(delivered or b"0-0"),
                                                        count=cap)
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
        """Trim entries every group has acknowledged (never one still pending or undelivered)."""
        def run() -> int:
            groups = self._groups()
            if not groups:
                return 0
            bound: tuple[int, int] | None = None
            for g in groups:
                pend = self.client.xpending(self.keys.notifications, g["name"])
                if pend["pending"]:
                    ms, seq = (int(x) for x in _s(pend["min"]).split("-"))
                    cand = (ms, seq)
                else:
                    ms, seq = (int(x) for x in _s(g["last-delivered-id"]).split("-"))
                    cand = (ms, seq + 1)
                bound = cand if bound is None or cand < bound else bound
            assert bound is not None
            return int(self.client.xtrim(self.keys.notifications, minid=f"{bound[0]}-{bound[1]}", approximate=False))
        return with_retries(self.settings, "trim", run)

    def read_all(self) -> list[tuple[str, bytes]]:
        entries: Any = self.client.xrange(self.keys.notifications)
        return [(bytes(f[b"request"]).decode(), bytes(f[b"data"])) for _id, f in entries]


def _b(x: str | bytes) -> bytes:
    return x if isinstance(x, bytes) else x.encode()


def _s(x: str | bytes) -> str:
    return x.decode() if isinstance(x, bytes) else x


class LocalSink:
    """The embedded sink: an SQLite file (WAL, synchronous=FULL). One transaction per group of batches, with the
    (request, batch) primary key making a re-append a no-op: the same exactly-once guarantee, no server."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = threading.local()
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS plans (request_id TEXT PRIMARY KEY, batch_size INTEGER NOT NULL,"
                      " n_owners INTEGER NOT NULL, digest TEXT NOT NULL)")
            c.execute("CREATE TABLE IF NOT EXISTS done (request_id TEXT NOT NULL, batch_no INTEGER NOT NULL,"
                      " seq INTEGER, PRIMARY KEY (request_id, batch_no))")
            c.execute("CREATE TABLE IF NOT EXISTS notifications (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                      " request_id TEXT NOT NULL, batch_no INTEGER NOT NULL, payload BLOB NOT NULL)")

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

    def register_plans(self, plans: list[tuple[str, int, int, str]]) -> list[tuple[int, set[int]]]:
        return [self._register_plan(*p) for p in plans]

    def _register_plan(self, request_id: str, batch_size: int, n_owners: int, digest: str) -> tuple[int, set[int]]:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT OR IGNORE INTO plans VALUES (?, ?, ?, ?)", (request_id, batch_size, n_owners, digest))
            size, n, dig = c.execute("SELECT batch_size, n_owners, digest FROM plans WHERE request_id = ?",
                                     (request_id,)).fetchone()
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        _check_plan(request_id, n, dig, n_owners, digest)
        return int(size), self._done_batches(request_id)

    def _done_batches(self, request_id: str) -> set[int]:
        rows = self._conn().execute("SELECT batch_no FROM done WHERE request_id = ?", (request_id,)).fetchall()
        return {r[0] for r in rows}

    def append_many(self, work: list[tuple[str, list[PreparedBatch]]]) -> list[list[bool]]:
        return [self._append_one(rid, batches) for rid, batches in work]

    def _append_one(self, request_id: str, batches: list[PreparedBatch]) -> list[bool]:
        c = self._conn()
        out = []
        c.execute("BEGIN IMMEDIATE")
        try:
            for b in batches:
                if c.execute("SELECT 1 FROM done WHERE request_id = ? AND batch_no = ?",
                             (request_id, b.batch_no)).fetchone():
                    out.append(False)
                    continue
                seq = None
                if b.payload is not None:
                    seq = c.execute("INSERT INTO notifications (request_id, batch_no, payload) VALUES (?, ?, ?)",
                                    (request_id, b.batch_no, b.payload)).lastrowid
                c.execute("INSERT INTO done VALUES (?, ?, ?)", (request_id, b.batch_no, seq))
                out.append(True)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return out

    def wait_for_room(self, request_id: str) -> float:
        return 0.0

    def read_all(self) -> list[tuple[str, bytes]]:
        rows = self._conn().execute("SELECT request_id, payload FROM notifications ORDER BY seq").fetchall()
        return [(r, bytes(p)) for r, p in rows]

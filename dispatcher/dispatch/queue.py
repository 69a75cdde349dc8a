"""Dispatch: stream a request's recipients, in batches, to a queue with no loss and no duplicates.

Exactly-once effect
-------------------
The owners of a :class:`RecipientSet` are ascending, so ``(request_id, batch size)`` fixes the batches: batch
``k`` is owners ``[k * size, (k + 1) * size)``. The first dispatch of a request records its *plan* (batch size,
owner count and a digest of the owner and camera ids); later attempts reuse the recorded batch size and refuse a
different recipient set (:class:`DispatchConflict`). Each batch is appended by one Lua script that checks the
request's *done* hash, XADDs the batch and records the batch number there, atomically: a retry, a racing worker
or a worker restarted after SIGKILL skips every batch already appended and appends the rest. The gate (opt-outs,
per-owner cap) is asked at send time, batch by batch; it is idempotent per (request, owner), so a batch retried
after a crash admits the same owners.

Keys live in :class:`Keys` only. All keys of one stream share a hash tag (``{gd}`` by default), so the script's
keys sit in one Redis Cluster slot and the same code runs on a cluster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import numpy as np
import orjson
import redis

from dispatcher.errors import DispatchConflict, InvalidQueueSettings, QueueFull, QueueUnavailable
from dispatcher.index.recipients import RecipientSet

log = logging.getLogger(__name__)

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------- interface
@dataclass(frozen=True)
class NotificationHeader:
    """What every notification of one request says, apart from the owner's own cameras."""

    request_id: str
    agency_id: str
    agency_name: str
    case_number: str
    incident_type: str
    start: datetime
    end: datetime
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "request_id": self.request_id, "agency_id": self.agency_id, "agency_name": self.agency_name,
            "case_number": self.case_number, "incident_type": self.incident_type,
            "start": self.start.isoformat(), "end": self.end.isoformat(), "message": self.message,
        }


class RecipientGate(Protocol):
    """Send-time admission (opt-outs, per-owner cap). Idempotent per (request, owner)."""

    def admit(self, request_id: str, owner_ids: np.ndarray, now: datetime) -> np.ndarray:
        """A bool mask aligned with ``owner_ids``: which owners may be notified now."""
        ...

    # A gate may also offer ``admit_many(items: [(request_id, owner_ids)], now) -> [mask]`` to answer several
    # at once (one round trip to a shared store); without it the dispatcher asks ``admit`` for each.


class AdmitAll:
    """The default gate: every recipient is admitted."""

    def admit(self, request_id: str, owner_ids: np.ndarray, now: datetime) -> np.ndarray:
        return np.ones(owner_ids.shape[0], dtype=bool)

    def admit_many(self, items: list[tuple[str, np.ndarray]], now: datetime) -> list[np.ndarray]:
        return [self.admit(rid, owners, now) for rid, owners in items]


# ---------------------------------------------------------------------------------------------------- settings
_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class QueueSettings:
    """Connection and dispatch settings. ``url=None`` means the embedded local sink at ``local_path``."""

    url: str | None = None
    local_path: str = "geodispatch-outbox.sqlite"
    hash_tag: str = "gd"
    prefix: str = "geodispatch"
    batch_size: int = 500
    pipeline_batches: int = 64
    socket_timeout: float = 5.0
    connect_timeout: float = 2.0
    retries: int = 8
    backoff_base: float = 0.05
    backoff_max: float = 2.0
    max_backlog: int = 0                   # entries not yet acked by every group; 0 = unbounded
    backpressure_timeout: float = 300.0
    backpressure_poll: float = 0.05

    def __post_init__(self) -> None:
        for name in ("batch_size", "pipeline_batches"):
            if getattr(self, name) < 1:
                raise InvalidQueueSettings(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("socket_timeout", "connect_timeout", "backoff_base", "backoff_max", "backpressure_poll"):
            if not getattr(self, name) > 0:
                raise InvalidQueueSettings(f"{name} must be positive, got {getattr(self, name)}")
        if self.retries < 0 or self.max_backlog < 0 or self.backpressure_timeout < 0:
            raise InvalidQueueSettings("retries, max_backlog and backpressure_timeout must not be negative")
        if not self.hash_tag or any(c in self.hash_tag for c in "{}"):
            raise InvalidQueueSettings(f"hash_tag must be non-empty without braces, got {self.hash_tag!r}")

    @classmethod
    def _coerce(cls, values: dict[str, str], source: str) -> dict[str, Any]:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in fields:
                raise InvalidQueueSettings(f"unknown queue setting {key!r} in {source}; known: {sorted(fields)}")
            default = getattr(cls, key, None)
            try:
                if isinstance(default, bool):
                    low = raw.lower()
                    if low not in _BOOL_TRUE | _BOOL_FALSE:
                        raise ValueError(raw)
                    out[key] = low in _BOOL_TRUE
                elif isinstance(default, int):
                    out[key] = int(raw)
                elif isinstance(default, float):
                    out[key] = float(raw)
                else:
                    out[key] = raw
            except ValueError:
                raise InvalidQueueSettings(f"queue setting {key}={raw!r} in {source} is not a valid value") from None
        return out

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> QueueSettings:
        """``redis://host:port/db?batch_size=300&retries=5``: query parameters named after our fields are ours
        (unknown ones raise); the rest of the URL goes to redis-py."""
        parts = urlsplit(url)
        ours = dict(parse_qsl(parts.query, keep_blank_values=True))
        values = cls._coerce(ours, f"URL {urlunsplit(parts._replace(query=''))}")
        values.update(overrides)
        return cls(url=urlunsplit(parts._replace(query="")), **values)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> QueueSettings:
        """``GEODISPATCH_REDIS_URL`` plus ``GEODISPATCH_QUEUE_<FIELD>``; a misspelled field raises."""
        env = os.environ if environ is None else environ
        prefix = "GEODISPATCH_QUEUE_"
        values = {k[len(prefix):].lower(): v for k, v in env.items() if k.startswith(prefix)}
        coerced = cls._coerce(values, "the environment")
        url = env.get("GEODISPATCH_REDIS_URL") or coerced.pop("url", None) or None
        coerced.pop("url", None)
        if url:
            return cls.from_url(url, **coerced)
        return cls(**coerced)

    def client(self) -> redis.Redis:
        if self.url is None:
            raise InvalidQueueSettings("no Redis URL set: use the local sink")
        return redis.Redis.from_url(self.url, socket_timeout=self.socket_timeout,
                                    socket_connect_timeout=self.connect_timeout, health_check_interval=30)

    def open_sink(self) -> Sink:
        """The production path when a URL is set, else the embedded durable sink."""
        if self.url is None:
            return LocalSink(self.local_path)
        return RedisSink(self)


def with_retries(settings: QueueSettings, what: str, fn: Callable[[], T]) -> T:
    """``fn()`` retried on connection errors and timeouts, with exponential backoff and full jitter."""
    attempt = 0
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if attempt >= settings.retries:
                raise QueueUnavailable(f"Redis unreachable during {what} after {attempt + 1} attempts: {exc}") from exc
            delay = random.uniform(0, min(settings.backoff_max, settings.backoff_base * 2 ** attempt))
            log.warning("Redis error during %s (attempt %d): %s; retrying in %.3f s", what, attempt + 1, exc, delay)
            time.sleep(delay)
            attempt += 1


# -------------------------------------------------------------------------------------------------------- keys
@dataclass(frozen=True)
class Keys:
    """Every Redis key name, in one place. All share the hash tag, hence one cluster slot."""

    prefix: str = "geodispatch"
    hash_tag: str = "gd"

    @property
    def stream(self) -> str:
        return f"{self.prefix}:{{{self.hash_tag}}}:notifications"

    def plan(self, request_id: str) -> str:
        return f"{self.prefix}:{{{self.hash_tag}}}:plan:{request_id}"

    def done(self, request_id: str) -> str:
        return f"{self.prefix}:{{{self.hash_tag}}}:done:{request_id}"

    def sent(self, group: str) -> str:
        return f"{self.prefix}:{{{self.hash_tag}}}:sent:{group}"


# ------------------------------------------------------------------------------------------------------ encode
def plan_digest(recipients: RecipientSet) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in (recipients.owner_ids, recipients.owner_offsets, recipients.camera_ids):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()


def encode_batch(header_json: bytes, batch_no: int, owners: np.ndarray, offsets: np.ndarray,
                 cameras: np.ndarray) -> bytes:
    """One batch as JSON, columnar: ``owners[k]``'s cameras are ``cameras[offsets[k]:offsets[k + 1]]``.
    Built straight from numpy slices, no per-owner Python objects."""
    body = orjson.dumps({"batch": batch_no, "owners": owners, "offsets": offsets, "cameras": cameras},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    return b'{"header":' + header_json + b"," + body[1:]


@dataclass(frozen=True)
class Notification:
    """One owner's notification: the request's header and that owner's cameras, no other recipient."""

    header: dict[str, str]
    owner_id: int
    camera_ids: tuple[int, ...]


def decode_batch(payload: bytes) -> tuple[int, list[Notification]]:
    d = orjson.loads(payload)
    header, owners, off, cams = d["header"], d["owners"], d["offsets"], d["cameras"]
    return d["batch"], [Notification(header, int(o), tuple(cams[off[k]:off[k + 1]])) for k, o in enumerate(owners)]


@dataclass
class PreparedBatch:
    batch_no: int
    payload: bytes | None      # None: every owner of the batch was suppressed; mark done, append nothing
    n_owners: int              # owners in the batch
    n_admitted: int


def encode_gated(header_json: bytes, batch_no: int, recipients: RecipientSet, lo: int, hi: int,
                 mask: np.ndarray) -> PreparedBatch:
    """Owners ``lo:hi`` of ``recipients`` as batch ``batch_no``, keeping those ``mask`` admits."""
    owners = recipients.owner_ids[lo:hi]
    off = recipients.owner_offsets[lo:hi + 1]
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != owners.shape:
        raise ValueError(f"gate returned a mask of shape {mask.shape} for {owners.shape[0]} owners")
    k = int(mask.sum())
    if k == 0:
        return PreparedBatch(batch_no, None, hi - lo, 0)
    cams_all = recipients.camera_ids
    if k == hi - lo:
        o, rel, cams = owners, off - off[0], cams_all[off[0]:off[-1]]
    else:
        counts = np.diff(off)[mask]
        rel = np.zeros(k + 1, np.int64)
        np.cumsum(counts, out=rel[1:])
        o = owners[mask]
        cams = cams_all[off[0]:off[-1]][np.repeat(mask, np.diff(off))]
    return PreparedBatch(batch_no, encode_batch(header_json, batch_no, o, rel, cams), hi - lo, k)


# ------------------------------------------------------------------------------------------------------- sinks
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

    def wait_for_room(self, report: DispatchReport) -> None: ...

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
            self.client = client_or_settings.client()
        else:
            self.settings = settings or QueueSettings(url="redis://")
            self.client = client_or_settings
        self.keys = keys or Keys(self.settings.prefix, self.settings.hash_tag)
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
                    self._append(keys=[self.keys.stream, self.keys.done(rid)],
                                 args=[b.batch_no, rid, b.payload or b""], client=pipe)
            return pipe.execute()

        # Safe to resend the whole pipeline: the script skips batches already done.
        flat = iter(with_retries(self.settings, "append", run))
        return [[bool(next(flat)) for _ in batches] for _, batches in work]

    def _groups(self) -> list[dict[str, Any]] | None:
        """The stream's consumer groups; None when the stream does not exist yet."""
        try:
            return list(self.client.xinfo_groups(self.keys.stream))
        except redis.ResponseError:
            return None

    def backlog(self) -> int:
        """Entries not yet acknowledged by every consumer group (the stream length when there is no group)."""
        def run() -> int:
            groups = self._groups()
            if groups is None:
                return 0
            if not groups:
                return int(self.client.xlen(self.keys.stream))
            worst = 0
            last = None
            for g in groups:
                lag = g.get("lag")
                if lag != 0:
                    # After a restart Redis 7.0 forgets how far a group has read (lag None) and can then report a
                    # wrong lag: a group whose last delivered entry is the stream's last has none, else count
                    # the entries after it (up to the limit, which is all a full-queue check needs).
                    last = last or self.client.xinfo_stream(self.keys.stream)["last-generated-id"]
                    delivered = g.get("last-delivered-id")
                    if delivered == last:
                        lag = 0
                    elif lag is None:
                        cap = (self.settings.max_backlog or 100_000) + 1
                        after: Any = self.client.xrange(self.keys.stream, min=b"(" + _b(delivered or b"0-0"),
                                                        count=cap)
                        lag = len(after or [])
                worst = max(worst, int(lag) + int(g.get("pending", 0)))
            return worst
        return with_retries(self.settings, "backlog", run)

    def wait_for_room(self, report: DispatchReport) -> None:
        limit = self.settings.max_backlog
        if not limit:
            return
        t0 = time.monotonic()
        warned = False
        while (n := self.backlog()) >= limit:
            waited = time.monotonic() - t0
            if not warned:
                log.warning("queue full (%d entries unacknowledged, limit %d): dispatch of %s waits",
                            n, limit, report.request_id)
                warned = True
            if waited > self.settings.backpressure_timeout:
                report.backpressure_wait_s += waited
                raise QueueFull(f"queue still full after {waited:.1f} s ({n} entries unacknowledged, limit {limit})")
            time.sleep(self.settings.backpressure_poll)
        report.backpressure_wait_s += time.monotonic() - t0

    def trim_acknowledged(self) -> int:
        """Trim entries every group has acknowledged (never one still pending or undelivered)."""
        def run() -> int:
            groups = self._groups()
            if not groups:
                return 0
            bound: tuple[int, int] | None = None
            for g in groups:
                pend = self.client.xpending(self.keys.stream, g["name"])
                if pend["pending"]:
                    ms, seq = (int(x) for x in _s(pend["min"]).split("-"))
                    cand = (ms, seq)
                else:
                    ms, seq = (int(x) for x in _s(g["last-delivered-id"]).split("-"))
                    cand = (ms, seq + 1)
                bound = cand if bound is None or cand < bound else bound
            assert bound is not None
            return int(self.client.xtrim(self.keys.stream, minid=f"{bound[0]}-{bound[1]}", approximate=False))
        return with_retries(self.settings, "trim", run)

    def read_all(self) -> list[tuple[str, bytes]]:
        entries: Any = self.client.xrange(self.keys.stream)
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

    def wait_for_room(self, report: DispatchReport) -> None:
        return None

    def read_all(self) -> list[tuple[str, bytes]]:
        rows = self._conn().execute("SELECT request_id, payload FROM notifications ORDER BY seq").fetchall()
        return [(r, bytes(p)) for r, p in rows]


# -------------------------------------------------------------------------------------------------- dispatcher
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
            self.sink.wait_for_room(reports[units[0][0]])
            asks = [(jobs[j][0].request_id, jobs[j][1].owner_ids[lo:hi]) for j, _, lo, hi in units]
            many = getattr(gate, "admit_many", None)
            masks = many(asks, now) if many is not None else [gate.admit(rid, o, now) for rid, o in asks]
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

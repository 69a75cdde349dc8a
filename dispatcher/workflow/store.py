"""Workflow state that survives a restart. :class:`SqliteStore` is the embedded default; :class:`RedisStore`
shares state between workers. Both implement :class:`Store`, and the same tests run against both.

Redis key names come from :class:`dispatcher.keys.Keys`; multi-key steps are Lua scripts (one atomic step each)
whose keys share one hash tag, so each runs in one cluster slot. With several shards a request's state (its
record, audit entries, the review queue's and the agency's indexes of it, choices) lives in the request's shard,
and an owner's gate records (opt-out, notified marks, the cap's day counters of the shard's owners) in the
owner's: each gate step is split by owner shard and what reads a whole (counters, the review queue, the audit log)
reads every shard.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson

from dispatcher.connections import connect, pipeline, script, with_retries
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.errors import InvalidData, InvalidRequest
from dispatcher.keys import Keys
from dispatcher.workflow.notices import (
    ADMIT,
    DAY_US,
    GATE_LUA,
    REASONS,
    CapDays,
    sqlite_record,
    sqlite_setup,
    sqlite_verdicts,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (request_id TEXT PRIMARY KEY, agency_id TEXT NOT NULL,
    submitted_us INTEGER NOT NULL, state TEXT NOT NULL, payload BLOB NOT NULL, agency_seq INTEGER);
CREATE TABLE IF NOT EXISTS agency_counts (agency_id TEXT PRIMARY KEY, n INTEGER NOT NULL,
    last_us INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS requests_state ON requests (state, submitted_us);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL,
    actor TEXT NOT NULL, action TEXT NOT NULL, at_us INTEGER NOT NULL, detail BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_append_only_u BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_d BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS choices (request_id TEXT NOT NULL, owner_id INTEGER NOT NULL, choice TEXT NOT NULL,
    clips BLOB NOT NULL, at_us INTEGER NOT NULL, pseudonym TEXT, PRIMARY KEY (request_id, owner_id));
"""
#: An agency's requests counted in two index lookups (``SqliteStore.count_agency_requests``): each request's
#: place among its agency's in submission order (1, 2, ...; by time, then insertion), and each agency's total.
_SEQ_COLUMN = "ALTER TABLE requests ADD COLUMN agency_seq INTEGER"
#: (The index it replaces, on (agency_id, submitted_us), is dropped: this one answers what that one did.)
_SEQ_INDEX = """
CREATE INDEX IF NOT EXISTS requests_agency_seq ON requests (agency_id, submitted_us, agency_seq);
DROP INDEX IF EXISTS requests_agency;
"""
#: Every request of the agency numbered again in submission order, and its total with them: for stores written
#: before the numbers were kept, and after a request recorded with an earlier time than one already there (another
#: process's clock, a platform writer's own time).
_RENUMBER = """
UPDATE requests SET agency_seq = o.k FROM (SELECT rowid AS id, ROW_NUMBER() OVER (ORDER BY submitted_us, rowid) AS k
    FROM requests WHERE agency_id = ?1) AS o WHERE requests.rowid = o.id
"""
_RECOUNT = """
INSERT OR REPLACE INTO agency_counts SELECT agency_id, COUNT(*), MAX(submitted_us) FROM requests
    WHERE agency_id = ?1 GROUP BY agency_id
"""
#: The agency's requests at or after a time, in one statement (one snapshot of the file): its total less the place
#: of the first of them; no row when there is none.
_COUNT_SINCE = """
SELECT c.n - f.agency_seq + 1 FROM agency_counts AS c, (SELECT agency_seq FROM requests
    WHERE agency_id = ?1 AND submitted_us >= ?2 ORDER BY submitted_us, agency_seq LIMIT 1) AS f
    WHERE c.agency_id = ?1
"""
#: Added to stores written before pseudonyms were kept with the shares.
_PSEUDONYM_COLUMN = "ALTER TABLE choices ADD COLUMN pseudonym TEXT"
_PSEUDONYM_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS choices_pseudonym ON choices (request_id, pseudonym)"

#: ``name(nameless owners, names already taken in the request)`` -> a new pseudonym for each of those owners.
Namer = Callable[[list[int], set[str]], dict[int, str]]


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` .. ``COMMIT`` on ``db`` (autocommit mode), rolled back if the block raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _us(t: datetime) -> int:
    return int(round(t.timestamp() * 1_000_000))


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log, written in the same atomic step as the change it records."""

    actor: str
    action: str
    at: datetime
    detail: dict[str, Any] = field(default_factory=dict)


#: (request id, agency id, submitted at, state, payload, audit entries)
NewRequest = tuple[str, str, datetime, str, dict[str, Any], Sequence[AuditEntry]]
#: A hash to write with a new request, in the same atomic step and only if the request is new: (key, field and
#: value pairs, time to live in seconds). A request approved at once carries its dispatch plan so (the sink's
#: :meth:`plan_record`), which saves the plan a round trip of its own.
WithRecord = tuple[str, Sequence[Any], int]


class Store(Protocol):
    """Request states and the audit log, owner choices and the notification gate's bookkeeping. A change of
    state and its audit entry are written together (``create_request``, ``transition``) or not at all."""

    def has_request(self, request_id: str) -> bool: ...
    def count_agency_requests(self, agency_id: str, since: datetime) -> int: ...
    def create_request(self, request_id: str, agency_id: str, submitted_at: datetime, state: str,
                       payload: dict[str, Any], entries: Sequence[AuditEntry] = ()) -> None: ...
    def get_request(self, request_id: str) -> tuple[str, dict[str, Any]] | None: ...
    def request_ids(self) -> list[str]: ...
    def agency_request_ids(self, agency_id: str, limit: int) -> list[str]:
        """The ids of the requests naming ``agency_id``, newest submission first, at most ``limit``."""
        ...
    def submitted_ids(self, limit: int) -> list[str]:
        """The ids of the requests awaiting review, oldest submission first, at most ``limit``: read from an
        index of submitted requests, never by scanning every request."""
        ...
    def create_many(self, items: Sequence[NewRequest], with_records: Sequence[WithRecord | None] = ()
                    ) -> list[bool]:
        """Record each new request with its audit entries (and its ``with_records`` hash, when one is given for
        it), atomically per request; False where the id exists already (then nothing is written)."""
        ...
    def lookup(self, request_ids: Sequence[str], windows: Sequence[tuple[str, datetime]]
               ) -> tuple[list[tuple[str, dict[str, Any]] | None], list[int]]: ...
    def transition(self, request_id: str, old: str, new: str, entry: AuditEntry) -> bool: ...
    def transition_many(self, items: Sequence[tuple[str, str, str, AuditEntry]]) -> list[bool]: ...
    def append_audit(self, request_id: str, actor: str, action: str, at: datetime, detail: dict[str, Any]) -> None: ...
    def audit(self, request_id: str | None = None) -> list[dict[str, Any]]: ...
    def set_opted_out(self, owner_id: int, opted_out: bool, at: datetime) -> None: ...
    def is_opted_out(self, owner_id: int) -> bool:
        """Whether the owner is in the opt-out set the gate checks (read only: the owner's own state, for the
        owner's page)."""
        ...
    def admit(self, request_id: str, owner_ids: np.ndarray, now: datetime, cap: int, since: datetime) -> np.ndarray: ...
    def admit_many(self, items: Sequence[tuple[str, np.ndarray]], now: datetime, cap: int,
                   since: datetime) -> list[np.ndarray]: ...
    def check_many(self, items: Sequence[tuple[str, np.ndarray]], now: datetime, cap: int,
                   since: datetime, shards: Sequence[int] | None = None) -> list[np.ndarray]:
        """The gate's verdict (``notices.ADMIT``, ``OPTED_OUT``, ``CAPPED``) for each owner, changing nothing.
        With ``shards``: each item's owners are all of that gate shard, where its look-up is made, owners or
        none."""
        ...
    def counters(self, request_id: str) -> dict[str, int]: ...
    def was_notified(self, request_id: str, owner_id: int) -> bool: ...
    def notified_count(self, request_id: str) -> int:
        """Owners notified of the request: an aggregate, kept after the records naming them expired."""
        ...
    def set_choice(self, request_id: str, owner_id: int, choice: str, clips: list[str], at: datetime) -> None: ...
    def choices(self, request_id: str) -> list[tuple[int, str, list[str]]]: ...
    def pseudonyms(self, request_id: str, owner_ids: Sequence[int], name: Namer) -> dict[int, str]: ...


class SqliteStore:
    """The embedded store: one SQLite file (or ``:memory:``), every multi-row change in one transaction."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL" if str(path) != ":memory:" else "PRAGMA journal_mode=MEMORY")
        sqlite_setup(self._db, _SCHEMA)
        if "pseudonym" not in {row[1] for row in self._db.execute("PRAGMA table_info(choices)")}:
            self._db.execute(_PSEUDONYM_COLUMN)
        self._db.execute(_PSEUDONYM_INDEX)
        if "agency_seq" not in {row[1] for row in self._db.execute("PRAGMA table_info(requests)")}:
            with self._transaction():
                self._db.execute(_SEQ_COLUMN)
                for (agency_id,) in self._db.execute("SELECT DISTINCT agency_id FROM requests").fetchall():
                    self._renumber(agency_id)
        self._db.executescript(_SEQ_INDEX)
        #: The file, for a sink that must record the gate's decisions in the same database (":memory:" has none).
        self.path = str(path)

    def close(self) -> None:
        self._db.close()

    def has_request(self, request_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM requests WHERE request_id=?", (request_id,)).fetchone() is not None

    def count_agency_requests(self, agency_id: str, since: datetime) -> int:
        """The agency's requests submitted at ``since`` or later: its total less the place of the first of them,
        two index lookups however many there are (the requests are numbered in submission order)."""
        row = self._db.execute(_COUNT_SINCE, (agency_id, _us(since))).fetchone()
        return 0 if row is None else int(row[0])

    def _renumber(self, agency_id: str) -> None:
        """Inside a transaction: the agency's requests numbered again in submission order, and counted."""
        self._db.execute(_RENUMBER, (agency_id,))
        self._db.execute(_RECOUNT, (agency_id,))

    def create_request(self, request_id: str, agency_id: str, submitted_at: datetime, state: str,
                       payload: dict[str, Any], entries: Sequence[AuditEntry] = ()) -> None:
        if not self.create_many([(request_id, agency_id, submitted_at, state, payload, entries)])[0]:
            raise InvalidRequest(f"request id {request_id!r} already exists")

    def create_many(self, items: Sequence[NewRequest], with_records: Sequence[WithRecord | None] = ()
                    ) -> list[bool]:
        if any(w is not None for w in with_records):
            raise TypeError("SqliteStore records no Redis hash with a request: its sink registers plans itself")
        out = []
        for rid, agency_id, submitted_at, state, payload, entries in items:
            us = _us(submitted_at)
            with self._lock, self._transaction():
                n, last = self._db.execute("SELECT n, last_us FROM agency_counts WHERE agency_id=?",
                                           (agency_id,)).fetchone() or (0, us)
                try:
                    self._db.execute("INSERT INTO requests VALUES (?,?,?,?,?,?)",
                                     (rid, agency_id, us, state, orjson.dumps(payload), n + 1))
                except sqlite3.IntegrityError:
                    out.append(False)
                    continue
                if us < last:  # recorded out of order: its place is not the last; number them again
                    self._renumber(agency_id)
                else:
                    self._db.execute("INSERT OR REPLACE INTO agency_counts VALUES (?,?,?)", (agency_id, n + 1, us))
                for e in entries:
                    self._insert_audit(rid, e)
                out.append(True)
        return out

    def lookup(self, request_ids: Sequence[str], windows: Sequence[tuple[str, datetime]]
               ) -> tuple[list[tuple[str, dict[str, Any]] | None], list[int]]:
        return ([self.get_request(r) for r in request_ids],
                [self.count_agency_requests(a, since) for a, since in windows])

    def _transaction(self) -> AbstractContextManager[None]:
        return immediate(self._db)

    def _insert_audit(self, request_id: str, e: AuditEntry) -> None:
        self._db.execute("INSERT INTO audit (request_id, actor, action, at_us, detail) VALUES (?,?,?,?,?)",
                         (request_id, e.actor, e.action, _us(e.at), orjson.dumps(e.detail)))

    def get_request(self, request_id: str) -> tuple[str, dict[str, Any]] | None:
        row = self._db.execute("SELECT state, payload FROM requests WHERE request_id=?", (request_id,)).fetchone()
        return None if row is None else (row[0], orjson.loads(row[1]))

    def request_ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT request_id FROM requests ORDER BY request_id")]

    def agency_request_ids(self, agency_id: str, limit: int) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT request_id FROM requests WHERE agency_id=? "
                                               "ORDER BY submitted_us DESC, request_id LIMIT ?", (agency_id, limit))]

    def submitted_ids(self, limit: int) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT request_id FROM requests WHERE state='submitted' "
                                               "ORDER BY submitted_us, request_id LIMIT ?", (limit,))]

    def transition_many(self, items: Sequence[tuple[str, str, str, AuditEntry]]) -> list[bool]:
        return [self.transition(*it) for it in items]

    def transition(self, request_id: str, old: str, new: str, entry: AuditEntry) -> bool:
        with self._lock, self._transaction():
            cur = self._db.execute("UPDATE requests SET state=? WHERE request_id=? AND state=?",
                                   (new, request_id, old))
            if cur.rowcount != 1:
                return False
            self._insert_audit(request_id, entry)
            return True

    def append_audit(self, request_id: str, actor: str, action: str, at: datetime, detail: dict[str, Any]) -> None:
        with self._lock:
            self._insert_audit(request_id, AuditEntry(actor, action, at, detail))

    def audit(self, request_id: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT seq, request_id, actor, action, at_us, detail FROM audit"
        rows = (self._db.execute(q + " ORDER BY seq") if request_id is None
                else self._db.execute(q + " WHERE request_id=? ORDER BY seq", (request_id,)))
        return [{"seq": r[0], "request_id": r[1], "actor": r[2], "action": r[3], "at": _dt(r[4]),
                 "detail": orjson.loads(r[5])} for r in rows]

    def set_opted_out(self, owner_id: int, opted_out: bool, at: datetime) -> None:
        with self._lock:
            if opted_out:
                self._db.execute("INSERT OR REPLACE INTO opted_out VALUES (?,?)", (int(owner_id), _us(at)))
            else:
                self._db.execute("DELETE FROM opted_out WHERE owner_id=?", (int(owner_id),))

    def is_opted_out(self, owner_id: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM opted_out WHERE owner_id=?", (int(owner_id),)).fetchone()
        return row is not None


    def admit(self, request_id: str, owner_ids: np.ndarray, now: datetime, cap: int, since: datetime) -> np.ndarray:
        """In one transaction: per owner, already notified for this request -> True (not counted again);
        opted out -> False (counted ``opted_out``); ``cap`` notifications on the UTC days from the one holding
        ``since`` to today -> False (``capped``); otherwise recorded as notified -> True."""
        owners = owner_ids.tolist()
        days = CapDays.of(_us(since), _us(now))
        with self._lock, self._transaction():
            codes = sqlite_verdicts(self._db, request_id, owners, cap, days)
            sqlite_record(self._db, request_id, [o for o, c in zip(owners, codes, strict=True) if c == ADMIT],
                          _us(now), days, {name: int((codes == code).sum()) for code, name in REASONS.items()})
        return np.asarray(codes == ADMIT)

    def expire_records(self, now: datetime, retention: timedelta) -> int:
        """Delete the records that name residents older than ``retention``: who was notified, their choices and
        the cap's day counters of before (which the gate also drops as soon as its window has passed them, at its
        next record); the aggregate counts stay. Returns the rows deleted. (Redis expires its records by itself.)"""
        cutoff = _us(now - retention)
        with self._lock, self._transaction():
            gone = self._db.execute("DELETE FROM notified WHERE at_us < ?", (cutoff,)).rowcount
            gone += self._db.execute("DELETE FROM choices WHERE at_us < ?", (cutoff,)).rowcount
            gone += self._db.execute("DELETE FROM owner_days WHERE day < ?", (cutoff // DAY_US,)).rowcount
        return int(gone)

    def check_many(self, items: Sequence[tuple[str, np.ndarray]], now: datetime, cap: int,
                   since: datetime, shards: Sequence[int] | None = None) -> list[np.ndarray]:
        days = CapDays.of(_us(since), _us(now))
        with self._lock:
            return [sqlite_verdicts(self._db, rid, owners.tolist(), cap, days) for rid, owners in items]

    def admit_many(self, items: Sequence[tuple[str, np.ndarray]], now: datetime, cap: int,
                   since: datetime) -> list[np.ndarray]:
        return [self.admit(rid, owners, now, cap, since) for rid, owners in items]

    def counters(self, request_id: str) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in
                self._db.execute("SELECT name, n FROM counters WHERE request_id=?", (request_id,))}

    def was_notified(self, request_id: str, owner_id: int) -> bool:
        return self._db.execute("SELECT 1 FROM notified WHERE request_id=? AND owner_id=?",
                                (request_id, int(owner_id))).fetchone() is not None

    def notified_count(self, request_id: str) -> int:
        return self.counters(request_id).get("notified", 0)

    def set_choice(self, request_id: str, owner_id: int, choice: str, clips: list[str], at: datetime) -> None:
        """The owner's latest choice; a pseudonym the owner was given stays with it."""
        with self._lock:
            self._db.execute("INSERT INTO choices (request_id, owner_id, choice, clips, at_us) VALUES (?,?,?,?,?) "
                             "ON CONFLICT(request_id, owner_id) DO UPDATE SET choice = excluded.choice, "
                             "clips = excluded.clips, at_us = excluded.at_us",
                             (request_id, int(owner_id), choice, orjson.dumps(clips), _us(at)))

    def choices(self, request_id: str) -> list[tuple[int, str, list[str]]]:
        return [(int(r[0]), r[1], orjson.loads(r[2])) for r in self._db.execute(
            "SELECT owner_id, choice, clips FROM choices WHERE request_id=? ORDER BY owner_id", (request_id,))]

    def pseudonyms(self, request_id: str, owner_ids: Sequence[int], name: Namer) -> dict[int, str]:
        """Each owner's pseudonym in the request, kept with the owner's choice: the one given before, or one
        from ``name`` for those without, in one transaction (so two views cannot give one owner two names)."""
        want = sorted({int(o) for o in owner_ids})
        if not want:
            return {}
        with self._lock, self._transaction():
            rows = dict(self._db.execute("SELECT owner_id, pseudonym FROM choices WHERE request_id=?",
                                         (request_id,)).fetchall())
            missing = [o for o in want if o not in rows]
            if missing:
                raise InvalidData(f"owner {missing[0]} has made no choice in request {request_id!r}")
            new = name([o for o in want if rows[o] is None], {n for n in rows.values() if n is not None})
            for o, n in new.items():
                self._db.execute("UPDATE choices SET pseudonym=? WHERE request_id=? AND owner_id=?",
                                 (n, request_id, o))
                rows[o] = n
        return {o: rows[o] for o in want}


# KEYS: req, reqids, agency, audit, submitted[, the hash written with it];
# ARGV: rid, submitted_us, state, payload, audit entries (n), n, the hash's ttl_s, its field and value pairs...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'payload', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if ARGV[3] == 'submitted' then redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1]) end
local n = tonumber(ARGV[5])
for i = 6, 5 + n do redis.call('RPUSH', KEYS[4], ARGV[i]) end
if KEYS[6] then
  redis.call('HSET', KEYS[6], unpack(ARGV, 7 + n))
  redis.call('EXPIRE', KEYS[6], ARGV[6 + n])
end
return 1
"""
# KEYS: req, audit, submitted; ARGV: old, new, audit entry, rid
_CAS = """
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
if ARGV[1] == 'submitted' then redis.call('ZREM', KEYS[3], ARGV[4]) end
return 1
"""
# KEYS: notified, optout, counters, then the day counters of the cap's window (today's last);
# ARGV: cap, keep_s (today's counter), ttl_s, owners...
_ADMIT = GATE_LUA + """
local days = {}
for i = 4, #KEYS do days[#days + 1] = KEYS[i] end
local owners = owners_from(4)
local v, seen, today = verdicts(KEYS[1], KEYS[2], days, owners, ARGV[1])
local new = record(KEYS[1], KEYS[#KEYS], owners, v, seen, today, ARGV[2])
local counts = {0, 0}
for i = 1, #v do if v[i] > 0 then counts[v[i]] = counts[v[i]] + 1 end end
if counts[1] > 0 then redis.call('HINCRBY', KEYS[3], 'opted_out', counts[1]) end
if counts[2] > 0 then redis.call('HINCRBY', KEYS[3], 'capped', counts[2]) end
keep_records(KEYS[1], KEYS[3], new, ARGV[3])
return v
"""
# KEYS: notified, optout, then the day counters of the cap's window; ARGV: cap, owners...
_CHECK = "#!lua flags=no-writes\n" + GATE_LUA + """
local days = {}
for i = 3, #KEYS do days[#days + 1] = KEYS[i] end
local v = verdicts(KEYS[1], KEYS[2], days, owners_from(2), ARGV[1])
return v
"""


def pipelined(client: Any, settings: QueueSettings, what: str, build: Callable[[Any], object],
              transaction: bool = False) -> list[Any]:
    """One pipelined round trip of the commands ``build`` queues (a MULTI/EXEC with ``transaction``), built anew
    for each attempt of the retry policy (every step queued must be safe to run again)."""
    def run() -> list[Any]:
        pipe = client.pipeline(transaction=True) if transaction else pipeline(client)
        build(pipe)
        return list(pipe.execute())
    return with_retries(settings, what, run)


class RedisStore:
    """The shared store: the same behaviour as :class:`SqliteStore`, on Redis. Takes the client as an argument."""

    def __init__(self, client: Any, keys: Keys | None = None, settings: QueueSettings | None = None) -> None:
        self.r = client
        self.k = keys or Keys()
        #: The retry policy of every call (transient trouble: a dropped connection, a full or loading Redis).
        self.settings = settings or QueueSettings(url="redis://")
        self._create = script(client, _CREATE)
        self._cas = script(client, _CAS)
        self._admit = script(client, _ADMIT)
        self._check = script(client, _CHECK)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store on the Redis at ``url`` (queue settings in its query, e.g. ``?hash_tag=east``, apply)."""
        settings = QueueSettings.from_url(url)
        return cls(connect(settings), settings.keys, settings)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return with_retries(self.settings, what, fn)

    def _batch(self, what: str, build: Callable[[Any], None]) -> list[Any]:
        return pipelined(self.r, self.settings, what, build)

    def _req(self, request_id: str) -> Keys:
        """The key names of the request's shard."""
        return self.k.for_request(request_id)

    def _owner(self, owner_id: int) -> Keys:
        """The key names of the owner's shard (the owner's gate records)."""
        return self.k.shard(self.k.owner_shard(owner_id))

    def has_request(self, request_id: str) -> bool:
        return bool(self._call("has_request", lambda: self.r.exists(self._req(request_id).request(request_id))))

    def count_agency_requests(self, agency_id: str, since: datetime) -> int:
        return self.lookup([], [(agency_id, since)])[1][0]

    def create_request(self, request_id: str, agency_id: str, submitted_at: datetime, state: str,
                       payload: dict[str, Any], entries: Sequence[AuditEntry] = ()) -> None:
        if not self.create_many([(request_id, agency_id, submitted_at, state, payload, entries)])[0]:
            raise InvalidRequest(f"request id {request_id!r} already exists")

    def create_many(self, items: Sequence[NewRequest], with_records: Sequence[WithRecord | None] = ()
                    ) -> list[bool]:
        """Each request with its audit entries (and its ``with_records`` hash, which must be in the request's
        slot) in one script call (atomic per request), all in one round trip."""
        extra = list(with_records) or [None] * len(items)

        def build(pipe: Any) -> None:
            for (rid, agency_id, submitted_at, state, payload, entries), more in zip(items, extra, strict=True):
                k = self._req(rid)
                keys = [k.request(rid), k.request_ids, k.agency_requests(agency_id), k.audit, k.submitted]
                args: list[Any] = [rid, _us(submitted_at), state, orjson.dumps(payload), len(entries),
                                   *(self._audit_json(rid, e) for e in entries)]
                if more is not None:
                    keys.append(more[0])
                    args += [more[2], *more[1]]
                self._create(keys=keys, args=args, client=pipe)
        return [bool(x) for x in self._batch("record", build)]

    def lookup(self, request_ids: Sequence[str], windows: Sequence[tuple[str, datetime]]
               ) -> tuple[list[tuple[str, dict[str, Any]] | None], list[int]]:
        """Several requests' (state, payload) and several agencies' request counts since a time, in one round
        trip: what a worker needs to judge a batch of submissions. An agency's count is the sum over the shards
        (its requests are in each one's shard)."""
        shards = self.k.all_shards

        def build(pipe: Any) -> None:
            for rid in request_ids:
                pipe.hmget(self._req(rid).request(rid), ["state", "payload"])
            for agency_id, since in windows:
                for k in shards:
                    pipe.zcount(k.agency_requests(agency_id), _us(since), "+inf")
        got = self._batch("lookup", build)
        reqs = [None if g[0] is None else (g[0].decode(), orjson.loads(g[1])) for g in got[:len(request_ids)]]
        counts = [int(x) for x in got[len(request_ids):]]
        n = len(shards)
        return reqs, [sum(counts[w * n:(w + 1) * n]) for w in range(len(windows))]

    def get_request(self, request_id: str) -> tuple[str, dict[str, Any]] | None:
        got = self._call("get_request", lambda: self.r.hmget(self._req(request_id).request(request_id),
                                                              ["state", "payload"]))
        return None if got[0] is None else (got[0].decode(), orjson.loads(got[1]))

    def _every_shard(self, what: str, read: Callable[[Any, Keys], None]) -> list[Any]:
        """``read(pipe, shard keys)`` for every shard, in one round trip: each shard's reply, in shard order."""
        def build(pipe: Any) -> None:
            for k in self.k.all_shards:
                read(pipe, k)
        return self._batch(what, build)

    def request_ids(self) -> list[str]:
        got = self._every_shard("request_ids", lambda pipe, k: pipe.smembers(k.request_ids))
        return sorted(x.decode() for members in got for x in members)

    def submitted_ids(self, limit: int) -> list[str]:
        got = self._every_shard("submitted_ids", lambda pipe, k: pipe.zrange(k.submitted, 0, limit - 1,
                                                                               withscores=True))
        merged = got[0] if len(got) == 1 else sorted((m for part in got for m in part), key=lambda m: m[1])
        return [x.decode() for x, _ in merged][:limit]

    def agency_request_ids(self, agency_id: str, limit: int) -> list[str]:
        got = self._every_shard("agency_request_ids", lambda pipe, k: pipe.zrevrange(
            k.agency_requests(agency_id), 0, limit - 1, withscores=True))
        merged = got[0] if len(got) == 1 else sorted((m for part in got for m in part), key=lambda m: -m[1])
        return [x.decode() for x, _ in merged][:limit]

    def transition(self, request_id: str, old: str, new: str, entry: AuditEntry) -> bool:
        return self.transition_many([(request_id, old, new, entry)])[0]

    def transition_many(self, items: Sequence[tuple[str, str, str, AuditEntry]]) -> list[bool]:
        def build(pipe: Any) -> None:
            for rid, old, new, entry in items:
                k = self._req(rid)
                self._cas(keys=[k.request(rid), k.audit, k.submitted],
                          args=[old, new, self._audit_json(rid, entry), rid], client=pipe)
        return [bool(x) for x in self._batch("transition", build)]

    @staticmethod
    def _audit_json(request_id: str, e: AuditEntry) -> bytes:
        return orjson.dumps({"request_id": request_id, "actor": e.actor, "action": e.action, "at_us": _us(e.at),
                             "detail": e.detail})

    def append_audit(self, request_id: str, actor: str, action: str, at: datetime, detail: dict[str, Any]) -> None:
        entry = self._audit_json(request_id, AuditEntry(actor, action, at, detail))
        self._call("audit", lambda: self.r.rpush(self._req(request_id).audit, entry))

    def audit(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The audit log in order (each shard's log in its order; several shards' merged by time)."""
        if request_id is not None:
            k = self._req(request_id)
            parts = [self._call("audit", lambda: self.r.lrange(k.audit, 0, -1))]
        else:
            parts = self._every_shard("audit", lambda pipe, k: pipe.lrange(k.audit, 0, -1))
        entries = [orjson.loads(raw) for part in parts for raw in part]
        if len(parts) > 1:
            entries.sort(key=lambda e: e["at_us"])  # stable: a shard's entries keep their order
        out = []
        for seq, e in enumerate(entries, start=1):
            if request_id is None or e["request_id"] == request_id:
                out.append({"seq": seq, "request_id": e["request_id"], "actor": e["actor"], "action": e["action"],
                            "at": _dt(e["at_us"]), "detail": e["detail"]})
        return out

    def set_opted_out(self, owner_id: int, opted_out: bool, at: datetime) -> None:
        """In the owner's shard, which every gate step for that owner reads."""
        op = self.r.sadd if opted_out else self.r.srem
        key = self._owner(owner_id).opted_out
        self._call("opt-out", lambda: op(key, int(owner_id)))

    def is_opted_out(self, owner_id: int) -> bool:
        key = self._owner(owner_id).opted_out
        return bool(self._call("opt-out", lambda: self.r.sismember(key, int(owner_id))))


    def admit(self, request_id: str, owner_ids: np.ndarray, now: datetime, cap: int, since: datetime) -> np.ndarray:
        return self.admit_many([(request_id, owner_ids)], now, cap, since)[0]

    def admit_many(self, items: Sequence[tuple[str, np.ndarray]], now: datetime, cap: int,
                   since: datetime) -> list[np.ndarray]:
        """Every (request, owners) of ``items`` through the admission script, one call per owner shard (each in
        that shard's slot), all in one round trip."""
        days = CapDays.of(_us(since), _us(now))

        def build(pipe: Any, k: Keys, rid: str, ids: list[int]) -> None:
            self._admit(keys=[k.notified(rid), k.opted_out, k.counters(rid), *days.redis_keys(k)],
                        args=[cap, days.keep_s, self.settings.retention_s, *ids], client=pipe)
        return [v == ADMIT for v in self._by_owner_shard("admit", items, build)]

    def check_many(self, items: Sequence[tuple[str, np.ndarray]], now: datetime, cap: int,
                   since: datetime, shards: Sequence[int] | None = None) -> list[np.ndarray]:
        days = CapDays.of(_us(since), _us(now))

        def build(pipe: Any, k: Keys, rid: str, ids: list[int]) -> None:
            self._check(keys=[k.notified(rid), k.opted_out, *days.redis_keys(k)], args=[cap, *ids], client=pipe)
        return self._by_owner_shard("check", items, build, shards)

    def _by_owner_shard(self, what: str, items: Sequence[tuple[str, np.ndarray]],
                        build: Callable[[Any, Keys, str, list[int]], None],
                        shards: Sequence[int] | None = None) -> list[np.ndarray]:
        """The verdict of each owner of each (request, owners), from one gate script call per request and owner
        shard (``build(pipe, shard keys, request, owner ids)``), in one round trip; with ``shards``, one call
        per item, in its shard (its owners are all of it). An item without owners gets its call all the same (in
        its shard, or else the request's), which answers nothing: the work does not tell it from an item of one
        owner."""
        named = list(shards) if shards is not None and self.k.shards > 1 else None
        if named is not None:  # checked once, before any attempt
            for (rid, owners), g in zip(items, named, strict=True):
                if not (self.k.owner_shards(owners) == g).all():
                    raise InvalidData(f"{what}: owners of request {rid!r} outside gate shard {g}")
        parts: list[tuple[int, np.ndarray]] = []  # (item, positions of its owners) per call, in call order

        def queue(pipe: Any) -> None:
            parts.clear()
            for j, (rid, owners) in enumerate(items):
                if named is not None or self.k.shards == 1 or not owners.shape[0]:
                    k = self.k.for_request(rid) if named is None else self.k.shard(named[j])
                    parts.append((j, np.arange(owners.shape[0])))
                    build(pipe, k, rid, owners.tolist())
                    continue
                shard = self.k.owner_shards(owners)
                for g in np.unique(shard).tolist():
                    where = np.flatnonzero(shard == g)
                    parts.append((j, where))
                    build(pipe, self.k.shard(g), rid, owners[where].tolist())
        got = self._batch(what, queue)
        out = [np.zeros(owners.shape[0], np.int8) for _, owners in items]
        for (j, where), verdicts in zip(parts, got, strict=True):
            out[j][where] = np.asarray(verdicts, dtype=np.int8)
        return out

    def counters(self, request_id: str) -> dict[str, int]:
        """The request's counters, summed over the owner shards that keep them."""
        out: dict[str, int] = {}
        for part in self._every_shard("counters", lambda pipe, k: pipe.hgetall(k.counters(request_id))):
            for name, n in part.items():
                out[name.decode()] = out.get(name.decode(), 0) + int(n)
        return out

    def was_notified(self, request_id: str, owner_id: int) -> bool:
        key = self._owner(owner_id).notified(request_id)
        return bool(self._call("was_notified", lambda: self.r.sismember(key, int(owner_id))))

    def notified_count(self, request_id: str) -> int:
        return self.counters(request_id).get("notified", 0)

    def set_choice(self, request_id: str, owner_id: int, choice: str, clips: list[str], at: datetime) -> None:
        """The owner's latest choice as ``[choice, clips, at_us]``, then the owner's pseudonym if given one (kept
        through the change: WATCH, read, MULTI/EXEC)."""
        key, field = self._req(request_id).choices(request_id), str(int(owner_id))

        def change(pipe: Any) -> None:
            old = pipe.hget(key, field)
            kept = orjson.loads(old)[3:] if old is not None else []
            pipe.multi()
            pipe.hset(key, field, orjson.dumps([choice, clips, _us(at), *kept]))
            pipe.expire(key, self.settings.retention_s)
        self._call("choice", lambda: self.r.transaction(change, key))

    def choices(self, request_id: str) -> list[tuple[int, str, list[str]]]:
        got = self._call("choices", lambda: self.r.hgetall(self._req(request_id).choices(request_id)))
        rows = [(int(k), *orjson.loads(v)[:2]) for k, v in got.items()]
        return [(o, c, cl) for o, c, cl in sorted(rows)]

    def pseudonyms(self, request_id: str, owner_ids: Sequence[int], name: Namer) -> dict[int, str]:
        """As :meth:`SqliteStore.pseudonyms`; a new pseudonym is appended to the owner's choice entry in one
        WATCH/MULTI/EXEC step, taken again from the start if another writer changed the choices meanwhile."""
        key = self._req(request_id).choices(request_id)
        want = sorted({int(o) for o in owner_ids})
        if not want:
            return {}

        def give(pipe: Any) -> dict[int, str]:
            rows = {int(k): orjson.loads(v) for k, v in pipe.hgetall(key).items()}
            missing = [o for o in want if o not in rows]
            if missing:
                raise InvalidData(f"owner {missing[0]} has made no choice in request {request_id!r}")
            new = name([o for o in want if len(rows[o]) < 4], {r[3] for r in rows.values() if len(r) > 3})
            pipe.multi()
            for o, n in new.items():
                rows[o] = [*rows[o][:3], n]
                pipe.hset(key, str(o), orjson.dumps(rows[o]))
            return {o: str(rows[o][3]) for o in want}
        got: dict[int, str] = self.r.transaction(give, key, value_from_callable=True)
        return got


def open_store(spec: str) -> Store:
    """The workflow store named by ``spec``: a ``redis://`` (``rediss://``, ``unix://``) URL or an existing
    SQLite file."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore.from_url(spec)
    if not Path(spec).is_file():
        raise InvalidData(f"{spec}: no such SQLite store (or give a redis:// URL)")
    return SqliteStore(spec)

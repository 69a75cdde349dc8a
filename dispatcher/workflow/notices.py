"""The owners' gate's records, shared by the stores (which answer for them) and the sinks (which write them in
the same atomic step as the batch they concern, so that an owner counts as notified exactly when their batch is
on the stream).

An owner may be notified of a request unless they opted out or already had ``cap`` notifications since ``since``
(the rolling per-owner cap); an owner already notified of the same request is admitted again and not counted
twice. The records: the owners notified per request, each owner's notices by time (for the cap), and per request
the owners suppressed, by reason. The same rules are written once for each engine: SQL here for SQLite, and one
Lua fragment for Redis that every script using them includes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np

__all__ = ["ADMIT", "CAPPED", "GATE_LUA", "OPTED_OUT", "REASONS", "SQLITE_SCHEMA", "sqlite_record",
           "sqlite_verdicts"]

#: A verdict per owner: may be notified now, or why not.
ADMIT, OPTED_OUT, CAPPED = 0, 1, 2
#: The counter each refusal is counted under.
REASONS = {OPTED_OUT: "opted_out", CAPPED: "capped"}

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS opted_out (owner_id INTEGER PRIMARY KEY, at_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS notified (request_id TEXT NOT NULL, owner_id INTEGER NOT NULL, at_us INTEGER NOT NULL,
    PRIMARY KEY (request_id, owner_id));
CREATE INDEX IF NOT EXISTS notified_owner ON notified (owner_id, at_us);
CREATE TABLE IF NOT EXISTS counters (request_id TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (request_id, name));
"""


def sqlite_verdicts(db: sqlite3.Connection, request_id: str, owners: Sequence[int], cap: int,
                    since_us: int) -> np.ndarray:
    """The verdict of each owner (int8), read in the caller's transaction."""
    out = np.zeros(len(owners), np.int8)
    for k, o in enumerate(owners):
        if db.execute("SELECT 1 FROM notified WHERE request_id=? AND owner_id=?", (request_id, o)).fetchone():
            continue
        if db.execute("SELECT 1 FROM opted_out WHERE owner_id=?", (o,)).fetchone():
            out[k] = OPTED_OUT
        elif db.execute("SELECT COUNT(*) FROM notified WHERE owner_id=? AND at_us>?",
                        (o, since_us)).fetchone()[0] >= cap:
            out[k] = CAPPED
    return out


def sqlite_record(db: sqlite3.Connection, request_id: str, admitted: Sequence[int], now_us: int,
                  suppressed: dict[str, int]) -> None:
    """Record ``admitted`` as notified (once per request), count the new ones in the request's aggregate and
    count ``suppressed``, in the caller's transaction."""
    before = db.total_changes
    db.executemany("INSERT OR IGNORE INTO notified VALUES (?,?,?)", [(request_id, o, now_us) for o in admitted])
    for name, n in {"notified": db.total_changes - before, **suppressed}.items():
        if n:
            db.execute("INSERT INTO counters VALUES (?,?,?) ON CONFLICT(request_id, name) "
                       "DO UPDATE SET n = n + excluded.n", (request_id, name, n))


#: ``verdict(notified, optout, notices, owner, since_us, cap)`` and ``record(notified, notices, owner, now_us,
#: since_us, request)``: the keys are the request's notified set, the opted-out set and the owner's notices (a
#: sorted set of request ids by time). ``record`` returns 1 for an owner new to the request, and keeps of the
#: owner's notices only those the cap can still count (the older ones name the owner for nothing), expiring with
#: the last of them. ``keep_records(notified, counters, done, new, ttl_s)`` counts the new owners in the request's
#: aggregate and lets the records that name owners expire after the retention.
GATE_LUA = """
local function verdict(notified, optout, notices, o, since, cap)
  if redis.call('SISMEMBER', notified, o) == 1 then return 0 end
  if redis.call('SISMEMBER', optout, o) == 1 then return 1 end
  if redis.call('ZCOUNT', notices, '(' .. since, '+inf') >= tonumber(cap) then return 2 end
  return 0
end
local function record(notified, notices, o, now, since, rid)
  if redis.call('SADD', notified, o) == 0 then return 0 end
  redis.call('ZADD', notices, now, rid)
  redis.call('ZREMRANGEBYSCORE', notices, '-inf', since)
  redis.call('PEXPIRE', notices, math.floor((tonumber(now) - tonumber(since)) / 1000) + 1000)
  return 1
end
local function keep_records(notified, counters, new, ttl)
  if new > 0 then redis.call('HINCRBY', counters, 'notified', new) end
  if redis.call('EXISTS', notified) == 1 then redis.call('EXPIRE', notified, ttl) end
end
"""

"""The owners' gate's records, shared by the stores (which answer for them) and the sinks (which write them in
the same atomic step as the batch they concern, so that an owner counts as notified exactly when their batch is
on the stream).

An owner may be notified of a request unless they opted out or reached the per-owner cap; an owner already
notified of the same request is admitted again and not counted twice. The records: the owners notified per
request, a counter of notices per owner and UTC day (for the cap), and per request the owners suppressed, by
reason. The same rules are written once for each engine: SQL here for SQLite, and one Lua fragment for Redis that
every script using them includes.

**The cap, counted by day.** The policy's promise is at most ``cap`` notifications per owner in any rolling
``period`` (the window ``(now - period, now]``). The gate does not keep each notice's time, only how many an owner
had on each UTC day, and admits an owner when fewer than ``cap`` notices fall on the days from the one holding
``now - period`` to today: it counts from 00:00 UTC of the day ``now - period`` falls in, which is up to one day
(less a microsecond) more than the rolling period and never less. So the promise holds (any ``cap + 1`` notices
within one period would have had the first ``cap`` counted when the last was admitted), and the gate is stricter
by exactly that: a refused owner may wait up to ``period`` plus one day after the first notice counted, instead
of ``period``. The policy refuses a period that is not a whole number of days (1 to 31): the buckets are UTC days.

**Opt-outs, where they are cheapest.** A batch's owners are looked up together (one ``SMISMEMBER`` of the
request's notified set, one of the opt-out set, one ``HMGET`` per day bucket; one query each on SQLite) in the
same step as the batch's append, which then names only the owners admitted: one who opted out after the plan,
up to that instant, is never sent to.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from dispatcher.keys import Keys

__all__ = ["ADMIT", "CAPPED", "DAY_US", "GATE_LUA", "OPTED_OUT", "REASONS", "SQLITE_SCHEMA", "CapDays",
           "keep_s", "sqlite_record", "sqlite_setup", "sqlite_verdicts"]

#: A verdict per owner: may be notified now, or why not.
ADMIT, OPTED_OUT, CAPPED = 0, 1, 2
#: The counter each refusal is counted under.
REASONS = {OPTED_OUT: "opted_out", CAPPED: "capped"}
#: One UTC day, the cap's bucket.
DAY_US = 86_400_000_000


def keep_s(day: int, period_us: int, now_us: int) -> int:
    """How long from ``now_us`` the counter of ``day`` must be kept, in whole seconds (rounded up; 0 or less: no
    more): a day's counter is counted while day(now' - period) <= day, i.e. until (day + 1) days + period."""
    return int(-(-((day + 1) * DAY_US + period_us - now_us) // 1_000_000))


@dataclass(frozen=True)
class CapDays:
    """The UTC days (numbered from 1970-01-01) whose counters the cap sums at ``now``, for a window starting at
    ``since``: from the day holding ``since`` to today; and how long today's counter must be kept (until the last
    ``now`` whose window can reach it, ``since`` being ``now - period``)."""

    first: int
    today: int
    keep_s: int

    @classmethod
    def of(cls, since_us: int, now_us: int) -> CapDays:
        first, today = since_us // DAY_US, now_us // DAY_US
        return cls(int(first), int(today), keep_s(today, now_us - since_us, now_us))

    @property
    def days(self) -> range:
        return range(self.first, self.today + 1)

    def redis_keys(self, k: Keys) -> list[str]:
        """The day counters' keys in ``k``'s shard, today's last (as the scripts expect)."""
        return [k.notices(d) for d in self.days]


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS opted_out (owner_id INTEGER PRIMARY KEY, at_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS notified (request_id TEXT NOT NULL, owner_id INTEGER NOT NULL, at_us INTEGER NOT NULL,
    PRIMARY KEY (request_id, owner_id));
CREATE TABLE IF NOT EXISTS counters (request_id TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (request_id, name));
CREATE TABLE IF NOT EXISTS owner_days (owner_id INTEGER NOT NULL, day INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (owner_id, day)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS owner_days_day ON owner_days (day);
"""
#: A file of before the day counters: its notices, counted by day from who was notified when (deterministic, so
#: two processes opening it at once write the same rows).
_BACKFILL = f"""INSERT OR IGNORE INTO owner_days
    SELECT owner_id, at_us / {DAY_US}, COUNT(*) FROM notified GROUP BY owner_id, at_us / {DAY_US}"""

#: Owners per ``IN (...)`` query: well under SQLite's limit of bound parameters.
_CHUNK = 500


def sqlite_setup(db: sqlite3.Connection, schema: str = "") -> None:
    """Create the gate's tables (after ``schema``, the caller's own) and count the notices of a file of before."""
    fresh = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'owner_days'").fetchone() is None
    db.executescript(schema + SQLITE_SCHEMA)
    if fresh:
        db.execute(_BACKFILL)


def _chunks(owners: Sequence[int]) -> Iterator[Sequence[int]]:
    for lo in range(0, len(owners), _CHUNK):
        yield owners[lo:lo + _CHUNK]


def _of(db: sqlite3.Connection, sql: str, head: Sequence[object], owners: Sequence[int],
        tail: Sequence[object] = ()) -> list[tuple[int, int]]:
    """Rows of ``sql`` (``{}`` standing for the owners' placeholders), for every chunk of ``owners``."""
    out = []
    for part in _chunks(owners):
        out += db.execute(sql.format(",".join("?" * len(part))), (*head, *part, *tail)).fetchall()
    return out


def _seen(db: sqlite3.Connection, request_id: str, owners: Sequence[int]) -> set[int]:
    """Those of ``owners`` already notified of the request."""
    return {r[0] for r in _of(db, "SELECT owner_id, 1 FROM notified WHERE request_id=? AND owner_id IN ({})",
                              (request_id,), owners)}


def sqlite_verdicts(db: sqlite3.Connection, request_id: str, owners: Sequence[int], cap: int,
                    days: CapDays) -> np.ndarray:
    """The verdict of each owner (int8), read in the caller's transaction: a query each for the owners notified
    of the request, opted out and their notices on the cap's days."""
    out = np.zeros(len(owners), np.int8)
    if not owners:
        return out
    seen = _seen(db, request_id, owners)
    opted = {r[0] for r in _of(db, "SELECT owner_id, 1 FROM opted_out WHERE owner_id IN ({})", (), owners)}
    counts = dict(_of(db, "SELECT owner_id, SUM(n) FROM owner_days WHERE owner_id IN ({}) AND day BETWEEN ? AND ? "
                          "GROUP BY owner_id", (), owners, (days.first, days.today)))
    for k, o in enumerate(owners):
        if o in seen:
            continue
        if o in opted:
            out[k] = OPTED_OUT
        elif counts.get(o, 0) >= cap:
            out[k] = CAPPED
    return out


def sqlite_record(db: sqlite3.Connection, request_id: str, admitted: Sequence[int], now_us: int, days: CapDays,
                  suppressed: dict[str, int]) -> None:
    """Record ``admitted`` as notified (once per request) and count the new ones on today's counter and in the
    request's aggregate, count ``suppressed``, and drop the day counters the cap no longer reaches, in the caller's
    transaction."""
    seen = _seen(db, request_id, admitted)
    new = list(dict.fromkeys(o for o in admitted if o not in seen))
    db.executemany("INSERT INTO notified VALUES (?,?,?)", [(request_id, o, now_us) for o in new])
    db.executemany("INSERT INTO owner_days VALUES (?,?,1) ON CONFLICT(owner_id, day) DO UPDATE SET n = n + 1",
                   [(o, days.today) for o in new])
    db.execute("DELETE FROM owner_days WHERE day < ?", (days.first,))
    for name, n in {"notified": len(new), **suppressed}.items():
        if n:
            db.execute("INSERT INTO counters VALUES (?,?,?) ON CONFLICT(request_id, name) "
                       "DO UPDATE SET n = n + excluded.n", (request_id, name, n))


#: ``owners_from(i)``: ARGV from ``i`` on, as a table; ``split(s)``: the items of a comma-separated string;
#: ``int32s(s)``: the little-endian 32-bit integers of a string.
#: ``verdicts(notified, optout, days, owners, cap)``: the verdict of each owner, whether each was notified of the
#: request already, and each one's notices today; the keys are the request's notified set, the opted-out set and
#: the day counters (hashes of owner -> notices, one per UTC day of the cap's window in ``days``, today's last).
#: ``record(notified, today, owners, v, seen, counts, keep_s)`` records the admitted owners new to the request
#: (notified set, today's counter, which expires once no window reaches it) and returns how many.
#: ``keep_records(notified, counters, new, ttl_s)`` counts the new owners in the request's aggregate and lets the
#: records that name owners expire after the retention. Variadic calls go in chunks: Redis's Lua unpacks a few
#: thousand values at most.
GATE_LUA = """
local function owners_from(i)
  local out = {}
  for j = i, #ARGV do out[#out + 1] = ARGV[j] end
  return out
end
local function split(s)
  local out = {}
  for x in string.gmatch(s, '[^,]+') do out[#out + 1] = x end
  return out
end
local function int32s(s)
  local out, n, at = {}, #s / 4, 1
  while #out < n do
    local k = math.min(1000, n - #out)
    local got = {struct.unpack('<' .. string.rep('i4', k), s, at)}
    for j = 1, k do out[#out + 1] = got[j] end
    at = got[k + 1]
  end
  return out
end
local function many(cmd, key, items)
  local out = {}
  for lo = 1, #items, 1000 do
    local got = redis.call(cmd, key, unpack(items, lo, math.min(lo + 999, #items)))
    if type(got) == 'table' then for i = 1, #got do out[#out + 1] = got[i] end end
  end
  return out
end
local function verdicts(notified, optout, days, owners, cap)
  cap = tonumber(cap)
  local v, total, today = {}, {}, {}
  if #owners == 0 then return v, {}, today end
  -- a key that is not there answers no owner: a request's first batch has no notified set yet, and a day
  -- without notices (or no opt-out at all) has no key; each one asked costs a conversion per owner both ways
  local none = {}
  for i = 1, #owners do total[i] = 0; today[i] = 0; none[i] = 0 end
  local seen, out = none, none
  if redis.call('EXISTS', notified) == 1 then seen = many('SMISMEMBER', notified, owners) end
  if redis.call('EXISTS', optout) == 1 then out = many('SMISMEMBER', optout, owners) end
  for d = 1, #days do
    if redis.call('EXISTS', days[d]) == 1 then
      local got = many('HMGET', days[d], owners)
      for i = 1, #owners do
        local n = tonumber(got[i]) or 0
        total[i] = total[i] + n
        if d == #days then today[i] = n end
      end
    end
  end
  for i = 1, #owners do
    if seen[i] == 1 then v[i] = 0
    elseif out[i] == 1 then v[i] = 1
    elseif total[i] >= cap then v[i] = 2
    else v[i] = 0 end
  end
  return v, seen, today
end
local function record(notified, today, owners, v, seen, counts, keep)
  -- the counts as text, each made once: a number given to redis.call is formatted for every owner otherwise
  local new, pairs, fresh, text = {}, {}, {}, {}
  for i = 1, #owners do
    local o = owners[i]
    if v[i] == 0 and seen[i] == 0 and not fresh[o] then
      fresh[o] = true
      new[#new + 1] = o
      local c = counts[i] + 1
      local t = text[c]
      if not t then t = string.format('%d', c); text[c] = t end
      pairs[#pairs + 1] = o
      pairs[#pairs + 1] = t
    end
  end
  if #new > 0 then
    many('SADD', notified, new)
    many('HSET', today, pairs)
    redis.call('EXPIRE', today, keep)
  end
  return #new
end
local function keep_records(notified, counters, new, ttl)
  if new > 0 then redis.call('HINCRBY', counters, 'notified', new) end
  if redis.call('EXISTS', notified) == 1 then redis.call('EXPIRE', notified, ttl) end
end
"""

"""The camera registry change feed: changes on a Redis stream that every worker applies, in order, to its index.

A change is one of: cameras added (with their motion events, when the index holds events), cameras removed,
sharing turned on or off, owners opting out or back in. :func:`publish_changes` validates each one (hostile input:
:class:`~dispatcher.errors.InvalidChange`, nothing published) and appends them to ``Keys.feed`` in one atomic step.

Positions: an entry's stream id ``ms-seq`` read as the integer ``ms * 1_000_000 + seq`` is its *position*; an
index's :attr:`~dispatcher.index.camera_index.CameraIndex.version` is the position of the last entry it applied, so
versions only grow and name the feed entries an index includes.

:class:`FeedFollower` reads the entries after its index's version and applies them (validated again on the way
out). An entry that is malformed, or that the index refuses (an unknown camera, a camera added twice), is refused
as a whole, recorded once in ``Keys.feed_rejected`` with its error, and passed: its position is consumed, the rest
goes on, nobody retries it. Each follower records its position in ``Keys.feed_applied`` and how long each change
took from the append to being applied in ``Keys.feed_lag``.

:class:`Snapshots` holds indexes written in the background (a new directory, then an atomic switch of the
``current`` link), each stamped with the position it includes; a follower that starts, or finds the feed trimmed
past its position (``Keys.feed_floor``), loads the latest snapshot and replays the feed from there.
:class:`Snapshotter` keeps snapshots coming and trims the feed only below the oldest snapshot kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import redis

from dispatcher.connections import pipeline, script, with_retries
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.errors import DispatchError, FeedGap, IndexFormatError, InvalidChange
from dispatcher.index.camera_index import CameraIndex
from dispatcher.index.schema import CAMERA_SCHEMA, EVENT_SCHEMA, camera_columns, event_columns, to_utc_us
from dispatcher.keys import Keys

__all__ = ["Change", "FeedFollower", "Snapshots", "Snapshotter", "entry_id", "parse_change", "position",
           "publish_changes"]

log = logging.getLogger(__name__)

#: The most ids one change may name, camera (or event) rows one add may hold, and bytes one entry may hold.
MAX_IDS = 10_000
MAX_ROWS = 2_000
MAX_ENTRY_BYTES = 1 << 20
#: The most bytes of entries one read of the feed returns (a read returns at least one entry, so up to
#: ``MAX_ENTRY_BYTES`` more): ``read_count`` bounds the entries of a read, this their size, whoever wrote them.
READ_BYTES = 4 << 20
#: The ops, and the field each one's ids are in.
_ID_FIELD = {"remove": "camera_ids", "sharing": "camera_ids", "optout": "owner_ids"}
_FLAG_FIELD = {"sharing": "enabled", "optout": "opted_out"}
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def position(entry: str | bytes) -> int:
    """A feed entry id's position (``ms * 1_000_000 + seq``)."""
    ms, _, seq = (entry.decode() if isinstance(entry, bytes) else entry).partition("-")
    return int(ms) * 1_000_000 + int(seq or 0)


def entry_id(pos: int) -> str:
    """The stream id of position ``pos`` (``0-0`` for 0: before every entry)."""
    return f"{pos // 1_000_000}-{pos % 1_000_000}"


@dataclass(frozen=True)
class Change:
    """One validated change. Build with :meth:`add`, :meth:`remove`, :meth:`sharing`, :meth:`opt_out`, or parse
    what a writer sent with :func:`parse_change`."""

    op: str
    ids: np.ndarray | None = None        # camera ids (remove, sharing) or owner ids (optout)
    flag: bool | None = None             # sharing's enabled, optout's opted_out
    cameras: pa.Table | None = None      # add: rows of the cameras schema
    events: pa.Table | None = None       # add: their motion events, or None

    @classmethod
    def add(cls, cameras: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]] | None = None) -> Change:
        """Cameras as rows (``camera_id, owner_id, lat, lng, installed_at, removed_at, retention_days,
        sharing_enabled``; times as ISO-8601 strings with a zone, or Unix seconds) and optionally their events
        (``camera_id, ts``)."""
        return parse_change({"op": "add", "cameras": list(cameras),
                             **({} if events is None else {"events": list(events)})})

    @classmethod
    def remove(cls, camera_ids: Iterable[int]) -> Change:
        return parse_change({"op": "remove", "camera_ids": _plain(camera_ids)})

    @classmethod
    def sharing(cls, camera_ids: Iterable[int], enabled: bool) -> Change:
        return parse_change({"op": "sharing", "camera_ids": _plain(camera_ids), "enabled": enabled})

    @classmethod
    def opt_out(cls, owner_ids: Iterable[int], opted_out: bool = True) -> Change:
        return parse_change({"op": "optout", "owner_ids": _plain(owner_ids), "opted_out": opted_out})

    def to_dict(self) -> dict[str, Any]:
        """The change as its JSON form (what :func:`parse_change` reads)."""
        if self.op == "add":
            assert self.cameras is not None
            d: dict[str, Any] = {"op": "add", "cameras": _rows(self.cameras)}
            if self.events is not None:
                d["events"] = _rows(self.events)
            return d
        assert self.ids is not None
        d = {"op": self.op, _ID_FIELD[self.op]: self.ids.tolist()}
        if self.op in _FLAG_FIELD:
            d[_FLAG_FIELD[self.op]] = self.flag
        return d

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def update(self) -> tuple[str, Any, Any]:
        """The change as :meth:`CameraIndex.apply_changes` takes it."""
        if self.op == "add":
            return ("add", self.cameras, self.events)
        return (self.op, self.ids, self.flag)

    def apply(self, index: CameraIndex) -> None:
        """Apply to ``index``; what the index refuses raises (a :class:`DispatchError`) and changes nothing."""
        if self.op == "add":
            assert self.cameras is not None
            index.add_cameras(self.cameras, self.events)
        elif self.op == "remove":
            index.remove_cameras(self.ids)  # type: ignore[arg-type]
        elif self.op == "sharing":
            index.set_sharing(self.ids, bool(self.flag))  # type: ignore[arg-type]
        else:
            index.set_opted_out(self.ids, bool(self.flag))  # type: ignore[arg-type]


def _plain(ids: Iterable[Any]) -> list[Any]:
    """Ids as Python ints where they are numpy integers (what an index hands out); anything else as it is, for
    :func:`parse_change` to judge."""
    return [int(x) if isinstance(x, np.integer) else x for x in ids]


def parse_change(raw: Any) -> Change:
    """A change from its JSON form (bytes, str or an already decoded mapping), validated field by field: the op,
    its ids (integers, 1..``MAX_IDS`` of them, no duplicates), its flag (a boolean), an add's camera rows through
    the data model's checks. Anything else raises :class:`InvalidChange` naming the problem."""
    op, a, b = _decoded(raw)
    if op == "add":
        return Change("add", cameras=a, events=b)
    return Change(op, ids=a, flag=b)


#: The fields of each op but add: exactly these.
_OP_FIELDS = {op: frozenset({"op", field, *([_FLAG_FIELD[op]] if op in _FLAG_FIELD else [])})
              for op, field in _ID_FIELD.items()}
_WHAT = {op: f"{op}.{field}" for op, field in _ID_FIELD.items()}


def _decoded(raw: Any) -> tuple[str, Any, Any]:
    """:func:`parse_change`'s checks, and the change as :meth:`Change.update` gives it (what a follower applies:
    no :class:`Change` made for each entry). The common case costs a JSON decode and a few comparisons."""
    if isinstance(raw, (bytes, bytearray, memoryview, str)):
        if len(raw) > MAX_ENTRY_BYTES:
            raise InvalidChange(f"change: {len(raw)} bytes, more than the {MAX_ENTRY_BYTES} allowed")
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidChange(f"change: not JSON ({exc})") from None
    if not isinstance(raw, Mapping):
        raise InvalidChange(f"change: expected an object, got {type(raw).__name__}")
    op = raw.get("op")
    if op == "add":
        _fields(raw, {"op", "cameras"}, {"events"})
        cameras = _camera_table(raw["cameras"])
        events = None if raw.get("events") is None else _event_table(raw["events"])
        return "add", cameras, events
    if op not in _ID_FIELD:
        raise InvalidChange(f"change: op {str(op)[:40]!r}; expected one of add, remove, sharing, optout")
    if raw.keys() != _OP_FIELDS[op]:
        _fields(raw, set(_OP_FIELDS[op]), set())
    ids = _ids(raw[_ID_FIELD[op]], _WHAT[op])
    flag = None
    if op in _FLAG_FIELD:
        flag = raw[_FLAG_FIELD[op]]
        if type(flag) is not bool:
            raise InvalidChange(f"change: {op}.{_FLAG_FIELD[op]} must be true or false, got {str(flag)[:40]!r}")
    return op, ids, flag


def _fields(raw: Mapping[str, Any], required: set[str], optional: set[str]) -> None:
    missing = sorted(required - set(raw))
    if missing:
        raise InvalidChange(f"change {raw.get('op')!r}: missing field(s) {missing}")
    extra = sorted(str(k)[:40] for k in set(raw) - required - optional)
    if extra:
        raise InvalidChange(f"change {raw.get('op')!r}: unknown field(s) {extra}")


def _int(v: Any, what: str) -> int:
    if type(v) is not int or not _INT64[0] <= v <= _INT64[1]:
        raise InvalidChange(f"change: {what} must be 64-bit integers, got {str(v)[:40]!r}")
    return v


def _ids(v: Any, what: str) -> np.ndarray:
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_IDS:
        n = len(v) if isinstance(v, list) else type(v).__name__
        raise InvalidChange(f"change: {what} must be a list of 1 to {MAX_IDS} ids, got {n}")
    for x in v:  # type checks first: a bool or a float is not an id, whatever its value
        if type(x) is not int:
            _int(x, what)
    if min(v) < _INT64[0] or max(v) > _INT64[1]:
        _int(min(v) if min(v) < _INT64[0] else max(v), what)
    if len(set(v)) != len(v):
        raise InvalidChange(f"change: {what} names an id twice")
    return np.array(v, dtype=np.int64)


def _seconds(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            us = to_utc_us(v, what)
        except DispatchError as exc:
            raise InvalidChange(f"change: {exc}") from None
        if us % 1_000_000:
            raise InvalidChange(f"change: {what} {v!r} is not a whole second")
        return us // 1_000_000
    return _int(v, what)


def _rows_list(v: Any, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_ROWS or not all(isinstance(r, Mapping) for r in v):
        raise InvalidChange(f"change: add.{what} must be a list of 1 to {MAX_ROWS} objects")
    return v


def _camera_table(v: Any) -> pa.Table:
    rows = _rows_list(v, "cameras")
    names = CAMERA_SCHEMA.names
    cols: dict[str, list[Any]] = {n: [] for n in names}
    for k, row in enumerate(rows):
        if set(row) != set(names):
            raise InvalidChange(f"change: add.cameras[{k}] has fields {sorted(map(str, row))[:12]}; "
                                f"expected {names}")
        cols["camera_id"].append(_int(row["camera_id"], "camera_id"))
        cols["owner_id"].append(_int(row["owner_id"], "owner_id"))
        for name in ("lat", "lng"):
            x = row[name]
            if type(x) not in (int, float) or not math.isfinite(x):
                raise InvalidChange(f"change: add.cameras[{k}].{name} must be a finite number, got {str(x)[:40]!r}")
            cols[name].append(float(x))
        installed = _seconds(row["installed_at"], "installed_at")
        if installed is None:
            raise InvalidChange(f"change: add.cameras[{k}].installed_at is missing")
        cols["installed_at"].append(installed)
        cols["removed_at"].append(_seconds(row["removed_at"], "removed_at"))
        days = _int(row["retention_days"], "retention_days")
        if not 1 <= days <= 32_767:
            raise InvalidChange(f"change: add.cameras[{k}].retention_days {days} is out of range 1..32767")
        cols["retention_days"].append(days)
        if type(row["sharing_enabled"]) is not bool:
            raise InvalidChange(f"change: add.cameras[{k}].sharing_enabled must be true or false")
        cols["sharing_enabled"].append(row["sharing_enabled"])
    try:
        table = pa.Table.from_arrays([pa.array(cols[f.name], f.type) for f in CAMERA_SCHEMA], schema=CAMERA_SCHEMA)
        camera_columns(table)  # the data model's own checks: coordinates, ids unique, times in range
    except DispatchError as exc:
        raise InvalidChange(f"change: add: {exc}") from None
    except (pa.ArrowException, OverflowError, ValueError) as exc:
        raise InvalidChange(f"change: add.cameras: {exc}") from None
    return table


def _event_table(v: Any) -> pa.Table:
    rows = _rows_list(v, "events")
    cam, ts = [], []
    for k, row in enumerate(rows):
        if set(row) != {"camera_id", "ts"}:
            raise InvalidChange(f"change: add.events[{k}] must have exactly camera_id and ts")
        cam.append(_int(row["camera_id"], "events.camera_id"))
        t = _seconds(row["ts"], "events.ts")
        if t is None:
            raise InvalidChange(f"change: add.events[{k}].ts is missing")
        ts.append(t)
    try:
        table = pa.Table.from_arrays([pa.array(cam, pa.int64()), pa.array(ts, EVENT_SCHEMA.field("ts").type)],
                                     schema=EVENT_SCHEMA)
        event_columns(table)
    except DispatchError as exc:
        raise InvalidChange(f"change: add: {exc}") from None
    except (pa.ArrowException, OverflowError, ValueError) as exc:
        raise InvalidChange(f"change: add.events: {exc}") from None
    return table


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    """A table's rows with times as ISO-8601 strings."""
    out = []
    for row in table.to_pylist():
        out.append({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()})
    return out


# ---------------------------------------------------------------------------------------------- publishing


def publish_changes(client: redis.Redis, changes: Sequence[Change | Mapping[str, Any]], keys: Keys | None = None
                    ) -> list[int]:
    """Validate every change (a :class:`Change`, or its JSON form) and append them all to the feed in one atomic
    step, in order; their positions. One invalid change raises :class:`InvalidChange` and nothing is published.
    Not retried here: after a lost reply the caller cannot know whether the step took effect (publishing again
    is harmless though: a camera added or removed twice is refused the second time, flags are idempotent)."""
    keys = keys or Keys()
    payloads = [(c if isinstance(c, Change) else parse_change(c)).encode() for c in changes]
    for k, p in enumerate(payloads):
        if len(p) > MAX_ENTRY_BYTES:
            raise InvalidChange(f"change {k}: {len(p)} bytes encoded, more than the {MAX_ENTRY_BYTES} allowed")
    if not payloads:
        return []

    pipe = client.pipeline(transaction=True)
    for p in payloads:
        pipe.xadd(keys.feed, {"c": p})
    return [position(eid) for eid in pipe.execute()]


# ---------------------------------------------------------------------------------------------- snapshots

_LINK = "current"
_STAMP = "feed.json"


class Snapshots:
    """Snapshot directories under ``directory``: ``snap-<position>/`` (an index written by
    :meth:`CameraIndex.snapshot` and a ``feed.json`` stamp), and the ``current`` link naming the latest, replaced
    atomically (``os.replace``) once a new one is complete. The newest ``keep`` are kept."""

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise InvalidChange(f"snapshots: keep must be at least 1, got {keep}")
        self.dir = Path(directory)
        self.keep = keep

    def latest(self) -> tuple[Path, int] | None:
        """The current snapshot's directory and position; None when there is none yet."""
        link = self.dir / _LINK
        try:
            target = self.dir / os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise IndexFormatError(f"{link}: not a snapshot link ({exc})") from None
        return target, self._stamp(target)

    def positions(self) -> list[int]:
        """The positions of the complete snapshots held, ascending."""
        return sorted(self._stamp(d) for d in self.dir.glob("snap-*") if (d / _STAMP).exists())

    @staticmethod
    def _stamp(d: Path) -> int:
        try:
            pos = json.loads((d / _STAMP).read_text())["position"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"{d}: not a snapshot ({exc})") from None
        if type(pos) is not int or pos < 0:
            raise IndexFormatError(f"{d}: snapshot position {pos!r}")
        return pos

    def open_latest(self, *, warm_up: bool = True) -> CameraIndex:
        """The latest snapshot, opened at its position. A snapshot removed while it was being opened (two newer
        ones were published meanwhile) is given up for the next latest."""
        for _ in range(5):
            got = self.latest()
            if got is None:
                raise IndexFormatError(f"{self.dir}: no snapshot published yet")
            try:
                return CameraIndex.open(got[0], warm_up=warm_up, version=got[1])
            except IndexFormatError:
                if (self.dir / got[0].name).exists():
                    raise
        raise IndexFormatError(f"{self.dir}: snapshots kept being replaced while one was opened")

    def publish(self, index: CameraIndex) -> int:
        """Write ``index`` as a new snapshot and make it current; the position it includes. Older snapshots past
        ``keep`` are removed. Returns the position of the oldest snapshot kept (the feed may be trimmed below)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".tmp-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
        version = index.snapshot(tmp)
        (tmp / _STAMP).write_text(json.dumps({"position": version, "entry": entry_id(version),
                                              "at": datetime.now(timezone.utc).isoformat()}))
        final = self.dir / f"snap-{version:020d}"
        if final.exists():
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
        link = self.dir / f".link-{os.getpid()}-{threading.get_ident()}"
        link.unlink(missing_ok=True)
        os.symlink(final.name, link)
        os.replace(link, self.dir / _LINK)
        log.info("snapshot at feed position %d published in %s", version, final)
        kept = sorted(d for d in self.dir.glob("snap-*") if (d / _STAMP).exists())
        for old in kept[:-self.keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return min(self._stamp(d) for d in kept[-self.keep:])


# ---------------------------------------------------------------------------------------------- following

# KEYS: floor, feed; ARGV: the oldest snapshot position kept, its next entry id. The floor only rises.
_TRIM_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('XTRIM', KEYS[2], 'MINID', ARGV[2])
"""


# KEYS: floor, feed; ARGV: the position's entry id (exclusive), the most entries, the most bytes in all, the most
# bytes of one entry. The floor, whether entries were left (1) or the feed's end was reached (0), then the entries
# after the position: up to the count, stopping before the entry that would pass the byte budget (never before the
# first), an entry larger than its bound given as its id and size only (its one field ``oversized``), never its
# content. Entries are taken a few at a time (4, doubling up to 64 while they are small beside the budget, one
# at a time after a large one): the script holds at most 64 entries at once, whatever a writer put there.
_READ_LUA = """
local out = {redis.call('GET', KEYS[1]) or '0', 0}
local after, count, budget, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local used, n, chunk = 0, 0, 4
while n < count do
  local want = math.min(chunk, count - n)
  local got = redis.call('XRANGE', KEYS[2], '(' .. after, '+', 'COUNT', want)
  local largest = 0
  for _, e in ipairs(got) do
    local size = 0
    for _, v in ipairs(e[2]) do size = size + #v end
    largest = math.max(largest, size)
    if size > most then
      e = {e[1], {'oversized', tostring(size)}}
      size = 0
    elseif used + size > budget and n > 0 then
      out[2] = 1
      return out
    end
    used, n = used + size, n + 1
    out[#out + 1] = e
    after = e[1]
  end
  if #got < want then return out end
  if largest * 64 <= budget then chunk = math.min(2 * chunk, 64) else chunk = 1 end
end
out[2] = 1
return out
"""


def trim_feed(client: redis.Redis, floor: int, keys: Keys | None = None) -> int:
    """Drop the entries at or below ``floor`` (a published snapshot's position: every snapshot kept includes
    them) and raise ``Keys.feed_floor`` to it, atomically; the entries dropped."""
    keys = keys or Keys()
    return int(client.eval(_TRIM_LUA, 2, keys.feed_floor, keys.feed, floor, entry_id(floor + 1)))


class FeedFollower:
    """Applies the feed to one index: :meth:`catch_up` between command batches (every thread of a process shares
    one follower; one of them applies at a time), :meth:`run` while idle. With ``snapshots``, a follower whose
    position the feed was trimmed past loads the latest snapshot first.

    Entries are read ``read_count`` at a time, and at most ``read_bytes`` of them (an entry over
    :data:`MAX_ENTRY_BYTES` comes as its id and size, and is refused: the read's script in Redis never sends it),
    and each read is applied in one step of the index (:meth:`CameraIndex.apply_changes`: ~15 µs a change at 200k
    cameras where one at a time cost ~140 µs), so a backlog costs less a change the larger it is.
    ``catch_up(limit)`` bounds the work of one call: a worker applies at most that many before its batch of
    commands (the feed first, always), and the follower thread works off the rest in reads of ``read_count``,
    letting the worker threads in between.

    The follower thread's wait for the next change is one round trip that also reads what came (a blocking read
    pipelined with the bounded one, which Redis runs as soon as the first returns) and sends the report of the
    changes it applied last: beside a request backlog, every round trip of this thread waits for the GIL behind
    the worker threads, so it makes as few as it can."""

    def __init__(self, index: CameraIndex, client: redis.Redis, name: str, keys: Keys | None = None, *,
                 snapshots: Snapshots | None = None, queue: QueueSettings | None = None, read_count: int = 1000,
                 read_bytes: int = READ_BYTES, report: bool = True, clock: Callable[[], float] = time.time) -> None:
        if read_count < 1:
            raise InvalidChange(f"feed follower: read_count must be at least 1, got {read_count}")
        if read_bytes < 1:
            raise InvalidChange(f"feed follower: read_bytes must be at least 1, got {read_bytes}")
        self.index = index
        self.r = client
        self.name = name
        self.keys = keys or Keys()
        self.snapshots = snapshots
        self.queue = queue or QueueSettings(url="redis://")
        self.read_count = read_count
        self.read_bytes = read_bytes
        self.report = report
        self.clock = clock
        self.applied = 0
        self.rejected = 0
        self.reloads = 0
        #: Whether the last :meth:`catch_up` stopped at its limit with entries left.
        self.behind = False
        self._announced = False  # its position recorded in Keys.feed_applied at least once
        self._lock = threading.Lock()
        #: When (monotonic) the last read that found nothing more to apply was sent: a call that began before it
        #: has nothing to read (every entry appended before the call was applied).
        self._drained_at = -math.inf
        #: What was applied and not reported yet: (refusals, lags), sent with the next round trip.
        self._unreported: list[tuple[list[tuple[int, str]], str]] = []
        #: Whether :meth:`run` is following (then it sends the reports).
        self._following = False
        self._read = script(client, _READ_LUA)
        index.prepare_updates()

    def catch_up(self, limit: int | None = None) -> int:
        """Apply the entries after the index's version, all of them or, with ``limit``, about that many at most
        (whole reads: up to ``read_count`` more); how many (rejected ones included). Unless the limit stopped it
        (then :attr:`behind`), every entry appended before the call is applied when it returns. The lock is held
        to apply, not during a read: a thread's round trip never holds up another thread's apply (a read that
        comes back with entries another thread applied meanwhile skips them). While the follower thread runs, the
        report goes with its next round trip; else before this returns."""
        called = time.monotonic()
        total = 0
        self.behind = False
        while True:
            with self._lock:
                if self._drained_at > called:  # a read sent after this call began found nothing more
                    break
                if limit is not None and total >= limit:
                    self.behind = True
                    break
                sent, pending, self._unreported = time.monotonic(), self._unreported, []
                after = self.index.version

            def read(pending: list[Any] = pending, after: int = after) -> list[Any]:  # one command
                pipe = pipeline(self.r)
                self._queue_report(pipe, pending)
                self._queue_read(pipe, after)
                return list(pipe.execute()[-1])
            got = with_retries(self.queue, "read the feed", read)
            with self._lock:
                n, more = self._take(got, sent)
            total += n
            if not more:
                break
        if not self._following and self._unreported:
            self._send_reports()
        return total

    def wait(self, block_ms: int) -> int:
        """Block up to ``block_ms`` for an entry after the index's version and apply what came, in one round trip
        (the report of what was applied since the last round trip goes with it); a backlog is then worked off a
        read of ``read_count`` at a time. The entry that ends the wait is not used (the bounded read that follows
        returns it): the blocking read asks for one entry, and only a writer that goes around
        :func:`publish_changes` can make that one large."""
        with self._lock:
            sent, pending, self._unreported = time.monotonic(), self._unreported, []
            after = self.index.version

        def read() -> list[Any]:
            pipe = pipeline(self.r)
            self._queue_report(pipe, pending)
            pipe.xread({self.keys.feed: entry_id(after)}, count=1, block=block_ms)
            self._queue_read(pipe, after)
            return list(pipe.execute()[-1])
        got = with_retries(self.queue, "wait for the feed", read)
        with self._lock:
            total, more = self._take(got, sent)
        if more:
            total += self.catch_up(self.read_count)
            while self.behind:
                total += self.catch_up(self.read_count)
        return total

    def run(self, stop: Any, block_ms: int = 100) -> None:
        """Follow the feed until ``stop.is_set()``: a change is applied within about a round trip of its append
        even while no command comes. Meanwhile every report of this follower goes with this thread's next round
        trip (at most ``block_ms`` later)."""
        self._following = True
        try:
            while not stop.is_set():
                try:
                    self.wait(block_ms)
                except Exception:  # Redis away, or a bug: the position is kept, following resumes from it
                    log.exception("%s: following the change feed failed; retrying", self.name)
                    stop.wait(0.5)
        finally:
            self._following = False
        try:
            self._send_reports()
        except Exception:
            log.warning("%s: the last feed report was not sent", self.name, exc_info=True)

    def _send_reports(self) -> None:
        with self._lock:
            pending, self._unreported = self._unreported, []

        def report() -> None:
            pipe = pipeline(self.r)
            self._queue_report(pipe, pending)
            pipe.execute()
        if pending:
            with_retries(self.queue, "report the feed position", report)

    def _queue_read(self, pipe: Any, after: int) -> None:
        self._read(keys=[self.keys.feed_floor, self.keys.feed],
                   args=[entry_id(after), self.read_count, self.read_bytes, MAX_ENTRY_BYTES + _FIELD_SLACK],
                   client=pipe)

    def _take(self, got: list[Any], sent: float) -> tuple[int, bool]:
        """Apply a read's reply (the floor, whether entries were left, the entries), the lock held: (entries
        applied, whether to read again). What another thread applied meanwhile is skipped."""
        floor, more, *raw = got
        if int(floor or 0) > self.index.version:
            self._reload(int(floor))
            return 0, True
        entries = [(pos, _entry_fields(flat)) for eid, flat in raw if (pos := position(eid)) > self.index.version]
        if entries:
            self._apply(entries)
        elif self.report and not self._announced:  # up to date from the start (a fresh snapshot)
            self._unreported.append(([], ""))
        if not more:
            self._drained_at = max(self._drained_at, sent)
        return len(entries), bool(more)

    def _reload(self, floor: int) -> None:
        if self.snapshots is None:
            raise FeedGap(f"{self.name}: the feed was trimmed to position {floor}, past this index's "
                          f"{self.index.version}, and no snapshot directory is set")
        fresh = self.snapshots.open_latest()
        if fresh.version < floor:
            raise FeedGap(f"{self.name}: the latest snapshot is at {fresh.version}, the feed trimmed to {floor}")
        log.warning("%s: the feed was trimmed past position %d; loaded the snapshot at %d", self.name,
                    self.index.version, fresh.version)
        self.index.adopt(fresh)
        self.reloads += 1

    def _apply(self, entries: list[tuple[int, dict[bytes, bytes]]]) -> None:
        """Apply a batch of entries in one step of the index (:meth:`CameraIndex.apply_changes`: one pass per kind
        of change) and queue its report; an entry malformed or refused is refused alone."""
        rejected: list[tuple[int, str]] = []
        batch: list[tuple[str, Any, Any]] = []
        at: list[int] = []  # the position of each change in the batch
        for pos, fields in entries:
            try:
                raw = fields.get(b"c")
                if raw is None:
                    size = fields.get(_OVERSIZED) if len(fields) == 1 else None
                    raise InvalidChange(f"feed entry {entry_id(pos)}: " + (
                        "no 'c' field" if size is None else
                        f"{int(size)} bytes, more than the {MAX_ENTRY_BYTES} allowed (not read)"))
                batch.append(_decoded(raw))
                at.append(pos)
            except DispatchError as exc:
                rejected.append((pos, f"{type(exc).__name__}: {exc}"[:2000]))
        refused = self.index.apply_changes(batch, entries[-1][0])
        rejected += [(pos, f"{type(exc).__name__}: {exc}"[:2000]) for pos, exc in zip(at, refused, strict=True)
                     if exc is not None]
        rejected.sort()
        self.applied += len(entries) - len(rejected)
        self.rejected += len(rejected)
        for pos, err in rejected:
            log.warning("%s: feed entry %s refused: %s", self.name, entry_id(pos), err)
        if not (self.report or rejected):
            return
        now_ms = self.clock() * 1000
        lags = ",".join(f"{now_ms - pos // 1_000_000:.1f}" for pos, _ in entries)
        self._unreported.append((rejected, lags))

    def _queue_report(self, pipe: Any, reports: list[tuple[list[tuple[int, str]], str]]) -> None:
        """Queue on ``pipe`` the refusals and lags of ``reports`` and the index's position (as it is now: a
        report sent late never moves it back)."""
        for rejected, lags in reports:
            for pos, err in rejected:
                pipe.hsetnx(self.keys.feed_rejected, entry_id(pos), err)
            if self.report and lags:
                pipe.xadd(self.keys.feed_lag, {"w": self.name, "ms": lags}, maxlen=100_000, approximate=True)
        if reports and self.report:
            pipe.hset(self.keys.feed_applied, self.name, self.index.version)
            self._announced = True


#: A read's stand-in for an entry over its byte bound: the only field, its size.
_OVERSIZED = b"oversized"
#: Bytes an entry may hold beyond its change (its field's name).
_FIELD_SLACK = 64


def _entry_fields(flat: list[Any]) -> dict[bytes, bytes]:
    """An entry's fields from the flat [name, value, ...] list of a script's reply."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class Snapshotter:
    """Keeps snapshots coming: follows the feed into its own index and, every ``every_s`` seconds when the index
    moved, publishes it as a snapshot and trims the feed below the oldest snapshot kept."""

    def __init__(self, snapshots: Snapshots, index: CameraIndex, client: redis.Redis, keys: Keys | None = None, *,
                 every_s: float = 60.0, queue: QueueSettings | None = None) -> None:
        self.snapshots = snapshots
        self.keys = keys or Keys()
        self.client = client
        self.every_s = every_s
        self.follower = FeedFollower(index, client, "snapshotter", self.keys, snapshots=snapshots, queue=queue,
                                     report=False)
        latest = snapshots.latest()
        self.published = -1 if latest is None else latest[1]

    def step(self) -> bool:
        """Catch up, then publish a snapshot when the index moved since the last; whether one was published."""
        self.follower.catch_up()
        if self.follower.index.version == self.published:
            return False
        oldest = self.snapshots.publish(self.follower.index)
        self.published = self.follower.index.version
        trim_feed(self.client, oldest, self.keys)
        return True

    def run(self, stop: Any) -> None:
        """Until ``stop.is_set()``: follow the feed, and publish every ``every_s`` seconds."""
        due = time.monotonic() + self.every_s
        while not stop.is_set():
            try:
                self.follower.wait(100)
                if time.monotonic() >= due:
                    self.step()
                    due = time.monotonic() + self.every_s
            except Exception:  # a failed snapshot leaves the current one as it is; the next try comes
                log.exception("snapshotter: publishing a snapshot failed; retrying")
                stop.wait(1.0)


def ensure_snapshot(snapshots: Snapshots, index_dir: str | Path, client: redis.Redis, keys: Keys | None = None
                    ) -> int:
    """A first snapshot when there is none: the index in ``index_dir`` at position 0 (it includes no change),
    unless the feed was trimmed already (then it lacks changes: :class:`FeedGap`). The latest position."""
    latest = snapshots.latest()
    if latest is not None:
        return latest[1]
    keys = keys or Keys()
    floor = int(client.get(keys.feed_floor) or 0)
    if floor > 0:
        raise FeedGap(f"{snapshots.dir}: no snapshot, and the feed was trimmed to position {floor}: the index in "
                      f"{index_dir} lacks the changes trimmed")
    snapshots.publish(CameraIndex.open(index_dir, warm_up=False))
    return 0

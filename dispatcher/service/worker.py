"""Service mode: worker threads take commands from a Redis stream and run them through the pipeline.

A worker is a transport, nothing more: it reads a batch of entries (``XREADGROUP``), decodes each command, runs
the batch through :class:`Pipeline`, publishes each outcome and acknowledges, in one pipelined round trip.

Workers of one consumer group share the stream. An entry is acknowledged only after its work is done; a worker
that dies leaves its entries pending, and every worker, before reading new entries, claims those idle longer than
``claim_idle_ms`` (``XAUTOCLAIM``) and runs them again, which is harmless (see :mod:`dispatcher.workflow.pipeline`).
An entry delivered more than ``max_deliveries`` times fails every time: it goes to the dead-letter stream. A stop
event lets the batch in hand finish, then the worker returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import orjson
import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from dispatcher.connections import EvictionWatch, Prepacked, is_transient, transaction, with_retries
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import trim_acknowledged
from dispatcher.errors import InvalidServiceSettings
from dispatcher.keys import Keys
from dispatcher.service import commands
from dispatcher.service.feed import FeedFollower
from dispatcher.service.metrics import Report, WorkerStats
from dispatcher.settings import check_count, check_seconds
from dispatcher.workflow.pipeline import Command, Outcome, Pipeline

__all__ = ["ServiceSettings", "Worker", "WorkerStats", "consumer_threads", "shards_of_thread"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ServiceSettings:
    """How a worker reads the commands streams: its consumer group, batch size, reclaims and dead letters."""

    group: str = "workers"
    #: New entries read per call (handled together, each step one round trip for all), and how long a read
    #: blocks waiting for some (ms). Under light load a read returns one or two; under heavy load, up to this.
    #: While reads come back full (a backlog), the count doubles, up to ``read_count_max``; it halves back when
    #: they return less than a quarter of it: a batch of 64 costs the worker ~20% less CPU a request than 16.
    read_count: int = 16
    read_count_max: int = 128
    block_ms: int = 500
    #: The agencies' intake streams are many (one each) and mostly idle, and a read names each stream it looks at:
    #: Redis spends ~1.3 µs a stream on every read, ~0.5 ms for 400. So a read names the platform's stream and the
    #: intake streams that had commands in the last ``hot_s`` seconds; every ``sweep_ms`` one read names all of
    #: them. A command on an idle agency's stream waits at most ``sweep_ms`` (less with several consumers).
    sweep_ms: int = 250
    hot_s: float = 30.0
    #: A pending entry idle this long belonged to a worker that died: another worker takes it over.
    claim_idle_ms: int = 30_000
    #: The outcome streams (the submitters' and the operators') are capped at about this many entries.
    outcomes_maxlen: int = 1_000_000
    #: Consumer threads in each worker process. Two: while one waits on a Redis round trip the other runs; with
    #: four, idle readers took requests one at a time (batches of 1.3-1.4 on average at 300-500 requests/s at 10M
    #: cameras), and a batch costs its round trips whatever its size. Against four, at 10M cameras, 2 workers: less
    #: CPU a request in each of nine alternated pairs at 300-1,000 req/s, a lower p99 in seven (README, "Load test").
    threads: int = 2
    #: Whether a thread that reads the same shards as an earlier one of its process stands by until a read comes
    #: back full (a backlog), and goes back to standing by once one of the first thread's comes back short (it
    #: keeps up alone again; a short read of the second's says only that the two took the backlog). Under a load
    #: one thread keeps up with, two readers only split the requests into smaller batches, each paying its round
    #: trips (14% more worker CPU a request at 1,000 req/s); under a backlog the second one's overlap is what
    #: reaches 2,000 (README, "Load test").
    standby: bool = True
    #: An entry delivered more often than this without being acknowledged is set aside on the dead-letter stream.
    max_deliveries: int = 5
    #: The change feed's snapshot directory (:mod:`dispatcher.service.feed`): with one, every worker process loads
    #: the latest snapshot, applies the feed before each batch and while idle, and ``serve`` publishes a new
    #: snapshot every ``snapshot_every_s`` seconds when changes came (0: never). Without one, no feed is followed.
    feed_dir: str | None = None
    snapshot_every_s: float = 60.0
    #: The most changes a worker applies before one batch of commands (about: whole reads of the feed). The feed
    #: comes first, since a request resolved on a stale index may ask a camera removed or an owner opted out; but a
    #: backlog of changes (a worker back from a pause) is worked off over several batches, and by the follower
    #: thread meanwhile, rather than holding every request until all of it is in. ~15 µs a change: ~30 ms.
    feed_step: int = 2000
    #: How often (s) each consumer thread reports its counters and batch times to Redis for operators
    #: (:mod:`dispatcher.service.metrics`; one script call); 0: never.
    metrics_every_s: float = 5.0
    #: How often (s) each consumer thread asks again whether Redis may evict keys
    #: (:class:`~dispatcher.connections.EvictionWatch`; it reads nothing while Redis may); 0: at its start only.
    eviction_check_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.group or not isinstance(self.group, str):
            raise InvalidServiceSettings(f"group must be a non-empty string, got {self.group!r}")
        # block_ms 0 is Redis's "block until an entry comes": a stop would wait for the next command
        for name in ("read_count", "block_ms", "claim_idle_ms", "outcomes_maxlen", "threads", "max_deliveries",
                     "feed_step"):
            check_count(name, getattr(self, name), InvalidServiceSettings)
        check_count("read_count_max", self.read_count_max, InvalidServiceSettings, minimum=self.read_count)
        check_count("sweep_ms", self.sweep_ms, InvalidServiceSettings, minimum=0)
        for name in ("hot_s", "snapshot_every_s", "metrics_every_s", "eviction_check_s"):
            check_seconds(name, getattr(self, name), InvalidServiceSettings)


#: A stream entry in hand: (stream, entry id, fields).
Entry = tuple[str, Any, dict[Any, Any]]


class Worker:
    """One consumer of the commands streams: the platform's own (``Keys.requests``) and each partner agency's
    intake (``Keys.intake``: what comes from there is that agency's); its own Redis connection, and the pipeline
    it feeds."""

    def __init__(self, name: str, client: redis.Redis, pipeline: Pipeline, settings: ServiceSettings | None = None,
                 keys: Keys | None = None, clock: Callable[[], datetime] | None = None,
                 queue: QueueSettings | None = None, agencies: Sequence[str] = (),
                 feed: FeedFollower | None = None, shards: Sequence[int] | None = None,
                 backlog: threading.Event | None = None, standby: bool = False) -> None:
        self.name = name
        #: Set while the reads of this worker's shards come back full, shared with the process's other readers of
        #: them; a ``standby`` worker reads only while it is set (``ServiceSettings.standby``).
        self.backlog = backlog
        self.standby = standby and backlog is not None
        #: The change feed, applied to the pipeline's index before each batch (shared by a process's threads).
        self.feed = feed
        #: The time a command is judged at (validation, retention, caps); the wall clock unless a test says.
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.r = client
        self.pipeline = pipeline
        self.settings = settings or ServiceSettings()
        self.keys = keys or Keys()
        #: The retry policy of every Redis call.
        self.queue = queue or QueueSettings(url="redis://")
        #: The shards whose streams this worker reads (every one unless told: :func:`shards_of_thread`).
        self.shards = list(range(self.keys.shards)) if shards is None else list(shards)
        #: stream -> the agency it belongs to (None: the platform's own)
        self.streams: dict[str, str | None] = {}
        #: stream -> the key names of its shard (where its outcomes and dead letters go, in its slot)
        self.shard_keys: dict[str, Keys] = {}
        #: shard -> the streams of it this worker reads (the platform's first)
        self._shard_streams: dict[int, list[str]] = {}
        for n in self.shards:
            k = self.keys.shard(n)
            for stream, agency in [(k.requests, None), *((k.intake(a), a) for a in agencies)]:
                self.streams[stream], self.shard_keys[stream] = agency, k
                self._shard_streams.setdefault(n, []).append(stream)
        self.stats = WorkerStats()
        #: Whether Redis still keeps every key (no eviction policy), asked every ``eviction_check_s``.
        self.keeps_keys = EvictionWatch(client, self.queue, name, self.settings.eviction_check_s)
        every = self.settings.metrics_every_s
        #: What it has done, to Redis every ``metrics_every_s`` for operators (:mod:`dispatcher.service.metrics`).
        self.report = Report(client, self.keys.worker_reports, self.keys.worker_seen, name, every,
                             self._figures) if every > 0 else None
        # The calls repeated with the same arguments all the time (reads and claim passes over the same streams)
        # are encoded once (Prepacked), by (streams, count) and by streams; each names streams of one shard (of
        # one slot) only.
        #: the entries a read asks for now (adapted to the backlog)
        self._count = self.settings.read_count
        self._reads: dict[tuple[tuple[str, ...], int], Prepacked] = {}
        self._claims: dict[tuple[str, ...], Prepacked] = {}
        self._next_full_claim = 0.0
        #: intake stream -> until when (monotonic) it is named in every read
        self._hot: dict[str, float] = {}
        self._next_sweep = 0.0
        self._next_claim = 0.0
        self._touched: set[str] = set()
        self._stop: Any = None
        #: the unbounded wait of :meth:`_retry` (no state of a call: made once)
        self._wait = Retry(ConstantBackoff(min(self.queue.backoff_max, 0.5)), -1, supported_errors=(Exception,))
        self._retry("create group", self._ensure_groups)

    # ------------------------------------------------------------------------------------------ one batch

    def process(self, entries: list[Entry]) -> None:
        """Run a batch of stream entries through the pipeline, then publish the outcomes and acknowledge. A
        command that fails on its own (a bug it triggers, every time) goes to the dead-letter stream with its
        error; the others of the batch complete. Transient Redis trouble is retried with the batch in hand.
        With a change feed, every change appended before the batch was read is applied first, up to
        ``settings.feed_step`` of them (a larger backlog: the rest before the next batches)."""
        started = time.monotonic()
        if self.feed is not None:
            feed, step = self.feed, self.settings.feed_step
            self._retry("the change feed", lambda: feed.catch_up(step))
        cmds = [commands.decode(fields, self.streams[stream]) for stream, _, fields in entries]
        now = self.clock()
        results = self._isolated(cmds, now)
        done = time.time()

        # One entry per outcome stream and one XACK per commands stream for the whole batch: a command each would
        # be ~3 commands a request, a tenth of what a request costs the worker to send and parse. With shards, one
        # MULTI/EXEC per shard: a shard's outcomes, dead letters and acks, in its slot.
        # Every key below is (its shard's hash tag, the key): the tag picks the shard's MULTI/EXEC.
        submitters: dict[tuple[str, str], list[dict[str, Any]]] = {}
        operators: dict[tuple[str, str], list[dict[str, Any]]] = {}
        dead: list[tuple[tuple[str, str], dict[Any, Any]]] = []
        acks: dict[tuple[str, str], list[Any]] = {}
        for (stream, eid, fields), cmd, res in zip(entries, cmds, results, strict=True):
            agency, k = self.streams[stream], self.shard_keys[stream]
            if isinstance(res, Outcome):
                to = k.outcomes if agency is None else k.agency_outcomes(agency)
                submitters.setdefault((k.hash_tag, to), []).append(
                    commands.submitters_outcome(res, cmd.trace, agency))
                operators.setdefault((k.hash_tag, k.operator_outcomes), []).append({
                    "request_id": res.request_id, "agency": agency, "outcome": res.status, "codes": res.codes,
                    "notified": res.notified, "now_us": int(now.timestamp() * 1e6), "done": done,
                    "index_version": res.index_version, "worker": self.name, "trace": cmd.trace})
            else:
                dead.append(((k.hash_tag, k.dead_letters), {**fields, "stream": stream, "id": eid,
                                                             "error": res[:2000]}))
            acks.setdefault((k.hash_tag, stream), []).append(eid)

        def publish() -> None:
            pipes: dict[str, Any] = {}

            def pipe_of(tag: str) -> Any:  # the MULTI/EXEC of a shard
                return pipes.get(tag) or pipes.setdefault(tag, transaction(self.r))
            cap = {"maxlen": self.settings.outcomes_maxlen, "approximate": True}
            for (tag, to), outs in (*submitters.items(), *operators.items()):
                pipe_of(tag).xadd(to, {commands.OUTCOMES: orjson.dumps(outs)}, **cap)
            for (tag, to), entry in dead:
                pipe_of(tag).xadd(to, entry)
            for (tag, stream), ids in acks.items():
                pipe_of(tag).xack(stream, self.settings.group, *ids)
            for pipe in pipes.values():
                pipe.execute()
        self._retry("publish", publish)
        self._touched.update(stream for stream, _, _ in entries)
        for (stream, eid, _), res in zip(entries, results, strict=True):
            if isinstance(res, Outcome):
                self.stats.count(res)
                log.debug("%s: %s -> %s", self.name, _s(eid), res.status)
            else:
                self.stats.handled += 1
                self.stats.dead_lettered += 1
                log.error("%s: entry %s fails on its own (%s); moved to %s", self.name, _s(eid), res,
                          self.shard_keys[stream].dead_letters)
        self.stats.timed(time.monotonic() - started)

    def _isolated(self, cmds: list[Command], now: datetime) -> list[Outcome | str]:
        """The pipeline's outcomes; when the batch fails (not Redis trouble: a bug some command triggers), it is
        split in halves, run again, and so on down to the commands that fail alone: those get their error
        (a string) instead of an outcome. Running a command twice is harmless."""
        try:
            return self._retry("the batch", lambda: list(self.pipeline.run(cmds, now)))
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(cmds) == 1:
                log.warning("%s: a command fails on its own: %s", self.name, exc, exc_info=True)
                return [f"{type(exc).__name__}: {exc}"]
            mid = len(cmds) // 2
            return self._isolated(cmds[:mid], now) + self._isolated(cmds[mid:], now)

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` until it passes Redis trouble: :func:`with_retries`' bounded retries with backoff, then again
        after a pause (redis-py's ``Retry`` with no bound), for as long as the worker is not asked to stop (the
        entries in hand are never given up to a blip); the wait is logged once. A consumer group gone (Redis came
        back empty) is created again at once."""
        def attempt() -> T:
            while True:
                try:
                    return with_retries(self.queue, what, fn)
                except redis.ResponseError as exc:
                    if not _nogroup(exc):
                        raise
                    self._ensure_groups()

        def waiting(exc: Exception, failures: int) -> None:
            if failures == 1:
                log.warning("%s: Redis unavailable during %s (%s); waiting for it", self.name, what, exc)

        def worth_waiting(exc: Exception) -> bool:
            return is_transient(exc) and not (self._stop is not None and self._stop.is_set())

        return self._wait.call_with_retry(attempt, waiting, is_retryable=worth_waiting, with_failure_count=True)

    # ------------------------------------------------------------------------------------------- the loop

    def _ensure_groups(self) -> None:
        """The consumer group on every stream, created with the stream if missing (at start, and after Redis came
        back empty)."""
        pipe = self.r.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xgroup_create(stream, self.settings.group, id="0", mkstream=True)
        created = 0
        for got in pipe.execute(raise_on_error=False):
            if isinstance(got, redis.ResponseError) and "BUSYGROUP" not in str(got):
                raise got
            created += got is True
        if created:
            log.info("%s: created consumer group %s on %d streams", self.name, self.settings.group, created)

    def _claim_stale(self) -> list[Entry]:
        """Entries another consumer held longer than ``claim_idle_ms``, claimed for this one. An entry delivered
        more than ``max_deliveries`` times is run alone (it may be a command that kills its worker); past four
        times that, it is set aside on the dead-letter stream without running."""
        s = self.settings

        looking = self._claiming()
        claimed: list[Entry] = []
        for n in self.shards:  # a pass per shard: one slot each
            streams = tuple(st for st in looking if self.shard_keys[st] is self.keys.shard(n))
            if not streams:
                continue
            if streams not in self._claims:
                if len(self._claims) > 64:
                    self._claims.clear()
                self._claims[streams] = Prepacked(self.r, [("XAUTOCLAIM", stream, s.group, self.name,
                                                            s.claim_idle_ms, "0-0", "COUNT", s.read_count)
                                                           for stream in streams])
            claimed += [(stream, eid, _fields(flat))
                        for stream, got in zip(streams, self._retry("claim", self._claims[streams].run), strict=True)
                        for eid, flat in got[1] if flat]  # None: deleted meanwhile
        if not claimed:
            return claimed

        def pending() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for stream, eid, _ in claimed:
                pipe.xpending_range(stream, s.group, min=eid, max=eid, count=1)
            return list(pipe.execute())
        times = [int(p[0]["times_delivered"]) if p else 0 for p in self._retry("pending", pending)]
        fresh: list[Entry] = []
        alone: list[Entry] = []
        dead: list[tuple[Entry, int]] = []
        for entry, n in zip(claimed, times, strict=True):
            if n > 4 * s.max_deliveries:
                dead.append((entry, n))
            else:
                (alone if n > s.max_deliveries else fresh).append(entry)
        if dead:
            def set_aside() -> None:
                for (stream, eid, fields), n in dead:  # each in its shard's slot: dead letter and ack together
                    pipe = self.r.pipeline(transaction=True)
                    pipe.xadd(self.shard_keys[stream].dead_letters, {
                        **fields, "stream": stream, "id": eid, "deliveries": n,
                        "error": "delivered again and again without an outcome"})
                    pipe.xack(stream, s.group, eid)
                    pipe.execute()
            self._retry("dead letters", set_aside)
            self.stats.dead_lettered += len(dead)
            log.error("%s: %d entries were delivered more than %d times without an outcome; moved to %s",
                      self.name, len(dead), 4 * s.max_deliveries, self.shard_keys[dead[0][0][0]].dead_letters)
        for entry in alone:
            self.process([entry])
        return fresh

    def _trim(self) -> None:
        """Drop the commands every group has acknowledged: a submission names the agency's request, which the
        store holds from then on; nothing is kept twice, nor for ever."""
        touched, self._touched = self._touched, set()  # only the streams this worker took entries from
        for stream in touched:
            self._retry("trim", lambda stream=stream: trim_acknowledged(self.r, stream))  # type: ignore[misc]

    def step(self) -> int:
        """Claim what dead workers left, then read new entries; returns how many entries were handled."""
        s = self.settings
        before = self.stats.handled
        if time.monotonic() >= self._next_claim:  # a quarter of the idle time between looks is plenty
            claimed = self._claim_stale()
            if claimed:
                self.stats.claimed += len(claimed)
                self.process(claimed)
            else:
                self._next_claim = time.monotonic() + s.claim_idle_ms / 4000
                self._trim()
        entries = self._read_new()
        count = self._count
        if self.backlog is not None:  # raised by any full read; lowered by the first reader's short ones alone
            if len(entries) >= count:
                self.backlog.set()
            elif not self.standby:
                self.backlog.clear()
        if len(entries) >= count:
            self._count = min(2 * count, max(s.read_count_max, s.read_count))
        elif 4 * len(entries) < count:
            self._count = max(count // 2, s.read_count)
        for first in range(0, len(entries), count):  # up to count from each stream: cut to size
            self.process(entries[first:first + count])
        return self.stats.handled - before

    def _reading(self, streams: tuple[str, ...], block_ms: int | None) -> Prepacked:
        key = (streams, self._count)
        if key not in self._reads:
            if len(self._reads) > 64:
                self._reads.clear()
            block = () if block_ms is None else ("BLOCK", block_ms)
            self._reads[key] = Prepacked(self.r, [(
                "XREADGROUP", "GROUP", self.settings.group, self.name, "COUNT", self._count, *block,
                "STREAMS", *streams, *[">"] * len(streams))])
        return self._reads[key]

    def _claiming(self) -> tuple[str, ...]:
        """The streams a claim pass looks at: as reads do, the platform's and the hot intake streams, and every
        ``claim_idle_ms`` all of them (a dead consumer's entries on an idle agency's stream wait at most twice the
        idle time)."""
        now = time.monotonic()
        if now >= self._next_full_claim:
            self._next_full_claim = now + self.settings.claim_idle_ms / 1000
            return tuple(self.streams)
        return (*(self.keys.shard(n).requests for n in self.shards),
                *sorted(s for s, until in self._hot.items() if until > now))

    def _of_shard(self, shard: int) -> list[str]:
        """The streams of ``shard`` this worker reads (the platform's first)."""
        return self._shard_streams[shard]

    def _read_new(self) -> list[Entry]:
        """New entries: from every stream when a sweep is due (without blocking), else from the platform's stream
        and the hot intake streams (blocking until some come, or the next sweep). One read per shard (a read names
        streams of one slot), each blocking for its share of the time."""
        s, now = self.settings, time.monotonic()
        sweep = len(self.streams) > len(self.shards) and now >= self._next_sweep
        if sweep:
            self._next_sweep = now + s.sweep_ms / 1000
        self._hot = {stream: until for stream, until in self._hot.items() if until > now}
        block = max(1, s.block_ms // len(self.shards))
        entries: list[Entry] = []
        for n in self.shards:
            mine = self._of_shard(n)
            if len(mine) == 1:
                read = self._reading(tuple(mine), block)
            elif sweep:
                read = self._reading(tuple(mine), None)
            else:
                hot = sorted(st for st in self._hot if self.shard_keys[st] is self.keys.shard(n))
                read = self._reading((mine[0], *hot), min(block, s.sweep_ms))
            fresh = self._retry("read", read.run)[0]  # RESP3: a map of streams; RESP2: [stream, entries] pairs
            entries += [(_s(stream), eid, _fields(flat))
                        for stream, got in (fresh.items() if isinstance(fresh, dict) else fresh or [])
                        for eid, flat in got]
        for stream in {stream for stream, _, _ in entries if self.streams[stream] is not None}:
            self._hot[stream] = now + s.hot_s
        return entries

    def run(self, stop: Any) -> WorkerStats:
        """Serve until ``stop.is_set()`` (a ``threading.Event``; set on SIGTERM)."""
        self._stop = stop
        waits_for = self.backlog if self.standby else None
        answered = True
        while not stop.is_set():
            if self.report is not None:
                self.report()
            if not self.keeps_keys():  # Redis may evict what a step writes: nothing is taken until it may not
                stop.wait(1.0)
                continue
            if waits_for is not None and not waits_for.is_set():
                waits_for.wait(self.settings.block_ms / 1000)
                continue
            try:
                self.step()
                answered = True
            except Exception as exc:  # Redis trouble while stopping, or a bug: the entries in hand stay pending
                answered = False
                if is_transient(exc):
                    log.warning("%s: Redis unreachable (%s); retrying", self.name, exc)
                else:
                    log.exception("%s: a step failed; its entries stay pending and will be retried", self.name)
                time.sleep(0.5)
        # A last report, unless Redis was away just now: a Redis that hangs rather than refuses would hold the
        # stop for the client's socket timeout (5 s by default) on a report nobody needs.
        if answered and self.report is not None:
            self.report(final=True)
        return self.stats

    def _figures(self) -> dict[str, Any]:
        return {**self.stats.snapshot(), "index_version": self.pipeline.index.version, "shards": self.shards,
                "standby": self.standby}


def consumer_threads(threads: int, shards: int, standby: bool) -> list[tuple[list[int], threading.Event | None, bool]]:
    """The consumer threads of one process: each one's shards (:func:`shards_of_thread`), the backlog flag it
    shares with the others reading the same shards (None when it reads them alone), and whether it stands by
    (``standby`` and an earlier thread reads them: :attr:`ServiceSettings.standby`)."""
    groups = [tuple(shards_of_thread(k, threads, shards)) for k in range(threads)]
    backlogs = {g: threading.Event() for g in groups if groups.count(g) > 1}
    return [(list(g), backlogs.get(g), standby and g in groups[:k]) for k, g in enumerate(groups)]


def shards_of_thread(thread: int, threads: int, shards: int) -> list[int]:
    """The shards consumer thread ``thread`` of ``threads`` (in one process) reads: one each, round robin, when
    there are at least as many threads as shards (every shard read by some thread), else every ``threads``-th."""
    if threads >= shards:
        return [thread % shards]
    return list(range(thread, shards, threads))


def _nogroup(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("NOGROUP")


def _fields(flat: list[Any]) -> dict[Any, Any]:
    """An entry's fields from the flat [name, value, ...] list of a raw reply."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _s(x: str | bytes) -> str:
    return x.decode() if isinstance(x, bytes) else x

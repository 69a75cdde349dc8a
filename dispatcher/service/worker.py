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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import orjson
import redis

from dispatcher.connections import is_transient, with_retries
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.keys import Keys
from dispatcher.service import commands
from dispatcher.workflow.pipeline import Command, Outcome, Pipeline

__all__ = ["ServiceSettings", "Worker", "WorkerStats"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ServiceSettings:
    group: str = "workers"
    #: New entries read per call (handled together, each step one round trip for all), and how long a read
    #: blocks waiting for some (ms). Under light load a read returns one or two; under heavy load, up to this.
    read_count: int = 16
    block_ms: int = 500
    #: A pending entry idle this long belonged to a worker that died: another worker takes it over.
    claim_idle_ms: int = 30_000
    #: The outcome streams (the submitters' and the operators') are capped at about this many entries.
    outcomes_maxlen: int = 1_000_000
    #: Consumer threads in each worker process.
    threads: int = 4
    #: An entry delivered more often than this without being acknowledged is set aside on the dead-letter stream.
    max_deliveries: int = 5


@dataclass
class WorkerStats:
    handled: int = 0
    refused: int = 0
    dispatched: int = 0
    claimed: int = 0
    recipients: int = 0
    dead_lettered: int = 0
    outcomes: list[str] = field(default_factory=list)

    def count(self, outcome: Outcome) -> None:
        self.handled += 1
        self.refused += outcome.refused
        self.dispatched += outcome.dispatched_now
        self.recipients += outcome.notified
        self.outcomes.append(outcome.status)


class Worker:
    """One consumer of the requests stream: its own Redis connection, and the pipeline it feeds."""

    def __init__(self, name: str, client: redis.Redis, pipeline: Pipeline, settings: ServiceSettings | None = None,
                 keys: Keys | None = None, clock: Callable[[], datetime] | None = None,
                 queue: QueueSettings | None = None) -> None:
        self.name = name
        #: The time a command is judged at (validation, retention, caps); the wall clock unless a test says.
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.r = client
        self.pipeline = pipeline
        self.settings = settings or ServiceSettings()
        self.keys = keys or Keys()
        #: The retry policy of every Redis call.
        self.queue = queue or QueueSettings(url="redis://")
        self.stats = WorkerStats()
        self._next_claim = 0.0
        self._stop: Any = None
        self._retry("create group", self._ensure_group)

    # ------------------------------------------------------------------------------------------ one batch

    def process(self, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        """Run a batch of stream entries through the pipeline, then publish the outcomes and acknowledge. A
        command that fails on its own (a bug it triggers, every time) goes to the dead-letter stream with its
        error; the others of the batch complete. Transient Redis trouble is retried with the batch in hand."""
        cmds = [commands.decode(fields) for _, fields in entries]
        now = self.clock()
        results = self._isolated(cmds, now)
        done = time.time()

        def publish() -> None:
            pipe = self.r.pipeline(transaction=True)
            for (eid, fields), cmd, res in zip(entries, cmds, results, strict=True):
                if isinstance(res, Outcome):
                    # submitters learn the status (and a refusal's rule codes) only: no count, no time
                    pipe.xadd(self.keys.outcomes, {"o": orjson.dumps({
                        "request_id": res.request_id, "outcome": res.status, "codes": res.codes,
                        "trace": cmd.trace})}, maxlen=self.settings.outcomes_maxlen, approximate=True)
                    pipe.xadd(self.keys.operator_outcomes, {"o": orjson.dumps({
                        "request_id": res.request_id, "outcome": res.status, "codes": res.codes,
                        "notified": res.notified, "now_us": int(now.timestamp() * 1e6), "done": done,
                        "worker": self.name, "trace": cmd.trace})}, maxlen=self.settings.outcomes_maxlen,
                        approximate=True)
                else:
                    pipe.xadd(self.keys.dead_letters, {**(fields or {}), "id": eid, "error": res[:2000]})
                pipe.xack(self.keys.requests, self.settings.group, eid)
            pipe.execute()
        self._retry("publish", publish)
        for (eid, _), res in zip(entries, results, strict=True):
            if isinstance(res, Outcome):
                self.stats.count(res)
                log.debug("%s: %s -> %s", self.name, _s(eid), res.status)
            else:
                self.stats.handled += 1
                self.stats.dead_lettered += 1
                log.error("%s: entry %s fails on its own (%s); moved to %s", self.name, _s(eid), res,
                          self.keys.dead_letters)

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
        """``fn()`` until it passes Redis trouble: bounded retries with backoff, then again after a pause, for as
        long as the worker is not asked to stop (the entries in hand are never given up to a blip)."""
        warned = False
        while True:
            try:
                return with_retries(self.queue, what, fn)
            except Exception as exc:
                if _nogroup(exc):
                    self._ensure_group()
                    continue
                if not is_transient(exc) or (self._stop is not None and self._stop.is_set()):
                    raise
                if not warned:
                    log.warning("%s: Redis unavailable during %s (%s); waiting for it", self.name, what, exc)
                    warned = True
                time.sleep(min(self.queue.backoff_max, 0.5))

    # ------------------------------------------------------------------------------------------- the loop

    def _ensure_group(self) -> None:
        """The consumer group, created with its stream if missing (at start, and after Redis came back empty)."""
        try:
            self.r.xgroup_create(self.keys.requests, self.settings.group, id="0", mkstream=True)
            log.info("%s: created consumer group %s on %s", self.name, self.settings.group, self.keys.requests)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _claim_stale(self) -> list[Any]:
        """Entries another consumer held longer than ``claim_idle_ms``, claimed for this one. An entry delivered
        more than ``max_deliveries`` times is run alone (it may be a command that kills its worker); past four
        times that, it is set aside on the dead-letter stream without running."""
        s, k = self.settings, self.keys
        got: Any = self._retry("claim", lambda: self.r.xautoclaim(
            k.requests, s.group, self.name, min_idle_time=s.claim_idle_ms, start_id="0-0", count=s.read_count))
        claimed = [(eid, fields) for eid, fields in got[1] if fields]  # None: deleted meanwhile
        if not claimed:
            return claimed
        ids = [eid for eid, _ in claimed]
        info: Any = self._retry("pending", lambda: self.r.xpending_range(k.requests, s.group, min=ids[0],
                                                                           max=ids[-1], count=len(ids) * 4))
        times = {_s(p["message_id"]): int(p["times_delivered"]) for p in info}
        fresh: list[Any] = []
        alone: list[Any] = []
        dead: list[Any] = []
        for eid, fields in claimed:
            n = times.get(_s(eid), 0)
            (dead if n > 4 * s.max_deliveries else alone if n > s.max_deliveries else fresh).append((eid, fields))
        if dead:
            def set_aside() -> None:
                pipe = self.r.pipeline(transaction=True)
                for eid, fields in dead:
                    pipe.xadd(k.dead_letters, {**fields, "id": eid, "deliveries": times[_s(eid)],
                                               "error": "delivered again and again without an outcome"})
                    pipe.xack(k.requests, s.group, eid)
                pipe.execute()
            self._retry("dead letters", set_aside)
            self.stats.dead_lettered += len(dead)
            log.error("%s: %d entries were delivered more than %d times without an outcome; moved to %s",
                      self.name, len(dead), 4 * s.max_deliveries, k.dead_letters)
        for entry in alone:
            self.process([entry])
        return fresh

    def step(self) -> int:
        """Claim what dead workers left, then read new entries; returns how many entries were handled."""
        s, k = self.settings, self.keys
        before = self.stats.handled
        if time.monotonic() >= self._next_claim:  # a quarter of the idle time between looks is plenty
            claimed = self._claim_stale()
            if claimed:
                self.stats.claimed += len(claimed)
                self.process(claimed)
            else:
                self._next_claim = time.monotonic() + s.claim_idle_ms / 4000
        fresh: Any = self._retry("read", lambda: self.r.xreadgroup(s.group, self.name, {k.requests: ">"},
                                                                     count=s.read_count, block=s.block_ms))
        for _, entries in fresh or []:
            self.process(entries)
        return self.stats.handled - before

    def run(self, stop: Any) -> WorkerStats:
        """Serve until ``stop.is_set()`` (a ``threading.Event``; set on SIGTERM)."""
        self._stop = stop
        while not stop.is_set():
            try:
                self.step()
            except Exception as exc:  # Redis trouble while stopping, or a bug: the entries in hand stay pending
                if is_transient(exc):
                    log.warning("%s: Redis unreachable (%s); retrying", self.name, exc)
                else:
                    log.exception("%s: a step failed; its entries stay pending and will be retried", self.name)
                time.sleep(0.5)
        return self.stats


def _nogroup(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("NOGROUP")


def _s(x: str | bytes) -> str:
    return x.decode() if isinstance(x, bytes) else x

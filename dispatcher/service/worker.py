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
from typing import Any

import orjson
import redis

from dispatcher.errors import QueueUnavailable
from dispatcher.keys import Keys
from dispatcher.service import commands
from dispatcher.workflow.pipeline import Outcome, Pipeline

__all__ = ["ServiceSettings", "Worker", "WorkerStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSettings:
    group: str = "workers"
    #: New entries read per call (handled together, each step one round trip for all), and how long a read
    #: blocks waiting for some (ms). Under light load a read returns one or two; under heavy load, up to this.
    read_count: int = 16
    block_ms: int = 500
    #: A pending entry idle this long belonged to a worker that died: another worker takes it over.
    claim_idle_ms: int = 30_000
    #: The outcomes stream is capped at about this many entries.
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
                 keys: Keys | None = None, clock: Callable[[], datetime] | None = None) -> None:
        self.name = name
        #: The time a command is judged at (validation, retention, caps); the wall clock unless a test says.
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.r = client
        self.pipeline = pipeline
        self.settings = settings or ServiceSettings()
        self.keys = keys or Keys()
        self.stats = WorkerStats()
        self._next_claim = 0.0
        try:
            self.r.xgroup_create(self.keys.requests, self.settings.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def process(self, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        """Run a batch of stream entries through the pipeline, then publish the outcomes and acknowledge."""
        cmds = [commands.decode(fields) for _, fields in entries]
        now = self.clock()
        results = self.pipeline.run(cmds, now)
        done = time.time()
        pipe = self.r.pipeline(transaction=False)
        for (eid, _), cmd, res in zip(entries, cmds, results, strict=True):
            pipe.xadd(self.keys.outcomes, {"o": orjson.dumps({
                "request_id": res.request_id, "outcome": res.status, "notified": res.notified,
                "now_us": int(now.timestamp() * 1e6), "done": done, "worker": self.name, "trace": cmd.trace})},
                maxlen=self.settings.outcomes_maxlen, approximate=True)
            pipe.xack(self.keys.requests, self.settings.group, eid)
            self.stats.count(res)
            log.debug("%s: %s -> %s", self.name, eid, res.status)
        pipe.execute()

    def _set_aside_poison(self, claimed: list[Any]) -> list[Any]:
        """Entries delivered ``max_deliveries`` times without being acknowledged fail every time (a bug or an
        entry no worker can handle): they go to the dead-letter stream with their delivery count, are
        acknowledged and logged, so they stop taking turns forever. Returns the others."""
        s, k = self.settings, self.keys
        if not claimed:
            return claimed
        ids = [eid for eid, _ in claimed]
        info: Any = self.r.xpending_range(k.requests, s.group, min=ids[0], max=ids[-1], count=len(ids) * 4)
        times = {_s(p["message_id"]): int(p["times_delivered"]) for p in info}
        keep: list[Any] = []
        dead: list[Any] = []
        for eid, fields in claimed:
            (dead if times.get(_s(eid), 0) > s.max_deliveries else keep).append((eid, fields))
        if dead:
            pipe = self.r.pipeline(transaction=True)
            for eid, fields in dead:
                pipe.xadd(k.dead_letters, {**(fields or {}), "id": eid, "deliveries": times[_s(eid)]})
                pipe.xack(k.requests, s.group, eid)
            pipe.execute()
            self.stats.dead_lettered += len(dead)
            log.error("%s: %d entries failed %d deliveries; moved to %s", self.name, len(dead), s.max_deliveries,
                      k.dead_letters)
        return keep

    def step(self) -> int:
        """Claim what dead workers left, then read new entries; returns how many entries were handled."""
        s, k = self.settings, self.keys
        before = self.stats.handled
        if time.monotonic() >= self._next_claim:  # a quarter of the idle time between looks is plenty
            got: Any = self.r.xautoclaim(k.requests, s.group, self.name, min_idle_time=s.claim_idle_ms,
                                         start_id="0-0", count=s.read_count)
            claimed = self._set_aside_poison(got[1])  # [next start id, claimed entries, ids deleted meanwhile]
            if claimed:
                self.stats.claimed += len(claimed)
                self.process(claimed)
            else:
                self._next_claim = time.monotonic() + s.claim_idle_ms / 4000
        fresh: Any = self.r.xreadgroup(s.group, self.name, {k.requests: ">"}, count=s.read_count, block=s.block_ms)
        for _, entries in fresh or []:
            self.process(entries)
        return self.stats.handled - before

    def run(self, stop: Any) -> WorkerStats:
        """Serve until ``stop.is_set()`` (a ``threading.Event``; set on SIGTERM)."""
        while not stop.is_set():
            try:
                self.step()
            except (redis.ConnectionError, redis.TimeoutError, QueueUnavailable) as exc:
                # Down, restarting or still loading its data: the entries in hand stay pending and are taken
                # up again (by this consumer or another) once Redis answers; a worker never dies of it.
                log.warning("%s: Redis unreachable (%s); retrying", self.name, exc)
                time.sleep(0.5)
            except Exception:  # a bug or a bad entry: keep serving the others; the entry stays pending
                log.exception("%s: a batch failed; its entries stay pending and will be retried", self.name)
                time.sleep(0.5)
        return self.stats


def _s(x: str | bytes) -> str:
    return x.decode() if isinstance(x, bytes) else x

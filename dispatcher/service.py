"""Service mode: workers take requests from a Redis stream and run each through validate -> resolve -> dispatch.

Entries on the requests stream are one of two commands, as JSON in the field ``cmd``:

- ``{"kind": "submit", "request": {...}}``: a new request (the fields of :class:`VideoRequest`). The worker
  validates it through the :class:`Workflow` (a refusal is recorded in the audit log, and acknowledged: retrying
  would refuse it again); with auto-approval on, it is then resolved and dispatched at once.
- ``{"kind": "dispatch", "request_id": "..."}``: a reviewer approved a request; resolve and dispatch it.

Workers of one consumer group share the stream (``XREADGROUP``). An entry is acknowledged only after its work is
done; a worker that dies leaves its entries pending, and every worker, before reading new entries, claims those
idle longer than ``claim_idle_ms`` (``XAUTOCLAIM``) and finishes them. Finishing twice is harmless: a request
already recorded continues from its recorded state, and dispatch skips the batches already appended. SIGTERM
(``stop``) lets the entry in hand finish, then the worker returns.

Workers on one machine share the memory-mapped index (:meth:`CameraIndex.open`); on several machines, each opens
its own copy of the same index directory.
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

from dispatcher.errors import DispatchError
from dispatcher.index import CameraIndex
from dispatcher.queue import Dispatcher, NotificationHeader
from dispatcher.requests import VideoRequest
from dispatcher.workflow import OwnerGate, Workflow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSettings:
    requests_stream: str = "geodispatch:{gd}:requests"
    group: str = "workers"
    #: New entries read per call, and how long a read blocks waiting for some (ms).
    read_count: int = 8
    block_ms: int = 500
    #: A pending entry idle this long belonged to a worker that died: another worker takes it over.
    claim_idle_ms: int = 30_000


def submit(client: redis.Redis, request: dict[str, Any], settings: ServiceSettings | None = None) -> str:
    """The agency-facing side: queue a new request for the workers (returns the stream entry id)."""
    s = settings or ServiceSettings()
    body = orjson.dumps({"kind": "submit", "request": request}, default=_json_default)
    return _s(client.xadd(s.requests_stream, {"cmd": body}))


def request_dispatch(client: redis.Redis, request_id: str, settings: ServiceSettings | None = None) -> str:
    """The reviewer's side: a request was approved; queue its dispatch."""
    s = settings or ServiceSettings()
    return _s(client.xadd(s.requests_stream, {"cmd": orjson.dumps({"kind": "dispatch", "request_id": request_id})}))


def _json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    raise TypeError(f"cannot encode {type(o).__name__}")


def _s(x: str | bytes) -> str:
    return x.decode() if isinstance(x, bytes) else x


@dataclass
class WorkerStats:
    handled: int = 0
    refused: int = 0
    dispatched: int = 0
    claimed: int = 0
    recipients: int = 0
    outcomes: list[str] = field(default_factory=list)


class Worker:
    """One service worker: its own Redis connection, the shared index, the workflow and the dispatcher."""

    def __init__(self, name: str, client: redis.Redis, index: CameraIndex, workflow: Workflow,
                 dispatcher: Dispatcher, settings: ServiceSettings | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.name = name
        #: The time a command is judged at (validation, retention, caps); the wall clock unless a test says.
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.r = client
        self.index = index
        self.workflow = workflow
        self.dispatcher = dispatcher
        self.settings = settings or ServiceSettings()
        self.gate = OwnerGate(workflow.store, workflow.policy)
        self.stats = WorkerStats()
        try:
            self.r.xgroup_create(self.settings.requests_stream, self.settings.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---------------------------------------------------------------------------------------- one command

    def handle(self, cmd: dict[str, Any], now: datetime | None = None) -> str:
        """Run one command to its end; returns what happened. Raises only for failures worth retrying."""
        now = now or self.clock()
        kind = cmd.get("kind")
        if kind == "submit":
            req = cmd.get("request")
            rid = req.get("request_id") if isinstance(req, dict) else None
            existing = self.workflow.store.get_request(rid) if isinstance(rid, str) else None
            if existing is None:
                try:
                    state = self.workflow.submit(VideoRequest.from_dict(req) if isinstance(req, dict) else req, now)
                except DispatchError as exc:  # refused: the audit log has it; a retry would refuse it again
                    self.stats.refused += 1
                    return f"refused: {type(exc).__name__}"
            else:  # a redelivery of a request we already recorded: continue from where it stands
                state = existing[0]
            return self._continue(str(rid), state, now) if state == "approved" else state
        if kind == "dispatch":
            rid = cmd.get("request_id")
            got = self.workflow.store.get_request(rid) if isinstance(rid, str) else None
            if got is None:
                self.stats.refused += 1
                return "refused: unknown request"
            return self._continue(str(rid), got[0], now)
        self.stats.refused += 1
        return f"refused: unknown command {kind!r}"

    def _continue(self, request_id: str, state: str, now: datetime) -> str:
        if state != "approved":
            return state  # dispatched, closed or rejected already: nothing to do
        _, p = self.workflow.store.get_request(request_id)  # type: ignore[misc]
        start, end = datetime.fromisoformat(p["start"]), datetime.fromisoformat(p["end"])
        recipients = self.index.resolve(p["area"], start, end, now=now)
        agency = self.workflow.registry.get(p["agency_id"])
        header = NotificationHeader(request_id, p["agency_id"], agency.name, p["case_number"], p["incident_type"],
                                    start, end, p["message"])
        report = self.dispatcher.dispatch(header, recipients, gate=self.gate, now=now)
        self.workflow.mark_dispatched(request_id, now)
        self.stats.dispatched += 1
        self.stats.recipients += report.recipients_notified
        return "dispatched"

    # ------------------------------------------------------------------------------------------- the loop

    def _process(self, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        s = self.settings
        for eid, fields in entries:
            if not fields:  # deleted meanwhile
                self.r.xack(s.requests_stream, s.group, eid)
                continue
            try:
                cmd = orjson.loads(fields[b"cmd"])
            except (KeyError, orjson.JSONDecodeError):
                cmd = {"kind": None}
            outcome = self.handle(cmd if isinstance(cmd, dict) else {"kind": None}, self.clock())
            self.r.xack(s.requests_stream, s.group, eid)
            self.stats.handled += 1
            self.stats.outcomes.append(outcome)
            log.info("%s: %s -> %s", self.name, _s(eid), outcome)

    def step(self) -> int:
        """Claim what dead workers left, then read new entries; returns how many entries were handled."""
        s = self.settings
        before = self.stats.handled
        got: Any = self.r.xautoclaim(s.requests_stream, s.group, self.name, min_idle_time=s.claim_idle_ms,
                                     start_id="0-0", count=s.read_count)
        claimed = got[1]  # [next start id, claimed entries, ids deleted meanwhile]
        if claimed:
            self.stats.claimed += len(claimed)
            self._process(claimed)
        fresh: Any = self.r.xreadgroup(s.group, self.name, {s.requests_stream: ">"}, count=s.read_count,
                                       block=s.block_ms)
        for _, entries in fresh or []:
            self._process(entries)
        return self.stats.handled - before

    def run(self, stop: Any) -> WorkerStats:
        """Serve until ``stop.is_set()`` (a ``threading.Event``; the CLI sets it on SIGTERM)."""
        while not stop.is_set():
            try:
                self.step()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("%s: Redis unreachable (%s); retrying", self.name, exc)
                time.sleep(0.5)
        return self.stats


def serve_process(name: str, index_dir: str, redis_url: str, agencies: str | None, auto_approve: bool,
                  settings: ServiceSettings, ready: Any = None) -> None:
    """One worker process: opens the memory-mapped index (shared with the other workers through the page
    cache), connects, and serves until SIGTERM or SIGINT, finishing the entry in hand first. SIGUSR1 prints every
    thread's stack to stderr (for an operator asking what a worker is doing)."""
    import faulthandler
    import signal
    import sys
    import threading

    from dispatcher.agencies import AgencyRegistry, generate_agencies
    from dispatcher.policy import Policy
    from dispatcher.queue import QueueSettings, RedisSink
    from dispatcher.store import RedisStore
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    index = CameraIndex.open(index_dir)
    if agencies is None:
        registry = AgencyRegistry(generate_agencies(400))
    elif agencies.endswith((".json", ".geojson")):
        registry = AgencyRegistry.load_geojson(agencies)
    else:
        registry = AgencyRegistry.load_parquet(agencies)
    qs = QueueSettings.from_url(redis_url)
    workflow = Workflow(RedisStore.from_url(qs.url or redis_url), registry, Policy(auto_approve=auto_approve))
    worker = Worker(name, redis.Redis.from_url(redis_url), index, workflow, Dispatcher(RedisSink(qs), qs), settings)
    if ready is not None:
        ready.set()
    stats = worker.run(stop)
    log.info("%s stopped: %d handled, %d dispatched, %d refused, %d reclaimed", name, stats.handled,
             stats.dispatched, stats.refused, stats.claimed)

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

from dispatcher.errors import DispatchError, InvalidTransition
from dispatcher.index import CameraIndex
from dispatcher.queue import Dispatcher, NotificationHeader
from dispatcher.requests import ValidRequest, VideoRequest
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
    #: Where each handled command's outcome is published (request id, outcome, owners notified, times), for
    #: submitters waiting on a result and for the load test; capped at about ``outcomes_maxlen`` entries.
    outcomes_stream: str = "geodispatch:{gd}:outcomes"
    outcomes_maxlen: int = 1_000_000
    #: Consumer threads in each worker process (``serve_process``).
    threads: int = 4


def submit_command(request: dict[str, Any], trace: Any = None) -> bytes:
    """The stream entry's ``cmd`` for a new request; ``trace`` (any JSON value) comes back in its outcome."""
    return orjson.dumps({"kind": "submit", "request": request, "trace": trace}, default=_json_default)


def dispatch_command(request_id: str, trace: Any = None) -> bytes:
    return orjson.dumps({"kind": "dispatch", "request_id": request_id, "trace": trace})


def submit(client: redis.Redis, request: dict[str, Any], settings: ServiceSettings | None = None,
           trace: Any = None) -> str:
    """The agency-facing side: queue a new request for the workers (returns the stream entry id)."""
    s = settings or ServiceSettings()
    return _s(client.xadd(s.requests_stream, {"cmd": submit_command(request, trace)}))


def request_dispatch(client: redis.Redis, request_id: str, settings: ServiceSettings | None = None,
                     trace: Any = None) -> str:
    """The reviewer's side: a request was approved; queue its dispatch."""
    s = settings or ServiceSettings()
    return _s(client.xadd(s.requests_stream, {"cmd": dispatch_command(request_id, trace)}))


def read_outcomes(client: redis.Redis, after: str = "0-0", count: int = 10_000, block_ms: int | None = None,
                  settings: ServiceSettings | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Outcomes published after entry id ``after``: ``(last id read, [outcome, ...])``. Each outcome has
    ``request_id``, ``outcome``, ``notified``, ``now_us`` (the time the request was judged at), ``done`` (Unix
    seconds when its last batch was appended), ``worker`` and the command's ``trace``."""
    s = settings or ServiceSettings()
    got: Any = client.xread({s.outcomes_stream: after}, count=count, block=block_ms)
    out = []
    for _, entries in got or []:
        for eid, fields in entries:
            after = _s(eid)
            out.append(orjson.loads(fields[b"o"]))
    return after, out


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
        self._notified = 0
        self._next_claim = 0.0
        try:
            self.r.xgroup_create(self.settings.requests_stream, self.settings.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---------------------------------------------------------------------------------------- one command

    def handle(self, cmd: dict[str, Any], now: datetime | None = None) -> str:
        """Run one command to its end; returns what happened. Raises only for failures worth retrying."""
        self._notified = 0
        return self._handle(cmd, now or self.clock())

    def _handle(self, cmd: dict[str, Any], now: datetime) -> str:
        kind = cmd.get("kind")
        if kind == "submit":
            req = cmd.get("request")
            rid = req.get("request_id") if isinstance(req, dict) else None
            existing = self.workflow.store.get_request(rid) if isinstance(rid, str) else None
            if existing is not None:  # a redelivery of a request we already recorded: continue from there
                return self._continue(str(rid), existing[0], now)
            try:
                state, valid = self.workflow.submit_valid(
                    VideoRequest.from_dict(req) if isinstance(req, dict) else req, now)
            except DispatchError as exc:  # refused: the audit log has it; a retry would refuse it again
                self.stats.refused += 1
                return f"refused: {type(exc).__name__}"
            return self._continue(valid.request_id, state, now, valid)
        if kind == "dispatch":
            rid = cmd.get("request_id")
            got = self.workflow.store.get_request(rid) if isinstance(rid, str) else None
            if got is None:
                self.stats.refused += 1
                return "refused: unknown request"
            return self._continue(str(rid), got[0], now)
        self.stats.refused += 1
        return f"refused: unknown command {kind!r}"

    def _continue(self, request_id: str, state: str, now: datetime, valid: ValidRequest | None = None) -> str:
        if state != "approved":
            return state  # submitted (awaiting review), dispatched, closed or rejected: nothing to do now
        if valid is not None:  # just validated here: its area is parsed already
            area, start, end = valid.area, valid.start, valid.end
            agency_id, case, incident, message = valid.agency_id, valid.case_number, valid.incident_type, valid.message
        else:
            _, p = self.workflow.store.get_request(request_id)  # type: ignore[misc]
            area, start, end = p["area"], datetime.fromisoformat(p["start"]), datetime.fromisoformat(p["end"])
            agency_id, case, incident, message = p["agency_id"], p["case_number"], p["incident_type"], p["message"]
        recipients = self.index.resolve(area, start, end, now=now)
        header = NotificationHeader(request_id, agency_id, self.workflow.registry.get(agency_id).name, case,
                                    incident, start, end, message)
        report = self.dispatcher.dispatch(header, recipients, gate=self.gate, now=now)
        try:
            self.workflow.mark_dispatched(request_id, now, expected="approved")
        except InvalidTransition:
            if self.workflow.state(request_id) != "dispatched":  # another worker finished it meanwhile: fine
                raise
        self.stats.dispatched += 1
        self.stats.recipients += report.recipients_notified
        self._notified = report.recipients_notified
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
                cmd = None
            cmd = cmd if isinstance(cmd, dict) else {"kind": None}
            now = self.clock()
            outcome = self.handle(cmd, now)
            req = cmd.get("request")
            rid = cmd.get("request_id") or (req.get("request_id") if isinstance(req, dict) else None)
            published = orjson.dumps({"request_id": rid if isinstance(rid, str) else None, "outcome": outcome,
                                      "notified": self._notified, "now_us": int(now.timestamp() * 1e6),
                                      "done": time.time(), "worker": self.name, "trace": cmd.get("trace")})
            pipe = self.r.pipeline(transaction=False)  # one round trip: publish the outcome, then acknowledge
            pipe.xadd(s.outcomes_stream, {"o": published}, maxlen=s.outcomes_maxlen, approximate=True)
            pipe.xack(s.requests_stream, s.group, eid)
            pipe.execute()
            self.stats.handled += 1
            self.stats.outcomes.append(outcome)
            log.info("%s: %s -> %s", self.name, _s(eid), outcome)

    def step(self) -> int:
        """Claim what dead workers left, then read new entries; returns how many entries were handled."""
        s = self.settings
        before = self.stats.handled
        if time.monotonic() >= self._next_claim:  # a quarter of the idle time between looks is plenty
            got: Any = self.r.xautoclaim(s.requests_stream, s.group, self.name, min_idle_time=s.claim_idle_ms,
                                         start_id="0-0", count=s.read_count)
            claimed = got[1]  # [next start id, claimed entries, ids deleted meanwhile]
            if claimed:
                self.stats.claimed += len(claimed)
                self._process(claimed)
            else:
                self._next_claim = time.monotonic() + s.claim_idle_ms / 4000
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


def serve_process(name: str, index_dir: str, redis_url: str, agencies: str | None, policy: dict[str, Any],
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
    rules = Policy.from_dict(policy)
    # Each thread is a consumer of its own, with its own connections: while one waits on a Redis round trip,
    # another resolves (the index kernels release the GIL) or encodes.
    workers = [Worker(name if settings.threads == 1 else f"{name}-t{k}", redis.Redis.from_url(redis_url), index,
                      Workflow(RedisStore.from_url(qs.url or redis_url), registry, rules),
                      Dispatcher(RedisSink(qs), qs), settings) for k in range(settings.threads)]
    threads = [threading.Thread(target=w.run, args=(stop,), name=w.name) for w in workers]
    for t in threads:
        t.start()
    if ready is not None:
        ready.set()
    for t in threads:
        t.join()
    for w in workers:
        log.info("%s stopped: %d handled, %d dispatched, %d refused, %d reclaimed", w.name, w.stats.handled,
                 w.stats.dispatched, w.stats.refused, w.stats.claimed)

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

from dispatcher.errors import DispatchError, InvalidTransition, QueueUnavailable
from dispatcher.index.camera_index import CameraIndex
from dispatcher.dispatch.queue import Dispatcher, NotificationHeader
from dispatcher.workflow.requests import ValidRequest, VideoRequest
from dispatcher.workflow.review import OwnerGate, PrefetchedLog, Workflow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSettings:
    requests_stream: str = "geodispatch:{gd}:requests"
    group: str = "workers"
    #: New entries read per call (handled together, each step one round trip for all), and how long a read
    #: blocks waiting for some (ms). Under light load a read returns one or two; under heavy load, up to this.
    #: Larger batches raise throughput and latency together: at 600 requests/s on 10M cameras, p99 was 142 ms
    #: with 8 and 1.0 s with 64.
    read_count: int = 16
    block_ms: int = 500
    #: A pending entry idle this long belonged to a worker that died: another worker takes it over.
    claim_idle_ms: int = 30_000
    #: Where each handled command's outcome is published (request id, outcome, owners notified, times), for
    #: submitters waiting on a result and for the load test; capped at about ``outcomes_maxlen`` entries.
    outcomes_stream: str = "geodispatch:{gd}:outcomes"
    outcomes_maxlen: int = 1_000_000
    #: Consumer threads in each worker process (``serve_process``).
    threads: int = 4
    #: An entry delivered more often than this without being acknowledged is set aside on the dead-letter stream.
    max_deliveries: int = 5
    dead_letter_stream: str = "geodispatch:{gd}:requests:dead"


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


def _rid(cmd: dict[str, Any]) -> str | None:
    """The request id a command names, if it names one."""
    req = cmd.get("request")
    rid = cmd.get("request_id") if cmd.get("kind") == "dispatch" else (req.get("request_id")
                                                                        if isinstance(req, dict) else None)
    return rid if isinstance(rid, str) else None


@dataclass
class WorkerStats:
    handled: int = 0
    refused: int = 0
    dispatched: int = 0
    claimed: int = 0
    recipients: int = 0
    dead_lettered: int = 0
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
        self._next_claim = 0.0
        try:
            self.r.xgroup_create(self.settings.requests_stream, self.settings.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---------------------------------------------------------------------------------------- commands

    def handle(self, cmd: dict[str, Any], now: datetime | None = None) -> str:
        """Run one command to its end; returns what happened. Raises only for failures worth retrying."""
        return self.handle_many([cmd], now or self.clock())[0][0]

    def handle_many(self, cmds: list[dict[str, Any]], now: datetime) -> list[tuple[str, int]]:
        """Run a batch of commands to their end, each step one round trip for the whole batch: look up the
        requests named and the agencies' recent counts; validate; record the new ones; resolve; dispatch (plans,
        gate, appends); mark them dispatched. Returns (outcome, owners notified) per command. Raises only for
        failures worth retrying (the entries then stay pending and are handled again, harmlessly)."""
        wf = self.workflow
        out: list[tuple[str, int] | None] = [None] * len(cmds)
        todo: list[tuple[int, str, VideoRequest | None]] = []   # (command, request id, new request or None)
        for k, cmd in enumerate(cmds):
            kind = cmd.get("kind")
            if kind == "submit":
                try:
                    vr = VideoRequest.from_dict(cmd.get("request"))
                except DispatchError:
                    out[k] = self._refuse(cmd.get("request"), now)
                    continue
                todo.append((k, vr.request_id, vr))
            elif kind == "dispatch" and isinstance(cmd.get("request_id"), str):
                todo.append((k, cmd["request_id"], None))
            else:
                self.stats.refused += 1
                out[k] = (f"refused: unknown command {kind!r}" if kind != "dispatch" else "refused: unknown request", 0)
        windows = [(vr.agency_id, vr.submitted_at - wf.policy.rate_period) for _, _, vr in todo if vr is not None]
        found, counts = wf.store.lookup([rid for _, rid, _ in todo], windows)
        log_ = PrefetchedLog(wf.store, {rid: got is not None for (_, rid, _), got in zip(todo, found, strict=True)},
                             dict(zip(windows, counts, strict=True)))
        first: dict[str, int] = {}     # request id -> the command of this batch that acts on it
        stored: dict[int, tuple[str, dict[str, Any]]] = {}
        fresh: list[tuple[int, ValidRequest]] = []
        for (k, rid, new), got in zip(todo, found, strict=True):
            if rid in first:          # the same request twice in one batch: the first one acts
                continue
            first[rid] = k
            if got is not None:       # recorded already: a redelivery, or a reviewer's dispatch command
                stored[k] = got
            elif new is None:
                self.stats.refused += 1
                out[k] = ("refused: unknown request", 0)
            else:
                try:
                    valid = wf.check(new, now, log=log_)
                except DispatchError as exc:  # refused: the audit log has it; a retry would refuse it again
                    self.stats.refused += 1
                    out[k] = (f"refused: {type(exc).__name__}", 0)
                    continue
                log_.accept(valid.request_id, valid.agency_id, valid.submitted_at)
                fresh.append((k, valid))
        jobs: list[tuple[int, str, Any, datetime, datetime, str, str, str, str]] = []
        for (k, valid), state in zip(fresh, wf.record_many([v for _, v in fresh], now), strict=True):
            if state is None:         # another worker recorded it a moment ago: continue from its state
                got = wf.store.get_request(valid.request_id)
                if got is not None:
                    stored[k] = got
                continue
            if state != "approved":
                out[k] = (state, 0)
                continue
            jobs.append((k, valid.request_id, valid.area, valid.start, valid.end, valid.agency_id,
                         valid.case_number, valid.incident_type, valid.message))
        for k, (state, p) in stored.items():
            if state != "approved":   # awaiting review, or dispatched, closed, rejected already: nothing to do
                out[k] = (state, 0)
                continue
            jobs.append((k, str(_rid(cmds[k])), p["area"], datetime.fromisoformat(p["start"]),
                         datetime.fromisoformat(p["end"]), p["agency_id"], p["case_number"], p["incident_type"],
                         p["message"]))
        work = []
        for _, rid, area, start, end, agency_id, case, incident, message in jobs:
            header = NotificationHeader(rid, agency_id, wf.registry.get(agency_id).name, case, incident, start, end,
                                        message)
            work.append((header, self.index.resolve(area, start, end, now=now)))
        reports = self.dispatcher.dispatch_many(work, gate=self.gate, now=now) if work else []
        marked = wf.mark_dispatched_many([rid for _, rid, *_ in jobs], now) if jobs else []
        for (k, rid, *_), report, ok in zip(jobs, reports, marked, strict=True):
            if not ok and wf.state(rid) != "dispatched":  # marked by another worker meanwhile: fine
                raise InvalidTransition(f"request {rid}: dispatched, but could not be marked so")
            self.stats.dispatched += 1
            self.stats.recipients += report.recipients_notified
            out[k] = ("dispatched", report.recipients_notified)
        for k, cmd in enumerate(cmds):  # a request named twice in the batch: the second learns the first's end
            if out[k] is None:
                done = out[first[str(_rid(cmd))]]
                out[k] = (done[0], 0) if done is not None else ("refused: unknown request", 0)
        return [o for o in out if o is not None]

    def _refuse(self, request: Any, now: datetime) -> tuple[str, int]:
        """A submission that is not even a well-formed request: refused through the workflow, which audits it."""
        self.stats.refused += 1
        try:
            self.workflow.check(request, now)
        except DispatchError as exc:
            return f"refused: {type(exc).__name__}", 0
        return "refused: InvalidRequest", 0

    # ------------------------------------------------------------------------------------------- the loop

    def _process(self, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        s = self.settings
        ids, cmds = [], []
        for eid, fields in entries:
            try:
                cmd = orjson.loads(fields[b"cmd"]) if fields else {"kind": None}
            except (KeyError, orjson.JSONDecodeError):
                cmd = None
            ids.append(eid)
            cmds.append(cmd if isinstance(cmd, dict) else {"kind": None})
        now = self.clock()
        results = self.handle_many(cmds, now)
        done = time.time()
        pipe = self.r.pipeline(transaction=False)  # one round trip: publish the outcomes, then acknowledge
        for eid, cmd, (outcome, notified) in zip(ids, cmds, results, strict=True):
            rid = _rid(cmd)
            pipe.xadd(s.outcomes_stream, {"o": orjson.dumps({
                "request_id": rid, "outcome": outcome, "notified": notified, "now_us": int(now.timestamp() * 1e6),
                "done": done, "worker": self.name, "trace": cmd.get("trace")})},
                maxlen=s.outcomes_maxlen, approximate=True)
            pipe.xack(s.requests_stream, s.group, eid)
            self.stats.outcomes.append(outcome)
            log.debug("%s: %s -> %s", self.name, _s(eid), outcome)
        pipe.execute()
        self.stats.handled += len(ids)

    def _set_aside_poison(self, claimed: list[Any]) -> list[Any]:
        """Entries delivered ``max_deliveries`` times without being acknowledged fail every time (a bug or an
        entry no worker can handle): they go to the dead-letter stream with their delivery count, are
        acknowledged and logged, so they stop taking turns forever. Returns the others."""
        s = self.settings
        if not claimed:
            return claimed
        ids = [eid for eid, _ in claimed]
        info: Any = self.r.xpending_range(s.requests_stream, s.group, min=ids[0], max=ids[-1], count=len(ids) * 4)
        times = {_s(p["message_id"]): int(p["times_delivered"]) for p in info}
        keep: list[Any] = []
        dead: list[Any] = []
        for eid, fields in claimed:
            (dead if times.get(_s(eid), 0) > s.max_deliveries else keep).append((eid, fields))
        if dead:
            pipe = self.r.pipeline(transaction=True)
            for eid, fields in dead:
                pipe.xadd(s.dead_letter_stream, {**(fields or {}), "id": eid, "deliveries": times[_s(eid)]})
                pipe.xack(s.requests_stream, s.group, eid)
            pipe.execute()
            self.stats.dead_lettered += len(dead)
            log.error("%s: %d entries failed %d deliveries; moved to %s", self.name, len(dead), s.max_deliveries,
                      s.dead_letter_stream)
        return keep

    def step(self) -> int:
        """Claim what dead workers left, then read new entries; returns how many entries were handled."""
        s = self.settings
        before = self.stats.handled
        if time.monotonic() >= self._next_claim:  # a quarter of the idle time between looks is plenty
            got: Any = self.r.xautoclaim(s.requests_stream, s.group, self.name, min_idle_time=s.claim_idle_ms,
                                         start_id="0-0", count=s.read_count)
            claimed = self._set_aside_poison(got[1])  # [next start id, claimed entries, ids deleted meanwhile]
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
            except (redis.ConnectionError, redis.TimeoutError, QueueUnavailable) as exc:
                # Down, restarting or still loading its data: the entries in hand stay pending and are taken
                # up again (by this consumer or another) once Redis answers; a worker never dies of it.
                log.warning("%s: Redis unreachable (%s); retrying", self.name, exc)
                time.sleep(0.5)
            except Exception:  # a bug or a bad entry: keep serving the others; the entry stays pending
                log.exception("%s: a batch failed; its entries stay pending and will be retried", self.name)
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

    from dispatcher.workflow.agencies import AgencyRegistry
    from dispatcher.workflow.policy import Policy
    from dispatcher.dispatch.queue import QueueSettings, RedisSink
    from dispatcher.workflow.store import RedisStore
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    index = CameraIndex.open(index_dir)
    registry = AgencyRegistry.load(agencies)
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

"""``geodispatch loadtest``: a national data set served by worker processes through Redis, under open-loop load.

One run builds the data set (synthetic cameras over US places, the partner agencies), saves the index where the
workers memory-map it, then plays each scenario against a fresh ``redis-server`` on loopback (AOF on, fsync every
second, Redis's default) with its own worker processes (:func:`dispatcher.service.supervise.serve_process`, the code
``geodispatch serve`` runs):

- ``steady``: typical requests (a random agency, 0.03-0.45 sq mi inside its jurisdiction, a 15 min-12 h window in
  the last 20 days) at ``rate`` per second for ``duration`` seconds;
- ``burst``: the steady load, plus one request from every agency at the same instant halfway through;
- ``fanout``: the steady load, plus one operator-approved 100 km² request in the densest jurisdiction;
- ``kill``: the steady load; a third of the way through one worker gets SIGKILL and a replacement starts (as a
  supervisor would) after one second; its pending entries are reclaimed with ``XAUTOCLAIM``;
- ``restart``: the steady load; a third of the way through Redis shuts down (flushing its AOF) and starts again;
- ``poison``: the steady load with malformed entries mixed in at ``poison_share`` of it (submission times in year
  1 or 9999, entries that are not JSON or not a command, a request that is not an object, an unknown command
  kind, a point or an unusable polygon for an area, ...): each is refused on its own, and no valid request is
  dead-lettered;
- ``clientkill``: the steady load; ``CLIENT KILL TYPE normal`` every ``clientkill_every_ms`` for ``clientkill_s``
  in the middle, so every connection of the workers and of the generator drops again and again;
- ``oom``: the steady load; Redis at ``maxmemory`` with ``noeviction`` for ``oom_s`` in the middle (every write
  refused with OOM), then freed;
- ``restart-empty``: the steady load; a third of the way through Redis stops and starts again without its data
  (its AOF moved aside). What it held is gone with it; what is submitted after must complete. At the end the data
  moved aside is served by a second ``redis-server``, so that what completed before the loss is checked too;
- ``retention-edge``: the steady load, plus ``edge_requests`` typical requests and one wide, operator-approved
  one, submitted together as the load starts (before any backlog, so that their first attempt comes before the
  boundary however the load goes), whose window ends exactly 30 days before a moment ``edge_gap_s`` after they
  are due: the footage of their 30-day cameras expires then. When the wide one's
  dispatch plan is recorded (seen through keyspace notifications), writes are paused, the worker holding it gets
  SIGKILL, and writes resume; its entries are retried after the boundary by the other worker and by a
  replacement started a second later. (Its workers send 50 owners a batch, a batch a round, so that the wide
  one's dispatch outlasts the watcher's reaction to its plan.)

The generator is open loop: request ``k`` is due at ``t0 + k / rate`` whatever happened before, and its latency
is measured from that due time (so a stalled system is charged for the wait, not excused by it) to the moment the
worker appended its last batch, which the worker publishes on the outcomes stream. At the end the notifications
stream is read back in full and every request's recipients are compared with the index's answer at the time the
request was judged: nothing lost, nothing duplicated, no notification for an owner it did not concern. A request
is judged once, at its first attempt to dispatch; a retry sends what that attempt recorded. The outcome carries
the time of the attempt that completed; in ``retention-edge``, where retries cross the boundary on purpose, the
time of the first attempt is bounded instead from outside: not before the request was sent, not after its plan
appeared in Redis.
"""

from __future__ import annotations

import collections
import gc
import itertools
import json
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hiredis
import numpy as np
import orjson
import psutil
import redis
import shapely

from dispatcher import synthetic
from dispatcher.connections import held_connection
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.wire import decode_batch
from dispatcher.errors import DispatchError, QueueUnavailable
from dispatcher.index.camera_index import CameraIndex
from dispatcher.keys import Keys
from dispatcher.service import commands
from dispatcher.service.client import read_outcomes
from dispatcher.service.metrics import BATCH_BUCKETS, collect
from dispatcher.service.servers import RedisServer
from dispatcher.service.supervise import serve_process
from dispatcher.service.worker import ServiceSettings
from dispatcher.synthetic.agencies import generate_agencies
from dispatcher.synthetic.requests import centre_and_radius_km, typical_requests
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.pipeline import Dispatch, Submit
from dispatcher.workflow.policy import INCIDENT_TYPES, Policy
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import RedisStore

SCENARIOS = ("steady", "burst", "fanout", "kill", "restart", "poison", "clientkill", "oom", "restart-empty",
             "retention-edge")
Progress = Callable[[str], None]
KEYS = Keys()
#: The retention whose cameras' footage expires at the boundary in ``retention-edge`` (the most common one).
EDGE_RETENTION = timedelta(days=30)


class InvalidLoadSettings(DispatchError, ValueError):
    """Load-test settings that cannot make a run: an unknown scenario, a fault window longer than the load."""


class LoadTestFailed(DispatchError, RuntimeError):
    """The load test itself could not go on: a worker that did not start, a Redis that never came back."""


@dataclass(frozen=True)
class LoadSettings:
    cameras: int = 10_000_000
    agencies: int = 400
    workers: int = 2
    rate: float = 2000.0          # requests per second, open loop
    duration: float = 60.0        # seconds of load per scenario
    scenarios: tuple[str, ...] = SCENARIOS
    seed: int = 0
    claim_idle_ms: int = 2_000    # how soon a dead worker's entries are taken over
    read_count: int = 16          # entries a worker thread reads and handles together
    threads: int = 2              # consumer threads per worker process (serve's default)
    standby: bool = True          # the second thread reads only under a backlog (serve's default)
    fanout_km2: float = 100.0
    drain_timeout: float = 120.0  # after the last submission, how long to wait for the last outcome
    poison_share: float = 0.05    # poison entries per valid request, in ``poison``
    clientkill_s: float = 8.0     # length of the CLIENT KILL storm, in the middle of ``clientkill``
    clientkill_every_ms: float = 10.0
    oom_s: float = 15.0           # how long Redis refuses writes, in the middle of ``oom``
    edge_requests: int = 32       # typical requests at the retention boundary, in ``retention-edge``
    edge_gap_s: float = 1.5       # from their due time to the expiry of their 30-day cameras' footage

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scenarios) - set(SCENARIOS))
        if unknown:
            raise InvalidLoadSettings(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
        if not (self.rate > 0 and self.duration > 0 and self.workers >= 1 and self.cameras > 0):
            raise InvalidLoadSettings("rate, duration, workers and cameras must be positive")
        if not 0 < self.poison_share <= 1:
            raise InvalidLoadSettings(f"poison_share must be in (0, 1], got {self.poison_share}")
        windows = {"clientkill": ("clientkill_s", self.clientkill_s), "oom": ("oom_s", self.oom_s)}
        for scenario, (name, seconds) in windows.items():
            if scenario in self.scenarios and not 0 < seconds < self.duration:
                raise InvalidLoadSettings(f"{name} is {seconds:g} s: it must be positive and shorter than the "
                                          f"{self.duration:g} s of load")
        if self.clientkill_every_ms <= 0 or self.edge_requests < 1:
            raise InvalidLoadSettings("clientkill_every_ms and edge_requests must be positive")
        if "retention-edge" in self.scenarios and not 0 < self.edge_gap_s < self.claim_idle_ms / 1000:
            raise InvalidLoadSettings(f"edge_gap_s is {self.edge_gap_s:g} s: it must be positive and shorter than "
                                      f"claim_idle_ms ({self.claim_idle_ms} ms), so that the retries of a killed "
                                      "worker's requests come after the boundary")


#: The policy the load test's workers apply: the published one, with the per-agency rate limit and the per-owner
#: cap lifted (the test sends each agency hundreds of requests a minute, and every recipient must be notified for
#: the loss check to be exact), and auto-approval on (no reviewer in the loop).
LOAD_POLICY: dict[str, Any] = {"auto_approve": True, "rate_limit": 1_000_000_000, "owner_cap": 1_000_000_000}


@dataclass
class World:
    work: Path
    index: CameraIndex
    agencies: list[Agency]
    index_dir: Path
    agencies_path: Path
    build_s: float
    index_bytes: int


def serve_inputs(work: Path, cameras: int, seed: int, now: datetime, n_agencies: int = 50
                 ) -> tuple[synthetic.SyntheticData, list[Agency]]:
    """What ``geodispatch serve`` is started on in a benchmark, written to ``work``: the index of ``cameras``
    synthetic cameras (``idx``), ``n_agencies`` agencies (``agencies.parquet``) and :data:`LOAD_POLICY`
    (``policy.json``); returns the data and the agencies."""
    data = synthetic.generate(cameras, seed=seed, now=now, event_days=0)
    CameraIndex.build(data.cameras, data.owners).save(work / "idx")
    agencies = generate_agencies(n_agencies, seed=seed)
    AgencyRegistry(agencies).save_parquet(work / "agencies.parquet")
    (work / "policy.json").write_text(json.dumps(LOAD_POLICY))
    return data, agencies


def build_world(s: LoadSettings, work: Path, progress: Progress) -> World:
    work.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    progress(f"generating {s.cameras:,} cameras")
    data = synthetic.generate(s.cameras, seed=s.seed, now=now, event_days=0)
    progress("building the index")
    t = time.perf_counter()
    built = CameraIndex.build(data.cameras, data.owners)
    build_s = time.perf_counter() - t
    del data
    built.save(work / "index")
    del built
    agencies = generate_agencies(s.agencies, seed=s.seed)
    AgencyRegistry(agencies).save_parquet(work / "agencies.parquet")
    index = CameraIndex.open(work / "index")
    return World(work, index, agencies, work / "index", work / "agencies.parquet", build_s,
                 int(sum(index.nbytes().values())))


# ---------------------------------------------------------------------------------------------------- requests

def _wide_request(world: World, s: LoadSettings, now: datetime, request_id: str = "fanout-wide",
                  start: datetime | None = None, end: datetime | None = None) -> dict[str, Any]:
    """A ``fanout_km2`` polygon in the jurisdiction with the most cameras near its centre, for an operator to
    approve (agencies may not ask for so wide an area); by default a 6-hour window two days ago."""
    geo = [centre_and_radius_km(a) for a in world.agencies]
    big = max(range(len(geo)), key=lambda k: geo[k][2])
    lat, lng, _ = geo[big]
    area = synthetic.sample_areas_at([lat], [lng], [s.fanout_km2], seed=s.seed, concave=False)[0]
    start = start or now - timedelta(days=2)
    end = end or start + timedelta(hours=6)
    return {"request_id": request_id, "agency_id": world.agencies[big].agency_id, "case_number": f"{now.year}-FAN1",
            "incident_type": sorted(INCIDENT_TYPES)[0], "investigator_contact": "detective@agency.example",
            "message": "Operator-approved wide-area request.", "area": area, "start": start.isoformat(),
            "end": end.isoformat(), "submitted_at": now.isoformat()}


def _edge_requests(world: World, s: LoadSettings, boundary: float, now: datetime) -> list[dict[str, Any]]:
    """Requests whose one-hour window ends exactly :data:`EDGE_RETENTION` before ``boundary`` (Unix seconds), so
    that the footage of their 30-day cameras is retained until then, not after: ``edge_requests`` typical ones,
    then one wide one (``edge-wide``, for an operator to approve)."""
    end = datetime.fromtimestamp(boundary, tz=timezone.utc) - EDGE_RETENTION
    reqs = typical_requests(world.agencies, s.edge_requests, s.seed + 77, now, "edge")
    for r in reqs:
        r["start"], r["end"] = (end - timedelta(hours=1)).isoformat(), end.isoformat()
    return reqs + [_wide_request(world, s, now, "edge-wide", end - timedelta(hours=1), end)]


def _approve(url: str, world: World, r: dict[str, Any], now: datetime) -> None:
    """Submit ``r`` and approve it as an operator would (it is wider than an agency may ask for)."""
    wf = Workflow(RedisStore.from_url(url), AgencyRegistry(world.agencies),
                  Policy.from_dict({**LOAD_POLICY, "auto_approve": False, "max_area_sq_mi": 200.0}))
    wf.submit(r, now, actor="operator:loadtest")
    wf.approve(r["request_id"], "operator", now)


def _poison(base: dict[str, Any], other_agency: str, j: int) -> tuple[dict[bytes, bytes], str, str | None]:
    """Poison entry ``j`` (the kinds in turn): its stream fields, its kind, and its trace (None when the entry
    cannot carry one: it is no command at all)."""
    rid, trace = f"poison-{j}", f"poison-{j}"
    b = {**base, "request_id": rid}
    x0, y0, x1, y1 = shapely.geometry.shape(base["area"]).bounds
    requests: list[tuple[str, Any]] = [
        ("submitted in year 1", {**b, "submitted_at": "0001-01-01T00:00:00Z"}),
        ("submitted in year 9999", {**b, "submitted_at": "9999-12-31T23:59:00-05:00"}),
        ("a window from year 9999 to year 1", {**b, "start": "9999-12-31T23:59:00-05:00",
                                               "end": "0001-01-01T00:00:00Z"}),
        ("a point for an area", {**b, "area": {"type": "Point", "coordinates": [x0, y0]}}),
        ("a polygon at 1e308", {**b, "area": {"type": "Polygon", "coordinates": [[[1e308, 1e308]] * 5]}}),
        ("a self-crossing polygon", {**b, "area": {"type": "Polygon", "coordinates": [
            [[x0, y0], [x1, y1], [x1, y0], [x0, y1], [x0, y0]]]}}),
        ("nested empty lists for an area", {**b, "area": [[[[[[[[[[[]]]]]]]]]]]}),
        ("an agency id that is a number", {**b, "agency_id": 12}),
        ("an area outside the agency's jurisdiction", {**b, "agency_id": other_agency}),
        ("a message of 20,000 characters", {**b, "message": "x" * 20_000}),
        ("a request id that is a number", {**b, "request_id": 5}),
        ("a request id and nothing else", {"request_id": rid}),
        ("a request that is not an object", "not an object"),
    ]
    raw: list[tuple[str, Any, bool]] = [
        ("an unknown command kind", {"kind": "explode", "trace": trace}, True),
        ("a dispatch of an unknown request", {"kind": "dispatch", "request_id": f"{rid}-x", "trace": trace}, True),
        ("a dispatch with a numeric request id", {"kind": "dispatch", "request_id": 7, "trace": trace}, True),
        ("not JSON", b"{not json", False),
        ("not UTF-8", b"\xff\xfe\x00", False),
        ("a JSON array", b"[1, 2, 3]", False),
        ("no command field", None, False),
    ]
    k = j % (len(requests) + len(raw))
    if k < len(requests):
        kind, req = requests[k]
        return {commands.FIELD: orjson.dumps({"kind": "submit", "request": req, "trace": trace})}, kind, trace
    kind, cmd, traced = raw[k - len(requests)]
    if cmd is None:
        return {b"note": b"no command here"}, kind, None
    return {commands.FIELD: cmd if isinstance(cmd, bytes) else orjson.dumps(cmd)}, kind, trace if traced else None


# ---------------------------------------------------------------------------------------------------- results

@dataclass
class WorkerFigures:
    name: str
    cpu_pct: float       # of one core, over the scenario
    rss_max_mb: float    # resident, index pages shared with the other workers included
    uss_mb: float        # unique to the process at the end
    killed: bool = False
    cpu_s: float = 0.0   # CPU seconds (user + system) from ready to the last sample


@dataclass
class ScenarioResult:
    name: str
    rate: float
    duration_s: float
    submitted: int = 0
    completed: int = 0
    refused: int = 0
    missing: int = 0                 # submitted but no outcome before the drain timeout
    throughput: float = 0.0          # completed requests per second of load
    latency_ms: dict[str, float] = field(default_factory=dict)
    notifications: int = 0
    notifications_per_s: float = 0.0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0              # a notification for an owner the request did not concern
    wrong_cameras: int = 0           # a notification naming cameras other than the owner's matching ones
    requests_backlog_max: int = 0
    redis_cpu_pct: float = 0.0       # of one core, redis-server (and its rewrites) over the scenario
    #: CPU per request completed (ms): every worker's (killed ones up to their last sample) and redis-server's
    #: (its AOF rewrites' children included once they ended; None after a restart: another process), over the
    #: scenario, idle polling and the drain included. Less
    #: disturbed by other jobs on the machine than throughput or latency.
    worker_cpu_ms_per_request: float | None = None
    redis_cpu_ms_per_request: float | None = None
    loadgen_cpu_pct: float = 0.0     # of one core, this process: generator, collector, monitor
    machine_load: float = 0.0        # the 1-minute load average, mean over the scenario (other jobs included)
    handled_twice: int = 0           # commands whose outcome came more than once (taken over, or sent twice)
    workers: list[WorkerFigures] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    special: dict[str, Any] = field(default_factory=dict)  # the scenario's own figures
    #: The scenario's own goals: name -> {"value", "goal", "met"}.
    goals: dict[str, dict[str, Any]] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)
    #: The workers' batches, from their reports (:mod:`dispatcher.service.metrics`) read once they stopped:
    #: how many, the commands in them, the mean wall time and the histogram bound under which half and 99% fell.
    #: What a request's latency is made of: a batch's time, and the wait for a thread to take it.
    batches: dict[str, float] = field(default_factory=dict)
    #: Where the measured latency starts: how late the generator sent each entry after its due time, and how long
    #: Redis took to take it (ms, p50/p99/max); both are counted in ``latency_ms``, which runs from the due time.
    generator_late_ms: dict[str, float] = field(default_factory=dict)
    generator_xadd_ms: dict[str, float] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.wrong_cameras or self.missing)

    def goal(self, name: str, value: float | None, goal: str, met: bool) -> None:
        self.goals[name] = {"value": value, "goal": goal, "met": bool(met)}


def _batch_figures(client: redis.Redis) -> dict[str, float]:
    """The batches every worker of the scenario reported (each one's last report, as it stopped); empty when
    Redis does not answer or no worker reported."""
    try:
        reports = collect(client, KEYS, QueueSettings(url="redis://", retries=1)).workers.values()
    except (redis.RedisError, QueueUnavailable):
        return {}
    n = sum(r.get("batches", 0) for r in reports)
    if not n:
        return {}
    counts = np.sum([r["batch_buckets"] for r in reports], axis=0)
    bounds = (*BATCH_BUCKETS, float("inf"))

    def under(q: float) -> float:  # the bucket bound under which a share q of the batches fell (ms)
        return 1000 * bounds[int(np.searchsorted(np.cumsum(counts), q * n))]
    handled = sum(r.get("handled", 0) for r in reports)
    return {"count": n, "commands": handled, "commands_per_batch": handled / n,
            "mean_ms": 1000 * sum(r.get("batch_seconds", 0.0) for r in reports) / n,
            "p50_ms_under": under(0.5), "p99_ms_under": under(0.99)}


def _with_children(p: psutil.Process) -> float:
    """A process's CPU seconds, user and system, with those of its children that ended: redis-server's automatic
    AOF rewrites are forks whose child takes a core for a second or more, ~12% of its CPU at 1,000 req/s."""
    t = p.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def _pct(a: np.ndarray | list[float]) -> dict[str, float]:
    a = np.asarray(a, dtype=float)
    if a.size == 0:
        return {}
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


# ---------------------------------------------------------------------------------------------------- running

class _Workers:
    """The worker processes of one scenario: started, killed, replaced, stopped; their CPU and memory sampled."""

    def __init__(self, world: World, url: str, n: int, settings: ServiceSettings) -> None:
        self.world, self.url, self.settings = world, url, settings
        self.ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.figures: dict[str, WorkerFigures] = {}
        self.cpu0: dict[str, float] = {}
        self.t0: dict[str, float] = {}
        self.start(n)

    def start(self, n: int = 1) -> None:
        """Start ``n`` workers together and wait until every one serves."""
        new = []
        for _ in range(n):
            name = f"worker-{len(self.procs)}"
            ready = self.ctx.Event()
            p = self.ctx.Process(target=serve_process, name=name, daemon=True,
                                 args=(name, str(self.world.index_dir), self.url, str(self.world.agencies_path),
                                       LOAD_POLICY, self.settings, ready))
            p.start()
            self.figures[name] = WorkerFigures(name, 0.0, 0.0, 0.0)
            self.procs.append(p)
            new.append((p, ready))
        deadline = time.monotonic() + 300
        for p, ready in new:
            while not ready.wait(timeout=0.1):
                if p.exitcode is not None or time.monotonic() > deadline:
                    p.kill()
                    raise LoadTestFailed(f"{p.name} did not start (exit code {p.exitcode})")
            self.cpu0[p.name] = sum(psutil.Process(p.pid).cpu_times()[:2])
            self.t0[p.name] = time.monotonic()

    def sample(self) -> None:
        for p in list(self.procs):
            f = self.figures[p.name]
            if f.killed or p.exitcode is not None or p.name not in self.cpu0:
                continue
            try:
                pp = psutil.Process(p.pid)
                f.rss_max_mb = max(f.rss_max_mb, pp.memory_info().rss / 2**20)
                f.cpu_s = sum(pp.cpu_times()[:2]) - self.cpu0[p.name]
                f.cpu_pct = 100 * f.cpu_s / (time.monotonic() - self.t0[p.name])
            except psutil.Error:
                pass

    def index_of(self, name: str) -> int:
        return next(k for k, p in enumerate(self.procs) if p.name == name)

    def kill(self, k: int) -> str:
        p = self.procs[k]
        os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=30)
        self.figures[p.name].killed = True
        return str(p.name)

    def stop(self) -> list[WorkerFigures]:
        self.sample()
        for p in self.procs:
            if p.exitcode is None:
                try:
                    self.figures[p.name].uss_mb = psutil.Process(p.pid).memory_full_info().uss / 2**20
                except psutil.Error:
                    pass
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            p.join(timeout=60)
            if p.exitcode is None:
                p.kill()
        return list(self.figures.values())


#: What a careful client waits out: Redis down, restarting, loading, or full.
_REDIS_TROUBLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError)


def _retrying(fn: Callable[[], Any], stop: threading.Event | None = None, timeout: float = 300.0) -> Any:
    """Run ``fn`` until Redis takes it (it is down, restarting or full in some scenarios); None if ``stop`` was
    set meanwhile; :class:`LoadTestFailed` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except _REDIS_TROUBLE as exc:
            if stop is not None and stop.is_set():
                return None
            if time.monotonic() > deadline:
                raise LoadTestFailed(f"Redis still refusing after {timeout:.0f} s: {exc}") from exc
            time.sleep(0.05)


@dataclass
class _Schedule:
    """Every entry a scenario puts on the requests stream, in due order."""

    fields: list[dict[bytes, bytes]]
    due: np.ndarray                  # seconds after t0
    req: np.ndarray                  # the valid request it carries (index into the requests), -1 for poison
    sent_at: np.ndarray = field(init=False)      # Unix time its first send began
    accepted_at: np.ndarray = field(init=False)  # Unix time Redis acknowledged it
    ids: list[str | None] = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.fields)
        self.sent_at = np.full(n, np.nan)
        self.accepted_at = np.full(n, np.nan)
        self.ids = [None] * n


def _generate(client: redis.Redis, sched: _Schedule, t0: float, stream: str) -> None:
    """Open loop: every entry goes out at its due time (or as soon after as Redis takes it), never waiting for an
    earlier one's outcome. A pipeline cut by a fault is sent again: a command seen twice is a redelivery the
    workers recognise, and the collector keeps the first outcome."""
    i, n = 0, len(sched.fields)
    key = stream.encode()
    while i < n:
        now = time.time() - t0
        j = min(int(np.searchsorted(sched.due, now, side="right")), i + 1000)
        if j > i:
            def send(i: int = i, j: int = j) -> list[Any]:
                # The entries encoded by hiredis and written on one held connection, their ids read back, not
                # through a redis-py pipeline for the one or two entries due at a time: this process's CPU, taken
                # from the service it measures on the same cores, was 22-24% of a core at 1,000 requests/s with
                # it, 18-20% so. An error reply (Redis full) or a dropped connection leaves replies unread: the
                # connection is dropped and the group sent again.
                conn = held_connection(client.connection_pool)
                try:
                    conn.send_packed_command([b"".join(
                        hiredis.pack_command((b"XADD", key, b"*", *itertools.chain.from_iterable(f.items())))
                        for f in sched.fields[i:j])])
                    return [conn.read_response() for _ in range(j - i)]
                except BaseException:
                    conn.disconnect()
                    raise
            sched.sent_at[i:j] = time.time()
            ids = _retrying(send)
            sched.accepted_at[i:j] = time.time()
            sched.ids[i:j] = [_s(x) for x in ids]
            i = j
        else:
            time.sleep(min(0.001, max(0.0, sched.due[i] - now)))


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


@dataclass
class _Run:
    """What the threads of one scenario share while it runs."""

    name: str
    s: LoadSettings
    world: World
    srv: RedisServer
    workers: _Workers
    res: ScenarioResult
    reqs: list[dict[str, Any]]
    sched: _Schedule
    t0: float
    specials: list[int]
    boundary: float                                                   # retention-edge: Unix seconds
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    outcomes: dict[int, dict[str, Any]] = field(default_factory=dict)  # a valid request's first outcome
    poison_outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    untraced: list[dict[str, Any]] = field(default_factory=list)      # outcomes of entries with no trace
    _probe: redis.Redis | None = None
    series: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    marks: dict[str, float] = field(default_factory=dict)             # Unix times of the scenario's events
    plan_seen: dict[str, float] = field(default_factory=dict)         # request -> when its plan appeared
    killed: threading.Event = field(default_factory=threading.Event)

    def since(self, t: float) -> float:
        return t - self.t0

    def guarded(self, fn: Callable[..., None], *args: Any) -> None:
        """Run one of the scenario's threads; an error ends the scenario (raised by the main thread)."""
        try:
            fn(*args)
        except Exception as exc:
            self.errors.append(exc)
            self.stop.set()

    # ----------------------------------------------------------------------------------- the collector

    def collect(self) -> None:
        after = "0-0"
        c = redis.Redis.from_url(self.srv.url, socket_timeout=5)
        deadline = time.monotonic() + self.s.duration + self.s.drain_timeout + 600
        while time.monotonic() < deadline:
            got = _retrying(lambda a=after: read_outcomes(c, a, block_ms=100, operators=True), self.stop)  # type: ignore[misc]
            if got is None:
                return
            after, batch = got
            for o in batch:
                tr = o.get("trace")
                if isinstance(tr, int) and 0 <= tr < len(self.reqs):
                    self.res.handled_twice += tr in self.outcomes
                    self.outcomes.setdefault(tr, o)  # a redelivered command's second outcome: ignored
                elif isinstance(tr, str):
                    self.poison_outcomes.setdefault(tr, o)
                else:
                    self.untraced.append(o)
            if self.stop.is_set() and not batch:
                return

    def monitor(self) -> None:
        c = redis.Redis.from_url(self.srv.url, socket_timeout=1)
        while not self.stop.is_set():
            self.workers.sample()
            lag, pending = _backlog(c)
            self.series["t"].append(time.time() - self.t0)
            self.series["requests_backlog"].append(lag + pending if lag >= 0 else -1)
            self.series["requests_lag"].append(lag)
            self.series["requests_pending"].append(pending)
            self.series["completed"].append(len(self.outcomes))
            self.series["load_average"].append(os.getloadavg()[0])
            self.stop.wait(0.25)

    def probe(self) -> redis.Redis:
        """The connection the drain loop polls on, made once: a new client every 50 ms costs the load generator
        more CPU than the polling itself (redis-py looks its own version up for each new connection)."""
        if self._probe is None:
            self._probe = redis.Redis.from_url(self.srv.url, socket_timeout=5)
        return self._probe

    def outstanding(self) -> int:
        """Entries still owed an outcome (a dead-lettered poison entry owes none), or still on the stream
        unacknowledged (a request sent twice through a fault: the copy must be handled before the check)."""
        lag, pending = _backlog(self.probe())
        if lag != 0 or pending != 0:
            return max(1, lag + pending)
        n = len(self.reqs) - len(self.outcomes)
        if self.name == "restart-empty":  # what Redis held when it lost its data owes nothing
            up = self.marks.get("up", np.inf)
            n = sum(1 for e in np.flatnonzero((self.sched.req >= 0) & (self.sched.accepted_at >= up))
                    if int(self.sched.req[e]) not in self.outcomes)
        poison = int((self.sched.req < 0).sum())
        if poison:
            c = self.probe()
            dead = _retrying(lambda: int(c.xlen(KEYS.dead_letters)), self.stop) or 0
            n += max(0, poison - len(self.poison_outcomes) - len(self.untraced) - dead)
        return n

    # -------------------------------------------------------------------------------- the disruptions

    def wait_until(self, at: float) -> None:
        time.sleep(max(0.0, self.t0 + at - time.time()))

    def act(self) -> None:
        """The scenario's disruption, at its time."""
        s, res, d = self.s, self.res, self.s.duration
        if self.name == "kill":
            self.wait_until(d / 3)
            self.workers.kill(0)
            res.events.append(f"SIGKILL to worker-0 at {time.time() - self.t0:.2f} s")
            time.sleep(1.0)
            self.workers.start()
            res.events.append(f"replacement worker-{len(self.workers.procs) - 1} ready at "
                              f"{time.time() - self.t0:.2f} s")
        elif self.name == "restart":
            self.wait_until(d / 3)
            t_down = time.time() - self.t0
            self.srv.restart()
            res.events.append(f"Redis shut down at {t_down:.2f} s, serving again at {time.time() - self.t0:.2f} s "
                              "(AOF, fsync every second; graceful shutdown)")
        elif self.name == "restart-empty":
            self.wait_until(d / 3)
            self.marks["down"] = time.time()
            self.srv.stop()
            aside = self.srv.workdir.parent / f"{self.srv.workdir.name}-lost"
            shutil.rmtree(aside, ignore_errors=True)
            aside.mkdir(parents=True)
            for f in self.srv.workdir.iterdir():
                if f.name.startswith(("appendonly", "dump")):
                    shutil.move(str(f), aside / f.name)
            self.marks["up"] = time.time()
            self.srv.start()
            self.marks["back"] = time.time()
            res.events.append(f"Redis stopped at {self.since(self.marks['down']):.2f} s, its AOF moved aside, "
                              f"serving again, empty, at {self.since(self.marks['back']):.2f} s")
        elif self.name == "clientkill":
            self._storm((d - s.clientkill_s) / 2, s.clientkill_s)
        elif self.name == "oom":
            self._full((d - s.oom_s) / 2, s.oom_s)
        elif self.name == "retention-edge":
            if not self.killed.wait(timeout=max(0.0, self.t0 + d - time.time())):
                res.events.append("no edge request was still pending when its plan appeared: no worker killed")
                return
            time.sleep(1.0)
            self.workers.start()
            res.events.append(f"replacement worker-{len(self.workers.procs) - 1} ready at "
                              f"{time.time() - self.t0:.2f} s")

    def _storm(self, at: float, seconds: float) -> None:
        """``CLIENT KILL TYPE normal`` (every connection but this one) every ``clientkill_every_ms``."""
        c = redis.Redis.from_url(self.srv.url, socket_timeout=5)
        self.wait_until(at)
        self.marks["storm"] = time.time()
        end = time.time() + seconds
        kills = storms = 0
        while time.time() < end and not self.stop.is_set():
            got = _retrying(lambda: c.client_kill_filter(_type="normal", skipme=True), self.stop)
            kills += int(got or 0)
            storms += 1
            time.sleep(self.s.clientkill_every_ms / 1000)
        self.marks["calm"] = time.time()
        self.res.special.update(kill_commands=storms, connections_killed=kills)
        self.res.events.append(f"CLIENT KILL TYPE normal every {self.s.clientkill_every_ms:g} ms from "
                               f"{self.since(self.marks['storm']):.2f} s to {self.since(self.marks['calm']):.2f} s: "
                               f"{storms} commands, {kills} connections killed")

    def _full(self, at: float, seconds: float) -> None:
        """Redis at ``maxmemory`` with ``noeviction`` for ``seconds``: every write refused with OOM."""
        c = redis.Redis.from_url(self.srv.url, socket_timeout=5)
        self.wait_until(at)
        before = _oom_refusals(c)
        c.config_set("maxmemory-policy", "noeviction")
        c.config_set("maxmemory", 1)
        self.marks["full"] = time.time()
        self.stop.wait(seconds)
        refused = _oom_refusals(c) - before
        c.config_set("maxmemory", 0)
        self.marks["freed"] = time.time()
        self.res.special["oom_refusals"] = refused
        self.res.events.append(f"maxmemory 1 byte (noeviction) from {self.since(self.marks['full']):.2f} s, freed "
                               f"at {self.since(self.marks['freed']):.2f} s: {refused:,} commands refused with OOM")

    def watch_plans(self, ps: Any, edge: dict[str, int]) -> None:
        """Record when each request's dispatch plan appears (keyspace notifications). When the wide edge
        request's plan appears (its dispatch takes a while: the gate's check, then its batches), pause writes,
        SIGKILL the worker holding it (or, if it is done already, the one holding the most edge requests with a
        recorded plan and no outcome, tried again at the next edge plan while none is found), and resume."""
        prefix = f"__keyspace@0__:{KEYS.plan('')}"
        pauser = redis.Redis.from_url(self.srv.url, socket_timeout=5)
        deadline = time.monotonic() + self.s.duration + self.s.drain_timeout + 600
        tried = 0.0
        while not self.stop.is_set() and time.monotonic() < deadline:
            m = ps.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if m is None or m.get("data") != b"hset":
                continue
            t = time.time()
            rid = _s(m["channel"])[len(prefix):]
            self.plan_seen.setdefault(rid, t)
            if rid in edge and "edge-wide" in self.plan_seen and not self.killed.is_set() and t - tried > 0.005:
                tried = t
                self._kill_busiest(pauser, edge)

    def _kill_busiest(self, pauser: redis.Redis, edge: dict[str, int]) -> None:
        rid_of = {self.sched.ids[e]: rid for rid, e in edge.items() if self.sched.ids[e] is not None}
        paused = time.time()
        pauser.client_pause(2000, all=False)  # writes wait (the holders' appends too); reads go on
        try:
            pending: Any = pauser.xpending_range(KEYS.requests, "workers", min="-", max="+", count=100_000)
            held = [(rid_of[_s(p["message_id"])], _s(p["consumer"])) for p in pending
                    if _s(p["message_id"]) in rid_of]
            pipe = pauser.pipeline(transaction=False)
            for rid, _ in held:
                pipe.exists(KEYS.plan(rid))
            planned = pipe.execute() if held else []
            by_worker = collections.Counter(consumer.rsplit("-t", 1)[0]
                                            for (_, consumer), yes in zip(held, planned, strict=True) if yes)
            wide = [consumer.rsplit("-t", 1)[0] for (rid, consumer), yes in zip(held, planned, strict=True)
                    if yes and rid == "edge-wide"]
            if not by_worker:
                return  # none in flight with a plan: try at the next plan
            name, holding = (wide[0], by_worker[wide[0]]) if wide else by_worker.most_common(1)[0]
            self.workers.kill(self.workers.index_of(name))
        finally:
            pauser.client_unpause()
        self.marks["kill"] = time.time()
        self.res.special.update(killed=name, killed_holding=holding, killed_holding_wide=bool(wide),
                                writes_paused_ms=(self.marks["kill"] - paused) * 1e3)
        self.res.events.append(f"writes paused, SIGKILL to {name} holding {holding} edge request(s) with a recorded "
                               f"plan and no outcome{' (the wide one among them)' if wide else ''}, at "
                               f"{self.since(self.marks['kill']):.2f} s; writes resumed after "
                               f"{(self.marks['kill'] - paused) * 1e3:.0f} ms")
        self.killed.set()


def _backlog(c: redis.Redis) -> tuple[int, int]:
    """The requests stream's (lag, pending) over the workers' group: entries not yet delivered, and delivered but
    not acknowledged; (-1, -1) while Redis cannot tell."""
    try:
        groups: Any = c.xinfo_groups(KEYS.requests)
        # lag: not yet delivered (None when Redis cannot tell, e.g. just after a restart)
        last = c.xinfo_stream(KEYS.requests)["last-generated-id"]
        # after a restart Redis 7.0 can report a lag for a group that has read everything
        lag = sum(0 if g["last-delivered-id"] == last else int(g.get("lag") or 0) for g in groups)
        return lag, sum(int(g["pending"]) for g in groups)
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return -1, -1


def _oom_refusals(c: redis.Redis) -> int:
    stats: Any = c.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


@dataclass
class _Plan:
    """A scenario's load before it is put in due order: the valid requests (each entry's trace is its index
    here), their stream entries and due times, and the poison."""

    reqs: list[dict[str, Any]] = field(default_factory=list)
    fields: list[dict[bytes, bytes]] = field(default_factory=list)
    due: list[float] = field(default_factory=list)
    which: list[int] = field(default_factory=list)     # the request of each entry, -1 for poison
    specials: list[int] = field(default_factory=list)  # the burst's, the fan-out's or the edge requests
    poison_kinds: list[str] = field(default_factory=list)

    def add(self, r: dict[str, Any], at: float, special: bool = False, cmd: bytes | None = None) -> None:
        k = len(self.reqs)
        self.specials += [k] if special else []
        self.fields.append({commands.FIELD: cmd if cmd is not None else commands.encode(Submit(r, k))})
        self.reqs.append(r)
        self.due.append(at)
        self.which.append(k)

    def poison(self, f: dict[bytes, bytes], kind: str, at: float) -> None:
        self.fields.append(f)
        self.due.append(at)
        self.which.append(-1)
        self.poison_kinds.append(kind)

    def schedule(self) -> _Schedule:
        order = np.argsort(np.asarray(self.due), kind="stable")
        return _Schedule([self.fields[k] for k in order], np.asarray(self.due)[order],
                         np.asarray(self.which, dtype=np.int64)[order])


def _load(name: str, world: World, s: LoadSettings, now: datetime) -> _Plan:
    """The scenario's valid requests at ``rate``, plus its own entries (the burst, the fan-out's dispatch, the
    poison); the edge requests come later (:func:`_add_edge`), once the start time is known."""
    plan = _Plan()
    n = max(1, int(round(s.rate * s.duration)))
    for k, r in enumerate(typical_requests(world.agencies, n, s.seed + SCENARIOS.index(name), now, f"{name}-r")):
        plan.add(r, k / s.rate)
    if name == "burst":
        for r in typical_requests(world.agencies, len(world.agencies), s.seed + 99, now, "burst-all",
                                  which=np.arange(len(world.agencies))):
            plan.add(r, s.duration / 2, special=True)
    elif name == "fanout":  # submitted and approved by an operator before the load; its dispatch command halfway
        plan.add(_wide_request(world, s, now), s.duration / 2, special=True,
                 cmd=commands.encode(Dispatch("fanout-wide", len(plan.reqs))))
    elif name == "poison":
        m = max(1, int(round(n * s.poison_share)))
        base = plan.reqs[0]
        lat, lng = shapely.geometry.shape(base["area"]).centroid.coords[0][::-1]
        far = max(world.agencies, key=lambda a: abs(a.jurisdiction.centroid.y - lat)
                  + abs(a.jurisdiction.centroid.x - lng))  # an agency whose jurisdiction is far from the area
        other = far.agency_id
        for j in range(m):
            f, kind, _ = _poison(base, other, j)
            plan.poison(f, kind, (j + 0.5) * s.duration / m)
    return plan


def _add_edge(plan: _Plan, world: World, s: LoadSettings, now: datetime, t0: float, url: str) -> float:
    """The edge requests, due as the load starts (the wide one approved by an operator first); returns the
    boundary (Unix seconds)."""
    boundary = t0 + s.edge_gap_s
    for r in _edge_requests(world, s, boundary, now):
        cmd = None
        if r["request_id"] == "edge-wide":
            _approve(url, world, r, now)
            cmd = commands.encode(Dispatch(r["request_id"], len(plan.reqs)))
        plan.add(r, 0.0, special=True, cmd=cmd)
    return boundary


def run_scenario(name: str, world: World, s: LoadSettings, progress: Progress) -> ScenarioResult:
    res = ScenarioResult(name, s.rate, s.duration)
    now = datetime.now(timezone.utc)
    plan = _load(name, world, s, now)
    shutil.rmtree(world.work / f"redis-{name}", ignore_errors=True)  # a fresh server: no data from a run before
    shutil.rmtree(world.work / f"redis-{name}-lost", ignore_errors=True)
    srv = RedisServer(world.work / f"redis-{name}", appendfsync="everysec").start()
    workers: _Workers | None = None
    run: _Run | None = None
    try:
        settings = ServiceSettings(claim_idle_ms=s.claim_idle_ms, read_count=s.read_count, threads=s.threads,
                                   standby=s.standby)
        if name == "fanout":
            _approve(srv.url, world, plan.reqs[plan.specials[0]], now)
        ps = None
        if name == "retention-edge":  # when each plan is recorded, from Redis itself
            with srv.client() as c:
                c.config_set("notify-keyspace-events", "Kh")
            ps = redis.Redis.from_url(srv.url).pubsub()
            ps.psubscribe(f"__keyspace@0__:{KEYS.plan('')}*")
            ps.get_message(timeout=5)  # the subscription's confirmation
        progress(f"{name}: starting {s.workers} workers")
        # retention-edge: the workers send 50 owners a batch, a batch a round (a gate check and an append each),
        # so that the wide request's dispatch lasts dozens of round trips after its plan is recorded, longer than
        # the watcher takes to see the plan and pause writes (with 500 a batch, its whole dispatch took about as
        # long as the watcher, which then often found nothing in flight to kill). What is checked is the same.
        url = f"{srv.url}?batch_size=50&pipeline_batches=1" if name == "retention-edge" else srv.url
        workers = _Workers(world, url, s.workers, settings)
        client = redis.Redis.from_url(srv.url, socket_timeout=5)
        t0 = time.time() + 0.5
        boundary = _add_edge(plan, world, s, now, t0, srv.url) if name == "retention-edge" else 0.0
        run = _Run(name, s, world, srv, workers, res, plan.reqs, plan.schedule(), t0, plan.specials, boundary)
        if plan.poison_kinds:
            res.special["poison_kinds"] = sorted(set(plan.poison_kinds))
        me, rs_proc = psutil.Process(), psutil.Process(srv.proc.pid)  # type: ignore[union-attr]
        cpu0, rcpu0, w0 = sum(me.cpu_times()[:2]), sum(rs_proc.cpu_times()[:2]), time.monotonic()
        jobs: list[tuple[Callable[..., None], tuple[Any, ...]]] = [(run.collect, ()), (run.monitor, ()),
                                                                   (run.act, ())]
        if ps is not None:
            edge = {plan.reqs[int(k)]["request_id"]: int(e) for e, k in enumerate(run.sched.req)
                    if int(k) in plan.specials}
            jobs.append((run.watch_plans, (ps, edge)))
        threads = [threading.Thread(target=run.guarded, args=(fn, *args), daemon=True) for fn, args in jobs]
        # What this process holds by now (the schedule's entries, the requests, the expected recipients: millions
        # of objects at 10M cameras) is out of the collector's sight until the scenario ends. A full collection
        # walked all of it every few seconds under load, 0.1-0.35 s that held up the generator with every other
        # thread here: the entries due meanwhile went out late, together, and their lateness counted as the
        # service's latency (the p99 of a run at 1,000 requests/s was one such pause, 2.6 s after the start).
        gc.freeze()
        for t in threads:
            t.start()
        progress(f"{name}: {len(run.sched.fields)} entries over {s.duration:.0f} s at {s.rate:g} requests/s")
        _generate(client, run.sched, t0, KEYS.requests)
        threads[2].join(timeout=s.duration + 600)
        deadline = time.time() + s.drain_timeout
        while not run.errors and run.outstanding() > 0 and time.time() < deadline:
            time.sleep(0.05)
        if name == "restart-empty":  # what a worker had in hand when Redis lost its data may still complete
            quiet, seen = time.time(), len(run.outcomes)
            while time.time() < min(deadline, quiet + 2.0):
                time.sleep(0.1)
                if len(run.outcomes) != seen:
                    quiet, seen = time.time(), len(run.outcomes)
        run.stop.set()
        for t in threads:
            t.join(timeout=30)
        if run.errors:
            raise LoadTestFailed(f"{name}: {run.errors[0]!r}") from run.errors[0]
        wall = time.monotonic() - w0
        res.loadgen_cpu_pct = 100 * (sum(me.cpu_times()[:2]) - cpu0) / wall
        redis_cpu_s = None
        if name not in ("restart", "restart-empty"):  # the restarted server is another process
            redis_cpu_s = _with_children(rs_proc) - rcpu0
            res.redis_cpu_pct = 100 * redis_cpu_s / wall
        res.workers = workers.stop()
        workers = None
        res.batches = _batch_figures(client)
        res.series = dict(run.series)
        _figures(run)
        if res.completed:
            res.worker_cpu_ms_per_request = 1000 * sum(w.cpu_s for w in res.workers) / res.completed
            res.redis_cpu_ms_per_request = None if redis_cpu_s is None else 1000 * redis_cpu_s / res.completed
        progress(f"{name}: checking every notification")
        if name == "restart-empty":
            _verify_lost_data(run)
        else:
            _verify(run)
        _scenario_figures(run)
        last_done = max((o["done"] for o in run.outcomes.values()), default=t0) - t0
        res.notifications_per_s = res.notifications / max(last_done, s.duration)
        srv.stop()
        return res
    finally:
        gc.unfreeze()
        if run is not None:
            run.stop.set()
        if workers is not None:
            workers.stop()
        srv.stop(kill=True)


# ---------------------------------------------------------------------------------------------------- figures

def _due_of(run: _Run) -> np.ndarray:
    """Each valid request's due time (seconds after t0)."""
    due = np.full(len(run.reqs), np.nan)
    ok = run.sched.req >= 0
    due[run.sched.req[ok]] = run.sched.due[ok]
    return due


def _latency(run: _Run, ks: Any) -> np.ndarray:
    due = _due_of(run)
    return np.array([(run.outcomes[k]["done"] - run.t0 - due[k]) * 1e3 for k in ks if k in run.outcomes])


def _figures(run: _Run) -> None:
    """Throughput, latency, backlog, and the figures of the burst's or the fan-out's own requests."""
    res, s, t0, specials = run.res, run.s, run.t0, run.specials
    due = _due_of(run)
    res.submitted = len(run.reqs)
    res.missing = len(run.reqs) - len(run.outcomes)
    res.refused = sum(1 for o in run.outcomes.values() if str(o["outcome"]).startswith("refused"))
    res.completed = sum(1 for o in run.outcomes.values() if o["outcome"] == "dispatched")
    plain = _latency(run, (k for k in run.outcomes if k not in specials))
    res.latency_ms = _pct(plain if plain.size else _latency(run, run.outcomes))
    sent = np.isfinite(run.sched.sent_at) & np.isfinite(run.sched.accepted_at)
    res.generator_late_ms = _pct(1e3 * (run.sched.sent_at[sent] - t0 - run.sched.due[sent]))
    res.generator_xadd_ms = _pct(1e3 * (run.sched.accepted_at[sent] - run.sched.sent_at[sent]))
    last_done = max((o["done"] for o in run.outcomes.values()), default=t0) - t0
    res.throughput = res.completed / max(last_done, s.duration)
    res.requests_backlog_max = int(max(run.series["requests_backlog"], default=0))
    res.machine_load = float(np.mean(run.series["load_average"])) if run.series["load_average"] else 0.0
    if specials and run.name in ("burst", "fanout"):
        sp = [run.outcomes[k] for k in specials if k in run.outcomes]
        res.special.update({"requests": len(specials), "completed": len(sp),
                            "latency_ms": _pct(_latency(run, specials))})  # owners notified: from the stream
        at = s.duration / 2  # both the burst and the fan-out arrive halfway through
        around = [k for k in run.outcomes if k not in specials and at <= due[k] <= at + 5.0]
        res.special["others_during_latency_ms"] = _pct(_latency(run, around))


def _window(run: _Run, start: str, end: str) -> None:
    """The span of the scenario's fault, and the latency of the requests due during it."""
    a, b = run.since(run.marks[start]), run.since(run.marks[end])
    due = _due_of(run)
    run.res.special["window_s"] = [a, b]
    run.res.special["during_latency_ms"] = _pct(_latency(run, (k for k in run.outcomes if a <= due[k] <= b)))


def _first_done_after(run: _Run, t: float, ks: Any = None) -> float | None:
    done = [o["done"] for k, o in run.outcomes.items() if o["done"] >= t and (ks is None or k in ks)]
    return min(done) - t if done else None


def _scenario_figures(run: _Run) -> None:
    """What the fault scenarios measure beyond the common figures, and their goals."""
    res, sp = run.res, run.res.special
    if run.name == "poison":
        with run.srv.client() as c:
            dead: Any = c.xrange(KEYS.dead_letters) if c.exists(KEYS.dead_letters) else []
        valid_dead = poison_dead = 0
        for _, f in dead:
            cmd = commands.decode(f)
            valid_dead += int(isinstance(cmd.trace, int))
            poison_dead += int(not isinstance(cmd.trace, int))
        poison = int((run.sched.req < 0).sum())
        got = list(run.poison_outcomes.values()) + run.untraced
        refused = sum(1 for o in got if str(o["outcome"]).startswith("refused"))
        sp.update(poison_entries=poison, poison_refused=refused, poison_dead_lettered=poison_dead,
                  poison_accepted=len(got) - refused, valid_dead_lettered=valid_dead)
        res.goal("valid requests dead-lettered", valid_dead, "0", valid_dead == 0)
        res.goal("poison refused", refused, f"{poison}", refused == poison)
    elif run.name == "clientkill":
        _window(run, "storm", "calm")
    elif run.name == "oom":
        _window(run, "full", "freed")
        with run.srv.client() as c:
            dead = int(c.xlen(KEYS.dead_letters)) if c.exists(KEYS.dead_letters) else 0
        first = _first_done_after(run, run.marks["freed"])
        sp.update(first_completion_after_freed_s=first, dead_lettered=dead)
        res.goal("first completion after Redis was freed (s)", first, "< 2",
                 first is not None and first < 2.0)
        res.goal("valid requests dead-lettered", dead, "0", dead == 0)
    elif run.name == "restart-empty":
        _window(run, "down", "back")
        up = run.marks["up"]
        after = {int(run.sched.req[e]) for e in np.flatnonzero((run.sched.req >= 0) & (run.sched.accepted_at >= up))}
        first_any = _first_done_after(run, run.marks["back"])
        first_new = _first_done_after(run, run.marks["back"], after)
        sp.update(first_completion_after_back_s=first_any, first_new_request_completion_s=first_new,
                  submitted_after=len(after), completed_after=sum(1 for k in after if k in run.outcomes))
        res.goal("first completion of a request submitted after Redis returned (s)",
                 first_new, "< 2", first_new is not None and first_new < 2.0)
        res.goal("requests submitted after Redis returned, completed", sp["completed_after"], f"{len(after)}",
                 sp["completed_after"] == len(after))
    elif run.name == "retention-edge":
        res.goal("retries across the boundary that sent the first attempt's recipients", sp.get("crossed", 0),
                 "> 0, and the read-back exact", sp.get("crossed", 0) > 0 and res.exact)


# ---------------------------------------------------------------------------------------------------- checking

@dataclass
class _ReadBack:
    """Every notification on one Redis's stream: how often each (request, owner) was notified, with which
    cameras."""

    seen: collections.Counter[tuple[str, int]]
    cams: dict[tuple[str, int], list[int]]
    by_req: dict[str, set[int]]
    appended_ms: dict[str, list[int]]  # when each of a request's entries was appended (the stream id's time)

    @classmethod
    def read(cls, c: redis.Redis) -> _ReadBack:
        seen: collections.Counter[tuple[str, int]] = collections.Counter()
        cams: dict[tuple[str, int], list[int]] = {}
        appended: dict[str, list[int]] = collections.defaultdict(list)
        last = "-"
        for _ in range(100_000_000):  # pages of 2,000 entries: bounded by the stream's length
            page: Any = c.xrange(KEYS.notifications, min=last, count=2000)
            if last != "-":
                page = page[1:]
            if not page:
                break
            for eid, fields in page:
                appended[_s(fields[b"request"])].append(int(_s(eid).split("-")[0]))
                _, notes = decode_batch(fields[b"data"])
                for note in notes:
                    key = (note.header["request_id"], int(note.owner_id))
                    seen[key] += 1
                    cams[key] = sorted(int(x) for x in note.camera_ids)
            last = _s(page[-1][0])
        by_req: dict[str, set[int]] = collections.defaultdict(set)
        for rid, owner in seen:
            by_req[rid].add(owner)
        return cls(seen, cams, by_req, dict(appended))

    @property
    def duplicated(self) -> int:
        return sum(v - 1 for v in self.seen.values() if v > 1)


def _expected(index: CameraIndex, r: dict[str, Any], when: float) -> dict[int, list[int]]:
    """The index's answer for request ``r`` judged at ``when`` (Unix seconds): owner -> sorted cameras."""
    rs = index.resolve(r["area"], r["start"], r["end"], now=datetime.fromtimestamp(when, tz=timezone.utc))
    return {int(x): rs.camera_ids[rs.owner_offsets[j]:rs.owner_offsets[j + 1]].tolist()
            for j, x in enumerate(rs.owner_ids)}


def _compare(res: ScenarioResult, want: dict[int, list[int]], rid: str, backs: list[_ReadBack]) -> None:
    got: set[int] = set().union(*(b.by_req.get(rid, set()) for b in backs))
    lost, extra = len(want.keys() - got), len(got - want.keys())
    res.lost += lost
    res.unexpected += extra
    if lost or extra:  # name the requests, for whoever reads a failing report
        res.special.setdefault("inexact_requests", []).append(
            {"request_id": rid, "lost": lost, "unexpected": extra, "lives": len(backs)})
    res.wrong_cameras += sum(1 for x in got & want.keys()
                             if any((rid, x) in b.cams and b.cams[(rid, x)] != want[x] for b in backs))


def _same(want: dict[int, list[int]], rid: str, back: _ReadBack) -> bool:
    got = back.by_req.get(rid, set())
    return want.keys() == got and all(back.cams[(rid, x)] == want[x] for x in got)


def _verify(run: _Run) -> None:
    """Read the whole notifications stream back; compare each request's recipients with the index's answer at
    the time it was judged (see the module docstring)."""
    res, index = run.res, run.world.index
    with run.srv.client() as c:
        back = _ReadBack.read(c)
    res.notifications = sum(back.seen.values())
    res.duplicated = back.duplicated
    if run.name in ("burst", "fanout"):
        res.special["notified"] = sum(len(back.by_req.get(run.reqs[k]["request_id"], ())) for k in run.specials)
    entry = {int(run.sched.req[e]): e for e in np.flatnonzero(run.sched.req >= 0)}
    edge_boundary = run.boundary
    crossed = straddled = unseen = naive_flags = 0
    plans_before = 0
    for k, o in run.outcomes.items():
        if o["outcome"] != "dispatched":
            continue
        r = run.reqs[k]
        rid = r["request_id"]
        final = o["now_us"] / 1e6
        if run.name != "retention-edge":
            _compare(res, _expected(index, r, final), rid, [back])
            back.by_req.pop(rid, None)
            continue
        # The first attempt judged the request after it was sent and before its plan appeared. When the attempt
        # that completed it was judged before the plan appeared, that attempt recorded it (or one racing it, judged
        # within the same bounds): its time is the first attempt's.
        lo, hi = float(run.sched.sent_at[entry[k]]), run.plan_seen.get(rid)
        if hi is None:
            unseen += 1
            hi = final
        lo = final if final <= hi else lo
        first, last = _expected(index, r, lo), _expected(index, r, hi)
        if first != last:  # the answer changed within the bounds: either side is what some instant of them judged
            straddled += 1
            first = last if _same(last, rid, back) else first
        _compare(res, first, rid, [back])
        if rid.startswith("edge-"):
            plans_before += hi < edge_boundary
            judged_late = _expected(index, r, final)
            if hi < edge_boundary < final and judged_late != first:
                crossed += 1
                naive_flags += len(first.keys() ^ judged_late.keys()) + sum(
                    1 for x in first.keys() & judged_late.keys() if first[x] != judged_late[x])
        back.by_req.pop(rid, None)
    res.unexpected += sum(len(v) for v in back.by_req.values())  # notifications for a request with no dispatch
    if run.name == "retention-edge":
        kill_ms = run.marks.get("kill", 0.0) * 1e3
        wide = back.appended_ms.get("edge-wide", [])
        res.special.update(wide_entries_before_kill=sum(1 for t in wide if t < kill_ms),
                           wide_entries_after_kill=sum(1 for t in wide if t >= kill_ms))
        res.special.update(edge_requests=run.s.edge_requests + 1, boundary_s=edge_boundary - run.t0,
                           edge_plans_before_boundary=plans_before, crossed=crossed,
                           flagged_if_judged_at_retry=naive_flags, straddled=straddled, plans_unseen=unseen)


def _verify_lost_data(run: _Run) -> None:
    """``restart-empty``: two Redis lives. The first one's data (moved aside) is served by a second server and
    read back too. A request that completed in the first life must be exact there; one that completed in the
    second must be exact across both (a worker may have appended its batches before the loss and published the
    outcome after); one accepted by the first life only and never completed was lost with the data, counted
    apart (and must have no notification); one accepted by the second must have completed."""
    res, index = run.res, run.world.index
    aside = run.srv.workdir.parent / f"{run.srv.workdir.name}-lost"
    with RedisServer(aside, appendfsync="everysec") as old, old.client() as c0, run.srv.client() as c1:
        before, after = _ReadBack.read(c0), _ReadBack.read(c1)
        _, out0 = read_outcomes(c0, count=10_000_000, operators=True)
        _, out1 = read_outcomes(c1, count=10_000_000, operators=True)
    res.notifications = sum(before.seen.values()) + sum(after.seen.values())
    res.duplicated = before.duplicated + after.duplicated
    done0 = {o["trace"]: o for o in out0 if o["outcome"] == "dispatched" and isinstance(o["trace"], int)}
    done1 = {o["trace"]: o for o in out1 if o["outcome"] == "dispatched" and isinstance(o["trace"], int)}
    up = run.marks["up"]
    accepted_new = {int(run.sched.req[e]) for e in np.flatnonzero((run.sched.req >= 0) &
                                                                   (run.sched.accepted_at >= up))}
    lost_with_data = partial = resent = 0
    for k, r in enumerate(run.reqs):
        rid = r["request_id"]
        if k in done0:
            _compare(res, _expected(index, r, done0[k]["now_us"] / 1e6), rid, [before])
        # The same outcome in both lives (one publish retried across the loss: outcomes are at least once) is one
        # completion; a second, different one is a rerun in the second life, which must be whole there.
        if k in done1 and (k not in done0 or done1[k] != done0[k]):
            _compare(res, _expected(index, r, done1[k]["now_us"] / 1e6), rid, [after] if k in done0 else
                     [before, after])
        if k not in done0 and k not in done1:
            if k in accepted_new:
                continue  # missing: counted from the outcomes
            lost_with_data += 1
            partial += bool(before.by_req.get(rid) or after.by_req.get(rid))
        resent += len(before.by_req.pop(rid, set()) & after.by_req.pop(rid, set()))
    res.unexpected += sum(len(v) for v in before.by_req.values()) + sum(len(v) for v in after.by_req.values())
    res.missing = sum(1 for k in accepted_new if k not in done0 and k not in done1)
    res.completed = len(done0.keys() | done1.keys())  # the collector may have missed the last outcomes before the loss
    res.special.update(completed_before_loss=len(done0), lost_with_data=lost_with_data,
                       lost_with_data_partly_sent=partial, notified_again_after_loss=resent,
                       outcomes_published_in_both_lives=sum(1 for k in done0.keys() & done1.keys()
                                                            if done0[k] == done1[k]))
    res.goal("requests lost with the data that had been partly sent", partial, "0", partial == 0)


# ---------------------------------------------------------------------------------------------------- report

def redis_round_trip_us(url: str, n: int = 2000) -> float:
    """The loopback round trip a request pays per Redis call, measured in the same run (median PING, µs)."""
    c = redis.Redis.from_url(url)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        c.ping()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e6)


def run(s: LoadSettings, work: Path, progress: Progress | None = None) -> dict[str, Any]:
    say = progress or (lambda m: None)
    world = build_world(s, work, say)
    with RedisServer(work / "redis-rtt", appendfsync="everysec") as srv:
        rtt = redis_round_trip_us(srv.url)
    results = [run_scenario(name, world, s, say) for name in s.scenarios]
    by = {r.name: r for r in results}
    if "steady" in by and "poison" in by and by["steady"].throughput:
        ratio = by["poison"].throughput / by["steady"].throughput
        by["poison"].special["throughput_vs_steady"] = ratio
        by["poison"].goal("valid throughput / steady's", ratio, ">= 0.95", ratio >= 0.95)
    return {"settings": asdict(s), "machine": {"cpus": os.cpu_count(), "redis_round_trip_us": rtt},
            "index": {"cameras": s.cameras, "build_s": world.build_s, "bytes": world.index_bytes,
                      "agencies": len(world.agencies)},
            "scenarios": [{**asdict(r), "exact": r.exact} for r in results]}


def _f(x: Any, fmt: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def _describe(r: dict[str, Any]) -> list[str]:
    """The scenario's own figures, in a sentence or two."""
    sp, n = r["special"], r["name"]
    lt = sp.get("during_latency_ms", {})
    during = (f"requests due during it: p50 {_f(lt.get('p50'), '.0f')} ms, p99 {_f(lt.get('p99'), '.0f')} ms, max "
              f"{_f(lt.get('max'), '.0f')} ms")
    if n in ("burst", "fanout") and sp:
        lt, ot = sp["latency_ms"], sp.get("others_during_latency_ms", {})
        return [f"{sp['completed']}/{sp['requests']} special request(s), {sp['notified']:,} owners notified; their "
                f"latency p50 {_f(lt.get('p50'), '.0f')} ms, max {_f(lt.get('max'), '.0f')} ms; the other requests "
                f"around them p99 {_f(ot.get('p99'), '.1f')} ms."]
    if n == "poison":
        return [f"{sp['poison_entries']:,} poison entries of {len(sp['poison_kinds'])} kinds among the valid ones: "
                f"{sp['poison_refused']:,} refused, {sp['poison_accepted']} accepted, {sp['poison_dead_lettered']} "
                f"dead-lettered; valid requests dead-lettered: {sp['valid_dead_lettered']}; valid throughput "
                f"{_f(sp.get('throughput_vs_steady'))} x the steady scenario's."]
    if n == "clientkill":
        return [f"{during}."]
    if n == "oom":
        return [f"First completion {_f(sp.get('first_completion_after_freed_s'))} s after Redis was freed; "
                f"{sp['dead_lettered']} requests dead-lettered; {during}."]
    if n == "restart-empty":
        return [f"First completion {_f(sp.get('first_completion_after_back_s'))} s after Redis returned, of a "
                f"request submitted after it {_f(sp.get('first_new_request_completion_s'))} s; "
                f"{sp['completed_after']:,}/{sp['submitted_after']:,} submitted after it completed. Before the loss "
                f"{sp['completed_before_loss']:,} completed (checked against the data moved aside); "
                f"{sp['lost_with_data']} were queued and lost with the data ({sp['lost_with_data_partly_sent']} of "
                f"them partly sent); {sp['notified_again_after_loss']} owners notified again after the loss (the "
                f"record of the first notice went with the data)."]
    if n == "retention-edge" and "crossed" in sp:
        return [f"{sp['edge_requests']} requests whose 30-day cameras' footage expired at {sp['boundary_s']:.2f} s; "
                f"{sp['edge_plans_before_boundary']} plans recorded before it; {sp['crossed']} completed by a retry "
                f"after it, each with its first attempt's recipients (a check at the retry's time would have "
                f"flagged {sp['flagged_if_judged_at_retry']:,} notifications); the wide one's entries appended "
                f"{sp['wide_entries_before_kill']} before the kill, {sp['wide_entries_after_kill']} after; "
                f"{sp['straddled']} request(s) whose first attempt could not be placed on one side of a change of "
                f"answer (either side accepted), {sp['plans_unseen']} plans not seen."]
    return []


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"# geodispatch load test: {report['index']['cameras']:,} cameras, "
             f"{report['index']['agencies']} agencies, {s['workers']} workers",
             "",
             f"Open-loop target {s['rate']:g} requests/s for {s['duration']:g} s per scenario; latency from each "
             f"request's due time to its last batch appended. {report['machine']['cpus']} CPUs; Redis loopback "
             f"round trip (median PING) {report['machine']['redis_round_trip_us']:.0f} µs, measured in this run.",
             "",
             "The machine is shared with other jobs; the mean 1-minute load average during each scenario: "
             + ", ".join(f"{r['name']} {r.get('machine_load', 0):.1f}" for r in report["scenarios"]) + ".",
             "",
             "| scenario | completed | refused | achieved req/s | p50 ms | p99 ms | max ms | notifications/s "
             "| lost | duplicated | wrong | backlog max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["scenarios"]:
        lt = r["latency_ms"]
        lines.append(f"| {r['name']} | {r['completed']:,}/{r['submitted']:,} | {r['refused']} | "
                     f"{r['throughput']:,.0f} | {lt.get('p50', float('nan')):.1f} | {lt.get('p99', float('nan')):.1f} "
                     f"| {lt.get('max', float('nan')):.0f} | {r['notifications_per_s']:,.0f} | {r['lost']} | "
                     f"{r['duplicated']} | {r['unexpected'] + r['wrong_cameras'] + r['missing']} | "
                     f"{r['requests_backlog_max']:,} |")
    lines += ["", "Of that latency, the generator's part: how late it sent each entry after its due time, and how "
              "long Redis took to take it (ms).", "",
              "| scenario | sent late: p50 | p99 | max | taken by Redis: p50 | p99 | max |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["scenarios"]:
        late, xadd = r.get("generator_late_ms") or {}, r.get("generator_xadd_ms") or {}
        lines.append(f"| {r['name']} | " + " | ".join(_f(d.get(q), ".1f") for d in (late, xadd)
                                                     for q in ("p50", "p99", "max")) + " |")
    lines += ["", "| scenario | worker | CPU % of a core | RSS max MB (shared index pages included) | USS MB |",
              "|---|---|---:|---:|---:|"]
    for r in report["scenarios"]:
        lines.append(f"| {r['name']} | redis-server | {r['redis_cpu_pct']:.0f} | | |")
        lines.append(f"| {r['name']} | load generator + collector | {r['loadgen_cpu_pct']:.0f} | | |")
        for w in r["workers"]:
            lines.append(f"| {r['name']} | {w['name']}{' (killed)' if w['killed'] else ''} | {w['cpu_pct']:.0f} | "
                         f"{w['rss_max_mb']:,.0f} | {w['uss_mb']:,.0f} |")
    lines += ["", "| scenario | CPU ms per request: workers (all) | redis-server | batches | commands a batch "
              "| batch ms: mean | half under | 99% under |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["scenarios"]:
        b = r.get("batches") or {}
        lines.append(f"| {r['name']} | {_f(r.get('worker_cpu_ms_per_request'), '.3f')} | "
                     f"{_f(r.get('redis_cpu_ms_per_request'), '.3f')} | {b.get('count', 0):,.0f} | "
                     f"{_f(b.get('commands_per_batch'), '.1f')} | {_f(b.get('mean_ms'), '.1f')} | "
                     f"{_f(b.get('p50_ms_under'), 'g')} | {_f(b.get('p99_ms_under'), 'g')} |")
    for r in report["scenarios"]:
        text = _describe(r)
        if r.get("handled_twice"):
            text.append(f"{r['handled_twice']} command(s) handled more than once (an entry taken over from a worker "
                        "still working on it, or sent twice through a fault), harmlessly.")
        if text or r["events"]:
            lines += ["", f"**{r['name']}**: " + "; ".join(r["events"])] + text
    goals = [(r["name"], g, v) for r in report["scenarios"] for g, v in r.get("goals", {}).items()]
    if goals:
        lines += ["", "| scenario | goal | value | target | met |", "|---|---|---:|---|---|"]
        for name, g, v in goals:
            value = v["value"]
            lines.append(f"| {name} | {g} | {_f(value) if isinstance(value, float) else value} | {v['goal']} | "
                         f"{'yes' if v['met'] else 'NO'} |")
    lines += ["", "Exact (nothing lost, duplicated or misaddressed, no request without an outcome): "
              + ", ".join(f"{r['name']} {'yes' if r['exact'] else 'NO'}" for r in report["scenarios"]), ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = report["scenarios"]
    fig, axes = plt.subplots(len(sc), 1, figsize=(9, 2.4 * len(sc)), squeeze=False, sharex=True)
    for ax, r in zip(axes[:, 0], sc):
        t = np.array(r["series"].get("t", []))
        if t.size:
            done = np.array(r["series"]["completed"], dtype=float)
            rate = np.gradient(done, t) if t.size > 1 else done
            ax.plot(t, rate, label="completed req/s")
            ax2 = ax.twinx()
            ax2.plot(t, r["series"]["requests_backlog"], color="tab:red", label="requests backlog")
            ax2.set_ylabel("backlog")
        if "window_s" in r["special"]:
            ax.axvspan(*r["special"]["window_s"], color="tab:orange", alpha=0.15, lw=0)
        ax.set_ylabel("req/s")
        ax.set_title(f"{r['name']}: p99 {r['latency_ms'].get('p99', float('nan')):.1f} ms", fontsize=9)
    axes[-1, 0].set_xlabel("seconds since load started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

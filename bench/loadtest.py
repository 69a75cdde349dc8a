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
- ``restart``: the steady load; a third of the way through Redis shuts down (flushing its AOF) and starts again.

The generator is open loop: request ``k`` is due at ``t0 + k / rate`` whatever happened before, and its latency
is measured from that due time (so a stalled system is charged for the wait, not excused by it) to the moment the
worker appended its last batch, which the worker publishes on the outcomes stream. At the end the notifications
stream is read back in full and every request's recipients are compared with the index's answer at the time the
worker judged it: nothing lost, nothing duplicated, no notification for an owner it did not concern.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis

from dispatcher import synthetic
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink
from dispatcher.dispatch.wire import decode_batch
from dispatcher.index.camera_index import CameraIndex
from dispatcher.keys import Keys
from dispatcher.service import commands
from dispatcher.service.client import read_outcomes
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

SCENARIOS = ("steady", "burst", "fanout", "kill", "restart")
Progress = Callable[[str], None]


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
    threads: int = 4              # consumer threads per worker process
    fanout_km2: float = 100.0
    drain_timeout: float = 120.0  # after the last submission, how long to wait for the last outcome

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scenarios) - set(SCENARIOS))
        if unknown:
            raise ValueError(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
        if not (self.rate > 0 and self.duration > 0 and self.workers >= 1 and self.cameras > 0):
            raise ValueError("rate, duration, workers and cameras must be positive")


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

# ---------------------------------------------------------------------------------------------------- results

@dataclass
class WorkerFigures:
    name: str
    cpu_pct: float       # of one core, over the scenario
    rss_max_mb: float    # resident, index pages shared with the other workers included
    uss_mb: float        # unique to the process at the end
    killed: bool = False


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
    redis_cpu_pct: float = 0.0       # of one core, redis-server over the scenario
    loadgen_cpu_pct: float = 0.0     # of one core, this process: generator, collector, monitor
    workers: list[WorkerFigures] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    special: dict[str, Any] = field(default_factory=dict)  # the burst's or the fan-out's own figures
    series: dict[str, list[float]] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.wrong_cameras or self.missing)


def _pct(a: np.ndarray) -> dict[str, float]:
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
        for _ in range(n):
            self.start()

    def start(self) -> None:
        name = f"worker-{len(self.procs)}"
        ready = self.ctx.Event()
        p = self.ctx.Process(target=serve_process, name=name, daemon=True,
                             args=(name, str(self.world.index_dir), self.url, str(self.world.agencies_path),
                                   LOAD_POLICY, self.settings, ready))
        p.start()
        deadline = time.monotonic() + 300
        while not ready.wait(timeout=0.1):
            if p.exitcode is not None or time.monotonic() > deadline:
                p.kill()
                raise RuntimeError(f"{name} did not start (exit code {p.exitcode})")
        self.procs.append(p)
        self.figures[name] = WorkerFigures(name, 0.0, 0.0, 0.0)
        self.cpu0[name] = sum(psutil.Process(p.pid).cpu_times()[:2])
        self.t0[name] = time.monotonic()

    def sample(self) -> None:
        for p in self.procs:
            f = self.figures[p.name]
            if f.killed or p.exitcode is not None:
                continue
            try:
                pp = psutil.Process(p.pid)
                f.rss_max_mb = max(f.rss_max_mb, pp.memory_info().rss / 2**20)
                f.cpu_pct = 100 * (sum(pp.cpu_times()[:2]) - self.cpu0[p.name]) / (time.monotonic() - self.t0[p.name])
            except psutil.Error:
                pass

    def kill(self, k: int) -> None:
        p = self.procs[k]
        self.sample()
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        self.figures[p.name].killed = True

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


def _retrying(fn: Callable[[], Any], stop: threading.Event | None = None) -> Any:
    """Run ``fn`` until Redis answers (it is down while the restart scenario restarts it)."""
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            if stop is not None and stop.is_set():
                return None
            time.sleep(0.05)


def run_scenario(name: str, world: World, s: LoadSettings, progress: Progress) -> ScenarioResult:
    res = ScenarioResult(name, s.rate, s.duration)
    now = datetime.now(timezone.utc)
    n = max(1, int(round(s.rate * s.duration)))
    reqs = typical_requests(world.agencies, n, s.seed + SCENARIOS.index(name), now, f"{name}-r")
    due = np.arange(n) / s.rate
    cmds = [commands.encode(Submit(r, k)) for k, r in enumerate(reqs)]
    specials: list[int] = []   # indexes (into reqs) of the burst's or the fan-out's requests
    fanout_cmd: tuple[float, bytes] | None = None
    if name == "burst":
        at = s.duration / 2
        extra = typical_requests(world.agencies, len(world.agencies), s.seed + 99, now, "burst-all",
                                 which=np.arange(len(world.agencies)))
        specials = list(range(n, n + len(extra)))
        reqs += extra
        cmds += [commands.encode(Submit(r, n + j)) for j, r in enumerate(extra)]
        due = np.concatenate([due, np.full(len(extra), at)])
    order = np.argsort(due, kind="stable")
    srv = RedisServer(world.work / f"redis-{name}", appendfsync="everysec").start()
    workers: _Workers | None = None
    stop = threading.Event()
    try:
        settings = ServiceSettings(claim_idle_ms=s.claim_idle_ms, read_count=s.read_count, threads=s.threads)
        if name == "fanout":
            fan = _fanout_request(world, s, now)
            wf = Workflow(RedisStore.from_url(srv.url), AgencyRegistry(world.agencies),
                          Policy.from_dict({**LOAD_POLICY, "auto_approve": False, "max_area_sq_mi": 200.0}))
            wf.submit(fan, now, actor="operator:loadtest")
            wf.approve(fan["request_id"], "operator", now)
            specials = [len(reqs)]
            reqs.append(fan)
            fanout_cmd = (s.duration / 2, commands.encode(Dispatch(fan["request_id"], len(reqs) - 1)))
        progress(f"{name}: starting {s.workers} workers")
        workers = _Workers(world, srv.url, s.workers, settings)
        client = redis.Redis.from_url(srv.url, socket_timeout=5)
        outcomes: dict[int, dict[str, Any]] = {}
        series: dict[str, list[float]] = collections.defaultdict(list)
        t0 = time.time() + 0.5

        def collect() -> None:
            after = "0-0"
            c = redis.Redis.from_url(srv.url, socket_timeout=5)
            while not stop.is_set() or len(outcomes) < len(reqs):
                got = _retrying(lambda a=after: read_outcomes(c, a, block_ms=100, operators=True), stop)  # type: ignore[misc]
                if got is None:
                    return
                after, batch = got
                for o in batch:
                    outcomes.setdefault(int(o["trace"]), o)  # a redelivered command's second outcome: ignored
                if stop.is_set() and not batch:
                    return

        def monitor() -> None:
            c = redis.Redis.from_url(srv.url, socket_timeout=1)
            while not stop.is_set():
                workers.sample()  # type: ignore[union-attr]
                try:
                    groups = c.xinfo_groups(Keys().requests)
                    # lag: not yet delivered (None when Redis cannot tell, e.g. just after a restart)
                    last = c.xinfo_stream(Keys().requests)["last-generated-id"]
                    # after a restart Redis 7.0 can report a lag for a group that has read everything
                    lag = sum(0 if g["last-delivered-id"] == last else int(g.get("lag") or 0) for g in groups)
                    pending = sum(int(g["pending"]) for g in groups)   # delivered, not yet acknowledged
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, redis.BusyLoadingError):
                    lag = pending = -1
                series["t"].append(time.time() - t0)
                series["requests_backlog"].append(lag + pending if lag >= 0 else -1)
                series["requests_lag"].append(lag)
                series["requests_pending"].append(pending)
                series["completed"].append(len(outcomes))
                stop.wait(0.25)

        def act() -> None:  # the scenario's disruption, at its time
            if name not in ("kill", "restart") and fanout_cmd is None:
                return
            at = fanout_cmd[0] if fanout_cmd else s.duration / 3
            time.sleep(max(0.0, t0 + at - time.time()))
            if fanout_cmd:
                _retrying(lambda: client.xadd(Keys().requests, {"cmd": fanout_cmd[1]}))
                due_extra[0] = at
            elif name == "kill":
                workers.kill(0)  # type: ignore[union-attr]
                res.events.append(f"SIGKILL to worker-0 at {time.time() - t0:.2f} s")
                time.sleep(1.0)
                workers.start()  # type: ignore[union-attr]
                res.events.append(f"replacement worker-{len(workers.procs) - 1} ready at "  # type: ignore[union-attr]
                                  f"{time.time() - t0:.2f} s")
            else:
                t_down = time.time() - t0
                srv.restart()
                res.events.append(f"Redis shut down at {t_down:.2f} s, serving again at {time.time() - t0:.2f} s "
                                  "(AOF, fsync every second; graceful shutdown)")

        due_extra = [0.0]
        me, rs_proc = psutil.Process(), psutil.Process(srv.proc.pid)  # type: ignore[union-attr]
        cpu0, rcpu0, w0 = sum(me.cpu_times()[:2]), sum(rs_proc.cpu_times()[:2]), time.monotonic()
        threads = [threading.Thread(target=f, daemon=True) for f in (collect, monitor, act)]
        for t in threads:
            t.start()
        progress(f"{name}: {len(cmds)} requests over {s.duration:.0f} s at {s.rate:g}/s")
        _generate(client, [cmds[k] for k in order], due[order], t0, Keys().requests)
        threads[2].join()
        deadline = time.time() + s.drain_timeout
        while len(outcomes) < len(reqs) and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        for t in threads[:2]:
            t.join(timeout=30)
        wall = time.monotonic() - w0
        res.loadgen_cpu_pct = 100 * (sum(me.cpu_times()[:2]) - cpu0) / wall
        if name != "restart":  # the restarted server is another process
            res.redis_cpu_pct = 100 * (sum(rs_proc.cpu_times()[:2]) - rcpu0) / wall
        res.workers = workers.stop()
        workers = None
        res.series = dict(series)

        # ------------------------------------------------------------------- figures
        res.submitted = len(reqs)
        res.missing = len(reqs) - len(outcomes)
        due_all = np.concatenate([due, [due_extra[0]] * (len(reqs) - len(due))])
        lat = np.array([(o["done"] - t0 - due_all[k]) * 1e3 for k, o in outcomes.items()])
        res.refused = sum(1 for o in outcomes.values() if str(o["outcome"]).startswith("refused"))
        res.completed = sum(1 for o in outcomes.values() if o["outcome"] == "dispatched")
        plain = np.array([(o["done"] - t0 - due_all[k]) * 1e3 for k, o in outcomes.items() if k not in specials])
        res.latency_ms = _pct(plain if plain.size else lat)
        last_done = max((o["done"] for o in outcomes.values()), default=t0) - t0
        res.throughput = res.completed / max(last_done, s.duration)
        res.requests_backlog_max = int(max(series["requests_backlog"], default=0))
        if specials:
            sp = [outcomes[k] for k in specials if k in outcomes]
            res.special = {"requests": len(specials), "completed": len(sp),
                           "latency_ms": _pct(np.array([(o["done"] - t0 - due_all[k]) * 1e3
                                                        for k, o in outcomes.items() if k in specials])),
                           "notified": int(sum(o["notified"] for o in sp))}
            at = s.duration / 2  # both the burst and the fan-out arrive halfway through
            in_window = [(o["done"] - t0 - due_all[k]) * 1e3 for k, o in outcomes.items()
                         if k not in specials and at <= due_all[k] <= at + 5.0]
            res.special["others_during_latency_ms"] = _pct(np.array(in_window))
        progress(f"{name}: checking every notification")
        _verify(res, world, srv, reqs, outcomes)
        res.notifications_per_s = res.notifications / max(last_done, s.duration)
        srv.stop()
        return res
    finally:
        stop.set()
        if workers is not None:
            workers.stop()
        srv.stop(kill=True)


def _fanout_request(world: World, s: LoadSettings, now: datetime) -> dict[str, Any]:
    """A ``fanout_km2`` polygon in the jurisdiction with the most cameras near its centre."""
    geo = [centre_and_radius_km(a) for a in world.agencies]
    big = max(range(len(geo)), key=lambda k: geo[k][2])
    lat, lng, _ = geo[big]
    area = synthetic.sample_areas_at([lat], [lng], [s.fanout_km2], seed=s.seed, concave=False)[0]
    start = now - timedelta(days=2)
    return {"request_id": "fanout-wide", "agency_id": world.agencies[big].agency_id, "case_number": f"{now.year}-FAN1",
            "incident_type": sorted(INCIDENT_TYPES)[0], "investigator_contact": "detective@agency.example",
            "message": "Operator-approved wide-area request.", "area": area, "start": start.isoformat(),
            "end": (start + timedelta(hours=6)).isoformat(), "submitted_at": now.isoformat()}


def _generate(client: redis.Redis, cmds: list[bytes], due: np.ndarray, t0: float, stream: str) -> None:
    """Open loop: every command goes out at its due time (or as soon after as Redis takes it), never waiting
    for an earlier one's outcome. A pipeline cut by a Redis restart is sent again: a command seen twice is a
    redelivery the workers recognise, and the collector keeps the first outcome."""
    i, n = 0, len(cmds)
    while i < n:
        now = time.time() - t0
        j = min(int(np.searchsorted(due, now, side="right")), i + 1000)
        if j > i:
            def send(i: int = i, j: int = j) -> None:
                pipe = client.pipeline(transaction=False)
                for c in cmds[i:j]:
                    pipe.xadd(stream, {"cmd": c})
                pipe.execute()
            _retrying(send)
            i = j
        else:
            time.sleep(min(0.001, max(0.0, due[i] - now)))


def _verify(res: ScenarioResult, world: World, srv: RedisServer, reqs: list[dict[str, Any]],
            outcomes: dict[int, dict[str, Any]]) -> None:
    """Read the whole notifications stream back; compare each request's recipients with the index's answer at
    the time the worker judged it."""
    sink = RedisSink(QueueSettings.from_url(srv.url))
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    cams: dict[tuple[str, int], list[int]] = {}
    c = sink.client
    last = "-"
    while True:
        page = c.xrange(sink.keys.notifications, min=last, count=2000)
        if last != "-":
            page = page[1:]
        if not page:
            break
        for _, fields in page:
            _, notes = decode_batch(fields[b"data"])
            for note in notes:
                key = (note.header["request_id"], int(note.owner_id))
                seen[key] += 1
                cams[key] = sorted(int(x) for x in note.camera_ids)
        eid = page[-1][0]
        last = eid.decode() if isinstance(eid, bytes) else eid
    res.notifications = sum(seen.values())
    res.duplicated = sum(v - 1 for v in seen.values() if v > 1)
    by_req: dict[str, set[int]] = collections.defaultdict(set)
    for rid, owner in seen:
        by_req[rid].add(owner)
    for k, o in outcomes.items():
        if o["outcome"] != "dispatched":
            continue
        r = reqs[k]
        when = datetime.fromtimestamp(o["now_us"] / 1e6, tz=timezone.utc)
        rs = world.index.resolve(r["area"], r["start"], r["end"], now=when)
        expected = {int(x): rs.camera_ids[rs.owner_offsets[j]:rs.owner_offsets[j + 1]].tolist()
                    for j, x in enumerate(rs.owner_ids)}
        got = by_req.pop(r["request_id"], set())
        res.lost += len(expected.keys() - got)
        res.unexpected += len(got - expected.keys())
        res.wrong_cameras += sum(1 for x in got & expected.keys() if cams[(r["request_id"], x)] != expected[x])
    res.unexpected += sum(len(v) for v in by_req.values())  # notifications for a request with no dispatch outcome


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
    return {"settings": asdict(s), "machine": {"cpus": os.cpu_count(), "redis_round_trip_us": rtt},
            "index": {"cameras": s.cameras, "build_s": world.build_s, "bytes": world.index_bytes,
                      "agencies": len(world.agencies)},
            "scenarios": [{**asdict(r), "exact": r.exact} for r in results]}


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"# geodispatch load test: {report['index']['cameras']:,} cameras, "
             f"{report['index']['agencies']} agencies, {s['workers']} workers",
             "",
             f"Open-loop target {s['rate']:g} requests/s for {s['duration']:g} s per scenario; latency from each "
             f"request's due time to its last batch appended. {report['machine']['cpus']} CPUs; Redis loopback "
             f"round trip (median PING) {report['machine']['redis_round_trip_us']:.0f} µs, measured in this run.",
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
    lines += ["", "| scenario | worker | CPU % of a core | RSS max MB (shared index pages included) | USS MB |",
              "|---|---|---:|---:|---:|"]
    for r in report["scenarios"]:
        lines.append(f"| {r['name']} | redis-server | {r['redis_cpu_pct']:.0f} | | |")
        lines.append(f"| {r['name']} | load generator + collector | {r['loadgen_cpu_pct']:.0f} | | |")
        for w in r["workers"]:
            lines.append(f"| {r['name']} | {w['name']}{' (killed)' if w['killed'] else ''} | {w['cpu_pct']:.0f} | "
                         f"{w['rss_max_mb']:,.0f} | {w['uss_mb']:,.0f} |")
    for r in report["scenarios"]:
        if r["special"] or r["events"]:
            lines += ["", f"**{r['name']}**: " + "; ".join(r["events"])]
            if r["special"]:
                sp = r["special"]
                lt = sp["latency_ms"]
                ot = sp.get("others_during_latency_ms", {})
                lines.append(f"{sp['completed']}/{sp['requests']} special request(s), {sp['notified']:,} owners "
                             f"notified; their latency p50 {lt.get('p50', float('nan')):.0f} ms, max "
                             f"{lt.get('max', float('nan')):.0f} ms; the other requests around them p99 "
                             f"{ot.get('p99', float('nan')):.1f} ms.")
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
        ax.set_ylabel("req/s")
        ax.set_title(f"{r['name']}: p99 {r['latency_ms'].get('p99', float('nan')):.1f} ms", fontsize=9)
    axes[-1, 0].set_xlabel("seconds since load started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

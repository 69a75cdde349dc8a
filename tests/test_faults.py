"""The whole service under faults, as an operator meets them: ``geodispatch serve`` worker processes on a real
redis-server, with poison mixed into the batches, workers SIGKILLed at random moments, a CLIENT KILL storm, Redis
full, Redis restarted with its data and restarted empty, and a retry across a footage-retention boundary. After
each, every notification is read back from the stream and compared, owner by owner and camera by camera, with an
independent oracle (shapely over every camera): nothing lost, duplicated or misaddressed, every valid request
dispatched exactly once and none dead-lettered, and the gate's records equal to the stream."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from bench.reference import Dataset, brute_force
from dispatcher.connections import with_retries
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink
from dispatcher.dispatch.wire import decode_batch
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index import CameraIndex
from dispatcher.keys import Keys
from dispatcher.service.client import read_outcomes, submit
from dispatcher.service.servers import RedisServer
from dispatcher.service.worker import ServiceSettings, Worker
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.pipeline import Pipeline
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import RedisStore
from tests import data
from tests.video_requests import JOINED, LAT0, LNG0, request, square

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[1]
KEYS = Keys()
#: Owners who opted out through the workflow (the gate holds them back; the index does not know).
OPTED_OUT_SHARE = 0.05


@dataclass
class World:
    index_dir: Path
    agencies: Path
    policy: Path
    ds: Dataset
    opted_out: list[int]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("faults")
    cams = data.cameras(20_000, seed=51, cx=LNG0, cy=LAT0, spread=0.01)
    own = data.owners(cams, seed=51, share_out=0.0)
    CameraIndex.build(cams, own).save(tmp / "index")
    AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL", geodesic_circle(LNG0, LAT0, 20_000),
                           JOINED)]).save_geojson(tmp / "agencies.geojson")
    owners = own.column("owner_id").to_numpy()
    rng = np.random.default_rng(51)
    opted = sorted(rng.choice(owners, int(len(owners) * OPTED_OUT_SHARE), replace=False).tolist())
    # every recipient notified (no per-owner cap, no agency rate limit), so the oracle is order-independent
    (tmp / "policy.json").write_text('{"rate_limit": 100000, "owner_cap": 100000}')
    return World(tmp / "index", tmp / "agencies.geojson", tmp / "policy.json", Dataset.from_tables(cams, own), opted)


def _requests(n: int, seed: int, prefix: str = "req") -> list[dict[str, Any]]:
    """Typical requests judged at the wall clock (the serve processes' clock)."""
    now = datetime.now(timezone.utc)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        dx, dy = rng.uniform(-0.01, 0.01, 2)
        start = now - timedelta(days=int(rng.integers(1, 20)), hours=int(rng.integers(0, 20)))
        r = request(request_id=f"{prefix}-{k}", area=square(float(rng.uniform(0.03, 0.45)), LNG0 + dx, LAT0 + dy),
                    start=start, end=start + timedelta(hours=2), submitted_at=now)
        out.append({f: getattr(r, f) for f in r.__dataclass_fields__})
    return out


class Service:
    """``geodispatch serve`` as an operator runs it, on the test's Redis."""

    def __init__(self, server: RedisServer, world: World, workers: int = 2) -> None:
        self.server, self.world, self.workers = server, world, workers
        self.proc: subprocess.Popen[str] | None = None
        self.logs: list[str] = []

    def start(self) -> Service:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "--log-level", "INFO", "serve", "--index",
             str(self.world.index_dir), "--redis-url", self.server.url, "--workers", str(self.workers),
             "--agencies", str(self.world.agencies), "--policy", str(self.world.policy), "--auto-approve",
             "--claim-idle-ms", "1000"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL to the command and every worker, at once."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        out, _ = self.proc.communicate(timeout=60)
        self.logs.append(out)

    def stop(self) -> str:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        self.logs.append(out)
        return out


def _opt_out(server: RedisServer, owners: list[int]) -> None:
    store = RedisStore.from_url(server.url)
    for o in owners:
        store.set_opted_out(o, True, datetime.now(timezone.utc))


def _outcomes(server: RedisServer) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    with server.client() as r:
        _, got = read_outcomes(r, count=1_000_000, operators=True)
    for o in got:
        by[str(o["request_id"])].append(o)
    return by


def _wait(server: RedisServer, ids: set[str], timeout: float = 180, proc: Service | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done = {rid for rid, os_ in _outcomes(server).items() if any(o["outcome"] == "dispatched" for o in os_)}
        except redis.RedisError:
            done = set()
        if ids <= done:
            return
        if proc is not None and proc.proc is not None and proc.proc.poll() is not None:
            raise AssertionError("serve exited: " + (proc.proc.communicate()[0] or ""))
        time.sleep(0.1)
    raise AssertionError(f"not dispatched in {timeout} s: {sorted(ids - done)[:10]}")


def _check_exact(server: RedisServer, world: World, reqs: list[dict[str, Any]]) -> dict[str, int]:
    """Read the whole notifications stream back and compare with the oracle; returns the figures."""
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    cams: dict[tuple[str, int], list[int]] = {}
    with server.client() as r:
        for _, fields in r.xrange(KEYS.notifications):
            _, notes = decode_batch(fields[b"data"])
            for n in notes:
                key = (n.header["request_id"], n.owner_id)
                seen[key] += 1
                cams[key] = list(n.camera_ids)
        dead = r.xlen(KEYS.dead_letters) if r.exists(KEYS.dead_letters) else 0
    outcomes = _outcomes(server)
    store = RedisStore.from_url(server.url)
    opted = set(world.opted_out)
    lost = duplicated = wrong = 0
    for req in reqs:
        rid = req["request_id"]
        judged = [o for o in outcomes[rid] if o["outcome"] == "dispatched"]
        assert judged, f"{rid} never dispatched"
        now = datetime.fromtimestamp(judged[0]["now_us"] / 1e6, tz=timezone.utc)
        want = brute_force(world.ds, req["area"], req["start"], req["end"], now)
        sent = {o for (q, o) in seen if q == rid}
        lost += len(set(want) - opted - sent)
        wrong += len(sent - set(want)) + len(sent & opted)
        wrong += sum(cams[(rid, o)] != want[o] for o in sent & set(want))
        duplicated += sum(seen[(rid, o)] - 1 for o in sent)
        # the gate's records are the stream's: notified set, and opted-out owners counted once each
        assert store.notified_count(rid) == len(sent), rid
        assert store.counters(rid).get("opted_out", 0) == len(set(want) & opted), rid
        assert store.get_request(rid)[0] == "dispatched"  # type: ignore[index]
    assert (lost, duplicated, wrong, dead) == (0, 0, 0, 0)
    return {"requests": len(reqs), "notifications": sum(seen.values())}


def _oom_refusals(r: redis.Redis) -> int:
    """How many commands Redis has refused for want of memory."""
    stats: dict[str, Any] = r.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


def _submit_all(server: RedisServer, reqs: list[dict[str, Any]]) -> None:
    """Submit each request, retried through dropped connections as a careful submitter would (an XADD retried
    after a lost reply may queue a request twice: the service must treat that as one)."""
    qs = QueueSettings.from_url(server.url, retries=20)
    with server.client() as r:
        for k, req in enumerate(reqs):
            with_retries(qs, "submit", lambda req=req, k=k: submit(r, req, trace=k))


# ------------------------------------------------------------------------------------------------------ faults

def test_poison_mixed_into_batches_costs_no_valid_request(redis_server: RedisServer, world: World) -> None:
    """Entries that are not requests, or that once raised untyped errors (a submission time at year 1 or 9999),
    interleaved with valid ones in batches of 16: each poison is refused on its own, every valid request is
    dispatched exactly once, nothing is dead-lettered."""
    _opt_out(redis_server, world.opted_out)
    reqs = _requests(40, seed=1)
    base = dict(reqs[0])
    poison: list[Any] = [
        {**base, "request_id": "p-1", "submitted_at": "0001-01-01T00:00:00Z"},
        {**base, "request_id": "p-2", "submitted_at": "9999-12-31T23:59:00-05:00"},
        {**base, "request_id": "p-3", "start": "9999-12-31T23:59:00-05:00", "end": "0001-01-01T00:00:00Z"},
        {**base, "request_id": "p-4", "area": {"type": "Point", "coordinates": [LNG0, LAT0]}},
        {**base, "request_id": "p-5", "area": {"type": "Polygon", "coordinates": [[[1e308, 1e308]] * 5]}},
        {**base, "request_id": "p-6", "agency_id": 12},
        {**base, "request_id": "p-7", "area": [[[[[[[[[[[]]]]]]]]]]]},
        {**base, "request_id": "p-8", "message": "x" * 100_000},
        {"request_id": "p-9"},
        "not an object",
    ]
    with redis_server.client() as r:
        mixed = reqs[:20] + poison + reqs[20:]
        for k, req in enumerate(mixed):
            submit(r, req, trace=k)
            if k % 7 == 3:  # entries that are no command at all
                r.xadd(KEYS.requests, {"cmd": b"{not json"})
                r.xadd(KEYS.requests, {"cmd": orjson.dumps({"kind": "explode", "trace": k})})
    svc = Service(redis_server, world).start()
    try:
        _wait(redis_server, {q["request_id"] for q in reqs}, proc=svc)
        time.sleep(0.5)
    finally:
        svc.stop()
    got = _outcomes(redis_server)
    for k in range(1, 9):
        assert [o["outcome"] for o in got[f"p-{k}"]][0].startswith("refused"), k
    _check_exact(redis_server, world, reqs)


def test_workers_sigkilled_at_random_moments(redis_server: RedisServer, world: World) -> None:
    """Three rounds of SIGKILL to the command and all its workers at a random moment, each followed by a fresh
    start: the run ends with every request dispatched exactly once."""
    _opt_out(redis_server, world.opted_out)
    reqs = _requests(60, seed=2)
    _submit_all(redis_server, reqs)
    rng = np.random.default_rng(2)
    svc = Service(redis_server, world)
    for _ in range(3):
        svc.start()
        time.sleep(float(rng.uniform(2.0, 5.0)))  # workers take ~2 s to start: some rounds kill mid-batch
        svc.kill()
    svc.start()
    try:
        _wait(redis_server, {q["request_id"] for q in reqs}, proc=svc)
    finally:
        svc.stop()
    _check_exact(redis_server, world, reqs)


def test_client_kill_storm(redis_server: RedisServer, world: World) -> None:
    """Every client connection killed every 10 ms for 4 s while the service works (and requests arrive)."""
    _opt_out(redis_server, world.opted_out)
    reqs = _requests(60, seed=3)
    svc = Service(redis_server, world).start()
    stop = threading.Event()
    kills = [0]

    def storm() -> None:
        with redis_server.client() as r:
            end = time.monotonic() + 4
            while time.monotonic() < end and not stop.is_set():
                kills[0] += int(r.client_kill_filter(_type="normal", skipme=True))
                time.sleep(0.01)

    try:
        time.sleep(3)
        _submit_all(redis_server, reqs[:20])
        t = threading.Thread(target=storm)
        t.start()
        _submit_all(redis_server, reqs[20:])
        t.join()
        _wait(redis_server, {q["request_id"] for q in reqs}, proc=svc)
    finally:
        stop.set()
        svc.stop()
    assert kills[0] >= 5  # the workers lost their connections again and again
    _check_exact(redis_server, world, reqs)


def test_redis_full_then_freed(redis_server: RedisServer, world: World) -> None:
    """Redis at maxmemory with noeviction for 5 s (every write refused with OOM), then freed: the workers wait,
    nothing is dropped or dead-lettered, everything completes."""
    _opt_out(redis_server, world.opted_out)
    reqs = _requests(40, seed=4)
    _submit_all(redis_server, reqs)
    with redis_server.client() as r:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", "1")  # every write refused from now on
    svc = Service(redis_server, world).start()  # starting up while Redis is full, too
    try:
        with redis_server.client() as r:
            deadline = time.monotonic() + 120
            while _oom_refusals(r) == 0 and time.monotonic() < deadline:  # the workers are up and refused
                time.sleep(0.1)
            first = _oom_refusals(r)
            time.sleep(5)
            assert _oom_refusals(r) > first > 0 and not r.exists(KEYS.outcomes)  # refused all along
            r.config_set("maxmemory", "0")
        _wait(redis_server, {q["request_id"] for q in reqs}, proc=svc)
    finally:
        svc.stop()
    _check_exact(redis_server, world, reqs)


@pytest.mark.parametrize("keep_data", [True, False])
def test_redis_restarted_with_or_without_its_data(redis_server: RedisServer, world: World,
                                                  keep_data: bool) -> None:
    """Redis restarted with its AOF, or restarted empty (a failover to an empty replica, a FLUSHALL): the
    workers reconnect, recreate their group, and a request submitted after completes within 2 s."""
    _opt_out(redis_server, world.opted_out)
    first = _requests(20, seed=5, prefix="before")
    svc = Service(redis_server, world).start()
    try:
        _submit_all(redis_server, first)
        _wait(redis_server, {q["request_id"] for q in first}, proc=svc)
        redis_server.stop()
        if not keep_data:
            for f in redis_server.workdir.rglob("appendonly*"):
                if f.is_file():
                    f.unlink()
        time.sleep(1)
        redis_server.start()
        if not keep_data:
            _opt_out(redis_server, world.opted_out)
        back = time.monotonic()
        after = _requests(20, seed=6, prefix="after")
        _submit_all(redis_server, after[:1])
        _wait(redis_server, {after[0]["request_id"]}, timeout=60, proc=svc)
        recovered = time.monotonic() - back
        _submit_all(redis_server, after[1:])
        _wait(redis_server, {q["request_id"] for q in after}, proc=svc)
    finally:
        svc.stop()
    assert recovered < 2.0, f"first request after Redis came back took {recovered:.2f} s"
    _check_exact(redis_server, world, (first if keep_data else []) + after)


@pytest.mark.parametrize("dies_after", ["record", "plan"])
def test_a_retry_across_a_retention_boundary_sends_what_was_judged(redis_server: RedisServer, world: World,
                                                                   dies_after: str) -> None:
    """A worker dies right after the request was recorded (approved at once: with its plan), or right after the
    plan was read back at its dispatch; the retry comes after some cameras' footage expired. The retry sends
    exactly the recipient set the first attempt judged (not the smaller one of its own time, not a refusal)."""
    index = CameraIndex.open(world.index_dir)
    registry = AgencyRegistry.load(world.agencies)
    # a window whose 30-day cameras expire between the two attempts
    t1 = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
    start = t1 - timedelta(days=30, minutes=30)
    end = t1 - timedelta(days=30) + timedelta(seconds=5)
    t2 = t1 + timedelta(minutes=10)
    r = request(request_id="edge", area=square(0.45, LNG0, LAT0), start=start, end=end, submitted_at=t1)
    req = {f: getattr(r, f) for f in r.__dataclass_fields__}
    want_t1 = brute_force(world.ds, req["area"], start, end, t1)
    want_t2 = brute_force(world.ds, req["area"], start, end, t2)
    assert len(want_t2) < len(want_t1)  # the boundary is crossed between the attempts

    class Died(BaseException):
        """The worker process dying at that moment."""

    def worker(name: str, t: datetime) -> Worker:
        qs = QueueSettings.from_url(redis_server.url, batch_size=7)
        wf = Workflow(RedisStore.from_url(redis_server.url), registry,
                      Policy(auto_approve=True, owner_cap=100_000, rate_limit=100_000))
        return Worker(name, redis_server.client(), Pipeline(wf, index, Dispatcher(RedisSink(qs), qs)),
                      ServiceSettings(claim_idle_ms=20, block_ms=10), clock=lambda: t, queue=qs)

    first = worker("first", t1)
    # the step after which it dies: the record (the store's), or the dispatch's plans, whose next step appends
    where, name = ((first.pipeline.workflow.store, "create_many") if dies_after == "record" else
                   (first.pipeline.dispatcher.sink, "append_many"))
    step = getattr(where, name)

    def dies(*a: Any, **kw: Any) -> Any:
        if dies_after == "record":
            step(*a, **kw)
        raise Died()

    setattr(where, name, dies)
    with redis_server.client() as c:
        submit(c, req)
    with pytest.raises(Died):
        first.step()
    time.sleep(0.05)
    second = worker("second", t2)
    stop = threading.Event()
    th = threading.Thread(target=second.run, args=(stop,))
    th.start()
    deadline = time.monotonic() + 30
    while second.stats.dispatched == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    th.join()
    assert second.stats.dispatched == 1 and second.stats.claimed == 1
    with redis_server.client() as c:
        got = {}
        for _, fields in c.xrange(KEYS.notifications):
            _, notes = decode_batch(fields[b"data"])
            got.update({n.owner_id: list(n.camera_ids) for n in notes})
        assert c.xpending(KEYS.requests, "workers")["pending"] == 0 and not c.exists(KEYS.dead_letters)
    assert got == want_t1

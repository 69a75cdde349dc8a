"""Submissions at national scale through the two front doors, in the same run: over HTTP (two ``geodispatch api``
processes on one Redis) and through the Redis stream (``geodispatch serve --workers 2``), each request resolved
and dispatched at once (the load test's policy: auto-approval, no per-agency or per-owner limit). Off by default;
run with

    python -m pytest bench/bench_front_door.py --benchmark-only -p no:cacheprovider -s

``GEODISPATCH_BENCH_DOOR_CAMERAS`` sets the index size (default 10,000,000), ``GEODISPATCH_BENCH_DOOR_SECONDS``
each phase's length (default 20), ``GEODISPATCH_BENCH_DOOR_CLIENTS`` the clients of each phase (default 4).

Both phases are closed loops with the same clients: each sends a typical request (0.03-0.45 sq mi, a 15 min-12 h
window in the last 20 days, a random one of 50 agencies) and sends the next when it has the answer, so the
figures are each path's latency at that concurrency and the rate it sustains. Over HTTP a client is one keep-alive
connection to one of the two servers (half the clients each) with its agency's key, and the answer is the 202
(status ``dispatched``); through the stream a client appends the command (``XADD``) and waits for its outcome on the
submitters' outcomes stream, which one collector reads. Both paths run the same pipeline on the same Redis (AOF,
fsync every second, as in the load test) over the same memory-mapped index.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson
import pytest

from bench.bench_api import wait_for_http
from bench.loadtest import LOAD_POLICY, LoadSettings, World, build_world
from dispatcher.api import AGENCY, open_credentials
from dispatcher.keys import Keys
from dispatcher.service.client import read_outcomes, submit
from dispatcher.service.servers import RedisServer, free_port
from dispatcher.synthetic.requests import typical_requests

CAMERAS = int(os.environ.get("GEODISPATCH_BENCH_DOOR_CAMERAS", "10000000"))
SECONDS = float(os.environ.get("GEODISPATCH_BENCH_DOOR_SECONDS", "20"))
CLIENTS = int(os.environ.get("GEODISPATCH_BENCH_DOOR_CLIENTS", "4"))
AGENCIES = 50
#: Requests made for each phase (before it starts): more than it sends at 2,000/s, the throughput goal (a phase that
#: runs out stops early and says so; at 300/s, the old size, both phases ran out in 6-7 s of their 20 at ~1,000/s).
PER_PHASE = max(1_000, int(SECONDS * 2_000))


class _Doors:
    """The running world: Redis, two API processes, the stream workers, an API key per agency."""

    def __init__(self, world: World, redis_url: str, ports: list[int], keys: dict[str, str]) -> None:
        self.world, self.redis_url, self.ports, self.keys = world, redis_url, ports, keys


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait(timeout=120)


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Doors]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    work = tmp_path_factory.mktemp("front-door-bench")
    t = time.perf_counter()
    world = build_world(LoadSettings(cameras=CAMERAS, agencies=AGENCIES), work, lambda _: None)
    print(f"\n{CAMERAS:,} cameras generated, indexed and saved in {time.perf_counter() - t:.0f} s")
    (work / "policy.json").write_text(json.dumps(LOAD_POLICY))
    now = datetime.now(timezone.utc)
    procs: list[subprocess.Popen[bytes]] = []
    with RedisServer(work / "redis", appendfsync="everysec") as server:
        creds = open_credentials(redis_url=server.url)
        keys = {a.agency_id: creds.create(AGENCY, a.agency_id, now)[1] for a in world.agencies}
        common = ["--index", str(world.index_dir), "--redis-url", server.url, "--agencies",
                  str(world.agencies_path), "--policy", str(work / "policy.json")]
        ports = [free_port(), free_port()]
        try:
            for k, port in enumerate(ports):
                with (work / f"api-{k}.log").open("wb") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "dispatcher.cli", "api", *common, "--port", str(port),
                         "--rate-limit", "100000000/minute"], stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True))
            with (work / "serve.log").open("wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "dispatcher.cli", "serve", *common, "--workers", "2", "--auto-approve"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            for k, port in enumerate(ports):
                wait_for_http(port, procs[k], work / f"api-{k}.log")
            yield _Doors(world, server.url, ports, keys)
        finally:
            _stop(procs)


def _ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2)}


def _closed_loop(send: Callable[[int, dict[str, Any]], None], reqs: list[dict[str, Any]], seconds: float
                 ) -> dict[str, Any]:
    """``CLIENTS`` threads, each calling ``send(client, request)`` with the next request until ``seconds`` have
    passed; the latency of each call and the rate achieved."""
    taken = itertools.count()
    lat: list[list[float]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []
    load: list[float] = []
    t0 = time.perf_counter()
    end = t0 + seconds

    def client(c: int) -> None:
        try:
            while time.perf_counter() < end and (k := next(taken)) < len(reqs):
                s = time.perf_counter()
                send(c, reqs[k])
                lat[c].append(time.perf_counter() - s)
        except BaseException as exc:  # the phase fails with it, after the others stop
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
    for th in threads:
        th.start()
    while any(th.is_alive() for th in threads):
        time.sleep(1.0)
        load.append(os.getloadavg()[0])
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    done = [x for c in lat for x in c]
    return {"requests": len(done), "seconds": round(elapsed, 1), "req_per_s": round(len(done) / elapsed, 1),
            **_ms(done), "ran_out": len(done) >= len(reqs), "load_average": round(float(np.mean(load)), 2)}


def _over_http(d: _Doors, reqs: list[dict[str, Any]]) -> dict[str, Any]:
    conns = [http.client.HTTPConnection("127.0.0.1", d.ports[c % len(d.ports)], timeout=120) for c in range(CLIENTS)]

    def send(c: int, r: dict[str, Any]) -> None:
        body = orjson.dumps({k: v for k, v in r.items() if k != "submitted_at"})  # the server's clock decides
        conns[c].request("POST", "/v1/requests", body=body, headers={
            "Authorization": f"Bearer {d.keys[r['agency_id']]}", "Content-Type": "application/json"})
        resp = conns[c].getresponse()
        got = resp.read()
        assert resp.status == 202 and orjson.loads(got)["status"] == "dispatched", (resp.status, got[:300])

    try:
        return _closed_loop(send, reqs, SECONDS)
    finally:
        for conn in conns:
            conn.close()


def _through_the_stream(d: _Doors, reqs: list[dict[str, Any]]) -> dict[str, Any]:
    import redis

    r = redis.Redis.from_url(d.redis_url)
    stream = Keys().outcomes
    after = r.xinfo_stream(stream)["last-generated-id"] if r.exists(stream) else "0-0"  # only this phase's
    waiting: dict[str, threading.Event] = {}
    status: dict[str, str] = {}
    lock, stop = threading.Lock(), threading.Event()

    def collect() -> None:
        last = after
        while not stop.is_set():
            last, outs = read_outcomes(r, last, block_ms=100)
            for o in outs:
                with lock:
                    status[o["request_id"]] = o["outcome"]
                    ev = waiting.get(o["request_id"])
                if ev is not None:
                    ev.set()

    clients = [redis.Redis.from_url(d.redis_url) for _ in range(CLIENTS)]

    def send(c: int, req: dict[str, Any]) -> None:
        ev = threading.Event()
        with lock:
            waiting[req["request_id"]] = ev
        submit(clients[c], {**req, "submitted_at": datetime.now(timezone.utc).isoformat()})
        assert ev.wait(120), f"no outcome for {req['request_id']}"
        assert status[req["request_id"]] == "dispatched", status[req["request_id"]]

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    try:
        return _closed_loop(send, reqs, SECONDS)
    finally:
        stop.set()
        collector.join(5)


def test_submit_over_http_beside_the_stream(benchmark: Any, doors: _Doors) -> None:
    now = datetime.now(timezone.utc)
    agencies = doors.world.agencies
    warm = typical_requests(agencies, 4 * CLIENTS, 1, now, "warm-http")
    _over_http(doors, warm)  # each server's first resolves (page faults, kernels), not measured
    _through_the_stream(doors, typical_requests(agencies, 4 * CLIENTS, 2, now, "warm-stream"))

    by_http, by_stream = (typical_requests(agencies, PER_PHASE, seed, now, prefix) for seed, prefix in ((3, "h"),
                                                                                                         (4, "s")))

    def run() -> dict[str, Any]:
        return {"cameras": CAMERAS, "clients": CLIENTS, "http_2_api_processes": _over_http(doors, by_http),
                "stream_2_workers": _through_the_stream(doors, by_stream)}

    figures = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print(f"\nsubmit and dispatch at {CAMERAS:,} cameras, {CLIENTS} clients in a closed loop:")
    for name in ("http_2_api_processes", "stream_2_workers"):
        f = figures[name]
        print(f"  {name}: {f['requests']:,} requests in {f['seconds']} s, {f['req_per_s']} req/s, "
              f"p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, max {f['max_ms']} ms, load average {f['load_average']}"
              + (" (ran out of requests)" if f["ran_out"] else ""))
    assert figures["http_2_api_processes"]["requests"] > 0 and figures["stream_2_workers"]["requests"] > 0

"""HTTP cost of the front door: a submission over HTTP (``geodispatch api``, a uvicorn process on loopback)
against the same pipeline call in-process, on the embedded store, in the same run. Off by default; run with

    python -m pytest bench/bench_api.py --benchmark-only -p no:cacheprovider -s

Each round submits a new request (its own id), so both sides validate and record one request; requests wait for
review, so nothing is resolved or dispatched: the difference is the transport (HTTP, JSON, authentication, the
rate limit, the server's threads). The two sides alternate round by round, so whatever else the machine is doing
weighs on both alike. The figure to read is the **HTTP cost**: the HTTP percentile less the in-process one, p50
and p99 (``extra_info``, and printed). The client is one keep-alive ``http.client`` connection (its requests sent
in one write, Nagle off), not httpx, whose own cost is several times the server's; the floor is that client
asking the server for a path it does not have (a 404: the client, the server's HTTP parsing and routing, no key
and no store), measured in the same rounds.

With ``GEODISPATCH_BENCH_API_BASE`` naming another checkout of geodispatch (a worktree of the base commit), a
second server runs from that checkout, on its own embedded file, and its submissions and floor are measured in
the same interleaved rounds (``http_base``, ``floor_base``): before and after, on the same machine at the same
moment. With ``GEODISPATCH_BENCH_API_GRANIAN=1``, one more server of this checkout runs the same app on granian
instead of uvicorn (``bench/granian_api.py``; granian is in the ``bench`` extra), measured in the same rounds
(``http_granian``, ``floor_granian``).

``http_layer_cpu_ms`` is the figure of the goal (the HTTP layer under 1 ms a request): a server's CPU per
submission less the in-process call's, the same pipeline work on both sides.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dispatcher.api import AGENCY, Backend, open_backend
from dispatcher.api.credentials import SqliteCredentials
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index.camera_index import CameraIndex
from dispatcher.service.servers import free_port
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.pipeline import Submit
from dispatcher.workflow.policy import Policy
from tests import data
from tests.video_requests import JOINED, LAT0, LNG0, square

ROUNDS = int(os.environ.get("GEODISPATCH_BENCH_API_ROUNDS", "1000"))
#: Another checkout whose server is measured beside this one's, or None.
BASE = os.environ.get("GEODISPATCH_BENCH_API_BASE") or None
#: Whether a granian server of this checkout is measured too.
GRANIAN = os.environ.get("GEODISPATCH_BENCH_API_GRANIAN", "") not in ("", "0")
WARMUP = 50
#: The served process judges requests by the wall clock: both sides submit at this time.
_NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _body(rid: str) -> dict[str, Any]:
    return {"request_id": rid, "agency_id": "il-chicago", "case_number": "2026-001234", "incident_type": "burglary",
            "investigator_contact": "det.smith@chicagopolice.example", "message": "Burglary on the block.",
            "area": square(0.1), "start": (_NOW - timedelta(hours=5)).isoformat(),
            "end": (_NOW - timedelta(hours=3)).isoformat()}


def _cpu_s(pid: int) -> float:
    """The CPU time a process has used (user and system, its ended threads included), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_http(port: int, proc: subprocess.Popen[bytes], log: Path, stall_s: float = 120) -> None:
    """Until the server at ``port`` answers, however long it takes while it works: the wait ends in failure (the
    end of its log) only when its process has ended, or has used no CPU for ``stall_s`` (stuck, not starting). A
    fixed time could not tell a start on a cold Numba cache (every kernel compiled, minutes on a loaded machine)
    from a hang."""
    cpu, moved = _cpu_s(proc.pid), time.monotonic()
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/openapi.json")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.2)
        now_cpu = _cpu_s(proc.pid)
        if now_cpu != cpu:
            cpu, moved = now_cpu, time.monotonic()
        assert time.monotonic() - moved < stall_s, f"no CPU used for {stall_s} s, not answering: " + \
            log.read_text()[-2000:]


@dataclass
class Server:
    """A ``geodispatch api`` process: its port, an agency's key, its pid (for its CPU time)."""

    port: int
    key: str
    pid: int


def _start(tmp: Path, name: str, tree: Path | None, procs: list[subprocess.Popen[bytes]],
           command: tuple[str, ...] = ("dispatcher.cli", "api")) -> Server:
    """``geodispatch api`` from this checkout (``tree`` None) or from ``tree``, on the embedded file ``name``;
    ``command``, the module run with the api command's options (``bench.granian_api``: the same on granian)."""
    creds = SqliteCredentials(tmp / f"{name}.sqlite")
    _, key = creds.create(AGENCY, "il-chicago", _NOW)
    creds.close()
    env = dict(os.environ) if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
    port = free_port()
    with (tmp / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", *command, "--index", str(tmp / "index"),
                                 "--store", str(tmp / f"{name}.sqlite"), "--agencies", str(tmp / "agencies.parquet"),
                                 "--policy", str(tmp / "policy.json"), "--port", str(port),
                                 "--rate-limit", "1000000/minute"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tree)
    procs.append(proc)
    wait_for_http(port, proc, tmp / f"{name}.log")
    return Server(port, key, proc.pid)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Backend, dict[str, Server]]]:
    """The in-process backend, and ``geodispatch api`` in a process of its own (as deployed: the client does not
    share its interpreter), each on its own embedded file, over the same index; with :data:`BASE`, the base
    checkout's server too."""
    tmp = tmp_path_factory.mktemp("api-bench")
    cams = data.cameras(5_000, seed=3, cx=LNG0, cy=LAT0, spread=0.01)
    index = CameraIndex.build(cams, data.owners(cams, seed=3))
    index.save(tmp / "index")
    registry = AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL",
                                      geodesic_circle(LNG0, LAT0, 20_000), JOINED)])
    registry.save_parquet(tmp / "agencies.parquet")
    (tmp / "policy.json").write_text(json.dumps({"rate_limit": 10**9}))
    backend = open_backend(index, registry, Policy(rate_limit=10**9), clock=lambda: _NOW, store=tmp / "inproc.sqlite")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        servers = {"": _start(tmp, "served", None, procs)}
        if BASE is not None:
            servers["_base"] = _start(tmp, "base", Path(BASE).resolve(), procs)
        if GRANIAN:
            servers["_granian"] = _start(tmp, "granian", None, procs, ("bench.granian_api",))
        yield backend, servers
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        backend.close()


def _ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def test_http_cost_of_a_submission(benchmark: Any, served: tuple[Backend, dict[str, Server]]) -> None:
    backend, servers = served
    conns = {tag: http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30) for tag, srv in servers.items()}
    ids = (f"r-{k}" for k in itertools.count())

    def in_process() -> None:
        out = backend.pipeline.run([Submit(_body(next(ids)), agency="il-chicago")], _NOW)[0]
        assert out.status == "submitted", out

    def over_http(tag: str) -> Callable[[], None]:
        conn = conns[tag]
        headers = {"Authorization": f"Bearer {servers[tag].key}", "Content-Type": "application/json"}

        def call() -> None:
            conn.request("POST", "/v1/requests", body=json.dumps(_body(next(ids))).encode(), headers=headers)
            r = conn.getresponse()
            assert r.status == 202, r.read()
            r.read()
        return call

    def floor(tag: str) -> Callable[[], None]:
        conn = conns[tag]

        def call() -> None:
            conn.request("GET", "/v1/nothing-here")
            r = conn.getresponse()
            r.read()
            assert r.status == 404
        return call

    sides: dict[str, Callable[[], None]] = {"in_process": in_process}
    pids: dict[str, int] = {}
    for tag, srv in servers.items():
        sides[f"http{tag}"], sides[f"floor{tag}"] = over_http(tag), floor(tag)
        pids[f"http{tag}"] = pids[f"floor{tag}"] = srv.pid

    def cpu(name: str) -> float:
        return time.thread_time() if name == "in_process" else _cpu_s(pids[name])

    def run() -> dict[str, Any]:
        times: dict[str, list[float]] = {name: [] for name in sides}
        used = dict.fromkeys(sides, 0.0)  # the in-process thread's CPU time, the server process's
        for k in range(WARMUP + ROUNDS):
            order = list(sides.items())
            if k % 2:
                order.reverse()
            for name, fn in order:
                c0, t0 = cpu(name), time.perf_counter()
                fn()
                t1 = time.perf_counter()
                c1 = cpu(name)
                if k >= WARMUP:
                    times[name].append(t1 - t0)
                    used[name] += c1 - c0
        figures: dict[str, Any] = {name: _ms(v) for name, v in times.items()}
        for tag in servers:
            figures[f"http_cost{tag}"] = {p: round(figures[f"http{tag}"][p] - figures["in_process"][p], 3)
                                          for p in ("p50_ms", "p99_ms")}
        figures["cpu_ms_per_call"] = {name: round(c / ROUNDS * 1e3, 3) for name, c in used.items()}
        figures["http_layer_cpu_ms"] = {f"http{tag}": round((used[f"http{tag}"] - used["in_process"]) / ROUNDS * 1e3,
                                                            3) for tag in servers}
        figures["rounds"] = ROUNDS
        figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
        return figures

    try:
        figures = benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        for conn in conns.values():
            conn.close()
    benchmark.extra_info.update(figures)
    print("\nsubmit, ms (p50 / p99):",
          *(f"{name} {f['p50_ms']:.3f} / {f['p99_ms']:.3f}" for name, f in figures.items()
            if isinstance(f, dict) and "p50_ms" in f),
          "CPU ms a call (in-process thread; the server process): " + ", ".join(
              f"{name} {v:.3f}" for name, v in figures["cpu_ms_per_call"].items()),
          "the HTTP layer's CPU ms a submission (the server's less in-process): " + ", ".join(
              f"{name} {v:.3f}" for name, v in figures["http_layer_cpu_ms"].items()),
          f"load average {figures['load_average']}", sep="\n  ")
    assert figures["http"]["p50_ms"] > 0

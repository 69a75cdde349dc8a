"""Throughput of ``geodispatch serve`` on a 3-master Redis Cluster with the work in 1, 2 and 3 shards, and the CPU
each request costs: in each master, in all of Redis, and in the worker processes. Off by default; run with

    python -m pytest bench/bench_cluster.py --benchmark-only -p no:cacheprovider -s

``GEODISPATCH_BENCH_CLUSTER_CAMERAS`` sets the index size (default 200,000), ``GEODISPATCH_BENCH_CLUSTER_REQUESTS``
the requests of each phase (default 20,000: a phase of a few seconds, so that the CPU read at 10 ms ticks is
within a percent or two), ``GEODISPATCH_BENCH_CLUSTER_WORKERS`` the ``serve --workers`` (default 2),
``GEODISPATCH_BENCH_CLUSTER_ROUNDS`` how many times the four phases run (default 2), in alternating order (the
second round backwards), each ratio taken within its round. The same run measures one plain redis-server as the
baseline. Each phase queues its requests first
(typical ones, 0.03-0.45 sq mi, in the shards' streams), then starts ``serve`` and measures from the first outcome
to the last: the rate a backlog drains at. CPU is read from ``/proc`` for every redis-server and every serve
process over the same interval. On a machine of 2 cores the absolute rate cannot grow with shards (workers and
masters share the cores); what shows the scaling is where the Redis CPU goes: with one shard one master does all
of it, and its share is the bound a cluster of more cores lifts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from bench.loadtest import serve_inputs
from dispatcher.connections import connect
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.service.client import read_outcomes, submit
from dispatcher.service.servers import RedisClusterServers, RedisServer
from dispatcher.synthetic.requests import typical_requests

CAMERAS = int(os.environ.get("GEODISPATCH_BENCH_CLUSTER_CAMERAS", "200000"))
REQUESTS = int(os.environ.get("GEODISPATCH_BENCH_CLUSTER_REQUESTS", "20000"))
ROUNDS = int(os.environ.get("GEODISPATCH_BENCH_CLUSTER_ROUNDS", "2"))
WORKERS = int(os.environ.get("GEODISPATCH_BENCH_CLUSTER_WORKERS", "2"))
_TICK = os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are not installed")
    work = tmp_path_factory.mktemp("cluster-bench")
    now = datetime.now(timezone.utc)
    _, agencies = serve_inputs(work, CAMERAS, 9, now)
    # 3 masters, no replicas: what is measured is how the masters share the work (AOF as in production); and one
    # plain redis-server, the same run's baseline
    with RedisClusterServers(work / "cluster", replicas=0, appendfsync="everysec") as cluster, \
            RedisServer(work / "single", appendfsync="everysec") as single:
        yield cluster, single, work, agencies, now


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def _phase(at: RedisClusterServers | RedisServer, work: Path, agencies: Any, now: datetime,
           shards: int) -> dict[str, Any]:
    if isinstance(at, RedisClusterServers):
        at.flush()
        url, servers = f"{at.url}&shards={shards}", [n for n in at.nodes if n.proc is not None]
    else:
        with at.client() as c:
            c.flushall()
        url, servers = at.url, [at]
    qs = QueueSettings.from_url(url)
    client = connect(qs)
    reqs = typical_requests(agencies, REQUESTS, seed=shards, now=now, prefix=f"s{shards}")
    for first in range(0, len(reqs), 500):
        pipe = client.pipeline(transaction=False)
        for r in reqs[first:first + 500]:
            submit(pipe, r, keys=qs.keys)  # type: ignore[arg-type]
        pipe.execute()
    proc = subprocess.Popen([sys.executable, "-m", "dispatcher.cli", "serve", "--index", str(work / "idx"),
                             "--redis-url", url, "--workers", str(WORKERS), "--agencies",
                             str(work / "agencies.parquet"), "--policy", str(work / "policy.json"), "--auto-approve"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    positions, counted = ["0-0"] * shards, [0]

    def done() -> int:  # read on from where the last look stopped, so that looking costs Redis next to nothing
        for n, k in enumerate(qs.keys.all_shards):
            positions[n], outs = read_outcomes(client, positions[n], count=10 ** 6, keys=k, operators=True)
            counted[0] += len(outs)
        return counted[0]

    def cpu() -> tuple[list[float], float]:
        return ([_cpu_s(n.proc.pid) for n in servers if n.proc is not None],
                sum(_cpu_s(p) for p in _tree(proc.pid)))
    try:
        deadline = time.monotonic() + 600
        while done() == 0:
            assert time.monotonic() < deadline and proc.poll() is None, "serve did not start"
            time.sleep(0.05)
        t0, (redis0, workers0) = time.monotonic(), cpu()
        while (n := done()) < len(reqs):
            assert time.monotonic() < deadline and proc.poll() is None, f"{n} of {len(reqs)} done"
            time.sleep(0.05)
        t1, (redis1, workers1) = time.monotonic(), cpu()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    _, outs = read_outcomes(client, count=10 ** 7, keys=qs.keys, operators=True)
    handled = len(outs) - 1  # requests completed between the two readings (the first was done at t0)
    per_master = [round((b - a) / handled * 1e6, 1) for a, b in zip(redis0, redis1, strict=True)]
    notified = [sum(1 for _ in client.xrange(s)) for s in qs.keys.notification_streams]
    return {"redis": "cluster of 3 masters" if len(servers) > 1 else "one redis-server", "shards": shards,
            "requests": len(outs), "dispatched": sum(o["outcome"] == "dispatched" for o in outs),
            "seconds": round(t1 - t0, 2), "requests_per_s": round(handled / (t1 - t0), 1),
            "redis_cpu_us_per_request_by_master": per_master,
            "redis_cpu_us_per_request": round(sum(per_master), 1),
            "busiest_master_share": round(max(per_master) / max(sum(per_master), 1e-9), 3),
            "worker_cpu_us_per_request": round((workers1 - workers0) / handled * 1e6, 1),
            "notification_entries_by_shard": notified}


def test_throughput_by_shards(benchmark: Any, world: Any) -> None:
    cluster, single, work, agencies, now = world
    order: list[tuple[Any, int]] = [(single, 1), *((cluster, shards) for shards in (1, 2, 3))]

    def run() -> list[dict[str, Any]]:
        phases = []
        for k in range(ROUNDS):
            load = [round(x, 2) for x in os.getloadavg()]
            got = {(at is cluster, shards): _phase(at, work, agencies, now, shards)
                   for at, shards in (order if k % 2 == 0 else order[::-1])}
            base = got[(False, 1)]["requests_per_s"]
            for _, p in sorted(got.items()):
                p.update(round=k, load_average_before=load,
                         requests_per_s_ratio_to_one_server=round(p["requests_per_s"] / base, 2))
                phases.append(p)
        return phases
    phases = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["phases"] = phases
    print(json.dumps({"cameras": CAMERAS, "requests": REQUESTS, "workers": WORKERS, "cpus": os.cpu_count(),
                      "load_average": os.getloadavg(), "phases": phases}, indent=1))
    assert all(p["dispatched"] == REQUESTS for p in phases)

"""What a batch costs a worker: the code ``geodispatch serve`` runs (:func:`dispatcher.service.supervise.open_worker`,
one consumer thread), fed typical requests already waiting on the requests stream of a fresh ``redis-server``, read
``batch`` at a time; the worker's CPU per request and per batch, redis-server's CPU per request, and the wall time
of a batch. A straight line through CPU per batch against its size splits the cost into what every batch pays
whatever its size (its round trips: read, look-up, record, plans, appends, marks, outcomes) and what each request
adds. Under light load a worker's batches hold one or two requests (the load test's 10M runs at 500 requests/s: 1.4
on average), so the fixed part decides its CPU per request. Run with

    python -m bench.batch_cost [--cameras 1000000] [--requests 1200] [--batches 1,2,4,16,64] [--gaps-ms 0,5]

(``PYTHONPATH`` pointing at another checkout measures that one's worker with this same workload.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.loadtest import LOAD_POLICY, serve_inputs
from dispatcher.service import commands
from dispatcher.service.servers import RedisServer
from dispatcher.service.supervise import open_worker
from dispatcher.service.worker import ServiceSettings
from dispatcher.synthetic.requests import typical_requests
from dispatcher.workflow.pipeline import Submit

#: Batches handled before the measured ones (connections opened, scripts loaded, the first pages of the index read).
WARM_BATCHES = 4


def _one(srv: RedisServer, work: Path, entries: list[dict[bytes, bytes]], batch: int, gap_ms: float
         ) -> dict[str, Any]:
    """``entries`` put on the stream, then handled ``batch`` at a time by a worker of one thread, idle ``gap_ms``
    between two batches."""
    settings = ServiceSettings(read_count=batch, read_count_max=batch, threads=1, claim_idle_ms=3_600_000,
                               block_ms=50)
    opened = open_worker(f"batch-{batch}", str(work / "idx"), srv.url, str(work / "agencies.parquet"), LOAD_POLICY,
                         settings, threading.Event())
    assert opened is not None
    worker = opened[0][0]
    pipe = worker.r.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(worker.keys.requests, fields)  # type: ignore[arg-type]
    pipe.execute()
    for _ in range(WARM_BATCHES):
        worker.step()
    assert srv.proc is not None
    server = psutil.Process(srv.proc.pid)
    handled0, dispatched0, batches = worker.stats.handled, worker.stats.dispatched, 0
    redis0, cpu, t = sum(server.cpu_times()[:2]), time.process_time(), time.perf_counter()
    while worker.stats.handled - handled0 < len(entries) - WARM_BATCHES * batch:
        worker.step()
        batches += 1
        if gap_ms:
            time.sleep(gap_ms / 1000)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - t - batches * gap_ms / 1000
    n = worker.stats.handled - handled0
    return {"batch": batch, "gap_ms": gap_ms, "requests": n, "batches": batches,
            "dispatched": worker.stats.dispatched - dispatched0,
            "worker_cpu_ms_per_request": 1e3 * cpu / n, "worker_cpu_ms_per_batch": 1e3 * cpu / batches,
            "redis_cpu_ms_per_request": 1e3 * (sum(server.cpu_times()[:2]) - redis0) / n,
            "wall_ms_per_batch": 1e3 * wall / batches}


def run(cameras: int, requests: int, batches: list[int], seed: int = 0, gaps_ms: tuple[float, ...] = (0.0,)
        ) -> dict[str, Any]:
    """Every batch size, and every idle gap between batches (``gaps_ms``: a worker under light load waits for
    requests between two batches), on the same index and its own ``requests`` typical requests (plus the
    warm-up's), one redis-server for all (a fresh worker each); per gap, the fit of CPU per batch against batch
    size."""
    now = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="geodispatch-batch-cost-") as tmp:
        work = Path(tmp)
        _, agencies = serve_inputs(work, cameras, seed, now)
        per = requests + WARM_BATCHES * max(batches)
        runs = [(b, g) for g in gaps_ms for b in batches]
        reqs = typical_requests(agencies, per * len(runs), seed, now, "batch-cost")
        rows = []
        with RedisServer(work / "redis", appendfsync="everysec") as srv:
            for k, (b, g) in enumerate(runs):
                entries = [{commands.FIELD: commands.encode(Submit(r, j))}
                           for j, r in enumerate(reqs[k * per:(k + 1) * per])]
                rows.append(_one(srv, work, entries[:requests + WARM_BATCHES * b], b, g))
    fits = {}
    for g in gaps_ms:
        mine = [r for r in rows if r["gap_ms"] == g]
        sizes = np.array([r["batch"] for r in mine], dtype=np.float64)
        per_batch = np.array([r["worker_cpu_ms_per_batch"] for r in mine])
        slope, fixed = np.polyfit(sizes, per_batch, 1) if len(mine) > 1 else (np.nan, np.nan)
        fits[str(g)] = {"fixed_ms_per_batch": float(fixed), "ms_per_request": float(slope)}
    return {"cameras": cameras, "rows": rows, "fit": fits}


def report(result: dict[str, Any]) -> str:
    lines = [f"A worker's cost by batch size, {result['cameras']:,} cameras (one thread, requests waiting):",
             "| batch | idle between batches, ms | requests | worker CPU ms/request | worker CPU ms/batch | "
             "redis-server CPU ms/request | wall ms/batch |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['batch']} | {r['gap_ms']:g} | {r['requests']} | {r['worker_cpu_ms_per_request']:.3f} | "
                     f"{r['worker_cpu_ms_per_batch']:.3f} | {r['redis_cpu_ms_per_request']:.3f} | "
                     f"{r['wall_ms_per_batch']:.3f} |")
    for g, f in result["fit"].items():
        lines.append(f"idle {float(g):g} ms between batches: CPU per batch ~ {f['fixed_ms_per_batch']:.3f} ms + "
                     f"{f['ms_per_request']:.3f} ms a request")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=1200, help="Measured requests per batch size.")
    p.add_argument("--batches", default="1,2,4,16,64")
    p.add_argument("--gaps-ms", default="0", help="Idle time between two batches (comma-separated: each is a run).")
    p.add_argument("--json-out", type=Path, default=None)
    a = p.parse_args()
    result = run(a.cameras, a.requests, [int(x) for x in a.batches.split(",")],
                 gaps_ms=tuple(float(x) for x in a.gaps_ms.split(",")))
    print(report(result))
    if a.json_out:
        a.json_out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

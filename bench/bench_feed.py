"""Change-to-visible through the camera change feed: how long a change takes from its append to being applied in
every ``serve`` worker, p50/p99, at ``GEODISPATCH_BENCH_FEED_CHANGES`` changes/s (default 1,000) alone and beside
``GEODISPATCH_BENCH_FEED_REQUESTS`` requests/s (default 1,000), with the same run's request figures without
changes as the baseline. Real processes: a redis-server and ``geodispatch serve --workers 2 --feed-dir``. Off by
default; run with

    python -m pytest bench/bench_feed.py --benchmark-only -p no:cacheprovider -s

``GEODISPATCH_BENCH_FEED_CAMERAS`` sets the index size (default 200,000), ``GEODISPATCH_BENCH_FEED_SECONDS`` each
phase's length (default 10). A change is visible in a worker once applied there: each worker measures it against
the entry's stream id (Redis's clock, the same machine's), in ``Keys.feed_lag``. Every request is a typical one
(0.03-0.45 sq mi); its latency runs from its submission to its outcome on the operators' stream.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from datetime import datetime, timezone
from typing import Any

import numpy as np
import psutil
import pytest
import redis

from bench.loadtest import serve_inputs
from dispatcher.keys import Keys
from dispatcher.service.client import read_outcomes, submit
from dispatcher.service.feed import Change, publish_changes
from dispatcher.service.servers import RedisServer
from dispatcher.synthetic.requests import typical_requests

CAMERAS = int(os.environ.get("GEODISPATCH_BENCH_FEED_CAMERAS", "200000"))
CHANGES = float(os.environ.get("GEODISPATCH_BENCH_FEED_CHANGES", "1000"))
REQUESTS = float(os.environ.get("GEODISPATCH_BENCH_FEED_REQUESTS", "1000"))
SECONDS = float(os.environ.get("GEODISPATCH_BENCH_FEED_SECONDS", "10"))
K = Keys()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    work = tmp_path_factory.mktemp("feed-bench")
    now = datetime.now(timezone.utc)
    data, agencies = serve_inputs(work, CAMERAS, 5, now)
    camera_ids = data.cameras.column("camera_id").to_numpy()
    with RedisServer(work / "redis") as server:
        proc = subprocess.Popen([sys.executable, "-m", "dispatcher.cli", "serve", "--index", str(work / "idx"),
                                 "--redis-url", server.url, "--workers", "2", "--agencies",
                                 str(work / "agencies.parquet"), "--policy", str(work / "policy.json"),
                                 "--auto-approve", "--feed-dir", str(work / "feed"), "--snapshot-every", "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        try:
            yield server, agencies, camera_ids, now, proc
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": int(a.shape[0]), "p50": round(float(np.percentile(a, 50)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2)}


def _paced(rate: float, seconds: float, send: Any) -> int:
    """Call ``send(n)`` every 10 ms with the count due by then; the count sent."""
    t0, sent = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - t0) < seconds:
        due = int(rate * elapsed) - sent
        if due > 0:
            send(due)
            sent += due
        time.sleep(0.01)
    return sent


def _workers_cpu(proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds (user + system) the serve command's worker processes used so far."""
    total = 0.0
    for child in psutil.Process(proc.pid).children():
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _phase(server: RedisServer, agencies: Any, camera_ids: np.ndarray, now: datetime, proc: subprocess.Popen[bytes],
           tag: str, changes: float, requests: float) -> dict[str, Any]:
    r = redis.Redis.from_url(server.url)
    lag_from = r.xinfo_stream(K.feed_lag)["last-generated-id"] if r.exists(K.feed_lag) else "0-0"
    out_from = r.xinfo_stream(K.operator_outcomes)["last-generated-id"] if r.exists(K.operator_outcomes) else "0-0"
    rng = np.random.default_rng(zlib.crc32(tag.encode()))
    reqs = typical_requests(agencies, int(requests * SECONDS) + 10, seed=zlib.crc32(tag.encode()) % 2 ** 31, now=now,
                            prefix=f"bench-{tag}")
    figures: dict[str, Any] = {"phase": tag, "changes_per_s": changes, "requests_per_s": requests}

    last = [0]

    def send_changes(n: int) -> None:  # sharing toggles of random cameras: the commonest change, cheap to make
        ids = rng.choice(camera_ids, n)
        last[0] = publish_changes(r, [Change.sharing([int(i)], bool(rng.random() < 0.5)) for i in ids])[-1]

    pending = iter(reqs)

    def send_requests(n: int) -> None:
        pipe = r.pipeline(transaction=False)
        for _ in range(n):
            req = next(pending, None)
            if req is not None:
                submit(pipe, req, trace=time.time())  # type: ignore[arg-type]
        pipe.execute()

    threads = []
    counts: dict[str, int] = {}
    if changes:
        threads.append(threading.Thread(target=lambda: counts.__setitem__("changes",
                                                                          _paced(changes, SECONDS, send_changes))))
    if requests:
        threads.append(threading.Thread(target=lambda: counts.__setitem__("requests",
                                                                          _paced(requests, SECONDS, send_requests))))
    cpu0, load0 = _workers_cpu(proc), os.getloadavg()
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the backlog drained before the figures are read (and before the next phase starts)
    start_from = out_from.decode() if isinstance(out_from, bytes) else out_from
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, outs = read_outcomes(r, start_from, count=10 ** 7, operators=True)
        if len(outs) >= counts.get("requests", 0):
            break
        time.sleep(0.5)
    while time.monotonic() < deadline:  # every worker applied the last change (its lag is recorded)
        applied = [int(v) for v in r.hgetall(K.feed_applied).values()]
        if len(applied) >= 2 and min(applied) >= last[0]:
            break
        time.sleep(0.1)
    cpu = _workers_cpu(proc) - cpu0
    time.sleep(0.2)
    lags: dict[str, list[float]] = {}
    for _, fields in r.xrange(K.feed_lag, min=f"({lag_from.decode() if isinstance(lag_from, bytes) else lag_from}"):
        worker = fields[b"w"].decode()
        if worker != "snapshotter":
            lags.setdefault(worker, []).extend(float(x) for x in fields[b"ms"].decode().split(","))
    _, outs = read_outcomes(r, start_from, count=10 ** 7, operators=True)
    latency = [(o["done"] - float(o["trace"])) * 1000 for o in outs if o.get("trace") and o.get("done")]
    last = max((o["done"] for o in outs if o.get("done")), default=t0)
    figures["requests_per_s_achieved"] = round(len(outs) / max(last - t0, 1e-9), 1) if outs else 0.0
    figures.update(sent=counts, change_to_visible_ms={w: _pct(v) for w, v in sorted(lags.items())},
                   change_to_visible_all_workers_ms=_pct([x for v in lags.values() for x in v]),
                   requests_done=len(outs), request_latency_ms=_pct(latency),
                   dispatched=sum(o["outcome"] == "dispatched" for o in outs),
                   load_average_before=[round(x, 2) for x in load0],
                   load_average_after=[round(x, 2) for x in os.getloadavg()], workers_cpu_s=round(cpu, 2))
    if counts.get("changes") and not counts.get("requests"):  # both workers apply each change
        figures["workers_cpu_us_per_change_each"] = round(1e6 * cpu / (2 * counts["changes"]), 1)
    if counts.get("requests"):
        figures["workers_cpu_us_per_request"] = round(1e6 * cpu / counts["requests"], 1)
    return figures


def test_change_to_visible_in_every_worker(benchmark: Any, world: Any) -> None:
    server, agencies, camera_ids, now, proc = world
    r = redis.Redis.from_url(server.url)
    # Both workers ready (serve says so once each has caught up and warmed up): not their first feed position,
    # which a worker records before it builds its pipelines (a cold start's compiles then fell in the first phase).
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("serving with"):
            break
    else:
        raise AssertionError(f"serve exited with {proc.wait()} before it was ready")
    assert len(r.hgetall(K.feed_applied)) >= 2

    def run() -> list[dict[str, Any]]:
        return [_phase(server, agencies, camera_ids, now, proc, "requests-alone", 0, REQUESTS),
                _phase(server, agencies, camera_ids, now, proc, "changes-alone", CHANGES, 0),
                _phase(server, agencies, camera_ids, now, proc, "changes-and-requests", CHANGES, REQUESTS)]
    phases = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["phases"] = phases
    print(json.dumps({"cameras": CAMERAS, "seconds": SECONDS, "cpus": os.cpu_count(), "phases": phases}, indent=1))
    assert all(p["change_to_visible_all_workers_ms"]["n"] > 0 for p in phases[1:])

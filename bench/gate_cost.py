"""Redis time of the owners' gate per owner: typical requests (57 owners each, the mean at 10M cameras) dispatched
16 at a time, as a worker does, through the owners' gate and, in the same run on the same redis-server, with no
gate (the batch's append alone); the gate's cost per owner is the difference of the append script's
``INFO commandstats`` time (EVALSHA, nested commands included) over the owners sent, and of the redis-server
process's CPU time (steadier on a loaded machine, where a command's wall time includes the waits for a core). Run
with

    python -m bench.gate_cost [requests]

(``PYTHONPATH`` pointing at another checkout measures that one's gate with this same workload.)
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.gate import AdmitAll, OwnerGate
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink
from dispatcher.dispatch.wire import NotificationHeader
from dispatcher.index.recipients import RecipientSet
from dispatcher.service.servers import RedisServer
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.store import RedisStore

OWNERS_PER_REQUEST = 57
PER_STEP = 16
NOW = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)


def _jobs(n: int, seed: int, tag: str) -> list[tuple[NotificationHeader, RecipientSet]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        owners = np.unique(rng.integers(1, 10_000_000, OWNERS_PER_REQUEST * 2))[:OWNERS_PER_REQUEST]
        rs = RecipientSet(owners.astype(np.int64), owners.astype(np.int64) * 10,
                          np.arange(owners.shape[0] + 1, dtype=np.int64))
        out.append((NotificationHeader(f"{tag}-{k}", "ag-1", "Springfield PD", "C-42", "burglary",
                                       NOW - timedelta(hours=5), NOW - timedelta(hours=3), "Please share"), rs))
    return out


def _run(srv: RedisServer, qs: QueueSettings, jobs: list[Any], gate: Any) -> dict[str, float]:
    d = Dispatcher(RedisSink(qs), qs)
    d.dispatch_many(jobs[:PER_STEP], gate, NOW)  # scripts loaded, connections open
    assert srv.proc is not None
    server = psutil.Process(srv.proc.pid)
    with srv.client() as c:
        c.config_resetstat()
        before = sum(server.cpu_times()[:2])
        cpu, t = time.process_time(), time.perf_counter()
        for lo in range(PER_STEP, len(jobs), PER_STEP):
            d.dispatch_many(jobs[lo:lo + PER_STEP], gate, NOW + timedelta(seconds=lo))
        cpu, t = time.process_time() - cpu, time.perf_counter() - t
        server_cpu = sum(server.cpu_times()[:2]) - before
        stats = c.info("commandstats")
    owners = sum(rs.n_owners for _, rs in jobs[PER_STEP:])
    script = stats.get("cmdstat_evalsha", {"usec": 0, "calls": 0})
    return {"owners": owners, "script_us": script["usec"] / owners, "calls": script["calls"],
            "cpu_us": cpu / owners * 1e6, "redis_cpu_us": server_cpu / owners * 1e6, "wall_s": t}


def main(n: int) -> None:
    with RedisServer(Path(tempfile.mkdtemp()), appendfsync="everysec") as srv:
        qs = QueueSettings.from_url(srv.url)
        store = RedisStore.from_url(srv.url)
        got = {"gate": _run(srv, qs, _jobs(n, 1, "g"), OwnerGate(store, Policy())),
               "none": _run(srv, qs, _jobs(n, 2, "n"), AdmitAll())}
        for name, r in got.items():
            print(f"{name:5} {r['owners']:7.0f} owners: scripts {r['script_us']:5.2f} µs/owner ({r['calls']:.0f} "
                  f"calls), redis-server CPU {r['redis_cpu_us']:5.2f} µs/owner, worker CPU {r['cpu_us']:5.1f} "
                  f"µs/owner, {r['wall_s']:.2f} s")
        g, z = got["gate"], got["none"]
        print(f"the gate per owner: {g['script_us'] - z['script_us']:.2f} µs of script time, "
              f"{g['redis_cpu_us'] - z['redis_cpu_us']:.2f} µs of redis-server CPU, "
              f"{g['cpu_us'] - z['cpu_us']:.2f} µs of worker CPU")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)

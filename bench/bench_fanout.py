"""Fan-out of one request to 1M recipients: batches encoded with orjson straight from numpy and appended by the
exactly-once Lua script, pipelined, against a one-XADD-per-recipient pipelined baseline measured in the same run
on the same redis-server. Off by default; run with

    python -m pytest bench/bench_fanout.py --benchmark-only -p no:cacheprovider

``GEODISPATCH_BENCH_RECIPIENTS`` sets the size (default 1,000,000). The recipient set is synthetic (ascending
owners, 1-3 cameras each) so that exactly that many owners are dispatched; resolve latency is measured in
bench_index.py. The ratio to read is the baseline's mean over ours.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone

import numpy as np
import orjson
import pytest

from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink
from dispatcher.dispatch.wire import NotificationHeader, decode_batch
from dispatcher.index.recipients import RecipientSet
from dispatcher.keys import Keys
from dispatcher.service.servers import RedisServer

N = int(os.environ.get("GEODISPATCH_BENCH_RECIPIENTS", "1000000"))
NOW = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)


def recipients(n: int) -> RecipientSet:
    rng = np.random.default_rng(1)
    owners = np.arange(n, dtype=np.int64) * 3 + 1_000_000
    counts = rng.integers(1, 4, size=n)
    off = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=off[1:])
    return RecipientSet(owners, np.arange(off[-1], dtype=np.int64) + 5_000_000_000, off)


HEADER = NotificationHeader("bench", "ag-1", "Springfield PD", "C-42", "burglary",
                            datetime(2026, 10, 30, 21, tzinfo=timezone.utc),
                            datetime(2026, 10, 30, 23, tzinfo=timezone.utc), "Please share footage")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    # The throughput figure is for the default production durability the fixture uses: AOF, fsync always.
    with RedisServer(tmp_path_factory.mktemp("redis-bench")) as s:
        yield s


@pytest.fixture(scope="module")
def rs():
    return recipients(N)


def test_fanout_geodispatch(benchmark, server, rs):
    settings = QueueSettings(url=server.url, batch_size=500, pipeline_batches=64)
    sink = RedisSink(settings)
    counter = iter(range(10**6))

    def setup():
        with server.client() as c:
            c.flushall()
        h = NotificationHeader(**{**HEADER.__dict__, "request_id": f"bench-{next(counter)}"})
        return (h,), {}

    def run(h):
        return Dispatcher(sink, settings).dispatch(h, rs, now=NOW)

    benchmark.group = f"fan-out {N:,} recipients"
    benchmark.extra_info["recipients"] = N
    report = benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    assert report.recipients_notified == N
    got = [decode_batch(p)[1] for _, p in sink.read_all()]
    assert sum(len(b) for b in got) == N and got[0][0].owner_id == int(rs.owner_ids[0])
    benchmark.extra_info["recipients_per_s"] = N / benchmark.stats.stats.mean


def test_fanout_baseline_one_xadd_per_recipient(benchmark, server, rs):
    client = server.client()
    stream = Keys().notifications
    hdr = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in HEADER.__dict__.items()}
    owners, off, cams = rs.owner_ids, rs.owner_offsets, rs.camera_ids

    def setup():
        client.flushall()
        return (), {}

    def run():
        pipe = client.pipeline(transaction=False)
        for k in range(owners.shape[0]):
            pipe.xadd(stream, {"data": orjson.dumps({"header": hdr, "owner": int(owners[k]),
                                                     "cameras": cams[off[k]:off[k + 1]]},
                                                    option=orjson.OPT_SERIALIZE_NUMPY)})
            if k % 10000 == 9999:
                pipe.execute()
        pipe.execute()

    benchmark.group = f"fan-out {N:,} recipients"
    benchmark.pedantic(run, setup=setup, rounds=2, iterations=1)
    assert client.xlen(stream) == N
    benchmark.extra_info["recipients_per_s"] = N / benchmark.stats.stats.mean
    client.close()

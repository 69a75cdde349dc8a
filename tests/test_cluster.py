"""Geodispatch on a real Redis Cluster: 3 masters and 3 replicas on loopback ports, started once for this file's
tests (``redis-server --cluster-enabled yes``, joined by ``redis-cli --cluster create``)."""

from __future__ import annotations

import collections
import threading
import time
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from bench.reference import Dataset, brute_force
from dispatcher.connections import connect
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink
from dispatcher.dispatch.wire import decode_batch
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index.camera_index import CameraIndex
from dispatcher.service.client import read_outcomes, submit
from dispatcher.service.servers import RedisClusterServers
from dispatcher.service.worker import ServiceSettings, Worker
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.pipeline import Pipeline
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import RedisStore
from tests import data
from tests.video_requests import JOINED, LAT0, LNG0, NOW, square
from tests.video_requests import request as make_request

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def world() -> tuple[CameraIndex, Dataset, list[int]]:
    cams = data.cameras(20_000, seed=61, cx=LNG0, cy=LAT0, spread=0.01)
    own = data.owners(cams, seed=61, share_out=0.0)
    owners = own.column("owner_id").to_numpy()
    opted = sorted(np.random.default_rng(61).choice(owners, len(owners) // 20, replace=False).tolist())
    return CameraIndex.build(cams, own), Dataset.from_tables(cams, own), opted


def _requests(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        dx, dy = rng.uniform(-0.01, 0.01, 2)
        start = NOW - timedelta(days=int(rng.integers(1, 20)), hours=int(rng.integers(0, 20)))
        r = make_request(request_id=f"req-{k}", area=square(float(rng.uniform(0.03, 0.45)), LNG0 + dx, LAT0 + dy),
                         start=start, end=start + timedelta(hours=2))
        out.append({f: getattr(r, f) for f in r.__dataclass_fields__})
    return out


def _worker(qs: QueueSettings, index: CameraIndex, name: str) -> Worker:
    registry = AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL",
                                      geodesic_circle(LNG0, LAT0, 20_000), JOINED)])
    wf = Workflow(RedisStore(connect(qs), qs.keys, qs), registry,
                  Policy(auto_approve=True, owner_cap=100_000, rate_limit=100_000))
    return Worker(name, connect(qs), Pipeline(wf, index, Dispatcher(RedisSink(qs), qs)),
                  ServiceSettings(read_count=8, block_ms=100, claim_idle_ms=1000), qs.keys, clock=lambda: NOW,
                  queue=qs)


def _serve(workers: list[Worker], until: Any, timeout: float = 120) -> None:
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    try:
        while not until() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert until(), "not served in time"


def _dispatched(client: Any, qs: QueueSettings) -> set[str]:
    _, got = read_outcomes(client, count=1_000_000, keys=qs.keys, operators=True)
    return {str(o["request_id"]) for o in got if o["outcome"] == "dispatched"}


def _check_exact(client: Any, qs: QueueSettings, ds: Dataset, opted: list[int],
                 reqs: list[dict[str, Any]]) -> int:
    """Every notification stream read back and compared, owner by owner and camera by camera, with the
    independent resolve; the gate's counters equal the streams. Returns the notifications."""
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    cams: dict[tuple[str, int], list[int]] = {}
    for stream in qs.keys.notification_streams:
        for _, fields in client.xrange(stream):
            _, notes = decode_batch(fields[b"data"])
            for n in notes:
                seen[(n.header["request_id"], n.owner_id)] += 1
                cams[(n.header["request_id"], n.owner_id)] = list(n.camera_ids)
    store = RedisStore(client, qs.keys, qs)
    out = set(opted)
    lost = duplicated = wrong = 0
    for req in reqs:
        rid = req["request_id"]
        want = brute_force(ds, req["area"], req["start"], req["end"], NOW)
        sent = {o for (q, o) in seen if q == rid}
        lost += len(set(want) - out - sent)
        wrong += len(sent - set(want)) + len(sent & out) + sum(cams[(rid, o)] != want[o] for o in sent & set(want))
        duplicated += sum(seen[(rid, o)] - 1 for o in sent)
        assert store.notified_count(rid) == len(sent), rid
        assert store.counters(rid).get("opted_out", 0) == len(set(want) & out), rid
        assert store.get_request(rid)[0] == "dispatched"  # type: ignore[index]
    assert (lost, duplicated, wrong) == (0, 0, 0)
    return sum(seen.values())


def test_the_cluster_is_three_masters_with_a_replica_each(redis_cluster: RedisClusterServers) -> None:
    """The fixture is a real cluster: every slot served, 3 masters, 3 replicas; a plain client pointed at a node
    other than the master of a key's slot is redirected (MOVED), the cluster client (``cluster=true``) is not."""
    with redis_cluster.nodes[0].client() as c:
        info = c.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        assert "cluster_state:ok" in text and "cluster_known_nodes:6" in text and "cluster_size:3" in text
    qs = QueueSettings.from_url(redis_cluster.url)
    client = connect(qs)
    assert isinstance(client, RedisCluster)
    moved = 0
    for node in redis_cluster.nodes:
        with node.client() as c:
            try:
                c.set(qs.keys.requests, b"x")
            except redis.exceptions.MovedError:
                moved += 1
    assert moved == 5  # every node but the master of the slot, its replica included
    client.set(qs.keys.requests, b"y")
    assert client.get(qs.keys.requests) == b"y"


def test_workers_serve_requests_exactly_on_the_cluster(redis_cluster: RedisClusterServers,
                                                       world: tuple[CameraIndex, Dataset, list[int]]) -> None:
    """Two workers on the cluster client (the store's, the sink's and the gate's scripts, the MULTI/EXEC of
    outcomes and acks, the pre-encoded reads) serve requests exactly: the streams equal the oracle."""
    index, ds, opted = world
    qs = QueueSettings.from_url(redis_cluster.url, batch_size=64)
    client = connect(qs)
    store = RedisStore(client, qs.keys, qs)
    for o in opted:
        store.set_opted_out(o, True, NOW)
    reqs = _requests(12, seed=1)
    for k, req in enumerate(reqs):
        submit(client, req, keys=qs.keys, trace=k)
    workers = [_worker(qs, index, f"w{k}") for k in range(2)]
    _serve(workers, lambda: _dispatched(client, qs) >= {r["request_id"] for r in reqs})
    assert _check_exact(client, qs, ds, opted, reqs) > 0

"""Geodispatch on a real Redis Cluster: 3 masters and 3 replicas on loopback ports, started once for the session's
tests that need it (``redis-server --cluster-enabled yes`` with AOF, joined by ``redis-cli --cluster create``).

The same service as on one server, with the work in 1 or 3 shards: every atomic step in one slot, the shards on
distinct masters, opt-outs seen by every shard's gate, and through a master's failover (SIGKILL, its replica takes
over) every request dispatched exactly once: the notifications read back from every shard's stream and compared,
owner by owner and camera by camera, with an independent resolve."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from bench.reference import brute_force
from dispatcher.connections import connect
from dispatcher.dispatch.consumer import Consumer, OutboxSender
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.gate import OwnerGate, migrate_legacy_notices
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink
from dispatcher.dispatch.wire import decode_batch
from dispatcher.errors import InvalidQueueSettings
from dispatcher.index.camera_index import CameraIndex
from dispatcher.keys import Keys
from dispatcher.service.client import read_outcomes, submit
from dispatcher.service.feed import FeedFollower, publish_changes
from dispatcher.service.metrics import collect
from dispatcher.service.servers import RedisClusterServers
from dispatcher.service.worker import ServiceSettings, Worker
from dispatcher.workflow.agencies import AgencyRegistry
from dispatcher.workflow.pipeline import Pipeline
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import RedisStore
from tests import test_faults
from tests.notifications import LINKS, header, make_recipients
from tests.test_faults import Service, World
from tests.test_faults import _requests as _fault_requests

#: The fault tests' served data set: a saved index of 20,000 cameras, the agency, the policy and the opt-outs.
world = test_faults.world

pytestmark = pytest.mark.redis


def _worker(qs: QueueSettings, world: World, index: CameraIndex, name: str) -> Worker:
    """A worker thread as ``serve`` makes them, on the fault tests' data set, agencies and policy."""
    policy = Policy.from_dict({**orjson.loads(world.policy.read_bytes()), "auto_approve": True})
    wf = Workflow(RedisStore(connect(qs), qs.keys, qs), AgencyRegistry.load(world.agencies), policy)
    return Worker(name, connect(qs), Pipeline(wf, index, Dispatcher(RedisSink(qs), qs)),
                  ServiceSettings(read_count=8, block_ms=100, claim_idle_ms=1000), qs.keys, queue=qs)


def _qs(cluster: RedisClusterServers, shards: int, **kw: Any) -> QueueSettings:
    return QueueSettings.from_url(f"{cluster.url}&shards={shards}", **kw)


def _submit(client: Any, qs: QueueSettings, world: World, reqs: list[dict[str, Any]]) -> None:
    """The world's opt-outs (each in its owner's shard), then the requests (each on its shard's stream)."""
    store = RedisStore(client, qs.keys, qs)
    for o in world.opted_out:
        store.set_opted_out(o, True, datetime.now(timezone.utc))
    for k, req in enumerate(reqs):
        submit(client, req, keys=qs.keys, trace=k)


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
    return set(_judged(client, qs))


def _judged(client: Any, qs: QueueSettings) -> dict[str, datetime]:
    """Each dispatched request's time of judgement, from the first operators' outcome that says so."""
    _, got = read_outcomes(client, count=1_000_000, keys=qs.keys, operators=True)
    out: dict[str, datetime] = {}
    for o in got:
        if o["outcome"] == "dispatched":
            out.setdefault(str(o["request_id"]), datetime.fromtimestamp(o["now_us"] / 1e6, tz=timezone.utc))
    return out


def _check_exact(client: Any, qs: QueueSettings, world: World, reqs: list[dict[str, Any]]) -> int:
    """Every notification stream read back and compared, owner by owner and camera by camera, with the
    independent resolve at the time each request was judged; the gate's counters equal the streams, nothing is
    dead-lettered. Returns the notifications."""
    judged = _judged(client, qs)
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    cams: dict[tuple[str, int], list[int]] = {}
    for stream in qs.keys.notification_streams:
        for _, fields in client.xrange(stream):
            _, notes = decode_batch(fields[b"data"])
            for n in notes:
                seen[(n.header["request_id"], n.owner_id)] += 1
                cams[(n.header["request_id"], n.owner_id)] = list(n.camera_ids)
    store = RedisStore(client, qs.keys, qs)
    out = set(world.opted_out)
    lost = duplicated = wrong = 0
    for req in reqs:
        rid = req["request_id"]
        want = brute_force(world.ds, req["area"], req["start"], req["end"], judged[rid])
        sent = {o for (q, o) in seen if q == rid}
        lost += len(set(want) - out - sent)
        wrong += len(sent - set(want)) + len(sent & out) + sum(cams[(rid, o)] != want[o] for o in sent & set(want))
        duplicated += sum(seen[(rid, o)] - 1 for o in sent)
        assert store.notified_count(rid) == len(sent), rid
        assert store.counters(rid).get("opted_out", 0) == len(set(want) & out), rid
        assert store.get_request(rid)[0] == "dispatched"  # type: ignore[index]
    dead = sum(client.xlen(k.dead_letters) for k in qs.keys.all_shards)
    assert (lost, duplicated, wrong, dead) == (0, 0, 0, 0)
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


def test_a_cluster_with_a_node_that_may_evict_keys_is_refused(redis_cluster: RedisClusterServers) -> None:
    """Every node is asked, a replica too (a failover makes it the master): one with an eviction policy is named,
    and a worker does not start on the cluster."""
    from dispatcher.connections import require_no_eviction
    from dispatcher.service.supervise import StopSignal, wait_for_redis

    qs = QueueSettings.from_url(redis_cluster.url)
    client = connect(qs)
    require_no_eviction(client, qs)
    replica = next(n for n in redis_cluster.nodes
                   if n.client().info("replication")["role"] == "slave")  # type: ignore[index]
    with replica.client() as c:
        c.config_set("maxmemory-policy", "volatile-lru")
        try:
            with pytest.raises(InvalidQueueSettings, match=f"node 127.0.0.1:{replica.port} has maxmemory-policy "
                                                           "'volatile-lru'"):
                require_no_eviction(client, qs)
            with pytest.raises(InvalidQueueSettings, match="volatile-lru"):
                wait_for_redis(qs, StopSignal())
            nodes = collect(client, qs.keys, qs).redis_nodes  # the operators' view: every node, this one evicting
            assert len(nodes) == 6 and {n for n, (p, _) in nodes.items() if p != "noeviction"} == \
                {f"127.0.0.1:{replica.port}"}
        finally:
            c.config_set("maxmemory-policy", "noeviction")
    require_no_eviction(client, qs)


@pytest.mark.parametrize("shards", [1, 3])
def test_workers_serve_requests_exactly_on_the_cluster(redis_cluster: RedisClusterServers, shards: int,
                                                       world: World) -> None:
    """Two workers on the cluster client (the store's, the sink's and the gate's scripts, the MULTI/EXEC of
    outcomes and acks, the pre-encoded reads) serve requests exactly: the streams equal the oracle, and opt-outs
    (written to each owner's shard) hold in every shard's gate. With 3 shards, each shard's notifications stream
    is on a master of its own and holds about a third of the owners."""
    qs = _qs(redis_cluster, shards, batch_size=64)
    client = connect(qs)
    _submit(client, qs, world, reqs := _fault_requests(12, seed=1))
    index = CameraIndex.open(world.index_dir)
    workers = [_worker(qs, world, index, f"w{k}") for k in range(2)]
    _serve(workers, lambda: _dispatched(client, qs) >= {r["request_id"] for r in reqs})
    total = _check_exact(client, qs, world, reqs)
    assert total > 0
    masters = {redis_cluster.master_of(stream).port for stream in qs.keys.notification_streams}
    assert len(masters) == shards
    for stream in qs.keys.notification_streams:
        owners = sum(len(decode_batch(f[b"data"])[1]) for _, f in client.xrange(stream))
        assert owners > total / shards / 2, (stream, owners, total)
    # the workers' reports (their stop's, at least) through the cluster client, and every shard's streams read
    snap = collect(client, qs.keys, qs)
    assert sorted(snap.workers) == ["w0", "w1"]
    assert sum(w["by_status"].get("dispatched", 0) for w in snap.workers.values()) == len(reqs)
    assert sum(w["recipients"] for w in snap.workers.values()) == total
    assert set(snap.backlog) == {k.requests for k in qs.keys.all_shards}
    assert all(pending == 0 for _, pending in snap.backlog.values())
    assert sum(snap.notifications.values()) == sum(client.xlen(s) for s in qs.keys.notification_streams)


def test_shard_names() -> None:
    """One shard is the names of before; several fall in distinct thirds of the slots, and every key of a
    request's shard, or of an owner's, shares its slot. A shard count that is not a positive integer is refused."""
    one = QueueSettings.from_url("redis://h:1/0").keys
    assert one.shard(0) is one and one.for_request("r") is one and one.notifications == "geodispatch:{gd}:notifications"
    keys = QueueSettings.from_url("redis://h:1/0?cluster=true&shards=3").keys
    slots = [key_slot(k.notifications.encode()) for k in keys.all_shards]
    assert [s * 3 // 16384 for s in slots] == [0, 1, 2]
    rid = "il-chicago:case-7"
    home = keys.for_request(rid)
    assert len({key_slot(x.encode()) for x in (home.request(rid), home.plan(rid), home.audit, home.requests,
                                                home.outcomes, home.submitted)}) == 1
    assert keys.owner_shards(np.array([0, 1, 2, 3, 5])).tolist() == [0, 1, 2, 0, 2]
    for bad in ("0", "-1", "x", "1.5", "16385"):
        with pytest.raises(InvalidQueueSettings, match="shards"):
            QueueSettings.from_url(f"redis://h:1/0?shards={bad}")
    assert QueueSettings.from_url("redis://h:1/0?shards=16384").shards == 16_384
    # a brace in the prefix would be every key's hash tag: one slot for every shard
    assert key_slot(Keys("{x}", "gd", 3).shard(0).requests.encode()) == key_slot(
        Keys("{x}", "gd", 3).shard(1).requests.encode()) != key_slot(Keys("x", "gd", 3).shard(1).requests.encode())
    for prefix in ("{x}", "a{b", "c}", ""):
        with pytest.raises(InvalidQueueSettings, match="prefix"):
            QueueSettings(prefix=prefix)
    with pytest.raises(ValueError):
        Keys(shards=0)


def test_the_gate_migration_runs_on_the_cluster(redis_cluster: RedisClusterServers) -> None:
    """The gate's sorted sets of before (one per owner, in the owner's shard) over 3 shards on 3 masters: the scan
    finds each master's, each owner's script names its sorted set and its shard's day counters, one slot (the
    cluster refuses a script across slots), and the notices migrated cap the owners in every shard's gate."""
    qs = _qs(redis_cluster, 3)
    client = connect(qs)
    now = datetime.now(timezone.utc)
    day = int(now.timestamp()) // 86_400
    owners = list(range(100, 106))
    for o in owners:
        k = qs.keys.shard(qs.keys.owner_shard(o))
        assert {key_slot(x.encode()) for x in (k.legacy_owner_notices(o), k.notices(day), k.notices(day - 1),
                                               k.opted_out)} == {key_slot(k.notices(day).encode())}
        client.zadd(k.legacy_owner_notices(o), {"old-a": int(now.timestamp() * 1e6) - 60_000_000,
                                                "old-b": int(now.timestamp() * 1e6) - 120_000_000})
    assert len({redis_cluster.master_of(k.notices(day)).port for k in qs.keys.all_shards}) == 3
    got = migrate_legacy_notices(client, qs, Policy(owner_cap=2), now)
    assert (got.owners, got.notices, got.skipped) == (6, 12, [])
    gate = OwnerGate(RedisStore(client, qs.keys, qs), Policy(owner_cap=2))
    assert gate.check_many([("new", np.array(owners, np.int64))], now)[0].tolist() == [2] * 6  # all capped


def test_consumers_send_every_shards_notifications_once(redis_cluster: RedisClusterServers, tmp_path: Path) -> None:
    """Notifications dispatched over 3 shards, read by two consumers that each read every shard's stream: every
    (request, owner) in an outbox once; an unreadable entry on one shard's stream is set aside in that shard."""
    qs = _qs(redis_cluster, 3, batch_size=50)
    client = connect(qs)
    sink = RedisSink(qs)
    rs = make_recipients(400, seed=3)
    Dispatcher(sink, qs).dispatch(header("req-c"), rs)
    client.xadd(qs.keys.shard(1).notifications, {"request": "bad", "batch": 0, "data": b"{not a batch"})
    sender = OutboxSender(tmp_path / "out")
    consumers = [Consumer(connect(qs), f"c{k}", sender, links=LINKS, settings=qs) for k in range(2)]
    consumers[0].ensure_group()
    while sum(c.run_once(block_ms=30) for c in consumers):
        pass
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"req-c%3A{o}.html" for o in rs.owner_ids.tolist())
    assert sum(c.sent for c in consumers) == rs.n_owners
    assert client.xlen(qs.keys.shard(1).notification_dead_letters) == 1


def test_the_change_feed_follows_on_the_cluster(redis_cluster: RedisClusterServers) -> None:
    """The feed's keys share the base tag's slot: the changes published in one MULTI, the bounded read (a script
    on the floor and the feed) and the follower's wait (a blocking read pipelined with it) on the cluster client,
    the index equal to the oracle after each."""
    from tests.test_feed import AREA, END, NOW, START, Registry, _as_dict

    qs = _qs(redis_cluster, 3)
    client = connect(qs)
    reg = Registry.make(300)
    index = CameraIndex.build(reg.table(), reg.owner_table())
    follower = FeedFollower(index, client, "c", qs.keys)
    publish_changes(client, [reg.random_change() for _ in range(5)], qs.keys)
    assert follower.catch_up() == 5 and follower.applied == 5
    assert _as_dict(index.resolve(AREA, START, END, now=NOW)) == reg.oracle(NOW)
    got: list[int] = []
    waiting = threading.Thread(target=lambda: got.append(follower.wait(60_000)))
    waiting.start()
    time.sleep(0.2)
    pos = publish_changes(client, [reg.random_change()], qs.keys)[-1]
    waiting.join(timeout=60)
    assert got == [1] and index.version == pos
    assert follower.catch_up() == 0 and client.hget(qs.keys.feed_applied, "c") == str(pos).encode()
    assert _as_dict(index.resolve(AREA, START, END, now=NOW)) == reg.oracle(NOW)


@dataclass(frozen=True)
class _At:
    """Where ``Service`` points ``serve``: the cluster's URL with the queue settings of the test."""

    url: str


def test_a_master_killed_mid_load_loses_and_duplicates_nothing(redis_cluster: RedisClusterServers,
                                                                world: World) -> None:
    """``geodispatch serve`` on the cluster with 3 shards and ``wait_replicas=1`` (WAIT after each dispatch
    step): while its workers dispatch a load of requests, the master of one shard is SIGKILLed; its replica takes
    over, and the old master comes back as the new one's replica (until then no step of that shard can be
    confirmed, and none counts as done). Every request reaches ``dispatched``; every shard's stream, read back,
    equals the independent resolve owner by owner and camera by camera: nothing lost, nothing twice, nothing
    dead-lettered, the gate's counters equal to the streams."""
    settings = "&shards=3&wait_replicas=1&wait_timeout_ms=500"
    qs = QueueSettings.from_url(redis_cluster.url + settings)
    client = connect(qs)
    _submit(client, qs, world, reqs := _fault_requests(80, seed=7))
    redis_cluster.wait_replicated()  # the submissions are on the replicas: what follows is the service's to keep
    ids = {r["request_id"] for r in reqs}
    svc = Service(_At(redis_cluster.url + settings), world, workers=1).start()  # type: ignore[arg-type]
    try:
        _until(lambda: len(_dispatched(client, qs)) >= 5, svc)
        victim = redis_cluster.kill_master_of(qs.keys.shard(1).notifications)  # returns once a replica took over
        at_kill = len(_dispatched(client, qs))
        redis_cluster.revive()  # rejoins as the replica of the one that took over
        _until(lambda: _dispatched(client, qs) >= ids, svc)
        assert victim.proc is not None
    finally:
        svc.stop()
    assert at_kill < len(reqs), "the load was over before the failover: nothing was tested"
    assert _check_exact(client, qs, world, reqs) > 0


def _until(done: Any, svc: Service, timeout: float = 180) -> None:
    """Poll ``done()`` through the failover (a read may fail while the cluster elects a master)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if done():
                return
        except (redis.RedisError, RedisClusterException):
            pass
        assert svc.proc is not None and svc.proc.poll() is None, "serve exited"
        time.sleep(0.1)
    raise AssertionError(f"not done in {timeout} s")

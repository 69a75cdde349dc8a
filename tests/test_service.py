"""Service mode on a real redis-server: workers in a consumer group run requests through validate -> resolve ->
dispatch; what a dead worker left is reclaimed; a redelivered request notifies nobody twice; stop drains."""

from __future__ import annotations

import collections
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from bench.reference import Dataset, brute_force
from dispatcher.connections import Prepacked
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink
from dispatcher.dispatch.wire import decode_batch
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index.camera_index import CameraIndex
from dispatcher.keys import Keys
from dispatcher.service import commands
from dispatcher.service.client import read_outcomes, request_dispatch, submit
from dispatcher.service.servers import RedisServer
from dispatcher.service.worker import ServiceSettings, Worker, consumer_threads
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
def world():
    cams = data.cameras(20_000, seed=31, cx=LNG0, cy=LAT0, spread=0.01)
    own = data.owners(cams, seed=31, share_out=0.02)
    return CameraIndex.build(cams, own), Dataset.from_tables(cams, own)


def _registry() -> AgencyRegistry:
    return AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL",
                                  geodesic_circle(LNG0, LAT0, 20_000), JOINED)])


def _worker(server: RedisServer, index: CameraIndex, name: str, auto: bool = True, protocol: int = 3,
            agencies: tuple[str, ...] = (), backlog: threading.Event | None = None, standby: bool = False,
            **kw) -> Worker:
    store = RedisStore.from_url(server.url)
    wf = Workflow(store, _registry(), Policy(auto_approve=auto, owner_cap=1000, rate_limit=1000))
    qs = QueueSettings.from_url(server.url, batch_size=16)
    return Worker(name, redis.Redis.from_url(server.url, protocol=protocol),
                  Pipeline(wf, index, Dispatcher(RedisSink(qs), qs)), ServiceSettings(**kw), clock=lambda: NOW,
                  agencies=agencies, backlog=backlog, standby=standby)


def _request(k: int, rng: np.random.Generator) -> dict:
    dx, dy = rng.uniform(-0.01, 0.01, 2)
    start = NOW - timedelta(days=int(rng.integers(1, 20)), hours=int(rng.integers(0, 20)))
    r = make_request(request_id=f"req-{k}", area=square(float(rng.uniform(0.03, 0.45)), LNG0 + dx, LAT0 + dy),
                     start=start, end=start + timedelta(hours=2))
    return {f: getattr(r, f) for f in r.__dataclass_fields__}


def _stream(server: RedisServer) -> collections.Counter:
    seen: collections.Counter = collections.Counter()
    with server.client() as r:
        for _, fields in r.xrange(RedisSink(QueueSettings.from_url(server.url)).keys.notifications):
            _, notes = decode_batch(fields[b"data"])
            for n in notes:
                seen[(n.header["request_id"], n.owner_id)] += 1
    return seen


def _serve(workers: list[Worker], until) -> None:  # type: ignore[no-untyped-def]
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while not until() and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()


def test_two_workers_serve_requests_exactly(redis_server: RedisServer, world) -> None:
    index, ds = world
    rng = np.random.default_rng(1)
    reqs = [_request(k, rng) for k in range(30)]
    bad = [{**_request(100, rng), "request_id": "bad-1", "area": square(3.0)},  # too large
           {**_request(101, rng), "request_id": "bad-2", "incident_type": "protest"},
           {"nonsense": True}]
    with redis_server.client() as r:
        for req in reqs[:15] + bad + reqs[15:]:
            submit(r, req)
    workers = [_worker(redis_server, index, f"w{k}", read_count=4) for k in range(2)]
    _serve(workers, lambda: sum(w.stats.handled for w in workers) == len(reqs) + len(bad))
    assert sum(w.stats.dispatched for w in workers) == 30 and sum(w.stats.refused for w in workers) == 3
    assert all(w.stats.handled > 0 for w in workers)  # both took part
    seen = _stream(redis_server)
    assert max(seen.values()) == 1
    nonempty = 0
    for req in reqs:  # every request's recipients are the oracle's (shapely over every camera), exactly
        got = {o for (rid, o) in seen if rid == req["request_id"]}
        assert got == set(brute_force(ds, req["area"], req["start"], req["end"], NOW))
        nonempty += bool(got)
    assert nonempty >= 25
    with redis_server.client() as r:
        assert r.xpending(Keys().requests, "workers")["pending"] == 0


@pytest.mark.parametrize("protocol", [2, 3])  # the worker reads and claims with raw replies: both shapes of them
def test_dead_workers_entries_are_reclaimed_and_redelivery_sends_nothing_twice(redis_server: RedisServer,
                                                                              world, protocol: int) -> None:
    index, _ = world
    rng = np.random.default_rng(2)
    settings = dict(claim_idle_ms=50, block_ms=20, protocol=protocol)
    with redis_server.client() as r:
        ids = [submit(r, _request(k, rng)) for k in range(4)]
    dead = _worker(redis_server, index, "dead", **settings)
    # "dead" reads two entries, handles one of them fully but dies before acknowledging either
    with redis_server.client() as r:
        got = r.xreadgroup("workers", "dead", {Keys().requests: ">"}, count=2)
    dead.pipeline.run([commands.decode(got[0][1][0][1])], NOW)
    assert len(_stream(redis_server)) > 0
    time.sleep(0.1)
    alive = _worker(redis_server, index, "alive", **settings)
    _serve([alive], lambda: alive.stats.handled == 4)
    assert alive.stats.claimed == 2 and alive.stats.dispatched == 3  # the fully handled one: already dispatched
    assert "dispatched" in alive.stats.outcomes
    seen = _stream(redis_server)
    assert max(seen.values()) == 1 and {rid for rid, _ in seen} == {f"req-{k}" for k in range(4)}
    with redis_server.client() as r:
        assert r.xpending(Keys().requests, "workers")["pending"] == 0
    assert len(ids) == 4


def test_prepacked_commands_after_an_error_reply_start_on_a_clean_connection(redis_server: RedisServer) -> None:
    """An error reply in the middle of prepacked commands raises, and the replies after it (left unread) do not
    leak into the next call: its connection was dropped."""
    c = redis_server.client()
    c.xgroup_create("s:1", "g", id="0", mkstream=True)
    eid = c.xadd("s:1", {"k": "v"})
    bad = Prepacked(c, [("XAUTOCLAIM", "s:none", "g", "w", 0, "0-0"), ("PING",), ("ECHO", "left unread")])
    read = Prepacked(c, [("XREADGROUP", "GROUP", "g", "w", "COUNT", 5, "STREAMS", "s:1", ">"), ("ECHO", "mine")])
    with pytest.raises(redis.ResponseError, match="NOGROUP"):
        bad.run()
    (got, echo) = read.run()
    entries = got[b"s:1"] if isinstance(got, dict) else dict(got)[b"s:1"]
    assert entries == [[eid, [b"k", b"v"]]] and echo == b"mine"
    assert read.run()[0] is None  # nothing new


def test_reviewed_request_dispatched_on_command(redis_server: RedisServer, world) -> None:
    index, _ = world
    w = _worker(redis_server, index, "w", auto=False, block_ms=20)
    req = _request(7, np.random.default_rng(3))
    with redis_server.client() as r:
        submit(r, req)
        _serve([w], lambda: w.stats.handled == 1)
        assert list(w.stats.outcomes) == ["submitted"] and not _stream(redis_server)
        w.pipeline.workflow.approve("req-7", "reviewer", NOW)
        request_dispatch(r, "req-7")
        request_dispatch(r, "req-7")  # a double click: the second finds it dispatched
        _serve([w], lambda: w.stats.handled == 3)
    assert list(w.stats.outcomes)[1:] == ["dispatched", "dispatched"] and w.stats.dispatched == 1
    seen = _stream(redis_server)
    assert seen and max(seen.values()) == 1
    assert w.pipeline.workflow.state("req-7") == "dispatched"


def test_an_id_recorded_by_another_worker_meanwhile_is_sent_as_that_one_recorded_it(redis_server: RedisServer,
                                                                                     world) -> None:
    """Two submissions of one id with different areas, judged by two workers at once: the one whose record
    comes second writes nothing (no plan of its area either) and dispatches the request as the first recorded it."""
    index, ds = world
    rng = np.random.default_rng(5)
    first, second = _request(9, rng), {**_request(9, rng), "area": square(0.4, LNG0 - 0.004, LAT0 + 0.004)}
    want = set(brute_force(ds, first["area"], first["start"], first["end"], NOW))
    assert want and want != set(brute_force(ds, second["area"], second["start"], second["end"], NOW))
    review = _worker(redis_server, index, "review", auto=False, block_ms=20)
    w = _worker(redis_server, index, "w", block_ms=20)
    store = w.pipeline.workflow.store
    looked = store.lookup

    def before_the_other_recorded(ids, windows):  # type: ignore[no-untyped-def]
        found, counts = looked(ids, windows)
        return [None] * len(found), counts  # what w read a moment before review's record

    store.lookup = before_the_other_recorded  # type: ignore[method-assign]
    with redis_server.client() as r:
        submit(r, first)
        _serve([review], lambda: review.stats.handled == 1)  # recorded, awaiting review
        review.pipeline.workflow.approve("req-9", "reviewer", NOW)
        submit(r, second)
        _serve([w], lambda: w.stats.handled == 1)
    assert list(w.stats.outcomes) == ["dispatched"]
    assert {o for (rid, o) in _stream(redis_server) if rid == "req-9"} == want
    assert set(w.pipeline.dispatcher.recorded(["req-9"])[0].owner_ids.tolist()) == want


def _serve_command(server: RedisServer, tmp_path: Path, *extra: str, url: str | None = None,
                   workers: int = 2) -> subprocess.Popen:
    cams = data.cameras(5_000, seed=41, cx=LNG0, cy=LAT0, spread=0.01)
    CameraIndex.build(cams, data.owners(cams, seed=41)).save(tmp_path / "idx")
    _registry().save_geojson(tmp_path / "agencies.geojson")
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen([sys.executable, "-c", "from dispatcher.cli import run; run()", "serve", "--index",
                             str(tmp_path / "idx"), "--redis-url", url or server.url, "--workers", str(workers),
                             "--agencies", str(tmp_path / "agencies.geojson"), "--auto-approve", *extra],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _submit_and_await(proc: subprocess.Popen, url: str, n: int, seed: int) -> RedisStore:
    """Submit ``n`` requests (req-0...) to the Redis at ``url`` and wait until ``serve`` (``proc``) dispatched
    them all; the store they are recorded in."""
    rng = np.random.default_rng(seed)
    store = RedisStore.from_url(url)
    with redis.Redis.from_url(url) as r:
        for k in range(n):
            submit(r, _request(k, rng))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not all(
            (got := store.get_request(f"req-{k}")) is not None and got[0] == "dispatched" for k in range(n)):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.1)
    assert all(store.get_request(f"req-{k}")[0] == "dispatched" for k in range(n))  # type: ignore[index]
    return store


def _no_process_left(proc: subprocess.Popen) -> bool:
    """Whether every process of the command's session (its workers included) has exited."""
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_serve_command_runs_worker_processes_and_stops_on_sigterm(redis_server: RedisServer, tmp_path) -> None:
    """... and serves the workers' metrics on the port asked for, every consumer thread of both processes in them."""
    import urllib.request

    from dispatcher.service.servers import free_port

    port = free_port()
    proc = _serve_command(redis_server, tmp_path, "--metrics-port", str(port), "--metrics-every", "0.2")
    try:
        _submit_and_await(proc, redis_server.url, 6, seed=5)
        deadline = time.monotonic() + 300
        dispatched, up = 0.0, {}
        # one process may have served all six while the other still starts (its threads report once they run)
        while time.monotonic() < deadline and (dispatched < 6 or len(up) < 4):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
                fams = _families(resp.read().decode())
            dispatched = sum(x.value for x in fams.get("geodispatch_worker_commands", [])
                             if x.name.endswith("_total") and x.labels["outcome"] == "dispatched")
            up = {x.labels["worker"]: x.value for x in fams.get("geodispatch_worker_up", [])}
            time.sleep(0.1)
        assert dispatched == 6
        assert len(up) == 4 and set(up.values()) == {1.0}  # 2 processes of 2 consumer threads
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "all workers stopped" in output and "append-only" not in output  # the session's Redis keeps an AOF
    seen = _stream(redis_server)
    assert seen and max(seen.values()) == 1
    with redis_server.client() as r:
        assert r.xpending(Keys().requests, "workers")["pending"] == 0
    deadline = time.monotonic() + 30
    while not _no_process_left(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _no_process_left(proc)


def test_serve_over_a_unix_socket_uses_the_database_its_url_names(redis_server: RedisServer, tmp_path) -> None:
    """``serve --redis-url unix:///path?db=3``: every key in database 3 of the server on that socket, nothing in
    0 (the URL reached redis-py cut to ``unix:/path`` and every worker process died of redis-py's ValueError)."""
    url = f"{redis_server.socket_url}?db=3"
    proc = _serve_command(redis_server, tmp_path, url=url, workers=1)
    try:
        _submit_and_await(proc, url, 3, seed=6)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    with redis_server.client() as r:
        assert r.dbsize() == 0
        keyspace = r.info("keyspace")
    assert set(keyspace) == {"db3"} and keyspace["db3"]["keys"] > 3


def test_a_bad_redis_url_is_one_error_line_without_its_password(redis_server: RedisServer, tmp_path) -> None:
    proc = _serve_command(redis_server, tmp_path, url="redis://worker:s3cret@127.0.0.1:99999/0")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, output
    assert output.count("\n") == 1 and "port" in output and "s3cret" not in output, output
    assert "redis://worker:***@127.0.0.1:99999/0" in output


def test_waiting_for_redis_logs_its_url_without_the_password(caplog) -> None:
    from dispatcher.service.servers import free_port
    from dispatcher.service.supervise import wait_for_redis

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    qs = QueueSettings.from_url(f"redis://worker:s3cret@127.0.0.1:{free_port()}/0", connect_timeout=0.1)
    with caplog.at_level("WARNING"):
        assert not wait_for_redis(qs, stop)
    said = [r.getMessage() for r in caplog.records]
    assert any("waiting for Redis at redis://worker:***@127.0.0.1:" in m for m in said), said
    assert not any("s3cret" in m for m in said)


@pytest.mark.parametrize("bad", [
    {"threads": 0}, {"read_count": 0}, {"read_count": 8, "read_count_max": 4}, {"block_ms": 0}, {"block_ms": -1},
    {"claim_idle_ms": 0}, {"claim_idle_ms": -5}, {"max_deliveries": 0}, {"outcomes_maxlen": 0}, {"feed_step": 0},
    {"sweep_ms": -1}, {"hot_s": float("nan")}, {"snapshot_every_s": -1.0}, {"metrics_every_s": float("inf")},
    {"eviction_check_s": float("nan")}, {"group": ""}, {"threads": True}, {"read_count": 2.5}])
def test_service_settings_out_of_range_are_refused(bad) -> None:
    """A worker with no thread serves nothing and says nothing; one that reclaims entries idle 0 ms takes over
    those other workers are handling, and each take-over counts a delivery, until a valid request is set aside
    as a dead letter; a read blocking 0 ms blocks until a command comes, so a stop waits for one."""
    from dispatcher.errors import InvalidServiceSettings

    with pytest.raises(InvalidServiceSettings, match=next(iter(bad))):
        ServiceSettings(**bad)


def test_serve_and_consume_refuse_counts_out_of_range_in_one_line(tmp_path) -> None:
    from click.testing import CliRunner

    from dispatcher.cli import main
    from dispatcher.errors import InvalidServiceSettings
    from dispatcher.service.supervise import serve

    tmp_path.joinpath("idx").mkdir()
    for args in (["serve", "--workers", "0"], ["serve", "--claim-idle-ms", "0"], ["serve", "--snapshot-every", "-1"],
                 ["consume", "--consumers", "0"], ["consume", "--claim-idle-ms", "0"]):
        extra = ["--index", str(tmp_path / "idx")] if args[0] == "serve" else []
        got = CliRunner().invoke(main, [*args, *extra, "--redis-url", "redis://127.0.0.1:1/0"])
        assert got.exit_code == 2 and "Invalid value" in got.output and args[1] in got.output, (args, got.output)
    with pytest.raises(InvalidServiceSettings, match="workers"):  # the library's own doors
        serve(str(tmp_path / "idx"), "redis://127.0.0.1:1/0", 0, "", {}, ServiceSettings(), print)
    from dispatcher.dispatch.consumer import Consumer, OutboxSender
    from tests.notifications import LINKS

    for bad in ({"min_idle_ms": -1}, {"group": ""}, {"trim_every_s": float("nan")}, {"eviction_check_s": -1.0}):
        with pytest.raises(InvalidServiceSettings, match=next(iter(bad))):
            Consumer(redis.Redis(port=1), "c", OutboxSender(tmp_path / "out"), links=LINKS, **bad)


def test_serve_with_its_metrics_port_taken_says_so_in_one_line_and_starts_no_worker(redis_server: RedisServer,
                                                                                   tmp_path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve_command(redis_server, tmp_path, "--metrics-port", str(port))
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, output
    assert output.startswith("error: cannot serve the metrics at 127.0.0.1:") and output.count("\n") == 1, output
    deadline = time.monotonic() + 30  # multiprocessing's resource tracker leaves after the command
    while not _no_process_left(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _no_process_left(proc)


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_serve_and_consume_refuse_a_redis_that_may_evict_keys(redis_server: RedisServer, tmp_path,
                                                              policy: str) -> None:
    """Under an eviction policy a Redis at its maxmemory deletes keys it chooses (``volatile-*``: those with a
    time to live, which is every record that names a resident): a batch's done mark (the batch goes out twice),
    an owner's notices (the cap forgets them). ``serve`` says so in one line and starts no worker, ``consume``
    sends nothing, and a worker process that meets such a Redis once it answers stops there; nothing of the
    commands waiting is taken."""
    from dispatcher.errors import InvalidQueueSettings
    from dispatcher.service.supervise import StopSignal, wait_for_redis

    rng = np.random.default_rng(9)
    with redis_server.client() as r:
        submit(r, _request(0, rng))
        r.config_set("maxmemory-policy", policy)
        try:
            proc = _serve_command(redis_server, tmp_path)
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 2, output
            assert output.startswith(f"error: Redis has maxmemory-policy '{policy}'") and output.count("\n") == 1
            deadline = time.monotonic() + 30
            while not _no_process_left(proc) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _no_process_left(proc)
            with pytest.raises(InvalidQueueSettings, match=f"maxmemory-policy '{policy}'"):
                wait_for_redis(QueueSettings.from_url(redis_server.url), StopSignal())
            (tmp_path / "out").mkdir()
            got = subprocess.run([sys.executable, "-m", "dispatcher.cli", "consume", "--redis-url", redis_server.url,
                                  "--outbox", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "GEODISPATCH_LINK_SECRET": "s" * 32}, cwd=tmp_path)
            assert got.returncode == 2 and f"maxmemory-policy '{policy}'" in got.stderr, got.stderr
            assert list((tmp_path / "out").iterdir()) == []
            assert r.xlen(Keys().requests) == 1 and not r.exists(Keys().notifications)
            assert not r.exists(Keys().request("req-0"))
        finally:
            r.config_set("maxmemory-policy", "noeviction")
    assert wait_for_redis(QueueSettings.from_url(redis_server.url), StopSignal())


def test_a_worker_takes_nothing_while_redis_may_evict_keys_and_goes_on_once_it_may_not(
        redis_server: RedisServer, world, caplog: pytest.LogCaptureFixture) -> None:
    """An eviction policy set while the worker runs: what was submitted before is served, what comes after waits
    on the stream (not read: nothing is written that Redis might drop) until the policy is set back, then is
    served, once each; the change is logged once either way. (A read in hand when the policy changes may still
    take what comes during it: the watch is asked between steps.)"""
    index, _ = world
    rng = np.random.default_rng(13)
    w = _worker(redis_server, index, "w0", eviction_check_s=0.1, block_ms=100)
    store = RedisStore.from_url(redis_server.url)
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,))
    thread.start()
    try:
        with redis_server.client() as r:
            submit(r, _request(0, rng))
            deadline = time.monotonic() + 60
            while w.stats.handled < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert store.get_request("req-0")[0] == "dispatched"  # type: ignore[index]
            with caplog.at_level("WARNING", logger="dispatcher.connections"):
                r.config_set("maxmemory-policy", "allkeys-lru")
                try:
                    time.sleep(1.0)  # asked again meanwhile, after the read in hand
                    for k in (1, 2):
                        submit(r, _request(k, rng))
                    time.sleep(2.0)
                    assert w.stats.handled == 1 and store.get_request("req-1") is None
                    assert r.xinfo_groups(Keys().requests)[0]["lag"] == 2  # still on the stream, unread
                finally:
                    r.config_set("maxmemory-policy", "noeviction")
                deadline = time.monotonic() + 60
                while w.stats.handled < 3 and time.monotonic() < deadline:
                    time.sleep(0.02)
            assert w.stats.handled == 3 and w.stats.dispatched == 3
            assert sum("maxmemory-policy 'allkeys-lru'" in m for m in caplog.messages) == 1
            assert sum("keeps every key again" in m for m in caplog.messages) == 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert max(_stream(redis_server).values()) == 1


def test_serve_warns_of_a_redis_that_would_lose_what_it_acknowledged_in_a_restart(tmp_path) -> None:
    """No append-only file and no replica: a restart of that Redis loses every write since its last snapshot, the
    done and sent marks among them (batches and e-mails would go out again). ``serve`` says so once, and serves."""
    with RedisServer(tmp_path / "redis", appendonly=False) as srv:
        proc = _serve_command(srv, tmp_path)
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not any("serving with 2 workers" in ln for ln in lines):
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
        finally:
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=120)
        output = "".join(lines) + rest
        assert proc.returncode == 0, output
        assert sum("keeps no append-only file and has no replica" in ln for ln in output.splitlines()) == 1, output
        assert any("serving with 2 workers" in ln for ln in lines), output


@pytest.mark.parametrize("delay", [0.3, 1.5, 3.0])
def test_sigterm_during_start_up_stops_every_worker(redis_server: RedisServer, tmp_path, delay: float) -> None:
    """A SIGTERM while the command or its workers are still starting (before or after their handlers are in place)
    stops them all and leaves no orphan behind. Before the command's own handler is in, Python's default action
    ends it with -SIGTERM; no worker has started then."""
    proc = _serve_command(redis_server, tmp_path)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=120)
    finally:
        if not _no_process_left(proc):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output
    deadline = time.monotonic() + 30
    while not _no_process_left(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _no_process_left(proc), "a worker outlived the serve command"


def test_worker_survives_redis_trouble_mid_batch_and_finishes_later(redis_server: RedisServer, world) -> None:
    """Redis loading its data or retries running out mid-batch must not end the worker, nor cost the batch: the
    worker keeps the entries in hand and finishes them once Redis answers."""
    from dispatcher.errors import QueueUnavailable

    index, _ = world
    w = _worker(redis_server, index, "w", claim_idle_ms=50, block_ms=20)
    real = w.pipeline.dispatcher.dispatch_many
    failures = [QueueUnavailable("Redis unreachable during plan"), redis_busy_loading()]

    def flaky(*a, **kw):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop(0)
        return real(*a, **kw)

    w.pipeline.dispatcher.dispatch_many = flaky  # type: ignore[method-assign]
    with redis_server.client() as r:
        submit(r, _request(0, np.random.default_rng(9)))
    _serve([w], lambda: w.stats.dispatched == 1)
    assert not failures and w.stats.dispatched == 1 and w.stats.claimed == 0 and w.stats.handled == 1
    seen = _stream(redis_server)
    assert seen and max(seen.values()) == 1


def redis_busy_loading() -> Exception:
    import redis

    return redis.BusyLoadingError("Redis is loading the dataset in memory")


@pytest.mark.parametrize("read_count", [1, 16])
def test_a_command_that_always_fails_is_set_aside_and_the_rest_of_its_batch_served(
        redis_server: RedisServer, world, read_count: int) -> None:
    """A bug that one command triggers every time, in a batch of 16 read together: the batch is split until the
    command fails alone; it goes to the dead-letter stream with its error at once, and every other command of the
    batch is dispatched, exactly once."""
    index, _ = world
    w = _worker(redis_server, index, "w", claim_idle_ms=30, block_ms=10, read_count=read_count, max_deliveries=3)
    real = w.pipeline.run

    def poisoned(cmds, now):  # type: ignore[no-untyped-def]
        if any(c.request_id == "req-5" for c in cmds):
            raise RuntimeError("a bug that this request triggers every time")
        return real(cmds, now)

    w.pipeline.run = poisoned  # type: ignore[method-assign]
    rng = np.random.default_rng(11)
    with redis_server.client() as r:
        for k in range(16):
            submit(r, _request(k, rng))
    _serve([w], lambda: w.stats.handled == 16)
    assert w.stats.dead_lettered == 1 and w.stats.dispatched == 15 and w.stats.claimed == 0
    with redis_server.client() as r:
        dead = r.xrange(Keys().dead_letters)
        assert len(dead) == 1 and b"a bug that this request triggers" in dead[0][1][b"error"]
        assert orjson.loads(dead[0][1][b"cmd"])["request"]["request_id"] == "req-5"
        assert r.xpending(Keys().requests, "workers")["pending"] == 0
    seen = _stream(redis_server)
    assert {rid for rid, _ in seen} <= {f"req-{k}" for k in range(16) if k != 5} and max(seen.values()) == 1
    assert {o for o in w.stats.outcomes} == {"dispatched"}


def test_a_claimed_entry_delivered_too_often_runs_alone_or_is_set_aside(redis_server: RedisServer, world) -> None:
    """An entry that keeps coming back without an outcome (its worker died each time) is run alone once it has
    been delivered more than max_deliveries times, and set aside unrun past four times that."""
    index, _ = world
    w = _worker(redis_server, index, "w", claim_idle_ms=20, block_ms=10, max_deliveries=3)
    rng = np.random.default_rng(12)
    with redis_server.client() as r:
        ids = [submit(r, _request(k, rng)) for k in range(2)]
        r.xreadgroup("workers", "crashed", {Keys().requests: ">"}, count=2)
        r.xclaim(Keys().requests, "workers", "crashed", 0, [ids[0]], retrycount=5)    # 3 < 5 + 1 <= 12
        r.xclaim(Keys().requests, "workers", "crashed", 0, [ids[1]], retrycount=20)   # past 12: set aside
    time.sleep(0.05)
    _serve([w], lambda: w.stats.handled == 1 and w.stats.dead_lettered == 1)
    assert w.stats.dispatched == 1 and w.stats.dead_lettered == 1
    with redis_server.client() as r:
        dead = r.xrange(Keys().dead_letters)
        assert [orjson.loads(d[1][b"cmd"])["request"]["request_id"] for d in dead] == ["req-1"]
        assert r.xpending(Keys().requests, "workers")["pending"] == 0
    assert {rid for rid, _ in _stream(redis_server)} <= {"req-0"}


def test_submitters_learn_a_status_and_cannot_reach_anything_else(redis_server: RedisServer, world) -> None:
    """The agency-facing connection, as a Redis ACL user: it submits and reads its outcomes (status and rule codes:
    no count, no time), and every key that names or counts residents answers NOPERM."""
    import redis

    from dispatcher.service.acl import set_submitter

    index, _ = world
    with redis_server.client() as admin:
        set_submitter(admin, "agency-frontdoor", "s3cret-passw0rd")
    agency = redis.Redis(host="127.0.0.1", port=redis_server.port, username="agency-frontdoor",
                         password="s3cret-passw0rd")
    rng = np.random.default_rng(21)
    submit(agency, _request(0, rng), trace="mine")
    submit(agency, {**_request(1, rng), "incident_type": "protest"}, trace="refused")
    w = _worker(redis_server, index, "w", block_ms=20)
    _serve([w], lambda: w.stats.handled == 2)
    _, got = read_outcomes(agency)
    assert [(o["outcome"], o["trace"]) for o in got] == [("dispatched", "mine"),
                                                         ("refused: RequestRejected", "refused")]
    assert got[1]["codes"] == ["incident_type"]
    assert all(set(o) == {"request_id", "outcome", "codes", "trace"} for o in got)  # no count, no time
    with redis_server.client() as admin:
        _, ops = read_outcomes(admin, operators=True)
    assert ops[0]["notified"] > 0 and "now_us" in ops[0]
    k = Keys()
    for attempt in (lambda: agency.xrange(k.notifications), lambda: agency.xread({k.operator_outcomes: "0"}),
                    lambda: agency.smembers(k.notified("req-0")), lambda: agency.smembers(k.opted_out),
                    lambda: agency.hgetall(k.request("req-0")), lambda: agency.lrange(k.audit, 0, -1),
                    lambda: agency.xadd(k.outcomes, {"o": b"{}"}), lambda: agency.xrange(k.requests),
                    lambda: agency.hgetall(k.plan("req-0")), lambda: agency.keys("*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    agency.close()


def test_commands_every_group_acknowledged_leave_the_stream(redis_server: RedisServer, world) -> None:
    """A command is kept only until it is handled: the stream does not grow for ever."""
    index, _ = world
    rng = np.random.default_rng(31)
    with redis_server.client() as r:
        for k in range(10):
            submit(r, _request(k, rng))
    w = _worker(redis_server, index, "w", block_ms=20, claim_idle_ms=40)
    _serve([w], lambda: w.stats.handled == 10 and redis_server.client().xlen(Keys().requests) == 0)
    with redis_server.client() as r:
        assert r.xlen(Keys().requests) == 0 and r.xpending(Keys().requests, "workers")["pending"] == 0
        assert all((r.hgetall(Keys().request(f"req-{k}")) or {}).get(b"state") == b"dispatched" for k in range(10))


def _reads_seen(server: RedisServer, w: Worker, until,  # type: ignore[no-untyped-def]
                command: str = "XREADGROUP") -> list[list[str]]:
    """The arguments of each ``command`` the worker sent while it served (until ``until()``), seen by MONITOR."""
    seen: list[list[str]] = []
    started = threading.Event()

    def monitor() -> None:
        with server.client() as r, r.monitor() as m:
            started.set()
            for cmd in m.listen():
                args = cmd["command"].split(" ")
                if args[0] == command:
                    seen.append(args)
                elif args[:2] == ["ECHO", "monitor-end"]:
                    return
    watching = threading.Thread(target=monitor, daemon=True)
    watching.start()
    started.wait(10)
    _serve([w], until)
    with server.client() as r:
        r.echo("monitor-end")
    watching.join(timeout=30)
    assert not watching.is_alive()
    return seen


def _streams_named(read: list[str]) -> tuple[str, ...]:
    names = read[read.index("STREAMS") + 1:]
    return tuple(names[:len(names) // 2])


def test_idle_intake_streams_are_read_by_sweeps_and_a_busy_one_on_every_read(redis_server: RedisServer,
                                                                            world) -> None:
    """Redis spends ~1.3 µs on each stream a read names, so a read naming every agency's intake stream cost the
    service half its throughput. Reads name the platform's stream and the intake streams in use; a sweep every
    ``sweep_ms`` names them all, so a command on an idle agency's stream is still handled (and its stream is then
    read every time)."""
    index, _ = world
    agencies = ("il-chicago", *(f"idle-{k}" for k in range(40)))
    w = _worker(redis_server, index, "w", agencies=agencies, block_ms=50, sweep_ms=200)
    chicago = Keys().intake("il-chicago")

    t0 = time.monotonic()
    idle = [_streams_named(a) for a in _reads_seen(redis_server, w, lambda: time.monotonic() - t0 > 1.0)]
    sweeps = [s for s in idle if len(s) == 1 + len(agencies)]
    assert 1 <= len(sweeps) <= 1.0 / 0.2 + 2, len(sweeps)
    assert {s for s in idle if s not in sweeps} == {(Keys().requests,)}
    assert len(idle) - len(sweeps) > len(sweeps)        # most reads name the platform's stream alone

    rng = np.random.default_rng(37)
    with redis_server.client() as r:
        submit(r, {**_request(100, rng), "agency_id": "il-chicago"}, agency="il-chicago")
    assert _reads_seen(redis_server, w, lambda: w.stats.handled == 1)
    assert w.stats.dispatched == 1
    t1 = time.monotonic()
    after = [_streams_named(a) for a in _reads_seen(redis_server, w, lambda: time.monotonic() - t1 > 0.5)]
    assert (Keys().requests, chicago) in after           # the stream in use is read every time now
    assert all(len(s) in (2, 1 + len(agencies)) for s in after), after


def test_a_second_reader_of_the_same_shards_stands_by_until_a_read_comes_back_full() -> None:
    """Threads of a process reading the same shards share a backlog flag; the later ones stand by (unless told
    not to); a thread reading shards of its own has none."""
    (s0, b0, w0), (s1, b1, w1) = consumer_threads(2, 1, True)
    assert s0 == s1 == [0] and b0 is b1 and b0 is not None and (w0, w1) == (False, True)
    assert [w for _, _, w in consumer_threads(2, 1, False)] == [False, False]
    assert consumer_threads(2, 2, True) == [([0], None, False), ([1], None, False)]
    (t0, c0, v0), (t1, c1, v1), (t2, c2, v2) = consumer_threads(3, 2, True)
    assert (t0, t1, t2) == ([0], [1], [0]) and c0 is c2 and c0 is not None and c1 is None
    assert (v0, v1, v2) == (False, False, True)
    assert consumer_threads(1, 3, True) == [([0, 1, 2], None, False)]


def test_a_standby_thread_serves_a_backlog_and_nothing_a_lone_thread_keeps_up_with(redis_server: RedisServer,
                                                                                    world) -> None:
    """Requests sent one at a time are all served by the first thread (its reads come back short); a backlog
    wakes the second, which takes its share; once the reads come back short again it stands by again."""
    index, _ = world
    backlog = threading.Event()
    first = _worker(redis_server, index, "w-t0", block_ms=20, read_count=4, backlog=backlog)
    second = _worker(redis_server, index, "w-t1", block_ms=20, read_count=4, backlog=backlog, standby=True)
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in (first, second)]
    for t in threads:
        t.start()

    def send(first_id: int, n: int) -> None:  # requests away from the cameras: what is measured is the reading
        with redis_server.client() as r:
            for k in range(first_id, first_id + n):
                req = make_request(request_id=f"req-{k}", area=square(0.2, LNG0 + 0.1, LAT0))
                submit(r, {f: getattr(req, f) for f in req.__dataclass_fields__})

    def handled() -> int:
        return first.stats.handled + second.stats.handled

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 60
        while handled() < n and time.monotonic() < deadline:
            time.sleep(0.005)
        assert handled() == n

    try:
        for k in range(10):  # one at a time: each read finds one
            send(k, 1)
            wait_for(k + 1)
        assert (first.stats.handled, second.stats.handled) == (10, 0)
        send(10, 400)
        wait_for(410)
        assert second.stats.handled > 0
        time.sleep(0.2)  # the last reads came back short: the flag is down, the second thread waiting on it
        assert not backlog.is_set()
        before = second.stats.handled
        for k in range(410, 420):
            send(k, 1)
            wait_for(k + 1)
        assert second.stats.handled == before and first.stats.handled == 420 - before
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert first.stats.dispatched + second.stats.dispatched == 420


def test_reads_grow_with_a_backlog_and_shrink_back_when_it_is_gone(redis_server: RedisServer, world) -> None:
    """A full read doubles the next one's count (up to read_count_max): a backlog is taken in bigger batches,
    which cost less a request; reads that come back nearly empty halve it back down to read_count."""
    index, _ = world
    w = _worker(redis_server, index, "w", block_ms=20, read_count=4, read_count_max=32)
    batches: list[int] = []
    process = w.process
    w.process = lambda entries: (batches.append(len(entries)), process(entries))[1]  # type: ignore[method-assign]

    def backlog(first: int, n: int) -> None:  # requests away from the cameras: what is measured is the reading
        with redis_server.client() as r:
            for k in range(first, first + n):
                req = make_request(request_id=f"req-{k}", area=square(0.2, LNG0 + 0.1, LAT0))
                submit(r, {f: getattr(req, f) for f in req.__dataclass_fields__})
    backlog(0, 120)
    _serve([w], lambda: w.stats.handled == 120)
    assert batches == [4, 8, 16, 32, 32, 28], batches
    t0 = time.monotonic()
    _serve([w], lambda: time.monotonic() - t0 > 0.3)   # idle reads: 32 -> 16 -> 8 -> 4
    backlog(120, 20)
    _serve([w], lambda: w.stats.handled == 140)
    assert batches[6:] == [4, 8, 8], batches
    assert w.stats.dispatched == 140


def test_a_dead_consumers_entry_on_an_idle_intake_stream_is_claimed_by_a_full_pass(redis_server: RedisServer,
                                                                                  world) -> None:
    """Claim passes look, as reads do, at the streams in use, and every claim_idle_ms at all of them: an entry a
    dead consumer left on a stream the others never read is still taken over, and far fewer XAUTOCLAIMs are sent
    than one per stream per pass."""
    index, _ = world
    agencies = ("il-chicago", *(f"idle-{k}" for k in range(40)))
    rng = np.random.default_rng(43)
    w = _worker(redis_server, index, "w", agencies=agencies, block_ms=10, claim_idle_ms=400, sweep_ms=100_000)
    chicago = Keys().intake("il-chicago")
    with redis_server.client() as r:
        submit(r, {**_request(200, rng), "agency_id": "il-chicago", "area": square(0.2, LNG0 + 0.1, LAT0)},
               agency="il-chicago")
        # a consumer that read it and died: the entry stays pending, idle, under its name
        assert r.xreadgroup("workers", "dead", {chicago: ">"}, count=1)
    t0 = time.monotonic()
    claims = _reads_seen(redis_server, w, lambda: w.stats.handled == 1 and time.monotonic() - t0 > 2.0,
                         command="XAUTOCLAIM")
    assert w.stats.claimed == 1 and w.stats.dispatched == 1
    per_stream = collections.Counter(a[1] for a in claims)
    assert per_stream[Keys().requests] >= 8                       # a pass every 100 ms, for 2 s
    assert per_stream[Keys().intake("idle-7")] <= per_stream[Keys().requests] / 2, per_stream  # one in four


_STOP_CHILD = """
import signal, sys, threading
from dispatcher.service.supervise import StopSignal, stop_on_signals

for _ in range(ROUNDS):
    stop = StopSignal() if sys.argv[1] == "ours" else threading.Event()
    if sys.argv[1] == "ours":
        stop_on_signals(stop)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # a worker process's shape: threads waiting on the flag, the main thread joining them
    t = threading.Thread(target=lambda: [stop.wait(0.001) for _ in iter(stop.is_set, True)])
    t.start()
    print("ready", flush=True)
    t.join()
    print("stopped", flush=True)
"""


def test_a_burst_of_sigterms_stops_a_worker_process_every_time() -> None:
    """SIGTERMs close together (the parent forwards one that the process group got too) must stop a worker. With
    ``threading.Event`` set by the handler, a second signal landing inside the first ``set()`` waits for ever on
    the lock the main thread holds: about one burst in 30 hung a process (its threads retrying Redis for ever)."""
    rounds = 300
    errors = tempfile.TemporaryFile("w+")  # what the child says when it dies instead of stopping (a file: never full)
    child = subprocess.Popen([sys.executable, "-c", _STOP_CHILD.replace("ROUNDS", str(rounds)), "ours"],
                             stdout=subprocess.PIPE, stderr=errors, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    assert child.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in child.stdout])  # type: ignore[union-attr]
    reader.start()
    stopped = 0
    try:
        for _ in range(rounds):
            assert lines.get(timeout=60) == "ready\n"
            for _ in range(200):
                os.kill(child.pid, signal.SIGTERM)
            try:
                assert lines.get(timeout=10) == "stopped\n"
            except queue.Empty:
                errors.seek(0)
                pytest.fail(f"a burst of SIGTERMs hung the process after {stopped} rounds (exit code "
                            f"{child.poll()}); its stderr:\n{errors.read()[-3000:]}")
            stopped += 1
    finally:
        child.kill()
        child.wait()
        reader.join()  # at the end of the output
        child.stdout.close()
        errors.close()
    assert stopped == rounds


def test_a_long_running_worker_keeps_counts_and_a_window_of_outcomes_not_a_log() -> None:
    """A worker serves for months: at 1,000 requests/s a list of every status would hold 86 million a day."""
    from dispatcher.service.metrics import RECENT, WorkerStats
    from dispatcher.workflow.pipeline import Outcome

    stats = WorkerStats()
    for k in range(3 * RECENT):
        stats.count(Outcome(f"r{k}", "refused: InvalidArea" if k % 3 == 0 else "dispatched", notified=2))
    assert len(stats.outcomes) == RECENT and stats.outcomes[-1] == "dispatched"
    assert stats.by_status == {"refused: InvalidArea": RECENT, "dispatched": 2 * RECENT}
    assert stats.handled == 3 * RECENT and stats.refused == RECENT and stats.recipients == 6 * RECENT


def _families(text: str) -> dict[str, list]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(fams: dict[str, list], sample: str, **labels: str) -> float:
    got = [s.value for fam in fams.values() for s in fam if s.name == sample and
           all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) == 1, (sample, labels, got)
    return got[0]


def test_workers_report_their_counts_and_batch_times_as_prometheus_metrics(redis_server: RedisServer,
                                                                           world) -> None:
    """Each consumer thread reports to Redis while it serves and as it stops; the metrics read back give its
    commands by outcome, the owners its dispatches notified (counted here on the notifications stream) and a
    histogram of its batches, and nothing is waiting once it has served everything."""
    from dispatcher.service.metrics import collect, render

    index, _ = world
    rng = np.random.default_rng(41)
    with redis_server.client() as r:
        for k in range(12):
            submit(r, _request(k, rng))
        submit(r, {**_request(12, rng), "incident_type": "protest"})
    w = _worker(redis_server, index, "w-metrics", block_ms=20, read_count=4, read_count_max=4, metrics_every_s=0.05)
    _serve([w], lambda: w.stats.handled == 13)
    with redis_server.client() as r:
        fams = _families(render(collect(r, Keys())).decode())
    owners = sum(_stream(redis_server).values())
    assert owners > 0 and w.stats.batches >= 4
    assert _value(fams, "geodispatch_redis_up") == 1
    assert _value(fams, "geodispatch_worker_up", worker="w-metrics") == 1
    assert _value(fams, "geodispatch_worker_commands_total", worker="w-metrics", outcome="dispatched") == 12
    assert _value(fams, "geodispatch_worker_commands_total", worker="w-metrics", outcome="refused",
                  reason="RequestRejected") == 1
    assert _value(fams, "geodispatch_worker_owners_notified_total", worker="w-metrics") == owners
    assert _value(fams, "geodispatch_worker_batch_seconds_count", worker="w-metrics") == w.stats.batches
    assert _value(fams, "geodispatch_worker_batch_seconds_bucket", worker="w-metrics", le="+Inf") == w.stats.batches
    assert 0 < _value(fams, "geodispatch_worker_batch_seconds_sum", worker="w-metrics") < 60
    assert _value(fams, "geodispatch_requests_waiting", stream=Keys().requests) == 0
    assert _value(fams, "geodispatch_requests_pending", stream=Keys().requests) == 0


def test_the_metrics_show_a_redis_that_may_evict_and_the_keys_it_evicted(redis_server: RedisServer,
                                                                        tmp_path: Path) -> None:
    """What breaks the service's promises from under it, shown to operators: whether a node's policy lets it
    evict, and how many keys it did (a fresh server, filled past a small maxmemory under allkeys-lru)."""
    from dispatcher.service.metrics import collect, render

    with RedisServer(tmp_path / "redis") as srv, srv.client() as r:
        fams = _families(render(collect(r, Keys())).decode())
        assert _value(fams, "geodispatch_redis_may_evict", node="") == 0
        assert _value(fams, "geodispatch_redis_evicted_keys_total", node="") == 0
        r.config_set("maxmemory-policy", "allkeys-lru")
        r.config_set("maxmemory", 4 * 2**20)
        pipe = r.pipeline(transaction=False)
        for k in range(4000):
            pipe.set(f"filler:{k}", b"x" * 2048)
        pipe.execute()
        evicted = int(r.info("stats")["evicted_keys"])
        assert evicted > 0 and r.dbsize() < 4000
        fams = _families(render(collect(r, Keys())).decode())
        assert _value(fams, "geodispatch_redis_may_evict", node="") == 1
        assert _value(fams, "geodispatch_redis_evicted_keys_total", node="") >= evicted
        # a metrics connection that may not run INFO still gets the rest (the nodes left out, not Redis "down")
        r.execute_command("ACL", "SETUSER", "watcher", "on", ">watcher-pw", "~*", "+@read", "-info")
        with redis.Redis.from_url(f"redis://watcher:watcher-pw@127.0.0.1:{srv.port}/0") as limited:
            snap = collect(limited, Keys())
        assert snap.redis_nodes == {} and snap.backlog == {Keys().requests: (0, 0)}


def test_a_worker_that_stops_reporting_is_down_and_then_forgotten(redis_server: RedisServer) -> None:
    """A report late by three of its intervals says the worker is down; one older than an hour is dropped by
    the next report of any worker (from the reports and from the times seen)."""
    from dispatcher.service.metrics import KEEP_S, WorkerStats, collect, render, report

    k = Keys()
    with redis_server.client() as r:
        report(r, k, "gone", WorkerStats(), every_s=0.05)
        report(r, k, "long-gone", WorkerStats(), every_s=5)
        r.zadd(k.worker_seen, {"long-gone": time.time() - KEEP_S - 1})
        time.sleep(0.2)
        report(r, k, "alive", WorkerStats(), every_s=5)
        fams = _families(render(collect(r, k)).decode())
        assert _value(fams, "geodispatch_worker_up", worker="gone") == 0
        assert _value(fams, "geodispatch_worker_up", worker="alive") == 1
        assert sorted(r.hkeys(k.worker_reports)) == [b"alive", b"gone"]
        assert sorted(r.zrange(k.worker_seen, 0, -1)) == [b"alive", b"gone"]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"at": "soon"}', b"{}",
                                 orjson.dumps({"handled": float("inf")}), b'{"at": NaN}'])
def test_a_report_that_is_not_one_is_left_out_and_the_others_still_read(redis_server: RedisServer,
                                                                        raw: bytes) -> None:
    """Another version's report, or a damaged one, must not take every scrape down with it."""
    from dispatcher.service.metrics import WorkerStats, collect, render, report

    k = Keys()
    with redis_server.client() as r:
        report(r, k, "good", WorkerStats())
        r.hset(k.worker_reports, "bad", raw)
        snap = collect(r, k)
        assert sorted(snap.workers) == ["good"] and snap.unreadable == 1
        fams = _families(render(snap).decode())
    assert _value(fams, "geodispatch_reports_unreadable") == 1
    assert _value(fams, "geodispatch_worker_up", worker="good") == 1


def test_the_metrics_are_served_over_http_and_say_when_redis_is_away(world) -> None:
    """``serve --metrics-port``'s server: a scrape reads Redis afresh; with Redis gone it answers at once with
    ``geodispatch_redis_up 0`` instead of failing (or waiting out every retry)."""
    import urllib.request

    from dispatcher.service.metrics import WorkerStats, report, serve_metrics

    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        qs = QueueSettings.from_url(server.url, socket_timeout=0.5, connect_timeout=0.5)
        with server.client() as r:
            report(r, Keys(), "w0", WorkerStats())
        client = redis.Redis.from_url(server.url, socket_timeout=0.5)
        httpd, _ = serve_metrics("127.0.0.1", 0, client, Keys(), qs)
        url = f"http://127.0.0.1:{httpd.server_port}/metrics"

        def scrape() -> dict[str, list]:
            with urllib.request.urlopen(url, timeout=30) as resp:
                return _families(resp.read().decode())
        try:
            fams = scrape()
            assert _value(fams, "geodispatch_redis_up") == 1 and _value(fams, "geodispatch_worker_up", worker="w0")
            server.stop()
            t0 = time.monotonic()
            fams = scrape()
            assert _value(fams, "geodispatch_redis_up") == 0 and "geodispatch_worker_up" not in fams
            assert time.monotonic() - t0 < 10
        finally:
            httpd.shutdown()
            httpd.server_close()
            client.close()


def test_agencies_and_submitters_cannot_read_the_workers_or_the_senders_reports(redis_server: RedisServer) -> None:
    """The reports count residents notified and refusals as they happen: an agency watching them around its own
    submission would learn how many of its area's residents were left out. They are the operators' alone."""
    from dispatcher.service.acl import set_agency, set_submitter
    from dispatcher.service.metrics import WorkerStats, report

    k = Keys()
    with redis_server.client() as admin:
        report(admin, k, "w0", WorkerStats())
        set_agency(admin, "agency-a", "s3cret-passw0rd-a", "il-chicago")
        set_submitter(admin, "frontdoor", "s3cret-passw0rd-f")
    for user, pw in (("agency-a", "s3cret-passw0rd-a"), ("frontdoor", "s3cret-passw0rd-f")):
        with redis.Redis(host="127.0.0.1", port=redis_server.port, username=user, password=pw) as c:
            for attempt in (lambda: c.hgetall(k.worker_reports), lambda: c.zrange(k.worker_seen, 0, -1),
                            lambda: c.hset(k.worker_reports, "w0", b"{}"), lambda: c.hgetall(k.sender_reports),
                            lambda: c.zrange(k.sender_seen, 0, -1)):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    attempt()


@pytest.mark.parametrize("crafted", ["il-*", "[a-z]l-chicago", "il-chicag?", "il-\\chicago"])
def test_an_agency_whose_id_is_a_glob_is_still_only_itself(redis_server: RedisServer, crafted: str) -> None:
    """ACL key patterns are globs: an agency registered as ``il-*`` (its id made into the pattern as it is)
    could append to il-chicago's intake, so submit as il-chicago, and read its outcomes. It reaches its own
    streams, and nothing of il-chicago's."""
    from dispatcher.service.acl import set_agency

    k = Keys()
    with redis_server.client() as admin:
        admin.xadd(k.agency_outcomes("il-chicago"), {"outcomes": b"chicago's"})
        set_agency(admin, "crafted", "s3cret-passw0rd-c", crafted)
    with redis.Redis(host="127.0.0.1", port=redis_server.port, username="crafted",
                     password="s3cret-passw0rd-c") as c:
        c.xadd(k.intake(crafted), {"cmd": b"{}"})
        c.xread({k.agency_outcomes(crafted): "0"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.xadd(k.intake("il-chicago"), {"cmd": b"{}"})
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.xread({k.agency_outcomes("il-chicago"): "0"})
    with redis_server.client() as admin:
        assert admin.xlen(k.intake(crafted)) == 1 and not admin.exists(k.intake("il-chicago"))


def test_the_metrics_command_prints_them_once(redis_server: RedisServer) -> None:
    from click.testing import CliRunner

    from dispatcher.cli import main
    from dispatcher.service.metrics import WorkerStats, report
    from dispatcher.workflow.pipeline import Outcome

    stats = WorkerStats()
    stats.count(Outcome("r1", "submitted"))
    with redis_server.client() as r:
        report(r, Keys(), "w0", stats)
    got = CliRunner().invoke(main, ["metrics", "--redis-url", redis_server.url])
    assert got.exit_code == 0, got.output
    fams = _families(got.output)
    assert _value(fams, "geodispatch_worker_commands_total", worker="w0", outcome="submitted") == 1


def test_a_worker_whose_reports_are_refused_says_so_once_and_serves_on(redis_server: RedisServer, world,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A report refused (a NOPERM: the worker's ACL user does not name the reports' keys) costs no command, and
    is said once: not at every report, and not never."""
    import logging

    index, _ = world
    k = Keys()
    with redis_server.client() as admin:  # the worker's own commands: its streams, outcomes and dead letters
        admin.execute_command("ACL", "SETUSER", "worker", "reset", "on", ">s3cret-passw0rd-w", "+@all",
                              f"~{k.requests}*", f"~{k.outcomes}", f"~{k.operator_outcomes}")
    helper = _worker(redis_server, index, "w-refused")
    w = Worker("w-refused", redis.Redis(host="127.0.0.1", port=redis_server.port, username="worker",
                                        password="s3cret-passw0rd-w", protocol=3),
               helper.pipeline, ServiceSettings(block_ms=20, metrics_every_s=0.02), clock=lambda: NOW)
    rng = np.random.default_rng(51)
    with redis_server.client() as r:
        for n in range(3):
            submit(r, _request(n, rng))
    with caplog.at_level(logging.DEBUG, logger="dispatcher.service.metrics"):
        _serve([w], lambda: w.stats.handled == 3 and w.stats.batches >= 1)
        time.sleep(0.1)
    said = [rec for rec in caplog.records if "report skipped" in rec.getMessage()]
    assert w.stats.dispatched == 3 and len(said) > 1 and "no permissions" in said[0].getMessage()
    assert [rec.levelno for rec in said] == [logging.WARNING] + [logging.DEBUG] * (len(said) - 1)
    with redis_server.client() as admin:
        assert not admin.exists(k.worker_reports)

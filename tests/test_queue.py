"""Dispatch to Redis and to the local sink: exactly one notification per recipient under repeats, races, SIGKILL,
restarts and dropped connections."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis

from dispatcher.connections import with_retries
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.settings import QueueSettings, redacted
from dispatcher.dispatch.sinks import LocalSink, RedisSink
from dispatcher.dispatch.wire import decode_batch, decode_recipients, encode_recipients
from dispatcher.errors import DispatchConflict, DispatchError, InvalidData, InvalidQueueSettings, QueueUnavailable
from dispatcher.index.recipients import RecipientSet
from dispatcher.service.servers import RedisServer
from tests.notifications import NOW, header, make_recipients


def _same_set(a: RecipientSet, b: RecipientSet) -> bool:
    return (a.version == b.version and np.array_equal(a.owner_ids, b.owner_ids)
            and np.array_equal(a.owner_offsets, b.owner_offsets) and np.array_equal(a.camera_ids, b.camera_ids))


@pytest.mark.parametrize("n, version", [(0, None), (1, 7), (53, None), (40_000, 12)])
def test_recorded_recipients_round_trip(n: int, version: int | None) -> None:
    """A plan's recipient set reads back as recorded: small ones (stored raw) and wide ones (compressed) alike."""
    rs = make_recipients(n, seed=n)
    rs = RecipientSet(rs.owner_ids, rs.camera_ids, rs.owner_offsets, version)
    assert _same_set(decode_recipients(encode_recipients(rs)), rs)


def test_recorded_recipients_of_before_still_read() -> None:
    """Plans recorded by workers of before hold the set zlib-compressed, with or without its index version: a
    retry after the upgrade reads them, and sends that set."""
    import zlib
    rs = make_recipients(60, seed=4)
    cols = [np.array([rs.n_owners, rs.n_cameras]), rs.owner_ids, rs.owner_offsets, rs.camera_ids]
    for tail, version in (([np.array([5])], 5), ([np.array([-1])], None), ([], None)):
        blob = zlib.compress(b"".join(np.asarray(a, "<i8").tobytes() for a in cols + tail), 1)
        got = decode_recipients(blob)
        assert _same_set(got, RecipientSet(rs.owner_ids, rs.camera_ids, rs.owner_offsets, version))
    for bad in (b"", b"\x00" + b"\x01" * 9, b"\x00" + np.array([3, 1], "<i8").tobytes(), b"x\x9cnot zlib"):
        with pytest.raises(InvalidData):
            decode_recipients(bad)


def notified(sink, rid: str | None = None) -> Counter:
    c: Counter = Counter()
    for r, payload in sink.read_all():
        if rid is None or r == rid:
            _, notes = decode_batch(payload)
            c.update(n.owner_id for n in notes)
    return c


def assert_exactly_once(sink, rs: RecipientSet, rid: str = "req-1") -> None:
    got = notified(sink, rid)
    assert sorted(got) == rs.owner_ids.tolist()
    assert max(got.values()) == 1


class EvenOnly:
    """A gate that refuses odd owners (as opted out) and records nothing."""

    def check_many(self, items, now):
        return [(owner_ids % 2).astype(np.int8) for _, owner_ids in items]

    def terms(self, now):
        return None


# ------------------------------------------------------------------------------------------------------ settings
def test_settings_from_url_and_env():
    s = QueueSettings.from_url("redis://localhost:6390/2?batch_size=300&retries=3&backoff_base=0.01")
    assert (s.url, s.batch_size, s.retries, s.backoff_base) == ("redis://localhost:6390/2", 300, 3, 0.01)
    e = QueueSettings.from_env({"GEODISPATCH_REDIS_URL": "redis://h:1/0", "GEODISPATCH_QUEUE_BATCH_SIZE": "7"})
    assert (e.url, e.batch_size) == ("redis://h:1/0", 7)
    assert QueueSettings.from_env({}).url is None


@pytest.mark.parametrize("bad", ["redis://h/0?batchsize=3", "redis://h/0?batch_size=x", "redis://h/0?batch_size=0"])
def test_settings_misspelled_or_invalid_raise(bad):
    with pytest.raises(InvalidQueueSettings) as ei:
        QueueSettings.from_url(bad)
    assert isinstance(ei.value, ValueError)


def test_settings_keep_a_unix_socket_url_and_its_database():
    """A unix socket's URL reaches redis-py whole (it was cut to ``unix:/path``, which redis-py refuses), with the
    database it names (``?db=``, the only place a socket URL has for it); our parameters are taken out."""
    s = QueueSettings.from_url("unix:///run/redis/redis.sock?batch_size=9&db=4&retries=2")
    assert (s.url, s.batch_size, s.retries) == ("unix:///run/redis/redis.sock?db=4", 9, 2)
    kw = redis.ConnectionPool.from_url(s.url).connection_kwargs
    assert (kw["path"], kw["db"]) == ("/run/redis/redis.sock", 4)
    assert QueueSettings.from_url("unix:///r.sock").url == "unix:///r.sock"
    assert QueueSettings.from_url("redis://h:1/2?db=3").url == "redis://h:1/2?db=3"  # redis-py reads the query's


@pytest.mark.parametrize(("bad", "why"), [
    ("foo://u:s3cret@h/0", "not a redis://"), ("redis//h:1/0", "not a redis://"), ("h:6379", "not a redis://"),
    ("redis://u:s3cret@h:99999/0", "port"), ("redis://u:s3cret@h:x/0", "port"), ("redis://h/zero", "database"),
    ("redis://h/0#frag", "fragment"), ("unix://", "socket path"), ("unix:///r.sock?cluster=true", "TCP"),
    ("redis://u:s3cret@h/0?db=x", "db='x'"), ("redis://u:s3cret@h/0?nosuch=1", "nosuch"),
    ("unix://u:s3cret@/r.sock?db=-1", "db='-1'")])
def test_settings_refuse_a_url_redis_py_would_refuse_later_and_never_show_its_password(bad, why):
    """A URL redis-py refuses only when a client is first made (a bare ValueError, a traceback from ``serve``) is
    refused as the settings are made, in a typed error that names what is wrong; a password in it is shown as
    ``***`` (the messages go to logs)."""
    with pytest.raises(InvalidQueueSettings, match=re.escape(why)) as ei:
        QueueSettings.from_url(bad)
    assert "s3cret" not in str(ei.value)


def test_settings_made_directly_check_their_url_too():
    for bad, cluster in (("foo://x", False), ("redis://h:99999/0", False), ("unix:///r.sock", True)):
        with pytest.raises(InvalidQueueSettings):
            QueueSettings(url=bad, cluster=cluster)


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://worker:pa/ss@h:1/0", "redis://worker:***@h:1/0"), ("redis://:p@ss@h/0", "redis://:***@h/0"),
    ("unix://u:pw@/run/r.sock?db=1", "unix://u:***@/run/r.sock?db=1"), ("redis://h:1/0", "redis://h:1/0"),
    ("redis://worker@h/0", "redis://worker@h/0")])
def test_a_url_is_shown_without_its_password(url, shown):
    assert redacted(url) == shown


def test_settings_show_their_url_without_its_password():
    assert QueueSettings.from_url("redis://worker:s3cret@h:1/0?retries=2").where == "redis://worker:***@h:1/0"
    assert QueueSettings().where == "the local sink"


def test_settings_env_misspelled_raises():
    with pytest.raises(InvalidQueueSettings, match="batchsize"):
        QueueSettings.from_env({"GEODISPATCH_QUEUE_BATCHSIZE": "3"})


# --------------------------------------------------------------------------------------------- encoding, content
def test_notification_names_only_its_owner_and_their_cameras(tmp_path):
    rs = make_recipients(50)
    sink = LocalSink(tmp_path / "q.sqlite")
    Dispatcher(sink, QueueSettings(batch_size=8)).dispatch(header(), rs, now=NOW)
    seen = 0
    for _, payload in sink.read_all():
        _, notes = decode_batch(payload)
        for n in notes:
            assert n.camera_ids == tuple(rs.cameras_of(n.owner_id).tolist())
            assert n.header["case_number"] == "C-42" and n.header["message"].endswith("& help")
            seen += 1
    assert seen == 50


# ---------------------------------------------------------------------------------------------- both sinks
def sinks(kind, tmp_path, server=None, batch_size=16):
    settings = QueueSettings(url=server.url if server else None, batch_size=batch_size, pipeline_batches=4,
                             retries=30, backoff_base=0.02, backoff_max=0.3, socket_timeout=2.0)
    sink = RedisSink(settings) if kind == "redis" else LocalSink(tmp_path / "q.sqlite")
    return sink, settings


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def sink_and_settings(request, tmp_path):
    if request.param == "redis":
        return sinks("redis", tmp_path, request.getfixturevalue("redis_server"))
    return sinks("local", tmp_path)


def test_repeat_dispatch_notifies_nobody_twice(sink_and_settings):
    sink, settings = sink_and_settings
    rs = make_recipients(1000)
    r1 = Dispatcher(sink, settings).dispatch(header(), rs, now=NOW)
    assert (r1.recipients_notified, r1.batches_sent, r1.already_done) == (1000, 63, 0)
    r2 = Dispatcher(sink, settings).dispatch(header(), rs, now=NOW)
    assert (r2.recipients_notified, r2.batches_sent, r2.already_done) == (0, 0, 1000)
    assert_exactly_once(sink, rs)


def test_batch_size_is_fixed_by_first_dispatch(sink_and_settings):
    sink, settings = sink_and_settings
    rs = make_recipients(300)
    Dispatcher(sink, settings).dispatch(header(), rs, now=NOW)
    other = QueueSettings(url=settings.url, batch_size=7)
    r = Dispatcher(sink, other).dispatch(header(), rs, now=NOW)
    assert r.already_done == 300 and r.recipients_notified == 0
    assert_exactly_once(sink, rs)


def test_different_recipient_set_is_refused(sink_and_settings):
    sink, settings = sink_and_settings
    Dispatcher(sink, settings).dispatch(header(), make_recipients(100, seed=1), now=NOW)
    with pytest.raises(DispatchConflict) as ei:
        Dispatcher(sink, settings).dispatch(header(), make_recipients(100, seed=2), now=NOW)
    assert isinstance(ei.value, DispatchError)


def test_gate_suppresses_at_send_time(sink_and_settings):
    sink, settings = sink_and_settings
    rs = make_recipients(500)
    r = Dispatcher(sink, settings).dispatch(header(), rs, gate=EvenOnly(), now=NOW)
    even = rs.owner_ids[rs.owner_ids % 2 == 0]
    assert r.recipients_notified == even.shape[0] and r.suppressed == 500 - even.shape[0]
    got = notified(sink)
    assert sorted(got) == even.tolist() and max(got.values()) == 1
    for _, payload in sink.read_all():
        for n in decode_batch(payload)[1]:
            assert n.camera_ids == tuple(rs.cameras_of(n.owner_id).tolist())


def test_two_requests_are_independent(sink_and_settings):
    sink, settings = sink_and_settings
    a, b = make_recipients(200, 1), make_recipients(150, 2)
    Dispatcher(sink, settings).dispatch(header("A"), a, now=NOW)
    Dispatcher(sink, settings).dispatch(header("B"), b, now=NOW)
    assert_exactly_once(sink, a, "A")
    assert_exactly_once(sink, b, "B")


def test_empty_recipient_set(sink_and_settings):
    sink, settings = sink_and_settings
    r = Dispatcher(sink, settings).dispatch(header(), RecipientSet.empty(), now=NOW)
    # one empty batch, done without an entry: the same work as a request of one owner
    assert (r.batches_total, r.batches_sent, r.recipients_notified) == (1, 0, 0)
    assert sink.read_all() == []
    again = Dispatcher(sink, settings).dispatch(header(), RecipientSet.empty(), now=NOW)
    assert (again.batches_total, again.batches_sent, again.already_done) == (1, 0, 0)
    assert sink.read_all() == []


def test_threads_racing_on_one_request(sink_and_settings, tmp_path):
    sink, settings = sink_and_settings
    rs = make_recipients(3000)
    reports = []
    errors = []

    def work():
        try:
            s = RedisSink(settings) if isinstance(sink, RedisSink) else LocalSink(sink.path)
            reports.append(Dispatcher(s, settings).dispatch(header(), rs, now=NOW))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.recipients_notified for r in reports) == 3000
    assert all(r.recipients_notified + r.already_done == 3000 for r in reports)
    assert_exactly_once(sink, rs)


# ------------------------------------------------------------------------------------------------------ SIGKILL
WORKER = """
import sys
from tests.notifications import NOW, header, make_recipients
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink, LocalSink
kind, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
settings = QueueSettings(url=target if kind == "redis" else None, batch_size=10, pipeline_batches=2)
sink = RedisSink(settings) if kind == "redis" else LocalSink(target)
print("ready", flush=True)
Dispatcher(sink, settings).dispatch(header(), make_recipients(n), now=NOW)
print("finished", flush=True)
"""


def run_killed_workers(kind: str, target: str, n: int, rounds: int, rng: random.Random) -> int:
    killed = 0
    root = Path(__file__).resolve().parent.parent
    for _ in range(rounds):
        with subprocess.Popen([sys.executable, "-c", WORKER, kind, target, str(n)], cwd=root,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)}) as p:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.25))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                killed += 1
            p.wait()
    return killed


@pytest.mark.parametrize("kind", ["local", pytest.param("redis", marks=pytest.mark.redis)])
def test_sigkill_mid_dispatch_then_complete(kind, tmp_path, request):
    rng = random.Random(5)
    n = 20000
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        target = server.url
        sink = RedisSink(QueueSettings(url=target, batch_size=10))
    else:
        target = str(tmp_path / "q.sqlite")
        sink = LocalSink(target)
    killed = run_killed_workers(kind, target, n, rounds=4, rng=rng)
    rs = make_recipients(n)
    partial = notified(sink)
    assert max(partial.values(), default=1) == 1           # never a duplicate, even mid-way
    r = Dispatcher(sink, QueueSettings(url=sink.settings.url if kind == "redis" else None,
                                       batch_size=10)).dispatch(header(), rs, now=NOW)
    assert r.recipients_notified + r.already_done == n
    assert killed >= 1 or r.recipients_notified == 0
    assert_exactly_once(sink, rs)


# ------------------------------------------------------------------------------------- restarts and drops
@pytest.mark.redis
def test_redis_restart_mid_dispatch(tmp_path):
    with RedisServer(tmp_path / "r") as server:
        sink, settings = sinks("redis", tmp_path, server, batch_size=10)
        rs = make_recipients(20000)
        done = threading.Event()

        def restart():
            time.sleep(0.05)
            if not done.is_set():
                server.restart()

        t = threading.Thread(target=restart)
        t.start()
        Dispatcher(sink, settings).dispatch(header(), rs, now=NOW)
        done.set()
        t.join()
        assert_exactly_once(sink, rs)


@pytest.mark.redis
def test_client_kill_mid_dispatch(redis_server, tmp_path):
    sink, settings = sinks("redis", tmp_path, redis_server, batch_size=10)
    rs = make_recipients(20000)
    stop = threading.Event()
    kills = []

    def killer():
        with redis_server.client() as c:
            while not stop.is_set():
                kills.append(c.client_kill_filter(_type="normal", skipme=True))
                time.sleep(0.01)

    t = threading.Thread(target=killer)
    t.start()
    try:
        Dispatcher(sink, settings).dispatch(header(), rs, now=NOW)
    finally:
        stop.set()
        t.join()
    assert sum(kills) >= 1
    assert_exactly_once(sink, rs)


@pytest.mark.redis
def test_redis_down_gives_a_clear_error_and_loses_nothing(tmp_path):
    with RedisServer(tmp_path / "r") as server:
        settings = QueueSettings(url=server.url, batch_size=10, retries=2, backoff_base=0.01, socket_timeout=0.5,
                                 connect_timeout=0.5)
        sink = RedisSink(settings)
        rs = make_recipients(500)
        Dispatcher(sink, settings).dispatch(header("A"), make_recipients(100, 3), now=NOW)
        server.stop(kill=True)
        with pytest.raises(QueueUnavailable) as ei:
            Dispatcher(sink, settings).dispatch(header(), rs, now=NOW)
        assert isinstance(ei.value, ConnectionError) and "after 3 attempts" in str(ei.value)
        server.start()
        Dispatcher(sink, settings).dispatch(header(), rs, now=NOW)
        assert_exactly_once(sink, rs)
        assert_exactly_once(sink, make_recipients(100, 3), "A")


def test_retries_are_bounded_with_full_jitter_backoff_and_a_typed_error_at_the_end():
    """with_retries (redis-py's Retry): ``retries`` retries after the first attempt, the wait before retry k
    uniform in [0, min(backoff_max, backoff_base * 2**k)], then QueueUnavailable naming the step; an error that
    is not Redis trouble is raised at once, and trouble that passes (BUSY, OOM) is retried."""
    settings = QueueSettings(url="redis://", retries=4, backoff_base=0.02, backoff_max=0.05)
    calls: list[float] = []

    def down() -> None:
        calls.append(time.monotonic())
        raise redis.ConnectionError("gone")

    with pytest.raises(QueueUnavailable) as ei:
        with_retries(settings, "the probe", down)
    assert len(calls) == 5 and "during the probe after 5 attempts: gone" in str(ei.value)
    assert isinstance(ei.value.__cause__, redis.ConnectionError)
    waits = np.diff(calls)
    assert all(w <= min(0.05, 0.02 * 2 ** k) + 0.02 for k, w in enumerate(waits)), waits  # + scheduling slack

    first: list[float] = []  # the wait before the first retry, 40 times: spread over [0, backoff_base]
    for _ in range(40):
        calls.clear()
        with pytest.raises(QueueUnavailable):
            with_retries(QueueSettings(url="redis://", retries=1, backoff_base=0.02), "x", down)
        first.append(calls[1] - calls[0])
    assert min(first) < 0.007 and 0.013 < max(first) < 0.032, sorted(first)  # not [0, 2 * backoff_base]

    replies = iter([redis.exceptions.BusyLoadingError("loading"), redis.ResponseError("BUSY script"),
                    redis.exceptions.OutOfMemoryError("OOM command not allowed")])

    def passing() -> str:
        for exc in replies:
            raise exc
        return "done"

    assert with_retries(settings, "x", passing) == "done"
    calls.clear()

    def wrong() -> None:
        calls.append(time.monotonic())
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        with_retries(settings, "x", wrong)
    assert len(calls) == 1

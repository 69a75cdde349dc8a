"""The camera registry change feed on a real redis-server: changes validated on the way in and out, applied in
order by every follower and by every real ``serve`` worker process; a malformed entry recorded and passed; the
version each resolve used recorded with the dispatch plan; snapshots switched atomically, the feed trimmed below
them, and a worker started late, or restarted after SIGKILL mid-feed, catching up exactly. Every recipient set is
checked against the brute-force shapely oracle (bench/reference.py) over a model of the registry kept here."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import pyarrow as pa
import pytest
import redis

from bench.reference import Dataset, brute_force
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink
from dispatcher.dispatch.wire import NotificationHeader
from dispatcher.errors import DispatchError, InvalidChange
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index.camera_index import CameraIndex
from dispatcher.index.schema import CAMERA_SCHEMA, OWNER_SCHEMA
from dispatcher.keys import Keys
from dispatcher.service.client import read_outcomes, submit
from dispatcher.service.feed import MAX_ENTRY_BYTES, Change, FeedFollower, Snapshots, Snapshotter, publish_changes
from dispatcher.service.servers import RedisServer
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from tests.video_requests import JOINED, LAT0, LNG0, NOW, square
from tests.video_requests import request as make_request

pytestmark = pytest.mark.redis

K = Keys()
AREA = square(0.2)
START, END = NOW - timedelta(hours=5), NOW - timedelta(hours=3)
INSTALLED = int((NOW - timedelta(days=300)).timestamp())


@dataclass
class Registry:
    """The registry as the test knows it: the oracle's data, changed beside the feed."""

    rows: dict[int, dict[str, Any]]
    owners: set[int]
    opted_out: set[int] = field(default_factory=set)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))
    next_id: int = 1_000_000

    @classmethod
    def make(cls, n: int) -> Registry:
        rng = np.random.default_rng(3)
        lng, lat = LNG0 + rng.normal(0, 0.004, n), LAT0 + rng.normal(0, 0.004, n)
        owners = rng.integers(1, n // 2, n)
        rows = {k + 1: _row(k + 1, int(owners[k]), float(lat[k]), float(lng[k])) for k in range(n)}
        return cls(rows, set(owners.tolist()))

    def table(self) -> pa.Table:
        rows = [dict(r, installed_at=datetime.fromtimestamp(r["installed_at"], timezone.utc))
                for r in self.rows.values()]
        return pa.Table.from_pylist(rows, schema=CAMERA_SCHEMA)

    def owner_table(self) -> pa.Table:
        ids = sorted(self.owners | {r["owner_id"] for r in self.rows.values()})
        return pa.table({"owner_id": ids, "opted_out": [i in self.opted_out for i in ids]}, schema=OWNER_SCHEMA)

    def oracle(self, now: datetime) -> dict[int, list[int]]:
        return brute_force(Dataset.from_tables(self.table(), self.owner_table()), AREA, START, END, now)

    def random_change(self) -> Change:
        """One random change, applied to the model too (as the index will apply it)."""
        live = list(self.rows)
        kind = self.rng.random()
        if kind < 0.3:
            cid = int(self.rng.choice(live))
            del self.rows[cid]
            return Change.remove([cid])
        if kind < 0.7:
            cid = int(self.rng.choice(live))
            on = bool(self.rng.random() < 0.5)
            self.rows[cid]["sharing_enabled"] = on
            return Change.sharing([cid], on)
        if kind < 0.85:
            owner = int(self.rng.choice(sorted(self.owners)))
            out = bool(self.rng.random() < 0.5)
            (self.opted_out.add if out else self.opted_out.discard)(owner)
            return Change.opt_out([owner], out)
        return self.add()

    def add(self) -> Change:
        self.next_id += 1
        row = _row(self.next_id, int(self.rng.choice(sorted(self.owners))),
                   LAT0 + float(self.rng.normal(0, 0.003)), LNG0 + float(self.rng.normal(0, 0.003)))
        self.rows[self.next_id] = row
        return Change.add([row])


def _row(cid: int, owner: int, lat: float, lng: float) -> dict[str, Any]:
    return {"camera_id": cid, "owner_id": owner, "lat": lat, "lng": lng, "installed_at": INSTALLED,
            "removed_at": None, "retention_days": 180, "sharing_enabled": True}


def _as_dict(rs: Any) -> dict[int, list[int]]:
    return {int(o): sorted(c.tolist()) for o, c in rs.items()}


HOSTILE: list[dict[bytes | str, bytes | str]] = [
    {"c": b"{not json"},
    {"c": b'{"op": "explode", "camera_ids": [1]}'},
    {"c": b'{"op": "remove", "camera_ids": ["1"]}'},
    {"c": b'{"op": "remove", "camera_ids": [1, 1]}'},
    {"c": b'{"op": "remove", "camera_ids": [99999999]}'},          # well formed, but no such camera
    {"c": b'{"op": "sharing", "camera_ids": [2], "enabled": "no"}'},
    {"c": b'{"op": "add", "cameras": [{"camera_id": 5}]}'},
    {"c": orjson.dumps({"op": "add", "cameras": [_row(77_777, 1, 95.0, LNG0)]})},   # latitude out of range
    {"c": b"[]"},
    {"x": b"no change field"},
    {"c": b'{"op": "remove", "camera_ids": [' + b"1, " * 400_000 + b"1]}"},  # past the size limit
]


def test_changes_are_validated_applied_in_order_and_bad_entries_recorded_once(redis_server: RedisServer) -> None:
    reg = Registry.make(1_500)
    r = redis_server.client()
    a, b = CameraIndex.build(reg.table(), reg.owner_table()), CameraIndex.build(reg.table(), reg.owner_table())
    with pytest.raises(InvalidChange):  # one bad change among good ones: nothing published
        publish_changes(r, [Change.remove([1]), {"op": "remove", "camera_ids": [True]}])
    for bad in ({"op": "optout", "owner_ids": [2 ** 63]}, {"op": "sharing", "camera_ids": [1]}, "nonsense",
                {"op": "remove", "camera_ids": list(range(10_001))}, {"op": "remove", "camera_ids": [1], "x": 1}):
        with pytest.raises(InvalidChange) as err:
            publish_changes(r, [bad])  # type: ignore[list-item]
        assert isinstance(err.value, DispatchError) and isinstance(err.value, ValueError)
    assert r.xlen(K.feed) == 0
    fa, fb = FeedFollower(a, r, "a"), FeedFollower(b, r, "b")
    for k in range(66):
        publish_changes(r, [reg.random_change() for _ in range(5)])
        if k % 6 == 0:
            r.xadd(K.feed, HOSTILE[k // 6])
        if k == 30:
            fa.catch_up()  # a follows half way, then the rest
    twice = reg.add()
    publish_changes(r, [twice, twice])  # the second add of the same camera is refused, not applied again
    assert fa.catch_up() > 0 and fb.catch_up() == 330 + len(HOSTILE) + 2
    assert fa.catch_up() == 0 and fb.rejected == len(HOSTILE) + 1 and fb.applied == 331
    assert a.version == b.version == fb.index.version > 0
    rejected = r.hgetall(K.feed_rejected)
    assert len(rejected) == len(HOSTILE) + 1 and any(b"already in the index" in v for v in rejected.values())
    assert {int(v) for v in r.hgetall(K.feed_applied).values()} == {b.version}
    expected = reg.oracle(NOW)
    for index in (a, b):
        rs = index.resolve(AREA, START, END, now=NOW)
        assert _as_dict(rs) == expected and rs.version == index.version
    cams = a.resolve(AREA, START, END, now=NOW)
    owner = twice.to_dict()["cameras"][0]["owner_id"]
    assert cams.cameras_of(owner).tolist().count(twice.to_dict()["cameras"][0]["camera_id"]) <= 1


def test_a_batch_applies_as_its_changes_one_after_the_other_and_a_step_is_bounded(
        redis_server: RedisServer) -> None:
    reg = Registry.make(1_500)
    r = redis_server.client()
    one, batched = CameraIndex.build(reg.table(), reg.owner_table()), CameraIndex.build(reg.table(), reg.owner_table())
    inside = reg.oracle(NOW)
    owners = sorted(inside)
    x, y = inside[owners[0]][0], inside[owners[1]][0]
    twin = Change.add([reg.rows[y]])  # an id the index holds: refused
    new = reg.add()
    fresh = new.to_dict()["cameras"][0]["camera_id"]
    del reg.rows[x]
    reg.rows[fresh]["sharing_enabled"] = False
    reg.opted_out.add(owners[3])
    tricky = [Change.remove([x]), Change.sharing([x], True),  # refused: removed earlier in the same batch
              new, Change.sharing([fresh], False),  # applied: added earlier in the same batch
              Change.opt_out([owners[2]]), Change.opt_out([owners[2]], False), Change.opt_out([owners[3]]),
              Change.sharing([y, x], False), twin]  # refused as a whole: y keeps sharing
    publish_changes(r, tricky + [reg.random_change() for _ in range(300)])
    f_one = FeedFollower(one, r, "one", read_count=1, report=False)  # a change a step: the sequential reference
    f_batch = FeedFollower(batched, r, "batch", read_count=50, report=False)
    assert f_batch.catch_up(limit=100) == 100 and f_batch.behind  # bounded: two reads, the rest left
    assert f_batch.catch_up() == 209 and not f_batch.behind
    assert f_one.catch_up() == 309
    assert f_one.rejected == f_batch.rejected == 3 and one.version == batched.version
    expected = reg.oracle(NOW)
    assert _as_dict(one.resolve(AREA, START, END, now=NOW)) == expected
    assert _as_dict(batched.resolve(AREA, START, END, now=NOW)) == expected
    assert owners[2] in expected and owners[3] not in expected and y in expected[owners[1]]


def test_a_read_of_the_feed_is_bounded_in_bytes_and_an_oversized_entry_never_leaves_redis(
        redis_server: RedisServer) -> None:
    """A writer that goes around publish_changes (a plain XADD) can append entries of any size and any number. A
    read returns at most ``read_bytes`` of entries (and one more entry), so twelve entries of ~1 MiB take several
    reads, not one reply of 12 MiB; an entry over MAX_ENTRY_BYTES is never sent by Redis (Redis's own count of the
    bytes it wrote says so): it is refused as unread and recorded, and the changes after it are applied in the
    same catch-up."""
    reg = Registry.make(300)
    r = redis_server.client()
    index = CameraIndex.build(reg.table(), reg.owner_table())
    follower = FeedFollower(index, r, "f", read_bytes=2 * MAX_ENTRY_BYTES)
    near = b"[" + b" " * (MAX_ENTRY_BYTES - 100) + b"]"  # within the bound: read, then refused (not an object)
    for _ in range(12):
        r.xadd(K.feed, {"c": near})
    huge = r.xadd(K.feed, {"c": b" " * (8 * MAX_ENTRY_BYTES)})
    good = publish_changes(r, [reg.random_change() for _ in range(3)])
    sent0 = r.info("stats")["total_net_output_bytes"]
    reads0 = r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    assert follower.catch_up() == 16
    sent = r.info("stats")["total_net_output_bytes"] - sent0
    reads = r.info("commandstats")["cmdstat_evalsha"]["calls"] - reads0
    assert 12 * MAX_ENTRY_BYTES - 12 * 100 < sent < 13 * MAX_ENTRY_BYTES  # the 8 MiB entry was not sent
    assert reads >= 6  # two ~1 MiB entries a read at most
    assert follower.rejected == 13 and follower.applied == 3 and index.version == good[-1]
    refusal = r.hget(K.feed_rejected, huge)
    assert refusal is not None and b"not read" in refusal and f"{8 * MAX_ENTRY_BYTES + 1}".encode() in refusal
    assert _as_dict(index.resolve(AREA, START, END, now=NOW)) == reg.oracle(NOW)


class _Counting(redis.Connection):
    """A connection that counts its writes, by thread: each is one round trip of a pipeline or command."""

    writes: collections.Counter[int] = collections.Counter()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes[threading.get_ident()] += 1
        super().send_packed_command(command, check_health)


def test_the_follower_thread_waits_for_applies_and_reports_a_change_in_one_round_trip_each(
        redis_server: RedisServer) -> None:
    """Beside a request backlog the follower thread waits for the GIL after every round trip, so each one it
    saves is time a change is not visible: its wait is one round trip that blocks, reads what came and is
    applied when it returns (the blocking read and the bounded read pipelined, Redis running the second as the
    first returns), and the report of it goes with the next round trip, whatever that is."""
    reg = Registry.make(300)
    index = CameraIndex.build(reg.table(), reg.owner_table())
    pool = redis.ConnectionPool(connection_class=_Counting, host="127.0.0.1", port=redis_server.port)
    follower = FeedFollower(index, redis.Redis(connection_pool=pool), "f")
    r = redis_server.client()
    up = threading.Event()
    got: list[int] = []

    def follow() -> None:
        me = threading.get_ident()
        follower.catch_up()  # up to date, its connection made and the script loaded
        up.set()
        before = _Counting.writes[me]
        got.append(follower.wait(60_000))
        got.append(_Counting.writes[me] - before)
        got.append(int(r.hget(K.feed_applied, "f") or 0))
        before = _Counting.writes[me]
        got.append(follower.catch_up())
        got.append(_Counting.writes[me] - before)
    waiting = threading.Thread(target=follow)
    t0 = time.monotonic()
    waiting.start()
    assert up.wait(60)
    time.sleep(0.2)
    pos = publish_changes(r, [reg.random_change()])[-1]
    waiting.join(timeout=60)
    assert time.monotonic() - t0 < 30, "the wait was not ended by the change"
    applied, waited, reported_then, more, then = got
    assert applied == 1 and index.version == pos and waited == 1
    assert reported_then < pos  # the report goes with the next round trip
    assert more == 0 and then == 1  # which is the next read
    assert r.hget(K.feed_applied, "f") == str(pos).encode() and r.xlen(K.feed_lag) == 1
    assert _as_dict(index.resolve(AREA, START, END, now=NOW)) == reg.oracle(NOW)


def test_the_plan_records_the_version_and_a_retry_names_it(redis_server: RedisServer) -> None:
    reg = Registry.make(800)
    r = redis_server.client()
    index = CameraIndex.build(reg.table(), reg.owner_table())
    follower = FeedFollower(index, r, "w")
    publish_changes(r, [reg.random_change() for _ in range(10)])
    follower.catch_up()
    first = index.resolve(AREA, START, END, now=NOW)
    assert first.version == index.version > 0
    qs = QueueSettings.from_url(redis_server.url, batch_size=16)
    dispatcher = Dispatcher(RedisSink(qs), qs)
    header = NotificationHeader("rq-1", "il-chicago", "Chicago Police Department", "c-1", "burglary", START, END, "m")
    assert dispatcher.dispatch(header, first).index_version == first.version
    publish_changes(r, [reg.random_change() for _ in range(10)])
    follower.catch_up()
    recorded = dispatcher.recorded(["rq-1"])[0]
    assert recorded is not None and recorded.version == first.version < index.version
    again = dispatcher.dispatch_many([(header, index.resolve(AREA, START, END, now=NOW))], adopt_recorded=True)[0]
    assert again.index_version == first.version and again.batches_sent == 0


def test_a_follower_the_feed_was_trimmed_past_loads_the_latest_snapshot(redis_server: RedisServer,
                                                                         tmp_path: Path) -> None:
    reg = Registry.make(800)
    r = redis_server.client()
    cams, owners = reg.table(), reg.owner_table()
    snaps = Snapshots(tmp_path / "snaps", keep=2)
    CameraIndex.build(cams, owners).save(tmp_path / "idx")
    from dispatcher.service.feed import ensure_snapshot
    assert ensure_snapshot(snaps, tmp_path / "idx", r) == 0
    shooter = Snapshotter(snaps, snaps.open_latest(warm_up=False), r)
    behind = FeedFollower(CameraIndex.build(cams, owners), r, "behind", snapshots=snaps)
    for _ in range(3):
        publish_changes(r, [reg.random_change() for _ in range(40)])
        assert shooter.step()
    assert len(snaps.positions()) == 2 and r.xlen(K.feed) == 40  # only what the older snapshot lacks is kept
    link = os.readlink(tmp_path / "snaps" / "current")
    assert link.startswith("snap-") and snaps.latest() is not None
    assert behind.catch_up() == 0 and behind.reloads == 1  # nothing left to replay past the latest snapshot
    assert behind.index.version == shooter.follower.index.version
    assert _as_dict(behind.index.resolve(AREA, START, END, now=NOW)) == reg.oracle(NOW)


# ------------------------------------------------------------------------------------- real serve processes


def _serve(server: RedisServer, tmp: Path, feed_dir: Path, workers: int, every: float) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen([sys.executable, "-m", "dispatcher.cli", "serve", "--index", str(tmp / "idx"),
                             "--redis-url", server.url, "--workers", str(workers), "--agencies",
                             str(tmp / "agencies.geojson"), "--policy", str(tmp / "policy.json"), "--auto-approve",
                             "--feed-dir", str(feed_dir), "--snapshot-every", str(every)],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _workers_of(proc: subprocess.Popen) -> list[int]:
    """The worker processes of a serve command (spawned children, not multiprocessing's resource tracker)."""
    kids = psutil.Process(proc.pid).children()
    return sorted(p.pid for p in kids if "resource_tracker" not in " ".join(p.cmdline()))


def _wait(cond: Any, what: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"serve exited while waiting for {what}: {proc.stdout.read() if proc.stdout else ''}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Requests:
    """Requests over AREA, one at a time (waiting workers take turns), each checked against the oracle."""

    def __init__(self, r: redis.Redis, server: RedisServer) -> None:
        self.r = r
        self.k = 0
        self.after = "0-0"
        qs = QueueSettings.from_url(server.url)
        self.dispatcher = Dispatcher(RedisSink(qs), qs)

    def one(self, reg: Registry, at_least: int, proc: subprocess.Popen) -> str:
        """Submit one request; check its recorded recipients against the oracle and its version; the worker."""
        self.k += 1
        v = make_request(request_id=f"f-{self.k}", area=AREA, start=START, end=END)
        submit(self.r, {f: getattr(v, f) for f in v.__dataclass_fields__})
        got: list[dict[str, Any]] = []

        def done() -> bool:
            self.after, new = read_outcomes(self.r, self.after, operators=True)
            got.extend(new)
            return any(o["request_id"] == f"f-{self.k}" for o in got)
        _wait(done, f"request f-{self.k}", proc, 60)
        outcome = next(o for o in got if o["request_id"] == f"f-{self.k}")
        assert outcome["outcome"] == "dispatched", outcome
        assert outcome["index_version"] >= at_least
        recorded = self.dispatcher.recorded([f"f-{self.k}"])[0]
        assert recorded is not None and recorded.version == outcome["index_version"]
        assert _as_dict(recorded) == reg.oracle(datetime.now(timezone.utc))
        return str(outcome["worker"]).rsplit("-t", 1)[0]


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, Registry]:
    reg = Registry.make(3_000)
    CameraIndex.build(reg.table(), reg.owner_table()).save(tmp_path / "idx")
    AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL", geodesic_circle(LNG0, LAT0, 20_000),
                           JOINED)]).save_geojson(tmp_path / "agencies.geojson")
    (tmp_path / "policy.json").write_text(json.dumps({"rate_limit": 10_000, "owner_cap": 10_000}))
    return tmp_path, reg


def test_every_serve_worker_applies_the_feed_and_a_late_or_killed_worker_catches_up(
        redis_server: RedisServer, served: tuple[Path, Registry]) -> None:
    tmp, reg = served
    r = redis_server.client()
    feed_dir = tmp / "feed"
    first = _serve(redis_server, tmp, feed_dir, workers=2, every=0.3)
    late = None
    try:
        # both workers up: each reports the position of a first change
        p0 = publish_changes(r, [Change.opt_out([0], False)])[-1]
        _wait(lambda: sum(int(v) >= p0 for v in r.hgetall(K.feed_applied).values()) == 2, "two workers", first)
        # a removal, sharing turned off and an opt-out, among cameras the area holds, and a malformed entry
        inside = reg.oracle(datetime.now(timezone.utc))
        owners = sorted(inside)
        gone, dark = inside[owners[0]][0], inside[owners[1]][0]
        del reg.rows[gone]
        reg.rows[dark]["sharing_enabled"] = False
        reg.opted_out.add(owners[2])
        r.xadd(K.feed, {"c": "{malformed"})
        last = publish_changes(r, [Change.remove([gone]), Change.sharing([dark], False),
                                   Change.opt_out([owners[2]])])[-1]
        requests = Requests(r, redis_server)
        seen: set[str] = set()
        while len(seen) < 2 and requests.k < 24:  # until both worker processes resolved one
            seen.add(requests.one(reg, last, first))
        assert len(seen) == 2
        assert len(r.hgetall(K.feed_rejected)) == 1  # recorded once, by whichever worker came first
        # 1,000 changes; one worker SIGKILLed in the middle of them
        victim = _workers_of(first)[0]
        for k in range(10):
            publish_changes(r, [reg.random_change() for _ in range(100)])
            if k == 4:
                os.kill(victim, signal.SIGKILL)
        twice = reg.add()
        last = publish_changes(r, [twice, twice])[-1]  # the second add is refused everywhere

        def trimmed() -> bool:  # both snapshots kept include every change: the feed was trimmed past them
            if int(r.get(K.feed_floor) or 0) >= last:
                return True
            publish_changes(r, [Change.opt_out([0], False)])  # a change of no effect: one more snapshot
            time.sleep(0.2)
            return False
        _wait(trimmed, "a snapshot of every change", first)
        assert r.xlen(K.feed) < 100 and Snapshots(feed_dir).positions()[0] >= last
        os.killpg(first.pid, signal.SIGKILL)  # the other worker too, at once
        first.communicate(timeout=60)
        # a worker started now loads the latest snapshot and replays the rest: its resolves are exact
        late = _serve(redis_server, tmp, feed_dir, workers=1, every=0)
        for _ in range(3):
            requests.one(reg, last, late)
        cams = requests.dispatcher.recorded([f"f-{requests.k}"])[0]
        assert cams is not None and cams.camera_ids.tolist().count(twice.to_dict()["cameras"][0]["camera_id"]) <= 1
    finally:
        for proc in (first, late):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=60)


def test_changes_command_publishes_a_file_whole_or_not_at_all(redis_server: RedisServer, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dispatcher.cli import main

    r = redis_server.client()
    good = [{"op": "remove", "camera_ids": [3, 4]}, {"op": "optout", "owner_ids": [9], "opted_out": True},
            {"op": "add", "cameras": [_row(50, 2, LAT0, LNG0)]}]
    path = tmp_path / "changes.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(c) for c in good) + b'\n{"op": "sharing", "camera_ids": [5]}\n')
    bad = CliRunner().invoke(main, ["changes", "--redis-url", redis_server.url, "--file", str(path)])
    assert isinstance(bad.exception, InvalidChange) and ":4:" in str(bad.exception) and "enabled" in str(bad.exception)
    assert r.xlen(K.feed) == 0
    path.write_bytes(b"\n".join(orjson.dumps(c) for c in good) + b"\n\n")
    ok = CliRunner().invoke(main, ["changes", "--redis-url", redis_server.url, "--file", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "published 3 changes" in ok.output
    assert [orjson.loads(f[b"c"])["op"] for _, f in r.xrange(K.feed)] == ["remove", "optout", "add"]


def test_serve_with_a_feed_waits_for_a_redis_started_late(served: tuple[Path, Registry]) -> None:
    tmp, reg = served
    late = RedisServer(tmp / "late-redis")  # its port chosen, nothing listening there yet
    proc = _serve(late, tmp, tmp / "feed", workers=1, every=0)
    try:
        time.sleep(1.0)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""  # waiting, not failed
        assert not (tmp / "feed" / "current").exists()  # no snapshot made before Redis said the feed's floor
        with late:
            r = late.client()
            inside = reg.oracle(datetime.now(timezone.utc))
            gone = inside[min(inside)][0]
            del reg.rows[gone]
            last = publish_changes(r, [Change.remove([gone])])[-1]
            _wait(lambda: any(int(v) >= last for v in r.hgetall(K.feed_applied).values()), "the worker", proc)
            Requests(r, late).one(reg, last, proc)  # exact, against the oracle, at the change's version or later
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
            # (not "serving with": under load the request can be served and the SIGTERM sent before the parent's
            # next look at its workers' readiness, and a stop during start-up says no "serving")
            assert proc.returncode == 0 and "all workers stopped" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)

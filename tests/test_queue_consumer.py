"""The reference consumer: group reads, idempotent sends, reclaim after a crash, backpressure and trimming."""

from __future__ import annotations

import re
import threading
import time

import pytest

from dispatcher.dispatch.consumer import Consumer, OutboxSender, render
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.links import DECLINE, OPT_OUT, VIEW
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink
from dispatcher.dispatch.wire import Notification, decode_batch
from dispatcher.errors import QueueFull
from tests.notifications import LINK_SECRET, LINKS, NOW, header, make_recipients

pytestmark = pytest.mark.redis


def settings_for(server, **kw) -> QueueSettings:
    return QueueSettings(url=server.url, batch_size=kw.pop("batch_size", 25), **kw)


def outbox_owners(outbox: OutboxSender) -> list[int]:
    return sorted(int(p.name.removesuffix(".html").split("%3A")[-1]) for p in outbox.directory.glob("*.html"))


def test_render_escapes_and_links():
    n = Notification({"request_id": "r/1", "agency_id": "a", "agency_name": "<b>PD</b>", "case_number": "C&1",
                      "incident_type": "x", "start": "s", "end": "e", "message": "<script>"}, 42, (7, 9))
    e = render(n, LINKS)
    assert "<script>" not in e.html and "&lt;script&gt;" in e.html and "&lt;b&gt;PD" in e.html
    assert "C&amp;1" in e.html and "7, 9" in e.html
    hrefs = re.findall(r'href="([^"]+)"', e.html)
    assert len(hrefs) == 3 and e.link == hrefs[0]
    for href, action in zip(hrefs, (VIEW, DECLINE, OPT_OUT), strict=True):  # each link signed for its action
        assert href.startswith("http://127.0.0.1:1/r/") and href in e.text
        claim = LINKS.verify(href.rsplit("/", 1)[1], [action])
        assert (claim.request_id, claim.owner_id, claim.action) == ("r/1", 42, action)
    assert e.idempotency_key == "r/1:42"


def test_consume_all_then_redelivery_sends_nothing_twice(redis_server, tmp_path):
    s = settings_for(redis_server)
    rs = make_recipients(400)
    outbox = OutboxSender(tmp_path / "outbox")
    c = Consumer(redis_server.client(), "c1", outbox, links=LINKS, settings=s, min_idle_ms=0)
    c.ensure_group()
    Dispatcher(RedisSink(s), s).dispatch(header(), rs, now=NOW)
    while c.run_once(block_ms=10):
        pass
    assert c.sent == 400 and outbox_owners(outbox) == rs.owner_ids.tolist()
    # Force a redelivery of everything: a new group reading from the start, same outbox, same keys.
    c2 = Consumer(redis_server.client(), "c2", outbox, group="senders", links=LINKS, settings=s, min_idle_ms=0)
    c2.client.xgroup_setid(c2.keys.notifications, "senders", "0")
    while c2.run_once(block_ms=10):
        pass
    assert c2.sent == 0 and c2.skipped == 400
    assert outbox_owners(outbox) == rs.owner_ids.tolist()


def test_crashed_consumer_is_reclaimed(redis_server, tmp_path):
    s = settings_for(redis_server)
    rs = make_recipients(300)
    outbox = OutboxSender(tmp_path / "outbox")
    Dispatcher(RedisSink(s), s).dispatch(header(), rs, now=NOW)
    crashed = Consumer(redis_server.client(), "crashed", outbox, links=LINKS, settings=s)
    crashed.ensure_group()
    # "crashed" reads 5 batches, sends the first owner of one of them, then dies without acking.
    got = crashed.client.xreadgroup("senders", "crashed", {crashed.keys.notifications: ">"}, count=5)
    first = decode_batch(got[0][1][0][1][b"data"])[1][0]
    assert outbox.send(render(first, LINKS))
    survivor = Consumer(redis_server.client(), "survivor", outbox, links=LINKS, settings=s, min_idle_ms=1)
    threading.Event().wait(0.01)   # let the crashed consumer's entries go idle past min_idle_ms
    while survivor.run_once(block_ms=10):
        pass
    assert survivor.sent == 299 and survivor.skipped == 1
    assert outbox_owners(outbox) == rs.owner_ids.tolist()
    pend = survivor.client.xpending(survivor.keys.notifications, "senders")
    assert pend["pending"] == 0


def test_backpressure_waits_and_never_drops_unacked(redis_server, tmp_path):
    s = settings_for(redis_server, batch_size=10, pipeline_batches=2, max_backlog=6, backpressure_poll=0.01)
    rs = make_recipients(500)
    outbox = OutboxSender(tmp_path / "outbox")
    sink = RedisSink(s)
    consumer = Consumer(redis_server.client(), "c1", outbox, links=LINKS, settings=s, min_idle_ms=60_000)
    consumer.ensure_group()
    stop = threading.Event()
    max_len = []

    def consume():
        while not stop.is_set():
            consumer.run_once(count=2, block_ms=10)
            sink.trim_acknowledged()
            max_len.append(sink.client.xlen(sink.keys.notifications))

    t = threading.Thread(target=consume)
    t.start()
    try:
        report = Dispatcher(sink, s).dispatch(header(), rs, now=NOW)
    finally:
        while sink.backlog():
            threading.Event().wait(0.01)
        stop.set()
        t.join()
    assert report.recipients_notified == 500 and report.backpressure_wait_s > 0
    assert outbox_owners(outbox) == rs.owner_ids.tolist()       # nothing dropped
    assert max(max_len) <= 6 + 2                                # bounded: limit plus one pipeline chunk


def test_trim_keeps_pending_and_undelivered(redis_server, tmp_path):
    s = settings_for(redis_server, batch_size=10)
    sink = RedisSink(s)
    c = Consumer(redis_server.client(), "c1", OutboxSender(tmp_path / "o"), links=LINKS, settings=s)
    c.ensure_group()
    c.client.xgroup_create(sink.keys.notifications, "audit", id="0")
    Dispatcher(sink, s).dispatch(header(), make_recipients(200), now=NOW)       # 20 entries
    ids = [i for i, _ in sink.client.xrange(sink.keys.notifications)]
    read = sink.client.xreadgroup("senders", "c1", {sink.keys.notifications: ">"}, count=10)[0][1]
    sink.client.xack(sink.keys.notifications, "senders", *[i for i, _ in read[:4]])    # 4 acked, 6 pending, 10 unread
    sink.client.xreadgroup("audit", "a1", {sink.keys.notifications: ">"}, count=20)
    sink.client.xack(sink.keys.notifications, "audit", *ids)                           # audit acked everything
    assert sink.trim_acknowledged() == 4
    assert [i for i, _ in sink.client.xrange(sink.keys.notifications)] == ids[4:]
    assert sink.backlog() == 16


def test_a_consumer_that_trims_keeps_the_stream_to_what_is_unacknowledged(redis_server, tmp_path):
    """With ``trim_every_s``, a consumer trims what every group has acknowledged as it goes: after all is sent
    the stream is empty, while an audit group that read nothing keeps every entry until it has."""
    s = settings_for(redis_server, batch_size=10)
    sink = RedisSink(s)
    c = Consumer(redis_server.client(), "c1", OutboxSender(tmp_path / "o"), links=LINKS, settings=s, trim_every_s=0.0)
    c.ensure_group()
    Dispatcher(sink, s).dispatch(header(), make_recipients(200), now=NOW)       # 20 entries
    while c.run_once(count=5, block_ms=10):
        pass
    c.run_once(block_ms=10)  # the last batch's trim
    assert c.sent == 200 and c.trimmed == 20 and sink.client.xlen(sink.keys.notifications) == 0
    c.client.xgroup_create(sink.keys.notifications, "audit", id="0")
    Dispatcher(sink, s).dispatch(header("r-2"), make_recipients(50), now=NOW)   # 5 more, unread by audit
    while c.run_once(block_ms=10):
        pass
    assert c.sent == 250 and c.trimmed == 20 and sink.client.xlen(sink.keys.notifications) == 5


def test_shutdown_drains_cleanly(redis_server, tmp_path):
    s = settings_for(redis_server)
    rs = make_recipients(600)
    outbox = OutboxSender(tmp_path / "outbox")
    consumers = [Consumer(redis_server.client(), f"c{i}", outbox, links=LINKS, settings=s) for i in range(2)]
    consumers[0].ensure_group()
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,)) for c in consumers]
    for t in threads:
        t.start()
    sink = RedisSink(s)
    Dispatcher(sink, s).dispatch(header(), rs, now=NOW)
    while sink.backlog():
        threading.Event().wait(0.01)
    stop.set()
    for t in threads:
        t.join()
    assert sum(c.sent for c in consumers) == 600
    assert sink.client.xpending(sink.keys.notifications, "senders")["pending"] == 0
    assert outbox_owners(outbox) == rs.owner_ids.tolist()


def test_full_queue_raises_after_timeout_and_resumes(redis_server, tmp_path):
    s = settings_for(redis_server, batch_size=10, pipeline_batches=2, max_backlog=3, backpressure_timeout=0.05,
                     backpressure_poll=0.01)
    rs = make_recipients(100)
    outbox = OutboxSender(tmp_path / "outbox")
    sink = RedisSink(s)
    consumer = Consumer(redis_server.client(), "c1", outbox, links=LINKS, settings=s)
    consumer.ensure_group()
    with pytest.raises(QueueFull) as ei:
        Dispatcher(sink, s).dispatch(header(), rs, now=NOW)        # nobody consumes: the queue fills up
    assert isinstance(ei.value, TimeoutError) and "limit 3" in str(ei.value)
    for _ in range(20):                                            # drain, then dispatch again until complete
        while consumer.run_once(block_ms=10):
            pass
        try:
            Dispatcher(sink, s).dispatch(header(), rs, now=NOW)
            break
        except QueueFull:
            continue
    while consumer.run_once(block_ms=10):
        pass
    assert outbox_owners(outbox) == rs.owner_ids.tolist() and consumer.sent == 100


def test_backlog_after_a_redis_restart_is_not_overstated(tmp_path):
    """After a restart Redis 7.0 forgets how far a group has read (XINFO lag None, sometimes wrong later); the
    backlog must still be what is unread plus pending, so that backpressure neither waits for nothing nor
    lets the queue overflow."""
    from dispatcher.service.servers import RedisServer

    with RedisServer(tmp_path / "redis") as srv:
        s = settings_for(srv, batch_size=10)
        sink = RedisSink(s)
        sink.client.xgroup_create(sink.keys.notifications, "senders", id="0", mkstream=True)
        Dispatcher(sink, s).dispatch(header(), make_recipients(200), now=NOW)        # 20 entries
        read = sink.client.xreadgroup("senders", "c1", {sink.keys.notifications: ">"}, count=12)[0][1]
        sink.client.xack(sink.keys.notifications, "senders", *[i for i, _ in read[:9]])     # 8 unread, 3 pending
        assert sink.backlog() == 11
        srv.restart()
        sink = RedisSink(s)
        assert sink.client.xinfo_groups(sink.keys.notifications)[0]["lag"] is None  # what Redis says now
        assert sink.backlog() == 11
        rest = sink.client.xreadgroup("senders", "c1", {sink.keys.notifications: ">"}, count=100)[0][1]
        sink.client.xack(sink.keys.notifications, "senders", *[i for i, _ in read[9:] + rest])
        assert sink.backlog() == 0


def test_consume_command_sends_every_notification_once_and_stops_on_sigterm(redis_server, tmp_path):
    """``geodispatch consume`` as an operator runs it: consumer threads send each owner's e-mail once; a
    second run over the same stream sends nothing; SIGTERM stops it cleanly."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    s = settings_for(redis_server)
    rs = make_recipients(300)
    Dispatcher(RedisSink(s), s).dispatch(header(), rs, now=NOW)
    root = Path(__file__).resolve().parents[1]
    outbox = tmp_path / "outbox"

    def run_once() -> str:
        proc = subprocess.Popen([sys.executable, "-m", "dispatcher.cli", "consume", "--redis-url", redis_server.url,
                                 "--outbox", str(outbox), "--consumers", "3", "--claim-idle-ms", "100"],
                                cwd=root, env={**os.environ, "PYTHONPATH": str(root),
                                               "GEODISPATCH_LINK_SECRET": LINK_SECRET},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            with redis_server.client() as r:
                while time.monotonic() < deadline:
                    last = r.xinfo_stream(s.keys.notifications)["last-generated-id"]
                    groups = r.xinfo_groups(s.keys.notifications)
                    if groups and groups[0]["pending"] == 0 and groups[0]["last-delivered-id"] == last:
                        break
                    time.sleep(0.05)
            time.sleep(0.3)
        finally:
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
        return output

    first = run_once()
    assert outbox_owners(OutboxSender(outbox)) == rs.owner_ids.tolist()
    assert "300 sent" in first and "consumers stopped" in first
    with redis_server.client() as r:  # every entry delivered again, as after a crash before the acks
        r.xgroup_setid(s.keys.notifications, "senders", "0")
    again = run_once()
    skipped = re.search(r"0 sent, (\d+) skipped", again)  # a consumer may take over another's entry: skipped too
    assert skipped and int(skipped.group(1)) >= 300, again
    assert outbox_owners(OutboxSender(outbox)) == rs.owner_ids.tolist()


def test_a_malformed_notification_entry_is_set_aside_and_the_others_sent(redis_server, tmp_path):
    s = settings_for(redis_server)
    rs = make_recipients(100)
    Dispatcher(RedisSink(s), s).dispatch(header(), rs, now=NOW)
    with redis_server.client() as r:
        ids = [e for e, _ in r.xrange(s.keys.notifications)]
        r.xadd(s.keys.notifications, {"request": "req-x", "batch": 0, "data": b"{not json"})
        r.xadd(s.keys.notifications, {"request": "req-y", "batch": 0})                       # no data at all
        r.xadd(s.keys.notifications, {"request": "req-z", "batch": 0, "data": b'{"header": 1}'})
    Dispatcher(RedisSink(s), s).dispatch(header("req-2"), make_recipients(30, seed=3), now=NOW)
    outbox = OutboxSender(tmp_path / "outbox")
    c = Consumer(redis_server.client(), "c1", outbox, links=LINKS, settings=s, min_idle_ms=0)
    c.ensure_group()
    while c.run_once(count=3, block_ms=10):
        pass
    assert c.dead_lettered == 3 and c.sent == 130 and len(ids) == 4
    with redis_server.client() as r:
        dead = r.xrange(s.keys.notification_dead_letters)
        assert [d[1][b"request"] for d in dead] == [b"req-x", b"req-y", b"req-z"]
        assert all(d[1][b"error"] for d in dead)
        assert r.xpending(s.keys.notifications, "senders")["pending"] == 0


def test_senders_report_what_they_sent_and_the_metrics_say_how_far_behind_sending_is(redis_server, tmp_path):
    """``consume``'s consumer threads report to Redis as the workers do: sent, already sent (a redelivery) and
    dead-lettered, counted here from the outbox and the stream; and the metrics give each senders' group's
    backlog on the notifications stream."""
    from dispatcher.keys import Keys
    from dispatcher.service.metrics import collect
    from dispatcher.service.supervise import consume

    s = settings_for(redis_server)
    k = Keys()
    Dispatcher(RedisSink(s), s).dispatch(header(), make_recipients(300), now=NOW)
    with redis_server.client() as r:
        r.xadd(k.notifications, {"data": b"not a batch"})
        batches = r.xlen(k.notifications)

    def run(outbox) -> None:
        stop = threading.Event()
        t = threading.Thread(target=consume, kwargs={"stop": stop, "metrics_every_s": 0.05},
                             args=(redis_server.url, outbox, LINKS, 2, "senders", 60_000, lambda _: None))
        t.start()
        try:
            with redis_server.client() as r:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not (
                        (g := r.xinfo_groups(k.notifications)) and not g[0]["lag"] and not g[0]["pending"]):
                    time.sleep(0.05)
        finally:
            stop.set()
            t.join(timeout=60)
        assert not t.is_alive()

    outbox = OutboxSender(tmp_path / "outbox")
    run(outbox)
    with redis_server.client() as r:
        snap = collect(r, k)
    assert len(snap.senders) == 2 and len(outbox_owners(outbox)) == 300
    total = {f: sum(rep[f] for rep in snap.senders.values()) for f in ("sent", "already_sent", "dead_lettered")}
    assert total == {"sent": 300, "already_sent": 0, "dead_lettered": 1}
    assert snap.sending == {(k.notifications, "senders"): (0, 0)}
    with redis_server.client() as r:  # every batch again, to the same group: all of it sent already
        r.xgroup_setid(k.notifications, "senders", "0")
        assert r.xinfo_groups(k.notifications)[0]["lag"] == batches
    run(outbox)
    with redis_server.client() as r:
        snap = collect(r, k)
    total = {f: sum(rep[f] for rep in snap.senders.values()) for f in ("sent", "already_sent", "dead_lettered")}
    assert total == {"sent": 0, "already_sent": 300, "dead_lettered": 1}


def test_a_consumer_sends_nothing_while_redis_may_evict_keys_and_goes_on_once_it_may_not(redis_server, tmp_path):
    """A sent mark evicted would send a notification twice: with an eviction policy set while the consumer runs,
    what is appended meanwhile waits on the stream unread, and is sent once the policy is set back, once each."""
    s = settings_for(redis_server)
    outbox = OutboxSender(tmp_path / "outbox")
    c = Consumer(redis_server.client(), "c1", outbox, links=LINKS, settings=s, eviction_check_s=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=c.run, args=(stop,), kwargs={"block_ms": 50})
    thread.start()
    try:
        with redis_server.client() as r:
            r.config_set("maxmemory-policy", "volatile-ttl")
            try:
                time.sleep(1.0)  # asked again meanwhile, after the read in hand
                rs = make_recipients(60)
                Dispatcher(RedisSink(s), s).dispatch(header(), rs, now=NOW)
                time.sleep(1.5)
                assert c.sent == 0 and outbox_owners(outbox) == []
                assert r.xinfo_groups(c.keys.notifications)[0]["lag"] > 0
            finally:
                r.config_set("maxmemory-policy", "noeviction")
        deadline = time.monotonic() + 60
        while c.sent < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.sent == 60 and outbox_owners(outbox) == rs.owner_ids.tolist()
    finally:
        stop.set()
        thread.join(timeout=30)

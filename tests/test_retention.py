"""Records that name residents do not outlive their use: on Redis each expires by itself (the notified set, the
dispatch plan and done marks, owner choices, the consumers' sent marks after the retention; an owner's notices
once the per-owner cap can no longer count them), on SQLite they are deleted past the retention; the aggregate
counts the reports need stay."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dispatcher.dispatch.consumer import Consumer, OutboxSender
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.gate import OwnerGate
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import LocalSink, RedisSink
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.keys import Keys
from dispatcher.service.servers import RedisServer
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import RedisStore, SqliteStore
from tests.notifications import LINKS, header, make_recipients
from tests.video_requests import JOINED, LAT0, LNG0, NOW, request

DAY = 86_400


def _registry() -> AgencyRegistry:
    return AgencyRegistry([Agency("ag-1", "Springfield PD", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED)])


@pytest.mark.redis
def test_redis_records_naming_residents_expire_and_aggregates_stay(redis_server: RedisServer, tmp_path) -> None:
    qs = QueueSettings.from_url(redis_server.url + "?retention_days=30&batch_size=50")
    store = RedisStore.from_url(qs.url + "?retention_days=30")
    wf = Workflow(store, _registry(), Policy(owner_cap=5))
    wf.submit(request(request_id="req-1", agency_id="ag-1"), NOW)
    wf.approve("req-1", "rev", NOW)
    rs = make_recipients(120)
    wf.opt_out(int(rs.owner_ids[3]), NOW)
    Dispatcher(RedisSink(qs), qs).dispatch(header("req-1"), rs, gate=OwnerGate(store, wf.policy), now=NOW)
    wf.mark_dispatched("req-1", NOW)
    shared = int(rs.owner_ids[0])
    wf.share("req-1", shared, ["clip-1"], NOW)
    c = Consumer(redis_server.client(), "c1", OutboxSender(tmp_path / "out"), links=LINKS, settings=qs,
                 min_idle_ms=0)
    c.ensure_group()
    while c.run_once(block_ms=10):
        pass
    k = Keys()
    with redis_server.client() as r:
        for key in (k.notified("req-1"), k.plan("req-1"), k.done("req-1"), k.choices("req-1"),
                    k.sent("senders", "req-1")):
            assert 29 * DAY < r.ttl(key) <= 30 * DAY, key
        notices = k.notices(int(NOW.timestamp()) // DAY)
        assert r.hexists(notices, str(shared))
        # the day's counter lives while a cap's window (a day) can reach it: to the end of the next day, by NOW
        end = (int(NOW.timestamp()) // DAY + 2) * DAY - int(NOW.timestamp())
        assert end - 5 < r.ttl(notices) <= end
        assert r.ttl(k.counters("req-1")) == -1 and r.ttl(k.request("req-1")) == -1  # aggregates, the request
        assert store.notified_count("req-1") == 119
        for key in (k.notified("req-1"), k.plan("req-1"), k.done("req-1"), k.choices("req-1")):
            r.delete(key)  # as if the retention had passed
    assert store.notified_count("req-1") == 119 and store.counters("req-1")["opted_out"] == 1


def test_sqlite_records_naming_residents_are_deleted_past_the_retention(tmp_path) -> None:
    path = tmp_path / "embedded.sqlite"
    store, sink = SqliteStore(path), LocalSink(path)
    wf = Workflow(store, _registry(), Policy(owner_cap=5))
    wf.submit(request(request_id="req-1", agency_id="ag-1"), NOW)
    wf.approve("req-1", "rev", NOW)
    rs = make_recipients(40)
    Dispatcher(sink, QueueSettings(batch_size=10)).dispatch(header("req-1"), rs, gate=OwnerGate(store, wf.policy),
                                                           now=NOW)
    wf.mark_dispatched("req-1", NOW)
    wf.share("req-1", int(rs.owner_ids[0]), ["clip-1"], NOW)
    assert store.expire_records(NOW + timedelta(days=179), timedelta(days=180)) == 0
    # 40 notified, 1 choice, and the cap's 40 counters of that day (gone with the retention even if no notice
    # came after them to drop them)
    assert store.expire_records(NOW + timedelta(days=181), timedelta(days=180)) == 81
    assert not store.was_notified("req-1", int(rs.owner_ids[0])) and store.choices("req-1") == []
    assert store.notified_count("req-1") == 40  # the aggregate stays
    # the sink keeps a plan from its first dispatch, by the pipeline's clock (the store's: NOW, a month before the
    # wall clock), not the wall clock's
    assert NOW < datetime.now(timezone.utc) - timedelta(days=2)
    assert sink.expire_records(NOW + timedelta(days=179), timedelta(days=180)) == 0
    assert sink.read_all() != []
    assert sink.expire_records(NOW + timedelta(days=181), timedelta(days=180)) == 1
    assert sink.read_all() == [] and sink.recorded_plans(["req-1"]) == [None]

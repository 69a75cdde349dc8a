"""A request's whole path, validate -> resolve -> dispatch, against a real redis-server: the agency's request is
validated and approved, resolved from the state the workflow stored, dispatched through the owners' gate, and the
stream holds exactly the oracle's recipients (shapely over every camera) less the owner who opted out, once each.
Both the workflow store and the notification stream are on the same Redis."""

from __future__ import annotations

import collections
from datetime import timedelta

import pytest

from bench.reference import Dataset, brute_force
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink
from dispatcher.dispatch.wire import decode_batch
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index.camera_index import CameraIndex
from dispatcher.service.servers import RedisServer
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.pipeline import Dispatch, Malformed, Outcome, Pipeline, Submit
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import RedisStore
from tests import data
from tests.video_requests import JOINED, LAT0, LNG0, NOW
from tests.video_requests import request as make_request

pytestmark = pytest.mark.redis


def test_validate_resolve_dispatch(redis_server: RedisServer) -> None:
    cams = data.cameras(20_000, seed=21, cx=LNG0, cy=LAT0, spread=0.01)
    own = data.owners(cams, seed=21, share_out=0.0)
    ds = Dataset.from_tables(cams, own)
    index = CameraIndex.build(cams, own)
    registry = AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL",
                                      geodesic_circle(LNG0, LAT0, 20_000), JOINED)])
    store = RedisStore.from_url(redis_server.url)
    wf = Workflow(store, registry)
    settings = QueueSettings.from_url(redis_server.url, batch_size=7)
    pipeline = Pipeline(wf, index, Dispatcher(RedisSink(settings), settings))

    # validate (policy), record; then a reviewer approves
    vr = make_request(start=NOW - timedelta(days=3, hours=5), end=NOW - timedelta(days=3))
    sent = {f: getattr(vr, f) for f in vr.__dataclass_fields__}
    assert pipeline.run([Submit(sent)], NOW) == [Outcome("r1", "submitted")]
    wf.approve("r1", "alice", NOW + timedelta(minutes=1))
    stored = wf.get("r1")
    assert stored.state == "approved"

    # the oracle, from what the agency sent (shapely over every camera)
    start, end = stored.request.start, stored.request.end
    want = brute_force(ds, sent["area"], start, end, NOW + timedelta(minutes=3))
    assert len(want) > 20

    # one owner opts out after approval, before the send: the gate holds them back at send time
    gone = sorted(want)[len(want) // 2]
    wf.opt_out(gone, NOW + timedelta(minutes=2))

    # resolve, dispatch and mark, from the stored request; a repeat of the command sends nothing
    first = pipeline.run([Dispatch("r1")], NOW + timedelta(minutes=3))
    again = pipeline.run([Dispatch("r1")], NOW + timedelta(minutes=5))
    assert first == [Outcome("r1", "dispatched", len(want) - 1, dispatched_now=True)]
    assert again == [Outcome("r1", "dispatched")]
    assert store.counters("r1") == {"opted_out": 1, "notified": len(want) - 1}

    with redis_server.client() as r:
        seen: collections.Counter = collections.Counter()
        for _, fields in r.xrange(settings.keys.notifications):
            _, notes = decode_batch(fields[b"data"])
            for n in notes:
                assert list(n.camera_ids) == want[n.owner_id]  # that owner's matching cameras, nobody else's
                assert n.header["case_number"] == "2026-001234"
                assert n.header["agency_name"] == "Chicago Police Department"
                seen[n.owner_id] += 1
    assert set(seen) == set(want) - {gone} and max(seen.values()) == 1
    assert wf.state("r1") == "dispatched"
    assert [e["action"] for e in store.audit("r1")] == ["submitted", "approved", "dispatched"]


def test_one_batch_mixes_submissions_dispatches_and_refusals(redis_server: RedisServer) -> None:
    """Commands of one batch each get their own outcome, in order: a request named twice acts once, a refused
    one changes nothing, an unknown one is refused."""
    cams = data.cameras(5_000, seed=22, cx=LNG0, cy=LAT0, spread=0.01)
    index = CameraIndex.build(cams, data.owners(cams, seed=22, share_out=0.0))
    registry = AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL",
                                      geodesic_circle(LNG0, LAT0, 20_000), JOINED)])
    wf = Workflow(RedisStore.from_url(redis_server.url), registry, Policy(auto_approve=True))
    settings = QueueSettings.from_url(redis_server.url)
    pipeline = Pipeline(wf, index, Dispatcher(RedisSink(settings), settings))

    def sent(**kw):  # type: ignore[no-untyped-def]
        vr = make_request(**kw)
        return {f: getattr(vr, f) for f in vr.__dataclass_fields__}

    got = pipeline.run([Submit(sent(request_id="a")), Submit(sent(request_id="a")), Dispatch("nope"),
                        Submit(sent(request_id="b", case_number="?")), Submit({"junk": 1}),
                        Malformed("unknown command 'x'"), Dispatch("a")], NOW)
    assert [o.status for o in got] == ["dispatched", "dispatched", "refused: unknown request",
                                       "refused: RequestRejected", "refused: InvalidRequest",
                                       "refused: unknown command 'x'", "dispatched"]
    assert [o.dispatched_now for o in got] == [True, False, False, False, False, False, False]
    assert wf.store.request_ids() == ["a"]

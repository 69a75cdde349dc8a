"""A request's whole path, validate -> resolve -> dispatch, against a real redis-server: the agency's request is
validated and approved, resolved from the state the workflow stored, dispatched through the owners' gate, and the
stream holds exactly the oracle's recipients (shapely over every camera) less the owner who opted out, once each.
Both the workflow store and the notification stream are on the same Redis."""

from __future__ import annotations

import collections
from datetime import datetime, timedelta

import numpy as np
import pytest

from bench.reference import Dataset, brute_force
from dispatcher.dispatch.queue import Dispatcher, NotificationHeader, QueueSettings, RedisSink, decode_batch
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index.camera_index import CameraIndex
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.review import OwnerGate, Workflow
from dispatcher.workflow.store import RedisStore
from tests import data
from tests.redis_server import RedisServer
from tests.test_policy import JOINED, LAT0, LNG0, NOW
from tests.test_policy import request as make_request

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

    # validate (policy) and approve
    assert wf.submit(make_request(start=NOW - timedelta(days=3, hours=5), end=NOW - timedelta(days=3)), NOW) \
        == "submitted"
    wf.approve("r1", "alice", NOW + timedelta(minutes=1))
    state, payload = store.get_request("r1")  # type: ignore[misc]
    assert state == "approved"

    # resolve, from what the workflow stored
    start, end = datetime.fromisoformat(payload["start"]), datetime.fromisoformat(payload["end"])
    recipients = index.resolve(payload["area"], start, end, now=NOW)
    want = brute_force(ds, payload["area"], start, end, NOW)
    assert {o: c.tolist() for o, c in recipients.items()} == want and len(want) > 20

    # one owner opts out after approval, before the send: the gate holds them back at send time
    gone = int(recipients.owner_ids[len(want) // 2])
    wf.opt_out(gone, NOW + timedelta(minutes=2))

    settings = QueueSettings.from_url(redis_server.url, batch_size=7)
    header = NotificationHeader("r1", "il-chicago", "Chicago Police Department", payload["case_number"],
                                payload["incident_type"], start, end, payload["message"])
    report = Dispatcher(RedisSink(settings), settings).dispatch(header, recipients, gate=OwnerGate(store),
                                                                now=NOW + timedelta(minutes=3))
    wf.mark_dispatched("r1", NOW + timedelta(minutes=4))
    again = Dispatcher(RedisSink(settings), settings).dispatch(header, recipients, gate=OwnerGate(store),
                                                               now=NOW + timedelta(minutes=5))
    assert report.suppressed == 1 and report.recipients_notified == len(want) - 1
    assert again.batches_sent == 0

    with redis_server.client() as r:
        seen: collections.Counter = collections.Counter()
        for _, fields in r.xrange(RedisSink(settings).keys.stream):
            _, notes = decode_batch(fields[b"data"])
            for n in notes:
                assert list(n.camera_ids) == want[n.owner_id]  # that owner's matching cameras, nobody else's
                assert n.header["case_number"] == "2026-001234"
                seen[n.owner_id] += 1
    assert set(seen) == set(want) - {gone} and max(seen.values()) == 1
    assert store.get_request("r1")[0] == "dispatched"  # type: ignore[index]
    assert [e["action"] for e in store.audit("r1")] == ["submitted", "approved", "dispatched"]
    assert np.isin(gone, recipients.owner_ids)

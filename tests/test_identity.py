"""Nobody can act as another agency: attacks of a hostile agency against the real service (workers on a real
redis-server, agencies connecting as their own Redis ACL users). Each one succeeded before identity came from the
stream an agency can write to, and request ids were scoped to the agency."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import numpy as np
import orjson
import pytest
import redis

from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import RedisSink
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index import CameraIndex
from dispatcher.keys import Keys
from dispatcher.service import commands
from dispatcher.service.acl import set_agency
from dispatcher.service.client import read_outcomes, request_dispatch, submit
from dispatcher.service.servers import RedisServer
from dispatcher.service.worker import ServiceSettings, Worker
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.pipeline import Dispatch, Pipeline, Submit
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.requests import StoredRequest
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import RedisStore
from tests import data
from tests.video_requests import JOINED, LAT0, LNG0, NOW, request, square

pytestmark = pytest.mark.redis

K = Keys()
A, B = "il-chicago", "il-evanston"


@pytest.fixture(scope="module")
def index() -> CameraIndex:
    cams = data.cameras(10_000, seed=61, cx=LNG0, cy=LAT0, spread=0.01)
    return CameraIndex.build(cams, data.owners(cams, seed=61, share_out=0.0))


def _registry() -> AgencyRegistry:
    return AgencyRegistry([Agency(A, "Chicago Police Department", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED),
                           Agency(B, "Evanston Police Department", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED)])


def _worker(server: RedisServer, index: CameraIndex, policy: Policy) -> Worker:
    qs = QueueSettings.from_url(server.url)
    wf = Workflow(RedisStore.from_url(server.url), _registry(), policy)
    return Worker("w", server.client(), Pipeline(wf, index, Dispatcher(RedisSink(qs), qs)),
                  ServiceSettings(block_ms=20, claim_idle_ms=50), clock=lambda: NOW, queue=qs, agencies=[A, B])


def _serve(w: Worker, until) -> None:  # type: ignore[no-untyped-def]
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    deadline = time.monotonic() + 60
    while not until() and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(timeout=30)


def _as_agency(server: RedisServer, agency: str) -> redis.Redis:
    with server.client() as admin:
        set_agency(admin, f"user-{agency}", f"pw-{agency}-0123456789", agency)
    return redis.Redis(host="127.0.0.1", port=server.port, username=f"user-{agency}",
                       password=f"pw-{agency}-0123456789")


def _req(rid: str, agency: str, k: int = 0) -> dict:
    r = request(request_id=rid, agency_id=agency, area=square(0.2, LNG0 + 0.001 * k, LAT0),
                start=NOW - timedelta(days=2, hours=3), end=NOW - timedelta(days=2))
    return {f: getattr(r, f) for f in r.__dataclass_fields__}


def test_an_agency_writes_and_reads_only_its_own_streams(redis_server: RedisServer) -> None:
    a = _as_agency(redis_server, A)
    submit(a, _req("r1", A), agency=A)
    read_outcomes(a, agency=A)
    for attempt in (lambda: submit(a, _req("r1", B), agency=B),          # another agency's intake
                    lambda: submit(a, _req("r1", A)),                    # the platform's own stream
                    lambda: request_dispatch(a, f"{B}:r1"),              # dispatching anything
                    lambda: read_outcomes(a, agency=B), lambda: read_outcomes(a),
                    lambda: read_outcomes(a, operators=True), lambda: a.xrange(K.intake(A)),
                    lambda: a.xrange(K.notifications)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    a.close()


def test_a_forged_agency_is_refused_and_costs_the_named_agency_nothing(redis_server: RedisServer, index) -> None:
    """25 submissions from A naming B: all refused, audited under A (so B's public refusal figures do not move);
    B's own request is not rate-limited."""
    a, b = _as_agency(redis_server, A), _as_agency(redis_server, B)
    for k in range(25):
        submit(a, _req(f"forged-{k}", B, k), agency=A)
    submit(b, _req("real", B), agency=B)
    w = _worker(redis_server, index, Policy(auto_approve=True, rate_limit=25))
    _serve(w, lambda: w.stats.handled == 26)
    _, mine = read_outcomes(a, agency=A)
    assert [o["codes"] for o in mine] == [["agency_mismatch"]] * 25
    _, theirs = read_outcomes(b, agency=B)
    assert [(o["request_id"], o["outcome"]) for o in theirs] == [("real", "dispatched")]
    store = RedisStore.from_url(redis_server.url)
    refusals = [e for e in store.audit() if e["action"] == "submission_refused"]
    assert len(refusals) == 25 and {e["detail"]["agency_id"] for e in refusals} == {A}
    # the transparency report counts a refusal under the agency its audit entry names: the sender, A
    assert not any(e["detail"]["agency_id"] == B for e in store.audit() if e["action"] == "submission_refused")


def test_reusing_another_agencys_request_id_reaches_nothing_of_theirs(redis_server: RedisServer, index) -> None:
    """B's request r1 awaits review. A submits its own r1 (a request of A's, judged on its own), and sends a
    dispatch for r1 from its intake: B's request is neither answered to A, nor dispatched, nor blocked."""
    a, b = _as_agency(redis_server, A), _as_agency(redis_server, B)
    submit(b, _req("r1", B), agency=B)
    w = _worker(redis_server, index, Policy(auto_approve=False))
    _serve(w, lambda: w.stats.handled == 1)
    w.pipeline.workflow.approve(f"{B}:r1", "reviewer", NOW)
    with redis_server.client() as admin:
        admin.xadd(K.intake(A), {"cmd": commands.encode(Dispatch("r1"))})          # what an agency could write
        admin.xadd(K.intake(A), {"cmd": commands.encode(Dispatch(f"{B}:r1"))})
    submit(a, _req("r1", A, 3), agency=A)
    _serve(w, lambda: w.stats.handled == 4)
    _, mine = read_outcomes(a, agency=A)
    assert [o["outcome"] for o in mine] == ["refused: an agency cannot dispatch"] * 2 + ["submitted"]
    assert w.pipeline.workflow.state(f"{B}:r1") == "approved"   # not dispatched by A
    assert w.pipeline.workflow.state(f"{A}:r1") == "submitted"  # A's own, apart
    with redis_server.client() as admin:
        assert not admin.exists(K.notifications)
        request_dispatch(admin, f"{B}:r1")                       # the reviewer's dispatch, on the platform's stream
    _serve(w, lambda: w.stats.handled == 5)
    _, theirs = read_outcomes(b, agency=B)
    assert [o["outcome"] for o in theirs] == ["submitted"]
    assert w.pipeline.workflow.state(f"{B}:r1") == "dispatched"


def test_a_dispatch_sent_just_before_a_submission_does_not_swallow_it(redis_server: RedisServer, index) -> None:
    wf = Workflow(RedisStore.from_url(redis_server.url), _registry(), Policy(auto_approve=True))
    qs = QueueSettings.from_url(redis_server.url)
    pipeline = Pipeline(wf, index, Dispatcher(RedisSink(qs), qs))
    got = pipeline.run([Dispatch("x"), Submit(_req("x", A)), Dispatch("x")], NOW)
    assert [o.status for o in got] == ["dispatched"] * 3 and sum(o.dispatched_now for o in got) == 1
    assert np.array_equal(wf.store.request_ids(), ["x"])



def test_an_agency_cannot_backdate_a_submission(redis_server: RedisServer, index) -> None:
    """An authenticated submission was made when the pipeline judges it, whatever ``submitted_at`` it names: a
    request dated a month back is judged and stored as of now (backdated, its window would pass the retention
    rule and its date would dodge today's rate limit). The platform's own writers are taken as they say."""
    wf = Workflow(RedisStore.from_url(redis_server.url), _registry(), Policy())
    qs = QueueSettings.from_url(redis_server.url)
    pipeline = Pipeline(wf, index, Dispatcher(RedisSink(qs), qs))
    month = timedelta(days=30)
    old = {**_req("old", A), "submitted_at": NOW - month, "start": NOW - wf.policy.max_age - timedelta(hours=3),
           "end": NOW - wf.policy.max_age - timedelta(hours=1)}
    trusted = {**old, "request_id": "trusted"}
    fresh = {**_req("fresh", A), "submitted_at": NOW - month}
    got = pipeline.run([Submit(old, agency=A), Submit(fresh, agency=A), Submit(trusted)], NOW)
    assert got[0].refused and "window_too_old" in got[0].codes
    assert [o.status for o in got[1:]] == ["submitted", "submitted"]
    stored = {rid: StoredRequest.from_record(rid, wf.store.get_request(rid)).request.submitted_at  # type: ignore[arg-type]
              for rid in (f"{A}:fresh", "trusted")}
    assert stored == {f"{A}:fresh": NOW, "trusted": NOW - month}


@pytest.mark.parametrize("crafted", ["a:b", "il-chicago:x", "il-*", "[a-z]l-chicago", "pd{x}", "pd a", "pd\nWARNING",
                                     "", "x" * 65, "pd-é"])
def test_an_agency_id_is_a_plain_name_or_the_registry_refuses_it(tmp_path, crafted: str) -> None:
    """The platform stores an agency's request ``x`` as ``<agency>:x``: an agency registered as ``a:b`` would own
    ``a:b:x``, which is also agency ``a``'s request ``b:x`` (to continue, block or follow another's request).
    Globs and braces would reach into other keys' ACL patterns and slots, a line break into the logs. A registry
    holding one is refused whole, in code and from a file."""
    from dispatcher.errors import InvalidData

    good = Agency("a", "Police A", "IL", geodesic_circle(-87.6, 41.9, 5_000), NOW)
    with pytest.raises(InvalidData, match="agency_id"):
        Agency(crafted, "Crafted", "IL", geodesic_circle(-87.6, 41.9, 5_000), NOW)
    AgencyRegistry([good]).save_geojson(tmp_path / "agencies.geojson")
    text = (tmp_path / "agencies.geojson").read_text()
    (tmp_path / "crafted.geojson").write_text(text.replace('"id":"a"', f'"id":{orjson.dumps(crafted).decode()}'))
    assert (tmp_path / "crafted.geojson").read_text() != text
    with pytest.raises(InvalidData, match="agency_id"):
        AgencyRegistry.load(tmp_path / "crafted.geojson")

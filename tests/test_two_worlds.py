"""What an agency can observe is the same in two worlds that differ in one resident: present or not, opted out
or not, declining or ignoring the request. Random requests, opt-outs, declines and shares are run through the
whole pipeline (validate, record, resolve, dispatch through the gate, mark) in both worlds; everything an
agency-facing call returns (each command's outcome as submitters see it, and the agency's view of each request:
status and the other residents' shares under their pseudonyms) is compared."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.sinks import LocalSink
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index import CameraIndex
from dispatcher.service.commands import submitters_outcome
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.pipeline import Pipeline, Submit
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.privacy import Views
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import SqliteStore
from tests import data
from tests.video_requests import JOINED, LAT0, LNG0, NOW, request, square

SECRET = b"a pseudonym secret of the test"
CAMS = data.cameras(3_000, seed=71, cx=LNG0, cy=LAT0, spread=0.004)
OWNERS = data.owners(CAMS, seed=71, share_out=0.0)
REGISTRY = AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL",
                                  geodesic_circle(LNG0, LAT0, 20_000), JOINED)])


def _without(owner: int) -> tuple[pa.Table, pa.Table]:
    keep = np.asarray(CAMS.column("owner_id").to_numpy() != owner)
    return CAMS.filter(pa.array(keep)), OWNERS.filter(pa.array(OWNERS.column("owner_id").to_numpy() != owner))


def _world(tmp: Path, name: str, cams: pa.Table, owners: pa.Table, scenario: dict, x: int, variant: str
           ) -> list[object]:
    """Everything agency-facing, in order, for one world."""
    store = SqliteStore(tmp / f"{name}.sqlite")
    sink = LocalSink(tmp / f"{name}.sqlite")
    wf = Workflow(store, REGISTRY, Policy(auto_approve=True, owner_cap=2))
    pipeline = Pipeline(wf, CameraIndex.build(cams, owners), Dispatcher(sink))
    views = Views(store, SECRET)
    seen: list[object] = []
    for owner in scenario["opted_out"]:
        wf.opt_out(owner, NOW - timedelta(days=1))
    if variant == "opted_out":
        wf.opt_out(x, NOW - timedelta(days=1))
    for k, (dx, dy, size, days) in enumerate(scenario["requests"]):
        start = NOW - timedelta(days=days, hours=3)
        r = request(request_id=f"q{k}", area=square(size, LNG0 + dx, LAT0 + dy), start=start,
                    end=start + timedelta(hours=2))
        sent = {f: getattr(r, f) for f in r.__dataclass_fields__}
        out = pipeline.run([Submit(sent, trace=k)], NOW)
        seen.append([submitters_outcome(o, k) for o in out])  # what the submitters' channel carries
        for owner in sorted(scenario["sharers"]):
            if owner != x and store.was_notified(f"q{k}", owner):
                wf.share(f"q{k}", owner, [f"clip-{owner}-{k}"], NOW + timedelta(hours=1))
        for owner in sorted(scenario["decliners"]):
            if owner != x and store.was_notified(f"q{k}", owner):
                wf.decline(f"q{k}", owner, NOW + timedelta(hours=1))
        if variant == "declines" and store.was_notified(f"q{k}", x):
            wf.decline(f"q{k}", x, NOW + timedelta(hours=1))
        seen.append(views.agency_view(wf, f"q{k}"))
    store.close()
    sink.close()
    return seen


owner_ids = OWNERS.column("owner_id").to_numpy().tolist()
scenarios = st.fixed_dictionaries({
    "requests": st.lists(st.tuples(st.floats(-0.002, 0.002), st.floats(-0.002, 0.002), st.floats(0.03, 0.45),
                                   st.integers(1, 20)), min_size=1, max_size=4),
    "opted_out": st.sets(st.sampled_from(owner_ids), max_size=20),
    "sharers": st.sets(st.sampled_from(owner_ids), max_size=60),
    "decliners": st.sets(st.sampled_from(owner_ids), max_size=60),
})


@pytest.mark.parametrize("variant", ["absent", "opted_out", "declines"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(scenario=scenarios, x=st.sampled_from(owner_ids))
def test_one_resident_changes_nothing_an_agency_sees(tmp_path_factory: pytest.TempPathFactory, variant: str,
                                                      scenario: dict, x: int) -> None:
    tmp = tmp_path_factory.mktemp("worlds")
    base = _world(tmp, "with", CAMS, OWNERS, scenario, x, "ignores")
    cams, owners = _without(x) if variant == "absent" else (CAMS, OWNERS)
    other = _world(tmp, "other", cams, owners, scenario, x, variant)
    assert base == other

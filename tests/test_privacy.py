"""The privacy wall, by property tests over random workflows: the agency's view holds only pseudonyms and
opaque clip references, and it does not change when owners who did not share are notified, decline or opt out."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.dispatch.gate import OwnerGate
from dispatcher.errors import InvalidData
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.keys import Keys
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.privacy import PSEUDONYM_RE, AgencyView, SharedClips, Views, pseudonyms
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import RedisStore, SqliteStore, Store
from tests.video_requests import JOINED, LAT0, LNG0, NOW, request

SECRET = b"0123456789abcdef-test-secret"
OWNER = st.integers(min_value=10**9, max_value=2**62)
# one random workflow: owners, who shares (with clip names), who declines, who opts out before sending
WORKFLOW = st.lists(st.tuples(OWNER, st.sampled_from(["share", "decline", "silent", "opt_out"]),
                              st.lists(st.text("abcdef0123456789", min_size=1, max_size=12), min_size=1, max_size=3)),
                    min_size=1, max_size=25, unique_by=lambda t: t[0])


@pytest.fixture(scope="module", params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def make_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], Store]]:
    """A fresh, empty store per call: SQLite in memory, or a new key prefix on the session's real Redis."""
    if request.param == "sqlite":
        yield SqliteStore
        return
    with request.getfixturevalue("_redis_session").client() as client:
        yield lambda: RedisStore(client, Keys(hash_tag=f"gd-{uuid.uuid4().hex}"))


def _run(ops: list, extra_noise: bool, make_store: Callable[[], Store]) -> tuple[AgencyView, Views, Store]:
    store = make_store()
    reg = AgencyRegistry([Agency("il-chicago", "Chicago PD", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED)])
    wf = Workflow(store, reg, Policy(auto_approve=True, owner_cap=1000))
    wf.submit(request(), NOW)
    for o, what, _ in ops:
        if what == "opt_out":
            wf.opt_out(o, NOW)
    owners = np.array([o for o, _, _ in ops], np.int64)
    OwnerGate(store, wf.policy).admit("r1", owners, NOW)
    wf.mark_dispatched("r1", NOW)
    if extra_noise:  # owners who never share: more notified, and declines
        OwnerGate(store, wf.policy).admit("r1", np.arange(5, 25, dtype=np.int64) + 10**12, NOW)
        wf.decline("r1", 10**12 + 5, NOW)
    for o, what, clips in ops:
        if what == "share":
            wf.share("r1", o, clips, NOW + timedelta(minutes=1))
        elif what == "decline":
            wf.decline("r1", o, NOW)
    views = Views(store, SECRET)
    return views.agency_view(wf, "r1"), views, store


@given(WORKFLOW)
def test_agency_view_holds_nothing_but_pseudonyms(make_store: Callable[[], Store], ops: list) -> None:
    view, views, store = _run(ops, False, make_store)
    sharers = {o for o, w, _ in ops if w == "share"}
    assert len(view.shared) == len(sharers)
    assert {s.pseudonym for s in view.shared} == set(pseudonyms(SECRET, "r1", sorted(sharers)).values())
    text = repr(view)
    for o, _, clips in ops:
        assert str(o) not in text
        assert all(f"'{c}'" not in text for c in clips)
    for s in view.shared:
        assert PSEUDONYM_RE.fullmatch(s.pseudonym)
    # every leaf of the view is a str: no int can carry an id, a location or a count
    leaves = [view.request_id, view.case_number, view.status]
    leaves += [x for s in view.shared for x in (s.pseudonym, *s.clips)]
    assert all(type(x) is str for x in leaves)
    assert {f.name for f in dataclasses.fields(AgencyView)} == {"request_id", "case_number", "status", "shared"}
    op = views.operator_view("r1")
    assert op.shared == len(sharers)
    assert op.suppressed_opted_out == sum(w == "opt_out" for _, w, _ in ops)
    assert op.notified == len(ops) - op.suppressed_opted_out


@given(WORKFLOW)
def test_agency_view_ignores_who_was_notified_declined_or_opted_out(make_store: Callable[[], Store],
                                                                    ops: list) -> None:
    quiet, _, _ = _run(ops, False, make_store)
    noisy, _, _ = _run(ops, True, make_store)
    assert quiet == noisy


@given(st.lists(OWNER, min_size=1, max_size=300, unique=True), st.text(min_size=1, max_size=10))
def test_pseudonyms_unique_and_per_request(owners: list[int], rid: str) -> None:
    names = pseudonyms(SECRET, rid, owners)
    assert len(set(names.values())) == len(owners)
    assert all(PSEUDONYM_RE.fullmatch(n) for n in names.values())
    assert pseudonyms(SECRET, rid, list(reversed(owners))) == names


def test_types_refuse_ids_and_counts() -> None:
    for bad in (12345, "Neighbor 12345", "owner 4821", "Neighbor 0123"):
        with pytest.raises(InvalidData):
            SharedClips(bad, ())  # type: ignore[arg-type]
    with pytest.raises(InvalidData):
        SharedClips("Neighbor 4821", ("camera-17",))
    with pytest.raises(InvalidData):
        AgencyView("r1", "c", "dispatched", (1, 2))  # type: ignore[arg-type]
    with pytest.raises(InvalidData):
        AgencyView("r1", "c", "notified 3", ())
    with pytest.raises((AttributeError, TypeError)):  # frozen, with slots: no field can be added
        AgencyView("r1", "c", "closed", ()).notified = 3  # type: ignore[attr-defined]
    a = SharedClips("Neighbor 4821", ())
    with pytest.raises(InvalidData):
        AgencyView("r1", "c", "closed", (a, a))

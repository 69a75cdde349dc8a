"""The privacy wall, by property tests over random workflows: the agency's view holds only pseudonyms and
opaque share ids, it does not change when owners who did not share are notified, decline or opt out, and
a resident's pseudonym once shown stays the same whoever shares later, on SQLite and on Redis."""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

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
from dispatcher.workflow.privacy import PSEUDONYM_RE, AgencyView, SharedClips, Views, pseudonyms, share_id
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
    leaves += [x for s in view.shared for x in (s.pseudonym, *s.share_ids)]
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


# -- pseudonyms stay put ------------------------------------------------------------------------------------------

def _dispatched(make_store: Callable[[], Store], owners: list[int]) -> tuple[Workflow, Views, Store]:
    store = make_store()
    reg = AgencyRegistry([Agency("il-chicago", "Chicago PD", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED)])
    wf = Workflow(store, reg, Policy(auto_approve=True, owner_cap=1000))
    wf.submit(request(), NOW)
    OwnerGate(store, wf.policy).admit("r1", np.array(owners, np.int64), NOW)
    wf.mark_dispatched("r1", NOW)
    return wf, Views(store, SECRET), store


def _shown(views: Views, wf: Workflow, clip_of: dict[int, str]) -> dict[int, str]:
    """Owner -> pseudonym in the agency's view, told apart by each owner's own clip."""
    owner_of = {share_id(SECRET, "r1", c): o for o, c in clip_of.items()}
    return {owner_of[s.share_ids[0]]: s.pseudonym for s in views.agency_view(wf, "r1").shared}


@functools.lru_cache(maxsize=1)
def _colliding_owners() -> tuple[int, int]:
    """Owners b < a whose first pseudonym candidates in request r1 are the same number."""
    first: dict[str, int] = {}
    for o in range(10**9, 10**9 + 20_000):
        n = pseudonyms(SECRET, "r1", [o])[o]
        if n in first:
            return first[n], o
        first[n] = o
    raise AssertionError("no collision among 20,000 owners")


def test_a_later_share_does_not_take_an_earlier_pseudonym(make_store: Callable[[], Store]) -> None:
    """b's first candidate is a's pseudonym, and b has the smaller id: when b shares after a was shown, a keeps its
    name and b probes on."""
    b, a = _colliding_owners()
    wf, views, _ = _dispatched(make_store, [a, b])
    clip_of = {a: "clip-a", b: "clip-b"}
    wf.share("r1", a, ["clip-a"], NOW)
    before = _shown(views, wf, clip_of)
    assert before == {a: pseudonyms(SECRET, "r1", [a])[a]}
    wf.share("r1", b, ["clip-b"], NOW)
    after = _shown(views, wf, clip_of)
    assert after[a] == before[a] and after[b] != after[a]
    assert after[b] == pseudonyms(SECRET, "r1", [b], taken=[before[a]])[b]


def test_a_pseudonym_outlives_a_change_of_mind(make_store: Callable[[], Store]) -> None:
    wf, views, store = _dispatched(make_store, [11, 12])
    clip_of = {11: "c11", 12: "c12"}
    wf.share("r1", 11, ["c11"], NOW)
    first = _shown(views, wf, clip_of)[11]
    wf.decline("r1", 11, NOW)
    assert _shown(views, wf, clip_of) == {}
    assert store.choices("r1") == [(11, "decline", [])]
    wf.share("r1", 12, ["c12"], NOW)
    wf.share("r1", 11, ["c11"], NOW)
    assert _shown(views, wf, clip_of)[11] == first


@given(st.lists(OWNER, min_size=2, max_size=30, unique=True), st.data())
def test_pseudonyms_never_change_whatever_the_order(make_store: Callable[[], Store], owners: list[int],
                                                   data: st.DataObject) -> None:
    """Shares (and declines) arrive in any order, the agency looks after any of them: a pseudonym once shown is
    the same in every later view, and two residents never share one. Two of the owners always collide."""
    owners = sorted({*owners, *_colliding_owners()})
    wf, views, _ = _dispatched(make_store, owners)
    clip_of = {o: f"clip-{o}" for o in owners}
    order = data.draw(st.permutations(owners))
    seen: dict[int, str] = {}
    for o in order:
        if data.draw(st.booleans()):
            wf.decline("r1", o, NOW)
        else:
            wf.share("r1", o, [clip_of[o]], NOW)
        if data.draw(st.booleans()):
            shown = _shown(views, wf, clip_of)
            assert all(seen.setdefault(k, n) == n for k, n in shown.items())
            assert len(set(shown.values())) == len(shown)
    shown = _shown(views, wf, clip_of)
    assert all(seen.setdefault(k, n) == n for k, n in shown.items())
    assert len(set(seen.values())) == len(seen)


@pytest.mark.redis
def test_two_views_naming_at_once_agree(_redis_session: Any) -> None:
    """Another view names a resident while this one is choosing names: this one starts again from what the other
    stored, so nobody gets two names and no name goes to two residents."""
    with _redis_session.client() as client:
        keys = Keys(hash_tag=f"gd-{uuid.uuid4().hex}")
        wf, views, store = _dispatched(lambda: RedisStore(client, keys), [21, 22])
        wf.share("r1", 21, ["c21"], NOW)
        wf.share("r1", 22, ["c22"], NOW)
        other = RedisStore(client, keys)
        calls: list[list[int]] = []

        def name(owners: list[int], taken: set[str]) -> dict[int, str]:
            calls.append(owners)
            if len(calls) == 1:  # meanwhile, another view names 21
                other.pseudonyms("r1", [21], lambda o, t: pseudonyms(SECRET, "r1", o, t))
            return pseudonyms(SECRET, "r1", owners, taken)

        got = store.pseudonyms("r1", [21, 22], name)
        assert calls == [[21, 22], [22]]
        assert got[21] == other.pseudonyms("r1", [21], name)[21] and len(set(got.values())) == 2


def test_pseudonyms_need_a_choice_and_a_valid_taken_name(make_store: Callable[[], Store]) -> None:
    _, _, store = _dispatched(make_store, [31])
    with pytest.raises(InvalidData, match="owner 31 has made no choice"):
        store.pseudonyms("r1", [31], lambda o, t: pseudonyms(SECRET, "r1", o, t))
    with pytest.raises(InvalidData, match="not a pseudonym"):
        pseudonyms(SECRET, "r1", [31], taken=["owner 31"])
    with pytest.raises(InvalidData, match="cannot all have distinct"):
        pseudonyms(SECRET, "r1", list(range(10)), taken=[f"Neighbor {n}" for n in range(1000, 9995)])


def test_a_store_from_before_pseudonyms_were_kept_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE choices (request_id TEXT NOT NULL, owner_id INTEGER NOT NULL, choice TEXT NOT NULL, "
               "clips BLOB NOT NULL, at_us INTEGER NOT NULL, PRIMARY KEY (request_id, owner_id))")
    db.execute("INSERT INTO choices VALUES ('r1', 7, 'share', '[\"c7\"]', 0)")
    db.commit()
    db.close()
    store = SqliteStore(path)
    assert store.choices("r1") == [(7, "share", ["c7"])]
    got = store.pseudonyms("r1", [7], lambda o, t: pseudonyms(SECRET, "r1", o, t))
    assert got == pseudonyms(SECRET, "r1", [7])
    store.close()
    assert SqliteStore(path).pseudonyms("r1", [7], lambda o, t: {}) == got

"""The workflow state machine, the audit log, owner choices and the OwnerGate, on the SQLite store
(including a restart: state reopened from the same file)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from dispatcher.dispatch.gate import OwnerGate
from dispatcher.errors import InvalidChoice, InvalidRequest, InvalidTransition, RequestRejected
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import AuditEntry, RedisStore, SqliteStore, Store
from tests.video_requests import JOINED, LAT0, LNG0, NOW
from tests.video_requests import request as make_request

T = NOW


@pytest.fixture
def registry() -> AgencyRegistry:
    return AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL",
                                  geodesic_circle(LNG0, LAT0, 20_000), JOINED)])


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return SqliteStore(tmp_path / "state.db")
    server = request.getfixturevalue("redis_server")
    return RedisStore.from_url(server.url)


def test_happy_path_and_audit(store: Store, registry: AgencyRegistry) -> None:
    wf = Workflow(store, registry)
    assert wf.submit(make_request(), T) == "submitted"
    wf.approve("r1", "alice", T + timedelta(minutes=1))
    wf.mark_dispatched("r1", T + timedelta(minutes=2))
    wf.close("r1", "reviewer:alice", T + timedelta(days=7))
    trail = store.audit("r1")
    assert [(e["action"], e["actor"]) for e in trail] == [
        ("submitted", "agency:il-chicago"), ("approved", "reviewer:alice"),
        ("dispatched", "system:dispatcher"), ("closed", "reviewer:alice")]
    assert [e["at"] for e in trail] == [T, T + timedelta(minutes=1), T + timedelta(minutes=2), T + timedelta(days=7)]


@pytest.mark.parametrize("steps", [["dispatch"], ["approve", "reject"], ["reject", "approve"], ["close"],
                                   ["approve", "dispatch", "approve"], ["reject", "close"]])
def test_illegal_transitions(store: Store, registry: AgencyRegistry, steps: list[str]) -> None:
    wf = Workflow(store, registry)
    wf.submit(make_request(), T)
    act = {"approve": lambda: wf.approve("r1", "a", T), "reject": lambda: wf.reject("r1", "a", T, "no"),
           "dispatch": lambda: wf.mark_dispatched("r1", T), "close": lambda: wf.close("r1", "a", T)}
    for s in steps[:-1]:
        act[s]()
    before = store.audit("r1")
    with pytest.raises(InvalidTransition):
        act[steps[-1]]()
    assert store.audit("r1") == before


def test_auto_approval(store: Store, registry: AgencyRegistry) -> None:
    wf = Workflow(store, registry, Policy(auto_approve=True))
    assert wf.submit(make_request(), T) == "approved"
    assert store.audit("r1")[-1]["actor"] == "system:auto-approval"


def test_rejected_submission_leaves_only_an_audit_entry(store: Store, registry: AgencyRegistry) -> None:
    wf = Workflow(store, registry)
    with pytest.raises(RequestRejected):
        wf.submit(make_request(case_number="?"), T)
    with pytest.raises(InvalidRequest):
        wf.submit({"request_id": "x"}, T)
    assert store.request_ids() == []
    assert [e["action"] for e in store.audit()] == ["submission_refused", "submission_refused"]
    # the rules broken and the agency named (the transparency report counts refusals per agency)
    assert store.audit("r1")[0]["detail"] == {"codes": ["case_number"], "agency_id": "il-chicago"}
    assert store.audit("?")[0]["detail"] == {"codes": ["InvalidRequest"], "agency_id": None}
    wf.submit(make_request(), T)
    with pytest.raises(RequestRejected) as ei:
        wf.submit(make_request(), T)
    assert "duplicate_request_id" in ei.value.codes


def test_sqlite_audit_log_is_append_only(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    store.append_audit("r", "a", "x", T, {})
    import sqlite3
    with pytest.raises(sqlite3.DatabaseError):
        store._db.execute("DELETE FROM audit")
    with pytest.raises(sqlite3.DatabaseError):
        store._db.execute("UPDATE audit SET actor='b'")
    assert len(store.audit()) == 1


def test_gate_idempotent_and_opt_out_at_once(store: Store, registry: AgencyRegistry) -> None:
    wf = Workflow(store, registry, Policy(owner_cap=100))
    gate = OwnerGate(store, wf.policy)
    wf.submit(make_request(), T)
    wf.approve("r1", "a", T)
    owners = np.array([1, 2, 3, 4], np.int64)
    wf.opt_out(3, T)  # after approval, before sending: still applies
    assert gate.admit("r1", owners, T).tolist() == [True, True, False, True]
    assert gate.admit("r1", owners, T).tolist() == [True, True, False, True]
    assert store.notified_count("r1") == 3
    assert store.counters("r1") == {"opted_out": 2, "notified": 3}
    wf.opt_in(3, T)
    assert gate.admit("r1", np.array([3], np.int64), T).tolist() == [True]
    wf.opt_out(1, T)  # already notified for r1: stays notified, but not for a new request
    assert gate.admit("r1", np.array([1], np.int64), T).tolist() == [True]


def test_rolling_day_cap_counts_suppressed(store: Store) -> None:
    gate = OwnerGate(store, Policy(owner_cap=2))
    o = np.array([7], np.int64)
    assert gate.admit("a", o, T)[0] and gate.admit("b", o, T + timedelta(hours=1))[0]
    assert not gate.admit("c", o, T + timedelta(hours=2))[0]
    assert not gate.admit("c", o, T + timedelta(hours=3))[0]
    assert store.counters("c") == {"capped": 2}  # never notified
    # counted by UTC day: at 12:00:01 the next day the window reaches back to 00:00 of the day of "a" and "b"
    assert not gate.admit("d", o, T + timedelta(hours=24, seconds=1))[0]
    day_after_next = datetime(2026, 11, 3, tzinfo=timezone.utc)
    assert T.date() == date(2026, 11, 1) and not gate.admit("d", o, day_after_next - timedelta(microseconds=1))[0]
    assert gate.admit("d", o, day_after_next)[0]  # their day is out of the window
    assert store.counters("d") == {"capped": 2, "notified": 1}
    assert gate.admit("a", o, day_after_next + timedelta(seconds=2))[0]  # idempotent, never capped
    with pytest.raises(InvalidTransition):
        gate.admit("e", o, datetime(2026, 1, 1))


def test_owner_choices(store: Store, registry: AgencyRegistry) -> None:
    wf = Workflow(store, registry)
    wf.submit(make_request(), T)
    wf.approve("r1", "a", T)
    with pytest.raises(InvalidChoice):
        wf.share("r1", 1, ["clip"], T)  # not dispatched yet
    OwnerGate(store).admit("r1", np.array([1, 2], np.int64), T)
    wf.mark_dispatched("r1", T)
    wf.share("r1", 1, ["c1", "c2"], T)
    wf.decline("r1", 2, T)
    with pytest.raises(InvalidChoice):
        wf.decline("r1", 99, T)  # never notified
    with pytest.raises(InvalidChoice):
        wf.share("r1", 1, [], T)
    assert store.choices("r1") == [(1, "share", ["c1", "c2"]), (2, "decline", [])]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_state_survives_a_restart(tmp_path: Path, registry: AgencyRegistry, backend: str,
                                  request: pytest.FixtureRequest) -> None:
    def reopen() -> Store:
        if backend == "sqlite":
            return SqliteStore(tmp_path / "db")
        return RedisStore.from_url(request.getfixturevalue("redis_server").url)

    s1 = reopen()
    wf = Workflow(s1, registry)
    wf.submit(make_request(), T)
    wf.approve("r1", "a", T)
    OwnerGate(s1).admit("r1", np.array([5], np.int64), T)
    wf.opt_out(6, T)
    if isinstance(s1, SqliteStore):
        s1.close()
    s2 = reopen()
    wf2 = Workflow(s2, registry)
    assert wf2.state("r1") == "approved" and s2.was_notified("r1", 5)
    assert OwnerGate(s2).admit("r1", np.array([5, 6], np.int64), T).tolist() == [True, False]
    assert len(s2.audit()) == 3


@pytest.mark.redis
def test_a_hash_recorded_with_a_request_is_written_only_by_the_step_that_creates_it(redis_server) -> None:
    """``create_many``'s ``with_records``: the hash and its time to live with a new request, in the same step;
    nothing at all when the id exists (a second submission of it plants no hash of its own)."""
    store = RedisStore.from_url(redis_server.url)
    vr = make_request()
    item = ("r1", vr.agency_id, T, "approved", {"n": 1}, [AuditEntry("system", "approved", T)])
    key = store.k.for_request("r1").plan("r1")
    assert store.create_many([item], [(key, ("digest", "first", "n_owners", 3), 600)]) == [True]
    again = ("r1", vr.agency_id, T, "approved", {"n": 2}, [AuditEntry("system", "approved", T)])
    assert store.create_many([again], [(key, ("digest", "second", "extra", 1), 900)]) == [False]
    with redis_server.client() as r:
        assert r.hgetall(key) == {b"digest": b"first", b"n_owners": b"3"} and 0 < r.ttl(key) <= 600
    assert store.get_request("r1") == ("approved", {"n": 1}) and len(store.audit("r1")) == 1
    assert store.create_many([("r2", vr.agency_id, T, "submitted", {}, [])]) == [True]  # without: as before


@pytest.mark.redis
def test_two_workers_sharing_redis(redis_server, registry: AgencyRegistry) -> None:
    """Two workers, each with its own connection: one review wins a race, and the per-owner cap holds across
    workers admitting the same owners for different requests at the same moment."""
    import threading

    stores = [RedisStore.from_url(redis_server.url) for _ in range(2)]
    flows = [Workflow(s, registry, Policy(owner_cap=1)) for s in stores]
    flows[0].submit(make_request(), T)
    outcomes: list[str] = []

    def review(k: int) -> None:
        try:
            (flows[k].approve if k == 0 else flows[k].reject)("r1", f"reviewer-{k}", T)
            outcomes.append("ok")
        except InvalidTransition:
            outcomes.append("refused")

    threads = [threading.Thread(target=review, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok", "refused"]
    assert flows[1].state("r1") in ("approved", "rejected")
    assert len(stores[1].audit("r1")) == 2  # submitted + the one review that won

    owners = np.arange(1, 2001, dtype=np.int64)
    admitted: dict[str, np.ndarray] = {}

    def send(k: int) -> None:
        admitted[f"req-{k}"] = OwnerGate(stores[k], Policy(owner_cap=1)).admit(f"req-{k}", owners, T)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    both = admitted["req-0"].astype(int) + admitted["req-1"].astype(int)
    assert (both == 1).all()  # cap 1 a day: every owner is notified by exactly one of the two requests
    assert stores[0].counters("req-0").get("capped", 0) + stores[1].counters("req-1").get("capped", 0) == 2000

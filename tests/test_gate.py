"""The owners' gate on both engines against a plain-Python model: the cap counted per owner and UTC day (never
more than the cap in any rolling period, and exactly as much stricter as documented), re-admission for the same
request counted once, and opt-outs that land between the plan and the send."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from dispatcher.cli import main
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.gate import OwnerGate, migrate_legacy_notices
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import LocalSink, RedisSink
from dispatcher.dispatch.wire import decode_batch
from dispatcher.errors import DispatchError, InvalidData, InvalidPolicy
from dispatcher.index.recipients import RecipientSet
from dispatcher.workflow.notices import ADMIT
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.store import RedisStore, SqliteStore, Store
from tests.notifications import header

DAY = timedelta(days=1)
#: A Saturday midnight, UTC: the random times start here and cross several day boundaries.
MIDNIGHT = datetime(2026, 10, 31, tzinfo=timezone.utc)


@dataclass
class Engine:
    store: Store
    sink: Any
    settings: QueueSettings


def _engine(kind: str, tmp_path: Path, request: pytest.FixtureRequest, sink_class: type | None = None) -> Engine:
    if kind == "sqlite":
        path = tmp_path / "gate.sqlite"
        return Engine(SqliteStore(path), (sink_class or LocalSink)(path), QueueSettings(batch_size=3))
    # two gate shards on one server: each part of a batch is gated by the day counters of its own shard
    qs = QueueSettings.from_url(request.getfixturevalue("redis_server").url + "?shards=2&batch_size=3")
    return Engine(RedisStore.from_url(qs.url + "?shards=2"), (sink_class or RedisSink)(qs), qs)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _recipients(owners: list[int]) -> RecipientSet:
    ids = np.array(sorted(owners), np.int64)
    return RecipientSet(ids, ids * 10, np.arange(ids.shape[0] + 1, dtype=np.int64))


def _sent(sink: Any) -> Counter[tuple[str, int]]:
    got: Counter[tuple[str, int]] = Counter()
    for rid, payload in sink.read_all():
        got.update((rid, n.owner_id) for n in decode_batch(payload)[1])
    return got


@dataclass
class Model:
    """The gate as documented, in plain Python: an owner already notified of the request is admitted and not
    counted; else opted out; else capped when ``cap`` notices fall from 00:00 UTC of the day ``now - period``
    falls in to now."""

    cap: int
    period: timedelta
    notified: set[tuple[str, int]] = field(default_factory=set)
    notices: dict[int, list[datetime]] = field(default_factory=dict)
    opted: set[int] = field(default_factory=set)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def admit(self, rid: str, owners: list[int], now: datetime) -> list[bool]:
        start = datetime.combine((now - self.period).date(), datetime.min.time(), timezone.utc)
        out = []
        for o in owners:
            if (rid, o) in self.notified:
                out.append(True)
            elif o in self.opted:
                self.counts[rid, "opted_out"] += 1
                out.append(False)
            elif sum(start <= t for t in self.notices.get(o, [])) >= self.cap:
                self.counts[rid, "capped"] += 1
                out.append(False)
            else:
                self.notified.add((rid, o))
                self.notices.setdefault(o, []).append(now)
                self.counts[rid, "notified"] += 1
                out.append(True)
        return out


def _most_in_any_rolling_period(times: list[datetime], period: timedelta) -> int:
    """The independent check of the promise: the most notices in any window (t - period, t] (the fullest one
    ends at a notice)."""
    times = sorted(times)
    return max((sum(t - period < s <= t for s in times) for t in times), default=0)


def _times(rng: random.Random, n: int, days: int) -> list[datetime]:
    """``n`` sorted times over ``days`` days, a fifth of them on a day boundary or a microsecond from one."""
    out = []
    for _ in range(n):
        day = MIDNIGHT + rng.randrange(days) * DAY
        out.append(rng.choice([day, day - timedelta(microseconds=1), day + timedelta(microseconds=1)])
                   if rng.random() < 0.2 else day + timedelta(seconds=rng.uniform(0, 86_400)))
    return sorted(out)


@pytest.mark.parametrize(("cap", "period_days", "seed"), [(2, 1, 11), (3, 2, 12)])
def test_day_counted_cap_matches_the_model_and_never_exceeds_the_rolling_cap(
        kind: str, cap: int, period_days: int, seed: int, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Random admissions (the store's script or transaction) and dispatches (the sink's, batch by batch) of
    random owners at random times across day boundaries, with opt-outs, opt-ins and requests asked again for
    owners already notified: every verdict is the model's, the request counters are the model's, and no owner
    is ever sent more than ``cap`` notifications in any rolling period."""
    rng = random.Random(seed)
    e = _engine(kind, tmp_path, request)
    policy = Policy(owner_cap=cap, owner_cap_period=period_days * DAY)
    gate = OwnerGate(e.store, policy)
    model = Model(cap, policy.owner_cap_period)
    owners = list(range(101, 107))
    asked: list[str] = []
    dispatched = []
    for k, now in enumerate(_times(rng, 90, 6)):
        roll = rng.random()
        if roll < 0.08:
            o = rng.choice(owners)
            out = o not in model.opted
            e.store.set_opted_out(o, out, now)
            (model.opted.add if out else model.opted.discard)(o)
            continue
        some = rng.sample(owners, rng.randint(1, len(owners)))
        if roll < 0.55:
            rid = rng.choice(asked) if asked and rng.random() < 0.3 else f"a{k}"  # asked again: re-admission
            asked.append(rid)
            assert gate.admit(rid, np.array(some, np.int64), now).tolist() == model.admit(rid, some, now), (k, now)
        else:
            rid = f"d{k}"
            rs = _recipients(some)
            rep = Dispatcher(e.sink, e.settings).dispatch(header(rid), rs, gate=gate, now=now)
            want = model.admit(rid, rs.owner_ids.tolist(), now)
            assert rep.recipients_notified == sum(want) and rep.suppressed == len(want) - sum(want), (k, now)
            dispatched.append((rid, {o for o, ok in zip(rs.owner_ids.tolist(), want, strict=True) if ok}))
    sent = _sent(e.sink)
    assert max(sent.values()) == 1
    for rid, want_sent in dispatched:
        assert {o for r, o in sent if r == rid} == want_sent, rid
    for rid in {r for r, _ in model.counts}:
        assert e.store.counters(rid) == {name: n for (r, name), n in model.counts.items() if r == rid and n}, rid
    # the promise, checked on the model that every verdict matched, by a rolling count of its own
    assert max(_most_in_any_rolling_period(t, policy.owner_cap_period) for t in model.notices.values()) <= cap
    assert sum(model.counts[r, "capped"] for r, _ in model.counts) > 0  # the cap was reached, so it was tested


def test_stricter_by_at_most_a_day(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The stated bound on how much stricter than the rolling cap the day count is: notices at 00:00:00 UTC
    keep an owner capped until 00:00 UTC ``period`` plus one day later (the rolling cap would admit them a
    microsecond after ``period``), never longer; and a notice asked again for the same request is not counted."""
    e = _engine(kind, tmp_path, request)
    gate = OwnerGate(e.store, Policy(owner_cap=2, owner_cap_period=DAY))
    o = np.array([7], np.int64)
    assert gate.admit("a", o, MIDNIGHT)[0] and gate.admit("b", o, MIDNIGHT + timedelta(hours=1))[0]
    for _ in range(3):
        assert gate.admit("b", o, MIDNIGHT + timedelta(hours=2))[0]  # again for "b": admitted, not counted
    assert e.store.counters("b") == {"notified": 1}
    assert not gate.admit("c", o, MIDNIGHT + DAY + timedelta(microseconds=1))[0]  # rolling: admitted
    assert not gate.admit("c", o, MIDNIGHT + 2 * DAY - timedelta(microseconds=1))[0]
    assert gate.admit("c", o, MIDNIGHT + 2 * DAY)[0]
    assert e.store.counters("c") == {"capped": 2, "notified": 1}


class _OptsOutBeforeAnAppend:
    """A real sink whose ``at``-th round of appends is preceded by one owner's real opt-out, on the gate's own
    store: the resident who opts out after the plan was recorded, just before the batch goes out."""

    leaver = 0
    at = 1
    store: Store | None = None

    def append_many(self, work: Any, terms: Any = None) -> Any:
        self.at -= 1
        if self.at == 0 and self.store is not None:
            self.store.set_opted_out(self.leaver, True, datetime.now(timezone.utc))
        return super().append_many(work, terms)  # type: ignore[misc]


class _LeavingLocal(_OptsOutBeforeAnAppend, LocalSink):
    pass


class _LeavingRedis(_OptsOutBeforeAnAppend, RedisSink):
    pass


@pytest.mark.parametrize("checked", [False, True], ids=["all-admitted", "one-capped"])
def test_an_owner_who_opts_out_between_plan_and_send_is_never_sent_to(
        kind: str, checked: bool, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The opt-out lands after the plan was recorded and the batches prepared, just before the first append (with
    ``checked``, another owner is capped too): the append's own look-up of the batch's owners refuses the leaver,
    who is suppressed, and the others are sent to."""
    e = _engine(kind, tmp_path, request, _LeavingLocal if kind == "sqlite" else _LeavingRedis)
    gate = OwnerGate(e.store, Policy(owner_cap=1))
    rs = _recipients(list(range(1, 10)))
    leaver, capped = 6, 4  # one batch, one gate shard
    if checked:
        assert gate.admit("earlier", np.array([capped], np.int64), MIDNIGHT)[0]
    e.sink.leaver, e.sink.store, e.sink.at = leaver, e.store, 1
    rep = Dispatcher(e.sink, e.settings).dispatch(header("r1"), rs, gate=gate, now=MIDNIGHT + timedelta(hours=1))
    sent = _sent(e.sink)
    assert (("r1", leaver) not in sent) and max(sent.values()) == 1
    assert {o for _, o in sent} == set(range(1, 10)) - {leaver} - ({capped} if checked else set())
    assert e.store.counters("r1") == {"opted_out": 1, "notified": 8 - checked, **({"capped": 1} if checked else {})}
    assert rep.suppressed == 1 + checked and not e.store.was_notified("r1", leaver)


def test_the_entry_built_in_the_append_names_each_admitted_owner_with_their_own_cameras(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The sink looks the owners up and builds the entry of the admitted ones itself (on Redis, in the append's
    Lua script, from the ids as decimal text): each admitted owner comes with exactly their own cameras, ids past
    2**53 intact, owners without cameras too, and a refused owner's cameras are in no entry."""
    rng = random.Random(5)
    big = 2**62
    owners = sorted(rng.sample(range(big, big + 10**6), 14))
    counts = [rng.choice([0, 1, 1, 2, 4]) for _ in owners]
    cams = {o: [big + 3 * 10**6 + 10 * i + k for k in range(n)] for i, (o, n) in enumerate(zip(owners, counts))}
    rs = RecipientSet(np.array(owners, np.int64), np.array([c for o in owners for c in cams[o]], np.int64),
                      np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    e = _engine(kind, tmp_path, request)
    gate = OwnerGate(e.store, Policy(owner_cap=1))
    opted, capped = set(owners[1::4]), set(owners[2::5]) - set(owners[1::4])
    for o in opted:
        e.store.set_opted_out(o, True, MIDNIGHT)
    assert gate.admit("earlier", np.array(sorted(capped), np.int64), MIDNIGHT).all()
    rep = Dispatcher(e.sink, e.settings).dispatch(header("r1"), rs, gate=gate, now=MIDNIGHT + timedelta(hours=1))
    got: dict[int, tuple[int, ...]] = {}
    for rid, payload in e.sink.read_all():
        for n in decode_batch(payload)[1]:
            assert rid == "r1" and n.owner_id not in got and n.header == header("r1").to_dict()
            got[n.owner_id] = n.camera_ids
    assert got == {o: tuple(cams[o]) for o in owners if o not in opted | capped}
    assert (rep.recipients_notified, rep.suppressed) == (len(got), len(opted) + len(capped))
    assert e.store.counters("r1") == {"notified": len(got), "opted_out": len(opted), "capped": len(capped)}
    # a request none of whose owners is refused: on Redis the script joins the pieces as given instead
    fresh = RecipientSet(rs.owner_ids + 10**7, rs.camera_ids, rs.owner_offsets)
    rep2 = Dispatcher(e.sink, e.settings).dispatch(header("r2"), fresh, gate=gate, now=MIDNIGHT + timedelta(hours=2))
    assert (rep2.recipients_notified, rep2.suppressed) == (len(owners), 0)
    again: dict[int, tuple[int, ...]] = {}
    for rid, payload in e.sink.read_all():
        # either way an entry is the compact JSON of what it names, as a plain encoder writes it
        d = json.loads(payload)
        assert payload == json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode()
        assert len(d["offsets"]) == len(d["owners"]) + 1 and d["offsets"][0] == 0
        assert d["offsets"] == sorted(d["offsets"]) and d["offsets"][-1] == len(d["cameras"])
        if rid == "r2":
            again.update((n.owner_id, n.camera_ids) for n in decode_batch(payload)[1])
    assert again == {o + 10**7: tuple(cams[o]) for o in owners}


@pytest.mark.parametrize("period", [timedelta(hours=12), timedelta(days=1, hours=1), timedelta(0),
                                    timedelta(days=32), 86_400])
def test_a_cap_period_that_is_not_a_whole_number_of_days_is_refused(period: Any) -> None:
    with pytest.raises(InvalidPolicy, match="owner_cap_period must be a whole number of days") as ei:
        Policy(owner_cap_period=period)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, DispatchError)
    with pytest.raises(InvalidPolicy, match="whole number of days"):
        Policy.from_dict({"owner_cap_period": 43_200})
    assert Policy.from_dict({"owner_cap_period": 7 * 86_400}).owner_cap_period == 7 * DAY


def test_an_sqlite_file_of_before_the_day_counters_counts_its_notices(tmp_path: Path) -> None:
    """A file written before the day counters (who was notified when, no counters): opened again, its notices
    of the day still count against the cap."""
    path = tmp_path / "old.sqlite"
    store = SqliteStore(path)
    gate = OwnerGate(store, Policy(owner_cap=2))
    for rid in ("a", "b"):
        assert gate.admit(rid, np.array([7, 8], np.int64), MIDNIGHT + timedelta(hours=1)).all()
    store._db.execute("DROP TABLE owner_days")  # as the file was before
    store.close()
    again = SqliteStore(path)
    assert OwnerGate(again, Policy(owner_cap=2)).admit("c", np.array([7, 9], np.int64),
                                                       MIDNIGHT + timedelta(hours=2)).tolist() == [False, True]


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


@pytest.mark.redis
def test_the_cap_holds_across_the_upgrade_from_the_sorted_sets(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The layout of before on a real redis-server (two gate shards): each owner's notices a sorted set of request
    ids by time (µs), in the owner's shard, as the old gate wrote them. The day counters alone would let the owners
    who reached the cap be notified again; migrated, the cap counts the notices its window reaches (from 00:00 UTC
    of the day ``now - period`` falls in), through the real dispatch; run again, nothing is counted twice; and
    ``geodispatch migrate-gate`` does the same."""
    e = _engine("redis", tmp_path, request)
    qs, keys = e.settings, e.settings.keys
    r = request.getfixturevalue("redis_server").client()
    policy = Policy(owner_cap=2)  # in any rolling day
    now = MIDNIGHT + timedelta(hours=10)
    before = {7: [now - timedelta(hours=3), now - timedelta(hours=1)],             # capped
              8: [now - timedelta(hours=2)],                                        # one more
              9: [now - timedelta(days=3)],                                         # long past: counts nothing
              10: [MIDNIGHT - timedelta(hours=1), now - timedelta(minutes=30)]}     # yesterday's counts too

    def legacy(owner: int, times: list[datetime], shard: int | None = None) -> str:
        key = keys.shard(keys.owner_shard(owner) if shard is None else shard).legacy_owner_notices(owner)
        r.zadd(key, {f"old-{k}": _us(t) for k, t in enumerate(times)})
        r.pexpire(key, 86_400_000 + 1000)  # the old gate's: a period and a second after the last notice
        return key

    old_keys = [legacy(o, ts) for o, ts in before.items()]
    elsewhere = legacy(11, [now], shard=1 - keys.owner_shard(11))  # a shard count changed since: left alone
    gate = OwnerGate(e.store, policy)
    ids = np.array(sorted(before), np.int64)
    assert (gate.check_many([("new", ids)], now)[0] == 0).all()  # what the upgrade alone would do: admit all

    got = migrate_legacy_notices(r, qs, policy, now)
    assert (got.owners, got.notices, got.skipped) == (4, 5, [elsewhere])
    assert not any(r.exists(k) for k in old_keys) and r.exists(elsewhere)
    day = _us(now) // 86_400_000_000
    today, yesterday = keys.shard(keys.owner_shard(7)).notices(day), keys.shard(keys.owner_shard(10)).notices(day - 1)
    assert 38 * 3600 - 5 < r.ttl(today) <= 38 * 3600 and 14 * 3600 - 5 < r.ttl(yesterday) <= 14 * 3600
    assert migrate_legacy_notices(r, qs, policy, now).notices == 0  # run again: nothing counted twice

    Dispatcher(e.sink, qs).dispatch(header("new"), _recipients(sorted(before)), gate=gate, now=now)
    Dispatcher(e.sink, qs).dispatch(header("new-2"), _recipients([8, 9]), gate=gate, now=now + timedelta(minutes=1))
    assert _sent(e.sink) == Counter({("new", 8): 1, ("new", 9): 1, ("new-2", 9): 1})

    # the command: the same, from the command line (on the URL's queue settings, at the wall clock's now)
    wall = datetime.now(timezone.utc)
    legacy(12, [wall - timedelta(minutes=5), wall - timedelta(minutes=4), wall - timedelta(days=5)])
    ran = CliRunner().invoke(main, ["migrate-gate", "--redis-url", qs.url + "?shards=2"])
    assert ran.exit_code == 0, ran.output
    assert "1 owners' sorted sets counted into the day counters (2 notices" in " ".join(ran.output.split())
    assert not r.exists(keys.shard(keys.owner_shard(12)).legacy_owner_notices(12))
    assert int(r.hget(keys.shard(keys.owner_shard(12)).notices(_us(wall) // 86_400_000_000), "12")) == 2


@pytest.mark.redis
def test_a_look_up_named_for_one_shard_refuses_owners_of_another(request: pytest.FixtureRequest,
                                                                 tmp_path: Path) -> None:
    """The dispatcher names each part's gate shard (so that a part without owners is looked up there too); owners
    of another shard under that name would be read against the wrong shard's opt-outs and counters: refused."""
    e = _engine("redis", tmp_path, request)
    gate = OwnerGate(e.store, Policy())
    even, odd = np.array([2, 4], np.int64), np.array([3], np.int64)
    got = gate.check_many([("r1", even), ("r1", odd), ("r1", odd[:0])], MIDNIGHT, [0, 1, 1])
    assert [v.tolist() for v in got] == [[ADMIT, ADMIT], [ADMIT], []]
    with pytest.raises(InvalidData, match="outside gate shard 1"):
        gate.check_many([("r1", even)], MIDNIGHT, [1])

"""What an agency can observe is the same in two worlds that differ in one resident: present or not, opted out
or not, declining or ignoring the request. Random requests, opt-outs, declines and shares are run through the
whole pipeline (validate, record, resolve, dispatch through the gate, mark) in both worlds; everything an
agency-facing call returns (each command's outcome as submitters see it, and the agency's view of each request:
status and the other residents' shares under their pseudonyms) is compared. On Redis, the work each submission
asks of it (its round trips and the commands in each) is compared too: an agency can time its own submissions."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import LocalSink, RedisSink
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index import CameraIndex
from dispatcher.index.schema import CAMERA_SCHEMA, OWNER_SCHEMA
from dispatcher.keys import Keys
from dispatcher.service.commands import submitters_outcome
from dispatcher.service.servers import RedisServer
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.pipeline import Pipeline, Submit
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.privacy import Views
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import RedisStore, SqliteStore
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


# ------------------------------------------------------------------------------------------ the work it costs

#: A home on its own, 4 km from the others: an area around it reaches this one resident and nobody else.
HOME, HOME_AT = 10**9 + 7, (LNG0 + 0.05, LAT0 + 0.01)
LONE_CAMS = pa.concat_tables([CAMS, pa.Table.from_pylist([{
    "camera_id": 10**9 + 7, "owner_id": HOME, "lat": HOME_AT[1], "lng": HOME_AT[0],
    "installed_at": NOW - timedelta(days=400), "removed_at": None, "retention_days": 60,
    "sharing_enabled": True}], schema=CAMERA_SCHEMA)])
LONE_OWNERS = pa.concat_tables([OWNERS, pa.Table.from_pylist([{"owner_id": HOME, "opted_out": False}],
                                                              schema=OWNER_SCHEMA)])


def _first_key(args: list[bytes]) -> list[bytes]:
    """A command's script (for a script call) and the hash tag of its first key: which shard it goes to."""
    name = args[0].upper()
    if name in (b"EVALSHA", b"EVAL"):
        return [args[1], *(re.findall(rb"\{[^}]*\}", args[3])[:1] if int(args[2]) else [])]
    return re.findall(rb"\{[^}]*\}", args[1])[:1] if len(args) > 1 else []


def _round_trips(packed: list[bytes]) -> list[tuple[bytes, ...]]:
    """The commands of each round trip, by name, script and shard (see :func:`_first_key`), read from the bytes
    sent (RESP arrays of bulk strings, each argument's length first: a binary argument may hold CR LF)."""
    out = []
    for wire in packed:
        names, at = [], 0
        while at < len(wire):
            assert wire[at:at + 1] == b"*", wire[at:at + 20]
            eol = wire.index(b"\r\n", at)
            count, at = int(wire[at + 1:eol]), eol + 2
            args = []
            for _ in range(count):
                eol = wire.index(b"\r\n", at)
                n = int(wire[at + 1:eol])
                args.append(wire[eol + 2:eol + 2 + n])
                at = eol + 2 + n + 2
            names.append(b" ".join([args[0].upper(), *_first_key(args)]))
        out.append(tuple(names))
    return out


def _work(server: RedisServer, world: str, shards: int, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """For one world: each submission's outcome as its sender sees it, and the round trips it cost."""
    cams, owners = LONE_CAMS, LONE_OWNERS
    if world == "absent":
        cams = cams.filter(pa.array(cams.column("owner_id").to_numpy() != HOME))
        owners = owners.filter(pa.array(owners.column("owner_id").to_numpy() != HOME))
    client = server.client()
    client.flushall()  # each world on the same keys
    keys = Keys(hash_tag="gd-worlds", shards=shards)
    store = RedisStore(client, keys)
    wf = Workflow(store, REGISTRY, Policy(auto_approve=True, owner_cap=2))
    index = CameraIndex.build(cams, owners)
    pipeline = Pipeline(wf, index, Dispatcher(RedisSink(client, QueueSettings(url=server.url), keys)))
    if world in ("opted_out", "opted_out_everywhere"):  # the gate refuses the home; or the index leaves it out too
        wf.opt_out(HOME, NOW - timedelta(days=1))
        if world == "opted_out_everywhere":
            index.set_opted_out([HOME])
    sent: list[bytes] = []
    real: Any = redis.connection.AbstractConnection.send_packed_command

    def counted(conn: Any, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else bytes(command))
        real(conn, command, check_health)
    start = NOW - timedelta(days=1)
    seen: list[object] = []
    # the first (scripts loaded), then three at the home (the third one past the cap), then one of many owners
    areas = [square(0.1), *[square(0.03, *HOME_AT)] * 3, square(0.2)]
    for k, area in enumerate(areas):
        r = request(request_id=f"w{k}", area=area, start=start, end=start + timedelta(hours=2))
        sent.clear()
        with monkeypatch.context() as m:
            m.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
            out = pipeline.run([Submit({f: getattr(r, f) for f in r.__dataclass_fields__}, trace=k)], NOW)
        seen.append(([submitters_outcome(o, k) for o in out], _round_trips(sent)))
        if world == "admissible" and k in (1, 2):  # the premise: the home is reached, then capped
            assert out[0].notified == 1, out
    client.close()
    return seen


@pytest.mark.redis
@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("world", ["absent", "opted_out", "opted_out_everywhere"])
def test_a_submission_costs_the_same_round_trips_whoever_lives_there(redis_server: RedisServer, world: str,
                                                                     shards: int,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An agency times its own submissions: the work each asks of Redis (how many round trips, which commands
    in each, to which shard: on a cluster, each master is a round trip of its own) must not tell whether a home
    is there, opted out (known to the gate only, or to the index too), or capped (the third request at it, past
    the cap of two); with one gate shard or several."""
    base = _work(redis_server, "admissible", shards, monkeypatch)
    other = _work(redis_server, world, shards, monkeypatch)
    assert len(base) == len(other) == 5
    for k, (b, o) in enumerate(zip(base[1:], other[1:], strict=True), 1):  # the first one connects, loads scripts
        assert b == o, (k, b, o)
    # and the same few: the rate limit's read, the record (with its plan), the append (the gate's look-up and
    # records in the same script: one round whether the home is admitted, opted out or capped), the outcome
    assert [len(rounds) for _, rounds in base[1:]] == [4] * 4, base

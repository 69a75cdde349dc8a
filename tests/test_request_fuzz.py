"""Thousands of malformed or hostile submissions: each gets a typed error and leaves nothing but an audit entry."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pytest
import shapely

from dispatcher.errors import DispatchError, RequestRejected
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import RedisStore, SqliteStore, Store
from tests.area_shapes import decoy_and_pin, dumbbell_pin, geojson, pin_on_a_string, sieve, thin_ring
from tests.area_shapes import square as square_m
from tests.video_requests import JOINED, LAT0, LNG0, NOW, request, square

N = 3000


def _good() -> dict:
    r = request()
    return {k: getattr(r, k) for k in r.__dataclass_fields__}


def _ring(rng: np.random.Generator) -> list:
    pts = [[LNG0 + float(x), LAT0 + float(y)] for x, y in rng.uniform(-0.005, 0.005, (int(rng.integers(1, 3)), 2))]
    return pts + pts[:1] if rng.random() < 0.5 else pts


def _drop(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def _mutations(rng: np.random.Generator) -> list:
    big = {"type": "Polygon", "coordinates": [[[LNG0 + 0.01 * math.cos(t), LAT0 + 0.01 * math.sin(t)]
                                               for t in np.linspace(0, 2 * math.pi, 1_000_000)]]}
    s = square(0.1)["coordinates"][0]
    hostile = {"decoy": geojson(decoy_and_pin()), "sieve": geojson(sieve()), "ring": geojson(thin_ring()),
               "sliver": geojson(shapely.box(-10_000, -2, 10_000, 2)), "dumbbell": geojson(dumbbell_pin()),
               "string": geojson(pin_on_a_string()),
               "many": geojson(shapely.MultiPolygon([square_m(0.03, 300 * k, 0) for k in range(6)]))}
    return [
        lambda d: {**d, "area": "{" * int(rng.integers(1, 50))},
        lambda d: {**d, "area": {"type": "Polygon", "coordinates": [_ring(rng)]}},
        lambda d: {**d, "area": {"type": "Polygon", "coordinates": [[s[0], s[2], s[1], s[3], s[0]]]}},  # bow tie
        lambda d: {**d, "area": {"type": "Polygon", "coordinates": [[s[0], s[1], s[0], s[1], s[0]]]}},  # zero area
        lambda d: {**d, "area": {"type": "Polygon", "coordinates": [[[float("nan"), 1.0], *s[1:]]]}},
        lambda d: {**d, "area": {"type": "Polygon", "coordinates": [[[float("inf"), 1.0], *s[1:]]]}},
        lambda d: {**d, "area": {"type": "MultiPolygon", "coordinates": "x"}},
        lambda d: {**d, "area": [1, [2, [3]]]},
        lambda d: {**d, "area": square(float(rng.choice([0.001, 0.02, 0.6, 50.0])))},
        lambda d: {**d, "start": d["start"].replace(tzinfo=None)},
        lambda d: {**d, "start": d["end"], "end": d["start"]},
        lambda d: {**d, "start": "not a time"},
        lambda d: {**d, "end": NOW + timedelta(hours=float(rng.uniform(0.1, 5)))},
        lambda d: {**d, "start": NOW - timedelta(days=400), "end": NOW - timedelta(days=400) + timedelta(hours=1)},
        lambda d: {**d, "agency_id": "ghost-" + str(rng.integers(1e9))},
        lambda d: {**d, "agency_id": "suspended"},
        lambda d: {**d, "message": "x" * int(rng.integers(2001, 50_000))},
        lambda d: {**d, "message": "<img src=x onerror=alert(1)>" + "hi"},
        lambda d: {**d, "message": "click javascript:void(0)"},
        lambda d: {**d, "message": "\x00\x1b[31m"},
        lambda d: {**d, "case_number": "'; DROP TABLE requests; --"},
        lambda d: {**d, "case_number": ""},
        lambda d: {**d, "incident_type": "protest"},
        lambda d: {**d, "investigator_contact": "<a href=x>me</a>"},
        lambda d: {**d, "message": int(rng.integers(100))},
        lambda d: {**d, "request_id": "../../etc/passwd"},
        lambda d: {**d, "request_id": "r" * 65},
        lambda d: _drop(d, str(rng.choice(sorted(d)))),
        lambda d: {**d, "surprise": True},
        lambda d: {**d, "submitted_at": d["submitted_at"].replace(tzinfo=None)},
        lambda d: {**d, "request_id": "taken"},
        # areas inside the size limits drawn to single out a home: a decoy and a pin, slivers, corridors, too many
        lambda d: {**d, "area": hostile["decoy"]},
        lambda d: {**d, "area": hostile["sliver"]},
        lambda d: {**d, "area": hostile["ring"]},
        lambda d: {**d, "area": hostile["dumbbell"]},
        lambda d: {**d, "area": hostile["string"]},
        lambda d: {**d, "area": hostile["many"]},
        # the last two run once: a million vertices, and a sieve of 2,450 polygons
        lambda d: {**d, "area": hostile["sieve"]},
        lambda d: {**d, "area": big},
    ]



@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "sqlite":
        return SqliteStore()
    return RedisStore.from_url(request.getfixturevalue("redis_server").url)


def test_thousands_of_hostile_requests(store: Store) -> None:
    rng = np.random.default_rng(4)
    reg = AgencyRegistry([Agency("il-chicago", "Chicago PD", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED),
                          Agency("suspended", "Gone PD", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED, True)])
    wf = Workflow(store, reg)
    wf.submit({**_good(), "request_id": "taken"}, NOW)
    muts = _mutations(rng)
    seen_kinds: set[str] = set()
    for k in range(N):
        m = k % len(muts) if k < len(muts) else int(rng.integers(len(muts) - 2))  # the last two run once
        d = muts[m](_good())
        with pytest.raises(DispatchError) as ei:
            wf.submit(d, NOW)
        assert isinstance(ei.value, (ValueError, KeyError))
        assert str(ei.value)
        seen_kinds.add(type(ei.value).__name__)
        if isinstance(ei.value, RequestRejected):
            assert ei.value.codes
    assert seen_kinds >= {"RequestRejected", "InvalidRequest"}
    assert store.request_ids() == ["taken"]
    trail = store.audit()
    assert len(trail) == N + 1
    assert [e["action"] for e in trail[1:]] == ["submission_refused"] * N
    assert datetime.fromisoformat(store.get_request("taken")[1]["submitted_at"]) == NOW  # type: ignore[index]

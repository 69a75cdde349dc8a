"""Agencies, video requests and the policy: every rule, each alone and all at once, with areas measured by an
independent oracle (a Lambert azimuthal equal-area projection through pyproj's Transformer and shapely)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pyarrow.parquet as pq
import pytest
import shapely

from dispatcher.errors import DispatchError, InvalidData, InvalidPolicy, InvalidRequest, RequestRejected, UnknownAgency
from dispatcher.geo.geodesy import SQ_M_PER_SQ_MI, geodesic_circle
from dispatcher.synthetic.agencies import generate_agencies
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.policy import Policy, validate
from dispatcher.workflow.requests import VideoRequest
from tests.area_shapes import MemLog, laea_sq_mi
from tests.video_requests import JOINED, LAT0, LNG0, NOW, request, square


@pytest.fixture
def registry() -> AgencyRegistry:
    return AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL",
                                  geodesic_circle(LNG0, LAT0, 20_000), JOINED)])


def codes(r: VideoRequest, reg: AgencyRegistry, log: MemLog | None = None, policy: Policy | None = None) -> list[str]:
    with pytest.raises(RequestRejected) as ei:
        validate(r, reg, log or MemLog(), NOW, policy)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, DispatchError)
    return ei.value.codes


def test_a_good_request_passes_with_oracle_area(registry: AgencyRegistry) -> None:
    r = request()
    v = validate(r, registry, MemLog(), NOW)
    assert v.start == NOW - timedelta(hours=5) and v.end.tzinfo is not None
    assert v.area_sq_mi == pytest.approx(laea_sq_mi(shapely.geometry.shape(r.area)), rel=1e-6)
    assert v.area_sq_mi == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("sq_mi,ok", [(0.024, False), (0.0255, True), (0.49, True), (0.51, False), (2.0, False)])
def test_area_bounds_on_the_ellipsoid(registry: AgencyRegistry, sq_mi: float, ok: bool) -> None:
    r = request(area=square(sq_mi))
    oracle = laea_sq_mi(shapely.geometry.shape(r.area))
    assert oracle == pytest.approx(sq_mi, rel=1e-6)
    if ok:
        assert validate(r, registry, MemLog(), NOW).area_sq_mi == pytest.approx(oracle, rel=1e-6)
    else:
        assert codes(r, registry) == ["area_size"]


@pytest.mark.parametrize("start,end,code", [
    (timedelta(minutes=14), timedelta(0), "window_length"),
    (timedelta(hours=12, minutes=1), timedelta(0), "window_length"),
    (timedelta(hours=1), timedelta(hours=2), "window_reversed"),
    (timedelta(hours=1), timedelta(minutes=-30), "window_not_past"),
    (timedelta(days=181), timedelta(days=181) - timedelta(hours=1), "window_too_old"),
])
def test_time_window_rules(registry: AgencyRegistry, start: timedelta, end: timedelta, code: str) -> None:
    assert codes(request(start=NOW - start, end=NOW - end), registry) == [code]


def test_window_limits_inclusive(registry: AgencyRegistry) -> None:
    for length in (timedelta(minutes=15), timedelta(hours=12)):
        assert validate(request(start=NOW - length, end=NOW), registry, MemLog(), NOW).end == NOW


def test_naive_time_is_rejected(registry: AgencyRegistry) -> None:
    assert codes(request(start=datetime(2026, 11, 1, 8), end="2026-11-01T09:00:00Z"), registry) == ["time_format"]


def test_every_broken_rule_is_listed(registry: AgencyRegistry) -> None:
    registry.suspend("il-chicago")
    r = request(case_number="#", incident_type="protest", investigator_contact="call me",
                message="<script>alert(1)</script>", area=square(3.0, -80.0, 30.0),
                start=NOW - timedelta(hours=1), end=NOW + timedelta(hours=1))
    got = codes(r, registry)
    assert set(got) == {"agency_suspended", "case_number", "incident_type", "contact", "message",
                        "window_not_past", "area_size", "outside_jurisdiction"}


def test_agency_rules(registry: AgencyRegistry) -> None:
    assert codes(request(agency_id="nowhere"), registry) == ["unknown_agency"]
    assert codes(request(submitted_at=JOINED - timedelta(days=1), start=JOINED - timedelta(days=1, hours=2),
                         end=JOINED - timedelta(days=1, hours=1)), registry) == ["agency_not_joined"]
    registry.suspend("il-chicago")
    assert codes(request(), registry) == ["agency_suspended"]
    registry.reinstate("il-chicago")
    assert validate(request(), registry, MemLog(), NOW).agency_id == "il-chicago"


def test_outside_jurisdiction_uses_covers(registry: AgencyRegistry) -> None:
    far = square(0.1, LNG0 + 0.5, LAT0)
    assert not registry.get("il-chicago").jurisdiction.intersects(shapely.geometry.shape(far))
    assert codes(request(area=far), registry) == ["outside_jurisdiction"]


def test_rate_limit_and_duplicates(registry: AgencyRegistry) -> None:
    log = MemLog()
    pol = Policy(rate_limit=3)
    for k in range(3):
        r = request(request_id=f"r{k}", submitted_at=NOW - timedelta(minutes=10 - k))
        validate(r, registry, log, NOW, pol)
        log.record(r)
    assert codes(request(request_id="r9"), registry, log, pol) == ["rate_limited"]
    got = codes(request(request_id="r0"), registry, log, pol)
    assert got == ["duplicate_request_id", "rate_limited"]
    # a day later the window has rolled on
    later = NOW + timedelta(days=1)
    r = request(request_id="r10", submitted_at=later, start=later - timedelta(hours=2), end=later - timedelta(hours=1))
    assert validate(r, registry, log, later, pol).request_id == "r10"


@pytest.mark.parametrize("msg,ok", [("Line one\nline two", True), ("a" * 2001, False), ("<b>bold</b>", False),
                                    ("Tom &amp; Jerry", False), ("zero\u200bwidth", False), ("bell\x07", False),
                                    ("   ", False), ("Café — 5 ft", True)])
def test_message_is_plain_text(registry: AgencyRegistry, msg: str, ok: bool) -> None:
    if ok:
        assert validate(request(message=msg), registry, MemLog(), NOW).message == msg
    else:
        assert codes(request(message=msg), registry) == ["message"]


@pytest.mark.parametrize("contact,ok", [("a.b@x.gov", True), ("+1 (312) 555-0100", True), ("555", False),
                                        ("x" * 200 + "@a.com", False), ("not a contact", False)])
def test_contact(registry: AgencyRegistry, contact: str, ok: bool) -> None:
    if ok:
        assert validate(request(investigator_contact=contact), registry, MemLog(), NOW).investigator_contact
    else:
        assert codes(request(investigator_contact=contact), registry) == ["contact"]


def test_bad_areas_are_one_rule(registry: AgencyRegistry) -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[LNG0, LAT0], [LNG0 + .01, LAT0 + .01], [LNG0 + .01, LAT0],
                                                  [LNG0, LAT0 + .01], [LNG0, LAT0]]]}
    nan = {"type": "Polygon", "coordinates": [[[LNG0, LAT0], [float("nan"), LAT0], [LNG0, LAT0 + .01],
                                               [LNG0, LAT0]]]}
    for area in (bowtie, nan, "{broken", {"type": "Point", "coordinates": [0, 0]}, None, 42):
        assert codes(request(area=area), registry) == ["area_invalid"]


def test_request_parsing_errors() -> None:
    good = dict(request_id="r1", agency_id="a", case_number="c", incident_type="x", investigator_contact="e",
                message="m", area={}, start="", end="", submitted_at="2026-11-01T00:00:00Z")
    assert VideoRequest.from_dict(good).submitted_at.tzinfo is not None
    for bad in ({**good, "extra": 1}, {k: v for k, v in good.items() if k != "message"},
                {**good, "message": 5}, {**good, "request_id": "a b"}, {**good, "submitted_at": "2026-11-01T00:00"},
                {**good, "submitted_at": "yesterday"}, [1, 2]):
        with pytest.raises(InvalidRequest):
            VideoRequest.from_dict(bad)


def test_policy_from_dict() -> None:
    p = Policy.from_dict({"max_window": 3600, "rate_limit": 5, "max_area_sq_mi": 1})
    assert p.max_window == timedelta(hours=1) and p.rate_limit == 5 and p.max_area_sq_mi == 1.0
    assert Policy() == Policy.from_dict({})
    for bad in ({"max_windw": 3600}, {"rate_limit": "5"}, {"rate_limit": 0},
                {"min_window": 7200, "max_window": 3600}):
        with pytest.raises(InvalidPolicy):
            Policy.from_dict(bad)


def test_generated_agencies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ags = generate_agencies(400, seed=3)
    assert len(ags) == 400 and len({a.agency_id for a in ags}) == 400
    assert all(a.name.endswith(" Police Department") and len(a.state) == 2 for a in ags)
    joins = sorted(a.joined_at for a in ags)
    assert joins[0].year == 2018 and joins[-1].year == 2025
    again = generate_agencies(400, seed=3)
    assert [(a.agency_id, a.joined_at) for a in again] == [(a.agency_id, a.joined_at) for a in ags]
    for a in ags[:20]:  # oracle: projected area of a 3-40 km circle
        r_km = math.sqrt(laea_sq_mi(a.jurisdiction) * SQ_M_PER_SQ_MI / math.pi) / 1000
        assert 2.9 < r_km < 40.1
    reg = AgencyRegistry(ags)
    reg.suspend(ags[0].agency_id)
    reg.remove(ags[1].agency_id)
    with pytest.raises(UnknownAgency):
        reg.get(ags[1].agency_id)
    with pytest.raises(InvalidData):
        reg.add(ags[2])
    for save, load, name in ((reg.save_parquet, AgencyRegistry.load_parquet, "a.parquet"),
                             (reg.save_geojson, AgencyRegistry.load_geojson, "a.geojson")):
        save(tmp_path / name)
        back = load(tmp_path / name)
        assert len(back) == 399 and back.get(ags[0].agency_id).suspended
        for a in ags[2:12]:
            b = back.get(a.agency_id)
            assert (b.name, b.state, b.joined_at) == (a.name, a.state, a.joined_at)
            assert b.jurisdiction.equals_exact(a.jurisdiction, 1e-9)
    assert pq.read_table(tmp_path / "a.parquet").num_rows == 399
    (tmp_path / "bad.geojson").write_text('{"features": [{}]}')
    with pytest.raises(InvalidData):
        AgencyRegistry.load_geojson(tmp_path / "bad.geojson")

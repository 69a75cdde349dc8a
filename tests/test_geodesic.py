"""The compiled geodesic areas and perimeters (kernels.geodesic) against pyproj's Geod (GeographicLib), the
independent oracle: within 1e-9 relative, or 0.01 m² an edge (c² 2^-52, c the authalic radius: the rounding of the
c² (α2 - α1) term of each edge's area, on either side; it matters only for small polygons by the poles), wherever
the kernel decides, and the kernel decides every request-sized polygon off the poles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pyproj import Geod

from dispatcher.geo.area import Area
from dispatcher.geo.geodesy import SQ_M_PER_SQ_MI, area_perimeter, geodesic_area_sq_mi
from kernels.geodesic import edge, polygon_area_perimeter

GEOD = Geod(ellps="WGS84")
REL = 1e-9
ABS_M2_PER_EDGE = 0.01


def _flat(rings: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    xy = np.concatenate(rings)
    ring_ptr = np.cumsum([0, *(r.shape[0] for r in rings)]).astype(np.int64)
    return (np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1]), ring_ptr,
            np.array([0, len(rings)], dtype=np.int64))


def _oracle(rings: list[np.ndarray]) -> tuple[float, float]:
    area, perimeter = GEOD.polygon_area_perimeter(rings[0][:, 0], rings[0][:, 1])
    area = abs(area)
    for hole in rings[1:]:
        area -= abs(GEOD.polygon_area_perimeter(hole[:, 0], hole[:, 1])[0])
    return area, perimeter


@st.composite
def star_rings(draw: st.DrawFn, lat_lo: float = -89.0, lat_hi: float = 89.0, r_lo: float = 1e-3,
               r_hi: float = 20.0) -> np.ndarray:
    """A star-shaped ring around a random centre: ``r_lo``..``r_hi`` degrees of latitude across, 3-24 vertices at
    random angles and reaches (from a drawn seed: quick to draw), its longitudes scaled by the centre's latitude
    (capped, so that the ring spans at most 170°)."""
    lat0 = draw(st.floats(lat_lo, lat_hi))
    lng0 = draw(st.floats(-180.0, 180.0))
    radius = draw(st.floats(r_lo, r_hi))
    n = draw(st.integers(3, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    angles = np.sort(rng.uniform(0.0, 2 * math.pi, n))
    reach = rng.uniform(0.4, 1.0, n)
    lat = np.clip(lat0 + radius * reach * np.sin(angles), -89.999, 89.999)
    stretch = min(1.0 / max(math.cos(math.radians(lat0)), 1e-3), 85.0 / radius)
    lng = lng0 + radius * stretch * reach * np.cos(angles)
    ring = np.column_stack([lng, lat])
    return np.vstack([ring, ring[:1]])


def _close(got: float, want: float, ring: np.ndarray) -> bool:
    return abs(got - want) <= max(REL * abs(want), ABS_M2_PER_EDGE * (ring.shape[0] - 1))


@settings(max_examples=100, deadline=None)
@given(star_rings())
def test_ring_area_and_perimeter_are_pyprojs(ring):
    out = np.empty((1, 2))
    polygon_area_perimeter(*_flat([ring]), out)
    want_area, want_perimeter = _oracle([ring])
    if math.isnan(out[0, 0]):  # left to pyproj: an edge nearly half way round or along the equator
        assert np.ptp(ring[:, 0]) > 150 or (np.abs(ring[:, 1]) < 1e-5).sum() >= 2
    else:
        assert _close(out[0, 0], want_area, ring), (out[0], want_area)
        assert out[0, 1] == pytest.approx(want_perimeter, rel=REL)
    got_area, got_perimeter = area_perimeter(*_flat([ring]))[0].tolist()  # what the policy reads: NaN never
    assert _close(got_area, want_area, ring) and got_perimeter == pytest.approx(want_perimeter, rel=REL)


@settings(max_examples=60, deadline=None)
@given(star_rings(lat_lo=-85.0, lat_hi=85.0, r_lo=1e-3, r_hi=0.05))
def test_request_sized_rings_are_decided_in_compiled_code(ring):
    assume((np.abs(ring[:, 1]) < 1e-5).sum() < 2)  # not along the equator
    out = np.empty((1, 2))
    polygon_area_perimeter(*_flat([ring]), out)
    want_area, want_perimeter = _oracle([ring])
    assert _close(out[0, 0], want_area, ring), (out[0], want_area)
    assert out[0, 1] == pytest.approx(want_perimeter, rel=REL)


@settings(max_examples=40, deadline=None)
@given(star_rings(lat_lo=88.0, lat_hi=89.9, r_lo=1e-3, r_hi=0.09))
def test_near_the_pole(ring):
    out = np.empty((1, 2))
    polygon_area_perimeter(*_flat([ring]), out)
    assert _close(out[0, 0], _oracle([ring])[0], ring)


@pytest.mark.parametrize(("lon1", "lat1", "lon2", "lat2"), [
    (10.0, -30.0, 10.0, 45.0),      # a meridian, across the equator
    (10.0, 45.0, 10.0, -30.0),      # ... southward
    (-20.0, 0.0, 100.0, 0.0),       # the equator
    (0.0, 10.0, 170.0, 10.0),       # long, along a parallel
    (-87.6, 41.88, -87.6, 41.88),   # a repeated position
    (5.0, -89.9, 60.0, -89.95),     # by the south pole
])
def test_edges_as_pyproj_measures_them(lon1, lat1, lon2, lat2):
    out = np.empty(4)
    assert edge(lon1, lat1, lon2, lat2, out)
    assert out[0] == pytest.approx(GEOD.inv(lon1, lat1, lon2, lat2)[2], rel=REL, abs=1e-9)


def test_edges_through_a_pole_or_half_way_round_go_to_pyproj():
    out = np.empty(4)
    assert not edge(0.0, 90.0, 10.0, 80.0, out)
    assert not edge(0.0, 1.0, 179.0, -1.0, out)
    ring = np.array([[0.0, 80.0], [10.0, 90.0], [20.0, 80.0], [0.0, 80.0]])
    assert area_perimeter(*_flat([ring]))[0].tolist() == pytest.approx(list(_oracle([ring])), rel=REL)


def test_holes_parts_and_the_antimeridian_through_areas():
    shell = shapely.Point(179.99, -16.5).buffer(0.03, quad_segs=4)
    holed = shapely.Polygon(shell.exterior.coords, [shapely.Point(179.97, -16.5).buffer(0.01, quad_segs=3)
                                                    .exterior.coords[::-1]])
    east = shapely.clip_by_rect(holed, -180, -90, 180, 90)
    west = shapely.transform(shapely.clip_by_rect(holed, 180, -90, 540, 90), lambda xy: xy - (360.0, 0.0))
    area = Area.parse(shapely.MultiPolygon([east, west]))
    want = sum(_oracle([np.asarray(r.coords) for r in (p.exterior, *p.interiors)])[0] for p in (east, west))
    assert geodesic_area_sq_mi(area) * SQ_M_PER_SQ_MI == pytest.approx(want, rel=REL)
    whole = _oracle([np.asarray(r.coords) for r in (holed.exterior, *holed.interiors)])[0]
    assert want == pytest.approx(whole, rel=1e-6)  # the halves make up the whole (clipping adds vertices)

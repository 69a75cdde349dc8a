"""The compiled validation path (kernels/validation.py, orchestrated by Area.parse) against GEOS: the same areas
accepted, the same refusals with the same messages, the same coordinates; and the compiled jurisdiction check
against shapely's ``covers``. Random rings on a coarse dyadic grid make the hard cases common: self-intersections,
bow-ties, spikes, repeated and collinear vertices, vertices on edges, holes touching their shell."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
import shapely
import shapely.geometry
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.errors import InvalidArea
from dispatcher.geo.area import Area
from dispatcher.synthetic.areas import SQ_MILE_KM2, sample_areas_at
from dispatcher.workflow.policy import jurisdiction_covers
from kernels.validation import (
    AREA_RING_RULE,
    AREA_UNSURE,
    AREA_VALID,
    COVERED,
    MAX_EDGES,
    NOT_COVERED,
    check_area,
    covers_area,
)
from tests.polygons import areas, star

X0, Y0 = -73.95, 40.75
#: Grid step of the random rings: dyadic, so midpoints and collinear points are exact.
STEP = 2.0**-8

grid = st.integers(0, 6).map(lambda k: X0 + k * STEP)
grid_y = st.integers(0, 6).map(lambda k: Y0 + k * STEP)
loose = st.floats(X0, X0 + 6 * STEP, allow_nan=False)
loose_y = st.floats(Y0, Y0 + 6 * STEP, allow_nan=False)


@st.composite
def rings(draw: st.DrawFn, on_grid: bool | None = None) -> list[list[float]]:
    """A closed ring of 3 to 10 random vertices (on the grid, or anywhere), maybe with a repeated vertex or a
    spike (out and straight back) inserted."""
    on_grid = draw(st.booleans()) if on_grid is None else on_grid
    xs, ys = (grid, grid_y) if on_grid else (loose, loose_y)
    pts = [[draw(xs), draw(ys)] for _ in range(draw(st.integers(3, 10)))]
    extra = draw(st.sampled_from(["none", "none", "repeat", "spike"]))
    k = draw(st.integers(0, len(pts) - 1))
    if extra == "repeat":
        pts.insert(k, list(pts[k]))
    elif extra == "spike":
        pts[k + 1:k + 1] = [[draw(xs), draw(ys)], list(pts[k])]
    return [*pts, list(pts[0])]


@st.composite
def hostile_areas(draw: st.DrawFn) -> dict:
    """A Polygon (maybe with a hole, maybe a bow-tie) or a MultiPolygon of random rings, or a valid star area."""
    kind = draw(st.sampled_from(["ring", "ring", "holed", "multi", "bowtie", "star", "broken", "antimeridian"]))
    if kind == "star":
        return draw(areas())
    if kind == "antimeridian":  # split at ±180 as RFC 7946 asks: valid; or one ring across it: refused
        w, e = 180 - draw(st.integers(1, 6)) * STEP, -180 + draw(st.integers(1, 6)) * STEP
        west = [[w, 51], [180, 51], [180, 52], [w, 52], [w, 51]]
        east = [[-180, 51], [e, 51], [e, 52], [-180, 52], [-180, 51]]
        if draw(st.booleans()):
            return {"type": "MultiPolygon", "coordinates": [[west], [east]]}
        return {"type": "Polygon", "coordinates": [[[w, 51], [e, 51], [e, 52], [w, 52], [w, 51]]]}
    if kind == "broken":  # a ring rule broken: not closed, NaN, infinite, out of range
        ring = draw(rings())
        how = draw(st.sampled_from(["open", "nan", "inf", "range"]))
        k = draw(st.integers(0, len(ring) - 2))
        if how == "open":
            ring[-1] = [ring[-1][0] + STEP, ring[-1][1]]
        else:
            ring[k] = [{"nan": math.nan, "inf": -math.inf, "range": 180.5}[how], ring[k][1]]
        return {"type": "Polygon", "coordinates": [ring]}
    if kind == "bowtie":
        a, b = draw(st.integers(1, 6)) * STEP, draw(st.integers(1, 6)) * STEP
        ring = [[X0, Y0], [X0 + a, Y0 + b], [X0 + a, Y0], [X0, Y0 + b], [X0, Y0]]
        return {"type": "Polygon", "coordinates": [ring]}
    if kind == "holed":
        shell = star(X0 + 3 * STEP, Y0 + 3 * STEP, [3 * STEP] * 8, 0.0, STEP)
        hole = draw(rings(on_grid=True))
        return {"type": "Polygon", "coordinates": [shell, hole[::-1] if draw(st.booleans()) else hole]}
    if kind == "multi":
        return {"type": "MultiPolygon", "coordinates": [[draw(rings())], [draw(rings())]]}
    return {"type": "Polygon", "coordinates": [draw(rings())]}


def _geos_verdict(raw: dict) -> tuple[shapely.Geometry | None, str | None]:
    """GEOS's word on ``raw``, independent of the library: (the geometry, None) when accepted, or (None, what the
    refusal must say). Ring rules first, in ring order, as the library checks them."""
    polys = raw["coordinates"] if raw["type"] == "MultiPolygon" else [raw["coordinates"]]
    for rings_ in polys:
        for ring in rings_:
            r = np.asarray(ring, dtype=np.float64)
            if r.shape[0] < 4:
                return None, "a closed ring needs at least 4"
            if not np.isfinite(r).all():
                return None, "NaN or infinite"
            if not (r[0] == r[-1]).all():
                return None, "is not closed"
            if (np.abs(r[:, 0]) > 180).any() or (np.abs(r[:, 1]) > 90).any():
                return None, "coordinates outside lng [-180, 180]"
            if np.ptp(r[:, 0]) > 180:
                return None, "must be split into a MultiPolygon"
    shapes = [shapely.Polygon(p[0], p[1:]) for p in polys]
    geom = shapes[0] if len(shapes) == 1 else shapely.MultiPolygon(shapes)
    if not shapely.is_valid(geom):
        return None, f"invalid area: {shapely.is_valid_reason(geom)}"
    if not shapely.area(geom) > 0:
        return None, "the area has zero size"
    return geom, None


@settings(max_examples=150)
@given(hostile_areas())
def test_parse_is_geos_on_hostile_areas(raw):
    want, why = _geos_verdict(raw)
    if want is None:
        with pytest.raises(InvalidArea) as exc:
            Area.parse(raw)
        assert why in str(exc.value)
        return
    got = Area.parse(raw)
    assert got.geometry.wkb == want.wkb  # the same coordinates, rings and polygons
    polys = raw["coordinates"] if raw["type"] == "MultiPolygon" else [raw["coordinates"]]
    assert got.poly_bbox.tolist() == [list(shapely.Polygon(p[0]).bounds) for p in polys]
    assert np.array_equal(np.column_stack([got.xs, got.ys]), shapely.get_coordinates(want))


@settings(max_examples=150)
@given(hostile_areas())
def test_compiled_check_certifies_only_what_geos_accepts(raw):
    """The kernel alone: AREA_VALID only for areas GEOS accepts; it may hand a valid area to GEOS (unsure), never
    the other way round."""
    want, _ = _geos_verdict(raw)
    polys = raw["coordinates"] if raw["type"] == "MultiPolygon" else [raw["coordinates"]]
    flat = [np.asarray(r, dtype=np.float64) for p in polys for r in p]
    xy = np.concatenate(flat)
    ring_ptr = np.cumsum([0, *(r.shape[0] for r in flat)]).astype(np.int64)
    poly_ptr = np.cumsum([0, *(len(p) for p in polys)]).astype(np.int64)
    status = check_area(np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1]), ring_ptr, poly_ptr,
                        np.empty((len(polys), 4)))
    assert status in (AREA_VALID, AREA_RING_RULE, AREA_UNSURE)
    if status == AREA_VALID:
        assert want is not None, "certified an area GEOS refuses"


def test_typical_request_areas_take_the_compiled_path():
    """Every synthetic request polygon (8-14 vertices, notched) is certified without GEOS, and is what GEOS says."""
    polys = sample_areas_at(np.full(200, 41.88), np.linspace(-87.7, -87.6, 200),
                            np.geomspace(0.025, 0.5, 200) * SQ_MILE_KM2, seed=3)
    for raw in polys:
        ring = np.asarray(raw["coordinates"][0], dtype=np.float64)
        status = check_area(np.ascontiguousarray(ring[:, 0]), np.ascontiguousarray(ring[:, 1]),
                            np.array([0, ring.shape[0]]), np.array([0, 1]), np.empty((1, 4)))
        assert status == AREA_VALID
        assert Area.parse(raw).geometry.is_valid


@pytest.mark.parametrize("ring", [
    [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]],
    [[0, 0], [1, 0], [1, 0], [1, 1], [0, 0]],  # a repeated vertex: valid for GEOS
    [[0, 0], [1, 0], [2, 0], [2, 1], [0, 0]],  # collinear vertices: valid, left to GEOS
    [[0, 0], [2, 0], [1, 0], [1, 1], [0, 0]],  # a spike back along an edge
    [[0, 0], [2, 0], [2, 2], [1, 0], [0, 2], [0, 0]],  # a vertex on an edge
    [[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]],  # bow-tie
    [[0, 0], [1, 0], [1, 0], [0, 0]],  # too few distinct points
    [[0, 0], [1e-300, 0], [0, 1e-300], [0, 0]],  # an area that underflows to zero
])
def test_degenerate_rings_decided_as_geos_decides(ring):
    raw = {"type": "Polygon", "coordinates": [ring]}
    want, why = _geos_verdict(raw)
    if why is None:
        assert Area.parse(raw).geometry.equals_exact(want, 0.0)
    else:
        with pytest.raises(InvalidArea) as exc:
            Area.parse(raw)
        assert why in str(exc.value)


def test_holes_and_parts():
    outer = [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]
    inner = [[1, 1], [1, 2], [2, 2], [2, 1], [1, 1]]
    outside = [[5, 5], [5, 6], [6, 6], [6, 5], [5, 5]]
    touching = [[0, 1], [1, 2], [1, 1], [0, 1]]  # a hole touching the shell at one vertex: valid in GEOS
    Area.parse({"type": "Polygon", "coordinates": [outer, inner]})
    Area.parse({"type": "Polygon", "coordinates": [outer, touching]})
    with pytest.raises(InvalidArea, match="Hole lies outside shell"):
        Area.parse({"type": "Polygon", "coordinates": [outer, outside]})
    with pytest.raises(InvalidArea, match="Nested shells"):  # one part inside the other
        Area.parse({"type": "MultiPolygon", "coordinates": [[outer], [inner]]})
    island = Area.parse({"type": "MultiPolygon", "coordinates": [[outer, [[0.5, 0.5], [0.5, 3.5], [3.5, 3.5],
                                                                          [3.5, 0.5], [0.5, 0.5]]], [inner]]})
    assert island.geometry.is_valid and len(island.geometry.geoms) == 2  # an island in a lake


def test_geometry_made_once_and_equal_to_the_given_rings():
    ring = [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]
    a = Area.parse({"type": "Polygon", "coordinates": [ring]})
    assert a.geometry is a.geometry and a.geometry.equals_exact(shapely.Polygon(ring), 0.0)


def test_every_spelling_of_a_typical_polygon_gives_the_same_area():
    """A request's polygon as floats (the one-call path), as integers, tuples, with altitudes, as text, as a
    shapely geometry: the same arrays; with a position of the wrong kind or count, the same refusal as before."""
    raw = sample_areas_at(np.array([41.88]), np.array([-87.63]), np.array([0.2 * SQ_MILE_KM2]), seed=9)[0]
    ring = raw["coordinates"][0]
    want = Area.parse(shapely.geometry.shape(raw))
    spellings = [raw, orjson.dumps(raw), {"type": "Polygon", "coordinates": [[tuple(p) for p in ring]]},
                 {"type": "Polygon", "coordinates": [[[*p, 12.5] for p in ring]]},
                 {"type": "Feature", "geometry": raw, "properties": {}}]
    for spelling in spellings:
        got = Area.parse(spelling)
        for a, b in zip(got.kernel_args(), want.kernel_args(), strict=True):
            assert np.array_equal(a, b)
    whole = Area.parse({"type": "Polygon", "coordinates": [[[-88, 41], [-87, 41], [-87, 42], [-88, 41]]]})
    assert whole.xs.dtype == np.float64 and whole.xs.tolist() == [-88.0, -87.0, -87.0, -88.0]
    for bad in ([ring[0][0], "41.9"], {"lng": 1, "lat": 2}, [[1.0, 2.0], [3.0, 4.0]]):
        with pytest.raises(InvalidArea, match="positions must be arrays of two or three numbers"):
            Area.parse({"type": "Polygon", "coordinates": [[bad, *ring[1:-1], bad]]})
    with pytest.raises(InvalidArea, match="has NaN or infinite coordinates"):  # one number: no position
        Area.parse({"type": "Polygon", "coordinates": [[ring[0][:1], *ring[1:]]]})
    with pytest.raises(InvalidArea, match="is not closed"):
        Area.parse({"type": "Polygon", "coordinates": [ring[:-1]]})
    with pytest.raises(InvalidArea, match="more than the 5 allowed"):
        Area.parse(raw, max_vertices=5)


@st.composite
def jurisdictions(draw: st.DrawFn) -> shapely.Geometry:
    """A valid jurisdiction on the grid: a box, a star, or a box with a hole, often sharing edges with areas."""
    kind = draw(st.sampled_from(["box", "star", "holed"]))
    k = [draw(st.integers(0, 6)) for _ in range(4)]
    x0, x1 = sorted((X0 + k[0] * STEP, X0 + k[1] * STEP + STEP))
    y0, y1 = sorted((Y0 + k[2] * STEP, Y0 + k[3] * STEP + STEP))
    if kind == "box":
        return shapely.box(x0, y0, x1, y1)
    if kind == "star":
        return shapely.Polygon(star(X0 + 3 * STEP, Y0 + 3 * STEP, [draw(st.floats(1, 3)) * STEP for _ in range(9)],
                                    draw(st.floats(0, math.pi)), STEP / 4))
    hole = shapely.box(X0 + 2 * STEP, Y0 + 2 * STEP, X0 + 3 * STEP, Y0 + 3 * STEP)
    return shapely.Polygon(shapely.box(X0, Y0, X0 + 6 * STEP, Y0 + 6 * STEP).exterior, [hole.exterior])


@settings(max_examples=120)
@given(jurisdictions(), hostile_areas())
def test_jurisdiction_covers_is_shapely_covers(jurisdiction, raw):
    if not jurisdiction.is_valid:
        return
    try:
        area = Area.parse(raw)
    except InvalidArea:
        return
    assert jurisdiction_covers(jurisdiction, area) == jurisdiction.covers(shapely.geometry.shape(raw))


def test_jurisdiction_covers_typical_requests_in_compiled_code():
    jurisdiction = shapely.Point(-87.65, 41.88).buffer(0.2, quad_segs=16)
    flat = Area.parse(jurisdiction)
    polys = sample_areas_at(np.full(50, 41.88), np.linspace(-87.9, -87.4, 50), np.full(50, 0.3 * SQ_MILE_KM2),
                            seed=5)
    inside = 0
    for raw in polys:
        area = Area.parse(raw)
        want = jurisdiction.covers(shapely.geometry.shape(raw))
        assert jurisdiction_covers(jurisdiction, area) == want
        decided = covers_area(*flat.kernel_args(), *area.kernel_args())
        if not jurisdiction.boundary.intersects(shapely.geometry.shape(raw)):  # clear of the boundary
            assert decided == (COVERED if want else NOT_COVERED)
        inside += want
    assert 10 < inside < 50


def test_areas_past_the_pairwise_limit_go_to_geos():
    t = np.linspace(0, 2 * np.pi, MAX_EDGES + 72, endpoint=False)
    ring = np.column_stack([X0 + 0.01 * np.cos(t), Y0 + 0.01 * np.sin(t)]).tolist()
    area = Area.parse({"type": "Polygon", "coordinates": [[*ring, ring[0]]]})
    assert area.n_vertices == MAX_EDGES + 73 and area.geometry.is_valid
    ring[5], ring[100] = ring[100], ring[5]  # two vertices swapped: the ring crosses itself
    with pytest.raises(InvalidArea, match="invalid area: Self-intersection"):
        Area.parse({"type": "Polygon", "coordinates": [[*ring, ring[0]]]})

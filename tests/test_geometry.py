from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import shapely
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.errors import InvalidArea
from dispatcher.geo import geodesy
from dispatcher.geo.area import Area
from dispatcher.workflow import policy
from kernels.geometry import BOX_IN, BOX_OUT, WORK_SIZE, classify_box, covers_points, orient2d
from tests.polygons import areas, boundary_points

coord = st.floats(-180, 180, allow_nan=False, allow_infinity=False)


def exact_orient(ax: float, ay: float, bx: float, by: float, cx: float, cy: float) -> int:
    f = Fraction
    d = (f(ax) - f(cx)) * (f(by) - f(cy)) - (f(ay) - f(cy)) * (f(bx) - f(cx))
    return (d > 0) - (d < 0)


@given(coord, coord, coord, coord, st.floats(0, 1), st.integers(-3, 3))
def test_orient2d_sign_is_exact_near_collinear(ax, ay, bx, by, t, ulps):
    # A point on the segment's line up to rounding, nudged by a few ulps: the hard case for a float filter.
    cx = ax + t * (bx - ax)
    cy = np.nextafter(ay + t * (by - ay), np.inf if ulps > 0 else -np.inf) if ulps else ay + t * (by - ay)
    got = orient2d(ax, ay, bx, by, cx, cy, np.empty(WORK_SIZE))
    assert np.sign(got) == exact_orient(ax, ay, bx, by, cx, cy)


@given(coord, coord, coord, coord, coord, coord)
def test_orient2d_sign_is_exact_anywhere(ax, ay, bx, by, cx, cy):
    assert np.sign(orient2d(ax, ay, bx, by, cx, cy, np.empty(WORK_SIZE))) == exact_orient(ax, ay, bx, by, cx, cy)


@given(areas(snap=2.0**-12), st.integers(0, 2**32 - 1))
def test_covers_matches_shapely_including_boundary(area, seed):
    rng = np.random.default_rng(seed)
    a = Area.parse(area)
    x0, y0, x1, y1 = a.bbox
    pts = np.concatenate([
        np.column_stack([rng.uniform(x0 - 0.01, x1 + 0.01, 400), rng.uniform(y0 - 0.01, y1 + 0.01, 400)]),
        boundary_points(area, rng, 2.0**-12),
    ])
    got = covers_points(pts[:, 0].copy(), pts[:, 1].copy(), *a.kernel_args())
    want = shapely.intersects_xy(a.geometry, pts[:, 0], pts[:, 1])
    assert got.tolist() == want.tolist()
    assert got[400:].all()  # every vertex and exact edge midpoint is covered


@given(areas(), st.integers(0, 2**32 - 1))
def test_classify_box_is_conservative(area, seed):
    rng = np.random.default_rng(seed)
    a = Area.parse(area)
    x0, y0, x1, y1 = a.bbox
    for _ in range(30):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        w, h = rng.uniform(0, (x1 - x0) / 4), rng.uniform(0, (y1 - y0) / 4)
        box = shapely.box(cx, cy, cx + w, cy + h)
        cls = classify_box(cx, cy, cx + w, cy + h, *a.kernel_args(), np.empty(WORK_SIZE))
        if cls == BOX_IN:
            assert shapely.covers(a.geometry, box)
        elif cls == BOX_OUT:
            assert not shapely.intersects(a.geometry, box)


SQUARE = [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]


BAD_AREAS = [
    ("{not json", "malformed GeoJSON"),
    ({"type": "Point", "coordinates": [0, 0]}, "unsupported GeoJSON type 'Point'"),
    ({"type": "Polygon", "coordinates": []}, "non-empty array of rings"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0.5]]]}, "is not closed"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, "at least 4"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}, "Self-intersection"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [2, 0], [0, 0]]]}, "invalid area"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [float("nan"), 0], [1, 1], [0, 0]]]}, "NaN"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [1, 1], [0, 0]]]}, "outside lng"),
    ({"type": "Polygon", "coordinates": [[[179, 0], [-179, 0], [-179, 1], [179, 1], [179, 0]]]}, "antimeridian"),
    ({"type": "Polygon", "coordinates": [[["a", 0], [1, 0], [1, 1], [0, 0]]]}, "positions must be"),
    # numbers given as text, or as flags, are not coordinates (NumPy would read "0.5" as 0.5)
    ({"type": "Polygon", "coordinates": [[["0", "0"], ["1", "0"], ["1", "1"], ["0", "0"]]]}, "positions must be"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, "0.5"], [1, 1], [0, 0]]]}, "positions must be"),
    ({"type": "Polygon", "coordinates": [[[0, 0, "x"], [1, 0], [1, 1], [0, 0]]]}, "positions must be"),
    ({"type": "Polygon", "coordinates": [[[False, False], [True, False], [True, True], [False, False]]]},
     "positions must be"),
    # a flag beside numbers: NumPy would read [true, 41.8] as [1.0, 41.8], and each of these rings is valid so read
    ({"type": "Polygon", "coordinates": [[[-87.64, 41.88], [True, 41.88], [-87.62, 41.89], [-87.64, 41.88]]]},
     "Polygon ring 0 position 1: true is a flag"),
    ({"type": "Polygon", "coordinates": [[[-87.64, 41.88], [-87.62, 41.88], [-87.62, False], [-87.64, 41.88]]]},
     "Polygon ring 0 position 2: false is a flag"),
    ({"type": "Polygon", "coordinates": [[[True, 0.5], [2.0, 0.5], [2.0, 1.5], [True, 0.5]]]},
     "Polygon ring 0 position 0: true is a flag"),
    ({"type": "Polygon", "coordinates": [[[True, 0], [2, 0], [2, 1], [True, 0]]]}, "position 0: true is a flag"),
    ({"type": "Polygon", "coordinates": [[[0.5, 0.5], [2.0, 0.5], [2.0, np.True_], [0.5, 0.5]]]},
     "position 2: true is a flag"),
    ({"type": "MultiPolygon", "coordinates": [[[[True, 0.5], [2.0, 0.5], [2.0, 1.5], [True, 0.5]]]]},
     "MultiPolygon polygon 0 ring 0 position 0: true is a flag"),
    ('{"type": "Polygon", "coordinates": [[[-87.64, 41.88], [-87.62, 41.88], [-87.62, 41.89], [-87.64, 41.88]], '
     '[[-87.635, 41.8805], [-87.63, 41.8805], [-87.63, true], [-87.635, 41.8805]]]}',
     "Polygon ring 1 position 2: true is a flag"),
    ([1, 2, 3], "expected a GeoJSON object"),
]


def test_coordinates_of_exactly_zero_and_one_are_numbers_not_flags():
    """Bounds reaching [0, 1] make the fast path look at the positions' types: plain numbers there still parse,
    the same area as shapely's."""
    for ring in (SQUARE, [[float(x), float(y)] for x, y in SQUARE], [[-0.5, 0.0], [1.0, 0.0], [1.0, 1.0],
                                                                    [-0.5, 0.0]]):
        got = Area.parse({"type": "Polygon", "coordinates": [ring]})
        assert got.geometry.equals(shapely.Polygon(ring))


@pytest.mark.parametrize("bad, message", BAD_AREAS)
def test_bad_areas_raise_typed_errors(bad, message):
    with pytest.raises(InvalidArea, match=message):
        Area.parse(bad)
    with pytest.raises(ValueError):  # ours also derive from the built-in
        Area.parse(bad)


@given(st.lists(st.one_of(areas(), st.sampled_from([bad for bad, _ in BAD_AREAS])), min_size=2, max_size=12))
def test_parse_many_is_parse_of_each(many):
    """parse_many gives each area exactly what parse gives it alone, or the same error."""
    for raw, got in zip(many, Area.parse_many(many), strict=True):
        try:
            alone = Area.parse(raw)
        except InvalidArea as exc:
            assert isinstance(got, InvalidArea) and str(got) == str(exc)
            continue
        assert isinstance(got, Area)
        for field in ("xs", "ys", "ring_ptr", "poly_ptr", "poly_bbox"):
            a, b = getattr(got, field), getattr(alone, field)
            assert a.dtype == b.dtype and np.array_equal(a, b), field
        assert got.geometry.wkb == alone.geometry.wkb


def test_vertex_cap():
    ring = [[np.cos(t), np.sin(t)] for t in np.linspace(0, 2 * np.pi, 200, endpoint=False)]
    ring.append(ring[0])
    with pytest.raises(InvalidArea, match="201 vertices, more than the 100 allowed"):
        Area.parse({"type": "Polygon", "coordinates": [ring]}, max_vertices=100)


@given(areas())
def test_to_geojson_is_what_geos_writes(area):
    """The stored form of an area, written from its arrays, against GEOS's GeoJSON writer of its geometry."""
    import orjson

    got = Area.parse(area)
    assert got.to_geojson() == orjson.loads(shapely.to_geojson(got.geometry))
    assert Area.parse(got.to_geojson()).geometry.equals_exact(got.geometry, 0)


def test_an_area_is_made_only_by_parse():
    """The index resolves an Area's arrays unchecked, so arrays that skipped the checks (float32 here, which the
    compiled resolve would read as float64) cannot become an Area, nor a copy of one with a field replaced."""
    import dataclasses

    ring = np.array([[0.0, 0.0], [0.01, 0.0], [0.01, 0.01], [0.0, 0.0]])
    with pytest.raises(InvalidArea, match="made by Area.parse"):
        Area(ring[:, 0].astype(np.float32), ring[:, 1].astype(np.float32), np.array([0, 4]), np.array([0, 1]),
             np.array([[0.0, 0.0, 0.01, 0.01]]))
    good = Area.parse({"type": "Polygon", "coordinates": [ring.tolist()]})
    with pytest.raises(InvalidArea, match="made by Area.parse"):
        dataclasses.replace(good, xs=good.xs.astype(np.float32))
    assert good.xs.dtype == good.ys.dtype == np.float64 and good.n_vertices == 4


def test_multipolygon_split_at_antimeridian_is_accepted():
    west = [[179.5, 51], [180, 51], [180, 52], [179.5, 52], [179.5, 51]]
    east = [[-180, 51], [-179.5, 51], [-179.5, 52], [-180, 52], [-180, 51]]
    a = Area.parse({"type": "MultiPolygon", "coordinates": [[west], [east]]})
    got = covers_points(np.array([179.9, -179.9, 0.0]), np.array([51.5, 51.5, 51.5]), *a.kernel_args())
    assert got.tolist() == [True, True, False]


def test_geojson_text_feature_and_shapely_inputs_agree():
    poly = {"type": "Polygon", "coordinates": [SQUARE]}
    import orjson
    forms = [poly, orjson.dumps(poly).decode(), {"type": "Feature", "geometry": poly, "properties": {}},
             shapely.Polygon(SQUARE)]
    parsed = [Area.parse(f) for f in forms]
    for p in parsed[1:]:
        assert np.array_equal(p.xs, parsed[0].xs) and np.array_equal(p.ys, parsed[0].ys)


def test_geodesy_is_one_ellipsoid_for_policy_and_agencies():
    """A geodesic circle's area, measured as the policy measures areas, is the circle's area on the ellipsoid
    (to the polygon's chord error), and the policy measures with these very functions."""
    assert policy.GEOD is geodesy.GEOD and policy.SQ_M_PER_SQ_MI == geodesy.SQ_M_PER_SQ_MI
    for lng, lat, r in ((-87.63, 41.88, 20_000.0), (-149.9, 61.2, 3_000.0), (-157.86, 21.31, 40_000.0)):
        circle = geodesy.geodesic_circle(lng, lat, r, 256)
        assert circle.is_valid and circle.exterior.is_ccw
        got = geodesy.geodesic_area_sq_mi(Area.parse(circle))
        # a regular 256-gon inscribed in the circle covers sin(2 pi / n) n / (2 pi) of it
        want = math.pi * r * r * math.sin(2 * math.pi / 256) * 256 / (2 * math.pi) / geodesy.SQ_M_PER_SQ_MI
        assert got == pytest.approx(want, rel=1e-3)
    holed = shapely.Polygon(geodesy.geodesic_circle(0.0, 0.0, 2_000.0).exterior,
                            [geodesy.geodesic_circle(0.0, 0.0, 1_000.0).exterior.coords[::-1]])
    ring = geodesy.geodesic_area_sq_mi(Area.parse(holed))
    outer = geodesy.geodesic_area_sq_mi(Area.parse(geodesy.geodesic_circle(0.0, 0.0, 2_000.0)))
    assert ring == pytest.approx(outer * 0.75, rel=1e-6)

"""The Numba H3 kernels against independent implementations: h3-py (the C reference) and h3ronpy (Rust h3o).

Every comparison is on exact integers or exact float bits: the kernels claim bit-exactness, not closeness.
"""

from __future__ import annotations

import math
import os

import h3.api.basic_int as h3
import h3ronpy.vector as hv
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.errors import DispatchError, InvalidCell, InvalidCoordinates, InvalidResolution
from dispatcher.geo import h3 as gh3
from kernels import h3core
from tests.workers import run_workers

RES = list(range(16))


def sphere_points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform on the sphere (uniform z), longitudes over the whole range."""
    rng = np.random.default_rng(seed)
    return np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)


def h3py_cells(lat: np.ndarray, lng: np.ndarray, res: int) -> list[int]:
    return [h3.latlng_to_cell(a, b, res) for a, b in zip(lat.tolist(), lng.tolist())]


def assert_cells_equal_h3py(lat: np.ndarray, lng: np.ndarray, res: int) -> None:
    got = gh3.latlng_to_cell(lat, lng, res).tolist()
    want = h3py_cells(lat, lng, res)
    bad = [k for k in range(len(want)) if got[k] != want[k]]
    assert not bad, (f"{len(bad)} of {len(want)} differ at res {res}, first lat {lat[bad[0]]!r} "
                     f"lng {lng[bad[0]]!r}: {got[bad[0]]:#x} != {want[bad[0]]:#x}")


# ------------------------------------------------------------------------------------ latlng_to_cell


@pytest.fixture(scope="module")
def million() -> tuple[np.ndarray, np.ndarray]:
    return sphere_points(1_000_000, 1)


@pytest.mark.parametrize("res", RES)
def test_million_points_equal_h3ronpy_and_h3py(million, res):
    lat, lng = million
    got = gh3.latlng_to_cell(lat, lng, res)
    want = np.asarray(pa.array(hv.coordinates_to_cells(lat, lng, res)).to_numpy(zero_copy_only=False), np.uint64)
    diff = np.flatnonzero(got != want)
    assert diff.size == 0, f"{diff.size} differ from h3ronpy, first at lat {lat[diff[0]]!r} lng {lng[diff[0]]!r}"
    sub = slice(res * 20_000, res * 20_000 + 20_000)  # and a different slice against the C reference
    assert_cells_equal_h3py(lat[sub], lng[sub], res)


def _around(lat0: float, lng0: float, radius_deg: float, n: int, rng: np.random.Generator):
    """Points around a centre at distances spread over many orders of magnitude, up to ``radius_deg``."""
    d = radius_deg * 10.0 ** rng.uniform(-12, 0, n)
    a = rng.uniform(0, 2 * np.pi, n)
    lat = np.clip(lat0 + d * np.cos(a), -90, 90)
    lng = (lng0 + d * np.sin(a) / max(math.cos(math.radians(lat0)), 1e-6) + 180.0) % 360.0 - 180.0
    return np.append(lat, lat0), np.append(lng, lng0)


@pytest.mark.parametrize("res", RES)
def test_pentagons_and_their_neighbourhoods(res):
    rng = np.random.default_rng(100 + res)
    edge_deg = math.degrees(h3.average_hexagon_edge_length(res, "km") / 6371.0)
    pts = [_around(*h3.cell_to_latlng(p), 4 * edge_deg, 300, rng) for p in h3.get_pentagons(res)]
    lat, lng = np.concatenate([p[0] for p in pts]), np.concatenate([p[1] for p in pts])
    assert_cells_equal_h3py(lat, lng, res)
    assert set(h3.get_pentagons(res)) <= set(gh3.latlng_to_cell(lat, lng, res).tolist())


@pytest.mark.parametrize("res", RES)
def test_poles_and_antimeridian(res):
    rng = np.random.default_rng(200 + res)
    tiny = 10.0 ** rng.uniform(-14, -1, 400)
    pole_lat = np.concatenate([np.full(200, 90.0), np.full(200, -90.0), 90 - tiny[:200], -90 + tiny[200:]])
    pole_lng = rng.uniform(-180, 180, 800)
    am_lat = rng.uniform(-90, 90, 800)
    am_lng = np.concatenate([np.full(200, 180.0), np.full(200, -180.0), 180 - tiny[:200], -180 + tiny[200:]])
    special = np.array([(90.0, 0.0), (-90.0, 0.0), (0.0, 180.0), (0.0, -180.0), (90.0, 180.0), (-90.0, -180.0),
                        (0.0, 0.0), (-0.0, -0.0), (np.nextafter(90, 0), 0.0), (0.0, np.nextafter(180, 0))])
    lat = np.concatenate([pole_lat, am_lat, special[:, 0]])
    lng = np.concatenate([pole_lng, am_lng, special[:, 1]])
    assert_cells_equal_h3py(lat, lng, res)


def _icosahedron_edges() -> list[tuple[np.ndarray, np.ndarray]]:
    """The 30 edges of H3's icosahedron as pairs of unit vectors: its 12 vertices are the pentagon centres."""
    ll = np.radians([h3.cell_to_latlng(p) for p in h3.get_pentagons(0)])
    v = np.stack([np.cos(ll[:, 0]) * np.cos(ll[:, 1]), np.cos(ll[:, 0]) * np.sin(ll[:, 1]), np.sin(ll[:, 0])], 1)
    ang = np.arccos(np.clip(v @ v.T, -1, 1))
    nearest = np.sort(ang[ang > 0.1])[0]
    pairs = [(v[a], v[b]) for a in range(12) for b in range(a + 1, 12) if abs(ang[a, b] - nearest) < 1e-3]
    assert len(pairs) == 30
    return pairs


@pytest.mark.parametrize("res", RES)
def test_icosahedron_face_edges(res):
    """Points on and within hair's breadths of the edges between faces, where the face choice flips."""
    rng = np.random.default_rng(300 + res)
    out = []
    for a, b in _icosahedron_edges():
        t = rng.uniform(0, 1, 60)
        p = a[None, :] * (1 - t[:, None]) + b[None, :] * t[:, None]
        normal = np.cross(a, b)
        off = (rng.choice([-1, 1], 60) * 10.0 ** rng.uniform(-16, -6, 60))[:, None] * normal[None, :]
        out.append(np.concatenate([p, p + off]))
    p = np.concatenate(out)
    p /= np.linalg.norm(p, axis=1)[:, None]
    lat, lng = np.degrees(np.arcsin(np.clip(p[:, 2], -1, 1))), np.degrees(np.arctan2(p[:, 1], p[:, 0]))
    assert_cells_equal_h3py(lat, lng, res)


@pytest.mark.parametrize("res", RES)
def test_points_exactly_on_cell_vertices(res):
    """Cell vertices (as h3-py gives them) sit on three cells' boundaries: the hardest rounding cases."""
    lat, lng = sphere_points(150, 400 + res)
    cells = h3py_cells(lat, lng, res) + list(h3.get_pentagons(res))
    verts = np.array([v for c in cells for v in h3.cell_to_boundary(c)])
    for r in {res, max(res - 1, 0), min(res + 1, 15)}:
        assert_cells_equal_h3py(verts[:, 0], verts[:, 1], r)


@pytest.mark.parametrize("res", RES)
def test_points_hairs_breadths_from_cell_edges(res):
    """Points on cell edges and 1e-16..1e-7 radians either side of them: where a fast approximation of the
    projection would pick the neighbouring cell unless its error bound is right."""
    rng = np.random.default_rng(500 + res)
    lat, lng = sphere_points(120, 500 + res)
    cells = h3py_cells(lat, lng, res) + list(h3.get_pentagons(res))
    pts = []
    for c in cells:
        b = np.radians(np.array(h3.cell_to_boundary(c)))
        v = np.stack([np.cos(b[:, 0]) * np.cos(b[:, 1]), np.cos(b[:, 0]) * np.sin(b[:, 1]), np.sin(b[:, 0])], 1)
        a, w = v, np.roll(v, -1, axis=0)
        t = rng.uniform(0, 1, (len(v), 1))
        m = a * (1 - t) + w * t
        m /= np.linalg.norm(m, axis=1)[:, None]
        normal = np.cross(a, w)
        normal /= np.linalg.norm(normal, axis=1)[:, None]
        for off in (0.0, *(s * 10.0**e for e in range(-16, -6) for s in (-1, 1))):
            pts.append(m + off * normal)
    p = np.concatenate(pts)
    p /= np.linalg.norm(p, axis=1)[:, None]
    lat, lng = np.degrees(np.arcsin(np.clip(p[:, 2], -1, 1))), np.degrees(np.arctan2(p[:, 1], p[:, 0]))
    assert_cells_equal_h3py(lat, lng, res)


@given(lat=st.floats(-90, 90), lng=st.floats(-180, 180), res=st.integers(0, 15))
def test_any_point_equals_h3py(lat, lng, res):
    assert int(gh3.latlng_to_cell(np.array([lat]), np.array([lng]), res)[0]) == h3.latlng_to_cell(lat, lng, res)


# ------------------------------------------------------------------------------ the other functions


@pytest.fixture(scope="module")
def cells_by_res() -> dict[int, np.ndarray]:
    lat, lng = sphere_points(3000, 5)
    return {r: np.unique(np.concatenate([gh3.latlng_to_cell(lat, lng, r),
                                         np.array(h3.get_pentagons(r), np.uint64)])) for r in RES}


@pytest.mark.parametrize("res", RES)
def test_inspection_and_parents_equal_h3py(cells_by_res, res):
    cells = cells_by_res[res]
    ints = cells.tolist()
    assert gh3.get_resolution(cells).tolist() == [h3.get_resolution(c) for c in ints]
    assert gh3.get_base_cell_number(cells).tolist() == [h3.get_base_cell_number(c) for c in ints]
    assert gh3.is_pentagon(cells).tolist() == [h3.is_pentagon(c) for c in ints]
    for p in range(res + 1):
        assert gh3.cell_to_parent(cells, p).tolist() == [h3.cell_to_parent(c, p) for c in ints]


@pytest.mark.parametrize("res", range(14))
def test_children_ranges_bracket_exactly_the_children(cells_by_res, res):
    cells = cells_by_res[res][:300]
    for d in (1, 2):
        lo, hi = gh3.cell_to_children_range(cells, res + d)
        for c, a, b in zip(cells.tolist(), lo.tolist(), hi.tolist()):
            kids = h3.cell_to_children(c, res + d)
            assert (a, b) == (min(kids), max(kids))
    # Far below, through cell_to_parent: the range holds exactly the cells whose ancestor is ours.
    lo, hi = gh3.cell_to_children_range(cells, 15)
    assert gh3.cell_to_parent(lo, res).tolist() == cells.tolist()
    assert gh3.cell_to_parent(hi, res).tolist() == cells.tolist()


@pytest.mark.parametrize("res", RES)
def test_centres_and_boundaries_bit_exact(cells_by_res, res):
    cells = cells_by_res[res]
    lat, lng = gh3.cell_to_latlng(cells)
    verts, counts = gh3.cell_to_boundary(cells)
    for n, c in enumerate(cells.tolist()):
        assert (lat[n], lng[n]) == h3.cell_to_latlng(c)
        want = h3.cell_to_boundary(c)
        assert counts[n] == len(want)
        assert [tuple(v) for v in verts[n, :counts[n]].tolist()] == [tuple(v) for v in want]
        assert np.isnan(verts[n, counts[n]:]).all()


@pytest.mark.parametrize("res", RES)
def test_grid_disks_equal_h3py(cells_by_res, res):
    pents = h3.get_pentagons(res)
    around = {n for p in pents for n in h3.grid_disk(p, 2)}  # pentagons and the cells that touch them
    cells = cells_by_res[res][:200].tolist() + sorted(around)
    for c in cells:
        for k in (0, 1, 2, 4):
            assert set(gh3.grid_disk(c, k).tolist()) == set(h3.grid_disk(c, k)), (hex(c), k)


def test_validity_equals_h3py_on_garbage_and_damaged_cells(cells_by_res):
    rng = np.random.default_rng(9)
    good = np.concatenate(list(cells_by_res.values()))
    damaged = good[rng.integers(0, good.size, 20_000)] ^ (np.uint64(1) << rng.integers(0, 64, 20_000).astype(np.uint64))
    garbage = rng.integers(0, 2**63, 5_000, dtype=np.int64).astype(np.uint64)
    vals = np.concatenate([good, damaged, garbage, np.array([0, 2**64 - 1], np.uint64)])
    got = gh3.is_valid_cell(vals).tolist()
    assert got == [h3.is_valid_cell(int(v)) for v in vals.tolist()]
    assert sum(got) > good.size  # some damaged ones are other valid cells: the check is not just "unchanged"


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("lat, lng", [(float("nan"), 0.0), (0.0, float("inf")), (91.0, 0.0), (0.0, -180.5)])
def test_bad_coordinates_raise_before_any_work(lat, lng):
    with pytest.raises(InvalidCoordinates, match="position 1"):
        gh3.latlng_to_cell(np.array([0.0, lat]), np.array([0.0, lng]), 9)


def test_mismatched_coordinate_arrays_raise():
    with pytest.raises(InvalidCoordinates, match="one length"):
        gh3.latlng_to_cell(np.zeros(2), np.zeros(3), 9)


@pytest.mark.parametrize("res", [-1, 16, 2.5, True, "3"])
def test_bad_resolution_raises(res):
    with pytest.raises(InvalidResolution):
        gh3.latlng_to_cell(np.zeros(1), np.zeros(1), res)


def test_invalid_cells_and_impossible_resolutions_raise():
    cell = int(gh3.latlng_to_cell(np.zeros(1), np.zeros(1), 9)[0])
    with pytest.raises(InvalidCell, match="position 1"):
        gh3.cell_to_parent(np.array([cell, cell ^ 1 << 44], np.uint64), 5)
    with pytest.raises(InvalidCell, match="negative"):
        gh3.cell_to_latlng(np.array([-5]))
    with pytest.raises(InvalidCell, match="dtype"):
        gh3.cell_to_latlng(np.array([1.5]))
    with pytest.raises(InvalidResolution, match="finer"):
        gh3.cell_to_parent(np.array([cell], np.uint64), 10)
    with pytest.raises(InvalidResolution, match="coarser"):
        gh3.cell_to_children_range(np.array([cell], np.uint64), 8)
    with pytest.raises(ValueError, match="distance"):
        gh3.grid_disk(cell, -1)


@pytest.mark.parametrize("k", [-1, 1001, 2.0, True])
def test_bad_grid_distance_raises_typed_error(k):
    cell = int(gh3.latlng_to_cell(np.zeros(1), np.zeros(1), 9)[0])
    with pytest.raises(InvalidResolution, match=f"distance .* got {k!r}$"):
        gh3.grid_disk(cell, k)


def test_h3_errors_are_ours_and_value_errors():
    for cls in (InvalidResolution, InvalidCell):
        assert issubclass(cls, DispatchError) and issubclass(cls, ValueError)
    assert gh3.InvalidResolution is InvalidResolution and gh3.InvalidCell is InvalidCell


# ------------------------------------------------------------------------ array forms of the kernels


def test_array_functions_equal_their_kernel_element_by_element(cells_by_res):
    """Every array function is its per-element kernel run over the arrays, results in the same places."""
    cells = np.concatenate([cells_by_res[r][:40] for r in RES])
    lat, lng = sphere_points(200, 6)
    lat[:3], lng[:3] = (np.nan, 91.0, 0.0), (0.0, 0.0, -180.5)
    assert h3core.latlng_to_cell_array(lat[3:], lng[3:], 9).tolist() == [
        h3core.latlng_to_cell(a, b, 9) for a, b in zip(lat[3:], lng[3:])]
    assert h3core.invalid_latlng_array(lat, lng).tolist() == [h3core.invalid_latlng(a, b) for a, b in zip(lat, lng)]
    for name in ("is_valid_cell", "get_resolution", "get_base_cell_number", "is_pentagon"):
        assert getattr(h3core, f"{name}_array")(cells).tolist() == [getattr(h3core, name)(c) for c in cells], name
    lat_c, lng_c = h3core.cell_to_latlng_array(cells)
    assert list(zip(lat_c.tolist(), lng_c.tolist())) == [h3core.cell_to_latlng(c) for c in cells]
    assert h3core.cell_to_parent_array(cells, 0).tolist() == [h3core.cell_to_parent(c, 0) for c in cells]
    lo, hi = h3core.cell_to_children_range_array(cells, 15)
    assert list(zip(lo.tolist(), hi.tolist())) == [h3core.cell_to_children_range(c, 15) for c in cells]
    verts, counts = h3core.cell_to_boundary_array(cells)
    for n, c in enumerate(cells):
        row = np.full((h3core.MAX_BOUNDARY_VERTS, 2), np.nan)
        assert h3core.cell_to_boundary(c, row) == counts[n]
        assert np.array_equal(row, verts[n], equal_nan=True)


# --------------------------------------------------------------------------- compile and disk cache


def test_numba_disk_cache_shared_by_concurrent_workers(tmp_path):
    """Workers starting together on an empty cache compile the H3 kernels and agree with h3-py; a later worker
    loads them from the cache instead of compiling."""
    code = (
        "import json, numpy as np, time; t = time.perf_counter();"
        "from kernels import h3core as K; from dispatcher.geo import h3 as g; w = g.warm_up();"
        "lat = np.linspace(-89, 89, 1001); lng = np.linspace(-179, 179, 1001);"
        "c = g.latlng_to_cell(lat, lng, 11); st = K.latlng_to_cell_array.stats;"
        "print(json.dumps({'cells': c.tolist(), 'warm_up': w, 'hits': sum(st.cache_hits.values()),"
        "'misses': sum(st.cache_misses.values())}))"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}

    want = h3py_cells(np.linspace(-89, 89, 1001), np.linspace(-179, 179, 1001), 11)
    cold = run_workers(code, 2, env=env)
    assert all(o["cells"] == want for o in cold)
    assert any(o["misses"] >= 1 for o in cold)
    warm = run_workers(code, 1, env=env)[0]
    assert warm["cells"] == want
    assert warm["hits"] >= 1 and warm["misses"] == 0


def call_every_array_function() -> dict[str, list[int]]:
    """Call every array function of the kernels once; return each one's cache hits and misses so far."""
    z = np.zeros(3)
    c = h3core.latlng_to_cell_array(z, z, 9)
    h3core.invalid_latlng_array(z, z)
    for name in ("is_valid_cell", "get_resolution", "get_base_cell_number", "is_pentagon", "cell_to_latlng",
                 "cell_to_boundary"):
        getattr(h3core, f"{name}_array")(c)
    h3core.cell_to_parent_array(c, 5)
    h3core.cell_to_children_range_array(c, 12)
    drivers = [getattr(h3core, n) for n in h3core.__all__ if n.endswith("_array")]
    return {f.__name__: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())] for f in drivers}


def test_every_array_function_loads_from_the_disk_cache():
    """The array functions close over their kernels; a fresh process still finds every one in Numba's cache (here
    the session's own, which this process has just filled or read)."""
    names = call_every_array_function()
    assert len(names) == 10
    code = "import json; from tests.test_h3 import call_every_array_function as f; print(json.dumps(f()))"
    assert run_workers(code, 1)[0] == {name: [1, 0] for name in names}

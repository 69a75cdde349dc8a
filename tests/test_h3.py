from __future__ import annotations

import h3
import numpy as np
import pytest

from dispatcher.errors import InvalidCoordinates
from dispatcher.h3 import InvalidResolution, cell_to_parent, latlng_to_cell


@pytest.mark.parametrize("res", [0, 5, 10, 15])
def test_cells_equal_h3py_over_the_sphere(res):
    rng = np.random.default_rng(res)
    n = 600_000  # enough to take the threaded path
    z = rng.uniform(-1, 1, n)
    lat = np.degrees(np.arcsin(z))
    lng = rng.uniform(-180, 180, n)
    cells = latlng_to_cell(lat, lng, res)
    for i in rng.integers(0, n, 3000).tolist():
        assert int(cells[i]) == h3.str_to_int(h3.latlng_to_cell(lat[i], lng[i], res))


def test_poles_antimeridian_and_pentagons():
    pent = [h3.cell_to_latlng(p) for p in h3.get_pentagons(8)]
    pts = np.array([(90.0, 0.0), (-90.0, 0.0), (0.0, 180.0), (0.0, -180.0), (51.5, 179.9999999), *pent])
    cells = latlng_to_cell(pts[:, 0], pts[:, 1], 9)
    assert [int(c) for c in cells] == [h3.str_to_int(h3.latlng_to_cell(a, b, 9)) for a, b in pts]


def test_parents_equal_h3py():
    rng = np.random.default_rng(7)
    cells = latlng_to_cell(rng.uniform(-80, 80, 2000), rng.uniform(-180, 180, 2000), 12)
    for res in (0, 3, 7, 11, 12):
        got = cell_to_parent(cells, res)
        assert [int(g) for g in got] == [h3.str_to_int(h3.cell_to_parent(h3.int_to_str(int(c)), res)) for c in cells]


@pytest.mark.parametrize("lat, lng", [(float("nan"), 0.0), (0.0, float("inf")), (91.0, 0.0), (0.0, -180.5)])
def test_bad_coordinates_raise_before_any_work(lat, lng):
    with pytest.raises(InvalidCoordinates, match="position 1"):
        latlng_to_cell(np.array([0.0, lat]), np.array([0.0, lng]), 9)


@pytest.mark.parametrize("res", [-1, 16, 2.5, True])
def test_bad_resolution_raises(res):
    with pytest.raises(InvalidResolution):
        latlng_to_cell(np.zeros(1), np.zeros(1), res)

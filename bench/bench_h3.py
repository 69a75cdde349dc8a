"""pytest-benchmark: H3 point to cell, ours against h3ronpy's vectorised call and h3-py's per-point loop, on the
same points, identical cells asserted first. Off by default; run with

    python -m pytest bench/bench_h3.py --benchmark-only -p no:cacheprovider

``GEODISPATCH_BENCH_POINTS`` sets the number of points (default 1,000,000; h3-py's loop takes a tenth of them,
so compare its per-point time, not its total).
"""

from __future__ import annotations

import os

import h3.api.basic_int as h3
import h3ronpy.vector as hv
import numpy as np
import pyarrow as pa
import pytest

from bench.h3_report import us_points
from dispatcher.geo import h3 as gh3

POINTS = int(os.environ.get("GEODISPATCH_BENCH_POINTS", "1000000"))
RES = 12


@pytest.fixture(scope="module")
def points():
    lat, lng = us_points(POINTS, seed=2)
    gh3.warm_up()
    ours = gh3.latlng_to_cell(lat, lng, RES)
    theirs = np.asarray(pa.array(hv.coordinates_to_cells(lat, lng, RES)).to_numpy(zero_copy_only=False), np.uint64)
    assert np.array_equal(ours, theirs)
    m = POINTS // 10
    assert [h3.latlng_to_cell(a, b, RES) for a, b in zip(lat[:m].tolist(), lng[:m].tolist())] == ours[:m].tolist()
    return lat, lng


def test_latlng_to_cell_geodispatch(benchmark, points):
    lat, lng = points
    benchmark(gh3.latlng_to_cell, lat, lng, RES)


def test_latlng_to_cell_h3ronpy(benchmark, points):
    lat, lng = points
    benchmark(hv.coordinates_to_cells, lat, lng, RES)


def test_latlng_to_cell_h3py_loop_tenth(benchmark, points):
    lat, lng = points
    m = POINTS // 10
    la, lo = lat[:m].tolist(), lng[:m].tolist()
    benchmark.pedantic(lambda: [h3.latlng_to_cell(a, b, RES) for a, b in zip(la, lo)], rounds=3)

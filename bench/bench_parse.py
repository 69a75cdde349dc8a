"""pytest-benchmark: a request's area before the index sees it, ours beside the old path on the same typical
request areas (identical verdicts, areas within 1e-9 and containment asserted first, bench.parse_report). Off by
default; run with

    python -m pytest bench/bench_parse.py --benchmark-only -p no:cacheprovider

``GEODISPATCH_BENCH_REQUESTS`` sets the number of areas (default 1,000).
"""

from __future__ import annotations

import os

import pytest
import shapely
import shapely.geometry

from bench.parse_report import check_same, old_validation, our_validation, typical_inputs
from dispatcher.geo.area import Area

REQUESTS = int(os.environ.get("GEODISPATCH_BENCH_REQUESTS", "1000"))


@pytest.fixture(scope="module")
def inputs():
    areas, jurisdictions = typical_inputs(REQUESTS, seed=0)
    check_same(areas, jurisdictions)
    return areas, jurisdictions


def test_parse_geodispatch(benchmark, inputs):
    areas, _ = inputs
    benchmark(lambda: [Area.parse(a) for a in areas])


def test_parse_shapely_is_valid(benchmark, inputs):
    areas, _ = inputs
    benchmark(lambda: [shapely.is_valid(shapely.geometry.shape(a)) for a in areas])


def test_validation_geodispatch(benchmark, inputs):
    pairs = list(zip(*inputs, strict=True))
    benchmark(lambda: [our_validation(a, j) for a, j in pairs])


def test_validation_old_path(benchmark, inputs):
    pairs = list(zip(*inputs, strict=True))
    benchmark(lambda: [old_validation(a, j) for a, j in pairs])

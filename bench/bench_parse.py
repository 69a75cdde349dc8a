"""pytest-benchmark: a request's area before the index sees it, ours beside the old path on the same typical
request areas (identical verdicts, areas within 1e-9 and containment asserted first, bench.parse_report), and the
policy's shape rules with widths compiled beside shapely's (the same verdicts asserted first). Off by default; run
with

    python -m pytest bench/bench_parse.py --benchmark-only -p no:cacheprovider

``GEODISPATCH_BENCH_REQUESTS`` sets the number of areas (default 1,000).
"""

from __future__ import annotations

import os

import pytest
import shapely
import shapely.geometry

from bench.parse_report import check_same, check_same_widths, old_validation, our_validation, typical_inputs
from dispatcher.geo.area import Area
from dispatcher.workflow.policy import Policy, prepare_areas

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


@pytest.fixture(scope="module")
def parsed_areas(inputs):
    parsed = [Area.parse(a) for a in inputs[0]]
    assert check_same_widths(parsed, Policy()) >= 0.95  # the same verdicts either way, nearly all certified
    return parsed


def test_shape_rules_geodispatch(benchmark, parsed_areas):
    p = Policy()
    benchmark(lambda: [prepare_areas(parsed_areas[k:k + 16], p) for k in range(0, len(parsed_areas), 16)])


def test_shape_rules_shapely(benchmark, parsed_areas):
    p = Policy()
    benchmark(lambda: [prepare_areas(parsed_areas[k:k + 16], p, compiled=False)
                       for k in range(0, len(parsed_areas), 16)])

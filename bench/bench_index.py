"""pytest-benchmark micro-benchmarks of resolve against the latitude-sorted peer, same data, same polygons,
identical results asserted first. Off by default; run with

    python -m pytest bench/bench_index.py --benchmark-only -p no:cacheprovider

``GEODISPATCH_BENCH_CAMERAS`` sets the data size (default 1,000,000). The ratio to read is the peer's mean
over ours, both measured in the same run. The ``from GeoJSON`` groups take the request's area as the GeoJSON dict a
backend receives: ours parses and validates it and resolves, the peer converts it with shapely and resolves; the
``parse`` group is that parse alone, ours beside shapely's construction and validity check.
"""

from __future__ import annotations

import itertools
import os

import pytest
import shapely
import shapely.geometry

from bench.reference import LatSortedResolver, Rings
from bench.report import GEOJSON_SIZES, SIZES, make_workload
from dispatcher.geo.area import Area
from dispatcher.index.camera_index import CameraIndex
from dispatcher.synthetic.data import REFERENCE_NOW, generate

CAMERAS = int(os.environ.get("GEODISPATCH_BENCH_CAMERAS", "1000000"))


@pytest.fixture(scope="module")
def data():
    return generate(CAMERAS, seed=1, now=REFERENCE_NOW)  # the same data on any day


@pytest.fixture(scope="module")
def setup(data):
    index = CameraIndex.build(data.cameras, data.owners)
    peer = LatSortedResolver(data.cameras, data.owners)
    work = make_workload(data, 200, {k: SIZES[k] for k in ("0.025 sq mi", "0.5 sq mi", "100 km²")}, seed=1)
    return index, peer, work


@pytest.fixture(scope="module")
def given(data, setup):
    """Requests at the policy's sizes as GeoJSON dicts, both engines' answers asserted equal on them first."""
    index, peer, _ = setup
    raw = make_workload(data, 200, GEOJSON_SIZES, seed=2)
    for label, dicts in raw.geojson.items():
        for d, (start, end) in zip(dicts[:20], raw.windows):
            owners, cams, _ = peer.resolve(d, start, end, raw.now)
            ours = index.resolve(d, start, end, now=raw.now)
            assert ours.owner_ids.tolist() == owners.tolist() and ours.camera_ids.tolist() == cams.tolist(), label
    return raw


def _cycle(work, label):
    return itertools.cycle(list(zip(work.areas[label], work.windows)))


@pytest.mark.parametrize("label", ["0.025 sq mi", "0.5 sq mi", "100 km²"])
def test_resolve_geodispatch(benchmark, setup, label):
    index, peer, work = setup
    for area, (start, end) in zip(work.areas[label][:20], work.windows):
        owners, cams, off = peer.resolve(area, start, end, work.now)
        ours = index.resolve(area, start, end, now=work.now)
        assert ours.owner_ids.tolist() == owners.tolist() and ours.camera_ids.tolist() == cams.tolist()
    requests = _cycle(work, label)

    def one():
        area, (start, end) = next(requests)
        return index.resolve(area, start, end, now=work.now)

    benchmark.group = f"resolve {label}, {CAMERAS:,} cameras"
    benchmark(one)


@pytest.mark.parametrize("label", ["0.025 sq mi", "0.5 sq mi", "100 km²"])
def test_resolve_latsorted_peer(benchmark, setup, label):
    _, peer, work = setup
    requests = itertools.cycle([(Rings.of(a), w) for a, w in zip(work.areas[label], work.windows)])

    def one():
        area, (start, end) = next(requests)
        return peer.resolve(area, start, end, work.now)

    benchmark.group = f"resolve {label}, {CAMERAS:,} cameras"
    benchmark(one)


@pytest.mark.parametrize("engine", ["geodispatch", "latsorted peer"])
@pytest.mark.parametrize("label", list(GEOJSON_SIZES))
def test_resolve_from_geojson(benchmark, setup, given, label, engine):
    index, peer = setup[0], setup[1]
    resolve = ((lambda d, s, e: index.resolve(d, s, e, now=given.now)) if engine == "geodispatch"
               else (lambda d, s, e: peer.resolve(d, s, e, given.now)))
    requests = itertools.cycle(list(zip(given.geojson[label], given.windows)))

    def one():
        d, (start, end) = next(requests)
        return resolve(d, start, end)

    benchmark.group = f"resolve from GeoJSON {label}, {CAMERAS:,} cameras"
    benchmark(one)


def test_parse_geodispatch(benchmark, given):
    dicts = itertools.cycle([d for ds in given.geojson.values() for d in ds])
    benchmark.group = "parse and validate a request polygon"
    benchmark(lambda: Area.parse(next(dicts)))


def test_parse_shapely_peer(benchmark, given):
    dicts = itertools.cycle([d for ds in given.geojson.values() for d in ds])

    def one():
        g = shapely.geometry.shape(next(dicts))
        return shapely.is_valid(g) and shapely.area(g) > 0

    benchmark.group = "parse and validate a request polygon"
    benchmark(one)

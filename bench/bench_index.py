"""pytest-benchmark micro-benchmarks of resolve against the latitude-sorted peer, same data, same polygons,
identical results asserted first. Off by default; run with

    python -m pytest bench/bench_index.py --benchmark-only -p no:cacheprovider

``GEODISPATCH_BENCH_CAMERAS`` sets the data size (default 1,000,000). The ratio to read is the peer's mean
over ours, both measured in the same run.
"""

from __future__ import annotations

import itertools
import os

import pytest

from bench.reference import LatSortedResolver, Rings
from bench.report import SIZES, make_workload
from dispatcher.index.camera_index import CameraIndex
from dispatcher.synthetic.data import generate

CAMERAS = int(os.environ.get("GEODISPATCH_BENCH_CAMERAS", "1000000"))


@pytest.fixture(scope="module")
def setup():
    data = generate(CAMERAS, seed=1)
    index = CameraIndex.build(data.cameras, data.owners)
    peer = LatSortedResolver(data.cameras, data.owners)
    work = make_workload(data, 200, {k: SIZES[k] for k in ("0.025 sq mi", "0.5 sq mi", "100 km²")}, seed=1)
    return index, peer, work


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

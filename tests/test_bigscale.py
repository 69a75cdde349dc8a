"""National-scale checks, deselected by default; run with ``python3 -m pytest -m bigscale`` (about 2 minutes
and 8 GB at 10M cameras)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench.reference import LatSortedResolver
from bench.report import SIZES, make_workload
from dispatcher.index.camera_index import CameraIndex
from dispatcher.synthetic.data import REFERENCE_NOW, generate

CAMERAS = int(os.environ.get("GEODISPATCH_BIGSCALE_CAMERAS", "10000000"))


@pytest.mark.bigscale
def test_national_index_equals_the_lat_sorted_peer_and_survives_save_open(tmp_path):
    data = generate(CAMERAS, seed=11, now=REFERENCE_NOW)
    index = CameraIndex.build(data.cameras, data.owners, data.events)
    assert index.bytes_per_camera() <= 40.5
    peer = LatSortedResolver(data.cameras, data.owners, data.events)
    work = make_workload(data, 40, SIZES, seed=11)
    opened = CameraIndex.open(index.save(tmp_path / "idx"))
    for areas in work.areas.values():
        for area, (start, end) in zip(areas, work.windows):
            owners, cams, offsets = peer.resolve(area, start, end, work.now)
            for idx in (index, opened):
                rs = idx.resolve(area, start, end, now=work.now)
                assert np.array_equal(rs.owner_ids, owners) and np.array_equal(rs.camera_ids, cams)
                assert np.array_equal(rs.owner_offsets, offsets)

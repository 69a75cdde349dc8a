"""A worker started as ``serve`` starts one compiles (or loads from Numba's cache) everything its first requests
and its first changes from the feed run before it says it is ready: none of them pays for a compile (a first
request on a cold cache cost ~7 s, a first opt-out ~1.4 s, a first addition ~3 s, the first resolve over it ~1 s).
Checked in a process of its own, through the public ``signatures`` of the kernels' dispatchers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index.camera_index import CameraIndex
from dispatcher.service.servers import RedisServer
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from tests import data
from tests.video_requests import JOINED, LAT0, LNG0

pytestmark = pytest.mark.redis


def test_a_started_worker_compiles_nothing_in_its_first_requests_and_changes(redis_server: RedisServer,
                                                                              tmp_path: Path) -> None:
    cams = data.cameras(2_000, seed=5, cx=LNG0, cy=LAT0, spread=0.005)
    CameraIndex.build(cams, data.owners(cams, seed=5)).save(tmp_path / "idx")
    AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL", geodesic_circle(LNG0, LAT0, 20_000),
                           JOINED)]).save_geojson(tmp_path / "agencies.geojson")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "tests.warm_worker", str(tmp_path), redis_server.url], cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.splitlines()[-1])
    # the requests were resolved and dispatched, every change applied (the add included): the paths ran
    assert (got["handled"], got["dispatched"], got["applied"], got["rejected"]) == (3, 3, 5, 0), got
    assert got["new_signatures"] == {}

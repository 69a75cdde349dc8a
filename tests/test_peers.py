"""The benchmark's peers (DuckDB spatial, PostGIS, Redis GEOSEARCH) against the shapely oracle: a figure is only
worth keeping if the peer answers exactly what geodispatch answers. Cameras sit on polygon vertices and edge
midpoints too, where a peer with a different boundary rule would show."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import shapely

from bench.peers import DuckDBPeer, PeerUnavailable, PostGISPeer, RedisGeoPeer, duckdb_spatial_path
from bench.reference import Dataset, brute_force
from bench.servers import PostgresServer
from dispatcher.geo.area import Area
from dispatcher.index.camera_index import CameraIndex
from dispatcher.service.servers import RedisServer, ServerUnavailable
from tests import data
from tests.data import NOW
from tests.polygons import boundary_points, star

SNAP = 2.0**-12
RECENT = (NOW - timedelta(days=1), NOW - timedelta(hours=23))
TINY = Area.parse(shapely.box(-73.951, 40.75, -73.95, 40.751))


def _areas(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        k = int(rng.integers(3, 12))
        ring = star(-73.95 + rng.normal(0, 0.02), 40.75 + rng.normal(0, 0.02),
                    list(rng.uniform(0.3, 1.0, k) * 0.02), float(rng.uniform(0, 6.3)), SNAP)
        area = {"type": "Polygon", "coordinates": [ring]}
        if shapely.is_valid(shapely.geometry.shape(area)):
            out.append(area)
    return out


@pytest.fixture(scope="module")
def world():
    areas = _areas(25, 3)
    rng = np.random.default_rng(4)
    extra = np.concatenate([boundary_points(a, rng, SNAP) for a in areas])
    cams = data.cameras(8000, seed=11, extra_points=extra)
    own = data.owners(cams, seed=11)
    windows = []
    for _ in areas:
        s, e = data.window(rng)
        windows.append((s.replace(microsecond=0), e.replace(microsecond=0)))  # the peers compare whole seconds
    ds = Dataset.from_tables(cams, own)
    ours = CameraIndex.build(cams, own)
    return [Area.parse(a) for a in areas], windows, ds, ours


def _check(peer, world) -> None:
    areas, windows, ds, ours = world
    nonempty = 0
    for area, (s, e) in zip(areas, windows):
        # a long window as well, so that most polygons have recipients
        for start, end in ((s, e), (NOW - timedelta(days=25), NOW - timedelta(days=24, hours=12))):
            owners, cams, off = peer.resolve(area, start, end, NOW)
            got = {int(o): cams[off[k]:off[k + 1]].tolist() for k, o in enumerate(owners)}
            want = brute_force(ds, area.geometry, start, end, NOW)
            assert got == want
            assert got == {o: c.tolist() for o, c in ours.resolve(area, start, end, now=NOW).items()}
            nonempty += bool(want)
    assert nonempty >= 20  # the comparison is not between empty answers


def test_duckdb_peer_is_exact_and_uses_its_rtree(world):
    try:
        duckdb_spatial_path()
    except PeerUnavailable as exc:
        pytest.skip(str(exc))
    peer = DuckDBPeer(world[2])
    try:
        assert "RTREE" in peer.plan(TINY, *RECENT, NOW).upper()  # the planner picks it for small areas
        _check(peer, world)
    finally:
        peer.close()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_geosearch_peer_is_exact(world, redis_server: RedisServer):
    with redis_server.client() as client:
        peer = RedisGeoPeer(world[2], client, chunk=1000)
        assert client.zcard(peer.key) == world[2].camera_id.shape[0]
        _check(peer, world)
        peer.close()


def test_postgis_peer_is_exact_and_uses_its_gist_index(world, tmp_path: Path):
    try:
        server = PostgresServer().start()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        peer = PostGISPeer(world[2], server.dsn)
        assert "cams_gist" in peer.plan(TINY, *RECENT, NOW)
        _check(peer, world)
        peer.close()
    finally:
        server.stop()

"""The lat-sorted peer (the benchmark's closest competitor and the 10M-camera equality check) against the shapely
oracle and geodispatch: boundary points, points a rounding error from an edge, holes, multipolygons, motion
events, extreme ids, every form an area comes in, and the edges of the time rules."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.reference import Dataset, LatSortedResolver, Rings, brute_force
from dispatcher.geo.area import Area
from dispatcher.index.camera_index import CameraIndex
from dispatcher.index.schema import CAMERA_SCHEMA
from tests import data
from tests.polygons import areas, boundary_points

NOW = data.NOW
SNAP = 2.0**-12


def as_dict(answer: tuple[np.ndarray, ...]) -> dict[int, list[int]]:
    owners, cams, off = answer
    assert np.all(owners[1:] > owners[:-1])  # ascending (np.diff would overflow across the int64 range)
    return {int(o): cams[off[k]:off[k + 1]].tolist() for k, o in enumerate(owners)}


def ours(index: CameraIndex, area, start: datetime, end: datetime, now: datetime) -> dict[int, list[int]]:
    return {o: c.tolist() for o, c in index.resolve(area, start, end, now=now).items()}


@settings(max_examples=40)
@given(area=areas(snap=SNAP), seed=st.integers(0, 2**32 - 1), with_events=st.booleans())
def test_peer_equals_the_oracle_and_geodispatch_with_boundary_cameras(area, seed, with_events):
    rng = np.random.default_rng(seed)
    cams = data.cameras(400, seed=seed % 1000, extra_points=boundary_points(area, rng, SNAP), spread=0.02)
    own = data.owners(cams, seed=seed % 1000)
    ev = data.events(cams, seed=seed % 1000, per_day=3.0) if with_events else None
    peer = LatSortedResolver(cams, own, ev)
    ref = Dataset.from_tables(cams, own, ev)
    index = CameraIndex.build(cams, own, ev)
    for start, end in (data.window(rng, max_days_ago=45), (NOW - timedelta(days=30), NOW - timedelta(days=2))):
        got = as_dict(peer.resolve(area, start, end, NOW))
        assert got == brute_force(ref, area, start, end, NOW)
        assert got == ours(index, area, start, end, NOW)


def _snapped(ring: list[list[float]]) -> list[list[float]]:
    return [[round(x / SNAP) * SNAP, round(y / SNAP) * SNAP] for x, y in ring]


def _recent_sharing_cameras(points: np.ndarray) -> pa.Table:
    """Cameras at exactly ``points``, installed a day before NOW, never removed, all sharing: only the place
    decides who is a recipient."""
    cams = data.cameras(0, extra_points=points)
    n = cams.num_rows
    ts = pa.timestamp("s", tz="UTC")
    cams = cams.set_column(4, "installed_at", pa.array(np.full(n, int(NOW.timestamp()) - 86_400)).cast(ts))
    cams = cams.set_column(5, "removed_at", pa.nulls(n, ts))
    return cams.set_column(7, "sharing_enabled", pa.array(np.ones(n, bool)))


RECENT = (NOW - timedelta(hours=2), NOW - timedelta(hours=1))


def test_cameras_on_edges_vertices_and_hole_edges_are_covered():
    outer = _snapped([[-74.0, 40.7], [-73.9, 40.7], [-73.9, 40.8], [-73.95, 40.85], [-74.0, 40.8], [-74.0, 40.7]])
    hole = _snapped([[-73.97, 40.73], [-73.96, 40.76], [-73.93, 40.74], [-73.97, 40.73]])
    area = {"type": "Polygon", "coordinates": [outer, hole]}
    cams = _recent_sharing_cameras(boundary_points(area, np.random.default_rng(5), SNAP))
    got = as_dict(LatSortedResolver(cams).resolve(area, *RECENT, NOW))
    assert sorted(c for cs in got.values() for c in cs) == cams.column("camera_id").to_pylist()
    assert got == brute_force(Dataset.from_tables(cams), area, *RECENT, NOW)


@pytest.mark.parametrize("ring", [
    _snapped([[-74.0, 40.7], [-73.9, 40.71], [-73.93, 40.8], [-74.0, 40.7]]),  # a few miles
    _snapped([[-100.0, 30.0], [-80.0, 31.0], [-90.0, 45.0], [-100.0, 30.0]]),  # a thousand miles
])
def test_cameras_on_or_a_rounding_error_off_an_edge_are_decided_exactly(ring, monkeypatch):
    # Points on slanted edges (vertices and exact midpoints), and points along them one ulp off on either side,
    # some of which the floating-point side test cannot certify: the exact fallback decides those.
    area = {"type": "Polygon", "coordinates": [ring]}
    on = boundary_points(area, np.random.default_rng(0), SNAP)
    r = np.asarray(ring)
    t = np.linspace(0.05, 0.95, 40)[:, None]
    along = np.concatenate([r[k] + t * (r[k + 1] - r[k]) for k in range(3)])
    pts = np.concatenate([on, along, np.column_stack([along[:, 0], np.nextafter(along[:, 1], 90)]),
                          np.column_stack([along[:, 0], np.nextafter(along[:, 1], -90)]),
                          np.column_stack([np.nextafter(along[:, 0], 180), along[:, 1]])])
    cams = _recent_sharing_cameras(pts)
    peer = LatSortedResolver(cams)
    exact = shapely.intersects_xy
    asked: list[int] = []
    monkeypatch.setattr(shapely, "intersects_xy", lambda g, x, y: asked.append(len(x)) or exact(g, x, y))
    got = as_dict(peer.resolve(area, *RECENT, NOW))
    monkeypatch.undo()
    assert sum(asked) > on.shape[0]  # the points on the boundary went to the exact test, and some off it too
    assert got == brute_force(Dataset.from_tables(cams), area, *RECENT, NOW)
    assert got == ours(CameraIndex.build(cams), area, *RECENT, NOW)
    inside = shapely.intersects_xy(shapely.geometry.shape(area), pts[:, 0], pts[:, 1])
    assert 0 < inside.sum() < pts.shape[0]  # both decisions occur among these points


@settings(max_examples=30)
@given(ids=st.lists(st.tuples(st.integers(-2**63, 2**63 - 1), st.integers(-2**63, 2**63 - 1)), min_size=1,
                    max_size=300, unique_by=lambda p: p[1]),
       owners_from=st.integers(1, 8))
def test_owners_and_cameras_come_out_ascending_whatever_their_ids(ids, owners_from):
    # A few distinct owners (so that owners have several cameras), any int64 ids, all cameras in the area.
    own_ids = np.asarray([o for o, _ in ids], dtype=np.int64)
    own_ids = np.sort(own_ids)[np.arange(own_ids.shape[0]) % owners_from]
    cam_ids = np.asarray([c for _, c in ids], dtype=np.int64)
    n = cam_ids.shape[0]
    rng = np.random.default_rng(n)
    ts = pa.timestamp("s", tz="UTC")
    cams = pa.Table.from_arrays([
        pa.array(cam_ids), pa.array(own_ids), pa.array(40.75 + rng.uniform(-0.01, 0.01, n)),
        pa.array(-73.95 + rng.uniform(-0.01, 0.01, n)), pa.array(np.full(n, int(NOW.timestamp()) - 86_400)).cast(ts),
        pa.nulls(n, ts), pa.array(np.full(n, 30, np.int16)), pa.array(np.ones(n, bool)),
    ], schema=CAMERA_SCHEMA)
    area = shapely.box(-74.0, 40.7, -73.9, 40.8)
    start, end = NOW - timedelta(hours=2), NOW - timedelta(hours=1)
    got = as_dict(LatSortedResolver(cams).resolve(area, start, end, NOW))
    assert got == brute_force(Dataset.from_tables(cams), area, start, end, NOW)
    assert sum(len(c) for c in got.values()) == n


SQUARE = {"type": "Polygon", "coordinates": [[[-74, 40.7], [-73.9, 40.7], [-73.9, 40.8], [-74, 40.8], [-74, 40.7]]]}
START = datetime(2026, 10, 20, 10, 0, tzinfo=timezone.utc)
END = datetime(2026, 10, 20, 11, 0, tzinfo=timezone.utc)
S = timedelta(seconds=1)


def _one_camera(installed: datetime, removed: datetime | None, retention: int = 30) -> pa.Table:
    ts = pa.timestamp("s", tz="UTC")
    return pa.Table.from_arrays([
        pa.array([1]), pa.array([10]), pa.array([40.75]), pa.array([-73.95]), pa.array([installed], ts),
        pa.array([removed], ts), pa.array([retention], pa.int16()), pa.array([True]),
    ], schema=CAMERA_SCHEMA)


@pytest.mark.parametrize("installed, removed, retention, now, event, expected", [
    (END, None, 30, NOW, None, True),                       # installed at the very end of the window
    (END + S, None, 30, NOW, None, False),                  # installed just after it
    (START - S, START, 30, NOW, None, True),                # removed at the very start
    (START - 2 * S, START - S, 30, NOW, None, False),       # removed just before
    (START - S, None, 30, END + timedelta(days=30), None, True),  # last footage retained to the second
    (START - S, None, 30, END + timedelta(days=30, microseconds=1), None, False),  # a microsecond too late
    (START - S, END - S, 30, END - S + timedelta(days=30), None, True),  # removed: last footage is at removal
    (START - S, END - S, 30, END + timedelta(days=30), None, False),
    (START - S, None, 30, START + timedelta(minutes=30), None, True),  # now inside the window
    (START + timedelta(minutes=40), None, 30, START + timedelta(minutes=30), None, False),  # installed after now
    (START - S, None, 30, NOW, START, True),                # a motion event at the very start
    (START - S, None, 30, NOW, END, True),                  # ... at the very end
    (START - S, None, 30, NOW, START - S, False),           # just before
    (START - S, None, 30, NOW, END + S, False),             # just after
    (START + timedelta(minutes=10), None, 30, NOW, START + timedelta(minutes=5), False),  # before installation
    (START - S, END - timedelta(minutes=10), 30, NOW, END - timedelta(minutes=5), False),  # after removal
    (START - S, None, 30, END + timedelta(days=30), START + timedelta(minutes=5), False),  # no longer retained
])
def test_window_retention_and_event_edges(installed, removed, retention, now, event, expected):
    cams = _one_camera(installed, removed, retention)
    ev = None if event is None else pa.table({"camera_id": pa.array([1]), "ts": pa.array([event], pa.timestamp(
        "s", tz="UTC"))})
    start, end = START, END
    got = as_dict(LatSortedResolver(cams, events=ev).resolve(SQUARE, start, end, now))
    assert bool(got) is expected
    assert got == brute_force(Dataset.from_tables(cams, events=ev), SQUARE, start, end, now)
    assert got == ours(CameraIndex.build(cams, events=ev), SQUARE, start, end, now)


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


@pytest.mark.parametrize("installed, removed, start, expected", [
    (_utc(1950, 1, 1), _utc(1960, 1, 1), _utc(1955, 6, 1, 10), True),
    (_utc(1950, 1, 1), _utc(1955, 6, 1, 9), _utc(1955, 6, 1, 10), False),  # removed before the window
    (_utc(1969, 12, 1), _utc(1969, 12, 31, 23, 59, 59), _utc(1970, 1, 1), False),  # a second before the epoch
    (_utc(1969, 12, 1), _utc(1970, 1, 1), _utc(1970, 1, 1), True),  # at the epoch, the window's first moment
])
def test_times_before_the_unix_epoch(installed, removed, start, expected):
    cams = _one_camera(installed, removed)
    end, now = start + timedelta(hours=1), start + timedelta(days=1)
    got = as_dict(LatSortedResolver(cams).resolve(SQUARE, start, end, now))
    assert bool(got) is expected
    assert got == brute_force(Dataset.from_tables(cams), SQUARE, start, end, now)
    assert got == ours(CameraIndex.build(cams), SQUARE, start, end, now)


def test_opted_out_owners_and_sharing_off_are_left_out():
    cams = data.cameras(3000, seed=2)
    own = data.owners(cams, seed=2, share_out=0.3)
    start, end = NOW - timedelta(days=20), NOW - timedelta(days=10)
    got = as_dict(LatSortedResolver(cams, own).resolve(SQUARE, start, end, NOW))
    opted = set(own.filter(own.column("opted_out")).column("owner_id").to_pylist())
    sharing = dict(zip(cams.column("camera_id").to_pylist(), cams.column("sharing_enabled").to_pylist()))
    assert got and not opted & set(got)
    assert all(sharing[c] for cs in got.values() for c in cs)
    assert got == brute_force(Dataset.from_tables(cams, own), SQUARE, start, end, NOW)


def test_every_form_of_an_area_gives_the_same_answer():
    cams = data.cameras(3000, seed=3)
    peer = LatSortedResolver(cams)
    start, end = NOW - timedelta(days=20), NOW - timedelta(days=10)
    forms = [SQUARE, json.dumps(SQUARE), {"type": "Feature", "properties": {}, "geometry": SQUARE},
             shapely.geometry.shape(SQUARE), Area.parse(SQUARE), Rings.of(SQUARE)]
    answers = [as_dict(peer.resolve(f, start, end, NOW)) for f in forms]
    assert answers[0] and all(a == answers[0] for a in answers)
    with pytest.raises(ValueError, match="Polygon"):
        peer.resolve(shapely.Point(-73.95, 40.75), start, end, NOW)


def test_events_naming_an_unknown_camera_are_refused():
    cams = _one_camera(START, None)
    ev = pa.table({"camera_id": pa.array([1, 7]), "ts": pa.array([START, END], pa.timestamp("s", tz="UTC"))})
    with pytest.raises(ValueError, match="unknown camera"):
        LatSortedResolver(cams, events=ev)
    with pytest.raises(ValueError, match="unknown camera"):
        Dataset.from_tables(cams, events=ev)

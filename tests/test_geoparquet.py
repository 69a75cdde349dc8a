"""Cameras and agencies from GeoParquet, GeoArrow and GeoDataFrames; the CRS check; strict column types.

The lng/lat index is the reference (its resolves are checked against the brute-force oracle in test_index.py): a
GeoParquet file written by geopandas must build the same index, array for array, and resolve the same recipients.
geopandas (its own writer and reader) and shapely are the independent side of every comparison here.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import geoarrow.pyarrow  # noqa: F401  (registers the geoarrow.* types: the tables below are built with them)
import geopandas as gpd
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from dispatcher import (
    CAMERA_SCHEMA,
    Agency,
    AgencyRegistry,
    CameraIndex,
    DispatchError,
    InvalidData,
    MissingDependency,
    UnknownCamera,
)
from tests import data
from tests.polygons import star

NOW = data.NOW
START, END = "2026-03-01T00:00:00Z", "2026-10-31T00:00:00Z"
AREAS = [
    {"type": "Polygon", "coordinates": [star(-73.95, 40.75, [0.02, 0.012, 0.018, 0.01, 0.02], 0.3)]},
    {"type": "Polygon", "coordinates": [star(-73.93, 40.76, [0.01] * 4, 0.0),
                                        star(-73.93, 40.76, [0.004] * 6, 0.1)[::-1]]},
    {"type": "MultiPolygon", "coordinates": [[star(-73.98, 40.73, [0.008] * 5, 0.5)],
                                             [star(-73.92, 40.78, [0.012, 0.006, 0.012], 1.0)]]},
    {"type": "Polygon", "coordinates": [[[-74.1, 40.6], [-73.8, 40.6], [-73.8, 40.9], [-74.1, 40.9], [-74.1, 40.6]]]},
]


def as_dict(rs) -> dict[int, list[int]]:
    return {owner: cams.tolist() for owner, cams in rs.items()}


def frame(cams: pa.Table, crs: str | None = "EPSG:4326") -> gpd.GeoDataFrame:
    """The cameras as a GIS holds them: a GeoDataFrame of points, lat/lng gone."""
    df = cams.to_pandas()
    points = gpd.points_from_xy(df.pop("lng"), df.pop("lat"))
    return gpd.GeoDataFrame(df, geometry=points, crs=crs)


@pytest.fixture(scope="module")
def world():
    cams = data.cameras(2500, seed=17)
    return cams, data.owners(cams, seed=17), data.events(cams, seed=17, per_day=0.3)


@pytest.fixture(scope="module")
def reference(world):
    return CameraIndex.build(*world)


def saved_arrays(index: CameraIndex, path: Path) -> dict[str, object]:
    index.save(path)
    out: dict[str, object] = {p.name: np.load(p) for p in sorted(path.glob("*.npy"))}
    meta = json.loads((path / "meta.json").read_text())
    meta.pop("saved_at")
    out["meta.json"] = meta
    return out


@pytest.mark.parametrize("encoding", ["WKB", "geoarrow"])
def test_geoparquet_from_geopandas_builds_the_same_index(world, reference, tmp_path, encoding):
    cams, own, ev = world
    plain, geo = tmp_path / "plain", tmp_path / "geo"
    for d in (plain, geo):
        d.mkdir()
        pq.write_table(own, d / "owners.parquet")
        pq.write_table(ev, d / "events.parquet")
    pq.write_table(cams, plain / "cameras.parquet")
    frame(cams).to_parquet(geo / "cameras.parquet", geometry_encoding=encoding)
    meta = orjson.loads(pq.read_schema(geo / "cameras.parquet").metadata[b"geo"])
    assert meta["columns"]["geometry"]["encoding"] == ("WKB" if encoding == "WKB" else "point")

    a, b = CameraIndex.from_parquet(plain), CameraIndex.from_parquet(geo)
    found = 0
    for area in AREAS:
        got, want = b.resolve(area, START, END, now=NOW), a.resolve(area, START, END, now=NOW)
        assert as_dict(got) == as_dict(want) == as_dict(reference.resolve(area, START, END, now=NOW))
        found += want.n_cameras
    assert found > 50  # the areas do reach cameras: the comparison is not between empty answers
    left, right = saved_arrays(a, tmp_path / "ia"), saved_arrays(b, tmp_path / "ib")
    assert left.keys() == right.keys() and len(left) > 10
    for name, arr in left.items():
        if name == "meta.json":
            assert arr == right[name]
        else:
            assert np.array_equal(arr, right[name]), name


def _geo_metadata_crs(table: pa.Table, crs: object) -> pa.Table:
    """``table`` with the GeoParquet ``crs`` of its geometry column set to ``crs`` (``...``: key removed)."""
    meta = orjson.loads(table.schema.metadata[b"geo"])
    if crs is ...:
        meta["columns"]["geometry"].pop("crs", None)
    else:
        meta["columns"]["geometry"]["crs"] = crs
    return table.replace_schema_metadata({**table.schema.metadata, b"geo": orjson.dumps(meta)})


@pytest.mark.parametrize("crs, refusal", [
    ("EPSG:4326", None),
    ("OGC:CRS84", None),
    (..., None),  # no crs key: GeoParquet's default, OGC:CRS84
    ("EPSG:3857", r"Pseudo-Mercator \(EPSG:3857\)"),
    ("EPSG:4269", r"NAD83 \(EPSG:4269\)"),  # within metres of WGS84, but another datum: refused, not guessed at
    (None, "has no CRS"),  # "crs": null, GeoParquet's unknown CRS
    ({"type": "GeographicCRS", "name": "no datum"}, "cannot be read"),  # PROJJSON, but not a CRS
])
def test_crs_from_the_geoparquet_metadata(world, reference, tmp_path, crs, refusal):
    cams = world[0].slice(0, 400)
    frame(cams).to_parquet(tmp_path / "c.parquet")
    table = pq.read_table(tmp_path / "c.parquet")
    table = _geo_metadata_crs(table, pyproj_json(crs) if isinstance(crs, str) else crs)  # PROJJSON, as the spec says
    pq.write_table(table, tmp_path / "edited.parquet")
    if refusal is None:
        index = CameraIndex.build(tmp_path / "edited.parquet")
        want = CameraIndex.build(cams)
        assert as_dict(index.resolve(AREAS[3], START, END, now=NOW)) == as_dict(want.resolve(AREAS[3], START, END,
                                                                                             now=NOW))
        return
    with pytest.raises(InvalidData, match=refusal) as err:
        CameraIndex.build(tmp_path / "edited.parquet")
    assert isinstance(err.value, ValueError) and "geometry column 'geometry'" in str(err.value)


def pyproj_json(crs: str) -> dict:
    import pyproj

    return pyproj.CRS.from_user_input(crs).to_json_dict()


def test_geodataframes_and_geoarrow_tables_in_every_encoding(world, reference):
    cams = world[0]
    gdf = frame(cams)
    want = [as_dict(reference.resolve(a, START, END, now=NOW)) for a in AREAS]
    registered = [pa.table(gdf.to_arrow(index=False, geometry_encoding=enc, interleaved=inter))
                  for enc, inter in (("WKB", True), ("geoarrow", True), ("geoarrow", False))]
    # The same columns as plain storage that only names its extension in the field metadata (a table read
    # before geoarrow-pyarrow registered its types): recognised all the same.
    named = []
    for t in registered:
        f = t.schema.field("geometry")
        ext = f.type
        field = pa.field("geometry", ext.storage_type, metadata={
            b"ARROW:extension:name": ext.extension_name.encode(),
            b"ARROW:extension:metadata": ext.__arrow_ext_serialize__()})
        storage = pa.chunked_array([c.storage for c in t.column("geometry").chunks], ext.storage_type)
        named.append(t.set_column(t.schema.get_field_index("geometry"), field, storage))
    assert {str(t.schema.field("geometry").type) for t in named} == {
        "binary", "fixed_size_list<xy: double not null>[2]", "struct<x: double not null, y: double not null>"}
    # GeoParquet as GDAL writes it: the 'geo' metadata only, no GeoArrow field metadata
    bare = []
    for enc in ("WKB", "geoarrow"):
        t = pa.table(gdf.to_arrow(index=False, geometry_encoding=enc))
        f = t.schema.field("geometry")
        storage = pa.chunked_array([c.storage for c in t.column("geometry").chunks], f.type.storage_type)
        plain = t.set_column(t.schema.get_field_index("geometry"), pa.field("geometry", f.type.storage_type), storage)
        geo = {"version": "1.1.0", "primary_column": "geometry",
               "columns": {"geometry": {"encoding": "WKB" if enc == "WKB" else "point", "geometry_types": ["Point"]}}}
        bare.append(plain.replace_schema_metadata({b"geo": orjson.dumps(geo)}))
    assert all(t.schema.field("geometry").metadata is None for t in bare)
    for source in [gdf, *registered, *named, *bare]:
        index = CameraIndex.build(source, world[1], world[2])
        assert [as_dict(index.resolve(a, START, END, now=NOW)) for a in AREAS] == want
    frames = CameraIndex.build(gdf, world[1].to_pandas(), world[2].to_pandas())  # owners, events as DataFrames
    assert [as_dict(frames.resolve(a, START, END, now=NOW)) for a in AREAS] == want
    with pytest.raises(InvalidData, match="owners: expected an Arrow table, a Parquet path or a .*, got dict"):
        CameraIndex.build(gdf, {"owner_id": [1]})


def test_add_cameras_from_a_geodataframe(world):
    cams = world[0]
    index, other = CameraIndex.build(cams.slice(0, 1500)), CameraIndex.build(cams.slice(0, 1500))
    index.add_cameras(frame(cams.slice(1500)))
    other.add_cameras(cams.slice(1500))
    assert index.pending_updates == other.pending_updates == 1000
    for area in AREAS:
        assert as_dict(index.resolve(area, START, END, now=NOW)) == as_dict(other.resolve(area, START, END, now=NOW))


def _wkb_table(cams: pa.Table, geoms: list) -> pa.Table:
    """A GeoParquet-shaped table (as geopandas writes it) whose geometry column holds ``geoms`` as WKB; a bytes
    entry goes in as it is."""
    table = pa.table(frame(cams).to_arrow(index=False))
    wkb = [g if isinstance(g, bytes) or g is None else shapely.to_wkb(g) for g in geoms]
    i = table.schema.get_field_index("geometry")
    return table.set_column(i, table.schema.field("geometry"), pa.array(wkb, table.schema.field("geometry").type))


@pytest.mark.parametrize("row, geometry, message", [
    (3, shapely.LineString([(-73.9, 40.7), (-73.8, 40.8)]), "a LineString"),
    (5, shapely.MultiPoint([(-73.9, 40.7)]), "a MultiPoint"),  # one point, but not a Point: refused, not unwrapped
    (7, shapely.Polygon([(-73.9, 40.7), (-73.8, 40.7), (-73.8, 40.8)]), "a Polygon"),
    (2, b"\x01\x02\x00", "not WKB"),
    (4, None, "null point"),
    (6, shapely.from_wkt("POINT EMPTY"), r"empty \(POINT EMPTY\) point"),
])
def test_bad_geometries_are_refused_naming_the_row(world, row, geometry, message):
    cams = world[0].slice(0, 20)
    geoms = list(shapely.points(np.column_stack([cams.column("lng"), cams.column("lat")])))
    geoms[row] = geometry
    bad = _wkb_table(cams, geoms)
    with pytest.raises(InvalidData, match=message) as err:
        CameraIndex.build(bad)
    camera_id = cams.column("camera_id")[row].as_py()
    assert f"row {row} (camera_id {camera_id})" in str(err.value)
    index = CameraIndex.build(world[0].slice(100, 50))  # other ids: adding the bad rows is refused, nothing added
    with pytest.raises(InvalidData, match=message):
        index.add_cameras(bad)
    assert index.pending_updates == 0 and index.n_cameras == 50


def test_polygon_columns_and_two_kinds_of_points_are_refused(world, tmp_path):
    cams = world[0].slice(0, 10)
    points = frame(cams)
    squares = points.set_geometry(shapely.buffer(np.asarray(points.geometry), 0.001, quad_segs=1), crs=points.crs)
    squares.to_parquet(tmp_path / "squares.parquet", geometry_encoding="geoarrow")
    with pytest.raises(InvalidData, match="holds polygon geometries, not points: row 0 \\(camera_id 1\\)"):
        CameraIndex.build(tmp_path / "squares.parquet")
    both = pa.table(frame(cams).to_arrow(index=False)).append_column("lat", cams.column("lat"))
    with pytest.raises(InvalidData, match=r"both a geometry column 'geometry' and \['lat'\]"):
        CameraIndex.build(both)
    with pytest.raises(InvalidData, match="has no CRS"):
        CameraIndex.build(frame(cams, crs=None))
    lonlat = pa.StructArray.from_arrays([cams.column("lng").combine_chunks(), cams.column("lat").combine_chunks()],
                                        names=["lon", "lat"])
    geo = {"primary_column": "geometry", "columns": {"geometry": {"encoding": "point"}}}
    misnamed = cams.drop_columns(["lat", "lng"]).append_column("geometry", lonlat).replace_schema_metadata(
        {b"geo": orjson.dumps(geo)})
    with pytest.raises(InvalidData, match="says it holds GeoArrow points but is of type struct<lon: double"):
        CameraIndex.build(misnamed)
    garbled = pq.read_table(tmp_path / "squares.parquet").replace_schema_metadata({b"geo": b"{not json"})
    with pytest.raises(InvalidData, match="the GeoParquet 'geo' metadata cannot be read"):
        CameraIndex.build(garbled)
    with pytest.raises(InvalidData, match="EPSG:3857"):
        CameraIndex.build(frame(cams).to_crs("EPSG:3857"))


def _with(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _naive(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return col.cast(pa.int64()).cast(pa.timestamp("s"))


@pytest.mark.parametrize("table, column, change, message", [
    ("cameras", "lat", lambda c: c.cast(pa.string()), "column 'lat' is string, expected double: text is not parsed"),
    ("cameras", "lng", lambda c: c.cast(pa.large_string()), "column 'lng' is large_string"),
    ("cameras", "installed_at", _naive, "column 'installed_at' is timestamp.s., expected .* naive"),
    ("cameras", "removed_at", _naive, "column 'removed_at' .* naive"),
    ("cameras", "camera_id", lambda c: c.cast(pa.float64()), "column 'camera_id' is double, expected int64: "
                                                              "floating-point ids"),
    ("cameras", "owner_id", lambda c: pa.compute.add(c.cast(pa.uint64()), pa.scalar(2**63, pa.uint64())),
     "column 'owner_id' of type uint64 does not convert exactly to int64"),
    ("cameras", "retention_days", lambda c: pa.compute.add(c.cast(pa.int64()), 40_000),
     "column 'retention_days' of type int64 does not convert exactly to int16"),
    ("cameras", "sharing_enabled", lambda c: c.cast(pa.int8()), "column 'sharing_enabled' is int8, expected bool"),
    ("owners", "owner_id", lambda c: c.cast(pa.float64()), "owners: column 'owner_id' is double"),
    ("owners", "opted_out", lambda c: c.cast(pa.string()), "owners: column 'opted_out' is string"),
    ("events", "ts", _naive, "events: column 'ts' .* naive"),
    ("events", "camera_id", lambda c: c.cast(pa.float64()), "events: column 'camera_id' is double"),
])
def test_lossy_or_meaning_changing_types_are_refused_naming_the_column(world, table, column, change, message):
    tables = dict(zip(("cameras", "owners", "events"), (t.slice(0, 300) for t in world)))
    tables["owners"] = data.owners(tables["cameras"], seed=17)
    tables["events"] = tables["events"].filter(pa.compute.is_in(tables["events"].column("camera_id"),
                                                                tables["cameras"].column("camera_id")))
    tables[table] = _with(tables[table], column, change(tables[table].column(column)))
    with pytest.raises(InvalidData, match=message) as err:
        CameraIndex.build(tables["cameras"], tables["owners"], tables["events"])
    assert isinstance(err.value, DispatchError) and isinstance(err.value, ValueError)


def test_meaning_keeping_casts_are_taken(world, reference):
    cams = world[0]
    chicago = pa.timestamp("s", tz="America/Chicago")
    loose = _with(_with(cams, "installed_at", cams.column("installed_at").cast(chicago)),
                  "retention_days", cams.column("retention_days").cast(pa.int64()))
    loose = _with(loose, "lat", cams.column("lat").cast(pa.float32()).cast(pa.float64()))  # same values as below
    exact = _with(cams, "lat", cams.column("lat").cast(pa.float32()).cast(pa.float64()))
    whole = _with(exact, "lng", pa.compute.round(cams.column("lng"), 0))
    ints = _with(exact, "lng", pa.compute.round(cams.column("lng"), 0).cast(pa.int64()))
    none = _with(cams, "removed_at", pa.nulls(cams.num_rows))  # an all-null column of type null
    cleared = _with(cams, "removed_at", pa.nulls(cams.num_rows, CAMERA_SCHEMA.field("removed_at").type))
    for got, want in ((loose, exact), (ints, whole), (none, cleared)):
        a, b = CameraIndex.build(got, world[1]), CameraIndex.build(want, world[1])
        for area in AREAS:
            assert as_dict(a.resolve(area, START, END, now=NOW)) == as_dict(b.resolve(area, START, END, now=NOW))


def test_recipients_to_a_geodataframe_for_operators(world):
    cams = world[0]
    whole = CameraIndex.build(cams)
    rs = whole.resolve(AREAS[3], START, END, now=NOW)
    gdf = rs.to_geodataframe(whole)
    assert isinstance(gdf, gpd.GeoDataFrame) and gdf.crs.to_string() == "OGC:CRS84" and len(gdf) == rs.n_cameras > 50
    by_id = cams.to_pandas().set_index("camera_id")
    rows = by_id.loc[gdf["camera_id"].to_numpy()]
    assert (gdf["owner_id"].to_numpy() == rows["owner_id"].to_numpy()).all()
    assert np.array_equal(gdf.geometry.x.to_numpy(), rows["lng"].to_numpy())
    assert np.array_equal(gdf.geometry.y.to_numpy(), rows["lat"].to_numpy())
    assert set(gdf.geometry.geom_type) == {"Point"}
    assert rs.to_arrow().column("owner_id").to_pylist() == sorted(set(gdf["owner_id"]))  # to_arrow as it was
    # a camera added live (in the delta) is located too; a removed one raises
    index = CameraIndex.build(cams.slice(0, 2000))
    index.add_cameras(cams.slice(2000))
    live = index.resolve(AREAS[3], START, END, now=NOW)
    assert as_dict(live) == as_dict(rs)
    assert np.array_equal(live.to_geodataframe(index).get_coordinates().to_numpy(), gdf.get_coordinates().to_numpy())
    index.remove_cameras([int(live.camera_ids[0])])
    with pytest.raises(UnknownCamera):
        live.to_geodataframe(index)


def _registry() -> AgencyRegistry:
    joined = datetime(2025, 5, 1, tzinfo=timezone.utc)
    return AgencyRegistry([
        Agency("pd-a", "Police A", "NY", shapely.box(-74.0, 40.7, -73.9, 40.8), joined),
        Agency("pd-b", "Sheriff B", "NJ", shapely.MultiPolygon([shapely.box(-74.3, 40.6, -74.2, 40.7),
                                                               shapely.box(-74.1, 40.6, -74.05, 40.65)]),
               joined, suspended=True),
        Agency("pd-c", "Police C", "CT", shapely.Polygon(shapely.box(-73.5, 41.0, -73.3, 41.2).exterior,
                                                         [shapely.box(-73.45, 41.05, -73.4, 41.1).exterior.coords]),
               datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
    ])


def _same(a: AgencyRegistry, b: AgencyRegistry, *, exact: bool = True) -> None:
    assert len(a) == len(b) == 3
    for x in a:
        y = b.get(x.agency_id)
        assert (x.name, x.state, x.joined_at, x.suspended) == (y.name, y.state, y.joined_at, y.suspended)
        assert x.jurisdiction.equals_exact(y.jurisdiction, 0.0) if exact else x.jurisdiction.equals(y.jurisdiction)


def test_agency_registries_to_and_from_geodataframes_and_geoparquet(tmp_path):
    reg = _registry()
    gdf = reg.to_geodataframe()
    assert list(gdf.columns) == ["agency_id", "name", "state", "joined_at", "suspended", "geometry"]
    assert gdf.crs.to_string() == "OGC:CRS84"
    _same(reg, AgencyRegistry.from_geodataframe(gdf))
    reg.save_geoparquet(tmp_path / "agencies.parquet")
    read = gpd.read_parquet(tmp_path / "agencies.parquet")  # geopandas' own reader: a GIS sees the same
    assert read.crs.equals("OGC:CRS84") and list(read["agency_id"]) == ["pd-a", "pd-b", "pd-c"]
    assert all(a.jurisdiction.equals_exact(g, 0.0) for a, g in zip(reg, read.geometry))
    _same(reg, AgencyRegistry.load(tmp_path / "agencies.parquet"))
    gdf.to_parquet(tmp_path / "native.parquet", geometry_encoding="geoarrow")  # GeoArrow polygons
    native = AgencyRegistry.load(tmp_path / "native.parquet")
    _same(reg, native, exact=False)  # geopandas wrote every Polygon as a one-part MultiPolygon: the same area
    assert {a.jurisdiction.geom_type for a in native} == {"MultiPolygon"}
    reg.save_parquet(tmp_path / "plain.parquet")  # the plain WKB table still loads
    _same(reg, AgencyRegistry.load(tmp_path / "plain.parquet"))


def test_bad_agency_geodataframes_are_refused():
    gdf = _registry().to_geodataframe()
    with pytest.raises(InvalidData, match=r"Pseudo-Mercator \(EPSG:3857\)"):
        AgencyRegistry.from_geodataframe(gdf.to_crs("EPSG:3857"))
    pointy = gdf.copy()
    pointy.loc[1, "geometry"] = shapely.Point(-74.2, 40.6)
    with pytest.raises(InvalidData, match=r"not \(Multi\)Polygons: row 1 \(agency_id pd-b\): a Point"):
        AgencyRegistry.from_geodataframe(pointy)
    naive = gdf.copy()
    naive["joined_at"] = naive["joined_at"].dt.tz_localize(None)
    with pytest.raises(InvalidData, match="column 'joined_at' .* naive"):
        AgencyRegistry.from_geodataframe(naive)


def test_without_geopandas_a_clear_typed_error(monkeypatch, reference):
    rs = reference.resolve(AREAS[0], START, END, now=NOW)
    monkeypatch.setitem(sys.modules, "geopandas", None)  # as if not installed: its import raises ImportError
    for call in (lambda: rs.to_geodataframe(reference), lambda: _registry().to_geodataframe()):
        with pytest.raises(MissingDependency, match=r"geopandas, which is not installed: .*geodispatch\[geo\]") as e:
            call()
        assert isinstance(e.value, ImportError)

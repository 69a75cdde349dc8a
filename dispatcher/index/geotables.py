"""GeoParquet, GeoArrow and GeoPandas in and out: tables whose points or polygons sit in one geometry column.

Where a geometry column is recognised, and where its CRS is read from:

- **GeoParquet** (1.0, 1.1): the table's ``geo`` metadata names the primary column, its encoding (``WKB``, or a
  GeoArrow native one such as ``point``) and its CRS as PROJJSON. A missing ``crs`` means OGC:CRS84 (the
  specification's default); ``null`` means an unknown CRS.
- **GeoArrow**: a field of a ``geoarrow.*`` extension type (geoarrow-pyarrow registers them) or a plain field
  carrying that extension's name and metadata; the CRS is the metadata's ``crs``, unknown when missing.
- **GeoDataFrame**: converted by geopandas itself to GeoArrow (WKB), its CRS with it.

Coordinates in both formats are x = longitude, y = latitude whatever axis order the CRS declares, so the CRS must
be WGS84 longitude/latitude (OGC:CRS84 or EPSG:4326, compared by pyproj). Anything else is refused naming it:
nothing is reprojected silently. Geometries are decoded by geoarrow-pyarrow (C); shapely is used only to name the
offending rows once a column is found wanting. geopandas is optional (the ``geo`` extra) and imported only by the
calls that take or give a GeoDataFrame.
"""

from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import shapely

from dispatcher.errors import InvalidData, MissingDependency

if TYPE_CHECKING:
    from geopandas import GeoDataFrame

__all__ = [
    "CRS84",
    "GeoColumn",
    "TableSource",
    "as_table",
    "geodataframe",
    "geometry_column",
    "point_coordinates",
    "shapes",
]

#: What a table argument may be: an Arrow table, a (Geo)Parquet path, or a (Geo)DataFrame.
TableSource: TypeAlias = "pa.Table | str | Path | GeoDataFrame"

#: The CRS every geometry must be in, and the one GeoParquet means when its metadata gives none.
CRS84 = "OGC:CRS84"
_EXT_NAME = b"ARROW:extension:name"
_EXT_META = b"ARROW:extension:metadata"
_SHOWN = 5
#: shapely's geometry type ids of the types our tables hold.
_POINT, _POLYGON, _MULTIPOLYGON = 0, 3, 6


@dataclass(frozen=True)
class GeoColumn:
    """A table's geometry column: its name, its encoding (``wkb``, ``point``, ``polygon``, ...), its values
    with any extension type taken off, its CRS as given (None: unknown) and where the CRS was read."""

    name: str
    encoding: str
    storage: pa.ChunkedArray
    crs: Any
    source: str

    def check_crs(self, what: str) -> None:
        """Refuse, naming it, a CRS other than WGS84 longitude/latitude, an unknown one or one that cannot be read."""
        where = f"{what}: geometry column {self.name!r}"
        if self.crs is None:
            raise InvalidData(f"{where} has no CRS (the {self.source} leaves it unknown); the coordinates must be "
                              f"WGS84 longitude/latitude: declare it ({CRS84} or EPSG:4326) if they are")
        try:
            crs = pyproj.CRS.from_user_input(self.crs)
        except pyproj.exceptions.CRSError:
            raise InvalidData(f"{where}: CRS {str(self.crs)[:120]!r} cannot be read") from None
        if not crs.equals(_wgs84(), ignore_axis_order=True):
            auth = crs.to_authority()
            label = f"{crs.name} ({auth[0]}:{auth[1]})" if auth else crs.name
            raise InvalidData(f"{where} is in {label}, not WGS84 longitude/latitude ({CRS84} or EPSG:4326); "
                              "reproject it first (GeoDataFrame.to_crs('EPSG:4326'))")


@functools.cache
def _wgs84() -> pyproj.CRS:
    return pyproj.CRS.from_user_input(CRS84)  # built on first use: PROJ's database is opened then, not at import


def _extension(field: pa.Field) -> tuple[str | None, bytes]:
    """A field's extension name and serialized metadata, whether the type is registered or only named."""
    if isinstance(field.type, pa.ExtensionType):
        return field.type.extension_name, field.type.__arrow_ext_serialize__()
    meta = field.metadata or {}
    name = meta.get(_EXT_NAME)
    return (name.decode() if name is not None else None), meta.get(_EXT_META, b"")


def _storage(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if isinstance(col.type, pa.ExtensionType):
        return pa.chunked_array([c.storage for c in col.chunks], type=col.type.storage_type)
    return col


def geometry_column(table: pa.Table, what: str) -> GeoColumn | None:
    """The table's geometry column (GeoParquet's primary column, else the first GeoArrow one), or None (also when
    the GeoParquet metadata names a column the table no longer has)."""
    geo = (table.schema.metadata or {}).get(b"geo")
    if geo is not None:
        try:
            meta = orjson.loads(geo)
            name = str(meta["primary_column"])
            column = meta["columns"][name]
            encoding = str(column["encoding"]).lower()
            crs = column.get("crs", CRS84)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidData(f"{what}: the GeoParquet 'geo' metadata cannot be read: {exc!r}") from None
        if name not in table.column_names:  # metadata left over from a table whose geometry was dropped
            return None
        return GeoColumn(name, encoding, _storage(table.column(name)), crs, "GeoParquet metadata")
    for field in table.schema:
        ext, serialized = _extension(field)
        if ext is not None and ext.startswith("geoarrow."):
            try:
                crs = orjson.loads(serialized).get("crs") if serialized else None
            except (orjson.JSONDecodeError, AttributeError) as exc:
                raise InvalidData(f"{what}: the GeoArrow metadata of column {field.name!r} cannot be read: "
                                  f"{exc!r}") from None
            return GeoColumn(field.name, ext.removeprefix("geoarrow."), _storage(table.column(field.name)), crs,
                             "GeoArrow extension metadata")
    return None


def _geoarrow() -> ModuleType:
    return importlib.import_module("geoarrow.pyarrow")  # registers the geoarrow.* extension types with pyarrow


def _rows(rows: np.ndarray, table: pa.Table, id_column: str, notes: list[str] | None = None) -> str:
    ids = table.column(id_column).take(pa.array(rows[:_SHOWN])).to_pylist() if id_column in table.column_names \
        else [None] * min(len(rows), _SHOWN)
    parts = [f"row {r}" + (f" ({id_column} {i})" if i is not None else "") + (f": {notes[k]}" if notes else "")
             for k, (r, i) in enumerate(zip(rows[:_SHOWN].tolist(), ids))]
    more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
    return ", ".join(parts) + more


def _refuse_wkb(g: GeoColumn, table: pa.Table, id_column: str, what: str, allowed: tuple[int, ...],
                expected: str) -> np.ndarray:
    """The shapely geometries of WKB column ``g``; raises naming the rows that are not WKB, or not of the
    ``allowed`` shapely types."""
    # A Python list, not to_numpy: Arrow's conversion to an object array imports pandas (about a second of every
    # worker's start).
    values = g.storage.to_pylist()
    geoms = shapely.from_wkb(values, on_invalid="ignore")
    garbled = np.array([v is not None for v in values], bool) & shapely.is_missing(geoms)
    type_ids = shapely.get_type_id(geoms)
    wrong = ~np.isin(type_ids, allowed) & ~shapely.is_missing(geoms)
    rows = np.flatnonzero(garbled | wrong)
    if rows.shape[0]:
        notes = ["not WKB" if garbled[r] else f"a {geoms[r].geom_type}" for r in rows[:_SHOWN]]
        raise InvalidData(f"{what}: geometry column {g.name!r} has {rows.shape[0]} row(s) that are not "
                          f"{expected}: {_rows(rows, table, id_column, notes)}")
    return np.asarray(geoms)


def point_coordinates(g: GeoColumn, table: pa.Table, id_column: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(lng, lat)`` of a column of points in WKB or GeoArrow's native point encoding (interleaved or
    separated; Z and M are dropped). Other geometries, unreadable WKB, null and empty points are refused naming
    their rows; so is a CRS other than WGS84 longitude/latitude."""
    g.check_crs(what)
    ga = _geoarrow()
    storage_type = g.storage.type
    if g.encoding == "wkb":
        wkb = ga.large_wkb() if pa.types.is_large_binary(storage_type) else \
            ga.wkb_view() if pa.types.is_binary_view(storage_type) else ga.wkb()
        arr = wkb.wrap_array(g.storage)
        try:  # geoarrow-c tells which types there are, not where: shapely names the rows when one is wrong
            kinds: set[int] | None = set(ga.unique_geometry_types(arr).field("geometry_type").to_pylist())
        except RuntimeError:  # unreadable WKB
            kinds = None
        if kinds is None or not kinds <= {1}:  # 1: geoarrow's Point
            _refuse_wkb(g, table, id_column, what, (_POINT,), "points")
        try:
            points = ga.as_geoarrow(arr, ga.point())
        except RuntimeError as exc:
            raise InvalidData(f"{what}: geometry column {g.name!r} cannot be read as points: {exc}") from None
    elif g.encoding == "point":
        dims = {"xy": ga.Dimensions.XY, "xyz": ga.Dimensions.XYZ, "xym": ga.Dimensions.XYM,
                "xyzm": ga.Dimensions.XYZM}
        if pa.types.is_struct(storage_type):
            names = "".join(storage_type.field(i).name for i in range(storage_type.num_fields))
            typ = ga.point().with_coord_type(ga.CoordType.SEPARATED)
        elif pa.types.is_fixed_size_list(storage_type):
            names = storage_type.value_field.name
            typ = ga.point().with_coord_type(ga.CoordType.INTERLEAVED)
        else:
            names = ""
        if names not in dims:
            raise InvalidData(f"{what}: geometry column {g.name!r} says it holds GeoArrow points but is of type "
                              f"{storage_type}")
        try:
            points = typ.with_dimensions(dims[names]).wrap_array(g.storage)
        except (pa.ArrowException, TypeError, ValueError) as exc:  # e.g. integer ordinates
            raise InvalidData(f"{what}: geometry column {g.name!r} of type {storage_type} is not GeoArrow points: "
                              f"{exc}") from None
    else:
        sample = np.flatnonzero(~np.asarray(g.storage.is_null().to_numpy(zero_copy_only=False)))
        raise InvalidData(f"{what}: geometry column {g.name!r} holds {g.encoding} geometries, not points: "
                          f"{_rows(sample, table, id_column)}; give each camera a Point")
    x, y = (np.asarray(c.to_numpy(), np.float64) for c in ga.point_coords(points))
    null = np.asarray(points.is_null().to_numpy(zero_copy_only=False), bool)
    empty = np.isnan(x) & np.isnan(y) & ~null
    for mask, kind in ((null, "null"), (empty, "empty (POINT EMPTY)")):
        if mask.any():
            rows = np.flatnonzero(mask)
            raise InvalidData(f"{what}: geometry column {g.name!r} has {rows.shape[0]} {kind} point(s): "
                              f"{_rows(rows, table, id_column)}")
    return x, y


def shapes(g: GeoColumn, table: pa.Table, id_column: str, what: str) -> np.ndarray:
    """The (Multi)Polygons of a geometry column as shapely geometries; other types, unreadable WKB and nulls are
    refused naming their rows, and so is a CRS other than WGS84 longitude/latitude."""
    g.check_crs(what)
    storage = g.storage
    if g.encoding != "wkb":
        ga = _geoarrow()
        registered = isinstance(table.column(g.name).type, ga.GeometryExtensionType)
        if g.encoding not in ("polygon", "multipolygon") or not registered:
            raise InvalidData(f"{what}: geometry column {g.name!r} is encoded as {g.encoding!r}; give "
                              "(Multi)Polygons as WKB or as GeoArrow polygons")
        storage = _storage(ga.as_wkb(table.column(g.name)))
        g = GeoColumn(g.name, "wkb", storage, g.crs, g.source)
    if storage.null_count:
        rows = np.flatnonzero(np.array(storage.is_null().to_pylist(), bool))
        raise InvalidData(f"{what}: geometry column {g.name!r} has null geometries: {_rows(rows, table, id_column)}")
    return _refuse_wkb(g, table, id_column, what, (_POLYGON, _MULTIPOLYGON), "(Multi)Polygons")


def _geopandas() -> ModuleType:
    try:
        return importlib.import_module("geopandas")
    except ImportError:
        raise MissingDependency("GeoDataFrames need geopandas, which is not installed: "
                                "pip install 'geodispatch[geo]'") from None


def as_table(obj: object, what: str) -> pa.Table | None:
    """An Arrow table from an Arrow table, a (Geo)Parquet path or a (Geo)DataFrame; None stays None. A
    GeoDataFrame's geometry comes as GeoArrow WKB with its CRS; its index is dropped."""
    if obj is None or isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, (str, Path)):
        if Path(obj).is_file():  # without pyarrow.dataset, whose import (pandas with it) costs more than the read
            with pq.ParquetFile(obj, pre_buffer=True) as f:
                return f.read()
        return pq.read_table(obj)  # a directory of files
    gpd = sys.modules.get("geopandas")  # a GeoDataFrame exists only once geopandas is imported
    if gpd is not None and isinstance(obj, gpd.GeoDataFrame):
        return pa.table(obj.to_arrow(index=False, geometry_encoding="WKB"))
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(obj, pd.DataFrame):
        return pa.Table.from_pandas(obj, preserve_index=False)
    raise InvalidData(f"{what}: expected an Arrow table, a Parquet path or a (Geo)DataFrame, got {type(obj).__name__}")


def geodataframe(table: pa.Table, geometry: np.ndarray) -> GeoDataFrame:
    """A GeoDataFrame of ``table``'s columns and the shapely ``geometry`` (one per row), in OGC:CRS84."""
    gpd = _geopandas()
    return gpd.GeoDataFrame(table.to_pandas(), geometry=gpd.GeoSeries(geometry, crs=CRS84), crs=CRS84)

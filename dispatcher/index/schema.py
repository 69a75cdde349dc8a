"""The data model: Arrow schemas for cameras, owners and motion events, and their validation.

Timestamps are UTC with whole-second precision. Inside the index they are stored as int32 seconds since
:data:`EPOCH` (2000-01-01T00:00:00Z), which covers 1931-12-13 .. 2068-01-19 exactly; values outside are rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dispatcher.errors import InvalidData, InvalidTimeWindow
from dispatcher.index.geotables import geometry_column, point_coordinates
from kernels import index_kernels as K
from kernels.h3core import invalid_latlng_array

#: Unix seconds of the storage epoch, 2000-01-01T00:00:00Z.
EPOCH_UNIX_S = 946_684_800
#: Unix microseconds of the storage epoch.
EPOCH_US = EPOCH_UNIX_S * 1_000_000
#: Stored value meaning "not removed".
NOT_REMOVED = np.iinfo(np.int32).max
_T_MIN = np.iinfo(np.int32).min + 1
_T_MAX = np.iinfo(np.int32).max - 1

TS = pa.timestamp("s", tz="UTC")

CAMERA_SCHEMA = pa.schema(
    [
        pa.field("camera_id", pa.int64(), nullable=False),
        pa.field("owner_id", pa.int64(), nullable=False),
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lng", pa.float64(), nullable=False),
        pa.field("installed_at", TS, nullable=False),
        pa.field("removed_at", TS, nullable=True),
        pa.field("retention_days", pa.int16(), nullable=False),
        pa.field("sharing_enabled", pa.bool_(), nullable=False),
    ]
)
"""The cameras table: one row per camera; ``removed_at`` is null while the camera is installed."""
OWNER_SCHEMA = pa.schema(
    [pa.field("owner_id", pa.int64(), nullable=False), pa.field("opted_out", pa.bool_(), nullable=False)]
)
"""The owners table: one row per owner; ``opted_out`` owners are asked by no request."""
EVENT_SCHEMA = pa.schema([pa.field("camera_id", pa.int64(), nullable=False), pa.field("ts", TS, nullable=False)])
"""The motion events table: one row per event of a known camera."""

#: How many offending rows an error message names at most.
_SHOWN = 5


def _shown(values: np.ndarray) -> str:
    head = ", ".join(str(v) for v in values[:_SHOWN].tolist())
    more = f" and {len(values) - _SHOWN} more" if len(values) > _SHOWN else ""
    return f"{head}{more}"


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Like :func:`conform_columns`, as a table with exactly ``schema``."""
    cols = conform_columns(table, schema, what)
    return pa.Table.from_arrays(list(cols.values()), schema=schema)


def conform_columns(table: pa.Table, schema: pa.Schema, what: str,
                    any_unit: bool = False) -> dict[str, pa.ChunkedArray]:
    """``table``'s columns cast to ``schema``, by name; unknown or missing columns, nulls where the schema
    has none, casts that change a value's kind (text to numbers, floats to integers, naive to aware times: see
    :func:`_kind_refusal`) and lossy casts raise, naming the column. With ``any_unit``, aware timestamps are
    left in their own unit (:func:`epoch_seconds` converts them, and finds the values that are not whole
    seconds, without an Arrow cast)."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise InvalidData(f"{what}: missing column(s) {missing}; expected {schema.names}")
    extra = [n for n in table.column_names if n not in schema.names]
    if extra:
        raise InvalidData(f"{what}: unknown column(s) {extra}; expected {schema.names}")
    columns = {}
    for field in schema:
        col = table.column(field.name)
        if not col.type.equals(field.type):
            _check_kind(col.type, field, what)
            if not (any_unit and pa.types.is_timestamp(col.type) and pa.types.is_timestamp(field.type)):
                try:
                    col = col.cast(field.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise InvalidData(f"{what}: column {field.name!r} of type {col.type} does not convert "
                                      f"exactly to {field.type}: {exc}") from None
        if not field.nullable and col.null_count:
            rows = np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))
            raise InvalidData(f"{what}: column {field.name!r} has {col.null_count} null(s), at row(s) {_shown(rows)}")
        columns[field.name] = col
    return columns


def _kind_refusal(src: pa.DataType, dst: pa.DataType) -> str | None:
    """Why a column of type ``src`` may not be cast to ``dst`` at all, or None when a cast may be tried (it is
    then checked value by value). Only casts that keep the meaning are tried: integers to integers (overflow
    raises), integers or floats to floats, aware timestamps to UTC, text to text, bytes to bytes, and an all-null
    column to anything; never text to numbers, floats to integers, naive to aware times, or numbers to flags."""
    t = pa.types
    if t.is_null(src):
        return None
    if t.is_integer(dst):
        if t.is_integer(src):
            return None
        if t.is_floating(src) or t.is_decimal(src):
            return "floating-point ids or counts may already have lost digits; give integers"
    elif t.is_floating(dst):
        if t.is_integer(src) or t.is_floating(src):
            return None
    elif t.is_timestamp(dst):
        if t.is_timestamp(src):
            return None if src.tz is not None else "naive (no time zone): a time without a zone is ambiguous; " \
                                                     "give UTC (timestamp with tz='UTC')"
    elif t.is_boolean(dst):
        if t.is_boolean(src):
            return None
    elif t.is_string(dst) or t.is_large_string(dst):
        if t.is_string(src) or t.is_large_string(src) or t.is_string_view(src):
            return None
    elif t.is_binary(dst) or t.is_large_binary(dst):
        if t.is_binary(src) or t.is_large_binary(src) or t.is_binary_view(src):
            return None
    if t.is_string(src) or t.is_large_string(src) or t.is_string_view(src):
        return "text is not parsed; give the values typed"
    return "not a type that converts to it without a change of meaning"


def _check_kind(src: pa.DataType, field: pa.Field, what: str) -> None:
    reason = _kind_refusal(src, field.type)
    if reason is not None:
        raise InvalidData(f"{what}: column {field.name!r} is {src}, expected {field.type}: {reason}")


#: Units of an Arrow timestamp a second.
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_ALL_VALID = np.empty(0, np.bool_)


def epoch_seconds(col: pa.ChunkedArray, null_value: int, out: np.ndarray) -> int:
    """An aware timestamp column, in any unit, as int32 seconds since :data:`EPOCH` into ``out``, nulls as
    ``null_value``, from Arrow's buffers (no cast) in one parallel pass over every chunk; returns how many values
    are not whole seconds or fall outside the int32 range (``out`` is then not meaningful there). One compiled
    call a column, not a chunk: a Parquet read gives a chunk per 131,072 rows (763 at 100M cameras), and on a
    busy machine each parallel call waits milliseconds for its threads (at 100M, 5-8 s of the conversion)."""
    scale = _PER_SECOND[col.type.unit]
    if len(col) == 0:
        return 0
    valid = _validity(col) if col.null_count else _ALL_VALID
    return int(K.epoch_seconds(_fixed_values(col, np.dtype(np.int64)), valid, scale, EPOCH_UNIX_S, null_value, out))


def _validity(col: pa.ChunkedArray) -> np.ndarray:
    """Whether each value of ``col`` is set, unpacked from Arrow's validity bitmaps (a chunk without one is all
    valid)."""
    return _joined([np.ones(len(c), np.bool_) if c.buffers()[0] is None else _bits(c, 0) for c in col.chunks])


def _bits(chunk: pa.Array, buffer: int) -> np.ndarray:
    """A chunk's bitmap ``buffer`` (0: validity, 1: a boolean array's values) as booleans."""
    bits = np.unpackbits(np.frombuffer(chunk.buffers()[buffer], np.uint8), count=chunk.offset + len(chunk),
                         bitorder="little")
    return bits[chunk.offset:].view(np.bool_)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def column_values(col: pa.ChunkedArray) -> np.ndarray:
    """A column of numbers or booleans with no null as one numpy array, read from Arrow's buffers (a read-only
    view of them when they lie one after another, as a Parquet read's do): Arrow's own conversion to numpy
    (``to_numpy``) imports pandas, a quarter of a second of a build's start. Other columns: ``to_numpy``."""
    t = col.type
    if col.null_count or col.num_chunks == 0:
        return np.asarray(col.to_numpy())
    if pa.types.is_boolean(t):
        return _joined([_bits(c, 1) for c in col.chunks])
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return np.asarray(col.to_numpy())
    kind = "i" if pa.types.is_signed_integer(t) else "u" if pa.types.is_unsigned_integer(t) else "f"
    return _fixed_values(col, np.dtype(f"{kind}{t.bit_width // 8}"))


def _fixed_values(col: pa.ChunkedArray, dtype: np.dtype) -> np.ndarray:
    """The values of a chunked fixed-width column as one array of ``dtype`` (nulls' slots hold anything): a view
    of Arrow's buffer when the chunks lie one after another in one buffer, as a Parquet read's do, else the
    chunks' views concatenated (a chunk without a values buffer, every value null, as zeros)."""
    views = []
    for chunk in col.chunks:
        buf = chunk.buffers()[1]
        m = len(chunk)
        views.append(np.zeros(m, dtype) if buf is None else
                     np.frombuffer(buf, dtype=dtype, count=chunk.offset + m)[chunk.offset:])
    first = col.chunks[0].buffers()[1] if col.num_chunks else None
    if first is not None and len(views) > 1:
        at = col.chunks[0].offset
        for chunk in col.chunks:
            buf = chunk.buffers()[1]
            if buf is None or buf.address != first.address or chunk.offset != at:
                break
            at += len(chunk)
        else:
            return np.frombuffer(first, dtype=dtype, count=at)[col.chunks[0].offset:]
    return _joined(views)


def _ts_to_epoch_s(col: pa.ChunkedArray, null_value: int, what: str, name: str,
                   ids: np.ndarray) -> np.ndarray:
    """Seconds since :data:`EPOCH` as int32 of a column in whole seconds; nulls become ``null_value``;
    out-of-range values raise."""
    out = np.empty(len(col), dtype=np.int32)
    if epoch_seconds(col, null_value, out):  # one pass; the rows are found only to be named
        raw = col.cast(pa.int64()).fill_null(null_value + EPOCH_UNIX_S).to_numpy()
        shifted = raw - EPOCH_UNIX_S
        rows = np.flatnonzero(((shifted < _T_MIN) | (shifted > _T_MAX)) & (shifted != null_value))
        raise InvalidData(f"{what}: {name} outside 1931-12-14..2068-01-18 for id(s) {_shown(ids[rows])}")
    return out


@dataclass(frozen=True)
class CameraColumns:
    """Validated camera columns as numpy arrays, in input order."""

    camera_id: np.ndarray  # int64
    owner_id: np.ndarray  # int64
    lat: np.ndarray  # float64
    lng: np.ndarray  # float64
    installed: np.ndarray  # int32 seconds since EPOCH
    removed: np.ndarray  # int32 seconds since EPOCH, NOT_REMOVED when null
    retention_days: np.ndarray  # uint16
    sharing: np.ndarray  # bool

    def __len__(self) -> int:
        return int(self.camera_id.shape[0])


def check_coordinates(lat: np.ndarray, lng: np.ndarray, ids: np.ndarray, what: str) -> None:
    """Raise :class:`InvalidData` naming the ids whose coordinates are NaN, infinite or out of range."""
    bad = invalid_latlng_array(np.ascontiguousarray(lat, np.float64), np.ascontiguousarray(lng, np.float64))
    if bad.any():
        rows = np.flatnonzero(bad)
        sample = ", ".join(f"{ids[r]} ({lat[r]}, {lng[r]})" for r in rows[:_SHOWN])
        raise InvalidData(f"{what}: {len(rows)} camera(s) with NaN, infinite or out-of-range lat/lng: {sample}")


def check_unique(ids: np.ndarray, what: str) -> None:
    """Raise :class:`InvalidData` naming duplicated ids. Sorted input is checked in one pass, without a sort."""
    if ids.shape[0] < 2:
        return
    if bool(np.all(ids[1:] > ids[:-1])):
        return
    s = np.sort(ids)
    dup = np.unique(s[1:][s[1:] == s[:-1]])
    if dup.shape[0]:
        raise InvalidData(f"{what}: {dup.shape[0]} duplicated id(s): {_shown(dup)}")


def located(table: pa.Table, what: str) -> pa.Table:
    """A cameras table whose points are in a geometry column (GeoParquet, GeoArrow: see
    :mod:`~dispatcher.index.geotables`) with that column replaced by ``lat`` and ``lng``; other tables as they
    are. Non-points, null or empty points and a CRS other than WGS84 longitude/latitude raise, naming them."""
    g = geometry_column(table, what)
    if g is None:
        return table
    both = [n for n in ("lat", "lng") if n in table.column_names]
    if both:
        raise InvalidData(f"{what}: both a geometry column {g.name!r} and {both}; give the points one way")
    lng, lat = point_coordinates(g, table, "camera_id", what)
    plain = table.drop_columns([g.name]).replace_schema_metadata(None)
    return plain.append_column("lat", pa.array(lat, pa.float64())).append_column("lng", pa.array(lng, pa.float64()))


def camera_columns(table: pa.Table, owners: pa.Table | None = None) -> CameraColumns:
    """Validate a cameras table (and its owners, when given) and return its columns as numpy arrays. The points
    are ``lat`` and ``lng`` columns or one geometry column of WGS84 points (:func:`located`).

    The rules are checked in a few compiled passes (:func:`_checked_columns`); only when one breaks are they
    checked again one by one, in their order, to name the first broken one and its rows."""
    plain = located(table, "cameras")
    cols = _checked_columns(plain, owners)
    return cols if cols is not None else _named_columns(plain, owners)


def _checked_columns(table: pa.Table, owners: pa.Table | None) -> CameraColumns | None:
    """:func:`camera_columns`, or None when a rule before the ids' uniqueness breaks: the times converted from
    their own unit without a cast, and coordinates, removal after installation and positive retention checked in
    one parallel pass."""
    what = "cameras"
    try:
        c = conform_columns(table, CAMERA_SCHEMA, what, any_unit=True)
    except InvalidData:
        return None  # the first error, named in the order of the rules
    n = table.num_rows
    installed = np.empty(n, dtype=np.int32)
    removed = np.empty(n, dtype=np.int32)
    if epoch_seconds(c["installed_at"], 0, installed) or epoch_seconds(c["removed_at"], int(NOT_REMOVED), removed):
        return None
    lat = column_values(c["lat"])
    lng = column_values(c["lng"])
    retention = np.empty(n, dtype=np.uint16)
    if K.camera_checks(lat, lng, installed, removed, column_values(c["retention_days"]), retention):
        return None
    ids = column_values(c["camera_id"])
    check_unique(ids, "cameras.camera_id")
    owner_id = column_values(c["owner_id"])
    if owners is not None:
        check_known_owners(owner_id, ids, owner_table_ids(owners))
    return CameraColumns(camera_id=ids, owner_id=owner_id, lat=lat, lng=lng, installed=installed, removed=removed,
                         retention_days=retention,
                         sharing=column_values(c["sharing_enabled"]))


def _named_columns(table: pa.Table, owners: pa.Table | None) -> CameraColumns:
    """:func:`camera_columns` rule by rule, each broken one raising with the rows that break it."""
    what = "cameras"
    c = conform_columns(table, CAMERA_SCHEMA, what)
    ids = c["camera_id"].to_numpy()
    lat = c["lat"].to_numpy()
    lng = c["lng"].to_numpy()
    check_coordinates(lat, lng, ids, what)
    check_unique(ids, "cameras.camera_id")
    installed = _ts_to_epoch_s(c["installed_at"], 0, what, "installed_at", ids)
    removed = _ts_to_epoch_s(c["removed_at"], int(NOT_REMOVED), what, "removed_at", ids)
    early = removed < installed
    if early.any():
        raise InvalidData(f"{what}: removed_at before installed_at for camera id(s) {_shown(ids[early])}")
    retention = c["retention_days"].to_numpy()
    bad_ret = retention <= 0
    if bad_ret.any():
        raise InvalidData(f"{what}: retention_days must be positive; camera id(s) {_shown(ids[bad_ret])}")
    owner_id = c["owner_id"].to_numpy()
    if owners is not None:
        check_known_owners(owner_id, ids, owner_table_ids(owners))
    return CameraColumns(
        camera_id=ids,
        owner_id=owner_id,
        lat=lat,
        lng=lng,
        installed=installed,
        removed=removed,
        retention_days=retention.astype(np.uint16),
        sharing=c["sharing_enabled"].to_numpy(zero_copy_only=False).astype(np.bool_),
    )


def owner_table_ids(owners: pa.Table) -> np.ndarray:
    c = conform_columns(owners, OWNER_SCHEMA, "owners")
    ids = column_values(c["owner_id"])
    check_unique(ids, "owners.owner_id")
    return np.asarray(ids)


def opted_out_owners(owners: pa.Table) -> np.ndarray:
    """Sorted int64 ids of the owners who opted out."""
    c = conform_columns(owners, OWNER_SCHEMA, "owners")
    mask = column_values(c["opted_out"])
    return np.sort(column_values(c["owner_id"])[mask])


def check_known_owners(owner_id: np.ndarray, camera_id: np.ndarray, known: np.ndarray) -> None:
    """Raise :class:`InvalidData` naming cameras whose owner is not in ``known``."""
    if owner_id.shape[0] == 0:
        return
    known = np.ascontiguousarray(known, dtype=np.int64)
    if known.shape[0] > 1 and not bool(np.all(known[1:] >= known[:-1])):
        known = np.sort(known)
    # the opt-out marking's membership pass (a byte map over dense ids, else a binary search), in parallel
    hit = np.zeros(owner_id.shape[0], dtype=np.uint8)
    if K.mark_owners(hit, owner_id, known, np.uint8(1), True) != owner_id.shape[0]:
        rows = np.flatnonzero(hit == 0)
        pairs = ", ".join(f"camera {camera_id[r]} -> owner {owner_id[r]}" for r in rows[:_SHOWN])
        raise InvalidData(f"cameras: {len(rows)} camera(s) name an unknown owner: {pairs}")


def event_columns(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Validated motion events as (camera_id int64, ts int32 seconds since EPOCH)."""
    try:  # the times from their own unit, without a cast
        c = conform_columns(table, EVENT_SCHEMA, "events", any_unit=True)
        cam = column_values(c["camera_id"])
        ts = np.empty(cam.shape[0], dtype=np.int32)
        if not epoch_seconds(c["ts"], 0, ts):
            return cam, ts
    except InvalidData:
        pass
    c = conform_columns(table, EVENT_SCHEMA, "events")  # a rule broke: the first, named
    cam = c["camera_id"].to_numpy()
    return cam, _ts_to_epoch_s(c["ts"], 0, "events", "ts", cam)


_UNIX = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_UTC = timezone.utc


def _us(d: timedelta) -> int:
    """A difference in whole microseconds, exactly (its fields read faster than a division by one microsecond,
    which a small query notices three times)."""
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def to_utc_us(value: Any, name: str) -> int:
    """Microseconds since the Unix epoch for an aware datetime or an ISO-8601 string with an offset.

    Naive datetimes are refused: a time without a zone is ambiguous.
    """
    if type(value) is not datetime:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidTimeWindow(f"{name}: {value!r} is not an ISO-8601 date-time") from None
        elif not isinstance(value, datetime):
            raise InvalidTimeWindow(f"{name}: expected an aware datetime or ISO-8601 string, "
                                    f"got {type(value).__name__}")
    if value.tzinfo is not timezone.utc and value.utcoffset() is None:
        raise InvalidTimeWindow(f"{name}: {value.isoformat()} is naive; give a time zone (UTC: +00:00 or Z)")
    return _us(value - _UNIX)  # exact: an aware difference is whole microseconds, the offsets applied


def window_us(start: Any, end: Any, now: Any) -> tuple[int, int, int]:
    """A request's window and ``now`` (default: the current time) as microseconds since :data:`EPOCH`:
    ``(start, min(end, now), now)``. A reversed window, or one starting after ``now``, raises."""
    if (type(start) is datetime and type(end) is datetime and type(now) is datetime and start.tzinfo is _UTC
            and end.tzinfo is _UTC and now.tzinfo is _UTC):
        # the common case, three UTC datetimes, in a few operations: a small query's resolve notices each
        s, e, n = _us(start - _EPOCH), _us(end - _EPOCH), _us(now - _EPOCH)
        if s < e and s <= n:
            return s, e if e < n else n, n
    s = to_utc_us(start, "start")
    e = to_utc_us(end, "end")
    n = to_utc_us(now, "now") if now is not None else to_utc_us(datetime.now(timezone.utc), "now")
    if e <= s:
        raise InvalidTimeWindow(f"window end {end} is not after its start {start}")
    if s > n:
        raise InvalidTimeWindow(f"window starts at {start}, after now ({now or 'the current time'}): "
                                "no footage of it can exist yet")
    return s - EPOCH_US, min(e, n) - EPOCH_US, n - EPOCH_US

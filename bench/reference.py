"""Reference implementations and peers, shared by the correctness tests and the benchmarks.

The tests prove each of these equal to :meth:`dispatcher.CameraIndex.resolve` on the same data, so the
benchmarks compare exactly what the tests proved equal. Nothing here imports the product (``dispatcher``,
``kernels``): a mistake in its geometry, admission rules or grouping cannot hide behind the same mistake here.

- :func:`brute_force`: the oracle. shapely's ``intersects_xy`` over every camera and the admission rules written
  out plainly with Python integers. Slow.
- :class:`LatSortedResolver`: the fastest approach measured elsewhere on this kind of machine: cameras sorted
  by latitude, a ``searchsorted`` band, a longitude mask and a Numba point-in-polygon test, with the admission
  rules and the grouping by owner in the same compiled call, so that a comparison isolates the index. Its
  crossing-number test certifies each edge's side with a floating-point error bound; a point it cannot place
  certainly (every point on an edge or a vertex among them) is decided by shapely.
- :class:`STRtreePeer`: shapely 2's STRtree over the points, a box query and ``intersects_xy``.

Areas are taken as shapely (Multi)Polygons, GeoJSON geometries or Features (dicts or text), or any object with a
shapely ``geometry`` attribute (a parsed ``dispatcher.Area``); :class:`Rings` is the lat-sorted peer's form of an
area, built once per area as geodispatch parses each area once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from numba import njit
from shapely.geometry.base import BaseGeometry

DAY_S = 86_400
_US = timedelta(microseconds=1)
_UNIX = datetime(1970, 1, 1, tzinfo=timezone.utc)
US = 1_000_000
DAY_US = DAY_S * US
#: :attr:`Dataset.removed_s` of a camera that was never removed: later than any window.
NOT_REMOVED_S = 2**62
#: ``removed_us`` of a camera that was never removed, in the lat-sorted peer.
NEVER_US = np.iinfo(np.int64).max


def unix_us(t: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime, exactly."""
    return (t - _UNIX) // _US


def as_geometry(area: Any) -> BaseGeometry:
    """The shapely Polygon or MultiPolygon of ``area`` (see the module docstring for the forms taken)."""
    if isinstance(area, (str, bytes)):
        area = json.loads(area)
    if isinstance(area, dict):
        if area.get("type") == "Feature":
            return as_geometry(area["geometry"])
        area = shapely.geometry.shape(area)
    elif not isinstance(area, BaseGeometry) and isinstance(getattr(area, "geometry", None), BaseGeometry):
        area = area.geometry
    if not isinstance(area, BaseGeometry):
        raise TypeError(f"expected a shapely geometry, GeoJSON or an object with a geometry, got {type(area).__name__}")
    if area.geom_type not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"expected a Polygon or MultiPolygon, got a {area.geom_type}")
    return area


def _camera_rows(camera_id: np.ndarray, ev_cam: np.ndarray) -> np.ndarray:
    """Row of each event's camera in ``camera_id``; an event naming an unknown camera raises."""
    order = np.argsort(camera_id, kind="stable")
    k = np.minimum(np.searchsorted(camera_id[order], ev_cam), max(0, camera_id.shape[0] - 1))
    rows = order[k] if camera_id.shape[0] else np.zeros(ev_cam.shape[0], np.int64)
    unknown = camera_id[rows] != ev_cam if camera_id.shape[0] else np.ones(ev_cam.shape[0], bool)
    if unknown.any():
        raise ValueError(f"events name unknown camera id(s) {np.unique(ev_cam[unknown])[:5].tolist()}")
    return rows.astype(np.int64)


def _events_csr(rows: np.ndarray, ts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Event times grouped by row: row ``r``'s are ``ts[ptr[r]:ptr[r + 1]]``, ascending."""
    order = np.lexsort((ts, rows))
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=ptr[1:])
    return ptr, np.ascontiguousarray(ts[order], dtype=np.int64)


def _event_columns(events: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(camera id, unix seconds) of every motion event."""
    cam = np.asarray(events.column("camera_id").to_numpy(), dtype=np.int64)
    ts = events.column("ts").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_numpy()
    return cam, np.asarray(ts, dtype=np.int64)


@dataclass(frozen=True)
class Dataset:
    """Plain numpy columns of a cameras table (and its owners and events), for the reference code."""

    camera_id: np.ndarray
    owner_id: np.ndarray
    lat: np.ndarray
    lng: np.ndarray
    installed_s: np.ndarray  # unix seconds, int64
    removed_s: np.ndarray  # unix seconds, int64; NOT_REMOVED_S when not removed
    retention_days: np.ndarray
    sharing: np.ndarray
    opted_out: frozenset[int]
    #: Motion events by row, ``None`` when none are loaded: row ``r``'s unix seconds, ascending, are
    #: ``ev_ts[ev_ptr[r]:ev_ptr[r + 1]]``.
    ev_ptr: np.ndarray | None = None
    ev_ts: np.ndarray | None = None

    @classmethod
    def from_tables(cls, cameras: pa.Table, owners: pa.Table | None = None,
                    events: pa.Table | None = None) -> Dataset:
        def secs(name: str) -> np.ndarray:
            col = cameras.column(name).cast(pa.timestamp("s", tz="UTC")).cast(pa.int64())
            return np.asarray(col.fill_null(NOT_REMOVED_S).to_numpy(), dtype=np.int64)

        opted: frozenset[int] = frozenset()
        if owners is not None:
            mask = owners.column("opted_out").to_numpy(zero_copy_only=False).astype(bool)
            opted = frozenset(owners.column("owner_id").to_numpy()[mask].tolist())
        camera_id = cameras.column("camera_id").to_numpy()
        ev_ptr = ev_ts = None
        if events is not None:
            cam, ts = _event_columns(events)
            ev_ptr, ev_ts = _events_csr(_camera_rows(camera_id, cam), ts, camera_id.shape[0])
        return cls(
            camera_id=camera_id,
            owner_id=cameras.column("owner_id").to_numpy(),
            lat=cameras.column("lat").to_numpy(),
            lng=cameras.column("lng").to_numpy(),
            installed_s=secs("installed_at"),
            removed_s=secs("removed_at"),
            retention_days=cameras.column("retention_days").to_numpy().astype(np.int64),
            sharing=cameras.column("sharing_enabled").to_numpy(zero_copy_only=False).astype(bool),
            opted_out=opted,
            ev_ptr=ev_ptr,
            ev_ts=ev_ts,
        )

    def admissible(self, rows: np.ndarray, start: datetime, end: datetime, now: datetime) -> np.ndarray:
        """The admission rules, written out with exact Python integers (microseconds) row by row."""
        s, e, n = unix_us(start), unix_us(end), unix_us(now)
        keep = []
        for r in rows.tolist():
            if not self.sharing[r] or int(self.owner_id[r]) in self.opted_out:
                continue
            first = max(s, int(self.installed_s[r]) * US)
            last = min(e, n, int(self.removed_s[r]) * US)
            if first > last:
                continue
            keep_from = n - int(self.retention_days[r]) * DAY_US
            if last < keep_from:
                continue
            if self.ev_ptr is not None and self.ev_ts is not None:
                lo = max(first, keep_from)
                times = self.ev_ts[self.ev_ptr[r]:self.ev_ptr[r + 1]].tolist()
                if not any(lo <= int(t) * US <= last for t in times):
                    continue
            keep.append(r)
        return np.asarray(keep, dtype=np.int64)

    def recipients(self, rows: np.ndarray) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for r in rows.tolist():
            out.setdefault(int(self.owner_id[r]), []).append(int(self.camera_id[r]))
        return {k: sorted(v) for k, v in sorted(out.items())}


def brute_force(data: Dataset, area: Any, start: datetime, end: datetime, now: datetime) -> dict[int, list[int]]:
    """The oracle: ``{owner_id: sorted camera ids}`` by testing every camera with shapely."""
    inside = np.flatnonzero(shapely.intersects_xy(as_geometry(area), data.lng, data.lat))
    return data.recipients(data.admissible(inside, start, end, now))


class STRtreePeer:
    """shapely 2 STRtree over camera points: box query, then exact ``intersects_xy`` on the candidates."""

    def __init__(self, data: Dataset) -> None:
        self.points = shapely.points(data.lng, data.lat)
        self.tree = shapely.STRtree(self.points)
        self.data = data

    def spatial(self, area: Any) -> np.ndarray:
        geom = as_geometry(area)
        cand = self.tree.query(geom)  # without a predicate: the points whose boxes meet the area's box
        keep = shapely.intersects_xy(geom, self.data.lng[cand], self.data.lat[cand])
        return np.sort(cand[keep])


def admit_vectorised(data: Dataset, rows: np.ndarray, start: datetime, end: datetime, now: datetime,
                     opted_out_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The admission rules and grouping by owner, vectorised with numpy, for the STRtree peer. Returns
    ``(owners, cameras, offsets)`` like the kernels. Windows must be whole seconds (it compares seconds)."""
    s = int(start.timestamp())
    last = np.minimum(int(min(end, now).timestamp()), data.removed_s[rows])
    first = np.maximum(s, data.installed_s[rows])
    keep_from = int(now.timestamp()) - data.retention_days[rows] * DAY_S
    own = data.owner_id[rows]
    k = np.minimum(np.searchsorted(opted_out_sorted, own), max(0, opted_out_sorted.shape[0] - 1))
    opted = (opted_out_sorted[k] == own) if opted_out_sorted.shape[0] else np.zeros(own.shape[0], bool)
    ok = data.sharing[rows] & (first <= last) & (last >= keep_from) & ~opted
    own, cam = own[ok], data.camera_id[rows][ok]
    order = np.lexsort((cam, own))
    own, cam = own[order], cam[order]
    owners, starts = np.unique(own, return_index=True)
    return owners, cam, np.append(starts, own.shape[0])


# ------------------------------------------------------------------------------------- the lat-sorted peer


@dataclass(frozen=True, eq=False)
class Rings:
    """An area as the lat-sorted peer reads it: every ring's vertices in flat arrays.

    Ring ``r`` is ``x[ring_ptr[r]:ring_ptr[r + 1]]`` (closed: last vertex == first); polygon ``p`` owns rings
    ``poly_ptr[p]:poly_ptr[p + 1]``, its exterior first; ``poly_box[p]`` is its ``minx, miny, maxx, maxy`` and
    ``box`` the whole area's.
    """

    geometry: BaseGeometry
    x: np.ndarray
    y: np.ndarray
    ring_ptr: np.ndarray
    poly_ptr: np.ndarray
    poly_box: np.ndarray
    box: np.ndarray

    @classmethod
    def of(cls, area: Any) -> Rings:
        if isinstance(area, Rings):
            return area
        geom = as_geometry(area)
        polys = shapely.get_parts(geom)
        rings, poly_of_ring = shapely.get_rings(polys, return_index=True)
        xy, ring_of_xy = shapely.get_coordinates(rings, return_index=True)
        return cls(
            geometry=geom,
            x=np.ascontiguousarray(xy[:, 0]),
            y=np.ascontiguousarray(xy[:, 1]),
            ring_ptr=np.searchsorted(ring_of_xy, np.arange(rings.shape[0] + 1)).astype(np.int64),
            poly_ptr=np.searchsorted(poly_of_ring, np.arange(polys.shape[0] + 1)).astype(np.int64),
            poly_box=np.ascontiguousarray(shapely.bounds(polys), dtype=np.float64),
            box=np.asarray(geom.bounds, dtype=np.float64),
        )


_OUT = 0
_IN = 1
_UNSURE = 2
#: A side is certain when ``|det|`` exceeds this fraction of ``|detleft| + |detright|``: a few times the bound
#: ``(3 + 16 eps) eps`` on the rounding error of that evaluation (Shewchuk, "Adaptive precision floating-point
#: arithmetic and fast robust geometric predicates", 1997).
_SIDE_BOUND = 2.0**-50
#: Below this the products may have lost bits to underflow and the bound does not hold.
_SIDE_TINY = 2.0**-900


@njit(cache=True, inline="always")
def _side(px: float, py: float, x1: float, y1: float, x2: float, y2: float) -> int:
    """+1 when ``(px, py)`` lies left of the directed line ``(x1, y1) -> (x2, y2)``, -1 right, 0 when floating
    point cannot tell (always so for a point on the line)."""
    detleft = (x1 - px) * (y2 - py)
    detright = (y1 - py) * (x2 - px)
    det = detleft - detright
    detsum = abs(detleft) + abs(detright)
    if detsum < _SIDE_TINY or abs(det) <= _SIDE_BOUND * detsum:
        return 0
    return 1 if det > 0.0 else -1


@njit(cache=True, inline="always")
def _locate(px: float, py: float, x: np.ndarray, y: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray,
            poly_box: np.ndarray) -> int:
    """_IN, _OUT, or _UNSURE when an edge's side could not be certified (the point may lie on it).

    Crossing number of a ray to +x over each polygon's rings together (a valid polygon's holes lie inside its
    exterior and apart from each other), edges half-open in y."""
    for p in range(poly_ptr.shape[0] - 1):
        if px < poly_box[p, 0] or px > poly_box[p, 2] or py < poly_box[p, 1] or py > poly_box[p, 3]:
            continue
        odd = False
        for r in range(poly_ptr[p], poly_ptr[p + 1]):
            for k in range(ring_ptr[r], ring_ptr[r + 1] - 1):
                x1 = x[k]
                y1 = y[k]
                x2 = x[k + 1]
                y2 = y[k + 1]
                if (py < y1 and py < y2) or (py > y1 and py > y2) or (px > x1 and px > x2):
                    continue  # the edge is above, below or left of the point: it neither crosses the ray nor holds it
                crosses = (y1 > py) != (y2 > py)
                if px < x1 and px < x2:
                    odd ^= crosses
                    continue
                s = _side(px, py, x1, y1, x2, y2)
                if s == 0:
                    return _UNSURE
                if crosses and (s > 0) == (y2 > y1):  # left of the upward edge: the crossing is to the right
                    odd = not odd
        if odd:
            return _IN
    return _OUT


@njit(cache=True, inline="always")
def _admitted(i: int, ok: np.ndarray, installed_us: np.ndarray, removed_us: np.ndarray, retention_us: np.ndarray,
              ev_ptr: np.ndarray, ev_ts: np.ndarray, t0: int, t1: int, tn: int) -> bool:
    """The admission rules for row ``i``: ``t0`` the window's start, ``t1`` ``min(end, now)``, ``tn`` now
    (unix microseconds); ``ok`` says sharing is on and the owner has not opted out; ``ev_ptr`` is empty when
    no motion events are loaded."""
    if not ok[i]:
        return False
    first = max(t0, installed_us[i])
    last = min(t1, removed_us[i])
    if first > last:
        return False
    keep_from = tn - retention_us[i]
    if last < keep_from:
        return False
    if ev_ptr.shape[0] == 0:
        return True
    lo = max(first, keep_from)
    a = ev_ptr[i]
    b = ev_ptr[i + 1]
    while a < b:  # the first event at or after lo
        mid = (a + b) // 2
        if ev_ts[mid] * US < lo:
            a = mid + 1
        else:
            b = mid
    return a < ev_ptr[i + 1] and ev_ts[a] * US <= last


@njit(cache=True)
def _radix_order(key: np.ndarray) -> np.ndarray:
    """The stable permutation sorting int64 ``key``: LSD radix sort of each key's offset from the minimum, only
    over the bits in which the keys differ, with digits of 8 to 16 bits (wider for more keys)."""
    n = key.shape[0]
    idx = np.arange(n)
    if n < 2:
        return idx
    bits = 8
    while bits < 16 and (1 << bits) < n:
        bits += 1
    mask = np.uint64((1 << bits) - 1)
    lo = key.min()
    span = np.uint64(key.max() - lo)  # exact in two's complement, even where the int64 difference wraps
    u = np.empty(n, dtype=np.uint64)
    for i in range(n):
        u[i] = np.uint64(key[i] - lo)
    idx2 = np.empty(n, dtype=np.int64)
    u2 = np.empty(n, dtype=np.uint64)
    count = np.empty((1 << bits) + 1, dtype=np.int64)
    shift = np.uint64(0)
    while shift < np.uint64(64) and (span >> shift) != np.uint64(0):
        count[:] = 0
        for i in range(n):
            count[((u[i] >> shift) & mask) + np.uint64(1)] += 1
        for d in range(1 << bits):
            count[d + 1] += count[d]
        for i in range(n):
            d = (u[i] >> shift) & mask
            k = count[d]
            u2[k] = u[i]
            idx2[k] = idx[i]
            count[d] = k + 1
        u, u2 = u2, u
        idx, idx2 = idx2, idx
        shift += np.uint64(bits)
    return idx


@njit(cache=True)
def _group(own: np.ndarray, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct owners ascending, each one's cameras ascending, and the offsets of each owner's cameras."""
    order = _radix_order(own)
    n = own.shape[0]
    own_s = np.empty(n, dtype=np.int64)
    cam_s = np.empty(n, dtype=np.int64)
    starts = np.empty(n + 1, dtype=np.int64)
    m = 0
    for k in range(n):
        own_s[k] = own[order[k]]
        c = cam[order[k]]
        if k == 0 or own_s[k] != own_s[k - 1]:
            starts[m] = k
            m += 1
            cam_s[k] = c
            continue
        q = k  # insert c among the owner's cameras so far (an owner has a handful)
        while q > starts[m - 1] and cam_s[q - 1] > c:
            cam_s[q] = cam_s[q - 1]
            q -= 1
        cam_s[q] = c
    starts[m] = n
    owners = np.empty(m, dtype=np.int64)
    for j in range(m):
        owners[j] = own_s[starts[j]]
    return owners, cam_s, starts[:m + 1].copy()


@njit(cache=True, nogil=True)
def _scan_band(lat, lng, x, y, ring_ptr, poly_ptr, poly_box, box,  # type: ignore[no-untyped-def]
               ok, installed_us, removed_us, retention_us, owner, camera, ev_ptr, ev_ts, t0, t1, tn):
    """Rows in the area's latitude band, inside its longitude range, admitted and covered, grouped by owner;
    and the admitted rows whose location the crossing test could not certify."""
    lo = np.searchsorted(lat, box[1], side="left")
    hi = np.searchsorted(lat, box[3], side="right")
    own = np.empty(hi - lo, dtype=np.int64)
    cam = np.empty(hi - lo, dtype=np.int64)
    unsure = np.empty(hi - lo, dtype=np.int64)
    n = 0
    m = 0
    for i in range(lo, hi):
        px = lng[i]
        if px < box[0] or px > box[2]:
            continue
        if not _admitted(i, ok, installed_us, removed_us, retention_us, ev_ptr, ev_ts, t0, t1, tn):
            continue
        where = _locate(px, lat[i], x, y, ring_ptr, poly_ptr, poly_box)
        if where == _IN:
            own[n] = owner[i]
            cam[n] = camera[i]
            n += 1
        elif where == _UNSURE:
            unsure[m] = i
            m += 1
    owners, cams, offsets = _group(own[:n], cam[:n])
    return owners, cams, offsets, unsure[:m].copy()


class LatSortedResolver:
    """The latitude-sorted peer as a complete resolver, with its own admission rules, point-in-polygon test and
    grouping by owner, compiled like ours, so that a comparison isolates the spatial index.

    Cameras are held sorted by latitude, times in unix microseconds (``removed_us`` is :data:`NEVER_US` for a
    camera never removed), ``ok`` folding sharing and the owner's consent together."""

    def __init__(self, cameras: pa.Table, owners: pa.Table | None = None, events: pa.Table | None = None) -> None:
        d = Dataset.from_tables(cameras, owners)
        order = np.argsort(d.lat, kind="stable")
        opted = np.fromiter(d.opted_out, dtype=np.int64, count=len(d.opted_out))
        self.lat = np.ascontiguousarray(d.lat[order], dtype=np.float64)
        self.lng = np.ascontiguousarray(d.lng[order], dtype=np.float64)
        self.ok = d.sharing[order] & ~np.isin(d.owner_id[order], opted)
        self.installed_us = d.installed_s[order] * US
        removed = d.removed_s[order]
        self.removed_us = np.full(removed.shape[0], NEVER_US, dtype=np.int64)
        gone = removed != NOT_REMOVED_S
        self.removed_us[gone] = removed[gone] * US
        self.retention_us = d.retention_days[order] * DAY_US
        self.owner = np.ascontiguousarray(d.owner_id[order], dtype=np.int64)
        self.camera = np.ascontiguousarray(d.camera_id[order], dtype=np.int64)
        self.ev_ptr = np.empty(0, np.int64)
        self.ev_ts = np.empty(0, np.int64)
        if events is not None:
            cam, ts = _event_columns(events)
            rank = np.empty(order.shape[0], dtype=np.int64)
            rank[order] = np.arange(order.shape[0], dtype=np.int64)
            self.ev_ptr, self.ev_ts = _events_csr(rank[_camera_rows(d.camera_id, cam)], ts, order.shape[0])

    def _columns(self) -> tuple[np.ndarray, ...]:
        return (self.ok, self.installed_us, self.removed_us, self.retention_us, self.owner, self.camera,
                self.ev_ptr, self.ev_ts)

    def resolve(self, area: Any, start: datetime, end: datetime, now: datetime) -> tuple[np.ndarray, ...]:
        """``(owners, cameras, offsets)`` for ``area`` (a :class:`Rings`, or anything :meth:`Rings.of` takes)."""
        a = Rings.of(area)
        owners, cams, offsets, unsure = _scan_band(
            self.lat, self.lng, a.x, a.y, a.ring_ptr, a.poly_ptr, a.poly_box, a.box, *self._columns(),
            unix_us(start), unix_us(min(end, now)), unix_us(now))
        if unsure.shape[0]:
            hit = unsure[shapely.intersects_xy(a.geometry, self.lng[unsure], self.lat[unsure])]
            if hit.shape[0]:
                own = np.concatenate([np.repeat(owners, np.diff(offsets)), self.owner[hit]])
                owners, cams, offsets = _group(own, np.concatenate([cams, self.camera[hit]]))
        return owners, cams, offsets

    def nbytes(self) -> int:
        return self.lat.nbytes + self.lng.nbytes + sum(a.nbytes for a in self._columns())


#: The saved index's formats, as its documentation gives them (``dispatcher.index.columns``, ``kernels.index_kernels``
#: and ``dispatcher.index.persist``), written out here again so that :func:`reference_index` shares no code with
#: the build: times as int32 seconds since 2000-01-01Z, a camera never removed at the int32 maximum, retention as
#: uint16 days, flag bits (sharing 1, owner opted out 4), ids as int32 when every one fits, and 32-byte nodes.
EPOCH_2000_S = 946_684_800
NOT_REMOVED_I32 = np.iinfo(np.int32).max
FLAG_SHARING, FLAG_OPTED_OUT = 1, 4
NODE_RECORD = np.dtype([("x0", np.float32), ("y0", np.float32), ("x1", np.float32), ("y1", np.float32),
                        ("p0", np.int32), ("p1", np.int32), ("k0", np.int32), ("k1", np.int32)])


def _narrow_ids(ids: np.ndarray) -> np.ndarray:
    i32 = np.iinfo(np.int32)
    fits = ids.shape[0] and int(ids.min()) >= i32.min and int(ids.max()) <= i32.max
    return ids.astype(np.int32 if fits else np.int64)


def _outward(v: np.ndarray, down: bool) -> np.ndarray:
    """float64 values as the float32 that bound them: the nearest one, stepped down (or up) when it lies above
    (or below) the value."""
    f = v.astype(np.float32)
    wrong = f.astype(np.float64) > v if down else f.astype(np.float64) < v
    f[wrong] = np.nextafter(f[wrong], np.float32(-np.inf if down else np.inf))
    return f


def reference_index(data: Dataset, levels: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
                    capacity: int = 32) -> tuple[dict[str, np.ndarray], int]:
    """The arrays a saved index holds for ``data`` (by file name without ``.npy``), and its number of top-level
    nodes, computed plainly: each camera's cell by h3-py, a stable numpy argsort by cell, the columns gathered by
    fancy indexing, and the tree level by level (the top level: the runs of equal ancestors at ``levels[0]``;
    each node holding more than ``capacity`` cameras, above the last level, split into the runs of its cameras'
    ancestors at the next level; nodes numbered level by level, each level in camera order) with each node's box
    the float32 box around its cameras. Slow (h3-py per camera); for tests and checks."""
    import h3.api.basic_int as h3

    n = data.camera_id.shape[0]
    cells = np.fromiter((h3.latlng_to_cell(la, ln, levels[-1]) for la, ln in zip(data.lat.tolist(), data.lng.tolist())),
                        dtype=np.uint64, count=n)
    order = np.argsort(cells, kind="stable")
    cells = cells[order]
    lng, lat = data.lng[order].astype(np.float64), data.lat[order].astype(np.float64)
    removed = data.removed_s[order]
    opted = np.isin(data.owner_id[order], np.fromiter(data.opted_out, np.int64, len(data.opted_out)))
    arrays = {
        "col_xy": np.column_stack([lng, lat]),
        "col_installed": (data.installed_s[order] - EPOCH_2000_S).astype(np.int32),
        "col_removed": np.where(removed == NOT_REMOVED_S, NOT_REMOVED_I32, removed - EPOCH_2000_S).astype(np.int32),
        "col_retention": data.retention_days[order].astype(np.uint16),
        "col_flags": (np.where(data.sharing[order], FLAG_SHARING, 0) | np.where(opted, FLAG_OPTED_OUT, 0)
                      ).astype(np.uint8),
        "col_owner": _narrow_ids(data.owner_id[order]),
        "col_camera": _narrow_ids(data.camera_id[order]),
        "col_ev_ptr": np.empty(0, np.int64),
        "col_ev_ts": np.empty(0, np.int32),
        "optout": np.sort(np.fromiter(data.opted_out, np.int64, len(data.opted_out))),
    }
    if data.ev_ptr is not None and data.ev_ts is not None:
        counts = np.diff(data.ev_ptr)[order]
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        take = np.repeat(data.ev_ptr[:-1][order] - ptr[:-1], counts) + np.arange(ptr[-1])
        arrays["col_ev_ptr"] = ptr
        arrays["col_ev_ts"] = (data.ev_ts[take] - EPOCH_2000_S).astype(np.int32)

    node_cell: list[int] = []
    spans: list[tuple[int, int]] = []
    kids: list[list[int]] = []
    to_split = [(0, n, -1)]  # (first camera, end, the node splitting: -1 for the top level's virtual parent)
    n_top = 0
    for d, res in enumerate(levels):
        parent_of: dict[int, int] = {}
        level: list[int] = []
        for lo, hi, parent in to_split:
            first_child = len(node_cell)
            up = [parent_of.setdefault(c, h3.cell_to_parent(c, res)) for c in cells[lo:hi].tolist()]
            start = lo
            for i in range(lo + 1, hi + 1):
                if i == hi or up[i - lo] != up[i - 1 - lo]:
                    node_cell.append(up[start - lo])
                    spans.append((start, i))
                    kids.append([0, 0])
                    level.append(len(node_cell) - 1)
                    start = i
            if parent >= 0:
                kids[parent] = [first_child, len(node_cell)]
        if d == 0:
            n_top = len(node_cell)
        if d + 1 == len(levels):
            break
        to_split = [(*spans[k], k) for k in level if spans[k][1] - spans[k][0] > capacity]
    nodes = np.zeros(len(node_cell), dtype=NODE_RECORD)
    p = np.array(spans, dtype=np.int64).reshape(-1, 2)
    x = np.array([[lng[a:b].min(), lat[a:b].min(), lng[a:b].max(), lat[a:b].max()] for a, b in spans]).reshape(-1, 4)
    nodes["x0"], nodes["y0"] = _outward(x[:, 0], True), _outward(x[:, 1], True)
    nodes["x1"], nodes["y1"] = _outward(x[:, 2], False), _outward(x[:, 3], False)
    nodes["p0"], nodes["p1"] = p[:, 0], p[:, 1]
    k = np.array(kids, dtype=np.int64).reshape(-1, 2)
    nodes["k0"], nodes["k1"] = k[:, 0], k[:, 1]
    arrays["tree_node_cell"] = np.array(node_cell, dtype=np.uint64)
    arrays["tree_nodes"] = nodes
    return arrays, n_top

"""Reference implementations and peers, shared by the correctness tests and the benchmarks.

The tests prove each of these equal to :meth:`dispatcher.CameraIndex.resolve` on the same data, so the
benchmarks compare exactly what the tests proved equal.

- :func:`brute_force`: the oracle. shapely's ``intersects_xy`` over every camera and the admission rules written
  out plainly with Python integers. Slow, independent of our kernels.
- :class:`LatSortedResolver`: the fastest approach measured elsewhere on this kind of machine: cameras sorted
  by latitude, a ``searchsorted`` band, a longitude mask and a Numba point-in-polygon test, here with our
  admission rules and owner grouping in the same compiled call, so that a comparison isolates the index.
- :class:`STRtreePeer`: shapely 2's STRtree over the points, a box query and ``intersects_xy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from numba import njit

from dispatcher.geo.area import Area
from kernels.geometry import WORK_SIZE, covers_point
from kernels.index_kernels import admissible, group_by_owner

DAY_S = 86_400
_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class Dataset:
    """Plain numpy columns of a cameras table (and its owners and events), for the reference code."""

    camera_id: np.ndarray
    owner_id: np.ndarray
    lat: np.ndarray
    lng: np.ndarray
    installed_s: np.ndarray  # unix seconds, int64
    removed_s: np.ndarray  # unix seconds, int64; -1 when not removed
    retention_days: np.ndarray
    sharing: np.ndarray
    opted_out: frozenset[int]
    events: dict[int, np.ndarray] | None  # camera id -> sorted unix seconds

    @classmethod
    def from_tables(cls, cameras: pa.Table, owners: pa.Table | None = None,
                    events: pa.Table | None = None) -> Dataset:
        def secs(name: str) -> np.ndarray:
            col = cameras.column(name).cast(pa.timestamp("s", tz="UTC")).cast(pa.int64())
            return np.asarray(col.fill_null(-1).to_numpy(), dtype=np.int64)

        opted: frozenset[int] = frozenset()
        if owners is not None:
            mask = owners.column("opted_out").to_numpy(zero_copy_only=False).astype(bool)
            opted = frozenset(owners.column("owner_id").to_numpy()[mask].tolist())
        ev: dict[int, np.ndarray] | None = None
        if events is not None:
            cam = events.column("camera_id").to_numpy()
            ts = events.column("ts").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_numpy()
            order = np.lexsort((ts, cam))
            cam, ts = cam[order], ts[order]
            cuts = np.flatnonzero(np.diff(cam)) + 1
            ev = {int(c[0]): t for c, t in zip(np.split(cam, cuts), np.split(ts, cuts)) if len(c)}
        return cls(
            camera_id=cameras.column("camera_id").to_numpy(),
            owner_id=cameras.column("owner_id").to_numpy(),
            lat=cameras.column("lat").to_numpy(),
            lng=cameras.column("lng").to_numpy(),
            installed_s=secs("installed_at"),
            removed_s=secs("removed_at"),
            retention_days=cameras.column("retention_days").to_numpy().astype(np.int64),
            sharing=cameras.column("sharing_enabled").to_numpy(zero_copy_only=False).astype(bool),
            opted_out=opted,
            events=ev,
        )

    def admissible(self, rows: np.ndarray, start: datetime, end: datetime, now: datetime) -> np.ndarray:
        """The admission rules, written out with exact Python integers (microseconds) row by row."""
        def us(t: datetime) -> int:
            return (t - datetime(1970, 1, 1, tzinfo=timezone.utc)) // _US

        s, e, n = us(start), us(end), us(now)
        keep = []
        for r in rows.tolist():
            if not self.sharing[r] or int(self.owner_id[r]) in self.opted_out:
                continue
            first = max(s, int(self.installed_s[r]) * 1_000_000)
            last = min(e, n)
            if self.removed_s[r] >= 0:
                last = min(last, int(self.removed_s[r]) * 1_000_000)
            if first > last:
                continue
            keep_from = n - int(self.retention_days[r]) * DAY_S * 1_000_000
            if last < keep_from:
                continue
            if self.events is not None:
                lo = max(first, keep_from)
                times = self.events.get(int(self.camera_id[r]), np.empty(0, np.int64))
                if not any(lo <= int(t) * 1_000_000 <= last for t in times.tolist()):
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
    geom = Area.parse(area, max_vertices=10**9).geometry
    inside = np.flatnonzero(shapely.intersects_xy(geom, data.lng, data.lat))
    return data.recipients(data.admissible(inside, start, end, now))


class STRtreePeer:
    """shapely 2 STRtree over camera points: box query, then exact ``intersects_xy`` on the candidates."""

    def __init__(self, data: Dataset) -> None:
        self.points = shapely.points(data.lng, data.lat)
        self.tree = shapely.STRtree(self.points)
        self.data = data

    def spatial(self, area: Area) -> np.ndarray:
        cand = self.tree.query(shapely.box(*area.bbox))
        keep = shapely.intersects_xy(area.geometry, self.data.lng[cand], self.data.lat[cand])
        return np.sort(cand[keep])


def admit_vectorised(data: Dataset, rows: np.ndarray, start: datetime, end: datetime, now: datetime,
                     opted_out_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The admission rules and grouping by owner, vectorised with numpy, for the STRtree peer. Returns
    ``(owners, cameras, offsets)`` like the kernels. Windows must be whole seconds (it compares seconds)."""
    s = int(start.timestamp())
    last = np.minimum(int(min(end, now).timestamp()),
                      np.where(data.removed_s[rows] >= 0, data.removed_s[rows], np.iinfo(np.int64).max))
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


@njit(cache=True, nogil=True)
def _lat_band_resolve(lat, lng, xs, ys, ring_ptr, poly_ptr, poly_bbox,  # type: ignore[no-untyped-def]
                      installed, removed, retention, flags, owner, ev_ptr, ev_ts, camera, t0, t1, now):
    qx0 = poly_bbox[:, 0].min()
    qy0 = poly_bbox[:, 1].min()
    qx1 = poly_bbox[:, 2].max()
    qy1 = poly_bbox[:, 3].max()
    lo = np.searchsorted(lat, qy0, side="left")
    hi = np.searchsorted(lat, qy1, side="right")
    own = np.empty(hi - lo, dtype=np.int64)
    cam = np.empty(hi - lo, dtype=np.int64)
    n = 0
    work = np.empty(WORK_SIZE)
    for i in range(lo, hi):
        x = lng[i]
        if x < qx0 or x > qx1:
            continue
        if not admissible(i, installed, removed, retention, flags, ev_ptr, ev_ts, t0, t1, now):
            continue
        if covers_point(x, lat[i], xs, ys, ring_ptr, poly_ptr, poly_bbox, work):
            own[n] = owner[i]
            cam[n] = camera[i]
            n += 1
    return group_by_owner(own[:n], cam[:n])


class LatSortedResolver:
    """The latitude-sorted peer as a complete resolver: the same admission rules and owner grouping as ours,
    compiled in the same way, so that a comparison isolates the spatial index."""

    def __init__(self, cameras: pa.Table, owners: pa.Table | None = None, events: pa.Table | None = None) -> None:
        from dispatcher.index.columns import columns_from as _columns_from
        from dispatcher.index.columns import rows_of as _rows_of
        from dispatcher.index.schema import camera_columns, event_columns, opted_out_owners

        cols = camera_columns(cameras, owners)
        order = np.argsort(cols.lat, kind="stable")
        if events is not None:
            ev_cam, ev_ts = event_columns(events)
            ev_row = _rows_of(cols.camera_id, ev_cam, "events")
        else:
            ev_row, ev_ts = np.empty(0, np.int64), np.empty(0, np.int32)
        optout = opted_out_owners(owners) if owners is not None else np.empty(0, np.int64)
        c = _columns_from(cols, order, ev_row, ev_ts, events is not None, optout)
        self.lat = np.ascontiguousarray(c.xy[:, 1])
        self.lng = np.ascontiguousarray(c.xy[:, 0])
        self.args = (c.installed, c.removed, c.retention, c.flags, c.owner, c.ev_ptr, c.ev_ts, c.camera)
        self._nbytes = self.lat.nbytes + self.lng.nbytes + sum(a.nbytes for a in self.args)

    def resolve(self, area: Area, start: datetime, end: datetime, now: datetime) -> tuple[np.ndarray, ...]:
        from dispatcher.index.schema import window_us as _window_us

        t0, t1, tn = _window_us(start, end, now)
        return _lat_band_resolve(self.lat, self.lng, *area.kernel_args(), *self.args, t0, t1, tn)

    def nbytes(self) -> int:
        return self._nbytes

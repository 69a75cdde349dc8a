"""Per-camera columns as the kernels read them: gathered from validated tables in a chosen order, concatenated,
and looked up by camera id.

Columns are compact: 16 B coordinates, ids in the narrowest integer that holds them, int32 second times and a
one-byte flag field (:data:`kernels.index_kernels.SHARING`, ``DELETED``, ``OPTED_OUT``); motion events are
grouped per camera (``ev_ts[ev_ptr[i]:ev_ptr[i + 1]]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from dispatcher.errors import InvalidData
from dispatcher.index.schema import CameraColumns
from kernels import index_kernels as K

__all__ = [
    "EMPTY_I32",
    "EMPTY_I64",
    "Columns",
    "columns_from",
    "concat_columns",
    "empty_columns",
    "gather_events",
    "lookup_table",
    "positions",
    "rows_of",
]

EMPTY_I64 = np.empty(0, np.int64)
EMPTY_I32 = np.empty(0, np.int32)


def _id_dtype(ids: np.ndarray) -> type[np.signedinteger[Any]]:
    """int32 when every id fits, else int64 (ids are widened back to int64 on the way out)."""
    if ids.shape[0] and ids.min() >= np.iinfo(np.int32).min and ids.max() <= np.iinfo(np.int32).max:
        return np.int32
    return np.int64


def _narrow(ids: np.ndarray) -> np.ndarray:
    return ids.astype(_id_dtype(ids), copy=False)


@dataclass
class Columns:
    """Per-camera columns in one order (the base: leaf-cell order; the delta: arrival order)."""

    xy: np.ndarray
    installed: np.ndarray
    removed: np.ndarray
    retention: np.ndarray
    flags: np.ndarray
    owner: np.ndarray
    camera: np.ndarray
    ev_ptr: np.ndarray
    ev_ts: np.ndarray

    NAMES = ("xy", "installed", "removed", "retention", "flags", "owner", "camera", "ev_ptr", "ev_ts")

    @property
    def n(self) -> int:
        return int(self.camera.shape[0])

    def kernel_args(self) -> tuple[np.ndarray, ...]:
        return (self.xy, self.installed, self.removed, self.retention, self.flags, self.owner, self.ev_ptr,
                self.ev_ts)

    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in self.NAMES)


def columns_from(cols: CameraColumns, inverse: np.ndarray | None, ev_row: np.ndarray, ev_ts: np.ndarray,
                 has_events: bool, optout: np.ndarray) -> Columns:
    """Columns of ``cols`` permuted so that row ``r`` goes to position ``inverse[r]`` (None: as they are), with
    events grouped per camera and the cameras of the owners in ``optout`` (sorted) flagged as opted out."""
    n = len(cols)
    if inverse is None:
        inverse = np.arange(n, dtype=np.int64)
    out = Columns(
        xy=np.empty((n, 2), np.float64), installed=np.empty(n, np.int32), removed=np.empty(n, np.int32),
        retention=np.empty(n, np.uint16), flags=np.empty(n, np.uint8),
        owner=np.empty(n, _id_dtype(cols.owner_id)), camera=np.empty(n, _id_dtype(cols.camera_id)),
        ev_ptr=EMPTY_I64, ev_ts=EMPTY_I32)
    c = np.ascontiguousarray
    K.permute_cameras(inverse, max(1, numba.get_num_threads()), c(cols.lng), c(cols.lat), c(cols.installed),
                      c(cols.removed), c(cols.retention_days), c(cols.sharing), c(cols.owner_id), c(cols.camera_id),
                      out.xy, out.installed, out.removed, out.retention, out.flags, out.owner, out.camera)
    if optout.shape[0]:
        K.mark_owners(out.flags, out.owner, optout, K.OPTED_OUT, True)
    if has_events:
        out.ev_ptr, out.ev_ts = K.events_csr(inverse[ev_row], ev_ts, n)
    return out


def empty_columns(has_events: bool) -> Columns:
    return Columns(
        xy=np.empty((0, 2), np.float64), installed=EMPTY_I32, removed=EMPTY_I32,
        retention=np.empty(0, np.uint16), flags=np.empty(0, np.uint8), owner=EMPTY_I64, camera=EMPTY_I64,
        ev_ptr=np.zeros(1, np.int64) if has_events else EMPTY_I64, ev_ts=EMPTY_I32,
    )


def concat_columns(a: Columns, b: Columns, has_events: bool) -> Columns:
    if has_events:
        ev_ptr = np.concatenate([a.ev_ptr, b.ev_ptr[1:] + a.ev_ptr[-1]])
        ev_ts = np.concatenate([a.ev_ts, b.ev_ts])
    else:
        ev_ptr, ev_ts = EMPTY_I64, EMPTY_I32
    return Columns(
        xy=np.concatenate([a.xy, b.xy]), installed=np.concatenate([a.installed, b.installed]),
        removed=np.concatenate([a.removed, b.removed]), retention=np.concatenate([a.retention, b.retention]),
        flags=np.concatenate([a.flags, b.flags]),
        owner=_narrow(np.concatenate([a.owner.astype(np.int64), b.owner.astype(np.int64)])),
        camera=_narrow(np.concatenate([a.camera.astype(np.int64), b.camera.astype(np.int64)])),
        ev_ptr=ev_ptr, ev_ts=ev_ts,
    )


def gather_events(ev_ptr: np.ndarray, ev_ts: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The event times of the cameras at positions ``keep``, grouped as ``keep`` orders them."""
    counts = np.diff(ev_ptr)[keep]
    starts = ev_ptr[keep]
    idx = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
    return np.asarray(ev_ts[idx])


def lookup_table(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted ids as int64, their positions in ids)``; no sort when ``ids`` is already ascending."""
    ids64 = ids.astype(np.int64, copy=False)
    if ids64.shape[0] < 2 or bool(np.all(ids64[1:] > ids64[:-1])):
        return ids64, np.arange(ids64.shape[0], dtype=np.int64)
    order = np.argsort(ids64, kind="stable")
    return ids64[order], order


def positions(sorted_ids: np.ndarray, order: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Position of each queried id (via a :func:`lookup_table`), -1 where absent."""
    out = np.full(query.shape[0], -1, dtype=np.int64)
    if sorted_ids.shape[0] == 0:
        return out
    k = np.minimum(np.searchsorted(sorted_ids, query), sorted_ids.shape[0] - 1)
    hit = sorted_ids[k] == query
    out[hit] = order[k[hit]]
    return out


def rows_of(camera_ids: np.ndarray, ev_cam: np.ndarray, what: str) -> np.ndarray:
    """Row of each event's camera in ``camera_ids``; events naming an unknown camera raise."""
    rows = positions(*lookup_table(camera_ids), ev_cam)
    if (rows < 0).any():
        bad = np.unique(ev_cam[rows < 0])
        raise InvalidData(f"{what}: {int((rows < 0).sum())} event(s) name unknown camera id(s) {bad[:5].tolist()}")
    return rows

"""The camera index: cameras bucketed in H3 cells, resolved exactly against an area and a time window.

Design (the README explains the figures behind it):

- Points are sorted by their H3 cell at the finest of ``levels``. Above them sits an adaptive hierarchy of
  occupied H3 cells: the top level at the coarsest resolution, and any cell holding more than
  ``leaf_capacity`` cameras split into its cells at the next resolution. Each node stores the bounding box of
  its own cameras. A query walks down from the top: a node whose box is wholly inside the area is accepted in
  one go, one wholly outside is skipped, and only leaves straddling the boundary have their points tested,
  exactly, one by one. Cost follows the answer and the boundary, not the size of the country.
- Columns are compact (16 B coordinates, ids in the narrowest integer that holds them, int32 second times,
  a one-byte flag field) and saved as ``.npy`` files that :meth:`CameraIndex.open` memory-maps, so several
  worker processes on one machine share one copy in the page cache.
- Live updates (add, remove, sharing, opt-out) are visible to the next resolve: flags change in place (in a
  private copy-on-write mapping), added cameras sit in a small delta scanned by brute force, and
  :meth:`CameraIndex.merge` folds the delta into a new base, in the background or on demand.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from dispatcher.errors import IndexFormatError, InvalidArea, InvalidData, InvalidTimeWindow, UnknownCamera
from dispatcher.geo import h3 as h3x
from dispatcher.geo.area import MAX_VERTICES, Area
from dispatcher.index.recipients import RecipientSet
from dispatcher.index.schema import (
    EPOCH_UNIX_S,
    CameraColumns,
    camera_columns,
    check_unique,
    event_columns,
    opted_out_owners,
    to_utc_us,
)
from kernels import index_kernels as K
from kernels.geometry import BOX_IN

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
_EPOCH_US = EPOCH_UNIX_S * 1_000_000
_EMPTY_I64 = np.empty(0, np.int64)
_EMPTY_I32 = np.empty(0, np.int32)


@dataclass(frozen=True)
class IndexConfig:
    """How the index is laid out. ``levels`` are the H3 resolutions of the node hierarchy, coarsest first;
    cameras are sorted by their cell at the last one."""

    levels: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    #: A node holding more cameras than this is split into its cells at the next level.
    leaf_capacity: int = 32
    max_vertices: int = MAX_VERTICES
    #: Merge the delta in the background once it holds this many cameras (and this fraction of the base).
    merge_min_delta: int = 50_000
    merge_fraction: float = 0.01

    def __post_init__(self) -> None:
        lv = tuple(int(r) for r in self.levels)
        if not lv or any(not 0 <= r <= 15 for r in lv) or any(b <= a for a, b in zip(lv, lv[1:])):
            raise ValueError(f"levels must be strictly increasing H3 resolutions 0..15, got {self.levels}")
        object.__setattr__(self, "levels", lv)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexConfig:
        """The config saved in an index's meta.json; unknown keys raise (a misspelt setting is an error)."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise IndexFormatError(f"unknown index setting(s) {sorted(unknown)}")
        return cls(levels=tuple(d.get("levels", cls.levels)),
                   leaf_capacity=int(d.get("leaf_capacity", cls.leaf_capacity)),
                   max_vertices=int(d.get("max_vertices", cls.max_vertices)),
                   merge_min_delta=int(d.get("merge_min_delta", cls.merge_min_delta)),
                   merge_fraction=float(d.get("merge_fraction", cls.merge_fraction)))

    @property
    def finest_res(self) -> int:
        return self.levels[-1]


def _id_dtype(ids: np.ndarray) -> type[np.signedinteger[Any]]:
    """int32 when every id fits, else int64 (ids are widened back to int64 on the way out)."""
    if ids.shape[0] and ids.min() >= np.iinfo(np.int32).min and ids.max() <= np.iinfo(np.int32).max:
        return np.int32
    return np.int64


def _narrow(ids: np.ndarray) -> np.ndarray:
    return ids.astype(_id_dtype(ids), copy=False)


@dataclass
class _Columns:
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


def _columns_from(cols: CameraColumns, order: np.ndarray | None, ev_row: np.ndarray, ev_ts: np.ndarray,
                  has_events: bool, optout: np.ndarray) -> _Columns:
    """Columns of ``cols`` permuted by ``order`` (None: as they are), with events grouped per camera and the
    cameras of the owners in ``optout`` (sorted) flagged as opted out."""
    n = len(cols)
    if order is None:
        order = np.arange(n, dtype=np.int64)
    out = _Columns(
        xy=np.empty((n, 2), np.float64), installed=np.empty(n, np.int32), removed=np.empty(n, np.int32),
        retention=np.empty(n, np.uint16), flags=np.empty(n, np.uint8),
        owner=np.empty(n, _id_dtype(cols.owner_id)), camera=np.empty(n, _id_dtype(cols.camera_id)),
        ev_ptr=_EMPTY_I64, ev_ts=_EMPTY_I32)
    c = np.ascontiguousarray
    K.gather_cameras(order, c(cols.lng), c(cols.lat), c(cols.installed), c(cols.removed), c(cols.retention_days),
                     c(cols.sharing), c(cols.owner_id), c(cols.camera_id), out.xy, out.installed, out.removed,
                     out.retention, out.flags, out.owner, out.camera)
    if optout.shape[0]:
        K.mark_owners(out.flags, out.owner, optout, K.OPTED_OUT, True)
    if has_events:
        inverse = np.empty(order.shape[0], dtype=np.int64)
        inverse[order] = np.arange(order.shape[0], dtype=np.int64)
        out.ev_ptr, out.ev_ts = K.events_csr(inverse[ev_row], ev_ts, order.shape[0])
    return out


@dataclass
class _Tree:
    """The adaptive H3 hierarchy (see :mod:`kernels.index_kernels`)."""

    node_cell: np.ndarray  # uint64 H3 cell of each node
    nodes: np.ndarray  # K.NODE_DTYPE records: box, point range, child range
    n_top: int

    NAMES = ("node_cell", "nodes")

    @property
    def n_nodes(self) -> int:
        return int(self.node_cell.shape[0])

    @property
    def leaves(self) -> np.ndarray:
        return np.asarray(self.nodes["k0"] == self.nodes["k1"])

    def kernel_args(self) -> tuple[Any, ...]:
        return self.nodes, self.n_top

    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in self.NAMES)


def _outward_f32(box: np.ndarray) -> np.ndarray:
    """float32 boxes that contain the float64 ones: minima rounded down, maxima up."""
    out = box.astype(np.float32)
    lo = out[:, :2]
    hi = out[:, 2:]
    too_high = lo.astype(np.float64) > box[:, :2]
    lo[too_high] = np.nextafter(lo[too_high], np.float32(-np.inf))
    too_low = hi.astype(np.float64) < box[:, 2:]
    hi[too_low] = np.nextafter(hi[too_low], np.float32(np.inf))
    return out


def _build_tree(cells_sorted: np.ndarray, xy: np.ndarray, config: IndexConfig) -> _Tree:
    node_cell, box, pt, kids, n_top = K.build_tree(cells_sorted, xy, np.asarray(config.levels, np.int64),
                                                   config.leaf_capacity)
    if max(cells_sorted.shape[0], node_cell.shape[0]) >= 2**31:
        raise InvalidData(f"{cells_sorted.shape[0]:,} cameras: an index holds fewer than 2**31")
    nodes = np.empty(node_cell.shape[0], dtype=K.NODE_DTYPE)
    f32 = _outward_f32(box)
    for k, name in enumerate(("x0", "y0", "x1", "y1")):
        nodes[name] = f32[:, k]
    nodes["p0"], nodes["p1"] = pt[:, 0], pt[:, 1]
    nodes["k0"], nodes["k1"] = kids[:, 0], kids[:, 1]
    return _Tree(node_cell=node_cell, nodes=nodes, n_top=int(n_top))


def _sort_order(cells: np.ndarray, res: int) -> np.ndarray:
    """A stable order that sorts ``cells`` (all at ``res``). Packs (cell digits, row) into one uint64 when it
    fits and sorts those with numpy's vectorised sort, ten times faster than a stable argsort of the cells."""
    n = cells.shape[0]
    row_bits = max(1, int(n - 1).bit_length())
    if 7 + 3 * res + row_bits > 64:
        return np.argsort(cells, kind="stable")
    packed = K.pack_cell_rows(cells, res, row_bits)
    packed.sort()
    return K.unpack_rows(packed, row_bits)


@dataclass
class _Base:
    cols: _Columns
    tree: _Tree
    _lookup: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sorted camera ids, their positions)``, built on first use (the first live update)."""
        if self._lookup is None:
            self._lookup = _lookup_table(self.cols.camera)
        return self._lookup


@dataclass
class _State:
    base: _Base
    delta: _Columns
    optout: np.ndarray  # sorted int64 owner ids
    has_events: bool
    #: The kernel arguments after the area's and before the window's, built once per state.
    args: tuple[Any, ...] = field(init=False, repr=False)

    #: The compiled resolve for these argument types, called without Numba's per-call type dispatch.
    _entry: Any = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.args = (*self.base.tree.kernel_args(), *self.base.cols.kernel_args(), self.base.cols.camera,
                     *self.delta.kernel_args(), self.delta.camera)

    def resolve(self, area_args: tuple[Any, ...], t0: int, t1: int, tnow: int) -> tuple[np.ndarray, ...]:
        """The resolve kernel on this state. Typing 28 arguments on every call cost ~0.7 µs of a ~13 µs small
        query; the first call goes through the dispatcher (compiling or loading from the cache), later ones
        straight to the compiled entry point of the signature it chose (the area's arrays and the window's
        integers always have the same types, and this state's arrays never change type)."""
        entry = self._entry
        if entry is not None:
            return entry(*area_args, *self.args, t0, t1, tnow)
        out = K.resolve(*area_args, *self.args, t0, t1, tnow)
        sig = tuple(K.resolve.typeof_pyval(a) for a in (*area_args, *self.args, t0, t1, tnow))
        self._entry = K.resolve.overloads[sig].entry_point
        return out


def _empty_columns(has_events: bool) -> _Columns:
    return _Columns(
        xy=np.empty((0, 2), np.float64), installed=_EMPTY_I32, removed=_EMPTY_I32,
        retention=np.empty(0, np.uint16), flags=np.empty(0, np.uint8), owner=_EMPTY_I64, camera=_EMPTY_I64,
        ev_ptr=np.zeros(1, np.int64) if has_events else _EMPTY_I64, ev_ts=_EMPTY_I32,
    )


def _concat_columns(a: _Columns, b: _Columns, has_events: bool) -> _Columns:
    if has_events:
        ev_ptr = np.concatenate([a.ev_ptr, b.ev_ptr[1:] + a.ev_ptr[-1]])
        ev_ts = np.concatenate([a.ev_ts, b.ev_ts])
    else:
        ev_ptr, ev_ts = _EMPTY_I64, _EMPTY_I32
    return _Columns(
        xy=np.concatenate([a.xy, b.xy]), installed=np.concatenate([a.installed, b.installed]),
        removed=np.concatenate([a.removed, b.removed]), retention=np.concatenate([a.retention, b.retention]),
        flags=np.concatenate([a.flags, b.flags]),
        owner=_narrow(np.concatenate([a.owner.astype(np.int64), b.owner.astype(np.int64)])),
        camera=_narrow(np.concatenate([a.camera.astype(np.int64), b.camera.astype(np.int64)])),
        ev_ptr=ev_ptr, ev_ts=ev_ts,
    )


def _as_table(obj: pa.Table | str | Path | None) -> pa.Table | None:
    if obj is None or isinstance(obj, pa.Table):
        return obj
    return pq.read_table(obj)


@dataclass(frozen=True)
class BuildStats:
    cameras: int
    leaves: int
    nodes: int
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)


class CameraIndex:
    """A national camera index. Build with :meth:`build` or :meth:`from_parquet`, persist with :meth:`save`,
    share between processes with :meth:`open`, query with :meth:`resolve`."""

    def __init__(self, state: _State, config: IndexConfig, build_stats: BuildStats | None = None) -> None:
        self._state = state
        self.config = config
        self.build_stats = build_stats
        self._lock = threading.RLock()
        self._journal: list[tuple[str, Any, Any]] | None = None  # updates made while a merge runs
        self._merge_thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def build(cls, cameras: pa.Table | str | Path, owners: pa.Table | str | Path | None = None,
              events: pa.Table | str | Path | None = None, *, config: IndexConfig | None = None) -> CameraIndex:
        """Validate the tables (Arrow tables or Parquet paths) and build an index. Bad rows raise
        :class:`~dispatcher.errors.InvalidData` naming them; nothing is built then."""
        config = config or IndexConfig()
        t_start = time.perf_counter()
        stages: dict[str, float] = {}

        def lap(name: str, t: float) -> float:
            now = time.perf_counter()
            stages[name] = now - t
            return now

        t = t_start
        cam_table = _as_table(cameras)
        owner_table = _as_table(owners)
        event_table = _as_table(events)
        if cam_table is None:
            raise InvalidData("cameras: a table or a Parquet path is required")
        t = lap("read", t)
        cols = camera_columns(cam_table, owner_table)
        optout = opted_out_owners(owner_table) if owner_table is not None else _EMPTY_I64
        if event_table is not None:
            ev_cam, ev_ts = event_columns(event_table)
            ev_row = _rows_of(cols.camera_id, ev_cam, "events")
        else:
            ev_row, ev_ts = _EMPTY_I64, _EMPTY_I32
        t = lap("validate", t)
        base, stages2 = _build_base(cols, ev_row, ev_ts, event_table is not None, optout, config)
        stages.update(stages2)
        stats = BuildStats(cameras=len(cols), leaves=int(base.tree.leaves.sum()), nodes=base.tree.n_nodes,
                           seconds=time.perf_counter() - t_start,
                           stages=stages)
        log.info("built index of %d cameras in %.2f s (%s)", stats.cameras, stats.seconds, stages)
        state = _State(base, _empty_columns(event_table is not None), optout, event_table is not None)
        return cls(state, config, stats)

    @classmethod
    def from_parquet(cls, directory: str | Path, *, config: IndexConfig | None = None,
                     with_events: bool = True) -> CameraIndex:
        """Build from a directory holding ``cameras.parquet`` and optionally ``owners.parquet`` and
        ``events.parquet`` (the layout ``geodispatch generate`` writes)."""
        d = Path(directory)
        if not (d / "cameras.parquet").exists():
            raise IndexFormatError(f"{d}: no cameras.parquet")
        owners = d / "owners.parquet"
        events = d / "events.parquet"
        return cls.build(d / "cameras.parquet", owners if owners.exists() else None,
                         events if with_events and events.exists() else None, config=config)

    # ------------------------------------------------------------------------------------------ querying

    def resolve(self, area: Any, start: datetime | str, end: datetime | str,
                now: datetime | str | None = None) -> RecipientSet:
        """The owners (and their cameras) that may hold footage of ``area`` during ``[start, end]``.

        A camera matches when its location is covered by the area (boundary included), it was installed at
        some moment of the window, footage of that moment is still retained at ``now`` (default: the current
        time), sharing is on, its owner has not opted out and, when motion events are loaded, it recorded an
        event in the retained part of the window.
        """
        parsed = Area.parse(area, max_vertices=self.config.max_vertices)
        t0, t1, tnow = _window_us(start, end, now)
        owners, cams, offsets = self._state.resolve(parsed.kernel_args(), t0, t1, tnow)
        return RecipientSet(owners, cams, offsets)

    # ------------------------------------------------------------------------------------------ updates

    def add_cameras(self, cameras: pa.Table, events: pa.Table | None = None) -> None:
        """Add cameras (rows of the cameras schema) and, when the index holds motion events, theirs (a camera
        without events then matches no request); visible to the next resolve. Ids must be new."""
        cols = camera_columns(cameras)
        with self._lock:
            st = self._state
            if events is not None and not st.has_events:
                raise InvalidData("events: this index was built without motion events; rebuild it with them")
            present = _present(st, cols.camera_id)
            if present.shape[0]:
                raise InvalidData(f"cameras: id(s) already in the index: {present[:5].tolist()}")
            if st.has_events and events is not None:
                ev_cam, ev_ts = event_columns(events)
                ev_row = _rows_of(cols.camera_id, ev_cam, "events")
            else:
                ev_row, ev_ts = _EMPTY_I64, _EMPTY_I32
            new = _columns_from(cols, None, ev_row, ev_ts, st.has_events, st.optout)
            self._state = replace(st, delta=_concat_columns(st.delta, new, st.has_events))
            self._record("add", (cols, ev_row, ev_ts), None)
        self._maybe_merge()

    def remove_cameras(self, camera_ids: Iterable[int]) -> None:
        """Remove cameras by id; unknown ids raise :class:`UnknownCamera` and nothing changes."""
        ids = np.asarray(list(camera_ids), dtype=np.int64)
        with self._lock:
            _set_flag(self._state, _locate(self._state, ids), K.DELETED, True)
            self._record("remove", ids, None)

    def set_sharing(self, camera_ids: Iterable[int], enabled: bool) -> None:
        """Turn sharing on or off for cameras by id."""
        ids = np.asarray(list(camera_ids), dtype=np.int64)
        with self._lock:
            _set_flag(self._state, _locate(self._state, ids), K.SHARING, enabled)
            self._record("sharing", ids, enabled)

    def set_opted_out(self, owner_ids: Iterable[int], opted_out: bool = True) -> None:
        """Opt owners out of (or back into) every future request; takes effect at the next resolve."""
        ids = np.unique(np.asarray(list(owner_ids), dtype=np.int64))
        with self._lock:
            self._state = _replay(self._state, "optout", ids, opted_out)
            self._record("optout", ids, opted_out)

    def merge(self, *, background: bool = False) -> threading.Thread | None:
        """Fold the delta and removals into a new base. With ``background=True`` it runs in a thread (returned)
        while resolves and updates go on; updates made meanwhile are replayed onto the new base."""
        if background:
            with self._lock:
                if self._merge_thread is not None and self._merge_thread.is_alive():
                    return self._merge_thread
                thread = threading.Thread(target=self._merge_logged, name="geodispatch-merge", daemon=True)
                self._merge_thread = thread
                thread.start()
                return thread
        if self._merge_thread is not None:
            self._merge_thread.join()
        self._merge()
        return None

    @property
    def pending_updates(self) -> int:
        """Cameras in the delta (not yet merged into the base)."""
        return self._state.delta.n

    # ------------------------------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Merge pending updates and write the index to directory ``path`` (created; must not hold an index)."""
        self.merge()
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        if (d / "meta.json").exists():
            raise IndexFormatError(f"{d}: already holds an index; choose another directory")
        st = self._state
        arrays = {**{f"col_{n}": getattr(st.base.cols, n) for n in _Columns.NAMES},
                  **{f"tree_{n}": getattr(st.base.tree, n) for n in _Tree.NAMES}, "optout": st.optout}
        for name, arr in arrays.items():
            np.save(d / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        meta = {"format": FORMAT_VERSION, "cameras": st.base.cols.n, "has_events": st.has_events,
                "n_top": st.base.tree.n_top,
                "config": asdict(self.config), "arrays": sorted(arrays),
                "saved_at": datetime.now(timezone.utc).isoformat()}
        (d / "meta.json").write_text(json.dumps(meta, indent=2))
        return d

    @classmethod
    def open(cls, path: str | Path, *, warm_up: bool = True) -> CameraIndex:
        """Memory-map an index written by :meth:`save`. Worker processes opening the same directory share
        its pages; live updates stay private to the process (copy-on-write)."""
        d = Path(path)
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{d}: not an index directory ({exc})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise IndexFormatError(f"{d}: index format {meta.get('format')!r}, this version reads {FORMAT_VERSION}")
        arrays: dict[str, np.ndarray] = {}
        for name in meta["arrays"]:
            try:
                arrays[name] = np.load(d / f"{name}.npy", mmap_mode="c" if name == "col_flags" else "r",
                                       allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise IndexFormatError(f"{d}: cannot map {name}.npy ({exc})") from None
        cols = _Columns(**{n: arrays[f"col_{n}"] for n in _Columns.NAMES})
        tree = _Tree(**{n: arrays[f"tree_{n}"] for n in _Tree.NAMES}, n_top=int(meta["n_top"]))
        if cols.n != meta["cameras"] or int(tree.nodes["p1"][:tree.n_top].max(initial=0)) != cols.n:
            raise IndexFormatError(f"{d}: array lengths disagree with meta.json ({meta['cameras']} cameras)")
        config = IndexConfig.from_dict(meta["config"])
        has_events = bool(meta["has_events"])
        index = cls(_State(_Base(cols, tree), _empty_columns(has_events), np.array(arrays["optout"]), has_events),
                    config)
        if warm_up:
            index.warm_up()
        return index

    def warm_up(self) -> None:
        """Compile (or load from Numba's disk cache) every query kernel and the H3 kernels live updates use,
        so no query or update pays for it."""
        h3x.warm_up()
        area = Area.parse({"type": "Polygon", "coordinates": [[[0, 0], [1e-9, 0], [0, 1e-9], [0, 0]]]})
        self.resolve(area, "2020-01-01T00:00:00Z", "2020-01-01T01:00:00Z", now="2020-01-02T00:00:00Z")

    # ------------------------------------------------------------------------------------------ facts

    @property
    def n_cameras(self) -> int:
        """Cameras held, removed ones included until the next merge."""
        st = self._state
        return st.base.cols.n + st.delta.n

    def nbytes(self) -> dict[str, int]:
        st = self._state
        return {"columns": st.base.cols.nbytes(), "tree": st.base.tree.nbytes(), "delta": st.delta.nbytes(),
                "optout": st.optout.nbytes}

    def bytes_per_camera(self, *, events: bool = False) -> float:
        st = self._state
        total = st.base.cols.nbytes() + st.base.tree.nbytes()
        if not events:
            total -= st.base.cols.ev_ptr.nbytes + st.base.cols.ev_ts.nbytes
        return total / max(1, st.base.cols.n)

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """The H3 cells of the index leaves (of mixed resolutions: dense places get finer cells) and their
        camera counts."""
        tree = self._state.base.tree
        leaf = tree.leaves
        counts = tree.nodes["p1"][leaf].astype(np.int64) - tree.nodes["p0"][leaf]
        return np.asarray(tree.node_cell[leaf]), counts

    def cells_used(self, area: Any) -> tuple[np.ndarray, np.ndarray]:
        """The H3 cells a resolve of ``area`` works with, as ``(cells, inside)`` in visit order: ``inside`` is True
        for a cell whose box lies wholly in the area (its cameras are taken without a point test) and False for a
        leaf straddling the boundary (each of its cameras is tested). The walk is the resolve's own
        (:func:`kernels.index_kernels.visit_nodes` decides each node as :func:`resolve_points` does); the inner
        cells it only passes through are left out, and so is the live delta, which has no cells."""
        parsed = Area.parse(area, max_vertices=self.config.max_vertices)
        tree = self._state.base.tree
        node, cls = K.visit_nodes(*parsed.kernel_args(), tree.nodes, tree.n_top)
        rec = tree.nodes[node]
        keep = (cls == BOX_IN) | (rec["k0"] == rec["k1"])
        return np.asarray(tree.node_cell[node[keep]]), cls[keep] == BOX_IN

    def density(self, box: tuple[float, float, float, float], res: int,
                at: datetime | str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cameras in place at ``at`` (default: now; installed, not yet removed, not deleted), counted per H3 cell
        at ``res``: every cell holding such a camera inside ``box`` (``min_lng, min_lat, max_lng, max_lat``), with
        all of its cameras counted, those outside the box too. ``(cells, counts)``, ascending by cell."""
        at_s = (to_utc_us(at if at is not None else datetime.now(timezone.utc), "at") - _EPOCH_US) // 1_000_000
        lng, lat = self._in_place(box, at_s)
        cells = np.unique(h3x.latlng_to_cell(lat, lng, res))
        if cells.shape[0] == 0:
            return cells, np.zeros(0, np.int64)
        verts, _ = h3x.cell_to_boundary(cells)  # every camera of these cells lies inside their boundaries' box
        wide = (float(np.nanmin(verts[:, :, 1])), float(np.nanmin(verts[:, :, 0])), float(np.nanmax(verts[:, :, 1])),
                float(np.nanmax(verts[:, :, 0])))
        lng, lat = self._in_place(wide, at_s)
        all_cells = h3x.latlng_to_cell(lat, lng, res)
        got, counts = np.unique(all_cells[np.isin(all_cells, cells)], return_counts=True)
        return got, counts.astype(np.int64)

    def _in_place(self, box: tuple[float, float, float, float], at_s: int) -> tuple[np.ndarray, np.ndarray]:
        """``(lng, lat)`` of the cameras in place at ``at_s`` (seconds since 2000-01-01Z) inside the closed box."""
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (x0 < x1 and y0 < y1):
            raise InvalidArea(f"box {box} must have min_lng < max_lng and min_lat < max_lat")
        st = self._state
        rect = Area.parse(shapely.box(x0, y0, x1, y1), max_vertices=self.config.max_vertices)
        node, cls = K.visit_nodes(*rect.kernel_args(), st.base.tree.nodes, st.base.tree.n_top)
        rec = st.base.tree.nodes[node]
        rec = rec[(cls == BOX_IN) | (rec["k0"] == rec["k1"])]  # the nodes whose points the resolve would look at
        lengths = (rec["p1"] - rec["p0"]).astype(np.int64)
        starts = np.repeat(rec["p0"].astype(np.int64) - np.cumsum(lengths) + lengths, lengths)
        base_pos = starts + np.arange(int(lengths.sum()), dtype=np.int64)
        xs, ys = [], []
        for cols, pos in ((st.base.cols, base_pos), (st.delta, np.arange(st.delta.n, dtype=np.int64))):
            xy = cols.xy[pos]
            keep = ((cols.flags[pos] & K.DELETED) == 0) & (cols.installed[pos] <= at_s) & (cols.removed[pos] > at_s) \
                & (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
            xs.append(xy[keep, 0])
            ys.append(xy[keep, 1])
        return np.concatenate(xs), np.concatenate(ys)

    # ------------------------------------------------------------------------------------------ internals

    def _record(self, kind: str, a: Any, b: Any) -> None:
        if self._journal is not None:
            self._journal.append((kind, a, b))

    def _maybe_merge(self) -> None:
        st = self._state
        if st.delta.n >= max(self.config.merge_min_delta, int(self.config.merge_fraction * st.base.cols.n)):
            self.merge(background=True)

    def _merge_logged(self) -> None:
        try:
            self._merge()
        except Exception:  # a failed background merge leaves the index as it was: base + delta
            log.exception("background merge failed; the delta stays and resolves remain exact")

    def _merge(self) -> None:
        with self._lock:
            st = self._state
            self._journal = []
        try:
            merged = _concat_columns(st.base.cols, st.delta, st.has_events)
            keep = np.flatnonzero((merged.flags & K.DELETED) == 0)
            cols = CameraColumns(
                camera_id=merged.camera.astype(np.int64)[keep], owner_id=merged.owner.astype(np.int64)[keep],
                lat=np.ascontiguousarray(merged.xy[keep, 1]), lng=np.ascontiguousarray(merged.xy[keep, 0]),
                installed=merged.installed[keep], removed=merged.removed[keep],
                retention_days=merged.retention[keep], sharing=(merged.flags[keep] & K.SHARING) != 0)
            if st.has_events:
                counts = np.diff(merged.ev_ptr)[keep]
                ev_row = np.repeat(np.arange(keep.shape[0], dtype=np.int64), counts)
                ev_ts = _gather_events(merged.ev_ptr, merged.ev_ts, keep)
            else:
                ev_row, ev_ts = _EMPTY_I64, _EMPTY_I32
            base, _ = _build_base(cols, ev_row, ev_ts, st.has_events, st.optout, self.config)
            with self._lock:
                # Replay what happened meanwhile onto the new state, then publish it in one assignment:
                # resolves do not take the lock, so they must never see a half-replayed state.
                new = _State(base, _empty_columns(st.has_events), st.optout, st.has_events)
                for kind, a, b in self._journal or ():
                    new = _replay(new, kind, a, b)
                self._journal = None
                self._state = new
        finally:
            self._journal = None


def _replay(st: _State, kind: str, a: Any, b: Any) -> _State:
    """``st`` with one journaled update applied (a camera removed meanwhile is simply gone)."""
    if kind == "add":
        cols, ev_row, ev_ts = a
        new = _columns_from(cols, None, ev_row, ev_ts, st.has_events, st.optout)
        return replace(st, delta=_concat_columns(st.delta, new, st.has_events))
    if kind == "optout":
        for cols in (st.base.cols, st.delta):
            K.mark_owners(cols.flags, cols.owner, a, K.OPTED_OUT, b)
        optout = np.union1d(st.optout, a) if b else np.setdiff1d(st.optout, a)
        return replace(st, optout=optout.astype(np.int64))
    if kind == "remove":
        _set_flag(st, _locate(st, a, strict=False), K.DELETED, True)
    elif kind == "sharing":
        _set_flag(st, _locate(st, a, strict=False), K.SHARING, b)
    return st


def _present(st: _State, ids: np.ndarray) -> np.ndarray:
    """Which of ``ids`` the state holds (base or delta), removed ones included."""
    in_base = _positions(*st.base.lookup(), ids) >= 0
    in_delta = _positions(*_lookup_table(st.delta.camera), ids) >= 0
    return ids[in_base | in_delta]


def _locate(st: _State, ids: np.ndarray, *, strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(base positions, delta positions) of the live cameras among ``ids``. With ``strict``, unknown or removed
    ids raise before any change; a replay after a merge is not strict (a camera removed while the merge ran is
    already gone from the new base)."""
    base = _positions(*st.base.lookup(), ids)
    delta = _positions(*_lookup_table(st.delta.camera), ids)
    base_live = np.zeros(ids.shape[0], bool)
    base_live[base >= 0] = (st.base.cols.flags[base[base >= 0]] & K.DELETED) == 0
    delta_live = np.zeros(ids.shape[0], bool)
    delta_live[delta >= 0] = (st.delta.flags[delta[delta >= 0]] & K.DELETED) == 0
    unknown = ~(base_live | delta_live)
    if strict and unknown.any():
        raise UnknownCamera(f"unknown or removed camera id(s): {ids[unknown][:5].tolist()}")
    return base[base_live], delta[delta_live]


def _set_flag(st: _State, where: tuple[np.ndarray, np.ndarray], bit: np.uint8, on: bool) -> None:
    """Set or clear a flag bit in place (flags are always writeable: built in memory, or mapped copy-on-write)."""
    for cols, pos in ((st.base.cols, where[0]), (st.delta, where[1])):
        if pos.shape[0]:
            if on:
                cols.flags[pos] |= bit
            else:
                cols.flags[pos] &= np.uint8(~bit & 0xFF)


def _gather_events(ev_ptr: np.ndarray, ev_ts: np.ndarray, keep: np.ndarray) -> np.ndarray:
    counts = np.diff(ev_ptr)[keep]
    starts = ev_ptr[keep]
    idx = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
    return ev_ts[idx]


def _lookup_table(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted ids as int64, their positions in ids)``; no sort when ``ids`` is already ascending."""
    ids64 = ids.astype(np.int64, copy=False)
    if ids64.shape[0] < 2 or bool(np.all(ids64[1:] > ids64[:-1])):
        return ids64, np.arange(ids64.shape[0], dtype=np.int64)
    order = np.argsort(ids64, kind="stable")
    return ids64[order], order


def _positions(sorted_ids: np.ndarray, order: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Position of each queried id (via a :func:`_lookup_table`), -1 where absent."""
    out = np.full(query.shape[0], -1, dtype=np.int64)
    if sorted_ids.shape[0] == 0:
        return out
    k = np.minimum(np.searchsorted(sorted_ids, query), sorted_ids.shape[0] - 1)
    hit = sorted_ids[k] == query
    out[hit] = order[k[hit]]
    return out


def _rows_of(camera_ids: np.ndarray, ev_cam: np.ndarray, what: str) -> np.ndarray:
    """Row of each event's camera in ``camera_ids``; events naming an unknown camera raise."""
    rows = _positions(*_lookup_table(camera_ids), ev_cam)
    if (rows < 0).any():
        bad = np.unique(ev_cam[rows < 0])
        raise InvalidData(f"{what}: {int((rows < 0).sum())} event(s) name unknown camera id(s) {bad[:5].tolist()}")
    return rows


def _build_base(cols: CameraColumns, ev_row: np.ndarray, ev_ts: np.ndarray, has_events: bool,
                optout: np.ndarray, config: IndexConfig) -> tuple[_Base, dict[str, float]]:
    stages: dict[str, float] = {}
    t = time.perf_counter()
    if len(cols) == 0:
        raise InvalidData("cameras: the table is empty; an index needs at least one camera")
    check_unique(cols.camera_id, "cameras.camera_id")
    cells = h3x.latlng_to_cell(cols.lat, cols.lng, config.finest_res)
    stages["h3"] = time.perf_counter() - t
    t = time.perf_counter()
    order = _sort_order(cells, config.finest_res)
    stages["sort"] = time.perf_counter() - t
    t = time.perf_counter()
    sorted_cells = K.gather(cells, order)
    base_cols = _columns_from(cols, order, ev_row, ev_ts, has_events, optout)
    stages["gather"] = time.perf_counter() - t
    t = time.perf_counter()
    tree = _build_tree(sorted_cells, base_cols.xy, config)
    stages["tree"] = time.perf_counter() - t
    return _Base(base_cols, tree), stages


def _window_us(start: Any, end: Any, now: Any) -> tuple[int, int, int]:
    """Window and ``now`` as microseconds since 2000-01-01Z: ``(start, min(end, now), now)``."""
    s = to_utc_us(start, "start")
    e = to_utc_us(end, "end")
    n = to_utc_us(now, "now") if now is not None else to_utc_us(datetime.now(timezone.utc), "now")
    if e <= s:
        raise InvalidTimeWindow(f"window end {end} is not after its start {start}")
    if s > n:
        raise InvalidTimeWindow(f"window starts at {start}, after now ({now or 'the current time'}): "
                                "no footage of it can exist yet")
    return s - _EPOCH_US, min(e, n) - _EPOCH_US, n - _EPOCH_US

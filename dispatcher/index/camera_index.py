"""The camera index: cameras bucketed in H3 cells, resolved exactly against an area and a time window.

Design (the README explains the figures behind it):

- Points are sorted by their H3 cell at the finest of ``levels``. Above them sits an adaptive hierarchy of
  occupied H3 cells (:mod:`dispatcher.index.tree`). A query walks down from the top: a node whose box is wholly
  inside the area is accepted in one go, one wholly outside is skipped, and only leaves straddling the boundary
  have their points tested, exactly, one by one. Cost follows the answer and the boundary, not the size of the
  country.
- Columns are compact (:mod:`dispatcher.index.columns`) and saved as ``.npy`` files that :meth:`CameraIndex.open`
  memory-maps (:mod:`dispatcher.index.persist`), so several worker processes on one machine share one copy in
  the page cache.
- Live updates (add, remove, sharing, opt-out) are visible to the next resolve (:mod:`dispatcher.index.live`):
  flags change in place, added cameras sit in a small delta scanned by brute force, and :meth:`CameraIndex.merge`
  folds the delta into a new base, in the background or on demand.

:class:`CameraIndex` composes those modules: it holds the current :class:`~dispatcher.index.state.State`,
publishes a new one in a single assignment, and serialises updates and merges behind one lock.

Versions: :attr:`CameraIndex.version` is the change feed position (:mod:`dispatcher.service.feed`) of the last
change applied, 0 for an index as built. Every :class:`RecipientSet` names the version it was resolved at. Resolves
take no lock; each update is bracketed by a sequence counter (odd while an update runs), and a resolve that
overlapped one runs again, so the version it names is the state it read, never half of a change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from dispatcher.errors import DispatchError, IndexFormatError, InvalidData
from dispatcher.geo import h3 as h3x
from dispatcher.geo.area import Area, polygon_ring_xy
from dispatcher.index import inspection, live
from dispatcher.index.build import BuildStats, build_state
from dispatcher.index.config import IndexConfig
from dispatcher.index.geotables import TableSource, as_table
from dispatcher.index.persist import open_state, save_state
from dispatcher.index.recipients import RecipientSet
from dispatcher.index.schema import camera_columns, window_us
from dispatcher.index.state import Base, State
from kernels import index_kernels as K

__all__ = ["CameraIndex"]

log = logging.getLogger(__name__)


class CameraIndex:
    """A national camera index. Build with :meth:`build` or :meth:`from_parquet`, persist with :meth:`save`,
    share between processes with :meth:`open`, query with :meth:`resolve`."""

    def __init__(self, state: State, config: IndexConfig, build_stats: BuildStats | None = None) -> None:
        self._state = state
        self.config = config
        self.build_stats = build_stats
        self._lock = threading.RLock()
        self._journal: list[live.Update] | None = None  # updates made while a merge runs
        self._merge_thread: threading.Thread | None = None
        self._version = 0
        self._seq = 0  # odd while an update changes the state (see resolve)
        self._warmed = False  # warm_up ran: a merged state is warmed up too before it is published

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def build(cls, cameras: TableSource, owners: TableSource | None = None, events: TableSource | None = None, *,
              config: IndexConfig | None = None, progress: Callable[[str, int, int], None] | None = None
              ) -> CameraIndex:
        """Validate the tables and build an index. Each is an Arrow table, a Parquet path or a pandas DataFrame;
        the cameras' points are ``lat``/``lng`` columns or one geometry column of WGS84 points (GeoParquet, a
        GeoArrow column, a GeoDataFrame). Bad rows raise :class:`~dispatcher.errors.InvalidData` naming them;
        nothing is built then. ``progress(stage, done, total)``, when given, follows the build's stages."""
        config = config or IndexConfig()
        state, stats = build_state(cameras, owners, events, config, progress)
        return cls(state, config, stats)

    @classmethod
    def from_parquet(cls, directory: str | Path, *, config: IndexConfig | None = None,
                     with_events: bool = True, progress: Callable[[str, int, int], None] | None = None
                     ) -> CameraIndex:
        """Build from a directory holding ``cameras.parquet`` (plain or GeoParquet) and optionally
        ``owners.parquet`` and ``events.parquet`` (the layout ``geodispatch generate`` writes)."""
        d = Path(directory)
        if not (d / "cameras.parquet").exists():
            raise IndexFormatError(f"{d}: no cameras.parquet")
        owners = d / "owners.parquet"
        events = d / "events.parquet"
        return cls.build(d / "cameras.parquet", owners if owners.exists() else None,
                         events if with_events and events.exists() else None, config=config, progress=progress)

    # ------------------------------------------------------------------------------------------ querying

    def resolve(self, area: Any, start: datetime | str, end: datetime | str,
                now: datetime | str | None = None) -> RecipientSet:
        """The owners (and their cameras) that may hold footage of ``area`` during ``[start, end]``.

        A camera matches when its location is covered by the area (boundary included), it was installed at
        some moment of the window, footage of that moment is still retained at ``now`` (default: the current
        time), sharing is on, its owner has not opted out and, when motion events are loaded, it recorded an
        event in the retained part of the window.
        """
        limit = self.config.max_vertices
        # The usual GeoJSON Polygon of one ring goes to the compiled resolve as its positions: checked there as
        # Area.parse checks them (parse_area), or, when those checks cannot certify it, parsed below.
        xy = polygon_ring_xy(area, limit) if type(area) is dict else None
        if xy is None:
            # An Area was validated when it was made: only the vertex limit is this index's to check.
            a = area if type(area) is Area and area.xs.shape[0] <= limit else Area.parse(area, max_vertices=limit)
            t0, t1, tnow = window_us(start, end, now)
        else:
            a = None
            try:
                t0, t1, tnow = window_us(start, end, now)
            except (DispatchError, TypeError, ValueError):
                Area.parse(area, max_vertices=limit)  # a bad area is named before a bad window, as ever
                raise
        while True:
            seq = self._seq
            if seq & 1:  # an update is under way: its change is about to be complete
                time.sleep(0)
                continue
            version = self._version
            st = self._state
            if a is None:
                ring_call = st.ring_call
                if ring_call is not None:
                    packed, n_owners, n_cameras = ring_call(xy, t0, t1, tnow)
                if ring_call is None or n_owners == K.RING_NOT_CERTIFIED:
                    a = Area.parse(area, max_vertices=limit)  # decides, or names what is wrong
                    continue
            else:
                packed, n_owners, n_cameras = st.call(a.xs, a.ys, a.ring_ptr, a.poly_ptr, a.poly_bbox, t0, t1, tnow)
            if self._seq == seq:
                return RecipientSet.unpack(packed, n_owners, n_cameras, version)

    # ------------------------------------------------------------------------------------------ versions

    @property
    def version(self) -> int:
        """The change feed position of the last change applied (0: none since the build or snapshot)."""
        return self._version

    @contextmanager
    def changing(self, version: int) -> Iterator[None]:
        """Apply the updates made inside as the change at feed position ``version`` (greater than the current
        one): the version advances when the block ends, also when an update in it raised (the change is then
        refused as a whole, and its position consumed). Resolves see the state before or after, never between."""
        with self._lock:
            if version <= self._version:
                raise InvalidData(f"change at version {version}: the index is at {self._version} already")
            with self._writing():
                try:
                    yield
                finally:
                    self._version = version

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock:
            self._seq += 1
            try:
                yield
            finally:
                self._seq += 1

    def snapshot(self, path: str | Path) -> int:
        """Write the index as of now to directory ``path`` (as :meth:`save` does) while updates go on; returns the
        version written. The flags are copied under the lock (a few bytes a camera), the merge and the write
        run outside it."""
        with self._lock:
            st, version = self._state, self._version
            frozen = State(Base(replace(st.base.cols, flags=st.base.cols.flags.copy()), st.base.tree),
                           replace(st.delta, flags=st.delta.flags.copy()), st.optout.copy(), st.has_events)
        save_state(live.merged(frozen, self.config) if live.pending(frozen) else frozen, self.config, path)
        return version

    def adopt(self, other: CameraIndex) -> None:
        """Take ``other``'s state, configuration and version (a snapshot loaded to catch up), in one step for the
        resolves of this index."""
        if self._merge_thread is not None:
            self._merge_thread.join()
        with self._writing():
            self._state, self.config, self._version = other._state, other.config, other._version

    # ------------------------------------------------------------------------------------------ updates

    def add_cameras(self, cameras: TableSource, events: TableSource | None = None) -> None:
        """Add cameras (rows of the cameras schema, in any form :meth:`build` takes) and, when the index holds
        motion events, theirs (a camera without events then matches no request); visible to the next resolve.
        Ids must be new."""
        cols = camera_columns(as_table(cameras, "cameras"))
        events = as_table(events, "events")
        with self._writing():
            self._state, update = live.added(self._state, cols, events)
            self._record(*update)
        self._maybe_merge()

    def remove_cameras(self, camera_ids: Iterable[int]) -> None:
        """Remove cameras by id; unknown ids raise :class:`UnknownCamera` and nothing changes."""
        ids = np.asarray(list(camera_ids), dtype=np.int64)
        with self._writing():
            live.set_flag(self._state, live.locate(self._state, ids), K.DELETED, True)
            self._record("remove", ids, None)

    def set_sharing(self, camera_ids: Iterable[int], enabled: bool) -> None:
        """Turn sharing on or off for cameras by id."""
        ids = np.asarray(list(camera_ids), dtype=np.int64)
        with self._writing():
            live.set_flag(self._state, live.locate(self._state, ids), K.SHARING, enabled)
            self._record("sharing", ids, enabled)

    def apply_changes(self, changes: Sequence[tuple[str, Any, Any]], version: int) -> list[DispatchError | None]:
        """Apply a batch of changes, in order, as the change feed's entries up to position ``version``; what each
        one was refused with (None: applied). A change is ``("add", cameras, events)``, ``("remove", camera_ids,
        None)``, ``("sharing", camera_ids, enabled)`` or ``("optout", owner_ids, opted_out)``, each taken as the
        method of that name takes it and refused as it would be, as a whole (nothing of it applied, the rest goes
        on). Resolves see the index before the batch or after it, never between; the version advances to
        ``version`` also when every change was refused. One pass per kind of change, not per change
        (:func:`dispatcher.index.live.applied`): a thousand changes cost about what a few cost one at a time."""
        errors: list[DispatchError | None] = [None] * len(changes)
        updates: list[live.Update] = []
        at: list[int] = []  # the change each update comes from
        for k, (kind, a, b) in enumerate(changes):
            try:
                if kind == "add":
                    updates.append(("add", camera_columns(as_table(a, "cameras")), as_table(b, "events")))
                elif kind in ("remove", "sharing", "optout"):
                    ids = np.asarray(list(a) if not isinstance(a, np.ndarray) else a, dtype=np.int64)
                    updates.append((kind, ids, None if kind == "remove" else bool(b)))
                else:
                    raise InvalidData(f"change {k}: kind {str(kind)[:40]!r}; expected add, remove, sharing or optout")
            except DispatchError as exc:
                errors[k] = exc
                continue
            at.append(k)
        live.prepare(self._state)  # outside the update: resolves wait for none of its lookups being built
        with self.changing(version):
            self._state, refused, journal = live.applied(self._state, updates)
            for update in journal:
                self._record(*update)
        for k, err in zip(at, refused, strict=True):
            errors[k] = err
        self._maybe_merge()
        return errors

    def prepare_updates(self) -> None:
        """Build what live updates look cameras up with (by id, by owner) now rather than at the first update: at
        10M cameras a few seconds of sorting, which a follower of the change feed spends before it serves."""
        live.prepare(self._state)

    def camera(self, camera_id: int) -> tuple[int, float, float]:
        """``(owner id, lng, lat)`` of a live camera (the evidence store checks a clip's camera against it);
        unknown or removed: :class:`UnknownCamera`."""
        owners, xy = inspection.placed(self._state, np.asarray([camera_id], dtype=np.int64))
        return int(owners[0]), float(xy[0, 0]), float(xy[0, 1])

    def set_opted_out(self, owner_ids: Iterable[int], opted_out: bool = True) -> None:
        """Opt owners out of (or back into) every future request; takes effect at the next resolve."""
        ids = np.unique(np.asarray(list(owner_ids), dtype=np.int64))
        with self._writing():
            self._state = live.replay(self._state, "optout", ids, opted_out)
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

    def save(self, path: str | Path, *, replace: bool = False) -> Path:
        """Merge pending updates and write the index to directory ``path`` (created; must not hold an index,
        unless ``replace``: the index there is then replaced, and processes that opened it keep the old one)."""
        self.merge()
        return save_state(self._state, self.config, path, replace=replace)

    @classmethod
    def open(cls, path: str | Path, *, warm_up: bool = True, version: int = 0) -> CameraIndex:
        """Memory-map an index written by :meth:`save`. Worker processes opening the same directory share
        its pages; live updates stay private to the process (copy-on-write). ``version``: the change feed
        position the files include (a snapshot's)."""
        state, config = open_state(path)
        index = cls(state, config)
        index._version = version
        if warm_up:
            index.warm_up()
        return index

    def warm_up(self) -> None:
        """Compile (or load from Numba's disk cache) every query kernel, the H3 kernels and the kernels live
        updates run, so no query or update pays for it (the rules' own: :func:`dispatcher.workflow.policy.warm_up`,
        which a pipeline runs)."""
        h3x.warm_up()
        self._warm_up(self._state)
        self._warmed = True

    @staticmethod
    def _warm_up(st: State) -> None:
        """The resolve kernels for ``st``'s arrays, and those live updates run on them."""
        area = Area.parse({"type": "Polygon", "coordinates": [[[0, 0], [1e-9, 0], [0, 1e-9], [0, 0]]]})
        window = window_us("2020-01-01T00:00:00Z", "2020-01-01T01:00:00Z", "2020-01-02T00:00:00Z")
        st.warm_up(area.kernel_args(), *window)
        live.warm_up(st)

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

    def locations(self, camera_ids: Iterable[int]) -> np.ndarray:
        """``(n, 2)`` float64 longitude and latitude of live cameras, in the order given; unknown or removed ids
        raise :class:`UnknownCamera`."""
        return inspection.placed(self._state, np.asarray(list(camera_ids), dtype=np.int64))[1]

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """The H3 cells of the index leaves (of mixed resolutions: dense places get finer cells) and their
        camera counts."""
        return inspection.leaf_cells(self._state)

    def cells_used(self, area: Any) -> tuple[np.ndarray, np.ndarray]:
        """The H3 cells a resolve of ``area`` works with, as ``(cells, inside)`` in visit order: ``inside`` is True
        for a cell whose box lies wholly in the area (its cameras are taken without a point test) and False for a
        leaf straddling the boundary (each of its cameras is tested). The walk is the resolve's own
        (:func:`kernels.index_kernels.visit_nodes` decides each node as :func:`resolve_points` does); the inner
        cells it only passes through are left out, and so is the live delta, which has no cells."""
        return inspection.cells_used(self._state, Area.parse(area, max_vertices=self.config.max_vertices))

    def density(self, box: tuple[float, float, float, float], res: int,
                at: datetime | str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cameras in place at ``at`` (default: now; installed, not yet removed, not deleted), counted per H3 cell
        at ``res``: every cell holding such a camera inside ``box`` (``min_lng, min_lat, max_lng, max_lat``), with
        all of its cameras counted, those outside the box too. ``(cells, counts)``, ascending by cell."""
        return inspection.density(self._state, box, res, at, self.config.max_vertices)

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
            if not live.pending(st):  # nothing to fold: the base stays as it is
                return
            self._journal = []
        try:
            new = live.merged(st, self.config)
            live.prepare(new)
            if self._warmed:  # a new base, maybe of other array types: compiled here, not in a resolve
                self._warm_up(new)
            with self._writing():
                # Replay what happened meanwhile onto the new state, then publish it in one assignment:
                # resolves do not take the lock, so they must never see a half-replayed state.
                for kind, a, b in self._journal or ():
                    new = live.replay(new, kind, a, b)
                self._journal = None
                self._state = new
        finally:
            self._journal = None

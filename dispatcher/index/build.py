"""Building an index: validate the tables, compute each camera's H3 cell, sort the cameras by it, gather the
columns in that order and build the tree over them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from dispatcher.errors import InvalidData
from dispatcher.geo import h3 as h3x
from dispatcher.index.columns import EMPTY_I32, EMPTY_I64, columns_from, empty_columns, rows_of
from dispatcher.index.config import IndexConfig
from dispatcher.index.geotables import TableSource, as_table
from dispatcher.index.schema import (
    CAMERA_SCHEMA,
    EVENT_SCHEMA,
    OWNER_SCHEMA,
    CameraColumns,
    camera_columns,
    event_columns,
    opted_out_owners,
)
from dispatcher.index.state import Base, State
from dispatcher.index.tree import build_tree, sort_positions

log = logging.getLogger(__name__)

__all__ = ["STAGES", "BuildStats", "build_base", "build_state"]

#: The stages of a build, in order: ``progress("index", k, len(STAGES))`` as each ends.
STAGES = ("read", "validate", "h3", "sort", "gather", "tree")


@dataclass(frozen=True)
class BuildStats:
    """What a build made and took: cameras, leaves and nodes of the tree, seconds in all and per stage."""

    cameras: int
    leaves: int
    nodes: int
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)


def build_state(cameras: TableSource, owners: TableSource | None, events: TableSource | None,
                config: IndexConfig, progress: Callable[[str, int, int], None] | None = None
                ) -> tuple[State, BuildStats]:
    """Validate the tables (Arrow tables, (Geo)Parquet paths or (Geo)DataFrames) and build the state of a new
    index, with no delta. Bad rows raise :class:`~dispatcher.errors.InvalidData` naming them; nothing is built
    then. ``progress``, when given, is called at the start and as each of the :data:`STAGES` ends."""
    t_start = time.perf_counter()
    stages: dict[str, float] = {}

    def lap(name: str, t: float) -> float:
        now = time.perf_counter()
        stages[name] = now - t
        tick()
        return now

    def tick() -> None:
        if progress is not None:
            progress("index", len(stages) + len(base_stages), len(STAGES))

    base_stages: dict[str, float] = {}
    tick()
    t = t_start
    reads = isinstance(cameras, (str, Path))
    warm = _warm_up(config, events is not None) if reads else None
    try:
        cam_table = as_table(cameras, "cameras")
        owner_table = as_table(owners, "owners")
        event_table = as_table(events, "events")
    finally:
        if warm is not None:
            warm.join()
    if cam_table is None:
        raise InvalidData("cameras: a table or a Parquet path is required")
    t = lap("read", t)
    cols = camera_columns(cam_table, owner_table)
    optout = opted_out_owners(owner_table) if owner_table is not None else EMPTY_I64
    if event_table is not None:
        ev_cam, ev_ts = event_columns(event_table)
        ev_row = rows_of(cols.camera_id, ev_cam, "events")
    else:
        ev_row, ev_ts = EMPTY_I64, EMPTY_I32
    t = lap("validate", t)
    base, _ = build_base(cols, ev_row, ev_ts, event_table is not None, optout, config, base_stages, tick)
    stages.update(base_stages)
    stats = BuildStats(cameras=len(cols), leaves=int(base.tree.leaves.sum()), nodes=base.tree.n_nodes,
                       seconds=time.perf_counter() - t_start, stages=stages)
    log.info("built index of %d cameras in %.2f s (%s)", stats.cameras, stats.seconds, stages)
    return State(base, empty_columns(event_table is not None), optout, event_table is not None), stats


def build_base(cols: CameraColumns, ev_row: np.ndarray, ev_ts: np.ndarray, has_events: bool,
               optout: np.ndarray, config: IndexConfig, stages: dict[str, float] | None = None,
               tick: Callable[[], None] = lambda: None) -> tuple[Base, dict[str, float]]:
    """The base over validated columns (events as rows of ``cols``), and the seconds each stage took, recorded
    into ``stages`` when given; ``tick()`` as each stage ends. The camera ids are unique already:
    :func:`~dispatcher.index.schema.camera_columns` checked them, and a live update refuses an id the index holds
    (checking them again here cost a 10M build ~10 ms)."""
    stages = {} if stages is None else stages
    t = time.perf_counter()
    if len(cols) == 0:
        raise InvalidData("cameras: the table is empty; an index needs at least one camera")
    cells = h3x.latlng_to_cell(cols.lat, cols.lng, config.finest_res)
    stages["h3"] = time.perf_counter() - t
    tick()
    t = time.perf_counter()
    inverse, sorted_cells = sort_positions(cells, config.finest_res)
    stages["sort"] = time.perf_counter() - t
    tick()
    t = time.perf_counter()
    base_cols = columns_from(cols, inverse, ev_row, ev_ts, has_events, optout)
    stages["gather"] = time.perf_counter() - t
    tick()
    t = time.perf_counter()
    tree = build_tree(sorted_cells, base_cols.xy, config)
    stages["tree"] = time.perf_counter() - t
    tick()
    return Base(base_cols, tree), stages


def _warm_up(config: IndexConfig, with_events: bool) -> threading.Thread:
    """A thread, started, that builds an index of two cameras (with an event each when ``with_events``) through
    the same steps, and so loads the build's kernels from Numba's cache, after Numba's first set-up of its
    compiler (together ~0.4 s of a command's start), while the caller reads the Parquet tables: Arrow reads
    without holding the GIL. The caller joins it before it validates: the stage ``read`` then lasts as long as the
    longer of the two. A failure here is logged and changes nothing: the build itself loads what it needs."""

    def run() -> None:
        cams = _table(CAMERA_SCHEMA, camera_id=[1, 2], owner_id=[1, 2], lat=[40.0, 40.001], lng=[-75.0, -75.001],
                      installed_at=[1_735_689_600] * 2, removed_at=[None, 1_767_225_600], retention_days=[30, 30],
                      sharing_enabled=[True, False])
        owners = _table(OWNER_SCHEMA, owner_id=[1, 2], opted_out=[False, True])
        events = _table(EVENT_SCHEMA, camera_id=[1, 2], ts=[1_740_000_000] * 2) if with_events else None
        try:
            build_state(cams, owners, events, config)
        except Exception:  # the real build meets the same error, if it is one, and reports it
            log.warning("the build's warm-up failed", exc_info=True)

    thread = threading.Thread(target=run, name="build-warm-up", daemon=True)
    thread.start()
    return thread


def _table(schema: pa.Schema, **columns: list[object]) -> pa.Table:
    """A small table of ``schema`` made from its buffers: Arrow's conversion of Python or numpy values imports
    pandas (a quarter of a second), which nothing else in a build needs."""
    arrays = []
    for f in schema:
        values = columns[f.name]
        valid = np.array([v is not None for v in values])
        dtype = np.bool_ if pa.types.is_boolean(f.type) else np.float64 if pa.types.is_floating(f.type) else \
            np.dtype(f"i{f.type.bit_width // 8}")
        data = np.array([0 if v is None else v for v in values], dtype)
        buffers = [None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little")),
                   pa.py_buffer(np.packbits(data, bitorder="little") if dtype is np.bool_ else data)]
        arrays.append(pa.Array.from_buffers(f.type, len(values), buffers))
    return pa.Table.from_arrays(arrays, schema=schema)

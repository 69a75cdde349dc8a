"""Building an index: validate the tables, compute each camera's H3 cell, sort the cameras by it, gather the
columns in that order and build the tree over them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dispatcher.errors import InvalidData
from dispatcher.geo import h3 as h3x
from dispatcher.index.columns import EMPTY_I32, EMPTY_I64, columns_from, empty_columns, rows_of
from dispatcher.index.config import IndexConfig
from dispatcher.index.geotables import TableSource, as_table
from dispatcher.index.schema import CameraColumns, camera_columns, check_unique, event_columns, opted_out_owners
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
    cam_table = as_table(cameras, "cameras")
    owner_table = as_table(owners, "owners")
    event_table = as_table(events, "events")
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
    into ``stages`` when given; ``tick()`` as each stage ends."""
    stages = {} if stages is None else stages
    t = time.perf_counter()
    if len(cols) == 0:
        raise InvalidData("cameras: the table is empty; an index needs at least one camera")
    check_unique(cols.camera_id, "cameras.camera_id")
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

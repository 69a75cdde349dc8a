"""What the maps show of an index: its leaf cells, the cells a resolve of an area works with, camera density,
where given cameras are.

Everything here walks the tree exactly as the resolve does (:func:`kernels.index_kernels.visit_nodes` decides
each node as :func:`kernels.index_kernels.resolve_points` does) and reads the state; nothing changes it.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import shapely

from dispatcher.errors import InvalidArea
from dispatcher.geo import h3 as h3x
from dispatcher.geo.area import Area
from dispatcher.index.live import live_positions
from dispatcher.index.schema import EPOCH_US, to_utc_us
from dispatcher.index.state import State
from kernels import index_kernels as K
from kernels.geometry import BOX_IN

__all__ = ["cells_used", "density", "leaf_cells", "placed"]


def leaf_cells(st: State) -> tuple[np.ndarray, np.ndarray]:
    """The H3 cells of the base's leaves and their camera counts."""
    tree = st.base.tree
    leaf = tree.leaves
    counts = tree.nodes["p1"][leaf].astype(np.int64) - tree.nodes["p0"][leaf]
    return np.asarray(tree.node_cell[leaf]), counts


def placed(st: State, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(owners, xy)`` of the live cameras ``ids``, in their order: their owner ids and ``(n, 2)`` longitude and
    latitude; unknown or removed raise."""
    base, delta, base_live, _ = live_positions(st, ids)
    owners = np.empty(ids.shape[0], np.int64)
    xy = np.empty((ids.shape[0], 2), np.float64)
    owners[base_live], xy[base_live] = st.base.cols.owner[base[base_live]], st.base.cols.xy[base[base_live]]
    owners[~base_live], xy[~base_live] = st.delta.owner[delta[~base_live]], st.delta.xy[delta[~base_live]]
    return owners, xy


def cells_used(st: State, area: Area) -> tuple[np.ndarray, np.ndarray]:
    """``(cells, inside)`` in visit order: the cells wholly inside ``area`` and the leaves straddling its
    boundary (see :meth:`dispatcher.index.CameraIndex.cells_used`)."""
    tree = st.base.tree
    node, cls = K.visit_nodes(*area.kernel_args(), tree.nodes, tree.n_top)
    rec = tree.nodes[node]
    keep = (cls == BOX_IN) | (rec["k0"] == rec["k1"])
    return np.asarray(tree.node_cell[node[keep]]), cls[keep] == BOX_IN


def density(st: State, box: tuple[float, float, float, float], res: int, at: datetime | str | None,
            max_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Cameras in place at ``at`` counted per H3 cell at ``res`` (see :meth:`dispatcher.index.CameraIndex.density`)."""
    at_s = (to_utc_us(at if at is not None else datetime.now(timezone.utc), "at") - EPOCH_US) // 1_000_000
    lng, lat = _in_place(st, box, at_s, max_vertices)
    cells = np.unique(h3x.latlng_to_cell(lat, lng, res))
    if cells.shape[0] == 0:
        return cells, np.zeros(0, np.int64)
    verts, _ = h3x.cell_to_boundary(cells)  # every camera of these cells lies inside their boundaries' box
    wide = (float(np.nanmin(verts[:, :, 1])), float(np.nanmin(verts[:, :, 0])), float(np.nanmax(verts[:, :, 1])),
            float(np.nanmax(verts[:, :, 0])))
    lng, lat = _in_place(st, wide, at_s, max_vertices)
    all_cells = h3x.latlng_to_cell(lat, lng, res)
    got, counts = np.unique(all_cells[np.isin(all_cells, cells)], return_counts=True)
    return got, counts.astype(np.int64)


def _in_place(st: State, box: tuple[float, float, float, float], at_s: int,
              max_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lng, lat)`` of the cameras in place at ``at_s`` (seconds since 2000-01-01Z) inside the closed box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise InvalidArea(f"box {box} must have min_lng < max_lng and min_lat < max_lat")
    rect = Area.parse(shapely.box(x0, y0, x1, y1), max_vertices=max_vertices)
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

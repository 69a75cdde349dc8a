"""The adaptive H3 hierarchy over the cameras (see :mod:`kernels.index_kernels`).

Cameras are sorted by their H3 cell at the finest of the configured levels. Above them sits a tree of occupied
cells: the top level at the coarsest resolution, and any cell holding more than the leaf capacity split into
its cells at the next resolution. Each node stores the bounding box of its own cameras.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dispatcher.errors import InvalidData
from dispatcher.index.config import IndexConfig
from kernels import index_kernels as K

__all__ = ["Tree", "build_tree", "sort_order"]


@dataclass
class Tree:
    """The nodes of the hierarchy, in the kernels' layout."""

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


def build_tree(cells_sorted: np.ndarray, xy: np.ndarray, config: IndexConfig) -> Tree:
    """The tree over cameras at ``xy`` whose finest-level cells, ``cells_sorted``, ascend."""
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
    return Tree(node_cell=node_cell, nodes=nodes, n_top=int(n_top))


def sort_order(cells: np.ndarray, res: int) -> np.ndarray:
    """A stable order that sorts ``cells`` (all at ``res``). Packs (cell digits, row) into one uint64 when it
    fits and sorts those with numpy's vectorised sort rather than a stable argsort of the cells."""
    n = cells.shape[0]
    row_bits = max(1, int(n - 1).bit_length())
    if 7 + 3 * res + row_bits > 64:
        return np.argsort(cells, kind="stable")
    packed = K.pack_cell_rows(cells, res, row_bits)
    packed.sort()
    return np.asarray(K.unpack_rows(packed, row_bits))

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

__all__ = ["Tree", "build_tree", "sort_positions"]


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


def build_tree(cells_sorted: np.ndarray, xy: np.ndarray, config: IndexConfig) -> Tree:
    """The tree over cameras at ``xy`` whose finest-level cells, ``cells_sorted``, ascend."""
    node_cell, box, pt, kids, n_top = K.build_tree(cells_sorted, xy, np.asarray(config.levels, np.int64),
                                                   config.leaf_capacity)
    if max(cells_sorted.shape[0], node_cell.shape[0]) >= 2**31:
        raise InvalidData(f"{cells_sorted.shape[0]:,} cameras: an index holds fewer than 2**31")
    nodes = np.empty(node_cell.shape[0], dtype=K.NODE_DTYPE)
    K.node_records(box, pt, kids, nodes)  # float32 boxes that contain the float64 ones
    return Tree(node_cell=node_cell, nodes=nodes, n_top=int(n_top))


def sort_positions(cells: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``cells`` (all at ``res``, at least one) goes in a stable sort of them, and the cells in that
    order. Packs (cell digits, row) into one uint64 when it fits and sorts those with numpy's vectorised sort
    rather than a stable argsort of the cells; the sorted cells then come out of the sorted keys, without a
    gather by row. ``cells`` is used as scratch (the sorted cells are written over it when they fit)."""
    n = cells.shape[0]
    row_bits = max(1, int(n - 1).bit_length())
    if 7 + 3 * res + row_bits > 64:
        order = np.argsort(cells, kind="stable")
        inverse = np.empty(n, dtype=np.int64)
        inverse[order] = np.arange(n, dtype=np.int64)
        return inverse, K.gather(cells, order)
    high = np.uint64(int(cells[0]) & ~((1 << 52) - 1))  # mode and resolution bits, above the base cell's
    K.pack_cell_rows(cells, res, row_bits)
    cells.sort()
    return K.unpack_cells(cells, row_bits, res, high), cells

"""What a resolve reads: the base (columns in leaf-cell order and the tree over them), the live delta, the
opted-out owners, and the compiled resolve bound to them.

A state is replaced, never changed in structure, by one assignment: resolves take no lock, so they see either
the old state or the new one. Only flags change in place (see :mod:`dispatcher.index.live`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dispatcher.index.columns import Columns, lookup_table
from dispatcher.index.tree import Tree
from kernels import index_kernels as K

__all__ = ["Base", "State"]


@dataclass
class Base:
    cols: Columns
    tree: Tree
    _lookup: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sorted camera ids, their positions)``, built on first use (the first live update)."""
        if self._lookup is None:
            self._lookup = lookup_table(self.cols.camera)
        return self._lookup


@dataclass
class State:
    base: Base
    delta: Columns
    optout: np.ndarray  # sorted int64 owner ids
    has_events: bool
    #: The kernel arguments after the area's and before the window's, built once per state.
    args: tuple[Any, ...] = field(init=False, repr=False)
    #: The resolve kernel for this state: without the delta's arrays while it holds no camera.
    kernel: Any = field(init=False, repr=False)

    #: The compiled resolve for these argument types, called without Numba's per-call type dispatch.
    _entry: Any = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        base = (*self.base.tree.kernel_args(), *self.base.cols.kernel_args(), self.base.cols.camera)
        self.args = base if self.delta.n == 0 else (*base, *self.delta.kernel_args(), self.delta.camera)
        self.kernel = K.resolve_base if self.delta.n == 0 else K.resolve
        table = self._table() if self.delta.n == 0 else None
        if table is not None:  # eight arrays as one: what a small area's resolve costs is mostly taking arguments
            self.args = (table, self.base.tree.n_top, self.base.cols.owner, self.base.cols.camera)
            self.kernel = K.resolve_table

    def _table(self) -> np.ndarray | None:
        """The addresses and lengths of the base's arrays for :func:`kernels.index_kernels.resolve_table`, or None
        when one of them is not laid out as it reads them (then the kernel that takes them as arrays runs). The
        arrays stay referenced by this state, which never replaces them, so the addresses stay valid."""
        arrays = {"nodes": self.base.tree.nodes, **{n: getattr(self.base.cols, n) for n, _ in K.TABLE_DTYPES[1:]}}
        n = self.base.cols.n
        table = []
        for name, dtype in K.TABLE_DTYPES:
            a = arrays[name]
            if a.dtype != dtype or not a.flags.c_contiguous or a.shape[1:] != ((2,) if name == "xy" else ()):
                return None
            per_camera = name not in ("nodes", "ev_ptr", "ev_ts")
            if per_camera and a.shape[0] != n or name == "ev_ptr" and a.shape[0] not in (0, n + 1):
                return None
            table += [a.ctypes.data, a.shape[0]]
        return np.array(table, dtype=np.int64)

    def warm_up(self, area_args: tuple[Any, ...], t0: int, t1: int, tnow: int) -> None:
        """Compile (or load from the cache) both resolve kernels for this state's arrays: the one it uses, and
        the one a state with cameras in its delta uses, so that the first live addition does not pay for it."""
        self.resolve(area_args, t0, t1, tnow)
        base = (*self.base.tree.kernel_args(), *self.base.cols.kernel_args(), self.base.cols.camera)
        K.resolve(*area_args, *base, *self.delta.kernel_args(), self.delta.camera, t0, t1, tnow)

    def resolve(self, area_args: tuple[Any, ...], t0: int, t1: int, tnow: int) -> tuple[np.ndarray, int, int]:
        """The resolve kernel on this state: owners, cameras and offsets packed in one array, and the numbers of
        owners and cameras (:func:`kernels.index_kernels.group_by_owner`). The first call goes through Numba's
        dispatcher (compiling or loading from the cache), later ones straight to the compiled entry point of the
        signature it chose: the area's arrays and the window's integers always have the same types, and this
        state's arrays never change type, so typing the arguments again on every call would only add to a small
        query's latency."""
        entry = self._entry
        if entry is not None:
            got: tuple[np.ndarray, int, int] = entry(*area_args, *self.args, t0, t1, tnow)
            return got
        kernel = self.kernel
        out: tuple[np.ndarray, int, int] = kernel(*area_args, *self.args, t0, t1, tnow)
        sig = tuple(kernel.typeof_pyval(a) for a in (*area_args, *self.args, t0, t1, tnow))
        self._entry = kernel.overloads[sig].entry_point
        return out

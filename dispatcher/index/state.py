"""What a resolve reads: the base (columns in leaf-cell order and the tree over them), the live delta, the
opted-out owners, and the compiled resolve bound to them.

A state is replaced, never changed in structure, by one assignment: resolves take no lock, so they see either
the old state or the new one. Only flags change in place (see :mod:`dispatcher.index.live`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
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
    #: The kernel's arguments before the request's (the area's arrays and the window), built once per state.
    args: tuple[Any, ...] = field(init=False, repr=False)
    #: The resolve kernel for this state: without the delta's arrays while it holds no camera.
    kernel: Any = field(init=False, repr=False)
    #: ``call(xs, ys, ring_ptr, poly_ptr, poly_bbox, t0, t1, now)``: the resolve on this state (see :meth:`resolve`).
    call: Callable[..., tuple[np.ndarray, int, int]] = field(init=False, repr=False)
    #: ``ring_call(xy, t0, t1, now)``: :func:`kernels.index_kernels.resolve_table_ring` on this state, the area's
    #: one ring checked in the same call; None when the base is not one table (then areas are parsed first).
    ring_call: Callable[..., tuple[np.ndarray, int, int]] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        base = (*self.base.tree.kernel_args(), *self.base.cols.kernel_args(), self.base.cols.camera)
        self.args = base if self.delta.n == 0 else (*base, *self.delta.kernel_args(), self.delta.camera)
        self.kernel = K.resolve_base if self.delta.n == 0 else K.resolve
        table = self._table() if self.delta.n == 0 else None
        self.ring_call = None
        if table is not None:  # the base in one array: what a small area's resolve costs is mostly taking arguments
            self.args = (table,)
            self.kernel = K.resolve_table
            self.ring_call = _first_call(self, "ring_call", K.resolve_table_ring, self.args)
        self.call = _first_call(self, "call", self.kernel, self.args)

    def _table(self) -> np.ndarray | None:
        """The base for :func:`kernels.index_kernels.resolve_table`: its arrays' addresses and lengths, the number
        of top-level nodes and the ids' widths; or None when an array is not laid out as the kernel reads it (then
        the kernel that takes them as arrays runs). The arrays stay referenced by this state, which never replaces
        them, so the addresses stay valid."""
        cols = self.base.cols
        arrays = {"nodes": self.base.tree.nodes, **{n: getattr(cols, n) for n, _ in K.TABLE_DTYPES[1:]}}
        n = cols.n
        table = []
        for name, dtype in K.TABLE_DTYPES:
            a = arrays[name]
            if a.dtype != dtype or not a.flags.c_contiguous or a.shape[1:] != ((2,) if name == "xy" else ()):
                return None
            per_camera = name not in ("nodes", "ev_ptr", "ev_ts")
            if per_camera and a.shape[0] != n or name == "ev_ptr" and a.shape[0] not in (0, n + 1):
                return None
            table += [a.ctypes.data, a.shape[0]]
        ids = (cols.owner, cols.camera)
        for a in ids:
            if a.dtype not in (np.int32, np.int64) or not a.flags.c_contiguous or a.shape != (n,):
                return None
            table += [a.ctypes.data, a.shape[0]]
        table += [self.base.tree.n_top, *(a.dtype.itemsize for a in ids)]
        return np.array(table, dtype=np.int64)

    def warm_up(self, area_args: tuple[Any, ...], t0: int, t1: int, tnow: int) -> None:
        """Compile (or load from the cache) the resolve kernels for this state's arrays: the one it uses (and the
        one taking a ring, when it has it), and the one a state with cameras in its delta uses, so that the first
        live addition does not pay for it."""
        self.resolve(area_args, t0, t1, tnow)
        if self.ring_call is not None:
            xs, ys = area_args[0], area_args[1]
            self.ring_call(np.column_stack((xs, ys)), t0, t1, tnow)
        base = (*self.base.tree.kernel_args(), *self.base.cols.kernel_args(), self.base.cols.camera)
        K.resolve(*base, *self.delta.kernel_args(), self.delta.camera, *area_args, t0, t1, tnow)

    def resolve(self, area_args: tuple[Any, ...], t0: int, t1: int, tnow: int) -> tuple[np.ndarray, int, int]:
        """The resolve kernel on this state: owners, cameras and offsets packed in one array, and the numbers of
        owners and cameras (:func:`kernels.index_kernels.group_by_owner`)."""
        return self.call(*area_args, t0, t1, tnow)


def _first_call(state: State, name: str, kernel: Any, bound: tuple[Any, ...]) -> Callable[..., Any]:
    """What ``state.<name>`` is until its first call: that call goes through Numba's dispatcher (compiling or
    loading from the cache) and then binds ``state.<name>`` to the compiled entry point of the signature it
    chose, with ``bound`` (this state's arguments) in front (``functools.partial``): the request's arrays and the
    window's integers always have the same types, and this state's arrays never change type, so typing the
    arguments again on every call would only add to a small query's latency. Two threads making the first call at
    once bind the same entry point."""
    def first(*request: Any) -> Any:
        out = kernel(*bound, *request)
        sig = tuple(kernel.typeof_pyval(a) for a in (*bound, *request))
        setattr(state, name, partial(kernel.overloads[sig].entry_point, *bound))
        return out
    return first

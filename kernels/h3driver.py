"""The one parallel loop behind every H3 array function: :func:`elementwise` runs a per-element kernel over arrays.

A kernel is written once, for one element, and stays callable from other kernels; its array form is generated here,
with the compile flags (``parallel=True``, Numba's disk cache) set in this one place.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange
from numba.core.caching import FunctionCache


def _sources_digest() -> bytes:
    """A digest of every H3 kernel module's source (a driver's compiled code holds its kernel and all it calls)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("h3*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.digest()


_SOURCES = _sources_digest()


class _KernelKeyedCache(FunctionCache):
    """Numba's disk cache for one driver, keyed by what the driver compiles rather than by the objects it closes over.

    Numba keys a closure's entries by pickling its free variables, and a compiled kernel pickles to different bytes in
    every process (it carries a fresh id), so a driver closing over its kernel would never be found again. This key
    is the driver's bytecode, its kernel's qualified name and output types, and the source of every H3 kernel module
    instead: the same from one process to the next, and changed by an edit to any kernel the driver inlines (which
    Numba, watching only the file a function is defined in, would not notice).
    """

    def __init__(self, py_func: Any, identity: str) -> None:
        super().__init__(py_func)
        self._identity = hashlib.sha256(identity.encode() + b"\0" + _SOURCES).hexdigest()

    def _index_key(self, sig: Any, codegen: Any) -> tuple[Any, ...]:
        bytecode = hashlib.sha256(self._py_func.__code__.co_code).hexdigest()
        return sig, codegen.magic_tuple(), (bytecode, self._identity)


def elementwise(kernel: Any, out: Any, *, arrays: int = 1, name: str | None = None) -> Any:
    """The array form of a per-element kernel: ``f(a[, b], *params)[n]`` is ``kernel(a[n][, b[n]], *params)``.

    The first ``arrays`` (1 or 2) arguments are arrays of one length, taken element by element (an element of a
    multi-dimensional array is a row, which the kernel may write into); the remaining arguments go to every call
    unchanged. ``out`` is the dtype of the kernel's result, or a pair of dtypes for a kernel that returns a pair
    (then ``f`` returns two arrays). ``f`` runs on every Numba thread, is cached on disk, and is named ``name``
    (default: the kernel's name with ``_array``).
    """
    if arrays not in (1, 2):
        raise ValueError(f"a driver takes 1 or 2 arrays element by element, not {arrays!r}")
    pair = isinstance(out, tuple)
    if pair and len(out) != 2:
        raise ValueError(f"a driver stores one result or a pair, not {len(out)}")
    first, second = (np.dtype(out[0]), np.dtype(out[1])) if pair else (np.dtype(out), np.dtype(np.bool_))
    two = arrays == 2
    kernel_name = kernel.py_func.__name__

    def driver(a, *rest):  # ``two`` and ``pair`` are constants: Numba compiles only the branches they take
        size = a.shape[0]
        out0 = np.empty(size, dtype=first)
        out1 = np.empty(size if pair else 0, dtype=second)
        for n in prange(size):
            if two:
                value = kernel(a[n], rest[0][n], *rest[1:])
            else:
                value = kernel(a[n], *rest)
            if pair:
                out0[n], out1[n] = value
            else:
                out0[n] = value
        if pair:
            return out0, out1
        return out0

    driver.__name__ = driver.__qualname__ = name or f"{kernel_name}_array"  # its own cache files
    driver.__doc__ = f":func:`{kernel_name}` element by element, on every Numba thread."
    compiled = njit(parallel=True)(driver)
    # Numba has no option for a cache key; the dispatcher's cache is replaced before anything is compiled.
    compiled._cache = _KernelKeyedCache(driver, f"{kernel.py_func.__module__}.{kernel.py_func.__qualname__} "
                                                f"{arrays} {first} {second if pair else ''}")
    return compiled

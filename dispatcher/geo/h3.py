"""H3 cell arithmetic for the index, validated here and computed by the Numba kernels of :mod:`kernels.h3core`.

Every function is bit-exact with h3-py's function of the same name (the tests check it on millions of points and
on the hard places: pentagons, poles, the antimeridian, icosahedron edges, cell vertices). Input is checked
before any compiled code runs: bad coordinates raise :class:`InvalidCoordinates`, a resolution outside 0..15 (or a
grid distance outside 0..1000) :class:`InvalidResolution`, an integer that is not a valid cell :class:`InvalidCell`,
each naming the first offending value.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dispatcher.errors import InvalidCell, InvalidCoordinates, InvalidResolution
from kernels import h3core as _k

MAX_RES = _k.MAX_RES


def _check_res(res: Any, lo: int = 0, what: str = "H3 resolution") -> int:
    if isinstance(res, bool) or not isinstance(res, (int, np.integer)) or not lo <= int(res) <= MAX_RES:
        raise InvalidResolution(f"{what} must be an integer in {lo}..{MAX_RES}, got {res!r}")
    return int(res)


def _as_cells(cells: Any) -> np.ndarray:
    """A 1-D uint64 array of valid cells (raises :class:`InvalidCell` naming the first invalid one)."""
    arr = np.asarray(cells)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype.kind == "i":
        if arr.size and int(arr.min()) < 0:
            i = int(np.argmin(arr))
            raise InvalidCell(f"{int(arr[i])} at position {i} is negative, not an H3 cell")
        arr = arr.astype(np.uint64)
    elif arr.dtype != np.uint64:
        raise InvalidCell(f"cells must be unsigned 64-bit integers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    ok = _k.is_valid_cell_array(arr)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise InvalidCell(f"{int((~ok).sum())} value(s) are not valid H3 cells, first at position {i}: "
                          f"{int(arr[i]):#x}")
    return arr


def _as_cell(cell: Any) -> np.uint64:
    return np.uint64(_as_cells(np.array([cell], dtype=np.uint64 if isinstance(cell, (int, np.integer))
                                        and int(cell) >= 0 else None))[0])


def _as_points(lat: Any, lng: Any) -> tuple[np.ndarray, np.ndarray]:
    lat = np.ascontiguousarray(lat, dtype=np.float64)
    lng = np.ascontiguousarray(lng, dtype=np.float64)
    if lat.shape != lng.shape or lat.ndim != 1:
        raise InvalidCoordinates(f"lat and lng must be 1-D arrays of one length, got {lat.shape} and {lng.shape}")
    bad = _k.invalid_latlng_array(lat, lng)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidCoordinates(f"{int(bad.sum())} point(s) with NaN, infinite or out-of-range coordinates, "
                                 f"first at position {i}: lat {lat[i]}, lng {lng[i]}")
    return lat, lng


def latlng_to_cell(lat: Any, lng: Any, res: int) -> np.ndarray:
    """The H3 cell (uint64) of each point (degrees) at ``res``, on every core; h3-py's ``latlng_to_cell``."""
    res = _check_res(res)
    lat, lng = _as_points(lat, lng)
    return np.asarray(_k.latlng_to_cell_array(lat, lng, res))


def _check_coarser(cells: np.ndarray, res: int) -> None:
    if cells.size and int(_k.get_resolution_array(cells).min()) < res:
        raise InvalidResolution(f"parent resolution {res} is finer than some of the cells")


def _check_finer(cells: np.ndarray, res: int) -> None:
    if cells.size and int(_k.get_resolution_array(cells).max()) > res:
        raise InvalidResolution(f"child resolution {res} is coarser than some of the cells")


def cell_to_parent(cells: Any, res: int) -> np.ndarray:
    """The ancestor of each cell at ``res`` (not finer than the cell)."""
    res = _check_res(res)
    arr = _as_cells(cells)
    _check_coarser(arr, res)
    return np.asarray(_k.cell_to_parent_array(arr, res))


def cell_to_children_range(cells: Any, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest index (inclusive) among each cell's descendants at ``res``.

    Every descendant lies in the range, and every valid cell at ``res`` in the range is a descendant, so a
    sorted array of res-``res`` cells is cut into a cell's children by two binary searches.
    """
    res = _check_res(res)
    arr = _as_cells(cells)
    _check_finer(arr, res)
    lo, hi = _k.cell_to_children_range_array(arr, res)
    return np.asarray(lo), np.asarray(hi)


def get_resolution(cells: Any) -> np.ndarray:
    return np.asarray(_k.get_resolution_array(_as_cells(cells)), dtype=np.int8)


def get_base_cell_number(cells: Any) -> np.ndarray:
    return np.asarray(_k.get_base_cell_number_array(_as_cells(cells)), dtype=np.int8)


def is_pentagon(cells: Any) -> np.ndarray:
    return np.asarray(_k.is_pentagon_array(_as_cells(cells)))


def is_valid_cell(cells: Any) -> np.ndarray:
    """Whether each value is a valid H3 cell (never raises for a well-typed integer array)."""
    arr = np.ascontiguousarray(np.asarray(cells).reshape(-1).astype(np.uint64, casting="unsafe"))
    return np.asarray(_k.is_valid_cell_array(arr))


def cell_to_latlng(cells: Any) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the cells as ``(lat, lng)`` degree arrays."""
    lat, lng = _k.cell_to_latlng_array(_as_cells(cells))
    return np.asarray(lat), np.asarray(lng)


def cell_to_boundary(cells: Any) -> tuple[np.ndarray, np.ndarray]:
    """Boundaries: ``verts`` (n, 10, 2) of ``(lat, lng)`` degrees, NaN-padded, and ``counts`` (n,)."""
    lat, lng = _k.cell_to_boundary_array(_as_cells(cells))
    return np.asarray(lat), np.asarray(lng)


def grid_disk(cell: Any, k: int) -> np.ndarray:
    """Every cell within ``k`` grid steps of ``cell`` (the set h3-py's ``grid_disk`` returns), unordered."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) <= 1000:
        raise InvalidResolution(f"grid_disk distance must be an integer in 0..1000, got {k!r}")
    return np.asarray(_k.grid_disk(_as_cell(cell), int(k)))


def warm_up() -> float:
    """Compile (or load from Numba's disk cache) the kernels the index uses; returns the seconds it took."""
    t = time.perf_counter()
    lat = np.zeros(1)
    cells = _k.latlng_to_cell_array(lat, lat, 10)
    _k.is_valid_cell_array(cells)
    _k.get_resolution_array(cells)
    _k.cell_to_parent_array(cells, 5)
    return time.perf_counter() - t

"""The H3 index's own bits: the resolution, the base cell and the fifteen base-7 digits, their rotations, and the
kernels that need nothing else (no geometry): validity, inspection, the hierarchy, neighbours and grid disks.

Cells travel through the kernels as int64 bit patterns (a valid cell never sets the top bit); the public kernels
take and return uint64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.h3tables import (  # Numba reads these module globals as compile-time constants
    _BC_CW_OFFSET,
    _BC_HOME_FACE,
    _BC_IS_PENT,
    _BC_IS_POLAR,
    _BC_NEIGHBOUR,
    _BC_NEIGHBOUR_ROT,
    _BC_POLAR_JK_NEIGHBOUR,
    _DIGIT_LOW_BITS,
    _DIGITS_MASK,
    _DIRECTIONS,
    _HASH_MUL,
    _INVALID_BASE_CELL,
    _NEW_CARRY_CII,
    _NEW_CARRY_CIII,
    _NEW_DIGIT_CII,
    _NEW_DIGIT_CIII,
    _ROT_CCW,
    NUM_BASE_CELLS,
)

# ------------------------------------------------------------------------------ index bit fields


@njit(cache=True)
def _get_res(h: int) -> int:
    return (h >> 52) & 15


@njit(cache=True)
def _get_base_cell(h: int) -> int:
    return (h >> 45) & 127


@njit(cache=True)
def _get_digit(h: int, r: int) -> int:
    return (h >> ((15 - r) * 3)) & 7


@njit(cache=True)
def _set_digit(h: int, r: int, d: int) -> int:
    shift = (15 - r) * 3
    return (h & ~(7 << shift)) | (d << shift)


@njit(cache=True)
def _leading_digit(h: int) -> int:
    """The first non-zero digit of ``h`` (0 when every digit up to its resolution is 0)."""
    for r in range(1, _get_res(h) + 1):
        d = _get_digit(h, r)
        if d != 0:
            return d
    return 0


@njit(cache=True)
def _rotate60_all(h: int, ccw: bool) -> int:
    """Every digit of ``h`` turned 60 degrees at once, on the digits' (i, j, k) bits: counter-clockwise
    k->ik->i->ij->j->jk->k, or clockwise the other way round.

    0 and 7 stay put, so unused digits are unchanged.
    """
    i = (h >> 2) & _DIGIT_LOW_BITS
    j = (h >> 1) & _DIGIT_LOW_BITS
    k = h & _DIGIT_LOW_BITS
    ijk = i & j & k
    a = ((i | k) & ~j) | ijk
    b = ((i | j) & ~k) | ijk
    c = ((j | k) & ~i) | ijk
    if not ccw:  # clockwise: the same three bit planes, each moved one axis on
        a, b, c = b, c, a
    return (h & ~_DIGITS_MASK) | (a << 2) | (b << 1) | c


@njit(cache=True)
def _rotate_ccw_n(h: int, n: int) -> int:
    """Every digit of ``h`` turned ``n`` times 60 degrees counter-clockwise (a hexagon's rotation)."""
    for _ in range(n):
        h = _rotate60_all(h, True)
    return h


@njit(cache=True)
def _rotate_cw(h: int) -> int:
    """Every digit of ``h`` turned 60 degrees clockwise: k->jk->j->ij->i->ik->k."""
    return _rotate60_all(h, False)


@njit(cache=True)
def _rotate_pent_ccw(h: int) -> int:
    """60 degrees counter-clockwise about a pentagon centre, skipping the deleted k sub-sequence."""
    found = False
    for r in range(1, _get_res(h) + 1):
        h = _set_digit(h, r, _ROT_CCW[_get_digit(h, r)])
        if not found and _get_digit(h, r) != 0:
            found = True
            if _leading_digit(h) == 1:
                h = _rotate_ccw_n(h, 1)
    return h


# --------------------------------------------------------------- validity, inspection, hierarchy


@njit(cache=True)
def is_valid_cell(h: np.uint64) -> bool:
    """Whether ``h`` is a valid H3 cell (reference: ``isValidCell``)."""
    x = np.int64(h)
    if (x >> 56) != 0b00001000:  # high bit 0, cell mode, reserved bits 0
        return False
    res = _get_res(x)
    bc = _get_base_cell(x)
    if bc >= NUM_BASE_CELLS:
        return False
    first = 0
    for r in range(1, 16):
        d = _get_digit(x, r)
        if r <= res:
            if d == 7:
                return False
            if first == 0 and d != 0:
                first = d
        elif d != 7:
            return False
    # a pentagon's first non-zero digit (unused digits count, as 7) cannot be the deleted k direction
    return not (_BC_IS_PENT[bc] and first == 1)


@njit(cache=True)
def get_resolution(h: np.uint64) -> int:
    return _get_res(np.int64(h))


@njit(cache=True)
def get_base_cell_number(h: np.uint64) -> int:
    return _get_base_cell(np.int64(h))


@njit(cache=True)
def is_pentagon(h: np.uint64) -> bool:
    x = np.int64(h)
    return _BC_IS_PENT[_get_base_cell(x)] and _leading_digit(x) == 0


@njit(cache=True)
def cell_to_parent(h: np.uint64, res: int) -> np.uint64:
    """Ancestor of valid cell ``h`` at ``res`` (``res`` <= the cell's resolution)."""
    x = np.int64(h)
    x = (x & ~(15 << 52)) | (res << 52)
    return np.uint64(x | ((1 << (3 * (15 - res))) - 1))


@njit(cache=True)
def cell_to_children_range(h: np.uint64, child_res: int) -> tuple[np.uint64, np.uint64]:
    """Smallest and largest id among the descendants of ``h`` at ``child_res`` (both inclusive).

    The smallest is the centre child (new digits 0), the largest has every new digit 6; both exist for
    pentagons too, whose missing children are those with a leading digit 1.
    """
    x = np.int64(h)
    res = _get_res(x)
    lo = (x & ~(15 << 52)) | (child_res << 52)
    hi = lo
    for r in range(res + 1, child_res + 1):
        lo = _set_digit(lo, r, 0)
        hi = _set_digit(hi, r, 6)
    return np.uint64(lo), np.uint64(hi)


# ------------------------------------------------------------------------------------- neighbours


@njit(cache=True)
def _neighbour(origin: int, direction: int, rotations: int) -> tuple[int, int, int]:
    """One step from ``origin`` in ``direction`` (reference: ``h3NeighborRotations``).

    Returns ``(status, cell, rotations)``: status 0 on success, 1 when the step would leave a pentagon
    through its deleted k direction (no such neighbour), 2 on malformed input.
    """
    h = origin
    rotations = rotations % 6
    for _ in range(rotations):
        direction = _ROT_CCW[direction]
    new_rotations = 0
    old_bc = _get_base_cell(h)
    old_leading = _leading_digit(h)
    r = _get_res(h) - 1
    while True:
        if r == -1:
            nb = _BC_NEIGHBOUR[old_bc, direction]
            new_rotations = _BC_NEIGHBOUR_ROT[old_bc, direction]
            if nb == _INVALID_BASE_CELL:  # the deleted k vertex: this edge borders the ik neighbour
                nb = _BC_NEIGHBOUR[old_bc, 5]
                new_rotations = _BC_NEIGHBOUR_ROT[old_bc, 5]
                h = _rotate_ccw_n(h, 1)
                rotations += 1
            h = (h & ~(127 << 45)) | (nb << 45)
            break
        old_digit = _get_digit(h, r + 1)
        if old_digit == 7:
            return 2, 0, rotations
        if (r + 1) & 1:
            h = _set_digit(h, r + 1, _NEW_DIGIT_CIII[old_digit, direction])
            next_dir = _NEW_CARRY_CIII[old_digit, direction]
        else:
            h = _set_digit(h, r + 1, _NEW_DIGIT_CII[old_digit, direction])
            next_dir = _NEW_CARRY_CII[old_digit, direction]
        if next_dir == 0:
            break
        direction = next_dir
        r -= 1
    new_bc = _get_base_cell(h)
    if _BC_IS_PENT[new_bc]:
        adjusted_k = False
        if _leading_digit(h) == 1:
            if old_bc != new_bc:  # stepped into the deleted k sub-sequence from another base cell
                if _BC_CW_OFFSET[new_bc, _BC_HOME_FACE[old_bc]]:
                    h = _rotate_cw(h)
                else:
                    h = _rotate_ccw_n(h, 1)
                adjusted_k = True
            elif old_leading == 0:
                return 1, 0, rotations
            elif old_leading == 3:
                h = _rotate_ccw_n(h, 1)
                rotations += 1
            elif old_leading == 5:
                h = _rotate_cw(h)
                rotations += 5
            else:
                return 2, 0, rotations
        for _ in range(new_rotations):
            h = _rotate_pent_ccw(h)
        if old_bc != new_bc:
            if _BC_IS_POLAR[new_bc]:
                if not _BC_POLAR_JK_NEIGHBOUR[old_bc] and _leading_digit(h) != 3:
                    rotations += 1
            elif _leading_digit(h) == 5 and not adjusted_k:
                rotations += 1
    else:
        h = _rotate_ccw_n(h, new_rotations)
    return 0, h, (rotations + new_rotations) % 6


@njit(cache=True)
def grid_disk(origin: np.uint64, k: int) -> np.ndarray:
    """Every cell within ``k`` grid steps of valid cell ``origin`` (the set h3-py ``grid_disk`` returns),
    in breadth-first order."""
    max_cells = 1 + 3 * k * (k + 1)
    size = 1
    while size < 2 * max_cells:
        size *= 2
    table = np.zeros(size, dtype=np.int64)  # open-addressing set; 0 is never a cell
    cells = np.empty(max_cells, dtype=np.int64)
    dist = np.empty(max_cells, dtype=np.int64)
    o = np.int64(origin)
    table[(o * _HASH_MUL >> 17) & (size - 1)] = o
    cells[0] = o
    dist[0] = 0
    n = 1
    head = 0
    while head < n:
        c = cells[head]
        d = dist[head]
        head += 1
        if d == k:
            continue
        for t in range(6):
            status, nb, _ = _neighbour(c, _DIRECTIONS[t], 0)
            if status != 0:
                continue
            slot = (nb * _HASH_MUL >> 17) & (size - 1)
            while table[slot] != 0 and table[slot] != nb:
                slot = (slot + 1) & (size - 1)
            if table[slot] == 0:
                table[slot] = nb
                cells[n] = nb
                dist[n] = d + 1
                n += 1
    return cells[:n].astype(np.uint64)

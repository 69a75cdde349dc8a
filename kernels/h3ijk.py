"""IJK+ coordinates on a face's hexagon lattice: normalisation, the aperture-3 and aperture-7 steps between
resolutions, 60-degree rotations, unit steps, the hex plane in both directions, and the climb from a cell's IJ to
its ancestors with the digits in between.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.h3tables import (  # Numba reads these module globals as compile-time constants
    _DIV_BIAS,
    _DIV_SHIFT,
    _IJ_DIGIT,
    _M_RSIN60,
    _M_SQRT3_2,
    _UNIT,
)

# --------------------------------------------------------------------------------- IJK+ arithmetic


@njit(cache=True)
def _normalize(i: int, j: int, k: int) -> tuple[int, int, int]:
    m = min(i, j, k)
    return i - m, j - m, k - m


@njit(cache=True)
def _up_ap7(i: int, j: int, k: int) -> tuple[int, int, int]:
    """Parent of a Class III cell (counter-clockwise aperture 7); ``(n + 3) // 7`` is ``lround(n / 7)``."""
    a = i - k
    b = j - k
    return _normalize((3 * a - b + 3) // 7, (a + 2 * b + 3) // 7, 0)


@njit(cache=True)
def _up_ap7r(i: int, j: int, k: int) -> tuple[int, int, int]:
    """Parent of a Class II cell (clockwise aperture 7)."""
    a = i - k
    b = j - k
    return _normalize((2 * a + b + 3) // 7, (3 * b - a + 3) // 7, 0)


@njit(cache=True)
def _ijk_map(m: np.ndarray, i: int, j: int, k: int) -> tuple[int, int, int]:
    """``(i, j, k)`` through the IJK linear map ``m`` (its rows the images of the unit vectors), normalised: one
    finer level (``_DOWN7``, ``_DOWN7R``, ``_DOWN3``, ``_DOWN3R``) or a 60-degree turn (``_ROT60CCW``,
    ``_ROT60CW``)."""
    return _normalize(i * m[0, 0] + j * m[1, 0] + k * m[2, 0],
                      i * m[0, 1] + j * m[1, 1] + k * m[2, 1],
                      i * m[0, 2] + j * m[1, 2] + k * m[2, 2])


@njit(cache=True)
def _step(i: int, j: int, k: int, d: int) -> tuple[int, int, int]:
    """The neighbouring cell in direction ``d`` (0 and 7 stay put)."""
    if 0 < d < 7:
        return _normalize(i + _UNIT[d, 0], j + _UNIT[d, 1], k + _UNIT[d, 2])
    return i, j, k


@njit(cache=True)
def _ijk_to_hex2d(i: int, j: int, k: int) -> tuple[float, float]:
    a = i - k
    b = j - k
    return a - 0.5 * b, b * _M_SQRT3_2


@njit(cache=True)
def _hex2d_to_ij(x: float, y: float) -> tuple[int, int]:
    """IJ (IJK with k = 0) of the hexagon containing hex-plane point ``(x, y)`` (the reference's quantiser)."""
    a1 = abs(x)
    a2 = abs(y)
    x2 = a2 * _M_RSIN60
    x1 = a1 + x2 / 2.0
    m1 = int(x1)
    m2 = int(x2)
    r1 = x1 - m1
    r2 = x2 - m2
    if r1 < 0.5:
        if r1 < 1.0 / 3.0:
            i = m1
            j = m2 if r2 < (1.0 + r1) / 2.0 else m2 + 1
        else:
            j = m2 if r2 < (1.0 - r1) else m2 + 1
            i = m1 + 1 if (1.0 - r1) <= r2 and r2 < (2.0 * r1) else m1
    elif r1 < 2.0 / 3.0:
        j = m2 if r2 < (1.0 - r1) else m2 + 1
        i = m1 if (2.0 * r1 - 1.0) < r2 and r2 < (1.0 - r1) else m1 + 1
    else:
        i = m1 + 1
        j = m2 if r2 < (r1 / 2.0) else m2 + 1
    if x < 0.0:  # fold across the axes
        if j % 2 == 0:
            i = i - 2 * (i - j // 2)
        else:
            i = i - (2 * (i - (j + 1) // 2) + 1)
    if y < 0.0:
        i = i - (2 * j + 1) // 2
        j = -j
    return i, j


@njit(cache=True)
def _nearest_lattice_ij(x: float, y: float) -> tuple[int, int]:
    """IJ of the lattice point nearest hex-plane ``(x, y)``, by cube rounding (branch-light); it agrees with
    the reference quantiser :func:`_hex2d_to_ij` wherever the nearest point is unambiguous, and the caller
    checks that it is."""
    r = y / _M_SQRT3_2  # axial coordinates over the 60-degree basis (1, 0), (1/2, sqrt(3)/2)
    q = x - 0.5 * r
    s = -q - r
    rq = round(q)
    rr = round(r)
    rs = round(s)
    dq = abs(rq - q)
    dr = abs(rr - r)
    ds = abs(rs - s)
    if dq > dr and dq > ds:
        rq = -rr - rs
    elif dr > ds:
        rr = -rq - rs
    return int(rq) + int(rr), int(rr)


# --------------------------------------------------------------- climbing to coarser resolutions


@njit(cache=True)
def _up_level(i: int, j: int, r: int) -> tuple[int, int, int]:
    """Parent IJ at ``r - 1`` of IJ ``(i, j)`` at ``r``, and the digit of ``r`` (reference: ``_upAp7``/``_upAp7r``).

    IJ is IJK+ with k = 0 (unique without normalising): the parent is the rounded aperture-7 image
    (``(n + 3) // 7`` is ``lround(n / 7)``), the digit the offset from the parent's centre child. The division
    runs on ``n`` shifted positive by ``7 * _DIV_BIAS``: unsigned by a constant, it compiles to a multiply and
    a shift instead of a signed division and its sign fix-up.
    """
    if r & 1:  # Class III: counter-clockwise aperture 7
        pi = np.int64(np.uint64(3 * i - j + _DIV_SHIFT) // np.uint64(7)) - _DIV_BIAS
        pj = np.int64(np.uint64(i + 2 * j + _DIV_SHIFT) // np.uint64(7)) - _DIV_BIAS
        di = i - (2 * pi + pj)
        dj = j - (3 * pj - pi)
    else:  # Class II: clockwise aperture 7
        pi = np.int64(np.uint64(2 * i + j + _DIV_SHIFT) // np.uint64(7)) - _DIV_BIAS
        pj = np.int64(np.uint64(3 * j - i + _DIV_SHIFT) // np.uint64(7)) - _DIV_BIAS
        di = i - (3 * pi - pj)
        dj = j - (pi + 2 * pj)
    digit = _IJ_DIGIT[di + 1, dj + 1] if -1 <= di <= 1 and -1 <= dj <= 1 else 7
    return pi, pj, digit


def _derive_climb4() -> np.ndarray:
    """Four levels at once: ``_CLIMB4[p, i % 49, j % 49]`` packs the ancestor four levels up and the four digits.

    One Class III and one Class II aperture-7 step compose to 7 times the identity, so four steps from
    ``c + 49 v`` end at the ancestor of ``c`` plus ``v``, with the same digits: the residues of ``i`` and ``j``
    modulo 49 decide everything, and ``c // 49`` carries the rest. ``p`` is the parity of the finest level.
    Entry: ``(ancestor_i - i // 49 + 8) | (ancestor_j - j // 49 + 8) << 4 | digits << 8``, the finest level's
    digit lowest, as they sit in the index.
    """
    up = _up_level.py_func
    table = np.zeros((2, 49, 49), dtype=np.int32)
    for p in range(2):
        for ri in range(49):
            for rj in range(49):
                i, j, packed = ri, rj, 0
                for step in range(4):
                    i, j, d = up(i, j, 4 + p - step)
                    packed |= int(d) << (3 * step)
                i, j = int(i), int(j)
                assert -8 <= i < 8 and -8 <= j < 8
                table[p, ri, rj] = (i + 8) | (j + 8) << 4 | packed << 8
    return table


_CLIMB4 = _derive_climb4()
_DIV49_BIAS = 1 << 40
_DIV49_SHIFT = 49 * _DIV49_BIAS

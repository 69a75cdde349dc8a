"""Bit-exact H3 (v4) cell arithmetic in Numba: point to cell, hierarchy, centres, boundaries and grid disks.

The algorithm is the published H3 one, step by step as the reference C library (4.x, the version h3-py wraps)
does it, so every floating-point operation happens in the same order on the same values and the results are
bit-identical:

1. degrees to radians (``deg * pi/180``), then a unit vector ``(cos lng cos lat, sin lng cos lat, sin lat)``;
2. the icosahedron face whose centre is nearest (smallest squared chord, first face wins ties);
3. a gnomonic projection on that face: ``r = tan(acos(1 - d2/2))`` scaled to the resolution
   (``* phi^2 * sqrt7^res``), the angle measured from the face's i axis through the face centre's
   north/east tangent basis, turned by ``asin(sqrt(3/28))`` on Class III (odd) resolutions;
4. the quantisation of that 2-D point to the nearest hexagon centre, giving IJK+ coordinates;
5. climbing to resolution 0 with the aperture-7 parent map (counter-clockwise on Class III, clockwise on
   Class II), one base-7 digit per level, then the face-IJK -> base cell lookup and the base cell's
   60-degree rotations (pentagons skip their deleted k-axis sub-sequence).

Constant data: the 20 face centres (unit vectors) and the azimuths of the faces' i axes are the published
H3 values; they cannot be recovered bit-exactly through h3-py's public API (which only returns rounded
degrees), and bit-exactness depends on every one of their bits. Everything else is *derived at import* from
h3-py itself (about 6,000 calls, ~40 ms): which base cell sits at each of the 20 x 19 face-IJK positions
(by projecting h3-py's base-cell centres onto each face), the rotation into each base cell's frame (by
probing the digits h3-py assigns to points around it), base-cell homes, pentagon offsets, base-cell
neighbours (from h3-py's directed edges) and the face adjacency. The digit tables of neighbour traversal are
derived from IJK arithmetic. All of these tables live in :mod:`kernels.h3tables`.

Point to cell takes a faster road than step 3 where it provably ends in the same cell: see
:func:`_vec3_to_face_ij_fast`.

All kernels are pure (array in, array out) and compile with ``cache=True``. H3 indices travel through the
kernels as int64 bit patterns (valid cells never use the top bit) and come out as uint64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from kernels.h3tables import (  # Numba reads these module globals as compile-time constants
    _ADJACENT_FACE_DIR,
    _BC_CW_OFFSET,
    _BC_HOME_FACE,
    _BC_HOME_IJK,
    _BC_IS_PENT,
    _BC_IS_POLAR,
    _BC_NEIGHBOUR,
    _BC_NEIGHBOUR_ROT,
    _BC_POLAR_JK_NEIGHBOUR,
    _DIGIT_LOW_BITS,
    _DIGITS_MASK,
    _DIRECTIONS,
    _DIV_BIAS,
    _DIV_SHIFT,
    _EPSILON,
    _FACE_AXIS_AZ,
    _FACE_CANDIDATES,
    _FACE_CENTER,
    _FACE_EAST,
    _FACE_NB,
    _FACE_NB_ROT,
    _FACE_NB_TRANS,
    _FACE_NORTH,
    _FIJK_BC,
    _FIJK_ROT,
    _FLT_EPSILON,
    _H3_CELL_INIT,
    _HASH_MUL,
    _HEX_VERTS_CII,
    _HEX_VERTS_CIII,
    _IJ,
    _IJ_DIGIT,
    _INV_RES0_U_GNOMONIC,
    _INVALID_BASE_CELL,
    _JK,
    _KI,
    _M_2PI,
    _M_180_PI,
    _M_AP7_ROT_RADS,
    _M_ONETHIRD,
    _M_PI_180,
    _M_RSIN60,
    _M_RSQRT7,
    _M_SQRT3_2,
    _M_SQRT7,
    _MAX_DIM,
    _NEW_CARRY_CII,
    _NEW_CARRY_CIII,
    _NEW_DIGIT_CII,
    _NEW_DIGIT_CIII,
    _NUM_FACES,
    _RES0_U_GNOMONIC,
    _ROT_CCW,
    _UNIT,
    _UNIT_SCALE,
    MAX_BOUNDARY_VERTS,
    MAX_RES,
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
def _rotate60ccw_all(h: int) -> int:
    """Every digit of ``h`` turned 60 degrees counter-clockwise at once, on the digits' (i, j, k) bits.

    k->ik->i->ij->j->jk->k; 0 and 7 stay put, so unused digits are unchanged.
    """
    i = (h >> 2) & _DIGIT_LOW_BITS
    j = (h >> 1) & _DIGIT_LOW_BITS
    k = h & _DIGIT_LOW_BITS
    ijk = i & j & k
    ni = ((i | k) & ~j) | ijk
    nj = ((i | j) & ~k) | ijk
    nk = ((j | k) & ~i) | ijk
    return (h & ~_DIGITS_MASK) | (ni << 2) | (nj << 1) | nk


@njit(cache=True)
def _rotate_ccw_n(h: int, n: int) -> int:
    """Every digit of ``h`` turned ``n`` times 60 degrees counter-clockwise (a hexagon's rotation)."""
    for _ in range(n):
        h = _rotate60ccw_all(h)
    return h


@njit(cache=True)
def _rotate_cw(h: int) -> int:
    """Every digit of ``h`` turned 60 degrees clockwise: k->jk->j->ij->i->ik->k."""
    i = (h >> 2) & _DIGIT_LOW_BITS
    j = (h >> 1) & _DIGIT_LOW_BITS
    k = h & _DIGIT_LOW_BITS
    ijk = i & j & k
    ni = ((i | j) & ~k) | ijk
    nj = ((j | k) & ~i) | ijk
    nk = ((i | k) & ~j) | ijk
    return (h & ~_DIGITS_MASK) | (ni << 2) | (nj << 1) | nk


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
def _down_ap7(i: int, j: int, k: int) -> tuple[int, int, int]:
    return _normalize(3 * i + j, 3 * j + k, i + 3 * k)


@njit(cache=True)
def _down_ap7r(i: int, j: int, k: int) -> tuple[int, int, int]:
    return _normalize(3 * i + k, i + 3 * j, j + 3 * k)


@njit(cache=True)
def _down_ap3(i: int, j: int, k: int) -> tuple[int, int, int]:
    return _normalize(2 * i + j, 2 * j + k, i + 2 * k)


@njit(cache=True)
def _down_ap3r(i: int, j: int, k: int) -> tuple[int, int, int]:
    return _normalize(2 * i + k, i + 2 * j, j + 2 * k)


@njit(cache=True)
def _rotate60ccw(i: int, j: int, k: int) -> tuple[int, int, int]:
    return _normalize(i + k, i + j, j + k)


@njit(cache=True)
def _rotate60cw(i: int, j: int, k: int) -> tuple[int, int, int]:
    return _normalize(i + j, j + k, i + k)


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


# ------------------------------------------------------------------------------ sphere <-> faces


@njit(cache=True)
def _pos_angle(a: float) -> float:
    t = a + _M_2PI if a < 0.0 else a
    if a >= _M_2PI:
        t -= _M_2PI
    return t


@njit(cache=True)
def _nearest_face(x: float, y: float, z: float) -> tuple[int, float]:
    """The face whose centre is nearest the unit vector, and the squared chord to it (first face wins ties)."""
    face = 0
    sqd = 5.0
    for f in range(_NUM_FACES):
        dx = _FACE_CENTER[f, 0] - x
        dy = _FACE_CENTER[f, 1] - y
        dz = _FACE_CENTER[f, 2] - z
        d = dx * dx + dy * dy + dz * dz
        if d < sqd:
            face = f
            sqd = d
    return face, sqd


@njit(cache=True)
def _nearest_face_binned(x: float, y: float, z: float, lat: float, lng: float) -> tuple[int, float]:
    """:func:`_nearest_face`, scanning only the faces that can win in the point's 1-degree bin: the same
    distances, computed the same way, so the same face and the same squared chord."""
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lng <= 180.0):
        return _nearest_face(x, y, z)
    bi = min(int(lat + 90.0), _FACE_CANDIDATES.shape[0] - 1)
    bj = min(int(lng + 180.0), _FACE_CANDIDATES.shape[1] - 1)
    face = 0
    sqd = 5.0
    for c in range(_FACE_CANDIDATES.shape[2]):
        f = _FACE_CANDIDATES[bi, bj, c]
        if f < 0:
            break
        dx = _FACE_CENTER[f, 0] - x
        dy = _FACE_CENTER[f, 1] - y
        dz = _FACE_CENTER[f, 2] - z
        d = dx * dx + dy * dy + dz * dz
        if d < sqd:
            face = f
            sqd = d
    return face, sqd


@njit(cache=True)
def _vec3_to_face_ij(x: float, y: float, z: float, res: int) -> tuple[int, int, int]:
    """Face and IJ at ``res`` of the unit vector ``(x, y, z)`` (reference: ``_vec3ToFaceIjk``), with the
    reference's own floating-point operations."""
    face, sqd = _nearest_face(x, y, z)
    return face, *_gnomonic_ij_reference(x, y, z, face, sqd, res)


@njit(cache=True)
def _gnomonic_ij_reference(x: float, y: float, z: float, face: int, sqd: float, res: int) -> tuple[int, int]:
    r = math.acos(1.0 - sqd * 0.5)
    if r < _EPSILON:
        return 0, 0
    fx = _FACE_CENTER[face, 0]
    fy = _FACE_CENTER[face, 1]
    fz = _FACE_CENTER[face, 2]
    # azimuth from the face centre: project onto its tangent plane, then measure against north/east
    dot = x * fx + y * fy + z * fz
    px = x - dot * fx
    py = y - dot * fy
    pz = z - dot * fz
    norm = math.sqrt(px * px + py * py + pz * pz)
    s = 1.0 / norm if norm > 0.0 else 0.0
    px *= s
    py *= s
    pz *= s
    az = math.atan2(px * _FACE_EAST[face, 0] + py * _FACE_EAST[face, 1] + pz * _FACE_EAST[face, 2],
                    px * _FACE_NORTH[face, 0] + py * _FACE_NORTH[face, 1] + pz * _FACE_NORTH[face, 2])
    theta = _pos_angle(_FACE_AXIS_AZ[face] - _pos_angle(az))
    if res & 1:
        theta = _pos_angle(theta - _M_AP7_ROT_RADS)
    r = math.tan(r)
    r *= _INV_RES0_U_GNOMONIC
    for _ in range(res):
        r *= _M_SQRT7
    return _hex2d_to_ij(r * math.cos(theta), r * math.sin(theta))


#: ``cos`` and ``sin`` of each face's i-axis azimuth, for Class II (row 0) and Class III (row 1) resolutions.
_AXIS_COS = np.array([np.cos(_FACE_AXIS_AZ), np.cos(_FACE_AXIS_AZ - _M_AP7_ROT_RADS)])
_AXIS_SIN = np.array([np.sin(_FACE_AXIS_AZ), np.sin(_FACE_AXIS_AZ - _M_AP7_ROT_RADS)])
#: Gnomonic tangent to hex-plane units at each resolution.
_HEX_SCALE = np.array([_INV_RES0_U_GNOMONIC * _M_SQRT7**r for r in range(MAX_RES + 1)])
#: Relative size of the rounding both computations can make, with a wide safety factor (about 1000 ulp).
_ROUNDING = 1e-13


@njit(cache=True)
def _vec3_to_face_ij_fast(x: float, y: float, z: float, lat: float, lng: float,
                          res: int) -> tuple[int, int, int]:
    """:func:`_vec3_to_face_ij`, with the same answer, at a third of the cost.

    The reference reaches the hex plane through ``acos``, ``tan``, ``atan2``, ``cos`` and ``sin``. The same
    point follows from three dot products: with ``d = p.c``, ``n = p.north`` and ``e = p.east`` in the face's
    tangent frame, ``tan(r) = |(n, e)| / d`` and the direction is ``(n, e)`` itself, turned by the face's
    axis azimuth. Both computations round differently, by at most ``delta`` hex units (a bound on either's
    error, from the conditioning of ``acos`` near the face centre and of the tangent far from it, times a
    wide factor). When the point lies further than ``delta`` inside its hexagon, both land in the same cell;
    otherwise (about one point in 10^5 at res 15, fewer at coarser ones) the reference operations decide.
    The face choice is the reference's own arithmetic on the same vector (over the faces that can win in the
    point's degree bin), so it is always identical.
    """
    face, sqd = _nearest_face_binned(x, y, z, lat, lng)
    d = x * _FACE_CENTER[face, 0] + y * _FACE_CENTER[face, 1] + z * _FACE_CENTER[face, 2]
    n = x * _FACE_NORTH[face, 0] + y * _FACE_NORTH[face, 1] + z * _FACE_NORTH[face, 2]
    e = x * _FACE_EAST[face, 0] + y * _FACE_EAST[face, 1] + z * _FACE_EAST[face, 2]
    rho2 = n * n + e * e  # sin(r)^2: distance from the face centre
    if rho2 < 1e-18 or d < 0.1:
        return face, *_gnomonic_ij_reference(x, y, z, face, sqd, res)
    cls = res & 1
    ca = _AXIS_COS[cls, face]
    sa = _AXIS_SIN[cls, face]
    inv_d = 1.0 / d
    k = _HEX_SCALE[res] * inv_d
    hx = k * (n * ca + e * sa)
    hy = k * (n * sa - e * ca)
    i, j = _nearest_lattice_ij(hx, hy)
    # distance inside the hexagon of (i, j): 0.5 less the largest offset along the three lattice directions
    ox = hx - (i - 0.5 * j)
    oy = hy - j * _M_SQRT3_2
    margin = 0.5 - max(abs(ox), abs(0.5 * ox - _M_SQRT3_2 * oy), abs(0.5 * ox + _M_SQRT3_2 * oy))
    # margin > 2 delta, delta = R (S (1 + 1/rho^2 + tan^2) + |hx| + |hy|) (1/rho^2 >= 1/rho bounds acos's
    # conditioning near the face centre), multiplied through by rho^2 to need no square root and no division
    t2 = rho2 * inv_d * inv_d
    if margin * rho2 > 2.0 * _ROUNDING * (_HEX_SCALE[res] * (rho2 + 1.0 + t2 * rho2) + (abs(hx) + abs(hy)) * rho2):
        return face, i, j
    return face, *_gnomonic_ij_reference(x, y, z, face, sqd, res)


@njit(cache=True)
def _hex2d_to_vec3(x: float, y: float, face: int, res: int, substrate: bool) -> tuple[float, float, float]:
    """Unit vector of hex-plane point ``(x, y)`` on ``face`` (reference: ``_hex2dToVec3``)."""
    r = math.sqrt(x * x + y * y)
    if r < _EPSILON:
        return _FACE_CENTER[face, 0], _FACE_CENTER[face, 1], _FACE_CENTER[face, 2]
    theta = math.atan2(y, x)
    for _ in range(res):
        r *= _M_RSQRT7
    if substrate:
        r *= _M_ONETHIRD
        if res & 1:
            r *= _M_RSQRT7
    r *= _RES0_U_GNOMONIC
    r = math.atan(r)
    if not substrate and res & 1:
        theta = _pos_angle(theta + _M_AP7_ROT_RADS)
    theta = _pos_angle(_FACE_AXIS_AZ[face] - theta)
    ct = math.cos(theta)
    st = math.sin(theta)
    dx = ct * _FACE_NORTH[face, 0] + st * _FACE_EAST[face, 0]
    dy = ct * _FACE_NORTH[face, 1] + st * _FACE_EAST[face, 1]
    dz = ct * _FACE_NORTH[face, 2] + st * _FACE_EAST[face, 2]
    cr = math.cos(r)
    sr = math.sin(r)
    vx = cr * _FACE_CENTER[face, 0] + sr * dx
    vy = cr * _FACE_CENTER[face, 1] + sr * dy
    vz = cr * _FACE_CENTER[face, 2] + sr * dz
    norm = math.sqrt(vx * vx + vy * vy + vz * vz)
    s = 1.0 / norm if norm > 0.0 else 0.0
    return vx * s, vy * s, vz * s


@njit(cache=True)
def _vec3_to_latlng_deg(x: float, y: float, z: float) -> tuple[float, float]:
    return math.asin(z) * _M_180_PI, math.atan2(y, x) * _M_180_PI


# ------------------------------------------------------------------------------------ point to cell


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


@njit(cache=True)
def _face_ij_to_h3(face: int, i: int, j: int, res: int) -> int:
    """The cell of face-IJ ``(face, i, j)`` at ``res`` (reference: ``_faceIjkToH3``); 0 if out of range.

    Climbs to resolution 0 four levels a step through :data:`_CLIMB4`, then one level at a time.
    """
    h = _H3_CELL_INIT | (res << 52)
    r = res
    while r >= 4:
        ui = np.uint64(i + _DIV49_SHIFT)
        uj = np.uint64(j + _DIV49_SHIFT)
        qi = ui // np.uint64(49)
        qj = uj // np.uint64(49)
        e = _CLIMB4[r & 1, np.int64(ui - qi * np.uint64(49)), np.int64(uj - qj * np.uint64(49))]
        i = np.int64(qi) - _DIV49_BIAS + (e & 15) - 8
        j = np.int64(qj) - _DIV49_BIAS + ((e >> 4) & 15) - 8
        h ^= np.int64(0xFFF ^ (e >> 8)) << ((15 - r) * 3)
        r -= 4
    while r >= 1:
        i, j, digit = _up_level(i, j, r)
        h ^= (7 ^ digit) << ((15 - r) * 3)
        r -= 1
    i, j, k = _normalize(i, j, 0)
    if i > 2 or j > 2 or k > 2:
        return 0
    bc = _FIJK_BC[face, i, j, k]
    rot = _FIJK_ROT[face, i, j, k]
    h |= bc << 45
    if _BC_IS_PENT[bc]:
        if _leading_digit(h) == 1:  # rotate out of the deleted k sub-sequence
            h = _rotate_cw(h) if _BC_CW_OFFSET[bc, face] else _rotate_ccw_n(h, 1)
        for _ in range(rot):
            h = _rotate_pent_ccw(h)
        return h
    return _rotate_ccw_n(h, rot)


@njit(cache=True)
def latlng_to_cell(lat: float, lng: float, res: int) -> np.uint64:
    """H3 cell at ``res`` of the point ``(lat, lng)`` in degrees; bit-exact with h3-py ``latlng_to_cell``.

    The inputs must be finite (the wrapper validates them); other kernels may call this per point.
    """
    la = lat * _M_PI_180
    lo = lng * _M_PI_180
    c = math.cos(la)
    face, i, j = _vec3_to_face_ij_fast(math.cos(lo) * c, math.sin(lo) * c, math.sin(la), lat, lng, res)
    return np.uint64(_face_ij_to_h3(face, i, j, res))


@njit(cache=True, parallel=True)
def latlng_to_cell_array(lat: np.ndarray, lng: np.ndarray, res: int) -> np.ndarray:
    """:func:`latlng_to_cell` over arrays of degrees, on every Numba thread."""
    out = np.empty(lat.shape[0], dtype=np.uint64)
    for n in prange(lat.shape[0]):
        out[n] = latlng_to_cell(lat[n], lng[n], res)
    return out


@njit(cache=True, parallel=True)
def invalid_latlng_array(lat: np.ndarray, lng: np.ndarray) -> np.ndarray:
    """True where a point is NaN, infinite or outside [-90, 90] x [-180, 180] degrees (one parallel pass)."""
    out = np.empty(lat.shape[0], dtype=np.bool_)
    for n in prange(lat.shape[0]):
        out[n] = not (abs(lat[n]) <= 90.0 and abs(lng[n]) <= 180.0)  # NaN fails every comparison
    return out


# ------------------------------------------------------------------------------------ inspection


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


@njit(cache=True, parallel=True)
def is_valid_cell_array(cells: np.ndarray) -> np.ndarray:
    out = np.empty(cells.shape[0], dtype=np.bool_)
    for n in prange(cells.shape[0]):
        out[n] = is_valid_cell(cells[n])
    return out


@njit(cache=True, parallel=True)
def get_resolution_array(cells: np.ndarray) -> np.ndarray:
    out = np.empty(cells.shape[0], dtype=np.int8)
    for n in prange(cells.shape[0]):
        out[n] = get_resolution(cells[n])
    return out


@njit(cache=True, parallel=True)
def get_base_cell_number_array(cells: np.ndarray) -> np.ndarray:
    out = np.empty(cells.shape[0], dtype=np.int8)
    for n in prange(cells.shape[0]):
        out[n] = get_base_cell_number(cells[n])
    return out


@njit(cache=True, parallel=True)
def is_pentagon_array(cells: np.ndarray) -> np.ndarray:
    out = np.empty(cells.shape[0], dtype=np.bool_)
    for n in prange(cells.shape[0]):
        out[n] = is_pentagon(cells[n])
    return out


@njit(cache=True, parallel=True)
def cell_to_parent_array(cells: np.ndarray, res: int) -> np.ndarray:
    out = np.empty(cells.shape[0], dtype=np.uint64)
    for n in prange(cells.shape[0]):
        out[n] = cell_to_parent(cells[n], res)
    return out


@njit(cache=True, parallel=True)
def cell_to_children_range_array(cells: np.ndarray, child_res: int) -> tuple[np.ndarray, np.ndarray]:
    lo = np.empty(cells.shape[0], dtype=np.uint64)
    hi = np.empty(cells.shape[0], dtype=np.uint64)
    for n in prange(cells.shape[0]):
        lo[n], hi[n] = cell_to_children_range(cells[n], child_res)
    return lo, hi


# --------------------------------------------------------------------------------- cell to face-IJK


@njit(cache=True)
def _adjust_overage(face: int, i: int, j: int, k: int, res: int, pent_leading4: bool,
                    substrate: bool) -> tuple[int, int, int, int, int]:
    """Move a Class II face-IJK onto the face it really lies on (reference: ``_adjustOverageClassII``).

    Returns ``(overage, face, i, j, k)``, overage 0 = none, 1 = on a face edge (substrate only), 2 = new face.
    """
    max_dim = _MAX_DIM[res] * 3 if substrate else _MAX_DIM[res]
    s = i + j + k
    if substrate and s == max_dim:
        return 1, face, i, j, k
    if s <= max_dim:
        return 0, face, i, j, k
    if k > 0:
        if j > 0:
            quadrant = _JK
        else:
            quadrant = _KI
            if pent_leading4:  # rotate about the pentagon to adjust for its missing sequence
                ti, tj, tk = _rotate60cw(i - max_dim, j, k)
                i, j, k = ti + max_dim, tj, tk
    else:
        quadrant = _IJ
    new_face = _FACE_NB[face, quadrant]
    for _ in range(_FACE_NB_ROT[face, quadrant]):
        i, j, k = _rotate60ccw(i, j, k)
    scale = _UNIT_SCALE[res] * 3 if substrate else _UNIT_SCALE[res]
    i, j, k = _normalize(i + _FACE_NB_TRANS[face, quadrant, 0] * scale,
                         j + _FACE_NB_TRANS[face, quadrant, 1] * scale,
                         k + _FACE_NB_TRANS[face, quadrant, 2] * scale)
    overage = 1 if substrate and i + j + k == max_dim else 2
    return overage, new_face, i, j, k


@njit(cache=True)
def _h3_to_face_ijk(h: int) -> tuple[int, int, int, int]:
    """Face-IJK of valid cell ``h`` on the face its centre lies on (reference: ``_h3ToFaceIjk``)."""
    bc = _get_base_cell(h)
    res = _get_res(h)
    pent = _BC_IS_PENT[bc]
    if pent and _leading_digit(h) == 5:
        h = _rotate_cw(h)
    face = _BC_HOME_FACE[bc]
    i, j, k = _BC_HOME_IJK[bc, 0], _BC_HOME_IJK[bc, 1], _BC_HOME_IJK[bc, 2]
    overage_possible = pent or not (res == 0 or (i == 0 and j == 0 and k == 0))
    for r in range(1, res + 1):
        if r & 1:
            i, j, k = _down_ap7(i, j, k)
        else:
            i, j, k = _down_ap7r(i, j, k)
        i, j, k = _step(i, j, k, _get_digit(h, r))
    if not overage_possible:
        return face, i, j, k
    oi, oj, ok = i, j, k
    adj_res = res
    if res & 1:  # drop into the next finer Class II grid
        i, j, k = _down_ap7r(i, j, k)
        adj_res += 1
    pent_leading4 = pent and _leading_digit(h) == 4
    overage, face, i, j, k = _adjust_overage(face, i, j, k, adj_res, pent_leading4, False)
    if overage != 0:
        if pent:  # pentagons may need a second face change
            while overage != 0:
                overage, face, i, j, k = _adjust_overage(face, i, j, k, adj_res, False, False)
        if adj_res != res:
            i, j, k = _up_ap7r(i, j, k)
    elif adj_res != res:
        i, j, k = oi, oj, ok
    return face, i, j, k


@njit(cache=True)
def cell_to_latlng(h: np.uint64) -> tuple[float, float]:
    """Centre ``(lat, lng)`` in degrees of valid cell ``h``; bit-exact with h3-py ``cell_to_latlng``."""
    x = np.int64(h)
    face, i, j, k = _h3_to_face_ijk(x)
    hx, hy = _ijk_to_hex2d(i, j, k)
    vx, vy, vz = _hex2d_to_vec3(hx, hy, face, _get_res(x), False)
    return _vec3_to_latlng_deg(vx, vy, vz)


@njit(cache=True, parallel=True)
def cell_to_latlng_array(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lat = np.empty(cells.shape[0], dtype=np.float64)
    lng = np.empty(cells.shape[0], dtype=np.float64)
    for n in prange(cells.shape[0]):
        lat[n], lng[n] = cell_to_latlng(cells[n])
    return lat, lng


# ------------------------------------------------------------------------------------ boundaries


@njit(cache=True)
def _intersect(ax: float, ay: float, bx: float, by: float, cx: float, cy: float, dx: float,
               dy: float) -> tuple[float, float]:
    """Intersection of lines a-b and c-d (reference: ``_v2dIntersect``)."""
    s1x = bx - ax
    s1y = by - ay
    s2x = dx - cx
    s2y = dy - cy
    t = (s2x * (ay - cy) - s2y * (ax - cx)) / (-s2x * s1y + s1x * s2y)
    return ax + (t * s1x), ay + (t * s1y)


@njit(cache=True)
def _face_edge(quadrant: int, max_dim: int) -> tuple[float, float, float, float]:
    """End points of the face edge of ``quadrant`` in substrate hex coordinates (KI for anything else)."""
    v0x, v0y = 3.0 * max_dim, 0.0
    v1x, v1y = -1.5 * max_dim, 3.0 * _M_SQRT3_2 * max_dim
    v2x, v2y = -1.5 * max_dim, -3.0 * _M_SQRT3_2 * max_dim
    if quadrant == _IJ:
        return v0x, v0y, v1x, v1y
    if quadrant == _JK:
        return v1x, v1y, v2x, v2y
    return v2x, v2y, v0x, v0y


@njit(cache=True)
def _put_vertex(x: float, y: float, face: int, res: int, out: np.ndarray, n: int) -> int:
    vx, vy, vz = _hex2d_to_vec3(x, y, face, res, True)
    out[n, 0], out[n, 1] = _vec3_to_latlng_deg(vx, vy, vz)
    return n + 1


@njit(cache=True)
def _hexagon_boundary(face: int, i: int, j: int, k: int, res: int, out: np.ndarray) -> int:
    """Reference ``_faceIjkToCellBoundary`` for a whole hexagon; vertices into ``out``, count returned."""
    adj_res = res
    ci, cj, ck = _down_ap3(i, j, k)
    ci, cj, ck = _down_ap3r(ci, cj, ck)
    verts = _HEX_VERTS_CII
    if res & 1:
        ci, cj, ck = _down_ap7r(ci, cj, ck)
        adj_res += 1
        verts = _HEX_VERTS_CIII
    n = 0
    last_face = -1
    last_overage = 0
    for vert in range(7):  # one extra step closes the loop for a crossing on the last edge
        v = vert % 6
        vi, vj, vk = _normalize(ci + verts[v, 0], cj + verts[v, 1], ck + verts[v, 2])
        overage, f, fi, fj, fk = _adjust_overage(face, vi, vj, vk, adj_res, False, True)
        if res & 1 and vert > 0 and f != last_face and last_overage != 1:
            # the edge crosses an icosahedron edge: add the crossing point, projected from the centre's face
            w = (v + 5) % 6
            wi, wj, wk = _normalize(ci + verts[w, 0], cj + verts[w, 1], ck + verts[w, 2])
            x0, y0 = _ijk_to_hex2d(wi, wj, wk)
            x1, y1 = _ijk_to_hex2d(vi, vj, vk)
            face2 = f if last_face == face else last_face
            ex0, ey0, ex1, ey1 = _face_edge(_ADJACENT_FACE_DIR[face, face2], _MAX_DIM[adj_res])
            ix, iy = _intersect(x0, y0, x1, y1, ex0, ey0, ex1, ey1)
            at_vertex = ((abs(x0 - ix) < _FLT_EPSILON and abs(y0 - iy) < _FLT_EPSILON)
                         or (abs(x1 - ix) < _FLT_EPSILON and abs(y1 - iy) < _FLT_EPSILON))
            if not at_vertex:
                n = _put_vertex(ix, iy, face, adj_res, out, n)
        if vert < 6:
            x, y = _ijk_to_hex2d(fi, fj, fk)
            n = _put_vertex(x, y, f, adj_res, out, n)
        last_face = f
        last_overage = overage
    return n


@njit(cache=True)
def _pentagon_boundary(face: int, i: int, j: int, k: int, res: int, out: np.ndarray) -> int:
    """Reference ``_faceIjkPentToCellBoundary`` for a whole pentagon."""
    adj_res = res
    ci, cj, ck = _down_ap3(i, j, k)
    ci, cj, ck = _down_ap3r(ci, cj, ck)
    verts = _HEX_VERTS_CII
    if res & 1:
        ci, cj, ck = _down_ap7r(ci, cj, ck)
        adj_res += 1
        verts = _HEX_VERTS_CIII
    n = 0
    lf, li, lj, lk = 0, 0, 0, 0
    for vert in range(6):
        v = vert % 5
        f = face
        fi, fj, fk = _normalize(ci + verts[v, 0], cj + verts[v, 1], ck + verts[v, 2])
        overage = 2
        while overage == 2:
            overage, f, fi, fj, fk = _adjust_overage(f, fi, fj, fk, adj_res, False, True)
        if res & 1 and vert > 0:
            # every Class III pentagon edge crosses an icosahedron edge: express this vertex on the last
            # vertex's face and intersect
            x0, y0 = _ijk_to_hex2d(li, lj, lk)
            quadrant = _ADJACENT_FACE_DIR[f, lf]
            tf = _FACE_NB[f, quadrant]
            ti, tj, tk = fi, fj, fk
            for _ in range(_FACE_NB_ROT[f, quadrant]):
                ti, tj, tk = _rotate60ccw(ti, tj, tk)
            scale = _UNIT_SCALE[adj_res] * 3
            ti, tj, tk = _normalize(ti + _FACE_NB_TRANS[f, quadrant, 0] * scale,
                                    tj + _FACE_NB_TRANS[f, quadrant, 1] * scale,
                                    tk + _FACE_NB_TRANS[f, quadrant, 2] * scale)
            x1, y1 = _ijk_to_hex2d(ti, tj, tk)
            ex0, ey0, ex1, ey1 = _face_edge(_ADJACENT_FACE_DIR[tf, f], _MAX_DIM[adj_res])
            ix, iy = _intersect(x0, y0, x1, y1, ex0, ey0, ex1, ey1)
            n = _put_vertex(ix, iy, tf, adj_res, out, n)
        if vert < 5:
            x, y = _ijk_to_hex2d(fi, fj, fk)
            n = _put_vertex(x, y, f, adj_res, out, n)
        lf, li, lj, lk = f, fi, fj, fk
    return n


@njit(cache=True)
def cell_to_boundary(h: np.uint64, out: np.ndarray) -> int:
    """Boundary of valid cell ``h`` as ``(lat, lng)`` degree rows into ``out`` (at least 10 x 2); returns
    the vertex count. Bit-exact with h3-py ``cell_to_boundary``."""
    x = np.int64(h)
    face, i, j, k = _h3_to_face_ijk(x)
    if is_pentagon(h):
        return _pentagon_boundary(face, i, j, k, _get_res(x), out)
    return _hexagon_boundary(face, i, j, k, _get_res(x), out)


@njit(cache=True, parallel=True)
def cell_to_boundary_array(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boundaries of many cells: ``(verts, counts)``, ``verts[n, :counts[n]]`` the ``(lat, lng)`` rows."""
    verts = np.full((cells.shape[0], MAX_BOUNDARY_VERTS, 2), np.nan)
    counts = np.empty(cells.shape[0], dtype=np.int8)
    for n in prange(cells.shape[0]):
        counts[n] = cell_to_boundary(cells[n], verts[n])
    return verts, counts


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

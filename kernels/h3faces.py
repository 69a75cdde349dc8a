"""The icosahedron's faces: the face nearest a point, the gnomonic projection between the sphere and a face's hex
plane in both directions (with the reference's floating-point operations, and a fast road for point to cell
that provably lands in the same cell), and the conversions between face-IJK coordinates and cell indices.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from kernels.h3ijk import (
    _CLIMB4,
    _DIV49_BIAS,
    _DIV49_SHIFT,
    _hex2d_to_ij,
    _ijk_map,
    _nearest_lattice_ij,
    _normalize,
    _step,
    _up_ap7r,
    _up_level,
)
from kernels.h3index import (
    _get_base_cell,
    _get_digit,
    _get_res,
    _leading_digit,
    _rotate_ccw_n,
    _rotate_cw,
    _rotate_pent_ccw,
)
from kernels.h3tables import (  # Numba reads these module globals as compile-time constants
    _BC_CW_OFFSET,
    _BC_HOME_FACE,
    _BC_HOME_IJK,
    _BC_IS_PENT,
    _DOWN7,
    _DOWN7R,
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
    _H3_CELL_INIT,
    _IJ,
    _INV_RES0_U_GNOMONIC,
    _JK,
    _KI,
    _M_2PI,
    _M_180_PI,
    _M_AP7_ROT_RADS,
    _M_ONETHIRD,
    _M_RSQRT7,
    _M_SQRT3_2,
    _M_SQRT7,
    _MAX_DIM,
    _NUM_FACES,
    _RES0_U_GNOMONIC,
    _ROT60CCW,
    _ROT60CW,
    _UNIT_SCALE,
    MAX_RES,
)

#: Every face, in order: the candidates of the full scan.
_ALL_FACES = np.arange(_NUM_FACES, dtype=_FACE_CANDIDATES.dtype)

# ------------------------------------------------------------------------------ sphere <-> faces


@njit(cache=True)
def _pos_angle(a: float) -> float:
    t = a + _M_2PI if a < 0.0 else a
    if a >= _M_2PI:
        t -= _M_2PI
    return t


@njit(cache=True)
def _nearest_face_of(faces: np.ndarray, x: float, y: float, z: float) -> tuple[int, float]:
    """The face among ``faces`` (ascending, up to the first negative entry) whose centre is nearest the unit
    vector, and the squared chord to it (first face wins ties)."""
    face = 0
    sqd = 5.0
    for f in faces:
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
def _nearest_face(x: float, y: float, z: float) -> tuple[int, float]:
    """The face whose centre is nearest the unit vector, and the squared chord to it (first face wins ties)."""
    return _nearest_face_of(_ALL_FACES, x, y, z)


@njit(cache=True)
def _nearest_face_binned(x: float, y: float, z: float, lat: float, lng: float) -> tuple[int, float]:
    """:func:`_nearest_face`, scanning only the faces that can win in the point's 1-degree bin: the same
    distances, computed the same way, so the same face and the same squared chord."""
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lng <= 180.0):
        return _nearest_face(x, y, z)
    bi = min(int(lat + 90.0), _FACE_CANDIDATES.shape[0] - 1)
    bj = min(int(lng + 180.0), _FACE_CANDIDATES.shape[1] - 1)
    return _nearest_face_of(_FACE_CANDIDATES[bi, bj], x, y, z)


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


# ----------------------------------------------------------------------- face-IJK <-> cell index


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
def _across_face_edge(face: int, quadrant: int, i: int, j: int, k: int, scale: int) -> tuple[int, int, int, int]:
    """Face-IJK ``(i, j, k)`` of ``face`` in the frame of the face across its ``quadrant`` edge (``scale``: the
    grid's unit scale); returns that face and the coordinates."""
    for _ in range(_FACE_NB_ROT[face, quadrant]):
        i, j, k = _ijk_map(_ROT60CCW, i, j, k)
    i, j, k = _normalize(i + _FACE_NB_TRANS[face, quadrant, 0] * scale,
                         j + _FACE_NB_TRANS[face, quadrant, 1] * scale,
                         k + _FACE_NB_TRANS[face, quadrant, 2] * scale)
    return _FACE_NB[face, quadrant], i, j, k


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
                ti, tj, tk = _ijk_map(_ROT60CW, i - max_dim, j, k)
                i, j, k = ti + max_dim, tj, tk
    else:
        quadrant = _IJ
    scale = _UNIT_SCALE[res] * 3 if substrate else _UNIT_SCALE[res]
    new_face, i, j, k = _across_face_edge(face, quadrant, i, j, k, scale)
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
            i, j, k = _ijk_map(_DOWN7, i, j, k)
        else:
            i, j, k = _ijk_map(_DOWN7R, i, j, k)
        i, j, k = _step(i, j, k, _get_digit(h, r))
    if not overage_possible:
        return face, i, j, k
    oi, oj, ok = i, j, k
    adj_res = res
    if res & 1:  # drop into the next finer Class II grid
        i, j, k = _ijk_map(_DOWN7R, i, j, k)
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

"""Points and cells one at a time: point to cell, the check of a point's coordinates, a cell's centre and its
boundary. Every kernel here is bit-exact with h3-py's function of the same name.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from kernels.h3faces import (
    _across_face_edge,
    _adjust_overage,
    _face_ij_to_h3,
    _h3_to_face_ijk,
    _hex2d_to_vec3,
    _vec3_to_face_ij_fast,
    _vec3_to_latlng_deg,
)
from kernels.h3ijk import _ijk_map, _ijk_to_hex2d, _normalize
from kernels.h3index import _get_res, is_pentagon
from kernels.h3tables import (  # Numba reads these module globals as compile-time constants
    _ADJACENT_FACE_DIR,
    _DOWN3,
    _DOWN3R,
    _DOWN7R,
    _FLT_EPSILON,
    _HEX_VERTS_CII,
    _HEX_VERTS_CIII,
    _IJ,
    _JK,
    _M_PI_180,
    _M_SQRT3_2,
    _MAX_DIM,
    _UNIT_SCALE,
)

# --------------------------------------------------------------------------------- point to cell


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


@njit(cache=True)
def invalid_latlng(lat: float, lng: float) -> bool:
    """Whether a point is NaN, infinite or outside [-90, 90] x [-180, 180] degrees."""
    return not (abs(lat) <= 90.0 and abs(lng) <= 180.0)  # NaN fails every comparison


# --------------------------------------------------------------------------------------- centres


@njit(cache=True)
def cell_to_latlng(h: np.uint64) -> tuple[float, float]:
    """Centre ``(lat, lng)`` in degrees of valid cell ``h``; bit-exact with h3-py ``cell_to_latlng``."""
    x = np.int64(h)
    face, i, j, k = _h3_to_face_ijk(x)
    hx, hy = _ijk_to_hex2d(i, j, k)
    vx, vy, vz = _hex2d_to_vec3(hx, hy, face, _get_res(x), False)
    return _vec3_to_latlng_deg(vx, vy, vz)


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
def _vertex_grid_centre(i: int, j: int, k: int, res: int) -> tuple[int, int, int, int]:
    """A cell's centre on the finer grid whose cell centres are its vertices (aperture 3 twice, and one Class II
    level more on Class III), and that grid's resolution."""
    ci, cj, ck = _ijk_map(_DOWN3, i, j, k)
    ci, cj, ck = _ijk_map(_DOWN3R, ci, cj, ck)
    if res & 1:
        ci, cj, ck = _ijk_map(_DOWN7R, ci, cj, ck)
        return ci, cj, ck, res + 1
    return ci, cj, ck, res


@njit(cache=True)
def _hexagon_boundary(face: int, i: int, j: int, k: int, res: int, out: np.ndarray) -> int:
    """Reference ``_faceIjkToCellBoundary`` for a whole hexagon; vertices into ``out``, count returned."""
    ci, cj, ck, adj_res = _vertex_grid_centre(i, j, k, res)
    verts = _HEX_VERTS_CIII if res & 1 else _HEX_VERTS_CII
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
    ci, cj, ck, adj_res = _vertex_grid_centre(i, j, k, res)
    verts = _HEX_VERTS_CIII if res & 1 else _HEX_VERTS_CII
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
            tf, ti, tj, tk = _across_face_edge(f, _ADJACENT_FACE_DIR[f, lf], fi, fj, fk, _UNIT_SCALE[adj_res] * 3)
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

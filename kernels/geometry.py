"""Exact planar geometry predicates over lon/lat arrays (GeoJSON RFC 7946 / shapely semantics).

An *area* is passed to kernels as flat arrays:

- ``xs``, ``ys``: float64 vertices (longitude, latitude) of every ring, each ring closed (last == first);
- ``ring_ptr``: int64, ring ``r`` spans ``xs[ring_ptr[r]:ring_ptr[r + 1]]``;
- ``poly_ptr``: int64, polygon ``p`` owns rings ``poly_ptr[p]:poly_ptr[p + 1]``, the first its exterior;
- ``poly_bbox``: float64 (n_polys, 4) ``minx, miny, maxx, maxy``.

Locations are ``OUTSIDE`` (0), ``BOUNDARY`` (1), ``INSIDE`` (2). Every predicate takes ``work``, a float64
scratch array of at least :data:`WORK_SIZE` elements, so that the per-point path never allocates. Orientation
is computed with Shewchuk's adaptive test: a fast floating-point filter, and an exact expansion-arithmetic
fallback when the filter cannot decide, so points on edges and vertices are classified exactly as GEOS
(shapely) does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

OUTSIDE = 0
BOUNDARY = 1
INSIDE = 2

_EPS = 2.0**-53
_SPLITTER = 134217729.0  # 2**27 + 1
_CCW_ERRBOUND_A = (3.0 + 16.0 * _EPS) * _EPS

# Functions called once per point or per node are compiled with ``_nrt=False``: they read arrays but never
# allocate, and without it Numba wraps every call in atomic reference-count updates of each array argument
# (the README's "How the index works" has the figures).


@njit(cache=True, inline="always")
def _two_sum(a: float, b: float) -> tuple[float, float]:
    x = a + b
    bv = x - a
    av = x - bv
    return x, (a - av) + (b - bv)


@njit(cache=True, inline="always")
def _two_diff(a: float, b: float) -> tuple[float, float]:
    x = a - b
    bv = a - x
    av = x + bv
    return x, (a - av) + (bv - b)


@njit(cache=True, inline="always")
def _split(a: float) -> tuple[float, float]:
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


@njit(cache=True, inline="always")
def _two_product(a: float, b: float) -> tuple[float, float]:
    x = a * b
    ahi, alo = _split(a)
    bhi, blo = _split(b)
    err = x - ahi * bhi - alo * bhi - ahi * blo
    return x, alo * blo - err


@njit(cache=True, _nrt=False)
def _grow(e: np.ndarray, n: int, b: float) -> int:
    """Add ``b`` to the non-overlapping expansion ``e[:n]`` in place (Shewchuk's Grow-Expansion)."""
    q = b
    for i in range(n):
        q, h = _two_sum(q, e[i])
        e[i] = h
    e[n] = q
    return n + 1


@njit(cache=True, inline="always")
def _sign(x: float) -> int:
    return (x > 0.0) - (x < 0.0)


@njit(cache=True, _nrt=False)
def _orient_exact(ax: float, ay: float, bx: float, by: float, cx: float, cy: float, work: np.ndarray) -> float:
    """Exact sign of ``(ax-cx)(by-cy) - (ay-cy)(bx-cx)``, as -1.0, 0.0 or 1.0.

    Each difference is an exact two-term expansion. The products P = (ax-cx)(by-cy) and Q = (ay-cy)(bx-cx)
    are first compared by sign and binary exponent; when that cannot decide, every factor is scaled by a power
    of two (exact) to magnitude ~1 so that no partial product underflows, and P - Q is summed exactly in
    ``work`` (at least 16 float64 of scratch space, so that no call allocates).
    """
    p1, p1t = _two_diff(ax, cx)
    p2, p2t = _two_diff(by, cy)
    q1, q1t = _two_diff(ay, cy)
    q2, q2t = _two_diff(bx, cx)
    sp = _sign(p1) * _sign(p2)  # a two_diff head carries the sign of the exact difference
    sq = _sign(q1) * _sign(q2)
    if sp != sq or sp == 0:
        return float(_sign(float(sp - sq)))
    e1 = math.frexp(p1)[1]
    e2 = math.frexp(p2)[1]
    e3 = math.frexp(q1)[1]
    e4 = math.frexp(q2)[1]
    shift = (e1 + e2) - (e3 + e4)
    if shift >= 4:  # |P| >= 2^(e1+e2-2)(1-2^-52)^2 > 2^(e3+e4) > |Q|
        return float(sp)
    if shift <= -4:
        return float(-sq)
    f1 = math.ldexp(1.0, -e1)
    f2 = math.ldexp(1.0, -e2)
    f3 = math.ldexp(1.0, -e3)
    f4 = math.ldexp(1.0, -e4 - shift)
    lx = (p1 * f1, p1t * f1)
    ly = (p2 * f2, p2t * f2)
    rx = (q1 * f3, q1t * f3)
    ry = (q2 * f4, q2t * f4)
    e = work
    n = 0
    for i in range(2):
        for j in range(2):
            p, pt = _two_product(lx[i], ly[j])
            n = _grow(e, n, pt)
            n = _grow(e, n, p)
            q, qt = _two_product(rx[i], ry[j])
            n = _grow(e, n, -qt)
            n = _grow(e, n, -q)
    for i in range(n - 1, -1, -1):
        if e[i] != 0.0:
            return float(_sign(e[i]))
    return 0.0


#: float64 scratch space the exact orientation needs; callers allocate it once and pass it down.
WORK_SIZE = 16

#: Below this, products of coordinate differences may have lost bits to underflow: decide exactly.
_TINY = 2.0**-900


@njit(cache=True, inline="always")
def orient2d_filtered(ax: float, ay: float, bx: float, by: float, cx: float, cy: float) -> float:
    """The orientation determinant of :func:`orient2d` when floating point certifies its sign, else 0.0
    (collinear, or too close to call without exact arithmetic)."""
    detleft = (ax - cx) * (by - cy)
    detright = (ay - cy) * (bx - cx)
    det = detleft - detright
    detsum = abs(detleft) + abs(detright)
    if detsum >= _TINY and abs(det) > _CCW_ERRBOUND_A * detsum:
        return det
    return 0.0


@njit(cache=True, _nrt=False)
def orient2d(ax: float, ay: float, bx: float, by: float, cx: float, cy: float, work: np.ndarray) -> float:
    """A value whose sign is exactly the orientation of ``c`` relative to the directed line ``a -> b``.

    Positive: ``c`` lies to the left (counter-clockwise turn); negative: right; zero: collinear.
    """
    det = orient2d_filtered(ax, ay, bx, by, cx, cy)
    if det != 0.0:
        return det
    return _orient_exact(ax, ay, bx, by, cx, cy, work)


@njit(cache=True, _nrt=False)
def locate_in_ring(px: float, py: float, xs: np.ndarray, ys: np.ndarray, lo: int, hi: int,
                   work: np.ndarray) -> int:
    """Where ``(px, py)`` lies relative to the closed ring ``xs[lo:hi]``: OUTSIDE, BOUNDARY or INSIDE.

    Ray crossing to +x with half-open edges; a point on an edge or vertex is BOUNDARY, decided exactly.
    """
    crossings = 0
    for k in range(lo, hi - 1):
        x1 = xs[k]
        y1 = ys[k]
        x2 = xs[k + 1]
        y2 = ys[k + 1]
        if x1 < px and x2 < px:
            continue
        if px == x2 and py == y2:
            return BOUNDARY
        if y1 == py and y2 == py:
            if min(x1, x2) <= px <= max(x1, x2):
                return BOUNDARY
            continue
        if (y1 > py and y2 <= py) or (y2 > py and y1 <= py):
            o = orient2d(x1, y1, x2, y2, px, py, work)
            if o == 0.0:
                return BOUNDARY
            if y2 < y1:
                o = -o
            if o > 0.0:
                crossings += 1
    return INSIDE if crossings & 1 else OUTSIDE


@njit(cache=True, _nrt=False)
def locate_in_polygon(px: float, py: float, xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray,
                      r0: int, r1: int, work: np.ndarray) -> int:
    """Location of a point relative to the polygon whose rings are ``r0:r1`` (exterior first, then holes)."""
    loc = locate_in_ring(px, py, xs, ys, ring_ptr[r0], ring_ptr[r0 + 1], work)
    if loc != INSIDE:
        return loc
    for r in range(r0 + 1, r1):
        h = locate_in_ring(px, py, xs, ys, ring_ptr[r], ring_ptr[r + 1], work)
        if h == INSIDE:
            return OUTSIDE
        if h == BOUNDARY:
            return BOUNDARY
    return INSIDE


@njit(cache=True, _nrt=False)
def covers_point(px: float, py: float, xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray,
                 poly_ptr: np.ndarray, poly_bbox: np.ndarray, work: np.ndarray) -> bool:
    """True when the area contains the point or the point lies on its boundary (shapely ``intersects``)."""
    for p in range(poly_ptr.shape[0] - 1):
        if px < poly_bbox[p, 0] or px > poly_bbox[p, 2] or py < poly_bbox[p, 1] or py > poly_bbox[p, 3]:
            continue
        if locate_in_polygon(px, py, xs, ys, ring_ptr, poly_ptr[p], poly_ptr[p + 1], work) != OUTSIDE:
            return True
    return False


@njit(cache=True, _nrt=False)
def _segment_may_touch_box(x1: float, y1: float, x2: float, y2: float,
                           bx0: float, by0: float, bx1: float, by1: float) -> bool:
    """Conservative: False only when the segment certainly misses the closed box."""
    if max(x1, x2) < bx0 or min(x1, x2) > bx1 or max(y1, y2) < by0 or min(y1, y2) > by1:
        return False
    # Separating axis: the segment's line. Signs of the four corners, with slack for rounding.
    dx = x2 - x1
    dy = y2 - y1
    s0 = dx * (by0 - y1) - dy * (bx0 - x1)
    s1 = dx * (by0 - y1) - dy * (bx1 - x1)
    s2 = dx * (by1 - y1) - dy * (bx0 - x1)
    s3 = dx * (by1 - y1) - dy * (bx1 - x1)
    scale = (abs(dx) + abs(dy)) * (abs(bx0 - x1) + abs(bx1 - x1) + abs(by0 - y1) + abs(by1 - y1) + 1.0)
    slack = 1e-12 * scale
    if s0 > slack and s1 > slack and s2 > slack and s3 > slack:
        return False
    if s0 < -slack and s1 < -slack and s2 < -slack and s3 < -slack:
        return False
    return True


#: Box classification results.
BOX_OUT = 0
BOX_MIXED = 1
BOX_IN = 2


@njit(cache=True, _nrt=False)
def classify_box(bx0: float, by0: float, bx1: float, by1: float, xs: np.ndarray, ys: np.ndarray,
                 ring_ptr: np.ndarray, poly_ptr: np.ndarray, poly_bbox: np.ndarray, work: np.ndarray) -> int:
    """BOX_IN when every point of the closed box is covered by the area, BOX_OUT when none is, else BOX_MIXED.

    Conservative: BOX_IN and BOX_OUT are certain; BOX_MIXED means "test each point".
    """
    inside_any = False
    for p in range(poly_ptr.shape[0] - 1):
        if bx1 < poly_bbox[p, 0] or bx0 > poly_bbox[p, 2] or by1 < poly_bbox[p, 1] or by0 > poly_bbox[p, 3]:
            continue
        for r in range(poly_ptr[p], poly_ptr[p + 1]):
            for k in range(ring_ptr[r], ring_ptr[r + 1] - 1):
                if _segment_may_touch_box(xs[k], ys[k], xs[k + 1], ys[k + 1], bx0, by0, bx1, by1):
                    return BOX_MIXED
        # No edge of this polygon touches the box: the box lies wholly inside or wholly outside it.
        if locate_in_polygon(bx0, by0, xs, ys, ring_ptr, poly_ptr[p], poly_ptr[p + 1], work) != OUTSIDE:
            inside_any = True
    return BOX_IN if inside_any else BOX_OUT


@njit(cache=True)
def covers_points(px: np.ndarray, py: np.ndarray, xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray,
                  poly_ptr: np.ndarray, poly_bbox: np.ndarray) -> np.ndarray:
    """Vectorised :func:`covers_point` (a brute-force reference and the path for small live deltas)."""
    out = np.empty(px.shape[0], dtype=np.bool_)
    work = np.empty(WORK_SIZE)
    for i in range(px.shape[0]):
        out[i] = covers_point(px[i], py[i], xs, ys, ring_ptr, poly_ptr, poly_bbox, work)
    return out

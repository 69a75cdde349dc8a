"""Validation of areas in compiled code: the ring rules, the simple-polygon test, holes and parts, and whether one
area covers another. Areas are the flat arrays of :mod:`kernels.geometry`.

Every check here answers "certainly" or "not certain", never "no" on its own: it decides only what floating point
certifies (:func:`kernels.geometry.orient2d_filtered`, exact comparisons), and everything else (an invalid area, a
touch, collinear edges, a polygon too thin to measure) goes back to the caller, which asks GEOS (shapely) for the
answer and its reason. The compiled path never gives another answer than GEOS; it skips GEOS for the areas GEOS
would accept.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from kernels.geometry import (
    INSIDE,
    OUTSIDE,
    WORK_SIZE,
    covers_point,
    locate_in_polygon,
    locate_in_ring,
    orient2d_filtered,
)

#: :func:`check_area`: every ring rule holds and the area is certainly a valid (Multi)Polygon of positive area.
AREA_VALID = 0
#: A ring breaks a rule (fewer than 4 positions, NaN or infinite, not closed, out of range, spanning > 180°).
AREA_RING_RULE = 1
#: Not certainly valid: GEOS decides (an invalid area, or a valid one too close to call).
AREA_UNSURE = 2

#: :func:`check_area` tests every pair of edges: an area with more (after repeated positions are dropped) goes
#: to GEOS, whose sweep is faster there. Request areas have 8-14.
MAX_EDGES = 128

#: :func:`covers_area`: certainly covered, certainly not, or GEOS decides.
COVERED = 0
NOT_COVERED = 1
COVER_UNSURE = 2

#: A polygon's planar area must exceed this share of its bounding box's for the compiled path to call it
#: positive: far above the rounding of the shoelace sum (a few ulp of the box's area per vertex).
_MIN_AREA_SHARE = 1e-8
#: ... and a polygon's holes must leave at least this share of its shell's area.
_MIN_NET_SHARE = 1e-6


@njit(cache=True, _nrt=False)
def _ring_rules(xs: np.ndarray, ys: np.ndarray, lo: int, hi: int, box: np.ndarray, r: int) -> bool:
    """Whether ring ``xs[lo:hi]`` has 4 positions or more, finite, closed, within lng [-180, 180] / lat [-90, 90]
    and spanning at most 180° of longitude; its bounds go to ``box[r]``."""
    if hi - lo < 4:
        return False
    x0 = x1 = xs[lo]
    y0 = y1 = ys[lo]
    for i in range(lo, hi):
        x = xs[i]
        y = ys[i]
        if not (math.isfinite(x) and math.isfinite(y)):
            return False
        x0 = min(x0, x)
        x1 = max(x1, x)
        y0 = min(y0, y)
        y1 = max(y1, y)
    if xs[lo] != xs[hi - 1] or ys[lo] != ys[hi - 1]:
        return False
    if x0 < -180.0 or x1 > 180.0 or y0 < -90.0 or y1 > 90.0 or x1 - x0 > 180.0:
        return False
    box[r, 0] = x0
    box[r, 1] = y0
    box[r, 2] = x1
    box[r, 3] = y1
    return True


@njit(cache=True, _nrt=False)
def _edges(xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray, ea: np.ndarray, eb: np.ndarray,
           first: np.ndarray) -> int:
    """The rings' edges with repeated consecutive positions dropped: edge ``k`` runs from vertex ``ea[k]`` to
    ``eb[k]``; ring ``r``'s edges are ``first[r]:first[r + 1]``. -1 when a ring has fewer than 3 edges left."""
    m = 0
    for r in range(ring_ptr.shape[0] - 1):
        first[r] = m
        last = ring_ptr[r]
        for i in range(ring_ptr[r] + 1, ring_ptr[r + 1]):
            if xs[i] != xs[last] or ys[i] != ys[last]:
                ea[m] = last
                eb[m] = i
                m += 1
                last = i
        if m - first[r] < 3:
            return -1
    first[ring_ptr.shape[0] - 1] = m
    return m


@njit(cache=True, _nrt=False)
def _apart(ax: float, ay: float, bx: float, by: float, cx: float, cy: float, dx: float, dy: float) -> bool:
    """Whether segments ab and cd certainly share no point: one lies strictly on one side of the other's line."""
    d1 = orient2d_filtered(ax, ay, bx, by, cx, cy)
    d2 = orient2d_filtered(ax, ay, bx, by, dx, dy)
    if (d1 > 0.0 and d2 > 0.0) or (d1 < 0.0 and d2 < 0.0):
        return True
    d3 = orient2d_filtered(cx, cy, dx, dy, ax, ay)
    d4 = orient2d_filtered(cx, cy, dx, dy, bx, by)
    return (d3 > 0.0 and d4 > 0.0) or (d3 < 0.0 and d4 < 0.0)


@njit(cache=True, _nrt=False)
def _edges_simple(xs: np.ndarray, ys: np.ndarray, ea: np.ndarray, eb: np.ndarray, ring_of: np.ndarray,
                  first: np.ndarray, m: int) -> bool:
    """Whether the edges certainly meet only where consecutive edges of a ring share their vertex, at a corner
    that is not straight: no crossing, no touch, no overlap, within a ring or between rings. Every pair whose
    boxes meet is tested (:data:`MAX_EDGES` edges at most: the caller hands larger areas to GEOS)."""
    for i in range(m):
        ax, ay, bx, by = xs[ea[i]], ys[ea[i]], xs[eb[i]], ys[eb[i]]
        xlo, xhi, ylo, yhi = min(ax, bx), max(ax, bx), min(ay, by), max(ay, by)
        for j in range(i + 1, m):
            cx, cy, dx, dy = xs[ea[j]], ys[ea[j]], xs[eb[j]], ys[eb[j]]
            if max(cx, dx) < xlo or min(cx, dx) > xhi or max(cy, dy) < ylo or min(cy, dy) > yhi:
                continue
            r = ring_of[i]
            if r == ring_of[j] and (j == i + 1 or (i == first[r] and j == first[r + 1] - 1)):
                # consecutive: they share one vertex and meet only there unless the corner is straight
                if j == i + 1:
                    straight = orient2d_filtered(ax, ay, bx, by, dx, dy) == 0.0
                else:
                    straight = orient2d_filtered(cx, cy, dx, dy, bx, by) == 0.0
                if straight:
                    return False
                continue
            if not _apart(ax, ay, bx, by, cx, cy, dx, dy):
                return False
    return True


@njit(cache=True, _nrt=False)
def _shoelace(xs: np.ndarray, ys: np.ndarray, lo: int, hi: int) -> float:
    """Twice the ring's signed planar area, about its first vertex (so the terms stay small)."""
    x0 = xs[lo]
    y0 = ys[lo]
    s = 0.0
    for k in range(lo, hi - 1):
        s += (xs[k] - x0) * (ys[k + 1] - y0) - (xs[k + 1] - x0) * (ys[k] - y0)
    return s


@njit(cache=True, _nrt=False)
def _boxes_meet(a: np.ndarray, i: int, b: np.ndarray, j: int) -> bool:
    return not (a[i, 2] < b[j, 0] or a[i, 0] > b[j, 2] or a[i, 3] < b[j, 1] or a[i, 1] > b[j, 3])


@njit(cache=True)
def check_area(xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray,
               poly_bbox: np.ndarray) -> int:
    """:data:`AREA_VALID`, :data:`AREA_RING_RULE` or :data:`AREA_UNSURE` for the area in the flat arrays; its
    polygons' bounds (their shells') are written to ``poly_bbox`` (n_polys, 4).

    Valid, as GEOS has it: every ring simple (no crossing, no touch, repeated consecutive positions allowed),
    rings of a polygon apart, each hole inside its shell and outside the other holes, polygons of a MultiPolygon
    apart and neither inside the other's material; and a positive planar area. Certain only when no two edges
    come near enough to touch: with no touch, one vertex places a whole ring.
    """
    n_rings = ring_ptr.shape[0] - 1
    n_polys = poly_ptr.shape[0] - 1
    box = np.empty((n_rings, 4))
    for r in range(n_rings):
        if not _ring_rules(xs, ys, ring_ptr[r], ring_ptr[r + 1], box, r):
            return AREA_RING_RULE
    for p in range(n_polys):
        for c in range(4):
            poly_bbox[p, c] = box[poly_ptr[p], c]
    n = xs.shape[0]
    ea = np.empty(n, np.int64)
    eb = np.empty(n, np.int64)
    first = np.empty(n_rings + 1, np.int64)
    m = _edges(xs, ys, ring_ptr, ea, eb, first)
    if m < 0 or m > MAX_EDGES:
        return AREA_UNSURE
    ring_of = np.empty(m, np.int64)
    for r in range(n_rings):
        ring_of[first[r]:first[r + 1]] = r
    if not _edges_simple(xs, ys, ea, eb, ring_of, first, m):
        return AREA_UNSURE
    work = np.empty(WORK_SIZE)
    for p in range(n_polys):
        shell = poly_ptr[p]
        s_lo, s_hi = ring_ptr[shell], ring_ptr[shell + 1]
        a2 = abs(_shoelace(xs, ys, s_lo, s_hi))
        if not (a2 > _MIN_AREA_SHARE * (box[shell, 2] - box[shell, 0]) * (box[shell, 3] - box[shell, 1])
                and a2 > 1e-300):
            return AREA_UNSURE
        holes = 0.0
        for h in range(shell + 1, poly_ptr[p + 1]):
            lo = ring_ptr[h]
            if locate_in_ring(xs[lo], ys[lo], xs, ys, s_lo, s_hi, work) != INSIDE:
                return AREA_UNSURE  # a hole outside its shell: GEOS names it
            for g in range(shell + 1, poly_ptr[p + 1]):
                if g != h and _boxes_meet(box, h, box, g) and \
                        locate_in_ring(xs[lo], ys[lo], xs, ys, ring_ptr[g], ring_ptr[g + 1], work) != OUTSIDE:
                    return AREA_UNSURE  # nested holes
            holes += abs(_shoelace(xs, ys, lo, ring_ptr[h + 1]))
        if not a2 - holes > _MIN_NET_SHARE * a2:
            return AREA_UNSURE
    for p in range(n_polys):
        for q in range(n_polys):
            if p == q or not _boxes_meet(box, poly_ptr[p], box, poly_ptr[q]):
                continue
            lo = ring_ptr[poly_ptr[q]]
            if locate_in_polygon(xs[lo], ys[lo], xs, ys, ring_ptr, poly_ptr[p], poly_ptr[p + 1], work) != OUTSIDE:
                return AREA_UNSURE  # overlapping parts
    return AREA_VALID


@njit(cache=True)
def parse_area(xy: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray, out: np.ndarray) -> int:
    """:func:`check_area` of the positions ``xy`` (n, 2), in one call: the longitudes go to ``out[:n]``, the
    latitudes to ``out[n:2n]`` and the polygons' bounds to ``out[2n:]`` (n_polys rows of 4), the layout an area
    keeps (:mod:`kernels.geometry`). ``out`` holds ``2n + 4 n_polys`` floats."""
    n = xy.shape[0]
    for i in range(n):
        out[i] = xy[i, 0]
        out[n + i] = xy[i, 1]
    return check_area(out[:n], out[n:2 * n], ring_ptr, poly_ptr, out[2 * n:].reshape((poly_ptr.shape[0] - 1, 4)))


@njit(cache=True)
def covers_area(jx: np.ndarray, jy: np.ndarray, j_ring_ptr: np.ndarray, j_poly_ptr: np.ndarray,
                j_poly_bbox: np.ndarray, xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray,
                poly_bbox: np.ndarray) -> int:
    """Whether the area ``j`` (a jurisdiction) covers the area ``xs..``, every point of it inside or on the
    boundary (shapely ``covers``): :data:`COVERED`, :data:`NOT_COVERED` or :data:`COVER_UNSURE`.

    Certain when no edge of one comes near an edge of the other: then each of the area's rings lies wholly
    inside or wholly outside ``j`` and one vertex says which, and no ring of ``j`` may lie inside the area (a
    hole of ``j``, or a part, would be uncovered or be a touch GEOS must judge).
    """
    ax0 = poly_bbox[:, 0].min()
    ay0 = poly_bbox[:, 1].min()
    ax1 = poly_bbox[:, 2].max()
    ay1 = poly_bbox[:, 3].max()
    for k in range(jx.shape[0] - 1):
        x1, y1, x2, y2 = jx[k], jy[k], jx[k + 1], jy[k + 1]
        if max(x1, x2) < ax0 or min(x1, x2) > ax1 or max(y1, y2) < ay0 or min(y1, y2) > ay1:
            continue
        for i in range(xs.shape[0] - 1):
            cx, cy, dx, dy = xs[i], ys[i], xs[i + 1], ys[i + 1]
            if max(cx, dx) < min(x1, x2) or min(cx, dx) > max(x1, x2) or max(cy, dy) < min(y1, y2) \
                    or min(cy, dy) > max(y1, y2):
                continue
            if not _apart(x1, y1, x2, y2, cx, cy, dx, dy):
                return COVER_UNSURE  # this loop pairs the last vertex of a ring with the next ring's first too
    work = np.empty(WORK_SIZE)
    for r in range(j_ring_ptr.shape[0] - 1):
        lo = j_ring_ptr[r]
        if covers_point(jx[lo], jy[lo], xs, ys, ring_ptr, poly_ptr, poly_bbox, work):
            return COVER_UNSURE
    for p in range(poly_ptr.shape[0] - 1):
        lo = ring_ptr[poly_ptr[p]]
        if not covers_point(xs[lo], ys[lo], jx, jy, j_ring_ptr, j_poly_ptr, j_poly_bbox, work):
            return NOT_COVERED
    return COVERED

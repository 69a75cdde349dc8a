"""The width rules of the request policy in compiled code, for the polygons they certainly pass.

The policy measures a polygon's widths with GEOS (:func:`dispatcher.workflow.policy._widths`): its *core* is
``buffer(P, -r, quad_segs=2)`` (r = ``min_width_m`` / 2), its lobes the core's parts; its *bits* are the parts of
``P - buffer(core, 1.08 r)``, and a bit whose reach (its farthest sampled point's distance to the core, less r)
exceeds r must cover ``min_strip_ratio`` of ``corner(reach) = r² (cot b - (π/2 - b))``, sin b = r / (r + reach).
:func:`certify_widths` decides, for a simple polygon without holes, whether GEOS certainly finds one lobe and no
bit that breaks that rule, and otherwise answers "not certain" (the caller asks GEOS). It never certifies a
polygon for which GEOS would find other lobes or a narrow strip; the policy's verdict is then the same.

**What GEOS builds** (``quad_segs=2``, quantum q = π/4). It offsets each edge of a ring by the distance, joins two
offsets at an inside turn by their intersection (when they meet) and at an outside turn by a fillet of
round(θ / q) equal chords (θ the turn; one chord when that rounds to 0) with its vertices on the circle, and takes
the inside of that curve. Its input simplification drops only inward corners (on the buffer's side) closer than
1% of the distance to their neighbours' segment, never outward ones; for the negative buffer these are the
polygon's convex vertices, for the core's positive buffers the core's reflex vertices (which only enlarges it).

**The conditions.** ``P`` counter-clockwise, vertices v_i, edges e_i = [v_i, v_i+1] of direction d_i and inward
normal n_i, θ_i the turn at v_i (> 0: convex). Every margin is far above rounding (metres, a few km at most):

- (C0) every convex vertex lies at least ``_SHALLOW`` r from its neighbours' segment: GEOS simplifies nothing;
- (C1) each edge holds its two *trims*, τ_i = r tan(θ_i / 2) at a convex end and 0 at a reflex one, with
  ``_SLACK`` r to spare: the offset O_i = [v_i + r n_i + τ_i d_i, v_i+1 + r n_i - τ_i+1 d_i] is a segment, and at a
  convex v_i the full offsets of e_i-1 and e_i cross at c_i (the end of O_i-1 and start of O_i, at r from both
  edges), the point GEOS puts there;
- (C2) each O_i keeps (1 + ``_MARGIN``) r from every edge but e_i-1, e_i, e_i+1;
- (C3) at each reflex v_i, the *hull* v_i, A = v_i + r n_i-1, T_1, T_2, T_3, B = v_i + r n_i (the corners of
  the tangents to the arc from A to B divided in three), which holds GEOS's fillet from A to B, keeps
  (1 + ``_MARGIN``) r from every edge not at v_i;
- (C4) at each *sharp* convex v_i, where D = r / cos(θ_i / 2) = |v_i - c_i| exceeds (1 - ``_MARGIN``) 2r: its tip
  triangle (v_i and the tangent points v_i - τ_i d_i-1, v_i + τ_i d_i) keeps (1 + ``_MARGIN``) ``_BIT_DISC`` r from
  every O_j (j not i-1, i) and every reflex vertex's hull; and the area of the tip outside the disc of radius
  ``_BIT_DISC`` r about c_i is at least (1 + ``_MARGIN``) ``min_strip_ratio`` corner(D - r).

**One lobe.** GEOS's offset curve W runs O_0, (c_1 or the fillet at v_1), O_1, ... Each O_j lies at r from e_j and
each fillet in its hull, so by (C2) and (C3) parts of W that are not neighbours along it are apart (each keeps more
than r from the edge the other lies at r from, or within r of a vertex of), and neighbours meet only at their
shared end (a fillet lies beyond the normal lines at its vertex, which its offsets end on; at a convex v_i, O_i-1
and O_i lie on lines that cross once, at c_i; at a reflex one they would cross only beyond their ends). W is a
simple closed curve: the core is its inside, one polygon, and not empty ((C2) keeps it wider than ``_MARGIN`` r).

**No narrow strip.** A point x of P within r of the boundary lies within r of an edge e with its foot q on e
(x = q + t n, 0 <= t <= r), or within r of a reflex vertex between its edges' normals (an interior point's nearest
boundary point is never a convex vertex). Then x lies within r of W (the fillet point in its direction; or
q + r n on O_e), or its foot lies on a trim of a convex v_i: in the rectangle [v_i, tangent point] x [0, r], whose
farthest point from c_i is v_i, at D; points farther than r from c_i there lie in the tip triangle. Points
farther than r from the boundary are in the core. Whatever is not within r of a core edge's inside or of a
fillet's side lies in a corner's rectangles, within D of the core; so a bit whose reach exceeds r (a point beyond
2r of the core) lies at a sharp corner, in its tip triangle, with reach at most D - r: corner(reach) <=
corner(D - r) = r² (cot(α/2) - (π/2 - α/2)), α = π - θ_i. The bit holding v_i holds all the tip beyond
``_BIT_DISC`` r of c_i: it is outside the core (within r of an edge, and away from every fillet), the core's
nearest points to it are c_i or farther parts of W, all beyond ``_BIT_DISC`` r by (C4), and GEOS's buffer by
1.08 r, chords inside circles, of a core enlarged by at most 1% of 1.08 r, reaches no farther than 1.0908 r. So
that bit covers at least :func:`_tip_area` (the tip's triangle less the disc's segment), and (C4) makes that at
least ``min_strip_ratio`` corner(reach). Any other bit there lies within ``_BIT_DISC`` r of c_i, reaching less
than r, and does not count; a corner that is not sharp has every point within 2r of c_i, so no bit that counts.

Everything rests on GEOS building the buffers as described; the tests check the verdicts against GEOS itself on
typical, random and hostile polygons, down to the margins' edges.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: :func:`certify_widths`: one lobe and no narrow strip, certainly. Any other value: GEOS decides; the value names
#: the first condition that did not hold (C0 .. C4 are 1 .. 5), for the tests and the benchmark's account.
CERTIFIED = 0
#: ... a polygon with holes, or fewer than 3 distinct positions, or no area
NOT_SIMPLE = 6
#: ... an edge of no length after the transform to metres
DEGENERATE = 9
#: (C0): GEOS simplifies inward corners nearer than 1% of the distance to their neighbours' segment.
_SHALLOW = 0.012
#: (C2)-(C4): clearance beyond what the argument needs, as a share.
_MARGIN = 0.01
#: (C1): what an offset keeps after its trims, as a share of r.
_SLACK = 0.05
#: (C4): the radius (share of r) beyond which GEOS's buffer of the core by 1.08 r certainly leaves a tip out.
_BIT_DISC = 1.1
#: (C3): the sides of the polygon that holds a fillet: v, A, 3 tangents' corners (each a sixth of a turn at most,
#: within r / cos(π / 6) of v), B.
_HULL_SIDES = 6


@njit(cache=True, inline="always")
def _point_segment(px: float, py: float, ax: float, ay: float, bx: float, by: float) -> float:
    ux, uy = bx - ax, by - ay
    wx, wy = px - ax, py - ay
    uu = ux * ux + uy * uy
    t = 0.0 if uu == 0.0 else min(1.0, max(0.0, (wx * ux + wy * uy) / uu))
    return math.hypot(wx - t * ux, wy - t * uy)


@njit(cache=True, inline="always")
def _boxes_apart(ax: float, ay: float, bx: float, by: float, cx: float, cy: float, dx: float, dy: float,
                 gap: float) -> bool:
    """Whether the boxes of segments ab and cd lie more than ``gap`` apart along an axis (then so do they)."""
    return (max(ax, bx) + gap < min(cx, dx) or max(cx, dx) + gap < min(ax, bx)
            or max(ay, by) + gap < min(cy, dy) or max(cy, dy) + gap < min(ay, by))


@njit(cache=True, inline="always")
def _segments(ax: float, ay: float, bx: float, by: float, cx: float, cy: float, dx: float, dy: float) -> float:
    """The distance between segments ab and cd (0 when they cross)."""
    d1 = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    d2 = (bx - ax) * (dy - ay) - (by - ay) * (dx - ax)
    d3 = (dx - cx) * (ay - cy) - (dy - cy) * (ax - cx)
    d4 = (dx - cx) * (by - cy) - (dy - cy) * (bx - cx)
    if ((d1 > 0.0 and d2 < 0.0) or (d1 < 0.0 and d2 > 0.0)) and ((d3 > 0.0 and d4 < 0.0) or (d3 < 0.0 and d4 > 0.0)):
        return 0.0
    return min(min(_point_segment(ax, ay, cx, cy, dx, dy), _point_segment(bx, by, cx, cy, dx, dy)),
               min(_point_segment(cx, cy, ax, ay, bx, by), _point_segment(dx, dy, ax, ay, bx, by)))


@njit(cache=True, inline="always")
def _corner_area(r: float, half: float) -> float:
    """What a straight corner of half-angle ``half`` leaves outside the disc of radius ``r`` inscribed in it
    (the policy's corner(reach) for the reach of its tip, r / sin(half) - r)."""
    return r * r * (1.0 / math.tan(half) - (0.5 * math.pi - half))


@njit(cache=True, inline="always")
def _tip_area(r: float, half: float, rho: float) -> float:
    """The area of a straight corner of half-angle ``half`` between its tip and the disc of radius ``rho`` (> r)
    about the centre of its inscribed disc of radius ``r``; 0 when the disc reaches the tip."""
    far = r / math.sin(half)  # tip to centre
    if rho >= far:
        return 0.0
    s1 = r / math.tan(half) - math.sqrt(rho * rho - r * r)  # along each edge, tip to where the circle crosses it
    if s1 <= 0.0:
        return 0.0
    gap = far - s1 * math.cos(half)  # centre to the chord between the crossings
    segment = rho * rho * math.acos(min(1.0, gap / rho)) - gap * math.sqrt(max(0.0, rho * rho - gap * gap))
    return s1 * s1 * math.sin(half) * math.cos(half) - segment


@njit(cache=True, inline="always")
def _hull_side(x: np.ndarray, y: np.ndarray, w: np.ndarray, n: int, i: int, r: float, k: int
               ) -> tuple[float, float, float, float]:
    """Side ``k`` (0 .. :data:`_HULL_SIDES` - 1) of the polygon that holds GEOS's fillet at reflex v_i: v_i, A =
    v_i + r n_i-1, then the corners T_1 .. T_m of the tangents to the arc from A to B = v_i + r n_i at its
    division into m = ``_HULL_SIDES`` - 3 equal parts, then B, back to v_i (see (C3))."""
    h = i - 1 if i > 0 else n - 1
    m = _HULL_SIDES - 3
    turn = w[i, 3] / m  # negative: the normal turns clockwise at a reflex vertex
    out = r / math.cos(0.5 * turn)
    ux, uy = -w[h, 1], w[h, 0]
    if k == 0:
        return x[i], y[i], x[i] + r * ux, y[i] + r * uy
    if k == _HULL_SIDES - 1:
        return x[i] - r * w[i, 1], y[i] + r * w[i, 0], x[i], y[i]
    if k == 1:
        px, py = x[i] + r * ux, y[i] + r * uy
    else:
        a = (k - 1.5) * turn
        px = x[i] + out * (ux * math.cos(a) - uy * math.sin(a))
        py = y[i] + out * (ux * math.sin(a) + uy * math.cos(a))
    if k == _HULL_SIDES - 2:
        return px, py, x[i] - r * w[i, 1], y[i] + r * w[i, 0]
    a = (k - 0.5) * turn
    qx = x[i] + out * (ux * math.cos(a) - uy * math.sin(a))
    return px, py, qx, y[i] + out * (ux * math.sin(a) + uy * math.cos(a))


@njit(cache=True, inline="always")
def _to_triangle(px: float, py: float, qx: float, qy: float, sx: float, sy: float, cx: float, cy: float, dx: float,
                 dy: float) -> float:
    """The distance from segment cd to the sides of triangle p q s."""
    return min(_segments(px, py, qx, qy, cx, cy, dx, dy),
               min(_segments(qx, qy, sx, sy, cx, cy, dx, dy), _segments(sx, sy, px, py, cx, cy, dx, dy)))


@njit(cache=True, _nrt=False)
def _certify_ring(x: np.ndarray, y: np.ndarray, n: int, r: float, ratio: float, w: np.ndarray) -> int:
    """Conditions (C0)-(C4) of the module's docstring for the counter-clockwise ring ``x[:n], y[:n]`` (not
    closed, no repeated consecutive positions) at ``r`` and ``min_strip_ratio`` ``ratio``: :data:`CERTIFIED`, or
    1 + the first one that fails. ``w``: float64 scratch, (n, 9) at least."""
    # w[i]: 0-1 the direction of e_i, 2 its length, 3 the turn at v_i, 4 the trim at v_i, 5-8 O_i's ends
    for i in range(n):
        k = i + 1 if i + 1 < n else 0
        ex, ey = x[k] - x[i], y[k] - y[i]
        length = math.hypot(ex, ey)
        if not length > 0.0:
            return DEGENERATE
        w[i, 0], w[i, 1], w[i, 2] = ex / length, ey / length, length
    for i in range(n):
        h = i - 1 if i > 0 else n - 1
        k = i + 1 if i + 1 < n else 0
        ax, ay, bx, by = w[h, 0], w[h, 1], w[i, 0], w[i, 1]
        theta = math.atan2(ax * by - ay * bx, ax * bx + ay * by)
        w[i, 3] = theta
        w[i, 4] = 0.0
        if theta > 0.0:
            gx, gy = x[k] - x[h], y[k] - y[h]  # (C0), from the line: nearer than from the segment
            if abs(gx * (y[i] - y[h]) - gy * (x[i] - x[h])) < _SHALLOW * r * math.hypot(gx, gy):
                return 1
            if 0.5 * theta >= 0.5 * math.pi - 1e-6:
                return 2
            w[i, 4] = r * math.tan(0.5 * theta)
    for i in range(n):  # (C1)
        k = i + 1 if i + 1 < n else 0
        if w[i, 4] + w[k, 4] > w[i, 2] - _SLACK * r:
            return 2
        dx, dy = w[i, 0], w[i, 1]
        w[i, 5], w[i, 6] = x[i] - r * dy + w[i, 4] * dx, y[i] + r * dx + w[i, 4] * dy
        w[i, 7], w[i, 8] = x[k] - r * dy - w[k, 4] * dx, y[k] + r * dx - w[k, 4] * dy
    clear = (1.0 + _MARGIN) * r
    for i in range(n):  # (C2)
        k = i + 1 if i + 1 < n else 0
        for j in range(n):
            if j == i or j == k or (j + 1 if j + 1 < n else 0) == i:
                continue
            m = j + 1 if j + 1 < n else 0
            if _boxes_apart(w[i, 5], w[i, 6], w[i, 7], w[i, 8], x[j], y[j], x[m], y[m], clear):
                continue
            if _segments(w[i, 5], w[i, 6], w[i, 7], w[i, 8], x[j], y[j], x[m], y[m]) < clear:
                return 3
    for i in range(n):  # (C3)
        if w[i, 3] > 0.0:
            continue
        h = i - 1 if i > 0 else n - 1
        for k in range(_HULL_SIDES):
            ax, ay, bx, by = _hull_side(x, y, w, n, i, r, k)
            for j in range(n):
                if j == i or j == h:
                    continue
                m = j + 1 if j + 1 < n else 0
                if _boxes_apart(ax, ay, bx, by, x[j], y[j], x[m], y[m], clear):
                    continue
                if _segments(ax, ay, bx, by, x[j], y[j], x[m], y[m]) < clear:
                    return 4
    for i in range(n):  # (C4)
        theta = w[i, 3]
        if theta <= 0.0:
            continue
        far = r / math.cos(0.5 * theta)
        if far <= (1.0 - _MARGIN) * 2.0 * r:
            continue
        h = i - 1 if i > 0 else n - 1
        half = 0.5 * (math.pi - theta)
        if ratio > 0.0 and _tip_area(r, half, _BIT_DISC * r) < (1.0 + _MARGIN) * ratio * _corner_area(r, half):
            return 5
        tau = w[i, 4]
        px, py = x[i] - tau * w[h, 0], y[i] - tau * w[h, 1]
        qx, qy = x[i] + tau * w[i, 0], y[i] + tau * w[i, 1]
        keep = (1.0 + _MARGIN) * _BIT_DISC * r
        for j in range(n):
            if j != i and j != h and _to_triangle(x[i], y[i], px, py, qx, qy, w[j, 5], w[j, 6], w[j, 7],
                                                  w[j, 8]) < keep:
                return 5
            if w[j, 3] <= 0.0:
                for k in range(_HULL_SIDES):
                    cx, cy, dx, dy = _hull_side(x, y, w, n, j, r, k)
                    if _to_triangle(x[i], y[i], px, py, qx, qy, cx, cy, dx, dy) < keep:
                        return 5
    return CERTIFIED


@njit(cache=True)
def tangent_scales(lat0: float, a: float, e2: float) -> tuple[float, float]:
    """Metres per degree of longitude and of latitude in the plane tangent at latitude ``lat0`` (degrees): the
    prime-vertical and meridional radii of curvature of the ellipsoid (``a``, ``e2``) there. The policy's frame
    for lengths (:func:`dispatcher.workflow.policy._metres` and :func:`certify_widths` alike)."""
    phi = lat0 * math.pi / 180.0
    s = 1.0 - e2 * math.sin(phi) ** 2
    return a / math.sqrt(s) * math.cos(phi) * math.pi / 180.0, a * (1.0 - e2) / s ** 1.5 * math.pi / 180.0


@njit(cache=True)
def certify_widths(xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray, a: float, e2: float,
                   r: float, ratio: float, out: np.ndarray) -> None:
    """For each polygon of an area (the flat arrays of :mod:`kernels.geometry`, longitude/latitude), in ``out``:
    :data:`CERTIFIED` when GEOS certainly finds its core at ``r`` metres one lobe and no bit covering less than
    ``ratio`` of a corner (``min_strip_ratio``), else why not (:func:`_certify_ring`).

    Each polygon is measured as the policy measures it: in the tangent plane at the centre of its bounds, scaled
    by the meridional and prime-vertical radii of curvature there of the ellipsoid (``a``, ``e2``). Polygons with
    holes are not certified."""
    longest = 0
    for k in range(ring_ptr.shape[0] - 1):
        longest = max(longest, ring_ptr[k + 1] - ring_ptr[k])
    x = np.empty(longest)
    y = np.empty(longest)
    w = np.zeros((longest, 9))
    for p in range(poly_ptr.shape[0] - 1):
        out[p] = NOT_SIMPLE
        if poly_ptr[p + 1] - poly_ptr[p] != 1:
            continue
        lo, hi = ring_ptr[poly_ptr[p]], ring_ptr[poly_ptr[p] + 1]
        x0 = x1 = xs[lo]
        y0 = y1 = ys[lo]
        for i in range(lo, hi):
            x0, x1 = min(x0, xs[i]), max(x1, xs[i])
            y0, y1 = min(y0, ys[i]), max(y1, ys[i])
        lng0, lat0 = (x0 + x1) / 2, (y0 + y1) / 2
        kx, ky = tangent_scales(lat0, a, e2)
        n = 0
        for i in range(lo, hi - 1):  # closed ring: the last position repeats the first
            if n > 0 and xs[i] == xs[i - 1] and ys[i] == ys[i - 1]:
                continue
            x[n] = (xs[i] - lng0) * kx
            y[n] = (ys[i] - lat0) * ky
            n += 1
        while n > 1 and x[n - 1] == x[0] and y[n - 1] == y[0]:
            n -= 1
        if n < 3:
            continue
        twice = 0.0
        for i in range(n):
            j = i + 1 if i + 1 < n else 0
            twice += x[i] * y[j] - x[j] * y[i]
        if twice < 0.0:
            for i in range(n // 2):
                x[i], x[n - 1 - i] = x[n - 1 - i], x[i]
                y[i], y[n - 1 - i] = y[n - 1 - i], y[i]
        elif not twice > 0.0:
            continue
        out[p] = _certify_ring(x, y, n, r, ratio, w)

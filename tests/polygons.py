"""Random valid areas for property tests: concave star polygons, holes, multipolygons, snapped vertices."""

from __future__ import annotations

import math

import numpy as np
import shapely
from hypothesis import strategies as st


def star(cx: float, cy: float, radii: list[float], phase: float, snap: float | None = None) -> list[list[float]]:
    """A closed counter-clockwise star-shaped ring; with ``snap`` the vertices lie on a grid of that step."""
    n = len(radii)
    pts = []
    for k, r in enumerate(radii):
        a = phase + 2 * math.pi * k / n
        x, y = cx + r * math.cos(a), cy + r * math.sin(a)
        if snap:
            x, y = round(x / snap) * snap, round(y / snap) * snap
        pts.append([x, y])
    pts.append(pts[0])
    return pts


@st.composite
def areas(draw: st.DrawFn, cx: float = -73.95, cy: float = 40.75, scale: float = 0.02,
          snap: float | None = None) -> dict:
    """A GeoJSON Polygon (maybe with a hole) or MultiPolygon near (cx, cy) of size about ``scale`` degrees."""
    n_parts = draw(st.integers(1, 3))
    polys = []
    for j in range(n_parts):
        ox = cx + 3 * scale * j
        n = draw(st.integers(3, 14))
        radii = [draw(st.floats(0.3, 1.0)) * scale for _ in range(n)]
        phase = draw(st.floats(0, 2 * math.pi))
        outer = star(ox, cy, radii, phase, snap)
        rings = [outer]
        if draw(st.booleans()):
            hole_r = [min(radii) * draw(st.floats(0.2, 0.6)) for _ in range(draw(st.integers(3, 8)))]
            rings.append(star(ox, cy, hole_r, draw(st.floats(0, 2 * math.pi)), snap)[::-1])
        polys.append(rings)
    geom = shapely.MultiPolygon([shapely.Polygon(r[0], r[1:]) for r in polys])
    if not geom.is_valid or geom.area == 0:  # snapping can fold a thin star; try again
        from hypothesis import assume
        assume(False)
    if n_parts == 1:
        return {"type": "Polygon", "coordinates": polys[0]}
    return {"type": "MultiPolygon", "coordinates": polys}


def boundary_points(area: dict, rng: np.random.Generator, snap: float | None) -> np.ndarray:
    """Points exactly on the boundary: every vertex and, when vertices are snapped to a dyadic grid, exact
    midpoints of edges (the midpoint of two grid points is exactly representable and exactly on the edge)."""
    polys = area["coordinates"] if area["type"] == "MultiPolygon" else [area["coordinates"]]
    pts = []
    for rings in polys:
        for ring in rings:
            r = np.asarray(ring)
            pts.append(r[:-1])
            if snap:
                pts.append((r[:-1] + r[1:]) / 2)
    return np.concatenate(pts)

"""Geodesy on the WGS84 ellipsoid: areas as the policy measures them and circles as jurisdictions are drawn.

Areas and perimeters are GeographicLib's (what :class:`pyproj.Geod` reports for WGS84), computed in compiled code
(:mod:`kernels.geodesic`) and by :data:`GEOD` for the rare polygon the kernel leaves to it (an edge through a
pole or nearly half way round); circles are drawn by :data:`GEOD`. So a polygon's area in square miles means the
same thing to the policy, the synthetic data and the reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from pyproj import Geod
from shapely.geometry.base import BaseGeometry

from kernels.geodesic import polygon_area_perimeter

if TYPE_CHECKING:
    from dispatcher.geo.area import Area

__all__ = ["GEOD", "SQ_M_PER_SQ_MI", "area_perimeter", "geodesic_area_sq_mi", "geodesic_circle",
           "polygon_area_perimeter_m"]

GEOD = Geod(ellps="WGS84")
#: Square metres in a square (statute) mile: 1 sq mi = 2.589988110336 km² exactly.
SQ_M_PER_SQ_MI = 2_589_988.110336


def area_perimeter(xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray) -> np.ndarray:
    """Per polygon of the flat arrays (:mod:`kernels.geometry`), (n_polys, 2): its area in m² on the WGS84
    ellipsoid, its shell's less its holes' (orientation ignored), and its shell's perimeter in m."""
    out = np.empty((poly_ptr.shape[0] - 1, 2))
    polygon_area_perimeter(xs, ys, ring_ptr, poly_ptr, out)
    for p in np.flatnonzero(np.isnan(out[:, 0])).tolist():
        out[p] = _pyproj_rings([(xs[ring_ptr[r]:ring_ptr[r + 1]], ys[ring_ptr[r]:ring_ptr[r + 1]])
                                for r in range(poly_ptr[p], poly_ptr[p + 1])])
    return out


def polygon_area_perimeter_m(polygon: BaseGeometry) -> tuple[float, float]:
    """:func:`area_perimeter` of one shapely Polygon: (m², m)."""
    rings = [np.asarray(r.coords, dtype=np.float64) for r in (polygon.exterior, *polygon.interiors)]
    xy = np.concatenate(rings)
    ring_ptr = np.cumsum([0, *(r.shape[0] for r in rings)]).astype(np.int64)
    got = area_perimeter(np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1]), ring_ptr,
                         np.array([0, len(rings)], dtype=np.int64))
    return float(got[0, 0]), float(got[0, 1])


def _pyproj_rings(rings: Sequence[tuple[Any, Any]]) -> tuple[float, float]:
    """(m², m) of a polygon given as its rings' (lngs, lats), the shell first, by :data:`GEOD`."""
    area, perimeter = GEOD.polygon_area_perimeter(*rings[0])
    area = abs(area)
    for hole in rings[1:]:
        area -= abs(GEOD.polygon_area_perimeter(*hole)[0])
    return area, perimeter


def geodesic_area_sq_mi(area: Area) -> float:
    """Area on the WGS84 ellipsoid, in square miles (holes subtracted, orientation ignored)."""
    return float(area_perimeter(area.xs, area.ys, area.ring_ptr, area.poly_ptr)[:, 0].sum()) / SQ_M_PER_SQ_MI


def geodesic_circle(lng: float, lat: float, radius_m: float, n: int = 64) -> BaseGeometry:
    """A polygon of ``n`` points at geodesic distance ``radius_m`` from (lng, lat), counter-clockwise."""
    az = np.linspace(0.0, 360.0, n, endpoint=False)
    lons, lats, _ = GEOD.fwd(np.full(n, lng), np.full(n, lat), az, np.full(n, radius_m))
    ring = list(zip(np.asarray(lons)[::-1].tolist(), np.asarray(lats)[::-1].tolist()))
    return shapely.Polygon(ring)

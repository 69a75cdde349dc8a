"""Geodesy on the WGS84 ellipsoid: areas as the policy measures them and circles as jurisdictions are drawn.

Everything goes through one :class:`pyproj.Geod`, so a polygon's area in square miles means the same thing to
the policy, the synthetic data and the reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import shapely
from pyproj import Geod
from shapely.geometry.base import BaseGeometry

if TYPE_CHECKING:
    from dispatcher.geo.area import Area

__all__ = ["GEOD", "SQ_M_PER_SQ_MI", "geodesic_area_sq_mi", "geodesic_circle"]

GEOD = Geod(ellps="WGS84")
#: Square metres in a square (statute) mile: 1 sq mi = 2.589988110336 km² exactly.
SQ_M_PER_SQ_MI = 2_589_988.110336


def geodesic_area_sq_mi(area: Area) -> float:
    """Area on the WGS84 ellipsoid, in square miles (holes subtracted, orientation ignored)."""
    geom = area.geometry
    total = 0.0
    for p in getattr(geom, "geoms", [geom]):
        total += abs(GEOD.geometry_area_perimeter(p.exterior)[0])
        for hole in p.interiors:
            total -= abs(GEOD.geometry_area_perimeter(hole)[0])
    return total / SQ_M_PER_SQ_MI


def geodesic_circle(lng: float, lat: float, radius_m: float, n: int = 64) -> BaseGeometry:
    """A polygon of ``n`` points at geodesic distance ``radius_m`` from (lng, lat), counter-clockwise."""
    az = np.linspace(0.0, 360.0, n, endpoint=False)
    lons, lats, _ = GEOD.fwd(np.full(n, lng), np.full(n, lat), az, np.full(n, radius_m))
    ring = list(zip(np.asarray(lons)[::-1].tolist(), np.asarray(lats)[::-1].tolist()))
    return shapely.Polygon(ring)

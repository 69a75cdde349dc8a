"""Areas and helpers for the policy tests: a request log in memory, an equal-area oracle for sizes, shapes drawn
in metres around Chicago (mapped to longitude/latitude through an azimuthal equal-area projection, independently
of the policy's own tangent plane), and the attacks that try to single out a home."""

from __future__ import annotations

import functools
import math
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import shapely
from pyproj import Transformer

from dispatcher.geo.geodesy import SQ_M_PER_SQ_MI
from dispatcher.workflow.requests import VideoRequest
from tests.video_requests import LAT0, LNG0

SQ_MI = SQ_M_PER_SQ_MI


class MemLog:
    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.times: dict[str, list[datetime]] = {}

    def has_request(self, request_id: str) -> bool:
        return request_id in self.ids

    def count_agency_requests(self, agency_id: str, since: datetime) -> int:
        return sum(t >= since for t in self.times.get(agency_id, []))

    def record(self, r: VideoRequest) -> None:
        self.ids.add(r.request_id)
        self.times.setdefault(r.agency_id, []).append(r.submitted_at)


def laea_sq_mi(geom: shapely.Geometry) -> float:
    """Oracle: planar area in an equal-area projection centred on the geometry."""
    c = geom.centroid
    tr = Transformer.from_crs("EPSG:4326", f"+proj=laea +lat_0={c.y} +lon_0={c.x} +datum=WGS84", always_xy=True)
    return float(shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))).area) \
        / SQ_M_PER_SQ_MI


@functools.lru_cache(maxsize=8)
def _to_lnglat(lng: float, lat: float) -> Transformer:
    return Transformer.from_crs(f"+proj=laea +lat_0={lat} +lon_0={lng} +datum=WGS84", "EPSG:4326", always_xy=True)


def geojson(geom: shapely.Geometry, lng: float = LNG0, lat: float = LAT0) -> dict[str, Any]:
    """A shapely geometry drawn in metres around (lng, lat), as GeoJSON in degrees."""
    tr = _to_lnglat(lng, lat)
    out = shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    assert out.is_valid, shapely.is_valid_reason(out)
    got: dict[str, Any] = orjson.loads(shapely.to_geojson(out))
    return got


def box(x0: float, y0: float, x1: float, y1: float) -> shapely.Polygon:
    return shapely.box(x0, y0, x1, y1)


def square(sq_mi: float, x: float = 0.0, y: float = 0.0) -> shapely.Polygon:
    """A square of ``sq_mi`` centred on (x, y) metres."""
    h = math.sqrt(sq_mi * SQ_MI) / 2
    return box(x - h, y - h, x + h, y + h)



# -- the attacks ------------------------------------------------------------------------------------------------------

def decoy_and_pin() -> shapely.Geometry:
    """An empty 0.026 sq mi square 600 m away, and an 8 m square around the target house at (0, 0)."""
    return shapely.MultiPolygon([square(0.026, 600, 0), box(-4, -4, 4, 4)])


def sieve() -> shapely.Geometry:
    """2,450 right triangles of 39 m² (9,800 positions, under the 10,000 allowed) on a 66 m grid: 0.037 sq mi of
    area over a footprint of 4.03 sq mi."""
    leg = math.sqrt(2 * 0.037 * SQ_MI / 2450)
    return shapely.MultiPolygon([shapely.Polygon([(x, y), (x + leg, y), (x, y + leg)])
                                 for x in np.arange(50) * 66.4 for y in np.arange(49) * 66.4])


def sliver() -> shapely.Geometry:
    """4 m wide and 20 km long: 0.031 sq mi along a road, one row of homes."""
    return box(-10_000, -2, 10_000, 2)


def thin_ring() -> shapely.Geometry:
    """A 3.4 km square with a hole leaving a 5 m ring."""
    return shapely.Polygon(box(-1700, -1700, 1700, 1700).exterior.coords,
                           [box(-1695, -1695, 1695, 1695).exterior.coords[::-1]])


def dumbbell_pin() -> shapely.Geometry:
    """An empty 0.026 sq mi square joined by a 1 m wide, 200 m corridor to a 20 m square on the target."""
    s = square(0.026, 0, 0)
    x = s.bounds[2]
    return shapely.union_all([s, box(x - 1, -0.5, x + 200, 0.5), box(x + 200, -10, x + 220, 10)])


def dumbbell_halves() -> shapely.Geometry:
    """Two squares of half the minimum each, joined by a 1 m wide, 300 m corridor."""
    a, b = square(0.0135, 0, 0), square(0.0135, 500, 0)
    return shapely.union_all([a, b, box(a.bounds[2] - 1, -0.5, b.bounds[0] + 1, 0.5)])


def pin_on_a_string() -> shapely.Geometry:
    """An empty 0.026 sq mi square with a 2 m wide tail reaching 150 m to the target."""
    s = square(0.026, 0, 0)
    return shapely.union_all([s, box(s.bounds[2] - 1, -1, s.bounds[2] + 150, 1)])


def thin_wall() -> shapely.Geometry:
    """A 700 m square whose hole leaves a wall 2 m thick and 500 m long along one side."""
    return shapely.Polygon(box(0, 0, 700, 700).exterior.coords, [box(2, 100, 500, 600).exterior.coords[::-1]])

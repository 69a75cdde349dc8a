"""Sample request areas: random star-shaped GeoJSON Polygons of a given size on the ground, centred on cameras
or on given points, seeded and deterministic. The benchmarks, the load test and the tests draw their requests
from here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from dispatcher.errors import InvalidArea, InvalidData
from dispatcher.geo.geodesy import GEOD, SQ_M_PER_SQ_MI

__all__ = ["SQ_MILE_KM2", "km_per_degree", "sample_areas", "sample_areas_at"]

#: Square kilometres in a square (statute) mile.
SQ_MILE_KM2 = SQ_M_PER_SQ_MI / 1e6
#: The WGS84 ellipsoid's semi-major axis (km) and squared eccentricity, used to size the areas on the ground.
WGS84_A_KM = GEOD.a / 1000.0
WGS84_E2 = GEOD.es
#: The stream tag of the samplers' generator (:mod:`dispatcher.synthetic.data` draws from streams 1 to 4).
_S_AREAS = 5

F64 = npt.NDArray[np.float64]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _S_AREAS]))


def km_per_degree(lat: float) -> tuple[float, float]:
    """Ground kilometres per degree of longitude and of latitude at ``lat`` on the WGS84 ellipsoid."""
    s2 = math.sin(math.radians(lat)) ** 2
    w = math.sqrt(1.0 - WGS84_E2 * s2)
    meridional = WGS84_A_KM * (1.0 - WGS84_E2) / w**3
    normal = WGS84_A_KM / w
    return normal * math.cos(math.radians(lat)) * math.pi / 180.0, meridional * math.pi / 180.0


def sample_areas(
    cameras: pa.Table,
    n: int,
    area_km2: float,
    *,
    seed: int = 0,
    vertices: tuple[int, int] = (8, 14),
    concave: bool = True,
) -> list[dict[str, Any]]:
    """``n`` random GeoJSON Polygons of ``area_km2`` on the ground, each centred on a random camera.

    Each polygon is star-shaped around its centre (vertex angles strictly increasing, gaps under 180°), so it
    is simple and valid; it has ``vertices[0]..vertices[1]`` vertices at random radii (with ``concave``, some
    deeply notched) and a random stretch and rotation; its exterior ring is closed and counter-clockwise. The
    size is set in a local equirectangular frame with the WGS84 radii of curvature at the centre, which is
    accurate to well under 0.1% for areas up to hundreds of km². Polygons never cross the antimeridian.
    """
    if n < 0:
        raise InvalidArea(f"n must be >= 0, got {n!r}")
    if n and cameras.num_rows == 0:
        raise InvalidData("sample_areas: the cameras table is empty")
    rng = _rng(int(seed))
    idx = pa.array(rng.integers(0, max(cameras.num_rows, 1), n))
    lat0s = cameras.column("lat").take(idx).to_numpy() if n else np.zeros(0)
    lng0s = cameras.column("lng").take(idx).to_numpy() if n else np.zeros(0)
    return _star_polygons(rng, lat0s, lng0s, np.full(n, area_km2, np.float64), vertices, concave)


def sample_areas_at(
    lat: npt.ArrayLike,
    lng: npt.ArrayLike,
    area_km2: npt.ArrayLike,
    *,
    seed: int = 0,
    vertices: tuple[int, int] = (8, 14),
    concave: bool = True,
) -> list[dict[str, Any]]:
    """Polygons as :func:`sample_areas` draws them, centred on the given points, one area (km²) each."""
    lats, lngs = np.asarray(lat, np.float64).ravel(), np.asarray(lng, np.float64).ravel()
    areas = np.broadcast_to(np.asarray(area_km2, np.float64), lats.shape)
    if lngs.shape != lats.shape:
        raise InvalidArea(f"lat and lng differ in length: {lats.shape[0]} and {lngs.shape[0]}")
    return _star_polygons(_rng(int(seed)), lats, lngs, areas, vertices, concave)


def _star_polygons(rng: np.random.Generator, lat0s: F64, lng0s: F64, areas_km2: F64, vertices: tuple[int, int],
                   concave: bool) -> list[dict[str, Any]]:
    lo_v, hi_v = vertices
    if not 3 <= lo_v <= hi_v:
        raise InvalidArea(f"vertices must be (lo, hi) with 3 <= lo <= hi, got {vertices!r}")
    if not (np.isfinite(areas_km2).all() and (areas_km2 > 0).all()):
        raise InvalidArea("area_km2 must be finite and positive")
    if not (np.isfinite(lat0s).all() and np.isfinite(lng0s).all() and (np.abs(lat0s) < 90).all()):
        raise InvalidArea("centres must be finite, with |lat| < 90")
    out: list[dict[str, Any]] = []
    for lat0, lng0, area_km2 in zip(lat0s.tolist(), lng0s.tolist(), areas_km2.tolist()):
        k = int(rng.integers(lo_v, hi_v + 1))
        # Angles: k jittered steps summing to a full turn (each at most 1.35/0.65 of the mean step).
        steps = 1.0 + rng.uniform(-0.35, 0.35, k)
        theta = rng.uniform(0.0, 2.0 * math.pi) + 2.0 * math.pi * (np.cumsum(steps) - steps[0]) / steps.sum()
        if concave:
            radius = rng.uniform(0.55, 1.0, k)
            if rng.random() < 0.5:  # notches: deep concavities
                notch = rng.choice(k, size=int(rng.integers(1, max(1, k // 4) + 1)), replace=False)
                radius[notch] = rng.uniform(0.2, 0.45, notch.shape[0])
        else:
            radius = np.ones(k)  # on an ellipse after the stretch below: convex
        stretch = rng.uniform(1.0, 1.8)
        rot = rng.uniform(0.0, math.pi)
        u = radius * np.cos(theta) * stretch
        v = radius * np.sin(theta) / stretch
        x = u * math.cos(rot) - v * math.sin(rot)
        y = u * math.sin(rot) + v * math.cos(rot)
        area0 = 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))  # > 0: counter-clockwise
        f = math.sqrt(area_km2 / area0)
        kx, ky = km_per_degree(lat0)
        lng = lng0 + x * (f / kx)
        lat = lat0 + y * (f / ky)
        if lng.max() > 180.0:  # keep the ring on one side of the antimeridian
            lng -= lng.max() - 180.0
        elif lng.min() < -180.0:
            lng += -180.0 - lng.min()
        ring = [[a, b] for a, b in zip(lng.tolist(), lat.tolist())]
        ring.append(ring[0])
        out.append({"type": "Polygon", "coordinates": [ring]})
    return out

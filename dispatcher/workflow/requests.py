"""Video requests as an agency submits them: the raw fields, before the policy has looked at them.

:class:`VideoRequest` holds what was sent (the area may still be any GeoJSON, the times strings);
:func:`dispatcher.workflow.policy.validate` checks every rule at once and returns a :class:`ValidRequest`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any

from shapely.geometry.base import BaseGeometry

from dispatcher.errors import InvalidData, InvalidRequest
from dispatcher.geo.area import Area

INCIDENT_TYPES: frozenset[str] = frozenset({
    "assault", "burglary", "robbery", "theft", "vehicle_theft", "vandalism", "arson", "homicide",
    "shooting", "hit_and_run", "missing_person", "kidnapping", "fraud", "package_theft", "trespass",
})
"""The kinds of incident a request may name (published programs: a specific crime or emergency, never
lawful activity such as a protest, never a general announcement)."""

#: Submission times a request may carry: anything else is not a time a request was sent at (and would overflow
#: the arithmetic of the rate limit and the retention window).
SUBMITTED_RANGE = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))




def is_plain_id(text: object) -> bool:
    """Whether ``text`` is 1-64 ASCII letters, digits, '-' or '_': what a request id and an agency id are made
    of. Neither holds a ':', so ``<agency>:<id>`` names one request of one agency (an agency ``a:b`` and an
    agency ``a``'s request ``b:x`` would both be ``a:b:x``), and neither holds a glob character, a brace or
    a line break (key names, ACL patterns, logs)."""
    return isinstance(text, str) and 0 < len(text) <= 64 and text.isascii() \
        and text.replace("-", "").replace("_", "").isalnum()

@dataclass(frozen=True)
class _Case:
    """The text fields every form of a request carries."""

    request_id: str
    agency_id: str
    case_number: str
    incident_type: str
    investigator_contact: str
    message: str


@dataclass(frozen=True)
class VideoRequest(_Case):
    """A request as submitted. Strings are checked for type here; every policy rule is in :mod:`policy`."""

    area: Any
    start: Any
    end: Any
    submitted_at: datetime

    def __post_init__(self) -> None:
        for name in _CASE_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, str):
                raise InvalidRequest(f"{name} must be a string, got {type(v).__name__}")
        # an agency's own id, or the platform's "<agency>:<id>" for it
        if not all(is_plain_id(part) for part in self.request_id.split(":", 1)):
            raise InvalidRequest(f"request_id must be 1-64 ASCII letters, digits, '-' or '_', "
                                 f"got {self.request_id[:80]!r}")
        if not isinstance(self.submitted_at, datetime) or self.submitted_at.utcoffset() is None:
            raise InvalidRequest(f"submitted_at must be an aware datetime, got {self.submitted_at!r}")
        try:
            utc = self.submitted_at.astimezone(timezone.utc)
        except OverflowError:
            utc = None
        if utc is None or not SUBMITTED_RANGE[0] <= utc < SUBMITTED_RANGE[1]:
            raise InvalidRequest(f"submitted_at {self.submitted_at.isoformat()} is outside "
                                 f"{SUBMITTED_RANGE[0].year}..{SUBMITTED_RANGE[1].year - 1}")

    @classmethod
    def from_dict(cls, d: Any) -> VideoRequest:
        """From a decoded JSON object; unknown or missing keys raise :class:`InvalidRequest`."""
        if not isinstance(d, dict):
            raise InvalidRequest(f"a request must be an object, got {type(d).__name__}")
        names = _REQUEST_FIELDS if cls is VideoRequest else frozenset(f.name for f in fields(cls))
        if d.keys() != names:
            unknown = sorted(str(k) for k in set(d) - names)
            missing = sorted(names - set(d))
            raise InvalidRequest(f"request: unknown field(s) {unknown}, missing field(s) {missing}")
        sub = d["submitted_at"]
        if isinstance(sub, str):
            try:
                sub = datetime.fromisoformat(sub.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidRequest(f"submitted_at: {sub[:80]!r} is not an ISO-8601 date-time") from None
        return cls(**{**d, "submitted_at": sub})


#: The fields of a case and of a request as submitted (looked up once: every submission is checked against them).
_CASE_FIELDS = tuple(f.name for f in fields(_Case))
_REQUEST_FIELDS = frozenset(f.name for f in fields(VideoRequest))


@dataclass(frozen=True)
class ValidRequest(_Case):
    """A request that passed every policy rule: area parsed, times aware UTC, message plain text."""

    area: Area
    start: datetime
    end: datetime
    submitted_at: datetime
    area_sq_mi: float

    @property
    def geometry(self) -> BaseGeometry:
        return self.area.geometry

    def to_payload(self) -> dict[str, Any]:
        """The stored form (JSON): every field but the id, which is the record's key."""
        return {"agency_id": self.agency_id, "case_number": self.case_number, "incident_type": self.incident_type,
                "investigator_contact": self.investigator_contact, "message": self.message,
                "area": self.area.to_geojson(), "start": self.start.isoformat(), "end": self.end.isoformat(),
                "submitted_at": self.submitted_at.isoformat(), "area_sq_mi": self.area_sq_mi}

    @classmethod
    def from_payload(cls, request_id: str, payload: Mapping[str, Any]) -> ValidRequest:
        """Back from :meth:`to_payload` (the request passed the policy when it was stored)."""
        try:
            area = Area.parse(payload["area"], max_vertices=sys.maxsize)
            times = [datetime.fromisoformat(payload[k]) for k in ("start", "end", "submitted_at")]
            return cls(request_id=request_id, agency_id=payload["agency_id"], case_number=payload["case_number"],
                       incident_type=payload["incident_type"], investigator_contact=payload["investigator_contact"],
                       message=payload["message"], area=area, start=times[0], end=times[1], submitted_at=times[2],
                       area_sq_mi=float(payload["area_sq_mi"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidData(f"stored request {request_id!r} is unreadable: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class StoredRequest:
    """A request as the store holds it: its state in the review workflow and the validated request."""

    state: str
    request: ValidRequest

    @classmethod
    def from_record(cls, request_id: str, record: tuple[str, Mapping[str, Any]]) -> StoredRequest:
        state, payload = record
        return cls(state, ValidRequest.from_payload(request_id, payload))

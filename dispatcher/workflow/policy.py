"""The request policy: every published limit as configuration, and one validation that reports every
broken rule at once.

Defaults come from the published program figures: a window of 15 minutes to 12 hours, wholly in the past and
no older than the longest retention (180 days); an area of 0.025 to 0.5 square miles measured on the WGS84
ellipsoid (pyproj's ``Geod``), inside the agency's jurisdiction; a well-formed case number; a bounded,
plain-text message; a per-agency rate limit.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from dispatcher.errors import DispatchError, InvalidPolicy, RequestRejected
from dispatcher.geo.area import Area
from dispatcher.geo.geodesy import geodesic_area_sq_mi
from dispatcher.index.schema import to_utc_us
from dispatcher.settings import coerce
from dispatcher.workflow.agencies import AgencyRegistry
from dispatcher.workflow.requests import INCIDENT_TYPES, ValidRequest, VideoRequest

CASE_NUMBER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-/.]{2,31}")
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(\.[A-Za-z0-9\-]{1,63})+")
PHONE_RE = re.compile(r"\+?[0-9 ().\-]{7,24}")
#: Markup we refuse in a message: tags, entities, script URLs.
ASCII_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MARKUP_RE = re.compile(r"<[^>]*>|&[#A-Za-z0-9]+;|javascript:", re.IGNORECASE)


@dataclass(frozen=True)
class Policy:
    min_window: timedelta = timedelta(minutes=15)
    max_window: timedelta = timedelta(hours=12)
    #: The longest retention any camera keeps footage for: an older start can match nothing.
    max_age: timedelta = timedelta(days=180)
    min_area_sq_mi: float = 0.025
    max_area_sq_mi: float = 0.5
    max_vertices: int = 10_000
    max_message_chars: int = 2_000
    max_contact_chars: int = 120
    incident_types: frozenset[str] = INCIDENT_TYPES
    #: At most this many requests per agency in any rolling ``rate_period``.
    rate_limit: int = 25
    rate_period: timedelta = timedelta(days=1)
    auto_approve: bool = False
    #: At most this many notifications per owner in any rolling ``owner_cap_period``.
    owner_cap: int = 3
    owner_cap_period: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if not timedelta(0) < self.min_window <= self.max_window:
            raise InvalidPolicy(f"need 0 < min_window <= max_window, got {self.min_window}, {self.max_window}")
        if not 0 < self.min_area_sq_mi <= self.max_area_sq_mi:
            raise InvalidPolicy(f"need 0 < min_area_sq_mi <= max_area_sq_mi, got {self.min_area_sq_mi}, "
                                f"{self.max_area_sq_mi}")
        for name in ("max_vertices", "max_message_chars", "max_contact_chars", "rate_limit", "owner_cap"):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise InvalidPolicy(f"{name} must be a positive integer, got {v!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the policy") -> Policy:
        """Settings by name, as JSON values; durations as seconds or timedelta. Misspelled keys and values of
        the wrong type raise :class:`InvalidPolicy`."""
        return cls(**coerce(cls, d, source, InvalidPolicy))


class RequestLog(Protocol):
    """What validation needs from the store: duplicate ids and the agency's recent requests."""

    def has_request(self, request_id: str) -> bool: ...

    def count_agency_requests(self, agency_id: str, since: datetime) -> int: ...


def _text_problems(name: str, text: str, limit: int) -> list[str]:
    out = []
    if len(text) > limit:
        out.append(f"{name} has {len(text)} characters, more than the {limit} allowed")
        text = text[:limit]  # rejected already; the other checks look at the allowed part only
    if MARKUP_RE.search(text):
        out.append(f"{name} contains markup ({MARKUP_RE.search(text).group(0)[:40]!r}); send plain text")  # type: ignore[union-attr]
    if text.isascii():  # the common case, without a per-character lookup: only C0 controls and DEL can be bad
        bad = ASCII_CONTROL_RE.findall(text)
    else:
        bad = [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co") and c not in "\n\t"]
    if bad:
        out.append(f"{name} contains {len(bad)} control or format character(s), first U+{ord(bad[0]):04X}")
    return out


#: Every rule :func:`validate` checks, by its code, in the order it checks them.
RULE_CODES = (
    "submitted_in_future", "duplicate_request_id", "unknown_agency", "agency_suspended", "agency_not_joined",
    "rate_limited", "case_number", "incident_type", "contact", "message", "time_format", "window_reversed",
    "window_length", "window_not_past", "window_too_old", "area_invalid", "area_size", "outside_jurisdiction",
)


def validate(request: VideoRequest, registry: AgencyRegistry, log: RequestLog, now: datetime,
             policy: Policy | None = None) -> ValidRequest:
    """Check every rule; return the normalised request or raise :class:`RequestRejected` listing them all."""
    p = policy or Policy()
    v: list[tuple[str, str]] = []
    sub = request.submitted_at.astimezone(timezone.utc)
    if sub > now:
        v.append(("submitted_in_future", f"submitted_at {sub.isoformat()} is after now {now.isoformat()}"))
    if log.has_request(request.request_id):
        v.append(("duplicate_request_id", f"request id {request.request_id!r} was already submitted"))
    # agency
    agency = None
    try:
        agency = registry.get(request.agency_id)
    except DispatchError:
        v.append(("unknown_agency", f"{request.agency_id[:80]!r} is not a partner agency"))
    if agency is not None:
        if agency.suspended:
            v.append(("agency_suspended", f"agency {agency.agency_id} is suspended"))
        elif agency.joined_at > sub:
            v.append(("agency_not_joined", f"agency {agency.agency_id} joins on {agency.joined_at.isoformat()}"))
        if log.count_agency_requests(agency.agency_id, sub - p.rate_period) >= p.rate_limit:
            v.append(("rate_limited", f"agency {agency.agency_id} sent {p.rate_limit} requests in the last "
                                      f"{p.rate_period}"))
    # case, incident, contact, message
    if not CASE_NUMBER_RE.fullmatch(request.case_number):
        v.append(("case_number", f"case number {request.case_number[:40]!r} is not 3-32 letters, digits, "
                                 f"'-', '/' or '.' starting with a letter or digit"))
    if request.incident_type not in p.incident_types:
        v.append(("incident_type", f"incident type {request.incident_type[:40]!r} is not one of "
                                   f"{sorted(p.incident_types)}"))
    contact = request.investigator_contact.strip()
    if len(contact) > p.max_contact_chars or not (EMAIL_RE.fullmatch(contact) or (
            PHONE_RE.fullmatch(contact) and 7 <= sum(c.isdigit() for c in contact) <= 15)):
        v.append(("contact", f"investigator contact {contact[:40]!r} is not an e-mail address or phone number"))
    message = unicodedata.normalize("NFC", request.message)
    for m in _text_problems("message", message, p.max_message_chars):
        v.append(("message", m))
    if not message.strip():
        v.append(("message", "message is empty"))
    # time window
    start = end = None
    try:
        s_us = to_utc_us(request.start, "start")
        e_us = to_utc_us(request.end, "end")
        start = datetime.fromtimestamp(s_us / 1e6, tz=timezone.utc)
        end = datetime.fromtimestamp(e_us / 1e6, tz=timezone.utc)
    except DispatchError as exc:
        v.append(("time_format", str(exc)))
    except (OverflowError, ValueError, OSError) as exc:
        v.append(("time_format", f"unusable time: {exc}"))
    if start is not None and end is not None:
        if end <= start:
            v.append(("window_reversed", f"end {end.isoformat()} is not after start {start.isoformat()}"))
        elif not p.min_window <= end - start <= p.max_window:
            v.append(("window_length", f"window of {end - start} is outside {p.min_window} .. {p.max_window}"))
        if end > sub:
            v.append(("window_not_past", f"end {end.isoformat()} is after submission {sub.isoformat()}"))
        if start < sub - p.max_age:
            v.append(("window_too_old", f"start {start.isoformat()} is older than the {p.max_age.days}-day "
                                        f"retention"))
    # area
    area = None
    sq_mi = float("nan")
    try:
        area = Area.parse(request.area, max_vertices=p.max_vertices)
    except DispatchError as exc:
        v.append(("area_invalid", str(exc)))
    except (TypeError, ValueError, RecursionError) as exc:
        v.append(("area_invalid", f"unusable area: {type(exc).__name__}"))
    if area is not None:
        sq_mi = geodesic_area_sq_mi(area)
        if not p.min_area_sq_mi <= sq_mi <= p.max_area_sq_mi:
            v.append(("area_size", f"area of {sq_mi:.4f} sq mi is outside {p.min_area_sq_mi} .. "
                                   f"{p.max_area_sq_mi} sq mi"))
        if agency is not None and not agency.jurisdiction.covers(area.geometry):
            v.append(("outside_jurisdiction", f"area is not inside the jurisdiction of {agency.agency_id}"))
    if v:
        raise RequestRejected(v)
    assert area is not None and start is not None and end is not None
    return ValidRequest(request_id=request.request_id, agency_id=request.agency_id,
                        case_number=request.case_number, incident_type=request.incident_type,
                        investigator_contact=contact, message=message, area=area, start=start, end=end,
                        submitted_at=sub, area_sq_mi=sq_mi)

"""The request policy: every published limit as configuration, and one validation that reports every
broken rule at once.

Defaults come from the published program figures: a window of 15 minutes to 12 hours, wholly in the past and
no older than the longest retention (180 days); an area of 0.025 to 0.5 square miles measured on the WGS84
ellipsoid (GeographicLib's figures, compiled: :mod:`dispatcher.geo.geodesy`), inside the agency's jurisdiction;
a well-formed case number; a bounded, plain-text message; a per-agency rate limit.

An area must also be shaped like a neighbourhood, so that it cannot be drawn around one home: few pieces, each
at least the minimum area and at least ``min_width_m`` wide, no narrow strip that does not widen like a corner,
a floor on the isoperimetric ratio, and several pieces spanning no more than the maximum area (see
:func:`area_shape_problems`). Lengths are measured in a tangent plane of each polygon with the WGS84 radii of
curvature at its centre (exact to about 1e-4 over the few kilometres an area spans); areas and perimeters on the
ellipsoid.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from dispatcher.errors import DispatchError, InvalidArea, InvalidPolicy, RequestRejected
from dispatcher.geo.area import Area
from dispatcher.geo.geodesy import GEOD, SQ_M_PER_SQ_MI, area_perimeter, polygon_area_perimeter_m
from dispatcher.index.schema import to_utc_us
from dispatcher.settings import coerce
from dispatcher.workflow.agencies import AgencyRegistry
from dispatcher.workflow.requests import INCIDENT_TYPES, ValidRequest, VideoRequest
from kernels.validation import COVER_UNSURE, COVERED, covers_area
from kernels.widths import CERTIFIED, certify_widths, tangent_scales

#: Segments per quarter circle in the buffers of the shape rules: chords within 8% of the radius.
_QUAD_SEGS = 2
#: The narrow-strip rule measures reach at no more than this many points.
_STRIP_POINTS = 4096
#: The ellipsoid's squared eccentricity, for the tangent planes lengths are measured in.
_E2 = GEOD.f * (2 - GEOD.f)

#: The longest owner_cap_period: the gate sums a day counter per day of it.
MAX_CAP_DAYS = 31
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
    #: At most this many pieces: polygons, or lobes of one joined to the rest only by necks narrower than
    #: ``min_width_m``. Each polygon must cover ``min_area_sq_mi`` on its own.
    max_parts: int = 4
    #: Every polygon must hold a disc this wide (metres): about two lot depths, Portland's 200 ft city block.
    min_width_m: float = 60.0
    #: Each point of a polygon must lie within ``min_width_m`` of the centre of a disc that wide inside it, or in
    #: a narrow bit covering at least this share of what a straight corner reaching as far covers.
    min_strip_ratio: float = 0.5
    #: Floor of each polygon's isoperimetric ratio 4πA/P² (A net of holes, P its outline): 1 for a disc, 0.785
    #: for a square, about πW/L for a W by L strip, about πW/H for a ring W wide around a hole H across.
    min_compactness: float = 0.12
    max_vertices: int = 10_000
    max_message_chars: int = 2_000
    max_contact_chars: int = 120
    incident_types: frozenset[str] = INCIDENT_TYPES
    #: At most this many requests per agency in any rolling ``rate_period``.
    rate_limit: int = 25
    rate_period: timedelta = timedelta(days=1)
    auto_approve: bool = False
    #: At most this many notifications per owner in any rolling ``owner_cap_period``: a whole number of days (1
    #: to 31), since the gate counts notices per UTC day, from 00:00 UTC of the day the period starts in (up to a
    #: day stricter than the rolling period, never looser: :mod:`dispatcher.workflow.notices`).
    owner_cap: int = 3
    owner_cap_period: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if not timedelta(0) < self.min_window <= self.max_window:
            raise InvalidPolicy(f"need 0 < min_window <= max_window, got {self.min_window}, {self.max_window}")
        if not 0 < self.min_area_sq_mi <= self.max_area_sq_mi:
            raise InvalidPolicy(f"need 0 < min_area_sq_mi <= max_area_sq_mi, got {self.min_area_sq_mi}, "
                                f"{self.max_area_sq_mi}")
        for name in ("max_vertices", "max_message_chars", "max_contact_chars", "rate_limit", "owner_cap",
                     "max_parts"):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise InvalidPolicy(f"{name} must be a positive integer, got {v!r}")
        period = self.owner_cap_period
        if not (isinstance(period, timedelta) and period % timedelta(days=1) == timedelta(0)
                and timedelta(days=1) <= period <= timedelta(days=MAX_CAP_DAYS)):
            raise InvalidPolicy(f"owner_cap_period must be a whole number of days from 1 to {MAX_CAP_DAYS} (the "
                                f"owners' gate counts notifications per UTC day), got {period!r}")
        if not (math.isfinite(self.min_width_m) and self.min_width_m > 0):
            raise InvalidPolicy(f"min_width_m must be a positive number of metres, got {self.min_width_m!r}")
        if not 0 <= self.min_strip_ratio <= 1:
            raise InvalidPolicy(f"min_strip_ratio must be within 0 .. 1, got {self.min_strip_ratio!r}")
        if not 0 <= self.min_compactness < 1:
            raise InvalidPolicy(f"min_compactness must be within 0 .. 1 (1 only for a disc), got "
                                f"{self.min_compactness!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the policy") -> Policy:
        """Settings by name, as JSON values; durations as seconds or timedelta. Misspelled keys and values of
        the wrong type raise :class:`InvalidPolicy`."""
        return cls(**coerce(cls, d, source, InvalidPolicy))


class RequestLog(Protocol):
    """What validation needs from the store: duplicate ids and the agency's recent requests."""

    def has_request(self, request_id: str) -> bool: ...

    def count_agency_requests(self, agency_id: str, since: datetime) -> int: ...


def area_shape_problems(area: Area, policy: Policy | None = None, *, compiled: bool = True
                        ) -> list[tuple[str, str]]:
    """The shape rules ``area`` breaks, as (code, message): each rule at most once, naming its worst polygon.
    ``compiled=False`` measures every width with GEOS (:func:`_widths`), the reference the compiled path
    (:mod:`kernels.widths`) is tested against: the same rules broken, the same messages."""
    p = policy or Policy()
    polys = _pieces(area)
    widths = _measure([(area, polys)], p, compiled)[0]
    return _shape_problems(len(polys), [polygon_area_perimeter_m(q) for q in polys], p, widths, lambda: polys)


def _polygons(geom: BaseGeometry) -> list[shapely.Polygon]:
    return list(getattr(geom, "geoms", [geom]))


def _area_stats(area: Area, polys: list[shapely.Polygon] | None) -> list[tuple[float, float]]:
    """The geodesic (m², m) of the pieces of ``area`` (:func:`_pieces`; ``polys``, when joined at the
    antimeridian): from the area's own rings when the pieces are its polygons (the same figures, without
    shapely's coordinates in between)."""
    if polys is not None and _split(area):  # joined at the antimeridian: other polygons than the rings'
        return [polygon_area_perimeter_m(q) for q in polys]
    return [(a, p) for a, p in area_perimeter(area.xs, area.ys, area.ring_ptr, area.poly_ptr).tolist()]


def _pieces(area: Area) -> list[shapely.Polygon]:
    """The area's polygons, with those split at the antimeridian (RFC 7946 3.1.9) joined again: a western part
    is moved 360° east, so that the halves of one neighbourhood are one polygon for the shape rules."""
    polys = _polygons(area.geometry)
    if not _split(area):
        return polys
    moved = [shapely.transform(p, lambda xy: xy + (360.0, 0.0)) if p.bounds[2] <= 0 else p for p in polys]
    return _polygons(shapely.union_all(moved))


def _metres(polys: list[shapely.Polygon]) -> list[shapely.Polygon]:
    """Each polygon in a tangent plane at the centre of its bounds, in metres: the WGS84 meridional and
    prime-vertical radii of curvature there (an affine map, so a valid polygon stays valid). One shapely call
    for all of them."""
    if not polys:
        return []
    geoms = np.array(polys, dtype=object)
    frames = []
    for x0, y0, x1, y1 in shapely.bounds(geoms).tolist():
        lng0, lat0 = (x0 + x1) / 2, (y0 + y1) / 2
        frames.append((lng0, lat0, *tangent_scales(lat0, GEOD.a, _E2)))
    frame = np.array(frames)[shapely.get_coordinates(geoms, return_index=True)[1]]
    return list(shapely.transform(geoms, lambda xy: (xy - frame[:, :2]) * frame[:, 2:]))


def _corner_area(r: float, reach: np.ndarray) -> np.ndarray:
    """What a straight corner leaves outside the discs of radius ``r`` that fit in it, when its tip lies ``reach``
    beyond them: the corner's half-angle b has sin b = r / (r + reach), and it leaves r² (cot b - (π/2 - b))."""
    b = np.arcsin(r / (r + reach))
    return r * r * (1 / np.tan(b) - (np.pi / 2 - b))


def _widths(ms: list[shapely.Polygon], p: Policy, groups: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per polygon of ``ms`` (in metres): its lobes, the pieces of the centres of the discs ``min_width_m`` wide
    inside it (0: it is narrower than that everywhere); and its worst narrow bit, as the share of a corner's area
    it covers (inf: none) and its reach. ``groups`` numbers the area each polygon belongs to (all one area by
    default): several areas go through each shapely call together, each measured as if alone.

    A narrow bit is a piece of a polygon that those discs (radius r) do not cover. One reaching more than r beyond
    them must cover at least ``min_strip_ratio`` of what a straight corner with the same reach leaves outside them
    (:func:`_corner_area`): a corner or a spike, however sharp, covers all of it; a strip w wide reaching L covers
    about w / (r + L / 2), a corridor between two discs half that. Reach is measured at points r / 4 apart along
    each bit's boundary (at most ``_STRIP_POINTS`` of them in all). A polygon within 2r of its discs' centres
    everywhere has no such bit and skips the rest; all polygons go through each shapely call together.
    """
    r = p.min_width_m / 2
    geoms = np.array(ms, dtype=object)
    groups = np.zeros(len(ms), np.int64) if groups is None else np.asarray(groups, np.int64)
    worst, worst_reach = np.full(len(ms), np.inf), np.full(len(ms), np.nan)
    cores = shapely.buffer(geoms, -r, quad_segs=_QUAD_SEGS)
    lobes = np.where(shapely.is_empty(cores), 0, shapely.get_num_geometries(cores))  # an empty polygon counts 1
    live = lobes > 0
    live[live] = ~shapely.covers(shapely.buffer(cores[live], 2 * r, quad_segs=_QUAD_SEGS), geoms[live])
    if not live.any():
        return lobes, worst, worst_reach
    geoms, cores, owner = geoms[live], cores[live], np.flatnonzero(live)
    # the discs' chords run up to 8% of r inside the true circles: 8% more leaves no slivers along the edges
    bits, of = shapely.get_parts(shapely.difference(geoms, shapely.buffer(cores, r * 1.08, quad_segs=_QUAD_SEGS)),
                                 return_index=True)
    box = shapely.bounds(bits)
    keep = np.hypot(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) > r  # a bit touches the discs: reach <= span
    if not keep.any():
        return lobes, worst, worst_reach
    bits, of = bits[keep], of[keep]
    # sample points r / 4 apart, fewer when an area's bits are long: _STRIP_POINTS for each area at most
    group = groups[owner[of]]
    length = shapely.length(bits)
    step = np.maximum(r / 4, np.bincount(group, weights=length)[group] / _STRIP_POINTS)
    xy, at = shapely.get_coordinates(shapely.segmentize(bits, step), return_index=True)
    reach = np.full(len(bits), -np.inf)
    np.maximum.at(reach, at, shapely.distance(cores[of][at], shapely.points(xy)))
    reach -= r
    far = reach > r
    share = np.full(len(bits), np.inf)
    share[far] = shapely.area(bits[far]) / _corner_area(r, reach[far])
    order = np.argsort(share, kind="stable")  # each polygon's worst bit: its first in this order
    polygon = owner[of[order]]
    firsts = np.unique(polygon, return_index=True)[1]
    worst[polygon[firsts]] = share[order[firsts]]
    worst_reach[polygon[firsts]] = reach[order[firsts]]
    return lobes, worst, worst_reach


def _shape_problems(count: int, stats: list[tuple[float, float]], p: Policy,
                    widths: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                    polys: Callable[[], list[shapely.Polygon]]) -> list[tuple[str, str]]:
    """The shape rules of an area's ``count`` polygons (with their geodesic (m², m)) under ``p``; ``widths``:
    theirs (:func:`_measure`), None with more than ``max_parts``; ``polys``: the polygons themselves, asked for
    only when there are several (their convex hull).

    Polygons are numbered as in the area (after joining halves split at the antimeridian). With more polygons
    than ``max_parts`` their widths and strips are not examined: the area is refused already, and a sieve of
    thousands of polygons would cost several buffers each.
    """
    out: list[tuple[str, str]] = []
    small = [(a, j) for j, (a, _) in enumerate(stats) if a < p.min_area_sq_mi * SQ_M_PER_SQ_MI]
    if small and count > 1:  # one polygon too small is the area-size rule's refusal
        a, j = min(small)
        out.append(("area_part_too_small", f"{len(small)} of the area's {count} polygon(s) cover less than "
                                           f"the {p.min_area_sq_mi} sq mi each must cover on its own (polygon {j}: "
                                           f"{a / SQ_M_PER_SQ_MI:.6f} sq mi)"))
    loose = [(4 * math.pi * a / q ** 2, j) for j, (a, q) in enumerate(stats) if a > 0 and q > 0]
    flat = [(c, j) for c, j in loose if c < p.min_compactness]
    if flat:
        c, j = min(flat)
        out.append(("area_not_compact", f"polygon {j} has an isoperimetric ratio 4πA/P² of {c:.3f}, below the "
                                        f"{p.min_compactness} floor (1 for a disc, 0.785 for a square)"))
    pieces = count
    if widths is not None:
        lobes, shares, reaches = widths
        pieces = int(np.maximum(lobes, 1).sum())
        thin = np.flatnonzero(lobes == 0)
        if len(thin):
            out.append(("area_too_thin", f"polygon {thin[0]} holds no disc {p.min_width_m:g} m wide "
                                         f"({len(thin)} polygon(s) narrower than that everywhere)"))
        narrow = np.flatnonzero(shares < p.min_strip_ratio)
        if len(narrow):
            j = int(narrow[np.argmin(shares[narrow])])
            share, reach = float(shares[j]), float(reaches[j])
            out.append(("area_narrow_strip", f"polygon {j} has a narrow part reaching {reach:.0f} m beyond the "
                                             f"{p.min_width_m:g} m discs that fit in it and covering {share:.2f} of "
                                             f"what a corner reaching as far covers; a narrow part must widen like a "
                                             f"corner (at least {p.min_strip_ratio})"))
    if pieces > p.max_parts:
        out.append(("area_too_many_parts", f"the area has {pieces} pieces, more than the {p.max_parts} allowed "
                                           f"(a piece is a polygon, or a lobe of one joined to the rest only by "
                                           f"necks narrower than {p.min_width_m:g} m)"))
    if count > 1:
        hull, _ = polygon_area_perimeter_m(shapely.convex_hull(shapely.MultiPolygon(polys())))
        if hull > p.max_area_sq_mi * SQ_M_PER_SQ_MI:
            out.append(("area_footprint", f"the area's {count} polygons span {hull / SQ_M_PER_SQ_MI:.4f} sq mi "
                                          f"(their convex hull), more than the {p.max_area_sq_mi} sq mi an area "
                                          f"may cover"))
    return out


#: Jurisdictions flattened for :func:`jurisdiction_covers`, by the id of their geometry (kept with it, so the id
#: stays theirs), or None when the compiled path cannot take one; at most this many kept.
_JURISDICTIONS: dict[int, tuple[BaseGeometry, Area | None]] = {}
_MAX_JURISDICTIONS = 4096


def _flat_jurisdiction(geom: BaseGeometry) -> Area | None:
    kept = _JURISDICTIONS.get(id(geom))
    if kept is not None and kept[0] is geom:
        return kept[1]
    try:
        flat: Area | None = Area.parse(geom, max_vertices=2**31)
    except InvalidArea:  # e.g. a jurisdiction over the antimeridian in one ring: shapely judges those
        flat = None
    if len(_JURISDICTIONS) >= _MAX_JURISDICTIONS:
        _JURISDICTIONS.clear()
    _JURISDICTIONS[id(geom)] = (geom, flat)
    return flat


def jurisdiction_covers(jurisdiction: BaseGeometry, area: Area) -> bool:
    """shapely's ``jurisdiction.covers(area.geometry)``: in compiled code (:func:`kernels.validation.covers_area`)
    when no edge of one comes near the other's, by shapely otherwise (the same answer either way)."""
    flat = _flat_jurisdiction(jurisdiction)
    if flat is not None:
        got = covers_area(*flat.kernel_args(), *area.kernel_args())
        if got != COVER_UNSURE:
            return bool(got == COVERED)
    return bool(jurisdiction.covers(area.geometry))


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
    "window_length", "window_not_past", "window_too_old", "area_invalid", "area_size",
    "area_part_too_small", "area_not_compact", "area_too_thin", "area_narrow_strip", "area_too_many_parts",
    "area_footprint", "outside_jurisdiction",
    # from the pipeline, for a submission that names another agency than its authenticated sender
    "agency_mismatch",
)


@dataclass(frozen=True)
class PreparedArea:
    """A request's area parsed and measured for the rules (:func:`prepare_areas`): the area or why it is not one,
    how many polygons it has (after joining halves split at the antimeridian) with their geodesic (m², m), and
    their widths (None with more polygons than the rules examine). :attr:`polys`, the polygons, are made when
    first asked for: the compiled widths (:mod:`kernels.widths`) judge a typical area without them."""

    area: Area | None
    error: str | None
    count: int
    stats: list[tuple[float, float]]
    widths: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    _polys: list[shapely.Polygon] | None = field(default=None, repr=False, compare=False)

    @property
    def polys(self) -> list[shapely.Polygon]:
        polys = self._polys
        if polys is None:
            polys = _pieces(self.area) if self.area is not None else []
            object.__setattr__(self, "_polys", polys)  # a cache: the same polygons every time
        return polys


def _split(area: Area) -> bool:
    """Whether ``area``'s polygons are the parts of one split at the antimeridian (they span more than 180°)."""
    if area.poly_ptr.shape[0] <= 2:
        return False
    lo, _, hi, _ = area.bbox
    return bool(hi - lo > 180)


def _measure(areas: list[tuple[Area, list[shapely.Polygon] | None]], p: Policy, compiled: bool = True
             ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """The widths (:func:`_widths`) of each area's polygons, None with none or more than ``max_parts``; each
    area given with its polygons (:func:`_pieces`), or None to take them from the area when needed.

    An area whose polygons are its own (not joined at the antimeridian) and which :mod:`kernels.widths`
    certifies polygon by polygon is measured there: one lobe each, no narrow strip (worst share inf, reach nan),
    the verdicts GEOS's measure gives. Every other area goes through GEOS, all its polygons together (so that
    its strip budget is the same), the areas' polygons in each shapely call together."""
    r = p.min_width_m / 2
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * len(areas)
    todo: list[tuple[int, list[shapely.Polygon]]] = []
    for k, (area, polys) in enumerate(areas):
        n = len(polys) if polys is not None else area.poly_ptr.shape[0] - 1
        if not 0 < n <= p.max_parts:
            continue
        if compiled and not _split(area):
            codes = np.empty(n, np.int64)
            certify_widths(area.xs, area.ys, area.ring_ptr, area.poly_ptr, GEOD.a, _E2, r, p.min_strip_ratio,
                           codes)
            if (codes == CERTIFIED).all():
                out[k] = (np.ones(n, np.int64), np.full(n, np.inf), np.full(n, np.nan))
                continue
        todo.append((k, polys if polys is not None else _pieces(area)))
    if todo:
        groups = np.repeat([k for k, _ in todo], [len(polys) for _, polys in todo])
        lobes, shares, reaches = _widths(_metres([q for _, polys in todo for q in polys]), p, groups)
        first = 0
        for k, polys in todo:
            n = len(polys)
            out[k] = (lobes[first:first + n], shares[first:first + n], reaches[first:first + n])
            first += n
    return out


def prepare_areas(areas: Sequence[Any], policy: Policy | None = None, *, compiled: bool = True
                  ) -> list[PreparedArea]:
    """The areas of several requests made ready for :func:`validate`, their widths measured together (in
    compiled code where :mod:`kernels.widths` certifies them, else each shapely call once for all of them: a
    batch pays the per-call cost once, not once a request). ``compiled=False``: every width by GEOS."""
    p = policy or Policy()
    parsed: list[tuple[Area | None, str | None, list[shapely.Polygon] | None]] = []
    for got in Area.parse_many(areas, max_vertices=p.max_vertices):
        if isinstance(got, DispatchError):
            parsed.append((None, str(got), []))
        elif isinstance(got, Exception):
            parsed.append((None, f"unusable area: {type(got).__name__}", []))
        else:
            parsed.append((got, None, _pieces(got) if _split(got) else None))
    valid = [(k, area, polys) for k, (area, _, polys) in enumerate(parsed) if area is not None]
    measured = _measure([(area, polys) for _, area, polys in valid], p, compiled)
    widths = {k: got for (k, _, _), got in zip(valid, measured, strict=True)}
    out = []
    for k, (area, error, polys) in enumerate(parsed):
        if area is None:
            out.append(PreparedArea(None, error, 0, [], None, []))
            continue
        count = len(polys) if polys is not None else area.poly_ptr.shape[0] - 1
        out.append(PreparedArea(area, None, count, _area_stats(area, polys), widths[k], polys))
    return out


#: A square of about 0.2 sq mi: what :func:`warm_up` judges.
_WARM_UP_AREA = {"type": "Polygon", "coordinates": [[[0, 0], [0.007, 0], [0.007, 0.007], [0, 0.007], [0, 0]]]}


def warm_up() -> None:
    """Compile (or load from Numba's disk cache) every kernel the rules run on a request's area, so that no
    request pays for it: parsing, geodesic areas, the compiled widths and the tangent planes of the GEOS ones,
    and the jurisdiction check. Judges a small square against itself; nothing is recorded or kept."""
    for compiled in (True, False):
        prepare_areas([_WARM_UP_AREA], compiled=compiled)
    area = Area.parse(_WARM_UP_AREA)
    covers_area(*area.kernel_args(), *area.kernel_args())


def validate(request: VideoRequest, registry: AgencyRegistry, log: RequestLog, now: datetime,
             policy: Policy | None = None, prepared: PreparedArea | None = None) -> ValidRequest:
    """Check every rule; return the normalised request or raise :class:`RequestRejected` listing them all.
    ``prepared``: the request's area from :func:`prepare_areas`, when a batch prepared it."""
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
    sq_mi = float("nan")
    prep = prepared if prepared is not None else prepare_areas([request.area], p)[0]
    area = prep.area
    if prep.error is not None:
        v.append(("area_invalid", prep.error))
    if area is not None:
        sq_mi = sum(a for a, _ in prep.stats) / SQ_M_PER_SQ_MI
        if not p.min_area_sq_mi <= sq_mi <= p.max_area_sq_mi:
            v.append(("area_size", f"area of {sq_mi:.4f} sq mi is outside {p.min_area_sq_mi} .. "
                                   f"{p.max_area_sq_mi} sq mi"))
        v.extend(_shape_problems(prep.count, prep.stats, p, prep.widths, lambda: prep.polys))
        if agency is not None and not jurisdiction_covers(agency.jurisdiction, area):
            v.append(("outside_jurisdiction", f"area is not inside the jurisdiction of {agency.agency_id}"))
    if v:
        raise RequestRejected(v)
    assert area is not None and start is not None and end is not None
    return ValidRequest(request_id=request.request_id, agency_id=request.agency_id,
                        case_number=request.case_number, incident_type=request.incident_type,
                        investigator_contact=contact, message=message, area=area, start=start, end=end,
                        submitted_at=sub, area_sq_mi=sq_mi)

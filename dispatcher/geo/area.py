"""Areas: GeoJSON or shapely (Multi)Polygons, validated once and flattened into the arrays kernels read.

Semantics are planar in longitude/latitude degrees, as in GeoJSON (RFC 7946) and shapely. A point on the
boundary (an edge, a vertex, the edge of a hole) is *covered*: it counts as inside, like shapely's
``intersects``/``covers``. An area that crosses the antimeridian must be given as a MultiPolygon split at
±180° (RFC 7946 §3.1.9); a ring spanning more than 180° of longitude is refused rather than guessed at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain
from typing import Any

import numpy as np
import orjson
import shapely
from shapely.geometry.base import BaseGeometry

from dispatcher.errors import DispatchError, InvalidArea
from kernels.validation import AREA_VALID, parse_area

#: Default cap on the total number of vertices of an area (all rings together).
MAX_VERTICES = 10_000
#: Largest GeoJSON text we parse.
MAX_GEOJSON_BYTES = 4 * 1024 * 1024

_F8 = np.dtype(np.float64)
#: The types of a coordinate the one-call conversion takes as they are; any other (a flag, which NumPy reads as
#: 0 or 1 beside numbers, a NumPy scalar) goes the general way, which names a flag.
_PLAIN_NUMBERS = frozenset((float, int))


def _refuse_flags(ring: list[Any] | tuple[Any, ...], where: str) -> None:
    """Raise :class:`InvalidArea` naming the first position of ``ring`` (of sequences) with a true/false among
    its coordinates: NumPy turns a flag beside numbers into 0 or 1 (``[true, 41.8]`` becomes ``[1.0, 41.8]``)."""
    for k, p in enumerate(ring):
        for x in p:
            if isinstance(x, (bool, np.bool_)):
                raise InvalidArea(f"{where} position {k}: {str(x).lower()} is a flag, not a coordinate; positions "
                                  "must be arrays of two or three numbers")


def _ring_array(ring: Any, where_format: str, *at: int) -> np.ndarray:
    """The ring's positions as an (n, 2) array; ``where_format.format(*at)`` names it in an error."""
    if not isinstance(ring, (list, tuple)) or len(ring) == 0:
        where = where_format.format(*at)
        raise InvalidArea(f"{where}: a ring must be a non-empty array of positions")
    first = ring[0]
    if isinstance(first, (list, tuple)):
        try:  # the common case in one call: positions of two numbers each (numbers: not text, not flags)
            arr = np.array(ring)
        except (TypeError, ValueError):
            pass
        else:
            if arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype.kind in "fi":
                if not _PLAIN_NUMBERS.issuperset(map(type, chain.from_iterable(ring))):
                    _refuse_flags(ring, where_format.format(*at))
                return arr.astype(np.float64, copy=False)
    where = where_format.format(*at)
    try:
        if not isinstance(first, (list, tuple)):
            raise TypeError
        if any(type(x) not in (int, float) for p in ring if len(p) > 2 for x in p[2:]):
            raise TypeError  # an altitude given as text, say
        arr = np.array([p[:2] if len(p) >= 2 else [math.nan, math.nan] for p in ring])
    except (TypeError, ValueError):
        raise InvalidArea(f"{where}: positions must be arrays of two or three numbers") from None
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype.kind not in "fi":
        raise InvalidArea(f"{where}: positions must be arrays of two or three numbers")
    _refuse_flags(ring, where)
    return arr.astype(np.float64, copy=False)


def _polygons_from_geojson(obj: Any) -> list[list[np.ndarray]]:
    if isinstance(obj, (str, bytes)):
        if len(obj) > MAX_GEOJSON_BYTES:
            raise InvalidArea(f"GeoJSON text of {len(obj)} bytes, more than the {MAX_GEOJSON_BYTES} allowed")
        try:
            obj = orjson.loads(obj)
        except orjson.JSONDecodeError as exc:
            raise InvalidArea(f"malformed GeoJSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidArea(f"expected a GeoJSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind == "Feature":
        return _polygons_from_geojson(obj.get("geometry"))
    coords = obj.get("coordinates")
    if kind == "Polygon":
        if not isinstance(coords, list) or not coords:
            raise InvalidArea("Polygon: 'coordinates' must be a non-empty array of rings")
        return [[_ring_array(r, "Polygon ring {}", i) for i, r in enumerate(coords)]]
    if kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise InvalidArea("MultiPolygon: 'coordinates' must be a non-empty array of polygons")
        out = []
        for j, poly in enumerate(coords):
            if not isinstance(poly, list) or not poly:
                raise InvalidArea(f"MultiPolygon polygon {j}: must be a non-empty array of rings")
            out.append([_ring_array(r, "MultiPolygon polygon {} ring {}", j, i) for i, r in enumerate(poly)])
        return out
    raise InvalidArea(f"unsupported GeoJSON type {kind!r}: expected Polygon, MultiPolygon or a Feature of one")


def _polygons_from_shapely(geom: BaseGeometry) -> list[list[np.ndarray]]:
    if geom.is_empty:
        raise InvalidArea("the area is empty")
    if geom.geom_type == "Polygon":
        parts = [geom]
    elif geom.geom_type == "MultiPolygon":
        parts = list(geom.geoms)
    else:
        raise InvalidArea(f"unsupported geometry type {geom.geom_type}: expected Polygon or MultiPolygon")
    return [[np.asarray(r.coords, dtype=np.float64)[:, :2] for r in (p.exterior, *p.interiors)] for p in parts]


@dataclass(frozen=True, eq=False)
class Area:
    """A validated area flattened for the kernels (see :mod:`kernels.geometry` for the layout).

    :attr:`geometry`, its shapely (Multi)Polygon, is made when first asked for: the compiled checks
    (:mod:`kernels.validation`) validate a typical area without it."""

    xs: np.ndarray
    ys: np.ndarray
    ring_ptr: np.ndarray
    poly_ptr: np.ndarray
    poly_bbox: np.ndarray
    _geometry: BaseGeometry | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # The index resolves an Area's arrays as they are, unchecked (they were validated when it was made), so
        # no Area is made from arrays that did not pass through the checks: only parse makes one.
        raise InvalidArea("an Area is made by Area.parse, which validates it; not from arrays directly")

    @classmethod
    def _made(cls, xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray,
              poly_bbox: np.ndarray, geometry: BaseGeometry | None) -> Area:
        """The Area of arrays the checks passed (float64 and int64, C order): its fields set once, here."""
        area = object.__new__(cls)
        area.__dict__.update(xs=xs, ys=ys, ring_ptr=ring_ptr, poly_ptr=poly_ptr, poly_bbox=poly_bbox,
                             _geometry=geometry)
        return area

    @property
    def geometry(self) -> BaseGeometry:
        """The area as a shapely Polygon or MultiPolygon (the same coordinates)."""
        geom = self._geometry
        if geom is None:
            geom = _geometry_of(self.xs, self.ys, self.ring_ptr, self.poly_ptr)
            object.__setattr__(self, "_geometry", geom)  # a cache: every caller builds the same geometry
        return geom

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(min_lng, min_lat, max_lng, max_lat)``."""
        b = self.poly_bbox
        return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))

    @property
    def n_vertices(self) -> int:
        return int(self.xs.shape[0])

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.xs, self.ys, self.ring_ptr, self.poly_ptr, self.poly_bbox

    def to_geojson(self) -> dict[str, Any]:
        """The area as a GeoJSON Polygon or MultiPolygon: its rings' positions as they are, straight from the
        arrays (what GEOS's writer gives for :attr:`geometry`, without building it)."""
        xy = np.column_stack((self.xs, self.ys)).tolist()
        rp, pp = self.ring_ptr.tolist(), self.poly_ptr.tolist()
        polys = [[xy[rp[r]:rp[r + 1]] for r in range(pp[p], pp[p + 1])] for p in range(len(pp) - 1)]
        if len(polys) == 1:
            return {"type": "Polygon", "coordinates": polys[0]}
        return {"type": "MultiPolygon", "coordinates": polys}

    @classmethod
    def parse(cls, area: Any, *, max_vertices: int = MAX_VERTICES) -> Area:
        """Validate ``area`` (an :class:`Area`, a GeoJSON dict or text, or a shapely geometry)."""
        if type(area) is dict:
            fast = cls._from_polygon_dict(area, max_vertices)
            if fast is not None:
                return fast
        elif isinstance(area, Area):
            if area.n_vertices > max_vertices:
                raise InvalidArea(f"area has {area.n_vertices} vertices, more than the {max_vertices} allowed")
            return area
        return cls._from_rings(_rings_of(area, max_vertices))

    @classmethod
    def parse_many(cls, areas: Sequence[Any], *, max_vertices: int = MAX_VERTICES) -> list[Area | Exception]:
        """Validate several areas: each result is the :class:`Area` :meth:`parse` returns, or the exception it
        raises (:class:`InvalidArea`, or the ``TypeError``/``ValueError``/``RecursionError`` of an unusable
        input)."""
        out: list[Area | Exception] = []
        for raw in areas:
            try:
                out.append(cls.parse(raw, max_vertices=max_vertices))
            except (DispatchError, TypeError, ValueError, RecursionError) as exc:
                out.append(exc)
        return out

    @classmethod
    def _from_polygon_dict(cls, area: dict[str, Any], max_vertices: int) -> Area | None:
        """A request's usual area, a GeoJSON Polygon of one ring of [lng, lat] floats, in the fewest steps: one
        conversion of the ring and one compiled call (:func:`kernels.validation.parse_area`). None for anything
        else, or an area the compiled checks do not certify: :meth:`_from_rings` then decides and names what is
        wrong, as for every other input."""
        xy = polygon_ring_xy(area, max_vertices)
        if xy is None:
            return None
        ring = area["coordinates"][0]
        ptrs = np.array((0, xy.shape[0], 0, 1), dtype=np.int64)
        got = cls._certified(xy, ptrs[:2], ptrs[2:])
        if got is not None:
            # NumPy reads a flag beside numbers as 0 or 1 ([true, 41.8] as [1.0, 41.8]): only bounds reaching
            # [0, 1] can hold one, and only then are the positions' types looked at (a ring of plain numbers
            # passes; any other goes the general way, which names the flag)
            x0, y0, x1, y1 = got.poly_bbox.tolist()[0]
            if ((x0 <= 1.0 and x1 >= 0.0) or (y0 <= 1.0 and y1 >= 0.0)) \
                    and not _PLAIN_NUMBERS.issuperset(map(type, chain.from_iterable(ring))):
                return None
        return got

    @classmethod
    def _certified(cls, xy: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray) -> Area | None:
        """The area of the positions ``xy`` (n, 2: float64, C order) when the compiled checks certify it, else
        None."""
        n = xy.shape[0]
        out = np.empty(2 * n + 4 * (poly_ptr.shape[0] - 1))
        if parse_area(xy, ring_ptr, poly_ptr, out) != AREA_VALID:
            return None
        return cls._made(out[:n], out[n:2 * n], ring_ptr, poly_ptr, out[2 * n:].reshape(-1, 4), None)

    @classmethod
    def _from_rings(cls, polys: list[list[np.ndarray]]) -> Area:
        """One area from its polygons' rings (a list of polygons, each a list of rings, the shell first): checked
        in compiled code, and by GEOS when that cannot certify it (then GEOS's answer and reason stand)."""
        if len(polys) == 1 and len(polys[0]) == 1:  # the common case, with fewer small arrays made
            coords = np.ascontiguousarray(polys[0][0], dtype=np.float64)
            ptrs = np.array([0, coords.shape[0], 0, 1], dtype=np.int64)
            ring_ptr, poly_ptr = ptrs[:2], ptrs[2:]
        else:
            coords = np.concatenate([r for rings in polys for r in rings])
            ring_ptr = np.array([0, *accumulate(r.shape[0] for rings in polys for r in rings)], dtype=np.int64)
            poly_ptr = np.array([0, *accumulate(len(rings) for rings in polys)], dtype=np.int64)
        certified = cls._certified(coords, ring_ptr, poly_ptr)
        if certified is not None:
            return certified
        # GEOS decides, and names what is wrong: the first ring rule broken, else the geometry's validity
        bboxes = [[_check_ring(r, f"polygon {j} ring {i}") for i, r in enumerate(rings)][0]
                  for j, rings in enumerate(polys)]
        xs, ys = coords.T.copy()
        geom = _geometry_of(xs, ys, ring_ptr, poly_ptr)
        _check_geometry(geom, bool(shapely.is_valid(geom)), float(shapely.area(geom)))
        return cls._made(xs, ys, ring_ptr, poly_ptr, np.asarray(bboxes, dtype=np.float64).reshape(-1, 4), geom)


def polygon_ring_xy(area: dict[str, Any], max_vertices: int) -> np.ndarray | None:
    """The positions of a request's usual area, a GeoJSON Polygon (a dict) of one ring of at most
    ``max_vertices`` [lng, lat] floats, as an (n, 2) float64 array in C order, in one conversion; None for
    anything else. Nothing is checked but the shape: :func:`kernels.validation.parse_area` checks the positions
    (here, and in the compiled resolve :meth:`dispatcher.index.camera_index.CameraIndex.resolve` makes of a dict),
    and a flag among them reads as 0 or 1, which only bounds reaching [0, 1] can hide: :meth:`Area.parse` then
    looks at the positions' types, and the compiled resolve leaves such a ring to it."""
    coords = area.get("coordinates")
    if area.get("type") != "Polygon" or type(coords) is not list or len(coords) != 1:
        return None
    ring = coords[0]
    if type(ring) is not list or not 0 < len(ring) <= max_vertices:
        return None
    try:
        xy = np.array(ring)  # positions of anything but two floats give another shape or dtype
    except (TypeError, ValueError, RecursionError):
        return None
    if xy.dtype != _F8 or xy.ndim != 2 or xy.shape[1] != 2:
        return None
    return xy


def _geometry_of(xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray) -> BaseGeometry:
    """The shapely Polygon (one polygon) or MultiPolygon of the flat arrays."""
    xy = np.column_stack((xs, ys))
    shapes = []
    for p in range(poly_ptr.shape[0] - 1):
        rings = [xy[ring_ptr[r]:ring_ptr[r + 1]] for r in range(poly_ptr[p], poly_ptr[p + 1])]
        shapes.append(shapely.Polygon(rings[0], rings[1:]))
    return shapes[0] if len(shapes) == 1 else shapely.MultiPolygon(shapes)


def _rings_of(area: Any, max_vertices: int) -> list[list[np.ndarray]]:
    polys = _polygons_from_shapely(area) if isinstance(area, BaseGeometry) else _polygons_from_geojson(area)
    n = 0
    for rings in polys:
        for r in rings:
            n += r.shape[0]
    if n > max_vertices:
        raise InvalidArea(f"area has {n} vertices, more than the {max_vertices} allowed")
    return polys


def _check_geometry(geom: BaseGeometry, valid: bool, size: float) -> None:
    if not valid:
        raise InvalidArea(f"invalid area: {shapely.is_valid_reason(geom)}")
    if not size > 0.0:
        raise InvalidArea("the area has zero size")


def _check_ring(r: np.ndarray, where: str) -> tuple[float, float, float, float]:
    """The ring's bounds (min lng, min lat, max lng, max lat); the first rule it breaks raised as
    :class:`InvalidArea`."""
    if r.shape[0] < 4:
        raise InvalidArea(f"{where}: has {r.shape[0]} positions; a closed ring needs at least 4")
    if not np.isfinite(r).all():
        raise InvalidArea(f"{where}: has NaN or infinite coordinates")
    if not (r[0] == r[-1]).all():
        raise InvalidArea(f"{where}: is not closed (first position {r[0].tolist()} != last {r[-1].tolist()})")
    lng_lo, lat_lo = r.min(axis=0)
    lng_hi, lat_hi = r.max(axis=0)
    if lng_lo < -180 or lng_hi > 180 or lat_lo < -90 or lat_hi > 90:
        raise InvalidArea(f"{where}: coordinates outside lng [-180, 180] / lat [-90, 90]: "
                          f"lng {lng_lo}..{lng_hi}, lat {lat_lo}..{lat_hi}")
    if lng_hi - lng_lo > 180:
        raise InvalidArea(f"{where}: spans {lng_hi - lng_lo:.3f}° of longitude; an area crossing the "
                          "antimeridian must be split into a MultiPolygon at ±180° (RFC 7946 3.1.9)")
    return (lng_lo, lat_lo, lng_hi, lat_hi)

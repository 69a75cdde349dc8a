"""Areas: GeoJSON or shapely (Multi)Polygons, validated once and flattened into the arrays kernels read.

Semantics are planar in longitude/latitude degrees, as in GeoJSON (RFC 7946) and shapely. A point on the
boundary (an edge, a vertex, the edge of a hole) is *covered*: it counts as inside, like shapely's
``intersects``/``covers``. An area that crosses the antimeridian must be given as a MultiPolygon split at
±180° (RFC 7946 §3.1.9); a ring spanning more than 180° of longitude is refused rather than guessed at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np
import orjson
import shapely
from shapely.geometry.base import BaseGeometry

from dispatcher.errors import DispatchError, InvalidArea

#: Default cap on the total number of vertices of an area (all rings together).
MAX_VERTICES = 10_000
#: Largest GeoJSON text we parse.
MAX_GEOJSON_BYTES = 4 * 1024 * 1024


def _ring_array(ring: Any, where: str) -> np.ndarray:
    if not isinstance(ring, (list, tuple)) or len(ring) == 0:
        raise InvalidArea(f"{where}: a ring must be a non-empty array of positions")
    try:
        first = ring[0]
        if not isinstance(first, (list, tuple)):
            raise TypeError
        if all(len(p) == 2 for p in ring):
            arr = np.array(ring, dtype=np.float64)
        else:
            arr = np.array([p[:2] if len(p) >= 2 else [math.nan, math.nan] for p in ring], dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArea(f"{where}: positions must be arrays of two or three numbers") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InvalidArea(f"{where}: positions must be arrays of two or three numbers")
    return arr


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
        return [[_ring_array(r, f"Polygon ring {i}") for i, r in enumerate(coords)]]
    if kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise InvalidArea("MultiPolygon: 'coordinates' must be a non-empty array of polygons")
        out = []
        for j, poly in enumerate(coords):
            if not isinstance(poly, list) or not poly:
                raise InvalidArea(f"MultiPolygon polygon {j}: must be a non-empty array of rings")
            out.append([_ring_array(r, f"MultiPolygon polygon {j} ring {i}") for i, r in enumerate(poly)])
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
    """A validated area flattened for the kernels (see :mod:`kernels.geometry` for the layout)."""

    xs: np.ndarray
    ys: np.ndarray
    ring_ptr: np.ndarray
    poly_ptr: np.ndarray
    poly_bbox: np.ndarray
    geometry: BaseGeometry

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
        out: dict[str, Any] = orjson.loads(shapely.to_geojson(self.geometry))
        return out

    @classmethod
    def parse(cls, area: Any, *, max_vertices: int = MAX_VERTICES) -> Area:
        """Validate ``area`` (an :class:`Area`, a GeoJSON dict or text, or a shapely geometry)."""
        if isinstance(area, Area):
            if area.n_vertices > max_vertices:
                raise InvalidArea(f"area has {area.n_vertices} vertices, more than the {max_vertices} allowed")
            return area
        return cls._from_rings(_rings_of(area, max_vertices))

    @classmethod
    def parse_many(cls, areas: Sequence[Any], *, max_vertices: int = MAX_VERTICES) -> list[Area | Exception]:
        """Validate several areas at once: each result is the :class:`Area` :meth:`parse` returns, or the
        exception it raises (:class:`InvalidArea`, or the ``TypeError``/``ValueError``/``RecursionError`` of an
        unusable input). The rings' checks and the shapely geometries (construction, validity) run once for all
        of them, not once an area."""
        out: list[Area | Exception | None] = []
        pending: list[tuple[int, list[list[np.ndarray]]]] = []
        for raw in areas:
            try:
                if isinstance(raw, Area):
                    out.append(cls.parse(raw, max_vertices=max_vertices))
                else:
                    pending.append((len(out), _rings_of(raw, max_vertices)))
                    out.append(None)
            except (DispatchError, TypeError, ValueError, RecursionError) as exc:
                out.append(exc)
        for (k, _), built in zip(pending, cls._build([polys for _, polys in pending])):
            out[k] = built
        return [a for a in out if a is not None]

    @classmethod
    def _from_rings(cls, polys: list[list[np.ndarray]]) -> Area:
        """One area from its polygons' rings (a list of polygons, each a list of rings, the shell first)."""
        bboxes = [[_check_ring(r, f"polygon {j} ring {i}") for i, r in enumerate(rings)][0]
                  for j, rings in enumerate(polys)]
        shapes = [shapely.Polygon(rings[0], rings[1:]) for rings in polys]
        geom = shapes[0] if len(shapes) == 1 else shapely.MultiPolygon(shapes)
        _check_geometry(geom, bool(shapely.is_valid(geom)), float(shapely.area(geom)))
        return cls._of(polys, np.concatenate([r for rings in polys for r in rings]), bboxes, geom)

    @classmethod
    def _of(cls, polys: list[list[np.ndarray]], coords: np.ndarray, bboxes: Any, geom: BaseGeometry) -> Area:
        return cls(
            xs=np.ascontiguousarray(coords[:, 0]),
            ys=np.ascontiguousarray(coords[:, 1]),
            ring_ptr=np.array([0, *accumulate(r.shape[0] for rings in polys for r in rings)], dtype=np.int64),
            poly_ptr=np.array([0, *accumulate(len(rings) for rings in polys)], dtype=np.int64),
            poly_bbox=np.asarray(bboxes, dtype=np.float64).reshape(-1, 4),
            geometry=geom,
        )

    @classmethod
    def _build(cls, many: list[list[list[np.ndarray]]]) -> list[Area | Exception]:
        """Areas from their rings, as :meth:`_from_rings` makes each: the rings checked together (those of an
        area that may break a rule again one by one, for the message), the geometries made and validated by
        one shapely call each."""
        out: list[Area | Exception | None] = [None] * len(many)
        if len(many) == 1:
            try:
                return [cls._from_rings(many[0])]
            except InvalidArea as exc:
                return [exc]
        for k in _suspects(many) if many else []:
            try:
                for j, rs in enumerate(many[k]):
                    for i, r in enumerate(rs):
                        _check_ring(r, f"polygon {j} ring {i}")
            except InvalidArea as exc:
                out[k] = exc
        ok = [k for k, o in enumerate(out) if o is None]
        if ok:
            rings = [r for k in ok for rs in many[k] for r in rs]
            poly_sizes = [len(rs) for k in ok for rs in many[k]]
            coords = np.concatenate(rings)
            polygons = iter(shapely.polygons(
                shapely.linearrings(coords, indices=np.repeat(np.arange(len(rings)), [r.shape[0] for r in rings])),
                indices=np.repeat(np.arange(len(poly_sizes)), poly_sizes)))
            geoms: list[BaseGeometry] = []
            for k in ok:
                n = len(many[k])
                geoms.append(next(polygons) if n == 1 else shapely.MultiPolygon([next(polygons) for _ in range(n)]))
            at = 0
            for k, geom, valid, size in zip(ok, geoms, shapely.is_valid(geoms), shapely.area(geoms)):
                n = sum(r.shape[0] for rs in many[k] for r in rs)
                mine, at = coords[at:at + n], at + n
                try:
                    _check_geometry(geom, bool(valid), float(size))
                except InvalidArea as exc:
                    out[k] = exc
                    continue
                bboxes = [[*rs[0].min(axis=0), *rs[0].max(axis=0)] for rs in many[k]]
                out[k] = cls._of(many[k], mine, bboxes, geom)
        return [a for a in out if a is not None]


def _rings_of(area: Any, max_vertices: int) -> list[list[np.ndarray]]:
    polys = _polygons_from_shapely(area) if isinstance(area, BaseGeometry) else _polygons_from_geojson(area)
    n = sum(r.shape[0] for rings in polys for r in rings)
    if n > max_vertices:
        raise InvalidArea(f"area has {n} vertices, more than the {max_vertices} allowed")
    return polys


def _check_geometry(geom: BaseGeometry, valid: bool, size: float) -> None:
    if not valid:
        raise InvalidArea(f"invalid area: {shapely.is_valid_reason(geom)}")
    if not size > 0.0:
        raise InvalidArea("the area has zero size")


def _suspects(many: list[list[list[np.ndarray]]]) -> list[int]:
    """The areas of which some ring may break a rule of :func:`_check_ring`: its rules over every ring at once
    (a filter: the areas it names are checked one by one, for the message)."""
    rings = [r for polys in many for rs in polys for r in rs]
    sizes = np.fromiter((r.shape[0] for r in rings), np.int64, len(rings))
    flat = np.concatenate(rings)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    lo = np.minimum.reduceat(flat, starts, axis=0)
    hi = np.maximum.reduceat(flat, starts, axis=0)
    good = ((sizes >= 4) & np.logical_and.reduceat(np.isfinite(flat).all(axis=1), starts)
            & (flat[starts] == flat[starts + sizes - 1]).all(axis=1)
            & (lo[:, 0] >= -180) & (hi[:, 0] <= 180) & (lo[:, 1] >= -90) & (hi[:, 1] <= 90)
            & (hi[:, 0] - lo[:, 0] <= 180))
    first = np.cumsum([0, *(sum(len(rs) for rs in polys) for polys in many[:-1])])
    return np.flatnonzero(~np.logical_and.reduceat(good, first)).tolist()


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

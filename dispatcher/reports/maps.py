"""The map of partner agencies: every agency over the United States, coloured by the date it joined, as a
self-contained HTML page (SVG, with a slider and a play button that replay the program's growth) and as a PNG.

The states come from ``data/us_states.json`` (US Census Bureau boundaries, see ``tools/make_us_states.py``) and
are drawn in the usual composite of three Albers equal-area conic projections (pyproj): the lower 48 states,
and Alaska and Hawaii in insets at the bottom left. An agency is drawn at the centre of its jurisdiction, in the
part of its state. Nothing is fetched: the page works offline and carries the outlines it draws.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

from dispatcher.errors import InvalidReportSettings
from dispatcher.reports.pages import esc, page
from dispatcher.workflow.agencies import Agency, AgencyRegistry

WIDTH, HEIGHT = 960, 600
#: Each part of the composite: its Albers conic (parallels and centre as usual for it) and where it goes in the
#: frame, (x0, y0, x1, y1) in pixels. Alaska is drawn at a smaller scale, as on most national maps.
_PARTS: dict[str, tuple[str, tuple[float, float, float, float]]] = {
    "lower48": ("+proj=aea +lat_1=29.5 +lat_2=45.5 +lat_0=37.5 +lon_0=-96 +datum=WGS84", (20, 10, 940, 540)),
    "AK": ("+proj=aea +lat_1=55 +lat_2=65 +lat_0=50 +lon_0=-154 +datum=WGS84", (20, 420, 230, 590)),
    "HI": ("+proj=aea +lat_1=8 +lat_2=18 +lat_0=3 +lon_0=-157 +datum=WGS84", (240, 500, 370, 590)),
}
DAY_S = 86_400
MARKER_R = 3.6


def part_of(state: str) -> str:
    return state if state in ("AK", "HI") else "lower48"


@functools.lru_cache(maxsize=1)
def us_states() -> dict[str, tuple[str, BaseGeometry]]:
    """``{postal code: (name, (Multi)Polygon in lng/lat)}`` for the 50 states and DC."""
    doc = json.loads(resources.files("dispatcher").joinpath("data/us_states.json").read_text())
    return {code: (s["name"], shapely.from_geojson(json.dumps(s["geometry"]))) for code, s in doc["states"].items()}


class UsFrame:
    """The 960 x 600 pixel frame: lng/lat to pixels (y down), per part of the composite."""

    def __init__(self) -> None:
        states = us_states()
        self._tr = {p: Transformer.from_crs("EPSG:4326", proj, always_xy=True) for p, (proj, _) in _PARTS.items()}
        self._fit: dict[str, tuple[float, float, float]] = {}
        for p, (_, (x0, y0, x1, y1)) in _PARTS.items():
            bounds = np.array([self._metres(g, p).bounds for code, (_, g) in states.items() if part_of(code) == p])
            mx0, my0 = bounds[:, 0].min(), bounds[:, 1].min()
            mx1, my1 = bounds[:, 2].max(), bounds[:, 3].max()
            s = min((x1 - x0) / (mx1 - mx0), (y1 - y0) / (my1 - my0))
            # centred in its box: pixel x = ox + s * mx, pixel y = oy - s * my
            ox = (x0 + x1) / 2 - s * (mx0 + mx1) / 2
            oy = (y0 + y1) / 2 + s * (my0 + my1) / 2
            self._fit[p] = (s, ox, oy)

    def _metres(self, geom: BaseGeometry, part: str) -> BaseGeometry:
        tr = self._tr[part]
        return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))

    def project(self, lng: Any, lat: Any, part: str) -> tuple[np.ndarray, np.ndarray]:
        mx, my = self._tr[part].transform(np.asarray(lng, float), np.asarray(lat, float))
        s, ox, oy = self._fit[part]
        return ox + s * np.asarray(mx), oy - s * np.asarray(my)

    def project_geometry(self, geom: BaseGeometry, part: str) -> BaseGeometry:
        return shapely.transform(geom, lambda xy: np.column_stack(self.project(xy[:, 0], xy[:, 1], part)))

    @functools.cached_property
    def state_shapes(self) -> list[tuple[str, str, BaseGeometry]]:
        """``(code, name, outline in pixels)`` of every state, simplified to a third of a pixel."""
        return [(code, name, self.project_geometry(g, part_of(code)).simplify(0.33))
                for code, (name, g) in us_states().items()]


@functools.lru_cache(maxsize=1)
def us_frame() -> UsFrame:
    return UsFrame()


def svg_path(geom: BaseGeometry, digits: int = 1) -> str:
    """SVG path data of a (Multi)Polygon's rings (already in pixels)."""
    out = []
    for poly in getattr(geom, "geoms", [geom]):
        for ring in (poly.exterior, *poly.interiors):
            xy = np.asarray(ring.coords)[:-1]
            out.append("M" + "L".join(f"{x:.{digits}f},{y:.{digits}f}" for x, y in xy) + "Z")
    return "".join(out)


def colours(values: np.ndarray, cmap: str = "viridis") -> list[str]:
    """``#rrggbb`` for each value in 0..1 on a matplotlib colour map."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cm = colormaps[cmap]
    return [to_hex(cm(float(v))) for v in np.clip(values, 0.0, 1.0)]


@dataclass(frozen=True)
class AgencyMarker:
    agency_id: str
    name: str
    state: str
    joined: datetime
    x: float
    y: float
    colour: str

    @property
    def day(self) -> int:
        """Days since 1970-01-01 of the join date (what the slider counts in)."""
        return int(self.joined.timestamp() // DAY_S)


def agency_markers(registry: AgencyRegistry | list[Agency]) -> list[AgencyMarker]:
    """One marker per agency, in join order: position in the frame and colour by join date."""
    agencies = sorted(registry, key=lambda a: (a.joined_at, a.agency_id))
    if not agencies:
        raise InvalidReportSettings("there are no partner agencies to map")
    frame = us_frame()
    t = np.array([a.joined_at.timestamp() for a in agencies])
    span = max(t.max() - t.min(), 1.0)
    cols = colours((t - t.min()) / span)
    out = []
    for a, c in zip(agencies, cols):
        centre = a.jurisdiction.centroid
        x, y = frame.project([centre.x], [centre.y], part_of(a.state))
        out.append(AgencyMarker(a.agency_id, a.name, a.state, a.joined_at.astimezone(timezone.utc), float(x[0]),
                                float(y[0]), c))
    return out


def _year_ticks(t0: float, t1: float) -> list[tuple[float, str]]:
    """(fraction along the legend, label) for every 1 January between two times (Unix seconds)."""
    first = datetime.fromtimestamp(t0, tz=timezone.utc).year + 1
    last = datetime.fromtimestamp(t1, tz=timezone.utc).year
    span = max(t1 - t0, 1.0)
    return [((datetime(y, 1, 1, tzinfo=timezone.utc).timestamp() - t0) / span, str(y)) for y in range(first, last + 1)]


def _legend_svg(markers: list[AgencyMarker]) -> str:
    t0, t1 = markers[0].joined.timestamp(), markers[-1].joined.timestamp()
    w, x0, bar_w = 360, 10, 340
    stops = "".join(f'<stop offset="{f:.2f}" stop-color="{c}"/>'
                    for f, c in zip(np.linspace(0, 1, 11), colours(np.linspace(0, 1, 11))))
    ticks = "".join(f'<line x1="{x0 + f * bar_w:.1f}" x2="{x0 + f * bar_w:.1f}" y1="26" y2="31" stroke="#444"/>'
                    f'<text x="{x0 + f * bar_w:.1f}" y="43" text-anchor="middle">{esc(label)}</text>'
                    for f, label in _year_ticks(t0, t1))
    return (f'<svg class="legend-bar" width="{w}" height="48" viewBox="0 0 {w} 48" role="img" '
            f'aria-label="colour scale: join date from {markers[0].joined:%Y-%m-%d} to {markers[-1].joined:%Y-%m-%d}">'
            f'<defs><linearGradient id="joined-scale" x1="0" x2="1" y1="0" y2="0">{stops}</linearGradient></defs>'
            f'<rect x="{x0}" y="8" width="{bar_w}" height="18" fill="url(#joined-scale)" stroke="#888"/>'
            f"{ticks}</svg>")


AGENCY_STYLE = """
#map { position: relative; max-width: 960px; }
#map svg { width: 100%; height: auto; display: block; }
path.state { fill: #eef0f3; stroke: #fff; stroke-width: 0.8; }
circle.agency { stroke: #1d2330; stroke-width: 0.5; fill-opacity: 0.9; cursor: pointer; }
circle.agency:hover { stroke-width: 2; }
circle.agency.hidden { display: none; }
#controls { display: flex; gap: 12px; align-items: center; padding: 4px 20px; max-width: 960px; }
#controls input { flex: 1; }
#play { font: inherit; padding: 4px 12px; min-width: 92px; }
#legend { margin: 4px 20px; }
#legend figcaption { font-weight: 600; }
.legend-bar text { font-size: 11px; fill: #333; }
#tooltip { position: absolute; pointer-events: none; background: #fff; border: 1px solid #888;
           border-radius: 4px; padding: 6px 8px; box-shadow: 0 2px 6px rgba(0,0,0,.2); max-width: 320px; }
#tooltip strong { display: block; }
"""


def agencies_html(registry: AgencyRegistry | list[Agency], title: str = "Partner agencies") -> str:
    """The agency map as one self-contained HTML document."""
    markers = agency_markers(registry)
    frame = us_frame()
    states = "".join(f'<path class="state" data-state="{esc(code)}" d="{svg_path(g)}"><title>{esc(name)}</title>'
                     f"</path>" for code, name, g in frame.state_shapes)
    circles = "".join(
        f'<circle class="agency" cx="{m.x:.1f}" cy="{m.y:.1f}" r="{MARKER_R}" fill="{m.colour}" '
        f'data-id="{esc(m.agency_id)}" data-name="{esc(m.name)}" data-state="{esc(m.state)}" '
        f'data-joined="{m.joined:%Y-%m-%d}" data-day="{m.day}">'
        f"<title>{esc(m.name)} ({esc(m.state)}), joined {m.joined:%Y-%m-%d}</title></circle>" for m in markers)
    first, last = markers[0], markers[-1]
    n = len(markers)
    body = (
        f"<header><h1>{esc(title)}</h1>"
        f'<p id="count" aria-live="polite">{n} of {n} partner agencies by {last.joined:%Y-%m-%d}</p></header>'
        f'<div id="map"><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="map of {n} partner agencies, coloured by join date">'
        f'<g id="states">{states}</g><g id="agencies">{circles}</g></svg>'
        f'<div id="tooltip" role="tooltip" hidden></div></div>'
        f'<div id="controls"><button id="play" type="button" aria-pressed="false">&#9654; Play</button>'
        f'<input id="slider" type="range" min="{first.day}" max="{last.day}" step="1" value="{last.day}" '
        f'aria-label="show the agencies that had joined by this date">'
        f'<output id="date" for="slider">{last.joined:%Y-%m-%d}</output></div>'
        f'<figure id="legend"><figcaption>Join date</figcaption>{_legend_svg(markers)}</figure>'
        f'<footer>First partner {first.joined:%Y-%m-%d}, latest {last.joined:%Y-%m-%d}. State outlines: US Census '
        f"Bureau. Drag the slider or press Play to replay the program's growth.</footer>")
    script = resources.files("dispatcher").joinpath("data/agency_map.js").read_text()
    return page(title, body, style=AGENCY_STYLE, script=script)


def agencies_png(registry: AgencyRegistry | list[Agency], path: str | Path, title: str = "Partner agencies",
                 dpi: int = 150) -> Path:
    """The same map as a PNG (for reports): states, a dot per agency coloured by join date, a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.colors import Normalize
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MplPath

    markers = agency_markers(registry)
    frame = us_frame()
    fig, ax = plt.subplots(figsize=(WIDTH / 100, HEIGHT / 100 + 0.4), dpi=dpi)
    patches = []
    for _, _, g in frame.state_shapes:
        for poly in getattr(g, "geoms", [g]):
            rings = [np.asarray(r.coords) for r in (poly.exterior, *poly.interiors)]
            codes = np.concatenate([[MplPath.MOVETO] + [MplPath.LINETO] * (len(r) - 2) + [MplPath.CLOSEPOLY]
                                    for r in rings])
            patches.append(PathPatch(MplPath(np.concatenate(rings), codes)))
    ax.add_collection(PatchCollection(patches, facecolor="#eef0f3", edgecolor="white", linewidth=0.6))
    t = np.array([m.joined.timestamp() for m in markers])
    ax.scatter([m.x for m in markers], [m.y for m in markers], c=[m.colour for m in markers], s=14,
               edgecolors="#1d2330", linewidths=0.3, zorder=3)
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(HEIGHT, 0)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"{title}: {len(markers)} agencies, {markers[0].joined:%Y-%m} to {markers[-1].joined:%Y-%m}",
                 fontsize=12)
    sm = plt.cm.ScalarMappable(norm=Normalize(t.min(), max(t.max(), t.min() + 1)), cmap="viridis")
    bar = fig.colorbar(sm, ax=ax, orientation="horizontal", fraction=0.04, pad=0.02, aspect=40)
    ticks = [(t.min() + f * max(t.max() - t.min(), 1.0), label) for f, label in _year_ticks(t.min(), t.max())]
    bar.set_ticks([v for v, _ in ticks], labels=[label for _, label in ticks])
    bar.set_label("join date")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out

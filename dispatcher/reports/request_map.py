"""The map of one request, for the platform's operators: the request's area, the H3 cells the index used to
resolve it, and camera density around it as H3 hexagons.

Privacy: the map never holds a camera's position or an owner. Density is a count of the cameras in place at the
end of the window per H3 cell (resolution 9 by default, about 0.1 km²); a cell counting fewer than ``k`` cameras
is not drawn at all, so neither its shape nor its count is in the page. The cells used are index nodes (which
places hold cameras at all is what the density layer shows too); their counts are not shown.

The page is one self-contained HTML document in a local Web Mercator frame. Map tiles are off by default (the
page then fetches nothing); a tile URL template turns them on and allows that one origin in the page's
Content-Security-Policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import shapely
from shapely.geometry.base import BaseGeometry

from dispatcher.errors import DispatchError, InvalidReportSettings, UnknownRequest
from dispatcher.geo import h3 as h3x
from dispatcher.index import CameraIndex
from dispatcher.reports.maps import colours, svg_path
from dispatcher.reports.pages import esc, page
from dispatcher.reports.suppression import check_k
from dispatcher.workflow.agencies import AgencyRegistry
from dispatcher.workflow.store import Store

WIDTH, HEIGHT = 900, 640
#: The view is the area's box grown by this fraction of its size on every side, and by at least MIN_PAD degrees.
PAD = 0.4
MIN_PAD = 0.003
#: A cell edge longer than this (degrees) is drawn through intermediate points of its great circle.
EDGE_STEP = 0.01


def mercator_y(lat: Any) -> np.ndarray:
    """Web Mercator northing in degrees (the same unit as longitude)."""
    phi = np.radians(np.clip(np.asarray(lat, float), -85.0, 85.0))
    return np.asarray(np.degrees(np.log(np.tan(math.pi / 4 + phi / 2))))


@dataclass(frozen=True)
class Frame:
    """Pixels from lng/lat: ``x = (lng - lng0) * scale``, ``y = (north0 - mercator_y(lat)) * scale``."""

    lng0: float
    north0: float
    scale: float

    def xy(self, lng: Any, lat: Any) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(lng, float) - self.lng0) * self.scale, (self.north0 - mercator_y(lat)) * self.scale

    def geometry(self, geom: BaseGeometry) -> BaseGeometry:
        return shapely.transform(geom, lambda p: np.column_stack(self.xy(p[:, 0], p[:, 1])))

    @classmethod
    def fit(cls, bbox: tuple[float, float, float, float]) -> Frame:
        """The frame that shows ``bbox`` grown by :data:`PAD`, centred in WIDTH x HEIGHT pixels."""
        x0, y0, x1, y1 = bbox
        px = max((x1 - x0) * PAD, MIN_PAD)
        py = max((y1 - y0) * PAD, MIN_PAD)
        x0, x1 = x0 - px, x1 + px
        n0, n1 = (float(v) for v in mercator_y([y0 - py, y1 + py]))
        scale = min(WIDTH / (x1 - x0), HEIGHT / (n1 - n0))
        return cls(lng0=(x0 + x1) / 2 - WIDTH / 2 / scale, north0=(n0 + n1) / 2 + HEIGHT / 2 / scale, scale=scale)

    def view(self) -> tuple[float, float, float, float]:
        """The lng/lat box the frame shows."""
        north = np.radians([self.north0 - HEIGHT / self.scale, self.north0])
        lat = np.degrees(2 * np.arctan(np.exp(north)) - math.pi / 2)
        return self.lng0, float(lat[0]), self.lng0 + WIDTH / self.scale, float(lat[1])


def cell_outlines(cells: np.ndarray) -> list[BaseGeometry]:
    """Each cell's boundary as a lng/lat polygon; long edges get points along their great circle (H3 edges are
    great-circle arcs), so a coarse cell is drawn where it really lies."""
    verts, counts = h3x.cell_to_boundary(cells)
    out = []
    for v, n in zip(verts, counts):
        lat_lng = np.radians(v[:n])
        unit = np.column_stack([np.cos(lat_lng[:, 0]) * np.cos(lat_lng[:, 1]),
                                np.cos(lat_lng[:, 0]) * np.sin(lat_lng[:, 1]), np.sin(lat_lng[:, 0])])
        pts = []
        for a, b, (la, lo) in zip(unit, np.roll(unit, -1, axis=0), v[:n]):
            pts.append((lo, la))
            steps = int(np.degrees(np.arccos(np.clip(a @ b, -1.0, 1.0))) / EDGE_STEP)
            for f in np.arange(1, steps) / steps:  # normalised linear interpolation stays on the great circle
                p = a * (1 - f) + b * f
                p /= np.linalg.norm(p)
                pts.append((math.degrees(math.atan2(p[1], p[0])), math.degrees(math.asin(p[2]))))
        out.append(shapely.Polygon(pts))
    return out


@dataclass(frozen=True)
class RequestMap:
    """Everything an operator's map of one request shows (see :func:`build_request_map`)."""

    request_id: str
    state: str
    payload: dict[str, Any]
    agency_name: str
    area: BaseGeometry
    cells: np.ndarray
    inside: np.ndarray
    density_cells: np.ndarray
    density_counts: np.ndarray
    density_res: int
    k: int
    at: datetime

    @property
    def frame(self) -> Frame:
        return Frame.fit(self.area.bounds)


def build_request_map(request_id: str, store: Store, index: CameraIndex, registry: AgencyRegistry | None = None,
                      *, k: int = 10, density_res: int = 9) -> RequestMap:
    """Everything the request map shows, from the stored request and the index: the area, the cells the index
    walks for it, and the density hexagons of at least ``k`` cameras (cameras in place at the window's end)."""
    k = check_k(k)
    if isinstance(density_res, bool) or not isinstance(density_res, (int, np.integer)) or not 0 <= density_res <= 15:
        raise InvalidReportSettings(f"density resolution must be an H3 resolution 0..15, got {density_res!r}")
    got = store.get_request(request_id) if isinstance(request_id, str) else None
    if got is None:
        raise UnknownRequest(f"no request {str(request_id)[:80]!r} in the store")
    state, payload = got
    area = shapely.from_geojson(orjson.dumps(payload["area"]).decode())
    cells, inside = index.cells_used(payload["area"])
    end = datetime.fromisoformat(payload["end"])
    frame = Frame.fit(area.bounds)
    dcells, dcounts = index.density(frame.view(), int(density_res), at=end)
    keep = dcounts >= k
    name = payload["agency_id"]
    if registry is not None:
        try:
            name = registry.get(payload["agency_id"]).name
        except DispatchError:
            pass  # an agency removed since: its id stands in for its name
    return RequestMap(request_id, state, payload, str(name), area, cells, inside, dcells[keep], dcounts[keep],
                      int(density_res), k, end)


def _tiles(frame: Frame, template: str) -> tuple[str, str]:
    """``<image>`` elements of the XYZ tiles under the frame, and their origin (for the CSP)."""
    parts = urlsplit(template)
    if parts.scheme not in ("https", "http") or not parts.netloc or not all(f in template for f in "{z}{x}{y}"):
        raise InvalidReportSettings(f"tile URL must be http(s) with {{z}}, {{x}} and {{y}}, got {template[:120]!r}")
    z = int(min(19, max(0, round(math.log2(frame.scale * 360 / 256)))))
    n = 2**z
    size = 360 / n * frame.scale  # a tile's side in pixels
    lng0, _, lng1, _ = frame.view()
    tx0, tx1 = int((lng0 + 180) / 360 * n), int((lng1 + 180) / 360 * n)
    ty0 = int((180 - frame.north0) / 360 * n)
    ty1 = int((180 - (frame.north0 - HEIGHT / frame.scale)) / 360 * n)
    images = []
    for tx in range(max(tx0, 0), min(tx1, n - 1) + 1):
        for ty in range(max(ty0, 0), min(ty1, n - 1) + 1):
            x = (tx * 360 / n - 180 - frame.lng0) * frame.scale
            y = (frame.north0 - (180 - ty * 360 / n)) * frame.scale
            url = template.replace("{z}", str(z)).replace("{x}", str(tx)).replace("{y}", str(ty))
            images.append(f'<image class="tile" href="{esc(url)}" x="{x:.2f}" y="{y:.2f}" width="{size:.2f}" '
                          f'height="{size:.2f}" preserveAspectRatio="none"/>')
    return "".join(images), f"{parts.scheme}://{parts.netloc}"


REQUEST_STYLE = """
.layout { display: flex; flex-wrap: wrap; gap: 16px; padding: 0 20px; align-items: flex-start; }
#map svg { width: 900px; max-width: 100%; height: auto; border: 1px solid var(--line); background: #f7f8fa; }
path.hex { stroke: #fff; stroke-width: 0.6; fill-opacity: 0.75; }
path.cell { fill: none; stroke-width: 1.2; }
path.cell.inside { stroke: #1a7f37; }
path.cell.edge { stroke: #c2410c; stroke-dasharray: 5 3; }
path.area { fill: rgba(31, 79, 214, 0.10); stroke: #1f4fd6; stroke-width: 2.5; }
aside { width: 310px; }
#legend h2 { font-size: 15px; margin: 0 0 4px; }
#legend svg { flex: none; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; margin: 0 0 12px; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
#legend ul { list-style: none; padding: 0; margin: 0; }
#legend li { display: flex; align-items: center; gap: 8px; margin: 3px 0; }
"""


def _swatch(inner: str) -> str:
    return f'<svg width="36" height="16" viewBox="0 0 36 16" aria-hidden="true">{inner}</svg>'


def _density_scale(m: RequestMap) -> str:
    """The density colour ramp, from k to the largest count drawn."""
    top = max(int(m.density_counts.max()) if m.density_counts.shape[0] else m.k, m.k + 1)
    stops = "".join(f'<stop offset="{f:.2f}" stop-color="{c}"/>'
                    for f, c in zip(np.linspace(0, 1, 6), colours(np.linspace(0, 1, 6), "YlOrRd")))
    return (f'<svg width="220" height="34" viewBox="0 0 220 34" role="img" aria-label="density scale {m.k} to {top}">'
            f'<defs><linearGradient id="density-scale">{stops}</linearGradient></defs>'
            f'<rect x="4" y="2" width="200" height="12" fill="url(#density-scale)" fill-opacity="0.75"/>'
            f'<text x="4" y="30" font-size="11">{m.k}</text>'
            f'<text x="204" y="30" font-size="11" text-anchor="end">{top} cameras</text></svg>')


def _rect(style: str) -> str:
    return f'<rect x="2" y="2" width="32" height="12" style="{style}"/>'


def request_map_html(m: RequestMap, *, tiles: str | None = None) -> str:
    """The request map as one self-contained HTML document."""
    frame = m.frame
    p = m.payload
    outlines = cell_outlines(m.cells) if m.cells.shape[0] else []
    cell_paths = "".join(
        f'<path class="cell {"inside" if ins else "edge"}" data-cell="{int(c):x}" '
        f'data-res="{int(r)}" d="{svg_path(frame.geometry(g), 2)}"><title>H3 cell {int(c):x} (res {int(r)}): '
        f'{"inside the area, taken whole" if ins else "on the boundary, each camera tested"}</title></path>'
        for c, r, ins, g in zip(m.cells, h3x.get_resolution(m.cells) if m.cells.shape[0] else [], m.inside,
                                outlines))
    hexes = ""
    if m.density_cells.shape[0]:
        lo, hi = math.log(m.k), math.log(max(int(m.density_counts.max()), m.k + 1))
        fills = colours((np.log(m.density_counts) - lo) / (hi - lo), "YlOrRd")
        hexes = "".join(
            f'<path class="hex" data-cell="{int(c):x}" data-count="{int(n)}" fill="{f}" '
            f'd="{svg_path(frame.geometry(g), 2)}"><title>{int(n)} cameras</title></path>'
            for c, n, f, g in zip(m.density_cells, m.density_counts, fills, cell_outlines(m.density_cells)))
    tile_images, origins = "", tuple[str, ...]()
    if tiles:
        tile_images, origin = _tiles(frame, tiles)
        origins = (origin,)
    n_in = int(m.inside.sum())
    window = f"{p['start']} to {p['end']}"
    facts = [("request", m.request_id), ("state", m.state), ("agency", f"{m.agency_name} ({p['agency_id']})"),
             ("case", p["case_number"]), ("incident", p["incident_type"]), ("window", window),
             ("area", f"{float(p['area_sq_mi']):.3f} sq mi"),
             ("cells used", f"{m.cells.shape[0]}: {n_in} inside, {m.cells.shape[0] - n_in} on the boundary"),
             ("message", p["message"])]
    dl = "".join(f"<dt>{esc(a)}</dt><dd>{esc(b)}</dd>" for a, b in facts)
    scale_km = _scale_bar(frame)
    legend = (
        '<section id="legend"><h2>Legend</h2><ul>'
        f'<li>{_swatch(_rect("fill:rgba(31,79,214,.1);stroke:#1f4fd6;stroke-width:2.5"))}request area</li>'
        f'<li>{_swatch(_rect("fill:none;stroke:#1a7f37;stroke-width:1.5"))}'
        "index cell inside the area (taken whole)</li>"
        f'<li>{_swatch(_rect("fill:none;stroke:#c2410c;stroke-width:1.5;stroke-dasharray:5 3"))}'
        "index cell on the boundary (each camera tested)</li>"
        f"<li>cameras per H3 res-{m.density_res} hexagon in place on {m.at:%Y-%m-%d %H:%M} UTC, {m.k} or more "
        f"(smaller counts are not drawn)</li><li>{_density_scale(m)}</li></ul></section>")
    body = (
        f"<header><h1>Request {esc(m.request_id)}</h1>"
        f'<p class="note">For operators. No camera position or owner is shown; hexagons with fewer than {m.k} '
        f"cameras are left out.</p></header>"
        f'<div class="layout"><div id="map"><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="request area, index cells and camera density" data-lng0="{frame.lng0!r}" '
        f'data-north0="{frame.north0!r}" data-scale="{frame.scale!r}">'
        f'<g id="tiles">{tile_images}</g><g id="density">{hexes}</g><g id="cells">{cell_paths}</g>'
        f'<path id="area" class="area" d="{svg_path(frame.geometry(m.area), 2)}"><title>request area</title></path>'
        f"{scale_km}</svg></div>"
        f"<aside><dl>{dl}</dl>{legend}</aside></div>")
    return page(f"Request {m.request_id}", body, style=REQUEST_STYLE, img_origins=origins)


def _scale_bar(frame: Frame) -> str:
    """A scale bar of a round length, bottom left."""
    lng0, lat0, lng1, lat1 = frame.view()
    lat = (lat0 + lat1) / 2
    m_per_px = 111_320 * math.cos(math.radians(lat)) / frame.scale
    target = m_per_px * 150
    length = max(v for v in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000)
                 if v <= max(target, 10))
    px = length / m_per_px
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length} m"
    return (f'<g id="scale" transform="translate(16 {HEIGHT - 20})"><rect x="-6" y="-18" width="{px + 12:.1f}" '
            f'height="28" fill="#fff" fill-opacity="0.8"/><line x1="0" x2="{px:.1f}" y1="0" y2="0" stroke="#222" '
            f'stroke-width="3"/><text x="0" y="-5" font-size="12">{label}</text></g>')

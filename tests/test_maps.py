"""The agency map and the request map: geometry against independent oracles (the Census state outlines for the
agency markers, h3-py and shapely for the index cells and the density hexagons), privacy (no camera, owner or
small count reaches the page), and each page rendered in headless Chromium, checked as a person would see it."""

from __future__ import annotations

import collections
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import h3
import numpy as np
import pyarrow as pa
import pytest
import shapely
from click.testing import CliRunner

from dispatcher.cli import main
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.gate import OwnerGate
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import LocalSink
from dispatcher.dispatch.wire import NotificationHeader
from dispatcher.errors import DispatchError, InvalidData, InvalidReportSettings, UnknownRequest
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index import CameraIndex
from dispatcher.reports.maps import agencies_html, agencies_png, agency_markers, part_of, us_frame, us_states
from dispatcher.reports.request_map import HEIGHT, WIDTH, build_request_map, request_map_html
from dispatcher.synthetic.agencies import generate_agencies
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import SqliteStore
from tests import data
from tests.video_requests import JOINED, LAT0, LNG0, NOW, square
from tests.video_requests import request as make_request

HOSTILE = """<img src=x onerror="alert(1)">'&"</script><b>Police</b>"""
POINT = re.compile(r"[ML]([-0-9.]+),([-0-9.]+)")


@pytest.fixture(scope="module")
def agencies() -> list[Agency]:
    return generate_agencies(400)


# ------------------------------------------------------------------------------------------ agency map


def test_every_marker_lies_in_its_own_state(agencies: list[Agency]) -> None:
    """Agencies are placed from GeoNames coordinates, states drawn from Census outlines: the two independent
    sources must agree once projected (insets for Alaska and Hawaii included), to within a marker's radius."""
    frame = us_frame()
    shapes = {code: g for code, _, g in frame.state_shapes}
    markers = agency_markers(agencies)
    assert len(markers) == 400 and {m.state for m in markers} >= {"AK", "HI", "CA", "TX", "NY", "IL"}
    for m in markers:
        assert shapes[m.state].distance(shapely.Point(m.x, m.y)) < 4, (m.name, m.state)
        assert 0 <= m.x <= 960 and 0 <= m.y <= 600
    # the lower 48, Alaska and Hawaii do not overlap in the frame
    parts = {p: shapely.union_all([g for c, g in shapes.items() if part_of(c) == p]) for p in ("lower48", "AK", "HI")}
    assert parts["lower48"].intersection(parts["AK"]).area < 1 and parts["AK"].intersection(parts["HI"]).area < 1
    assert len(us_states()) == 51


def test_marker_colours_follow_join_dates(agencies: list[Agency]) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    markers = agency_markers(agencies)
    t = np.array([m.joined.timestamp() for m in markers])
    assert np.all(np.diff(t) >= 0)  # join order
    frac = (t - t[0]) / (t[-1] - t[0])
    for m, f in zip(markers[::37], frac[::37]):
        assert np.allclose(to_rgb(m.colour), colormaps["viridis"](f)[:3], atol=1 / 255)


def test_agency_map_in_chromium(agencies: list[Agency], visit) -> None:
    v = visit(agencies_html(agencies), "agencies-map")
    page = v.page
    markers = page.locator("circle.agency")
    assert markers.count() == 400
    assert page.locator("circle.agency:visible").count() == 400
    assert page.locator("path.state").count() == 51
    assert page.locator("#count").inner_text().startswith("400 of 400 partner agencies by 2025-")
    legend = page.locator("#legend")
    assert legend.is_visible() and "Join date" in legend.inner_text()
    for year in range(2019, 2026):
        assert legend.locator("text", has_text=str(year)).count() == 1
    box = page.locator("#map svg").bounding_box()
    assert box["width"] > 900 and box["height"] > 500
    v.screenshot("agencies-map")

    # the slider: the agencies that had joined by the day it shows, no more
    days = sorted(int(a.joined_at.timestamp() // 86400) for a in agencies)
    mid = days[150]
    page.locator("#slider").fill(str(mid))
    want = sum(d <= mid for d in days)
    assert page.locator("circle.agency:visible").count() == want
    assert page.locator("#count").inner_text().startswith(f"{want} of 400 partner agencies by ")

    # play replays from the first join: the count grows, then pauses on a second press
    page.locator("#slider").fill(str(days[-1]))
    page.locator("#play").click()
    page.wait_for_timeout(600)
    playing = page.locator("circle.agency:visible").count()
    page.locator("#play").click()
    assert 0 < playing < 400
    assert page.locator("#play").get_attribute("aria-pressed") == "false"
    page.wait_for_timeout(200)
    assert page.locator("circle.agency:visible").count() >= playing

    # tooltip: name, state and join date of the agency under the pointer
    page.locator("#slider").fill(str(days[-1]))
    first = sorted(agencies, key=lambda a: (a.joined_at, a.agency_id))[0]
    page.locator(f'circle.agency[data-id="{first.agency_id}"]').hover()
    tip = page.locator("#tooltip")
    assert tip.is_visible()
    assert tip.inner_text().split("\n") == [first.name, f"{first.state}, joined {first.joined_at:%Y-%m-%d}"]
    v.screenshot("agencies-map-tooltip")
    v.assert_clean()


def test_hostile_agency_name_is_shown_as_text(agencies: list[Agency], visit) -> None:
    evil = Agency("zz-evil", HOSTILE, "SD", geodesic_circle(-100.5, 44.4, 5_000), JOINED)  # alone on the map
    html = agencies_html([*agencies[:20], evil], title=HOSTILE)
    assert "<img" not in html and "<b>Police" not in html and HOSTILE not in html
    v = visit(html, "agencies-hostile")
    v.page.locator('circle.agency[data-id="zz-evil"]').hover(timeout=5_000)
    assert v.page.locator("#tooltip strong").text_content() == HOSTILE
    assert v.page.title() == HOSTILE
    assert v.page.locator("img").count() == 0 and v.page.locator("b").count() == 0
    v.assert_clean()


def test_agencies_png(agencies: list[Agency], tmp_path: Path) -> None:
    from matplotlib.image import imread

    img = imread(str(agencies_png(agencies, tmp_path / "agencies.png", dpi=80)))
    assert img.shape[0] > 400 and img.shape[1] > 700
    # dark viridis purples and bright yellows are both there: the colour scale spans the program's history
    rgb = img[:, :, :3].reshape(-1, 3)
    assert ((rgb[:, 0] > 0.9) & (rgb[:, 1] > 0.85) & (rgb[:, 2] < 0.3)).sum() > 20
    assert ((rgb[:, 0] < 0.35) & (rgb[:, 1] < 0.15) & (rgb[:, 2] > 0.3)).sum() > 20


def test_no_agencies_is_a_typed_error() -> None:
    with pytest.raises(InvalidReportSettings):
        agencies_html([])


# ------------------------------------------------------------------------------------------ request map

END = NOW - timedelta(hours=3)


@dataclass
class Dispatched:
    cams: pa.Table
    index: CameraIndex
    store: SqliteStore
    registry: AgencyRegistry
    area: dict
    store_path: Path
    index_dir: Path


def _setup(tmp: Path, cams: pa.Table) -> Dispatched:
    own = data.owners(cams, seed=5, share_out=0.0)
    index = CameraIndex.build(cams, own)
    registry = AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL",
                                      geodesic_circle(LNG0, LAT0, 20_000), JOINED)])
    store = SqliteStore(tmp / "store.sqlite")
    wf = Workflow(store, registry)
    area = square(0.3, LNG0 + 0.002, LAT0 - 0.001)
    wf.submit(make_request(area=area, start=END - timedelta(hours=2), end=END), NOW)
    wf.approve("r1", "alice", NOW)
    rs = index.resolve(area, END - timedelta(hours=2), END, now=NOW)
    header = NotificationHeader("r1", "il-chicago", "Chicago Police Department", "2026-001234", "burglary",
                                END - timedelta(hours=2), END, "Burglary on the block.")
    Dispatcher(LocalSink(tmp / "store.sqlite"), QueueSettings()).dispatch(header, rs, gate=OwnerGate(store), now=NOW)
    wf.mark_dispatched("r1", NOW)
    index.save(tmp / "index")
    return Dispatched(cams, index, store, registry, area, tmp / "store.sqlite", tmp / "index")


def _cameras() -> pa.Table:
    # dense around the request, sparse towards the edges of the view, and three cameras alone near a corner
    lone = np.array([[LNG0 + 0.0105, LAT0 + 0.006]] * 3) + np.array([[0, 0], [1e-5, 0], [0, 1e-5]])
    return data.cameras(8_000, seed=9, cx=LNG0, cy=LAT0, spread=0.003, extra_points=lone)


@pytest.fixture(scope="module")
def dispatched(tmp_path_factory: pytest.TempPathFactory) -> Dispatched:
    return _setup(tmp_path_factory.mktemp("reqmap"), _cameras())


def _parent_cells(cams: pa.Table, res: np.ndarray) -> dict[int, list[int]]:
    """Oracle: which cameras sit under each (cell, res) of the index: the res-10 cell's parent, by h3-py."""
    out: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    lat, lng = cams.column("lat").to_numpy(), cams.column("lng").to_numpy()
    for row, (la, lo) in enumerate(zip(lat, lng)):
        c10 = h3.latlng_to_cell(la, lo, 10)
        for r in set(res.tolist()):
            out[(h3.str_to_int(h3.cell_to_parent(c10, r)), r)].append(row)
    return out


def test_cells_used_are_the_walk_of_the_resolve(dispatched: Dispatched) -> None:
    """Every camera the area covers (shapely) lies under a cell used; a cell marked inside holds only covered
    cameras (taken whole, rightly); every cell used holds a camera near the area."""
    d = dispatched
    cells, inside = d.index.cells_used(d.area)
    assert cells.shape[0] > 5 and inside.any() and (~inside).any()
    res = np.array([h3.get_resolution(h3.int_to_str(int(c))) for c in cells])
    under = _parent_cells(d.cams, res)
    geom = shapely.from_geojson(json.dumps(d.area))
    lat, lng = d.cams.column("lat").to_numpy(), d.cams.column("lng").to_numpy()
    covered = set(np.flatnonzero(shapely.intersects_xy(geom, lng, lat)).tolist())
    held = {row for c, r in zip(cells.tolist(), res.tolist()) for row in under[(c, r)]}
    assert covered and covered <= held
    for c, r, ins in zip(cells.tolist(), res.tolist(), inside.tolist()):
        rows = under[(c, r)]
        assert rows
        if ins:
            assert set(rows) <= covered
        else:
            box = shapely.box(lng[rows].min(), lat[rows].min(), lng[rows].max(), lat[rows].max())
            assert box.intersects(geom.envelope)


def _density_oracle(cams: pa.Table, view: tuple[float, float, float, float], at: datetime, res: int) -> dict:
    lat, lng = cams.column("lat").to_numpy(), cams.column("lng").to_numpy()
    inst = cams.column("installed_at").cast(pa.int64()).to_numpy()
    rem = cams.column("removed_at").cast(pa.int64()).fill_null(2**62).to_numpy()
    t = int(at.timestamp())
    live = (inst <= t) & (rem > t)
    cell = np.array([h3.str_to_int(h3.latlng_to_cell(a, b, res)) for a, b in zip(lat, lng)], dtype=np.uint64)
    x0, y0, x1, y1 = view
    inside = live & (lng >= x0) & (lng <= x1) & (lat >= y0) & (lat <= y1)
    counts = collections.Counter(cell[live].tolist())
    return {c: counts[c] for c in set(cell[inside].tolist())}


def test_density_counts_match_h3py(dispatched: Dispatched) -> None:
    m = build_request_map("r1", dispatched.store, dispatched.index, dispatched.registry, k=1)
    want = _density_oracle(dispatched.cams, m.frame.view(), m.at, 9)
    assert dict(zip(m.density_cells.tolist(), m.density_counts.tolist())) == want
    assert sorted(want.values())[:3] < [10, 10, 10] and max(want.values()) > 50  # small counts and large ones
    for k in (4, 10, 50):
        mk = build_request_map("r1", dispatched.store, dispatched.index, dispatched.registry, k=k)
        assert dict(zip(mk.density_cells.tolist(), mk.density_counts.tolist())) == \
            {c: n for c, n in want.items() if n >= k}


def _points(d_attr: str, lng0: float, north0: float, scale: float) -> np.ndarray:
    """The (lng, lat) of every vertex of an SVG path drawn in the request map's frame."""
    xy = np.array([(float(a), float(b)) for a, b in POINT.findall(d_attr)])
    lng = lng0 + xy[:, 0] / scale
    lat = np.degrees(2 * np.arctan(np.exp(np.radians(north0 - xy[:, 1] / scale))) - math.pi / 2)
    return np.column_stack([lng, lat])


def test_request_map_in_chromium(dispatched: Dispatched, visit) -> None:
    d = dispatched
    m = build_request_map("r1", d.store, d.index, d.registry, k=10)
    v = visit(request_map_html(m), "request-map")
    page = v.page
    svg = page.locator("#map svg")
    lng0, north0, scale = (float(svg.get_attribute(f"data-{a}")) for a in ("lng0", "north0", "scale"))
    tol = 0.006 / scale  # the page rounds pixels to 0.01

    # the request polygon: visible, inside the view, vertex for vertex the stored area
    area = page.locator("#area")
    assert area.is_visible()
    box = area.bounding_box()
    mbox = svg.bounding_box()
    assert box["width"] > 50 and box["height"] > 50
    assert mbox["x"] <= box["x"] and box["x"] + box["width"] <= mbox["x"] + mbox["width"]
    drawn = _points(area.get_attribute("d"), lng0, north0, scale)
    ring = np.array(d.area["coordinates"][0][:-1])
    assert drawn.shape == ring.shape and np.abs(drawn - ring).max() < tol

    # the index cells: exactly those of the walk, each drawn through h3-py's boundary vertices
    cells, inside = d.index.cells_used(d.area)
    paths = page.locator("path.cell")
    assert paths.count() == cells.shape[0]
    drawn_cells = {}
    for i in range(paths.count()):
        p = paths.nth(i)
        drawn_cells[int(p.get_attribute("data-cell"), 16)] = (p.get_attribute("class"), p.get_attribute("d"))
    assert set(drawn_cells) == set(cells.tolist())
    for c, ins in zip(cells.tolist(), inside.tolist()):
        cls, path_d = drawn_cells[c]
        assert cls == ("cell inside" if ins else "cell edge")
        pts = _points(path_d, lng0, north0, scale)
        for la, lo in h3.cell_to_boundary(h3.int_to_str(c)):
            assert np.abs(pts - (lo, la)).max(axis=1).min() < tol

    # density: exactly the hexagons of k or more cameras, h3-py's boundaries, no smaller count anywhere
    want = {c: n for c, n in _density_oracle(d.cams, m.frame.view(), m.at, 9).items() if n >= 10}
    hexes = page.locator("path.hex")
    got = {int(hexes.nth(i).get_attribute("data-cell"), 16): int(hexes.nth(i).get_attribute("data-count"))
           for i in range(hexes.count())}
    assert got == want and len(got) > 5
    for i in range(0, hexes.count(), 7):
        pts = _points(hexes.nth(i).get_attribute("d"), lng0, north0, scale)
        verts = np.array([(lo, la) for la, lo in h3.cell_to_boundary(h3.int_to_str(
            int(hexes.nth(i).get_attribute("data-cell"), 16)))])
        assert pts.shape == verts.shape and np.abs(pts - verts).max() < tol
    assert page.locator("circle").count() == 0  # never a point
    legend = page.locator("#legend")
    assert legend.is_visible() and "10 or more" in legend.inner_text()
    assert "Chicago Police Department" in page.locator("aside").inner_text()
    v.screenshot("request-map")
    v.assert_clean()
    assert (svg.bounding_box()["width"], WIDTH, HEIGHT) == (900, 900, 640)


def test_request_map_holds_no_camera_or_owner_id(dispatched: Dispatched, tmp_path: Path) -> None:
    """The same cameras with other camera and owner ids make the very same page: no id can be in it."""
    cams = _cameras()
    rng = np.random.default_rng(1)
    renamed = cams.set_column(0, "camera_id", pa.array(rng.permutation(cams.num_rows) + 10**12)) \
        .set_column(1, "owner_id", pa.array(cams.column("owner_id").to_numpy() * 7919 + 10**11))
    other = _setup(tmp_path, renamed)
    a = request_map_html(build_request_map("r1", dispatched.store, dispatched.index, dispatched.registry))
    b = request_map_html(build_request_map("r1", other.store, other.index, other.registry))
    assert a == b


def test_request_map_bad_input(dispatched: Dispatched) -> None:
    d = dispatched
    with pytest.raises(UnknownRequest, match="no request 'nope'"):
        build_request_map("nope", d.store, d.index)
    for k in (0, -3, 2.5, True):
        with pytest.raises(InvalidReportSettings, match="k must be"):
            build_request_map("r1", d.store, d.index, k=k)
    with pytest.raises(InvalidReportSettings, match="resolution"):
        build_request_map("r1", d.store, d.index, density_res=16)
    m = build_request_map("r1", d.store, d.index)
    for bad in ("ftp://tiles.example/{z}/{x}/{y}.png", "https://tiles.example/{z}/{x}.png", "not a url"):
        with pytest.raises(InvalidReportSettings, match="tile URL"):
            request_map_html(m, tiles=bad)
    assert isinstance(UnknownRequest("x"), KeyError) and isinstance(InvalidReportSettings("x"), ValueError)
    assert issubclass(UnknownRequest, DispatchError)


def test_tiles_are_opt_in_and_allowed_by_origin_only(dispatched: Dispatched) -> None:
    m = build_request_map("r1", dispatched.store, dispatched.index)
    plain = request_map_html(m)
    assert "<image" not in plain and "img-src data:;" in plain
    tiled = request_map_html(m, tiles="https://tiles.example/{z}/{x}/{y}.png?a=1&b=2")
    imgs = re.findall(r'<image class="tile" href="https://tiles\.example/(\d+)/(\d+)/(\d+)\.png\?a=1&amp;b=2"', tiled)
    assert imgs and len({z for z, _, _ in imgs}) == 1
    z = int(imgs[0][0])
    # the tiles cover the request area, at a zoom where a tile is drawn at about its own size
    lng0, lat0, lng1, lat1 = shapely.from_geojson(json.dumps(dispatched.area)).bounds
    n = 2**z
    tx = int((lng0 + 180) / 360 * n)
    ty = int((1 - math.asinh(math.tan(math.radians(lat1))) / math.pi) / 2 * n)
    assert (str(z), str(tx), str(ty)) in imgs
    assert "img-src data: https://tiles.example;" in tiled


# ------------------------------------------------------------------------------------------ command line


def test_cli_maps(dispatched: Dispatched, agencies: list[Agency], tmp_path: Path) -> None:
    runner = CliRunner()
    AgencyRegistry(agencies).save_parquet(tmp_path / "generated.parquet")
    r = runner.invoke(main, ["map", "agencies", "--agencies", str(tmp_path / "generated.parquet"), "--out",
                             str(tmp_path / "a.html"), "--png", str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a.html").read_text().count('<circle class="agency"') == 400
    assert (tmp_path / "a.png").stat().st_size > 50_000
    dispatched.registry.save_geojson(tmp_path / "agencies.geojson")
    r = runner.invoke(main, ["map", "request", "r1", "--store", str(dispatched.store_path), "--index",
                             str(dispatched.index_dir), "--out", str(tmp_path / "r.html"), "--k", "12",
                             "--agencies", str(tmp_path / "agencies.geojson")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "r.html").read_text()
    assert 'id="area"' in html and "12 or more" in html and "Chicago Police Department" in html
    assert min(int(x) for x in re.findall(r'data-count="(\d+)"', html)) >= 12
    r = runner.invoke(main, ["map", "request", "nope", "--store", str(dispatched.store_path), "--index",
                             str(dispatched.index_dir), "--agencies", str(tmp_path / "agencies.geojson")])
    assert isinstance(r.exception, UnknownRequest)
    r = runner.invoke(main, ["map", "request", "r1", "--store", str(tmp_path / "missing.sqlite"), "--index",
                             str(dispatched.index_dir)])
    assert isinstance(r.exception, InvalidData) and "no such SQLite store" in str(r.exception)


def test_cli_errors_are_one_line(dispatched: Dispatched, tmp_path: Path) -> None:
    import subprocess
    import sys

    dispatched.registry.save_geojson(tmp_path / "agencies.geojson")
    p = subprocess.run([sys.executable, "-m", "dispatcher.cli", "map", "request", "r1", "--store",
                        str(dispatched.store_path), "--index", str(dispatched.index_dir), "--k", "0",
                        "--agencies", str(tmp_path / "agencies.geojson")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "k must be a whole number of at least 1, got 0" in p.stderr


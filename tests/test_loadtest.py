"""The load test's 1M-camera smoke run, through the command an operator types: every scenario, each checked for
lost, duplicated and misaddressed notifications against the index; and its request generator against shapely."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyproj
import pytest
import shapely

from bench.loadtest import LoadSettings
from dispatcher.synthetic.agencies import generate_agencies
from dispatcher.synthetic.requests import typical_requests
from dispatcher.workflow.agencies import AgencyRegistry
from dispatcher.workflow.policy import Policy, validate
from dispatcher.workflow.requests import VideoRequest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.redis
def test_loadtest_smoke_every_scenario_exact(tmp_path: Path) -> None:
    out = tmp_path / "lt"
    proc = subprocess.run(
        [sys.executable, "-c", "from dispatcher.cli import run; run()", "loadtest", "--cameras", "1000000",
         "--rate", "150", "--duration", "4", "--workers", "2", "--work-dir", str(tmp_path / "work"),
         "--json-out", f"{out}.json", "--markdown-out", f"{out}.md", "--plot-out", f"{out}.png"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(Path(f"{out}.json").read_text())
    by_name = {s["name"]: s for s in report["scenarios"]}
    assert list(by_name) == ["steady", "burst", "fanout", "kill", "restart"]
    for s in by_name.values():
        assert s["exact"], s["name"]
        assert s["lost"] == s["duplicated"] == s["unexpected"] == s["wrong_cameras"] == s["missing"] == 0
        assert s["completed"] == s["submitted"] and s["refused"] == 0  # every generated request is lawful
        assert s["notifications"] > 0 and 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"]
        assert s["series"]["t"] and max(s["series"]["completed"]) <= s["submitted"]
    assert by_name["burst"]["special"]["completed"] == by_name["burst"]["special"]["requests"] == 400
    fan = by_name["fanout"]["special"]
    assert fan["completed"] == 1 and fan["notified"] > 500  # 100 km² of a large city: hundreds of owners at 1M
    assert [w["killed"] for w in by_name["kill"]["workers"]] == [True, False, False]
    assert any("Redis shut down" in e for e in by_name["restart"]["events"])
    md = Path(f"{out}.md").read_text()
    assert "| steady |" in md and "Exact" in md and Path(f"{out}.png").stat().st_size > 10_000


def test_generated_requests_are_lawful_and_inside_their_jurisdiction() -> None:
    agencies = generate_agencies(400)
    registry = AgencyRegistry(agencies)
    now = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
    reqs = typical_requests(agencies, 300, 5, now, "t")
    geod = pyproj.Geod(ellps="WGS84")

    class NoHistory:
        def has_request(self, request_id: str) -> bool:
            return False

        def count_agency_requests(self, agency_id: str, since: datetime) -> int:
            return 0

    for r in reqs:
        v = validate(VideoRequest.from_dict(r), registry, NoHistory(), now, Policy())
        poly = shapely.geometry.shape(r["area"])
        assert registry.get(r["agency_id"]).jurisdiction.contains(poly)  # oracle: shapely
        sq_mi = abs(geod.geometry_area_perimeter(poly)[0]) / 2_589_988.110336  # oracle: pyproj on the ellipsoid
        assert 0.029 < sq_mi < 0.451 and v.area_sq_mi == pytest.approx(sq_mi, rel=1e-6)
        assert 15 * 60 <= (v.end - v.start).total_seconds() <= 12 * 3600 and v.end < now
    assert len({r["agency_id"] for r in reqs}) > 150


def test_settings_reject_unknown_scenarios_and_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        LoadSettings(scenarios=("steady", "meteor"))
    with pytest.raises(ValueError):
        LoadSettings(rate=0)

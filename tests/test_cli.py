from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from dispatcher.cli import main


def test_demo_runs_and_reports_identical_results(tmp_path: Path):
    out = tmp_path / "demo.json"
    result = CliRunner().invoke(main, ["demo", "--cameras", "20000", "--requests", "20", "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["cameras"] == 20000
    assert set(report["resolve"]) == {"0.025 sq mi", "0.5 sq mi", "10 km²"}
    for row in report["resolve"].values():
        assert row["geodispatch"]["p50_us"] > 0 and row["latsorted"]["p50_us"] > 0
    assert "resolve latency" in result.output
    run = report["pipeline"]  # typical requests through the whole pipeline, then the same commands again
    assert run["requests"] == 50 and run["dispatched"] == 50 and run["refused"] == 0
    assert run["recipients"] > 0 and run["batches"] > 0
    assert run["repeat_appended"] == 0 and run["repeat_dispatched"] == 0


def test_generate_build_resolve_round_trip(tmp_path: Path):
    runner = CliRunner()
    data, index = tmp_path / "data", tmp_path / "index"
    r = runner.invoke(main, ["generate", "--cameras", "5000", "--out", str(data)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["build", "--data", str(data), "--out", str(index)])
    assert r.exit_code == 0, r.output
    area = {"type": "Polygon", "coordinates": [[[-130, 20], [-60, 20], [-60, 55], [-130, 55], [-130, 20]]]}
    r = runner.invoke(main, ["resolve", "--index", str(index), "--area", json.dumps(area), "--start",
                             "2026-10-31T00:00:00Z", "--end", "2026-10-31T12:00:00Z", "--now",
                             "2026-11-01T00:00:00Z", "--out", str(tmp_path / "r.parquet")])
    assert r.exit_code == 0, r.output
    counts = json.loads(r.output)
    assert counts["owners"] > 0 and counts["cameras"] >= counts["owners"]


def test_env_vars_set_options(tmp_path: Path):
    r = CliRunner().invoke(main, ["generate", "--out", str(tmp_path / "d")],
                           env={"GEODISPATCH_GENERATE_CAMERAS": "1000"})
    assert r.exit_code == 0, r.output
    assert "1,000 cameras" in r.output


def test_bad_area_is_a_one_line_error(tmp_path: Path):
    runner = CliRunner()
    runner.invoke(main, ["generate", "--cameras", "1000", "--out", str(tmp_path / "d")])
    runner.invoke(main, ["build", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "i")])
    p = subprocess.run([sys.executable, "-m", "dispatcher.cli", "resolve", "--index", str(tmp_path / "i"), "--area",
                        "{broken", "--start", "2026-10-31T00:00:00Z", "--end", "2026-10-31T01:00:00Z"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert "malformed GeoJSON" in p.stderr


def test_orchestration_type_checks_strictly():
    """mypy --strict (pyproject.toml) over the library."""
    p = subprocess.run([sys.executable, "-m", "mypy", "dispatcher"], capture_output=True, text=True, timeout=600,
                       cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Success" in p.stdout


def test_lint():
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "dispatcher", "kernels", "bench", "tests", "tools"],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stdout + p.stderr


def test_bench_report_with_every_peer(tmp_path: Path):
    """The operators' bench command at 300,000 cameras, every peer loaded with the
    same data and every answer asserted identical to ours, a few requests per area size."""
    js, md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    r = CliRunner().invoke(main, ["bench", "--cameras", "300000", "--queries", "4", "--window-queries", "3",
                                  "--sections", "index", "--json-out", str(js), "--markdown-out", str(md),
                                  "--plot-out", str(png)])
    assert r.exit_code == 0, r.output
    report = json.loads(js.read_text())
    assert set(report) == {"generated_at", "index"}
    idx = report["index"]
    # CI installs every peer: none may be skipped there (a peer missing locally shows in the note)
    assert idx["skipped"] == {}, idx["skipped"]
    assert set(idx["build"]) == {"geodispatch", "latsorted", "strtree", "duckdb", "postgis", "redis-geo"}
    assert set(idx["resolve"]) == {"0.025 sq mi", "0.5 sq mi", "10 km²", "100 km²", "city, 600 km²"}
    assert set(idx["windows"]) == {"15 min, last 2 days", "12 h, last 2 days", "12 h, 150-175 days ago"}
    assert all(set(row) >= {"geodispatch", "duckdb", "postgis", "redis-geo"} for row in idx["resolve"].values())
    assert "| 0.5 sq mi |" in md.read_text() and "| 12 h, last 2 days |" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert idx["cameras"] == 300_000


def test_bench_h3_section(tmp_path: Path):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    r = CliRunner().invoke(main, ["bench", "--sections", "h3", "--h3-points", "50000", "--h3-res", "11",
                                  "--no-compile-times", "--json-out", str(js), "--markdown-out", str(md)])
    assert r.exit_code == 0, r.output
    h3r = json.loads(js.read_text())["h3"]
    assert (h3r["points"], h3r["res"]) == (50000, 11)
    assert set(h3r["engines"]) == {"geodispatch", "geodispatch 1 thread", "h3ronpy", "h3-py loop"}
    assert h3r["engines"]["geodispatch"]["ratio"] == 1.0
    assert all(e["seconds"] > 0 for e in h3r["engines"].values())
    assert "| h3-py loop |" in md.read_text()


def test_bench_rejects_unknown_sections(tmp_path: Path):
    r = CliRunner().invoke(main, ["bench", "--sections", "index,nope"])
    assert r.exit_code == 2 and "nope" in r.output


def test_every_option_reads_the_environment_variable_named_after_its_flag(tmp_path: Path):
    runner = CliRunner()
    runner.invoke(main, ["generate", "--cameras", "2000", "--out", str(tmp_path / "d")])
    r = runner.invoke(main, ["build"], env={"GEODISPATCH_BUILD_DATA": str(tmp_path / "d"),
                                            "GEODISPATCH_BUILD_OUT": str(tmp_path / "i")})
    assert r.exit_code == 0, r.output
    area = '{"type": "Polygon", "coordinates": [[[-130, 20], [-60, 20], [-60, 55], [-130, 55], [-130, 20]]]}'
    r = runner.invoke(main, ["resolve", "--area", area, "--start", "2026-10-31T00:00:00Z", "--end",
                             "2026-10-31T01:00:00Z"], env={"GEODISPATCH_RESOLVE_INDEX": str(tmp_path / "i")})
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["owners"] > 0
    help_text = runner.invoke(main, ["resolve", "--help"], terminal_width=200).output
    assert "GEODISPATCH_RESOLVE_INDEX" in help_text and "GEODISPATCH_RESOLVE_OUT" in help_text
    for command in (["map", "request"], ["report", "transparency"], ["serve"], ["consume"], ["demo"]):
        text = runner.invoke(main, [*command, "--help"], terminal_width=200).output
        flags = re.findall(r"^\s+--([a-z0-9-]+)", text, re.M)
        prefix = "GEODISPATCH_" + "_".join(c.upper() for c in command)
        for flag in flags:
            if flag != "help":
                assert f"{prefix}_{flag.replace('-', '_').upper()}" in text, (command, flag)


def test_user_errors_are_one_clean_line_with_exit_code_2(tmp_path: Path):
    """A missing file, a directory that is not an index: one line on stderr, status 2, no traceback."""
    (tmp_path / "notindex").mkdir()
    window = ["--start", "2026-10-31T00:00:00Z", "--end", "2026-10-31T01:00:00Z"]
    cases = [
        (["resolve", "--index", str(tmp_path), "--area", f"@{tmp_path / 'missing.json'}", *window], "missing.json"),
        (["resolve", "--index", str(tmp_path / "notindex"), "--area", "{}", *window], "not an index directory"),
    ]
    for args, said in cases:
        p = subprocess.run([sys.executable, "-m", "dispatcher.cli", *args], capture_output=True, text=True,
                           timeout=300, cwd=Path(__file__).resolve().parents[1])
        assert p.returncode == 2, (args, p.stderr)
        assert "Traceback" not in p.stderr and said in p.stderr and p.stderr.startswith("error: ")

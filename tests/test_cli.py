from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dispatcher.cli import main, run


def test_demo_piped_reports_identical_results_with_progress_lines_and_80_columns(tmp_path: Path):
    """A piped demo: progress as lines on stderr (a stage's start and end, and at most one line per --progress-every
    seconds between), the tables on stdout within COLUMNS=80, no figure cut."""
    out = tmp_path / "demo.json"
    p = subprocess.run([sys.executable, "-m", "dispatcher.cli", "--progress-every", "0.5", "demo", "--cameras", "20000",
                        "--requests", "20", "--json-out", str(out)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "COLUMNS": "80"}, cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    assert report["cameras"] == 20000
    assert list(report["resolve"]) == ["0.025 sq mi", "0.1 sq mi", "0.25 sq mi", "0.5 sq mi"]  # the policy's sizes
    for row in report["resolve"].values():
        assert row["geodispatch"]["p50_us"] > 0 and row["latsorted"]["p50_us"] > 0
    assert "resolve latency" in p.stdout
    _assert_fits(p.stdout, 80)
    run = report["pipeline"]  # typical requests through the whole pipeline, then the same commands again
    assert run["requests"] == 50 and run["dispatched"] == 50 and run["refused"] == 0
    assert run["recipients"] > 0 and run["batches"] > 0
    assert run["repeat_appended"] == 0 and run["repeat_dispatched"] == 0

    lines: dict[str, list[tuple[int, int, float]]] = {}
    for line in p.stderr.splitlines():
        m = re.fullmatch(r"\s*(\w+)\s+([\d,]+)/([\d,]+)\s+\d+%\s+([\d.]+) s", line)
        assert m, line  # nothing else on stderr
        lines.setdefault(m[1], []).append((int(m[2].replace(",", "")), int(m[3].replace(",", "")), float(m[4])))
    assert {"cameras", "build", "resolve"} <= set(lines), lines
    for stage, seen in lines.items():
        assert seen[-1][0] == seen[-1][1], (stage, seen)  # its end
        assert sum(done == total for done, total, _ in seen) == 1, (stage, seen)
        between = [t for done, total, t in seen[:-1]]
        assert all(b - a >= 0.4 for a, b in zip(between, between[1:])), (stage, seen)  # 0.5 s, to 0.1 s shown
    resolve = lines["resolve"]  # a callback per request: a stage that lasts has lines between its start and end
    assert resolve[-1][2] - resolve[0][2] < 1.5 or len(resolve) >= 3, resolve


def _assert_fits(text: str, columns: int) -> None:
    """Every line within ``columns``, nothing cut to an ellipsis."""
    assert text.strip()
    for line in text.splitlines():
        assert len(line) <= columns, line
        assert "…" not in line, line


def test_generate_build_resolve_round_trip(tmp_path: Path):
    runner = CliRunner()
    data, index = tmp_path / "data", tmp_path / "index"
    r = runner.invoke(main, ["generate", "--cameras", "5000", "--out", str(data), "--now", "2026-11-01T00:00:00Z"])
    assert r.exit_code == 0, r.output
    assert "as of 2026-11-01T00:00:00Z" in r.output
    assert json.loads((data / "meta.json").read_text())["now"] == "2026-11-01T00:00:00Z"
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


def test_build_imports_only_what_a_build_needs(tmp_path: Path):
    """``geodispatch build`` in a fresh interpreter, then what it imported: not pandas (Arrow imports it to convert a
    column to numpy, and ``pyarrow.dataset`` imports it), not Redis, nor the HTTP stack, the workflow or the
    reports, which the package's namespace used to import whatever the command (a second of a 10M build's 3)."""
    CliRunner().invoke(main, ["generate", "--cameras", "1000", "--out", str(tmp_path / "d")])
    script = ("import sys\nfrom dispatcher.cli import run\ntry:\n    run(sys.argv[1:])\nexcept SystemExit as e:\n"
              "    assert not e.code, e.code\nprint(' '.join(sorted(sys.modules)))")
    p = subprocess.run([sys.executable, "-c", script, "build", "--data", str(tmp_path / "d"), "--out",
                        str(tmp_path / "i")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    imported = set(p.stdout.split())
    assert "dispatcher.index.camera_index" in imported and (tmp_path / "i" / "meta.json").exists()
    unwanted = {"pandas", "pyarrow.dataset", "redis", "fastapi", "starlette", "uvicorn", "dispatcher.workflow",
                "dispatcher.dispatch", "dispatcher.reports", "dispatcher.service.worker", "dispatcher.api"}
    assert not unwanted & imported, unwanted & imported


def test_every_public_name_resolves_to_the_object_its_module_defines():
    """The package's names are imported on first use, from a table kept beside the type checkers' imports: each
    name of ``__all__`` is what the import under ``TYPE_CHECKING`` names, and nothing is left out of either."""
    import ast
    import importlib

    import dispatcher

    tree = ast.parse(Path(dispatcher.__file__).read_text(encoding="utf-8"))
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    declared = {a.name: imp.module for imp in guarded.body if isinstance(imp, ast.ImportFrom) for a in imp.names}
    assert set(declared) == set(dispatcher.__all__)
    for name, module in declared.items():
        assert module is not None and getattr(dispatcher, name) is getattr(importlib.import_module(module), name)
    assert set(dispatcher.__all__) <= set(dir(dispatcher))
    with pytest.raises(AttributeError, match="no_such_name"):
        dispatcher.no_such_name  # noqa: B018


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
    """The operators' bench command at 100,000 cameras, every peer loaded with the
    same data and every answer asserted identical to ours, a few requests per area size."""
    js, md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    r = CliRunner().invoke(main, ["bench", "--cameras", "100000", "--queries", "4", "--window-queries", "3",
                                  "--sections", "index", "--json-out", str(js), "--markdown-out", str(md),
                                  "--plot-out", str(png)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    _assert_fits(r.stdout, 80)  # every peer's figures on a narrow terminal: a row per engine
    assert "redis-geo p50 / p99" in md.read_text()  # full width in the file
    report = json.loads(js.read_text())
    assert set(report) == {"generated_at", "index"}
    idx = report["index"]
    # CI installs every peer: none may be skipped there (a peer missing locally shows in the note)
    assert idx["skipped"] == {}, idx["skipped"]
    assert set(idx["build"]) == {"geodispatch", "latsorted", "strtree", "duckdb", "postgis", "redis-geo"}
    assert set(idx["resolve"]) == {"0.025 sq mi", "0.5 sq mi", "10 km²", "100 km²", "city, 600 km²"}
    assert set(idx["windows"]) == {"15 min, last 2 days", "12 h, last 2 days", "12 h, 150-175 days ago"}
    from bench.report import policy_sizes
    assert list(idx["from_geojson"]) == list(policy_sizes())  # from a GeoJSON dict: every size a request may have
    assert all(set(row) >= {"geodispatch", "duckdb", "postgis", "redis-geo"} for row in idx["resolve"].values())
    assert "| 0.5 sq mi |" in md.read_text() and "| 12 h, last 2 days |" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert idx["cameras"] == 100_000


def test_bench_h3_section(tmp_path: Path):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    r = CliRunner().invoke(main, ["bench", "--sections", "h3", "--h3-points", "50000", "--h3-res", "11",
                                  "--no-compile-times", "--json-out", str(js), "--markdown-out", str(md)],
                           env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    _assert_fits(r.stdout, 80)
    assert re.search(r"^H3: 50,000 points at res 11: done in [\d.]+ s$", r.stderr, re.M), r.stderr  # not a terminal
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
    r = runner.invoke(main, ["generate", "--cameras", "2000", "--out", str(tmp_path / "d")],
                      env={"GEODISPATCH_GENERATE_NOW": "2026-11-01T00:00:00Z"})  # its motion events: Oct 29-31
    assert r.exit_code == 0 and "as of 2026-11-01T00:00:00Z" in r.output, r.output
    r = runner.invoke(main, ["build"], env={"GEODISPATCH_BUILD_DATA": str(tmp_path / "d"),
                                            "GEODISPATCH_BUILD_OUT": str(tmp_path / "i")})
    assert r.exit_code == 0, r.output
    area = '{"type": "Polygon", "coordinates": [[[-130, 20], [-60, 20], [-60, 55], [-130, 55], [-130, 20]]]}'
    r = runner.invoke(main, ["resolve", "--area", area, "--start", "2026-10-31T00:00:00Z", "--end",
                             "2026-10-31T01:00:00Z"], env={"GEODISPATCH_RESOLVE_INDEX": str(tmp_path / "i"),
                                                           "GEODISPATCH_RESOLVE_NOW": "2026-11-01T00:00:00Z"})
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


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every command a user can run, as it is typed (``api-key create``)."""
    names = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            names += _commands(command, (*prefix, name))
        else:
            names.append(" ".join((*prefix, name)))
    return names


_WINDOW = ["--start", "2026-10-31T00:00:00Z", "--end", "2026-10-31T01:00:00Z"]
_NOWHERE = "redis://127.0.0.1:1"  # nothing listens on port 1


def _bad_inputs(w: dict[str, Path]) -> dict[str, list[tuple[list[str], str]]]:
    """Per command, bad inputs and what the one error line must say. ``w``: a data set, an index, an empty
    store, a plain file, a directory that is not an index, and a path in a directory that does not exist."""
    return {
        "api": [(["--index", str(w["plain_dir"]), "--store", str(w["tmp"] / "a.sqlite"), "--synthetic-agencies", "2"],
                 "not an index directory")],
        "api-key create": [(["--agency", "a", "--store", str(w["nodir"] / "k.sqlite")], "does not exist")],
        "api-key list": [(["--store", str(w["plain_dir"])], "is a directory"),
                         (["--store", str(w["tmp"] / "missing.sqlite")], "no such store")],
        "api-key revoke": [(["--key-id", "nope", "--store", str(w["store"])], "no API key with id 'nope'"),
                           (["--key-id", "nope", "--store", str(w["tmp"] / "missing.sqlite")], "no such store")],
        "bench": [(["--json-out", str(w["nodir"] / "r.json")], "does not exist"),
                  (["--sections", "nope"], "nope")],
        "build": [(["--data", str(w["plain_dir"]), "--out", str(w["tmp"] / "i2")], "no cameras.parquet"),
                  (["--data", str(w["data"]), "--out", str(w["index"])], "--force"),
                  (["--data", str(w["nodir"]), "--out", str(w["tmp"] / "i2")], "does not exist")],
        "addresses load": [(["--redis-url", _NOWHERE, "--owners", str(w["tmp"] / "missing.parquet")], "does not exist"),
                           (["--redis-url", _NOWHERE, "--owners", str(w["data"] / "events.parquet")],
                            "no owner_id column")],
        "changes": [(["--redis-url", _NOWHERE, "--file", str(w["file"])], "plain.txt:1: change: not JSON"),
                    (["--redis-url", _NOWHERE, "--file", str(w["data"] / "changes.jsonl")], "refused")],
        # (the suite runs without GEODISPATCH_LINK_SECRET: a consumer refuses to sign links without it)
        "consume": [(["--redis-url", _NOWHERE, "--outbox", str(w["file"])], "is a file"),
                    (["--redis-url", _NOWHERE, "--outbox", str(w["tmp"] / "outbox")], "GEODISPATCH_LINK_SECRET"),
                    (["--redis-url", _NOWHERE], "--outbox DIR or --smtp-host HOST")],
        "demo": [(["--outbox", str(w["nodir"] / "o.sqlite")], "does not exist"),
                 (["--cameras", "10", "--now", "2026-11-01 noon"], "not an ISO-8601")],
        "generate": [(["--out", str(w["file"]), "--cameras", "10"], "is a file"),
                     (["--out", str(w["tmp"] / "g"), "--cameras", "10", "--now", "2026-11-01T00:00:00"], "is naive"),
                     (["--out", str(w["tmp"] / "g"), "--cameras", "10", "--now", "soon"], "not an ISO-8601")],
        "loadtest": [(["--work-dir", str(w["file"])], "is a file"), (["--scenarios", "steady,nope"], "nope")],
        "metrics": [(["--redis-url", _NOWHERE + "/0?retries=0"], "unreachable"),
                    (["--redis-url", _NOWHERE + "/0?retrys=0"], "unknown setting 'retrys'")],
        "migrate-gate": [(["--redis-url", _NOWHERE, "--policy", str(w["file"])], "plain.txt: not JSON")],
        "map agencies": [(["--agencies", str(w["tmp"] / "missing.parquet")], "does not exist")],
        "map request": [(["nope", "--store", str(w["store"]), "--index", str(w["index"])],
                         "no request 'nope' in the store"),
                        (["nope", "--store", str(w["tmp"] / "missing.sqlite"), "--index", str(w["index"])],
                         "no such SQLite store")],
        "report transparency": [(["--store", str(w["tmp"] / "missing.sqlite"), "--synthetic-agencies", "2",
                                  "--releases", str(w["tmp"] / "r.sqlite")], "no such SQLite store")],
        "resolve": [(["--index", str(w["index"]), "--area", f"@{w['tmp'] / 'missing.json'}", *_WINDOW],
                     "cannot read"),
                    (["--index", str(w["plain_dir"]), "--area", "{}", *_WINDOW], "not an index directory"),
                    (["--index", str(w["data"]), "--area", "{}", *_WINDOW], "not an index directory"),
                    (["--index", str(w["index"]), "--area", "{broken", *_WINDOW], "malformed GeoJSON")],
        "serve": [(["--index", str(w["plain_dir"]), "--redis-url", _NOWHERE, "--synthetic-agencies", "2"],
                   "not an index directory")],
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from dispatcher.workflow.store import SqliteStore

    tmp = tmp_path_factory.mktemp("bad-input")
    w = {"tmp": tmp, "data": tmp / "data", "index": tmp / "index", "store": tmp / "store.sqlite",
         "file": tmp / "plain.txt", "plain_dir": tmp / "plain", "nodir": tmp / "nodir"}
    runner = CliRunner()
    assert runner.invoke(main, ["generate", "--cameras", "1000", "--out", str(w["data"]),
                                "--now", "2026-11-01T00:00:00Z"]).exit_code == 0
    assert runner.invoke(main, ["build", "--data", str(w["data"]), "--out", str(w["index"])]).exit_code == 0
    SqliteStore(w["store"]).close()
    w["file"].write_text("not a directory")
    (w["data"] / "changes.jsonl").write_text('{"op": "remove", "camera_ids": [1]}\n')
    w["plain_dir"].mkdir()
    return w


def _files(d: Path) -> list[Path]:
    """What ``d`` holds (without SQLite's -wal and -shm files of a store opened, which a close removes)."""
    return sorted(p for p in d.rglob("*") if not p.name.endswith(("-wal", "-shm")))


@pytest.mark.parametrize("command", _commands(main))
def test_every_command_refuses_bad_input_in_one_line(command: str, workspace: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]):
    """A missing file, a directory of the wrong kind, an index directory in use, a Redis not there, an unknown id:
    one line on stderr, ``error: ...`` without quotes around it, status 2, no traceback, nothing written. A
    command without a case here fails."""
    cases = _bad_inputs(workspace).get(command)
    assert cases, f"no bad-input case for `geodispatch {command}`: add one to _bad_inputs"
    for args, said in cases:
        before = _files(workspace["tmp"])
        with pytest.raises(SystemExit) as exit_:
            run([*command.split(), *args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2, (command, args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and said in err, (command, args, err)
        assert not err.startswith(('error: "', "error: '")), err  # a KeyError's message, not its repr
        assert _files(workspace["tmp"]) == before, (command, args)


def test_build_force_replaces_an_index_in_use(workspace: dict[str, Path], tmp_path: Path):
    """--force writes the new index beside the old one and moves it in: an index opened before keeps answering
    from the old files, one opened after reads the new one, and no file of the old one is left behind."""
    import pyarrow.parquet as pq

    from dispatcher.index.camera_index import CameraIndex

    data2, index = tmp_path / "data2", tmp_path / "index"
    shutil.copytree(workspace["index"], index)
    old = CameraIndex.open(index, warm_up=False)
    area = {"type": "Polygon", "coordinates": [[[-130, 20], [-60, 20], [-60, 55], [-130, 55], [-130, 20]]]}
    window = ("2026-10-31T00:00:00Z", "2026-10-31T12:00:00Z", "2026-11-01T00:00:00Z")
    before = old.resolve(area, *window[:2], now=window[2]).n_cameras
    cameras = pq.read_table(workspace["data"] / "cameras.parquet")
    data2.mkdir()
    pq.write_table(cameras.slice(0, 600), data2 / "cameras.parquet")
    r = CliRunner().invoke(main, ["build", "--data", str(data2), "--out", str(index), "--force"])
    assert r.exit_code == 0, r.output
    assert old.n_cameras == 1000 and CameraIndex.open(index, warm_up=False).n_cameras == 600
    assert old.resolve(area, *window[:2], now=window[2]).n_cameras == before > 0
    names = {p.name for p in index.iterdir()}
    assert names == {f"{a}.npy" for a in json.loads((index / "meta.json").read_text())["arrays"]} | {"meta.json"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the staging directory is gone


def test_records_stay_a_line_each_on_a_narrow_terminal(tmp_path: Path):
    """A listing is read by scripts: one record a line whatever COLUMNS says (tables are what fit the width)."""
    store = str(tmp_path / "keys.sqlite")
    runner = CliRunner()
    for agency in ("il-chicago", "ny-new-york-city"):
        assert runner.invoke(main, ["api-key", "create", "--store", store, "--agency", agency]).exit_code == 0
    listed = runner.invoke(main, ["api-key", "list", "--store", store], env={"COLUMNS": "40"})
    assert listed.exit_code == 0, listed.output
    rows = listed.stdout.splitlines()
    assert len(rows) == 2 and all(len(r) > 40 and r.endswith("active") for r in rows), rows

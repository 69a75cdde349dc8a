"""Operators' commands: the demo, the benchmark report and the national load test."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from dispatcher.cli._app import OutputFile, main, out, progress_bar, stacked, working


@main.command()
@click.option("--cameras", default=1_000_000, help="Cameras in the synthetic national data set.")
@click.option("--requests", default=300, help="Sample requests per area size.")
@click.option("--seed", default=0)
@click.option("--events/--no-events", default=False, help="Also require a motion event inside the window.")
@click.option("--now", default=None,
              help="The synthetic data's present (ISO-8601 with a zone); default: the start of the current UTC day.")
@click.option("--json-out", type=OutputFile(), default=None)
@click.option("--outbox", type=OutputFile(), default=None,
              help="SQLite file the demo dispatches to (default: a temporary one).")
def demo(cameras: int, requests: int, seed: int, events: bool, now: str | None, json_out: Path | None,
         outbox: Path | None) -> None:
    """Generate a national data set, build the index, resolve sample requests of the sizes the request policy
    allows (0.025 to 0.5 sq mi) and print latencies beside the latitude-sorted peer measured in the same run, then
    dispatch 50 requests' recipients to the embedded notification sink, twice (the second run must send
    nothing). No server needed."""
    import tempfile

    from bench.report import index_report, pipeline_report, policy_sizes
    from dispatcher.dispatch.sinks import LocalSink
    from dispatcher.index.camera_index import CameraIndex
    from dispatcher.synthetic.data import generate

    with progress_bar() as report:
        data = generate(cameras, seed=seed, now=now, progress=report, events_per_day=2.0 if events else 0.0)
        result = index_report(cameras, requests, seed=seed, peers=("latsorted",), events=events, progress=report,
                              sizes=policy_sizes(), window_queries=0, data=data)
    _print_report(result)
    with progress_bar() as report:
        index = CameraIndex.build(data.cameras, data.owners, data.events if events else None, progress=report)
    with tempfile.TemporaryDirectory(prefix="geodispatch-demo-") as tmp:
        sink = LocalSink(outbox or Path(tmp) / "outbox.sqlite")
        try:
            fan = pipeline_report(index, data, sink, seed=seed)
        finally:
            sink.close()
    result["pipeline"] = fan
    out.print(f"the request pipeline on the embedded store and sink: {fan['requests']} typical requests of "
              f"0.03-0.45 sq mi validated, recorded, resolved and dispatched in {fan['seconds'] * 1e3:.0f} ms "
              f"({fan['dispatched']} dispatched, {fan['refused']} refused; {fan['recipients']:,} recipients in "
              f"{fan['batches']:,} batches); the repeat appended {fan['repeat_appended']} batches")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))



@main.command()
@click.option("--cameras", default=10_000_000, help="Cameras in the national synthetic data set.")
@click.option("--agencies", "n_agencies", default=400, help="Partner agencies (the most populous US places).")
@click.option("--workers", default=2, help="Worker processes serving the requests stream.")
@click.option("--rate", default=2000.0, help="Requests per second, open loop.")
@click.option("--duration", default=60.0, help="Seconds of load in each scenario.")
@click.option("--scenarios", default="steady,burst,fanout,kill,restart,poison,clientkill,oom,restart-empty,"
                                     "retention-edge",
              help="Comma-separated, any of the default ones.")
@click.option("--seed", default=0)
@click.option("--batch", default=16, help="Entries a worker thread reads and handles together.")
@click.option("--threads", default=2, help="Consumer threads per worker process.")
@click.option("--standby/--no-standby", default=True,
              help="A worker's second thread reads only while reads come back full (a backlog), as serve's do.")
@click.option("--poison-share", default=0.05, help="poison: malformed entries per valid request.")
@click.option("--clientkill-seconds", default=8.0, help="clientkill: length of the CLIENT KILL storm, mid-load.")
@click.option("--clientkill-every-ms", default=10.0, help="clientkill: milliseconds between two CLIENT KILLs.")
@click.option("--oom-seconds", default=15.0, help="oom: how long Redis refuses every write, mid-load.")
@click.option("--edge-requests", default=32,
              help="retention-edge: typical requests whose window sits at the boundary (with one wide one).")
@click.option("--edge-gap-seconds", default=1.5,
              help="retention-edge: from the edge requests' due time to their 30-day cameras' footage expiring "
                   "(shorter than the 2 s a dead worker's entries wait before another takes them).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the index and the Redis data go (default: a temporary directory, removed after).")
@click.option("--json-out", type=OutputFile(), default=Path("loadtest-report.json"))
@click.option("--markdown-out", type=OutputFile(), default=Path("loadtest-report.md"))
@click.option("--plot-out", type=OutputFile(), default=Path("loadtest-report.png"))
def loadtest(cameras: int, n_agencies: int, workers: int, rate: float, duration: float, scenarios: str, seed: int,
             batch: int, threads: int, standby: bool, poison_share: float, clientkill_seconds: float,
             clientkill_every_ms: float, oom_seconds: float, edge_requests: int, edge_gap_seconds: float,
             work_dir: Path | None, json_out: Path, markdown_out: Path, plot_out: Path) -> None:
    """National-scale load test: worker processes behind a throwaway Redis on loopback, open-loop requests at a
    target rate, through faults (worker and Redis restarts, poison entries, dropped connections, Redis full or
    emptied, retries across a footage-retention boundary); latency, throughput, CPU and memory, queue depth;
    proves nothing lost, duplicated or misaddressed."""
    import tempfile

    from bench import loadtest as lt

    try:
        settings = lt.LoadSettings(cameras=cameras, agencies=n_agencies, workers=workers, rate=rate,
                                   duration=duration, scenarios=tuple(x for x in scenarios.split(",") if x),
                                   seed=seed, read_count=batch, threads=threads, standby=standby,
                                   poison_share=poison_share, clientkill_s=clientkill_seconds,
                                   clientkill_every_ms=clientkill_every_ms, oom_s=oom_seconds,
                                   edge_requests=edge_requests, edge_gap_s=edge_gap_seconds)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    t0 = time.monotonic()

    def say(msg: str) -> None:
        out.print(f"[{time.monotonic() - t0:7.1f} s] {msg}", markup=False, highlight=False)

    with tempfile.TemporaryDirectory(prefix="geodispatch-loadtest-") as tmp:
        result = lt.run(settings, work_dir or Path(tmp), say)
    result["generated_at"] = datetime.now().astimezone().isoformat()
    md = lt.markdown(result)
    lt.plot(result, plot_out)
    json_out.write_text(json.dumps(result, indent=2))
    markdown_out.write_text(md + f"\n![completions and backlog per scenario]({plot_out.name})\n")
    click.echo(md)  # as written: Markdown wrapped to the terminal is Markdown no more (a table row in two lines)
    out.print(f"wrote {json_out}, {markdown_out}, {plot_out}")
    if not all(sc["exact"] for sc in result["scenarios"]):
        raise SystemExit("a notification was lost, duplicated or misaddressed: see the report")


@main.command()
@click.option("--cameras", default=10_000_000, help="Cameras in the synthetic data set.")
@click.option("--queries", default=300, help="Requests per area size.")
@click.option("--seed", default=0)
@click.option("--peers", default="latsorted,strtree,duckdb,postgis,redis-geo",
              help="Comma-separated: latsorted, strtree, duckdb, postgis, redis-geo (a peer that cannot run here "
                   "is skipped with a note).")
@click.option("--events/--no-events", default=False, help="Also require a motion event inside the window.")
@click.option("--window-queries", default=100, help="Requests per time-window class (0 to skip that part).")
@click.option("--sections", default="index,h3", help="Comma-separated: index (resolve and build), h3 (cells).")
@click.option("--h3-points", default=10_000_000, help="Points for the H3 section.")
@click.option("--h3-res", default=12, help="Resolution for the H3 section.")
@click.option("--compile-times/--no-compile-times", default=True,
              help="Measure Numba compile and cache-load times in fresh processes.")
@click.option("--json-out", type=OutputFile(), default=Path("bench-report.json"))
@click.option("--markdown-out", type=OutputFile(), default=Path("bench-report.md"))
@click.option("--plot-out", type=OutputFile(), default=Path("bench-report.png"))
def bench(cameras: int, queries: int, seed: int, peers: str, events: bool, window_queries: int, sections: str,
          h3_points: int, h3_res: int, compile_times: bool, json_out: Path, markdown_out: Path,
          plot_out: Path) -> None:
    """Benchmark report: build cost, resolve latency and H3 throughput beside the peers, with identical
    results asserted."""
    from bench import h3_report, report

    wanted = [s for s in sections.split(",") if s]
    unknown = set(wanted) - {"index", "h3"}
    if unknown:
        raise click.BadParameter(f"unknown section(s) {sorted(unknown)}; choose from index, h3",
                                 param_hint="--sections")
    result: dict[str, Any] = {"generated_at": datetime.now().astimezone().isoformat()}
    md = []
    if "index" in wanted:
        names = tuple(p for p in peers.split(",") if p)
        with progress_bar() as progress:
            result["index"] = report.index_report(cameras, queries, seed=seed, peers=names, events=events,
                                                  progress=progress, window_queries=window_queries)
        _print_report(result["index"])
        md.append(report.markdown(result["index"]))
        report.plot(result["index"], plot_out)
        md.append(f"![resolve latency by area]({plot_out.name})\n")
    if "h3" in wanted:
        with working(f"H3: {h3_points:,} points at res {h3_res}"):
            result["h3"] = h3_report.h3_report(h3_points, h3_res, seed=seed, with_compile=compile_times)
        _print_h3(result["h3"])
        md.append(h3_report.markdown(result["h3"]))
    json_out.write_text(json.dumps(result, indent=2))
    markdown_out.write_text("\n".join(md))
    written = [json_out, markdown_out] + ([plot_out] if "index" in wanted else [])
    out.print("wrote " + ", ".join(str(w) for w in written))


def _print_h3(result: dict[str, Any]) -> None:
    table = Table(title=f"H3 point to cell, {result['points']:,} points at res {result['res']} "
                        f"(ratio = peer / geodispatch)")
    for col in ("engine", "seconds", "ns/point", "ratio (all threads)", "ratio (1 thread)"):
        table.add_column(col, justify="right")
    for name, r in result["engines"].items():
        table.add_row(name, f"{r['seconds']:.3f}", f"{r['ns_per_point']:.1f}", f"{r['ratio']:.2f}x",
                      f"{r['ratio_1_thread']:.2f}x")
    out.print(table)
    if "compile" in result:
        c = result["compile"]
        out.print(f"compile: {c['cold_compile_s']:.2f} s on an empty Numba cache, {c['cached_load_s']:.2f} s "
                  f"from the cache (import {c['import_s']:.2f} s)")


def _latency_table(title: str, rows: dict[str, Any], peers: list[str]) -> Table:
    """One row per request class, a column pair per peer; stacked (a row per engine) when that is too wide."""
    table = Table(title=title)
    table.add_column("request")
    table.add_column("found")
    table.add_column("geodispatch p50 / p99", justify="right")
    for p in peers:
        table.add_column(f"{p} p50 / p99", justify="right")
        table.add_column("ratio p50", justify="right")
    groups = []
    for label, row in rows.items():
        g = row["geodispatch"]
        cells = [label, f"{row['cameras_found_mean']:.1f}", f"{g['p50_us']:.1f} / {g['p99_us']:.1f}"]
        group = [[label, f"{row['cameras_found_mean']:.1f}", "geodispatch", f"{g['p50_us']:.1f}", f"{g['p99_us']:.1f}",
                  ""]]
        for p in peers:
            if p in row:
                r = row[p]
                cells += [f"{r['p50_us']:.1f} / {r['p99_us']:.1f}", f"{r['p50_ratio']:.2f}x"]
                group.append(["", "", p, f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}", f"{r['p50_ratio']:.2f}x"])
            else:
                cells += ["-", "-"]
                group.append(["", "", p, "-", "-", "-"])
        table.add_row(*cells)
        groups.append(group)
    return stacked(title, table, ["request", "found", "engine", "p50", "p99", "ratio p50"], groups, labels=3)


def _print_report(result: dict[str, Any]) -> None:
    from bench.report import memory

    peers = [p for p in result["build"] if p != "geodispatch"]
    out.print(_latency_table(f"resolve latency by area, {result['cameras']:,} cameras "
                             "(µs; ratio = peer / geodispatch)", result["resolve"], peers))
    if result.get("windows"):
        out.print(_latency_table("by time window, 0.5 sq mi areas", result["windows"], peers))
    if result.get("from_geojson"):
        given = result["from_geojson"]
        out.print(_latency_table("from a GeoJSON dict: parse, validate, resolve", given,
                                 [p for p in peers if p in next(iter(given.values()))]))
    if result.get("parse"):
        p = result["parse"]
        out.print(f"parse a {p['vertices'][0]}-{p['vertices'][1]} vertex polygon: {p['geodispatch_us']:.1f} µs, "
                  f"shapely {p['shapely_us']:.1f} µs ({p['ratio']:.2f}x)")
    build_table = Table(title="build")
    for col in ("engine", "seconds", "bytes/camera (arrays)", "memory bytes/camera"):
        build_table.add_column(col, justify="right")
    for name, b in result["build"].items():
        arrays = f"{b['bytes_per_camera']:.1f}" if "bytes_per_camera" in b else "-"
        build_table.add_row(name, f"{b['seconds']:.2f}", arrays, memory(b))
    out.print(build_table)
    for name, why in result.get("skipped", {}).items():
        out.print(f"[yellow]skipped {name}:[/yellow] {why}")


# ------------------------------------------------------------------------ maps and the transparency report

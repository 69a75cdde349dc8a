"""The ``geodispatch`` command. Every option can also be set from the environment as
``GEODISPATCH_<COMMAND>_<OPTION>`` (for example ``GEODISPATCH_DEMO_CAMERAS=200000``)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from dispatcher.errors import DispatchError

console = Console(stderr=True)
out = Console()


@contextmanager
def progress_bar() -> Iterator[Any]:
    """A ``progress(stage, done, total)`` callback drawing one bar per stage."""
    with Progress(TextColumn("{task.description:>10}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                  TimeElapsedColumn(), console=console, transient=False, disable=not console.is_terminal) as bar:
        tasks: dict[str, TaskID] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield report


@click.group(context_settings={"auto_envvar_prefix": "GEODISPATCH", "show_default": True})
@click.option("--log-level", default="WARNING", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def main(log_level: str) -> None:
    """Resolve police video requests to the exact set of camera owners, fast."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--cameras", default=1_000_000, help="Cameras in the synthetic national data set.")
@click.option("--requests", default=300, help="Sample requests per area size.")
@click.option("--seed", default=0)
@click.option("--events/--no-events", default=False, help="Also require a motion event inside the window.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--outbox", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite file the demo dispatches to (default: a temporary one).")
def demo(cameras: int, requests: int, seed: int, events: bool, json_out: Path | None, outbox: Path | None) -> None:
    """Generate a national data set, build the index, resolve sample requests and print latencies beside the
    latitude-sorted peer measured in the same run, then dispatch 50 requests' recipients to the embedded
    notification sink, twice (the second run must send nothing). No server needed."""
    import tempfile

    from bench.report import SIZES, fanout_report, index_report
    from dispatcher.index.camera_index import CameraIndex
    from dispatcher.dispatch.queue import LocalSink
    from dispatcher.synthetic.data import generate

    with progress_bar() as report:
        data = generate(cameras, seed=seed, progress=report, events_per_day=2.0 if events else 0.0)
        result = index_report(cameras, requests, seed=seed, peers=("latsorted",), events=events, progress=report,
                              sizes={k: SIZES[k] for k in ("0.025 sq mi", "0.5 sq mi", "10 km²")},
                              window_queries=0, data=data)
    _print_report(result)
    index = CameraIndex.build(data.cameras, data.owners, data.events if events else None)
    with tempfile.TemporaryDirectory(prefix="geodispatch-demo-") as tmp:
        sink = LocalSink(outbox or Path(tmp) / "outbox.sqlite")
        try:
            fan = fanout_report(index, data, sink, seed=seed)
        finally:
            sink.close()
    result["fanout"] = fan
    out.print(f"dispatch to the embedded sink: {fan['requests']} requests of {fan['area_km2']:g} km², "
              f"{fan['recipients']:,} recipients in {fan['batches']:,} batches, {fan['seconds'] * 1e3:.0f} ms "
              f"({fan['recipients_per_s']:,.0f} recipients/s, resolve included); the repeat appended "
              f"{fan['repeat_appended']} batches")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))


@main.command()
@click.option("--cameras", default=10_000_000, help="Cameras to generate.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0)
@click.option("--event-days", default=3.0, help="Days of motion events before now.")
@click.option("--events-per-day", default=2.0, help="Mean motion events per camera and day.")
def generate(cameras: int, out_dir: Path, seed: int, event_days: float, events_per_day: float) -> None:
    """Write a synthetic national data set (cameras, owners, motion events) as Parquet."""
    from dispatcher.synthetic.data import generate as make
    from dispatcher.synthetic.data import write_parquet

    t = time.perf_counter()
    with progress_bar() as report:
        data = make(cameras, seed=seed, event_days=event_days, events_per_day=events_per_day, progress=report)
    paths = write_parquet(data, out_dir)
    out.print(f"{data.n_cameras:,} cameras, {data.owners.num_rows:,} owners, {data.events.num_rows:,} events "
              f"in {time.perf_counter() - t:.1f} s -> {out_dir}")
    for name, p in paths.items():
        out.print(f"  {name}: {p} ({p.stat().st_size / 1e6:.1f} MB)")


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--events/--no-events", default=True, help="Load events.parquet when present.")
def build(data_dir: Path, out_dir: Path, events: bool) -> None:
    """Build an index from a data directory and save it for `resolve` and worker processes."""
    from dispatcher.index.camera_index import CameraIndex

    t = time.perf_counter()
    index = CameraIndex.from_parquet(data_dir, with_events=events)
    built = time.perf_counter() - t
    index.save(out_dir)
    stats = index.build_stats
    out.print(f"{index.n_cameras:,} cameras indexed in {built:.2f} s "
              f"({', '.join(f'{k} {v:.2f}' for k, v in (stats.stages if stats else {}).items())}); "
              f"{index.bytes_per_camera():.1f} bytes a camera; saved to {out_dir}")


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--area", required=True, help="GeoJSON text, or @FILE to read it from a file.")
@click.option("--start", required=True, help="ISO-8601 with a zone, e.g. 2026-10-30T21:00:00Z")
@click.option("--end", required=True)
@click.option("--now", default=None, help="Evaluate retention at this time instead of the current time.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the recipients (owner_id, camera_ids) to this Parquet file.")
def resolve(index_dir: Path, area: str, start: str, end: str, now: str | None, out_file: Path | None) -> None:
    """Resolve one area and window against a saved index; prints counts and timing as JSON."""
    import pyarrow.parquet as pq

    from dispatcher.index.camera_index import CameraIndex

    text = Path(area[1:]).read_text() if area.startswith("@") else area
    index = CameraIndex.open(index_dir)
    t = time.perf_counter()
    rs = index.resolve(text, start, end, now=now)
    elapsed = time.perf_counter() - t
    if out_file:
        pq.write_table(rs.to_arrow(), out_file)
    out.print_json(orjson.dumps({"owners": rs.n_owners, "cameras": rs.n_cameras,
                                 "resolve_ms": round(elapsed * 1e3, 3)}).decode())


@main.command()
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--redis-url", required=True, help="Redis holding the requests stream, the state and the queue.")
@click.option("--workers", default=2, help="Worker processes (they share the memory-mapped index).")
@click.option("--agencies", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Partner agencies (Parquet or GeoJSON); default: the 400 generated from US places.")
@click.option("--auto-approve/--review", default=False, help="Dispatch valid requests at once, or wait for review.")
@click.option("--claim-idle-ms", default=30_000, help="Reclaim a dead worker's entries after this idle time.")
def serve(index_dir: Path, redis_url: str, workers: int, agencies: str | None, auto_approve: bool,
          claim_idle_ms: int) -> None:
    """Serve requests from the Redis requests stream with a group of worker processes: validate, resolve,
    dispatch, acknowledge. SIGTERM or Ctrl-C stops them after the request in hand."""
    import multiprocessing as mp
    import signal

    from dispatcher.dispatch.queue import QueueSettings
    from dispatcher.service.worker import ServiceSettings, serve_process

    QueueSettings.from_url(redis_url)  # a misspelt setting in the URL fails here, not in every worker
    ctx = mp.get_context("spawn")
    settings = ServiceSettings(claim_idle_ms=claim_idle_ms)
    readies = [ctx.Event() for _ in range(workers)]
    procs = [ctx.Process(target=serve_process, name=f"geodispatch-worker-{k}",
                         args=(f"{os.uname().nodename}-{os.getpid()}-{k}", str(index_dir), redis_url, agencies,
                               {"auto_approve": auto_approve}, settings, readies[k])) for k in range(workers)]
    stopping: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                os.kill(p.pid, signal.SIGTERM)

    # The handler goes in before any worker starts: a SIGTERM during start-up stops them all too.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.start()
    if stopping:  # arrived while a worker was starting: that one had no pid to signal yet
        forward(stopping[0], None)
    while not stopping and not all(e.is_set() for e in readies):
        if any(p.exitcode is not None for p in procs):
            forward(signal.SIGTERM, None)
            break
        time.sleep(0.05)
    if not stopping:
        out.print(f"serving with {workers} workers; SIGTERM or Ctrl-C to stop")
    for p in procs:
        p.join()
    # a worker stopped by SIGTERM before it could install its own handler exits with -SIGTERM: not a failure
    failed = [p.exitcode for p in procs if p.exitcode and not (stopping and p.exitcode == -signal.SIGTERM)]
    if failed:
        raise SystemExit(f"worker(s) exited with {failed}")
    out.print("all workers stopped")


@main.command()
@click.option("--cameras", default=10_000_000, help="Cameras in the national synthetic data set.")
@click.option("--agencies", "n_agencies", default=400, help="Partner agencies (the most populous US places).")
@click.option("--workers", default=2, help="Worker processes serving the requests stream.")
@click.option("--rate", default=2000.0, help="Requests per second, open loop.")
@click.option("--duration", default=60.0, help="Seconds of load in each scenario.")
@click.option("--scenarios", default="steady,burst,fanout,kill,restart",
              help="Comma-separated: steady, burst, fanout, kill, restart.")
@click.option("--seed", default=0)
@click.option("--batch", default=16, help="Entries a worker thread reads and handles together.")
@click.option("--threads", default=4, help="Consumer threads per worker process.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the index and the Redis data go (default: a temporary directory, removed after).")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=Path("loadtest-report.json"))
@click.option("--markdown-out", type=click.Path(dir_okay=False, path_type=Path), default=Path("loadtest-report.md"))
@click.option("--plot-out", type=click.Path(dir_okay=False, path_type=Path), default=Path("loadtest-report.png"))
def loadtest(cameras: int, n_agencies: int, workers: int, rate: float, duration: float, scenarios: str, seed: int,
             batch: int, threads: int, work_dir: Path | None, json_out: Path, markdown_out: Path,
             plot_out: Path) -> None:
    """National-scale load test: worker processes behind a throwaway Redis on loopback, open-loop requests at a
    target rate; latency, throughput, CPU and memory, queue depth; proves nothing lost or duplicated."""
    import tempfile

    from bench import loadtest as lt

    try:
        settings = lt.LoadSettings(cameras=cameras, agencies=n_agencies, workers=workers, rate=rate,
                                   duration=duration, scenarios=tuple(x for x in scenarios.split(",") if x),
                                   seed=seed, read_count=batch, threads=threads)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    t0 = time.monotonic()

    def say(msg: str) -> None:
        out.print(f"[{time.monotonic() - t0:7.1f} s] {msg}")

    with tempfile.TemporaryDirectory(prefix="geodispatch-loadtest-") as tmp:
        result = lt.run(settings, work_dir or Path(tmp), say)
    result["generated_at"] = datetime.now().astimezone().isoformat()
    md = lt.markdown(result)
    lt.plot(result, plot_out)
    json_out.write_text(json.dumps(result, indent=2))
    markdown_out.write_text(md + f"\n![completions and backlog per scenario]({plot_out.name})\n")
    out.print(md)
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
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench-report.json"))
@click.option("--markdown-out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench-report.md"))
@click.option("--plot-out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench-report.png"))
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
        with out.status(f"H3: {h3_points:,} points at res {h3_res}"):
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
    table = Table(title=title)
    table.add_column("request")
    table.add_column("found")
    table.add_column("geodispatch p50 / p99", justify="right")
    for p in peers:
        table.add_column(f"{p} p50 / p99", justify="right")
        table.add_column("ratio p50", justify="right")
    for label, row in rows.items():
        g = row["geodispatch"]
        cells = [label, f"{row['cameras_found_mean']:.1f}", f"{g['p50_us']:.1f} / {g['p99_us']:.1f}"]
        for p in peers:
            if p in row:
                cells += [f"{row[p]['p50_us']:.1f} / {row[p]['p99_us']:.1f}", f"{row[p]['p50_ratio']:.2f}x"]
            else:
                cells += ["-", "-"]
        table.add_row(*cells)
    return table


def _print_report(result: dict[str, Any]) -> None:
    from bench.report import memory

    peers = [p for p in result["build"] if p != "geodispatch"]
    out.print(_latency_table(f"resolve latency by area, {result['cameras']:,} cameras "
                             "(µs; ratio = peer / geodispatch)", result["resolve"], peers))
    if result.get("windows"):
        out.print(_latency_table("by time window, 0.5 sq mi areas", result["windows"], peers))
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


def _open_store(spec: str) -> Any:
    """The workflow store named by ``spec``: a ``redis://`` (``rediss://``, ``unix://``) URL or a SQLite file."""
    from dispatcher.workflow.store import RedisStore, SqliteStore

    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore.from_url(spec)
    if not Path(spec).is_file():
        raise click.BadParameter(f"{spec}: no such SQLite store (or give a redis:// URL)", param_hint="--store")
    return SqliteStore(spec)


_agencies_option = click.option(
    "--agencies", type=click.Path(exists=True, dir_okay=False), default=None,
    help="Partner agencies (Parquet or GeoJSON); default: the 400 generated from US places.")
_store_option = click.option("--store", "store_spec", required=True,
                             help="The workflow store: a SQLite file, or a redis:// URL (as `serve` uses).")
_k_option = click.option("--k", "k", default=10, help="Suppression threshold: no count under k is shown.")


@main.group("map")
def map_group() -> None:
    """Maps: every partner agency (public) and one request (for operators)."""


@map_group.command("agencies")
@_agencies_option
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=Path("agencies-map.html"),
              help="The self-contained HTML map.")
@click.option("--png", "png_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the map as a PNG.")
def map_agencies(agencies: str | None, out_file: Path, png_file: Path | None) -> None:
    """Map every partner agency, coloured by join date, with a replay of the program's growth."""
    from dispatcher.workflow.agencies import AgencyRegistry
    from dispatcher.reports.maps import agencies_html, agencies_png

    registry = AgencyRegistry.load(agencies)
    out_file.write_text(agencies_html(registry), encoding="utf-8")
    written = [out_file] + ([agencies_png(registry, png_file)] if png_file else [])
    out.print(f"{len(registry)} agencies; wrote " + ", ".join(str(w) for w in written))


@map_group.command("request")
@click.argument("request_id")
@_store_option
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@_agencies_option
@_k_option
@click.option("--density-res", default=9, help="H3 resolution of the camera-density hexagons.")
@click.option("--tiles", default=None,
              help="XYZ tile URL template with {z}, {x}, {y}; off by default (the page then fetches nothing).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The HTML file (default: request-<ID>.html).")
def map_request(request_id: str, store_spec: str, index_dir: Path, agencies: str | None, k: int, density_res: int,
                tiles: str | None, out_file: Path | None) -> None:
    """Map one request for operators: its area, the H3 cells the index used, camera density (counts under k
    left out)."""
    from dispatcher.workflow.agencies import AgencyRegistry
    from dispatcher.index.camera_index import CameraIndex
    from dispatcher.reports.request_map import build_request_map, request_map_html

    store = _open_store(store_spec)
    m = build_request_map(request_id, store, CameraIndex.open(index_dir, warm_up=False), AgencyRegistry.load(agencies),
                          k=k, density_res=density_res)
    target = out_file or Path(f"request-{request_id}.html")
    target.write_text(request_map_html(m, tiles=tiles), encoding="utf-8")
    out.print(f"request {request_id}: {m.cells.shape[0]} index cells, {m.density_cells.shape[0]} density hexagons "
              f"of {k}+ cameras; wrote {target}")


@main.group("report")
def report_group() -> None:
    """Reports built from what the workflow store records."""


@report_group.command("transparency")
@_store_option
@_agencies_option
@_k_option
@click.option("--since", default=None, help="First month, YYYY-MM (default: the first with a request).")
@click.option("--until", default=None, help="Last month, YYYY-MM.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("transparency.html"))
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), default=Path("transparency.csv"))
def report_transparency(store_spec: str, agencies: str | None, k: int, since: str | None, until: str | None,
                        html_file: Path, csv_file: Path) -> None:
    """Per agency and month: requests submitted, approved, rejected (by rule), dispatched, median area and
    window, notifications sent, share rate; every count under k withheld, totals included."""
    from dispatcher.workflow.agencies import AgencyRegistry
    from dispatcher.reports.transparency import build_report

    report = build_report(_open_store(store_spec), AgencyRegistry.load(agencies), k=k, since=since, until=until)
    html_file.write_text(report.to_html(), encoding="utf-8")
    csv_file.write_text(report.to_csv(), encoding="utf-8")
    out.print(f"{len(report.rows)} rows over {len(report.months)} months (k = {k}); wrote {html_file}, {csv_file}")


def run() -> None:
    """Entry point: typed errors become a one-line message and exit status 2."""
    try:
        main(standalone_mode=True)
    except DispatchError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    run()

"""Data commands: generate a synthetic data set, build an index, resolve one request."""

from __future__ import annotations

import time
from pathlib import Path

import click
import orjson

from dispatcher.cli._app import OutputFile, main, out, progress_bar


@main.command()
@click.option("--cameras", default=10_000_000, help="Cameras to generate.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0)
@click.option("--event-days", default=3.0, help="Days of motion events before now.")
@click.option("--events-per-day", default=2.0, help="Mean motion events per camera and day.")
@click.option("--now", default=None,
              help="The data's present (ISO-8601 with a zone, e.g. 2026-11-01T00:00:00Z): no installation, removal "
                   "or event is later. Default: the start of the current UTC day, so that `serve` and `api`, "
                   "judging by the wall clock, find the data as it was made.")
def generate(cameras: int, out_dir: Path, seed: int, event_days: float, events_per_day: float,
             now: str | None) -> None:
    """Write a synthetic national data set (cameras, owners, motion events) as Parquet."""
    from dispatcher.synthetic.data import generate as make
    from dispatcher.synthetic.data import write_parquet

    t = time.perf_counter()
    with progress_bar() as report:
        data = make(cameras, seed=seed, now=now, event_days=event_days, events_per_day=events_per_day,
                    progress=report)
    paths = write_parquet(data, out_dir)
    out.print(f"{data.n_cameras:,} cameras, {data.owners.num_rows:,} owners, {data.events.num_rows:,} events "
              f"as of {data.now.isoformat().replace('+00:00', 'Z')} in {time.perf_counter() - t:.1f} s -> {out_dir}")
    for name, p in paths.items():
        out.print(f"  {name}: {p} ({p.stat().st_size / 1e6:.1f} MB)")


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--events/--no-events", default=True, help="Load events.parquet when present.")
@click.option("--force", is_flag=True, default=False,
              help="Replace the index --out holds (processes serving it keep the old one until they reopen).")
def build(data_dir: Path, out_dir: Path, events: bool, force: bool) -> None:
    """Build an index from a data directory and save it for `resolve` and worker processes."""
    from dispatcher.index.camera_index import CameraIndex

    if (out_dir / "meta.json").exists() and not force:  # refused before the build, not after it
        raise click.UsageError(f"{out_dir} already holds an index: choose another directory, or give --force to "
                               "replace it")
    t = time.perf_counter()
    with progress_bar() as report:
        index = CameraIndex.from_parquet(data_dir, with_events=events, progress=report)
    built = time.perf_counter() - t
    index.save(out_dir, replace=force)
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
@click.option("--out", "out_file", type=OutputFile(), default=None,
              help="Write the recipients (owner_id, camera_ids) to this Parquet file.")
def resolve(index_dir: Path, area: str, start: str, end: str, now: str | None, out_file: Path | None) -> None:
    """Resolve one area and window against a saved index; prints counts and timing as JSON."""
    import pyarrow.parquet as pq

    from dispatcher.index.camera_index import CameraIndex

    text = _read_area(area)
    index = CameraIndex.open(index_dir)
    t = time.perf_counter()
    rs = index.resolve(text, start, end, now=now)
    elapsed = time.perf_counter() - t
    if out_file:
        pq.write_table(rs.to_arrow(), out_file)
    out.print_json(orjson.dumps({"owners": rs.n_owners, "cameras": rs.n_cameras,
                                 "resolve_ms": round(elapsed * 1e3, 3)}).decode())



def _read_area(area: str) -> str:
    """``--area``: GeoJSON text, or ``@FILE``."""
    if not area.startswith("@"):
        return area
    try:
        return Path(area[1:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise click.BadParameter(f"cannot read {area[1:]}: {why}", param_hint="'--area'") from None

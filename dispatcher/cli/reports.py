"""Maps and the transparency report."""

from __future__ import annotations

from pathlib import Path

import click

from dispatcher.cli._app import OutputFile, agencies_options, load_agencies, main, out, read_policy, read_settings

_store_option = click.option("--store", "store_spec", required=True,
                             help="The workflow store: a SQLite file, or a redis:// URL (as `serve` uses).")
_k_option = click.option("--k", "k", default=10, help="Suppression threshold: no count under k is shown.")


@main.group("map")
def map_group() -> None:
    """Maps: every partner agency (public) and one request (for operators)."""


@map_group.command("agencies")
@agencies_options
@click.option("--out", "out_file", type=OutputFile(), default=Path("agencies-map.html"),
              help="The self-contained HTML map.")
@click.option("--png", "png_file", type=OutputFile(), default=None,
              help="Also write the map as a PNG.")
def map_agencies(agencies: str | None, synthetic_agencies: int | None, out_file: Path, png_file: Path | None) -> None:
    """Map every partner agency, coloured by join date, with a replay of the program's growth."""
    from dispatcher.reports.maps import agencies_html, agencies_png

    registry = load_agencies(agencies, synthetic_agencies)
    out_file.write_text(agencies_html(registry), encoding="utf-8")
    written = [out_file] + ([agencies_png(registry, png_file)] if png_file else [])
    out.print(f"{len(registry)} agencies; wrote " + ", ".join(str(w) for w in written))


@map_group.command("request")
@click.argument("request_id")
@_store_option
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@agencies_options
@_k_option
@click.option("--density-res", default=9, help="H3 resolution of the camera-density hexagons.")
@click.option("--tiles", default=None,
              help="XYZ tile URL template with {z}, {x}, {y}; off by default (the page then fetches nothing).")
@click.option("--out", "out_file", type=OutputFile(), default=None,
              help="The HTML file (default: request-<ID>.html).")
def map_request(request_id: str, store_spec: str, index_dir: Path, agencies: str | None, synthetic_agencies: int | None,
                k: int, density_res: int,
                tiles: str | None, out_file: Path | None) -> None:
    """Map one request for operators: its area, the H3 cells the index used, camera density (counts under k
    left out)."""
    from dispatcher.index.camera_index import CameraIndex
    from dispatcher.reports.request_map import build_request_map, request_map_html
    from dispatcher.workflow.store import open_store

    store = open_store(store_spec)
    registry = load_agencies(agencies, synthetic_agencies, required=False)
    m = build_request_map(request_id, store, CameraIndex.open(index_dir, warm_up=False), registry, k=k,
                          density_res=density_res)
    target = out_file or Path(f"request-{request_id}.html")
    target.write_text(request_map_html(m, tiles=tiles), encoding="utf-8")
    out.print(f"request {request_id}: {m.cells.shape[0]} index cells, {m.density_cells.shape[0]} density hexagons "
              f"of {k}+ cameras; wrote {target}")


@main.group("report")
def report_group() -> None:
    """Reports built from what the workflow store records."""


@report_group.command("transparency")
@_store_option
@agencies_options
@click.option("--releases", "releases_file", required=True, type=OutputFile(),
              help="The release file: each month's published figures, written once and read back by every later "
                   "build (keep it with the store's backups).")
@click.option("--epsilon", type=float, default=None, help="Privacy budget per month for months released now "
                                                          "[default: 1.0, or the settings file's].")
@click.option("--k", "k", type=int, default=None, help="Floor: released counts under k are shown as '< k' "
                                                       "[default: 10, or the settings file's].")
@click.option("--settings", "settings_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Privacy settings as JSON (epsilon, k, settle, budget_* shares).")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The policy the owners' gate runs with (its owner cap bounds what one resident adds).")
@click.option("--since", default=None, help="First month, YYYY-MM (default: the month the first partner joined).")
@click.option("--until", default=None, help="Last month, YYYY-MM (default: the last closed month).")
@click.option("--preview", is_flag=True, default=False,
              help="Internal preview: also months still open, with fresh noise, stored nowhere, marked as not for "
                   "publication.")
@click.option("--html", "html_file", type=OutputFile(),
              default=Path("transparency.html"))
@click.option("--csv", "csv_file", type=OutputFile(), default=Path("transparency.csv"))
def report_transparency(store_spec: str, agencies: str | None, synthetic_agencies: int | None, releases_file: Path,
                        epsilon: float | None, k: int | None, settings_file: Path | None, policy_file: Path | None,
                        since: str | None, until: str | None, preview: bool, html_file: Path, csv_file: Path) -> None:
    """Per agency and month: requests submitted, approved, rejected (by rule), dispatched, median area and
    window, notifications sent, share rate; released with differential privacy, once per month after it closes."""

    from dispatcher.errors import InvalidReportSettings
    from dispatcher.reports.privacy import PrivacySettings
    from dispatcher.reports.releases import ReleaseStore
    from dispatcher.reports.transparency import PREVIEW_MARK, build_report
    from dispatcher.workflow.policy import Policy
    from dispatcher.workflow.store import open_store

    settings = read_settings(settings_file, InvalidReportSettings) if settings_file is not None else {}
    settings |= {name: v for name, v in (("epsilon", epsilon), ("k", k)) if v is not None}
    privacy_settings = PrivacySettings.from_dict(settings, str(settings_file or "the options"))
    registry = load_agencies(agencies, synthetic_agencies)
    store = open_store(store_spec)  # before the release file is made: a mistyped store creates nothing
    releases = ReleaseStore(releases_file)
    before = set(releases.months())
    report = build_report(store, registry, releases=releases, privacy_settings=privacy_settings,
                          policy=Policy.from_dict(read_policy(policy_file)), since=since, until=until,
                          preview=preview)
    html_file.write_text(report.to_html(), encoding="utf-8")
    csv_file.write_text(report.to_csv(), encoding="utf-8")
    fresh = len(set(releases.months()) - before)
    out.print(f"{len(report.rows)} rows over {len(report.months)} months ({fresh} released now); wrote {html_file}, "
              f"{csv_file}")
    if report.preview:
        out.print(f"[bold red]{PREVIEW_MARK}[/bold red]")

"""The ``geodispatch`` group, its terminal (progress bars, output) and the environment variable of every option."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

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


@click.group(context_settings={"show_default": True})
@click.option("--log-level", default="WARNING", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def main(log_level: str) -> None:
    """Resolve police video requests to the exact set of camera owners, fast."""
    from dispatcher.service.supervise import LOG_FORMAT

    logging.basicConfig(level=log_level, format=LOG_FORMAT)



def name_environment(command: click.Command, prefix: str) -> None:
    """Give every option the environment variable named after its flag, shown in ``--help``."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar is None:
            flag = max(param.opts, key=len).lstrip("-").replace("-", "_").upper()
            param.envvar = f"{prefix}_{flag}"
            param.show_envvar = True
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            name_environment(sub, f"{prefix}_{name.replace('-', '_').upper()}")


def agencies_options(f: Any) -> Any:
    """``--agencies FILE`` or ``--synthetic-agencies N``: partner agencies are never made up unless asked."""
    f = click.option("--synthetic-agencies", type=click.IntRange(1), default=None,
                     help="Instead of a file, N agencies generated from US places (demos and tests only).")(f)
    return click.option("--agencies", type=click.Path(exists=True, dir_okay=False), default=None,
                        help="Partner agencies (Parquet or GeoJSON).")(f)


def load_agencies(agencies: str | None, synthetic: int | None, *, required: bool = True) -> Any:
    """The registry the agencies options name (None when neither is given and ``required`` is off)."""
    from dispatcher.synthetic.agencies import generated_registry
    from dispatcher.workflow.agencies import AgencyRegistry

    if agencies and synthetic:
        raise click.UsageError("give --agencies or --synthetic-agencies, not both")
    if synthetic:
        return generated_registry(synthetic)
    if agencies:
        return AgencyRegistry.load(agencies)
    if required:
        raise click.UsageError("give the partner agencies: --agencies FILE (or --synthetic-agencies N for a demo)")
    return None


def read_settings(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A JSON object of settings from a file; ``error`` (a typed error) names the file when it is not one."""
    import orjson

    try:
        got = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise error(f"{path}: not JSON ({exc})") from None
    if not isinstance(got, dict):
        raise error(f"{path}: settings are a JSON object of settings by name, got {type(got).__name__}")
    return got


def read_policy(path: Path | None) -> dict[str, Any]:
    """The policy settings in a JSON file (checked by ``Policy.from_dict`` before any worker starts)."""
    from dispatcher.errors import InvalidPolicy
    from dispatcher.workflow.policy import Policy

    if path is None:
        return {}
    got = read_settings(path, InvalidPolicy)
    Policy.from_dict(got, source=str(path))
    return got

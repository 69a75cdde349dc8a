"""The ``geodispatch`` group, its terminal (progress bars, output) and the environment variable of every option."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)
out = Console()


def fits(table: Any) -> bool:
    """Whether ``table`` renders on ``out`` at its natural width, no cell wrapped or cut."""
    return Measurement.get(out, out.options.update(max_width=1 << 20), table).maximum <= out.width


def stacked(title: str, wide: Table, header: Sequence[str], groups: Sequence[Sequence[Sequence[str]]],
            labels: int = 1) -> Table:
    """``wide`` when it fits the terminal, else the same figures as ``groups`` of rows under ``header``, a rule
    between groups, each row a few cells (the first ``labels`` of them text, the others figures, never wrapped):
    a narrow terminal reads every figure, never a cut one."""
    if fits(wide):
        return wide
    table = Table(title=title)
    for k, name in enumerate(header):
        table.add_column(name, justify="left" if k < labels else "right", no_wrap=k >= labels)
    for group in groups:
        for k, row in enumerate(group):
            table.add_row(*row, end_section=k == len(group) - 1)
    return table


#: Seconds between two progress lines when stderr is not a terminal (a log file, a pipe, CI), unless
#: ``--progress-every`` says otherwise.
PROGRESS_EVERY = 5.0


@contextmanager
def progress_bar() -> Iterator[Any]:
    """A ``progress(stage, done, total)`` callback: one bar per stage on a terminal; elsewhere a line on stderr
    when a stage starts, every ``--progress-every`` seconds while it runs, and when it ends."""
    if not console.is_terminal:
        ctx = click.get_current_context(silent=True)
        yield _ProgressLines(ctx.find_root().params.get("progress_every", PROGRESS_EVERY) if ctx else PROGRESS_EVERY)
        return
    with Progress(TextColumn("{task.description:>10}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield report


@contextmanager
def working(what: str) -> Iterator[None]:
    """A spinner for a step with no progress to report; off a terminal, a line on stderr as it starts and ends."""
    if console.is_terminal:
        with console.status(what):
            yield
        return
    t0 = time.monotonic()
    console.print(f"{what} ...", markup=False, highlight=False, soft_wrap=True)
    yield
    console.print(f"{what}: done in {time.monotonic() - t0:.1f} s", markup=False, highlight=False, soft_wrap=True)


class _ProgressLines:
    """Progress as plain lines, for a stderr that no one watches redraw: ``  cameras   40,000/1,000,000   4%
    3.1 s``."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.t0 = time.monotonic()
        self.last: dict[str, float] = {}
        self.ended: set[str] = set()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        first = stage not in self.last
        end = done >= total and stage not in self.ended
        if not (first or end or now - self.last[stage] >= self.every):
            return
        self.last[stage] = now
        if end:
            self.ended.add(stage)
        share = f"{done / total:4.0%}" if total > 0 else "   -"
        console.print(f"{stage:>10} {done:>12,}/{total:<12,} {share} {now - self.t0:7.1f} s", markup=False,
                      highlight=False, soft_wrap=True)


class OutputFile(click.Path):
    """A file a command writes: not a directory, in a directory that exists, checked before any work is done
    (a report is not computed for minutes to be lost on a typo)."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = Path(os.fsdecode(super().convert(value, param, ctx)))
        if not path.absolute().parent.is_dir():
            self.fail(f"{path}: the directory {path.parent} does not exist", param, ctx)
        return path


def error_line(message: object) -> None:
    """``error: <message>`` as one line on stderr: never wrapped, never read as markup (it is data)."""
    console.print(Text.assemble(("error: ", "red"), " ".join(str(message).split())), highlight=False,
                  soft_wrap=True)


@click.group(context_settings={"show_default": True})
@click.option("--log-level", default="WARNING", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--progress-every", default=PROGRESS_EVERY, type=click.FloatRange(min=0),
              help="Seconds between two progress lines when stderr is not a terminal (a terminal gets bars).")
def main(log_level: str, progress_every: float) -> None:
    """Resolve police video requests to the exact set of camera owners, fast."""
    from dispatcher.service.supervise import LOG_FORMAT

    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:  # read when the command runs, not when the module was imported
        console.width = out.width = int(columns)



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

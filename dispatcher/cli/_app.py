"""The ``geodispatch`` group, its terminal (progress bars, output) and the environment variable of every option."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
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

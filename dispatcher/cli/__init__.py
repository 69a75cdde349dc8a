"""The ``geodispatch`` command: it parses options and calls the library. Every option can also be set from the
environment as ``GEODISPATCH_<COMMAND>_<OPTION>``, named after the option's flag (``--index`` of ``resolve`` is
``GEODISPATCH_RESOLVE_INDEX``); ``--help`` shows each variable.

The commands live by what they serve: ``data`` (generate, build, resolve), ``service`` (serve, consume), ``api``
(the HTTP front door and its keys), ``operate`` (demo, bench, loadtest), ``reports`` (maps and the transparency
report).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence

import click

from dispatcher.cli import api, data, operate, reports, service
from dispatcher.cli._app import error_line, main, name_environment
from dispatcher.errors import DispatchError

__all__ = ["main", "run"]

_COMMANDS = (api, data, operate, reports, service)  # imported for the commands they register
name_environment(main, "GEODISPATCH")


def run(args: Sequence[str] | None = None) -> None:
    """Entry point, on ``args`` (default: ``sys.argv[1:]``): usage errors, typed errors, files that cannot be read
    or written and a Redis that cannot be reached become one line on stderr (``error: ...``) and exit status 2,
    with no traceback."""
    try:
        rv = main.main(args, prog_name="geodispatch", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare ``geodispatch``: the help, as click shows it
        click.echo(exc.format_message(), err=True)
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        error_line(exc.format_message() + hint)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        error_line(exc.format_message())
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        error_line("interrupted")
        sys.exit(130)
    except Exception as exc:
        if not isinstance(exc, _handled()):
            raise
        # a KeyError's str() quotes its message: print the message itself
        error_line(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)


def _handled() -> tuple[type[Exception], ...]:
    """The errors that end a command with one line: ours, files, SQLite, and Redis's (unreachable, refused) when
    the command imported redis (one that never did cannot have raised them), so that the commands with no server
    do not pay for importing it."""
    redis = sys.modules.get("redis")
    return (DispatchError, OSError, sqlite3.Error) + ((redis.RedisError,) if redis is not None else ())

"""The ``geodispatch`` command: it parses options and calls the library. Every option can also be set from the
environment as ``GEODISPATCH_<COMMAND>_<OPTION>``, named after the option's flag (``--index`` of ``resolve`` is
``GEODISPATCH_RESOLVE_INDEX``); ``--help`` shows each variable.

The commands live by what they serve: ``data`` (generate, build, resolve), ``service`` (serve, consume), ``api``
(the HTTP front door and its keys), ``operate`` (demo, bench, loadtest), ``reports`` (maps and the transparency
report).
"""

from __future__ import annotations

import sys

from rich.text import Text

from dispatcher.cli import api, data, operate, reports, service
from dispatcher.cli._app import console, main, name_environment
from dispatcher.errors import DispatchError

__all__ = ["main", "run"]

_COMMANDS = (api, data, operate, reports, service)  # imported for the commands they register
name_environment(main, "GEODISPATCH")


def run() -> None:
    """Entry point: typed errors, and files that cannot be read or written, become a one-line message and exit
    status 2."""
    try:
        main(standalone_mode=True)
    except (DispatchError, OSError) as exc:
        # a KeyError's str() quotes its message: print the message itself
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        console.print(Text.assemble(("error: ", "red"), str(text)), highlight=False)  # never markup: it is data
        sys.exit(2)


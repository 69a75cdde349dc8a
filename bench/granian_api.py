"""``geodispatch api`` served by granian instead of uvicorn, for ``bench/bench_api.py``'s comparison of the two
servers on the same app (``GEODISPATCH_BENCH_API_GRANIAN``). Takes the ``geodispatch api`` options:

    python -m bench.granian_api --index ... --store ... --port ...

The command is the CLI's own, with only its server swapped: granian's embedded server (``granian.server.embed``:
the ASGI app with its lifespan, on this process's uvloop event loop, HTTP/1.1, one Rust runtime thread), stopped
by SIGTERM or SIGINT, then the backend closed, as :func:`dispatcher.api.serve` does with uvicorn. granian is in the
``bench`` extra: it is measured, not used (the README's "Why FastAPI and uvicorn" gives the figures).
"""

from __future__ import annotations

import asyncio
import signal

import uvloop
from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server.embed import Server

import dispatcher.api
from dispatcher.api.app import ApiSettings, create_app
from dispatcher.api.backend import Backend
from dispatcher.api.residents import ResidentPages
from dispatcher.cli import run


def serve_with_granian(backend: Backend, host: str, port: int, settings: ApiSettings | None = None,
                       log_level: str = "warning", residents: ResidentPages | None = None) -> None:
    """:func:`dispatcher.api.serve`'s signature and behaviour, on granian."""
    server = Server(create_app(backend, settings, residents), address=host, port=port, interface=Interfaces.ASGI,
                    http=HTTPModes.http1, websockets=False, runtime_threads=1, log_level=LogLevels(log_level))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        await server.serve()

    try:
        uvloop.run(main())
    finally:
        backend.close()


if __name__ == "__main__":
    dispatcher.api.serve = serve_with_granian  # the api command imports it from the package when it runs
    run(["api", *__import__("sys").argv[1:]])

"""Serving the API with uvicorn: one process, a graceful stop on SIGTERM or SIGINT (the calls in hand finish),
then the backend's files and connections closed, and exit status 0.

uvicorn runs on uvloop's event loop and parses HTTP with httptools (both dependencies, named here rather than
left to uvicorn's choice of what is installed): against asyncio's loop and h11, they halve the server's CPU for
the HTTP of a call (``bench/bench_api.py``'s floor, a 404: 1.0 ms against 2.2 ms on a loaded 2-core machine)."""

from __future__ import annotations

import signal
import threading

import uvicorn

from dispatcher.api.app import ApiSettings, create_app
from dispatcher.api.backend import Backend
from dispatcher.api.residents import ResidentPages

__all__ = ["serve"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve(backend: Backend, host: str, port: int, settings: ApiSettings | None = None,
          log_level: str = "warning", residents: ResidentPages | None = None) -> None:
    """Serve ``backend`` on ``host:port`` until SIGTERM or SIGINT; closes the backend."""
    server = uvicorn.Server(uvicorn.Config(create_app(backend, settings, residents), host=host, port=port,
                                           log_level=log_level, lifespan="on", loop="uvloop",
                                           http="httptools"))
    # uvicorn stops on the signal, then sends it again to the handlers it found: let those be no-ops, so the stop
    # it already made is the end (and the backend is closed) rather than a second, abrupt one
    main = threading.current_thread() is threading.main_thread()
    before = {sig: signal.signal(sig, lambda *_: None) for sig in _SIGNALS} if main else {}
    try:
        server.run()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        backend.close()

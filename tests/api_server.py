"""The HTTP API served for a test: uvicorn on a free loopback port in a thread, and a request as an agency sends
it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from dispatcher.service.servers import free_port
from tests.video_requests import request

#: How long the server may take to start or to stop.
SERVER_TIMEOUT_S = 15.0


@contextmanager
def serving(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL. The server must start and stop in time."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port or free_port(), log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(SERVER_TIMEOUT_S)
        assert not thread.is_alive(), "the API server did not stop"


def agency_body(**kw: object) -> dict[str, Any]:
    """A valid request (of the Chicago agency, unless ``kw`` says otherwise) as an agency sends it: every field but
    the submission time, which is the server's."""
    r = request(**kw)
    d = {f: getattr(r, f) for f in r.__dataclass_fields__ if f != "submitted_at"}
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in d.items()}

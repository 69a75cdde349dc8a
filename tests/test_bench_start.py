"""The benchmarks' wait for a server to start: as long as it works (a cold Numba cache compiles for minutes on a
loaded machine), not a fixed time; a process that neither answers nor uses CPU fails the wait."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.bench_api import wait_for_http
from dispatcher.service.servers import free_port

#: Busy for ``busy`` seconds of CPU (a compile), idle for ``idle`` seconds, then an HTTP server on ``port``.
_SERVER = """
import http.server, sys, time
port, busy, idle = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
t = time.process_time()
while time.process_time() - t < busy:
    pass
time.sleep(idle)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _start(tmp_path: Path, busy: float, idle: float) -> tuple[int, subprocess.Popen[bytes], Path]:
    port, log = free_port(), tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(port), str(busy), str(idle)], stdout=out,
                                stderr=subprocess.STDOUT)
    return port, proc, log


def test_a_server_busy_starting_is_waited_for_past_the_stall_limit(tmp_path: Path) -> None:
    port, proc, log = _start(tmp_path, busy=1.5, idle=0.0)
    try:
        t0 = time.monotonic()
        wait_for_http(port, proc, log, stall_s=1.0)
        assert time.monotonic() - t0 >= 1.2  # it did wait past the limit, on a process at work
    finally:
        proc.kill()
        proc.wait()


def test_a_server_that_neither_answers_nor_works_fails_the_wait(tmp_path: Path) -> None:
    port, proc, log = _start(tmp_path, busy=0.0, idle=60.0)
    try:
        with pytest.raises(AssertionError, match="no CPU used for 1.0 s"):
            wait_for_http(port, proc, log, stall_s=1.0)
    finally:
        proc.kill()
        proc.wait()

"""HTTP overhead of the front door: a submission over HTTP (``geodispatch api``, a uvicorn process on loopback; one
keep-alive httpx client) against the same pipeline call in-process, on the embedded store, measured in the same
run. Off by
default; run with

    python -m pytest bench/bench_api.py --benchmark-only -p no:cacheprovider

Each round submits a new request (its own id), so both sides validate and record one request; requests wait for
review, so nothing is resolved or dispatched: the difference is the transport (HTTP, JSON, authentication, the
server's thread pool). The ratio to read is the HTTP mean over the in-process mean (``extra_info``).
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from dispatcher.api import AGENCY, open_backend, open_credentials
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index.camera_index import CameraIndex
from dispatcher.service.servers import free_port
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.pipeline import Submit
from dispatcher.workflow.policy import Policy
from tests import data
from tests.video_requests import JOINED, LAT0, LNG0, square

ROUNDS = 300
#: The served process judges requests by the wall clock: both sides submit at this time.
_NOW = datetime.now(timezone.utc).replace(microsecond=0)
_means: dict[str, float] = {}


def _body(rid: str) -> dict[str, Any]:
    return {"request_id": rid, "agency_id": "il-chicago", "case_number": "2026-001234", "incident_type": "burglary",
            "investigator_contact": "det.smith@chicagopolice.example", "message": "Burglary on the block.",
            "area": square(0.1), "start": (_NOW - timedelta(hours=5)).isoformat(),
            "end": (_NOW - timedelta(hours=3)).isoformat()}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, str]]:
    """The in-process backend, and ``geodispatch api`` in a process of its own (as deployed: the client does not
    share its interpreter), each on its own embedded file, over the same index."""
    tmp = tmp_path_factory.mktemp("api-bench")
    cams = data.cameras(5_000, seed=3, cx=LNG0, cy=LAT0, spread=0.01)
    index = CameraIndex.build(cams, data.owners(cams, seed=3))
    index.save(tmp / "index")
    registry = AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL",
                                      geodesic_circle(LNG0, LAT0, 20_000), JOINED)])
    registry.save_parquet(tmp / "agencies.parquet")
    (tmp / "policy.json").write_text(json.dumps({"rate_limit": 10**9}))
    backend = open_backend(index, registry, Policy(rate_limit=10**9), clock=lambda: _NOW, store=tmp / "inproc.sqlite")
    creds = open_credentials(store=tmp / "served.sqlite")
    _, key = creds.create(AGENCY, "il-chicago", _NOW)
    port = free_port()
    with (tmp / "api.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dispatcher.cli", "api", "--index", str(tmp / "index"),
                                 "--store", str(tmp / "served.sqlite"), "--agencies", str(tmp / "agencies.parquet"),
                                 "--policy", str(tmp / "policy.json"), "--port", str(port),
                                 "--rate-limit", "1000000/minute"],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "api.log").read_text()[-2000:]
            try:
                httpx.get(f"{url}/openapi.json", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield backend, url, key
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        backend.close()


def test_submit_in_process(benchmark: Any, served: tuple[Any, str, str]) -> None:
    backend, _, _ = served
    ids = (f"inproc-{k}" for k in itertools.count())

    def submit() -> None:
        out = backend.pipeline.run([Submit(_body(next(ids)), agency="il-chicago")], _NOW)[0]
        assert out.status == "submitted", out

    benchmark.group = "api submit"
    benchmark.pedantic(submit, rounds=ROUNDS, warmup_rounds=20)
    _means["in_process"] = benchmark.stats.stats.mean


def test_submit_over_http(benchmark: Any, served: tuple[Any, str, str]) -> None:
    _, url, key = served
    ids = (f"http-{k}" for k in itertools.count())
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        def submit() -> None:
            r = client.post("/v1/requests", json=_body(next(ids)))
            assert r.status_code == 202, r.text

        benchmark.group = "api submit"
        benchmark.pedantic(submit, rounds=ROUNDS, warmup_rounds=20)
    mean = benchmark.stats.stats.mean
    if "in_process" in _means:
        benchmark.extra_info["ratio_to_in_process"] = mean / _means["in_process"]
        benchmark.extra_info["overhead_us"] = (mean - _means["in_process"]) * 1e6

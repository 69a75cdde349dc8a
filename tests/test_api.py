"""The HTTP front door, served by a real uvicorn on a loopback port and called with httpx, on the embedded file
and on the test session's redis-server: agencies' keys, scoping, refusals that change nothing, the reviewers'
approve -> dispatch, body limits, typed errors and the OpenAPI schema."""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import redis.cluster
import shapely
from click.testing import CliRunner
from openapi_spec_validator import validate

from bench.reference import Dataset, brute_force
from dispatcher.api import REVIEWER, ApiSettings, Backend, create_app, open_backend
from dispatcher.api.credentials import AGENCY
from dispatcher.cli import main
from dispatcher.dispatch.wire import decode_batch
from dispatcher.errors import ApiKeyError, InvalidApiSettings
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index.camera_index import CameraIndex
from dispatcher.service.servers import free_port
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.policy import Policy
from tests import data
from tests.api_server import agency_body, serving
from tests.video_requests import JOINED, LAT0, LNG0, NOW, request

#: How long the server may take to start or stop.


@pytest.fixture(scope="module")
def world() -> tuple[CameraIndex, Dataset]:
    cams = data.cameras(8_000, seed=7, cx=LNG0, cy=LAT0, spread=0.01)
    own = data.owners(cams, seed=7, share_out=0.02)
    index = CameraIndex.build(cams, own)
    v = request()
    index.resolve(v.area, v.start, v.end, now=NOW)  # compiled before any server starts
    return index, Dataset.from_tables(cams, own)


def _registry() -> AgencyRegistry:
    area = geodesic_circle(LNG0, LAT0, 20_000)
    return AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL", area, JOINED),
                           Agency("il-evanston", "Evanston Police Department", "IL", area, JOINED)])


body = agency_body


@dataclass
class Api:
    backend: Backend
    url: str
    chicago: str
    evanston: str
    reviewer: str
    #: The Redis the backend is on, or None for the embedded file.
    url_of_redis: str | None = None

    def call(self, method: str, path: str, key: str | None = None, headers: dict[str, str] | None = None,
             **kw: object) -> httpx.Response:
        headers = {**({"Authorization": f"Bearer {key}"} if key is not None else {}), **(headers or {})}
        with httpx.Client(base_url=self.url, timeout=60) as c:
            return c.request(method, path, headers=headers, **kw)  # type: ignore[arg-type]

    def requests(self) -> list[str]:
        return self.backend.workflow.store.request_ids()

    def notified(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for rid, payload in self.backend.pipeline.dispatcher.sink.read_all():
            out.setdefault(rid, set()).update(n.owner_id for n in decode_batch(payload)[1])
        return out


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def api(request: pytest.FixtureRequest, world, tmp_path) -> Iterator[Api]:
    index, _ = world
    where = ({"store": tmp_path / "geodispatch.sqlite"} if request.param == "sqlite"
             else {"redis_url": request.getfixturevalue("redis_server").url})
    backend = open_backend(index, _registry(), Policy(owner_cap=1000, rate_limit=1000), clock=lambda: NOW,
                           **where)  # type: ignore[arg-type]
    keys = [backend.credentials.create(role, name, NOW)[1]
            for role, name in [(AGENCY, "il-chicago"), (AGENCY, "il-evanston"), (REVIEWER, "rev-1")]]
    try:
        with serving(create_app(backend)) as url:
            yield Api(backend, url, *keys, url_of_redis=where.get("redis_url"))  # type: ignore[arg-type]
    finally:
        backend.close()


def test_submit_status_and_list(api: Api) -> None:
    r = api.call("POST", "/v1/requests", api.chicago, json=body())
    assert r.status_code == 202, r.text
    assert r.json() == {"request_id": "r1", "status": "submitted", "codes": []}
    assert api.requests() == ["il-chicago:r1"]  # scoped to the key's agency
    assert api.call("GET", "/v1/requests/r1", api.chicago).json() == {"request_id": "r1", "status": "submitted"}
    api.call("POST", "/v1/requests", api.chicago, json=body(request_id="r2"))
    got = api.call("GET", "/v1/requests", api.chicago).json()
    assert sorted(x["request_id"] for x in got["requests"]) == ["r1", "r2"]
    assert api.call("GET", "/v1/requests", api.evanston).json() == {"requests": []}
    again = api.call("POST", "/v1/requests", api.chicago, json=body())  # a repeat: its status, nothing new
    assert again.status_code == 202 and again.json()["status"] == "submitted"
    assert api.requests() == ["il-chicago:r1", "il-chicago:r2"]


def test_the_probes_need_no_key_are_never_throttled_and_say_the_same_whatever_is_stored(api: Api) -> None:
    """A load balancer's liveness and readiness probes: no key, a few bytes that do not move with what the store
    holds, and as many as it likes (the address limit is 120 a minute; probes do not count against it)."""
    before = [(api.call("GET", p).status_code, api.call("GET", p).content) for p in ("/healthz", "/readyz")]
    assert before == [(200, b'{"status":"ok"}'), (200, b'{"status":"ready"}')]
    assert api.call("POST", "/v1/requests", api.chicago, json=body()).status_code == 202
    with httpx.Client(base_url=api.url, timeout=60) as c:
        got = {(r.status_code, r.content) for r in (c.get(p) for _ in range(100) for p in ("/healthz", "/readyz"))}
    assert got == set(before)
    assert api.call("GET", "/v1/requests").status_code == 401  # the address was not charged for the probes


def test_readiness_fails_while_the_store_does_not_answer_and_liveness_does_not(world, tmp_path) -> None:
    """Redis stopped, or the embedded file gone: 503 ``unavailable`` within a few seconds (the probe's own short
    timeout, no retries), while ``/healthz`` still answers; Redis back, ready again."""
    from dispatcher.service.servers import RedisServer

    index, _ = world
    with RedisServer(tmp_path / "redis") as server:
        for where in ({"redis_url": server.url}, {"store": tmp_path / "gd.sqlite"}):
            backend = open_backend(index, _registry(), clock=lambda: NOW, **where)  # type: ignore[arg-type]
            try:
                with serving(create_app(backend)) as url, httpx.Client(base_url=url, timeout=60) as c:
                    assert c.get("/readyz").status_code == 200
                    if "redis_url" in where:
                        server.stop()
                    else:
                        (tmp_path / "gd.sqlite").unlink()
                    time.sleep(1.1)  # the last answer is a second old
                    t0 = time.monotonic()
                    r = c.get("/readyz")
                    assert (r.status_code, r.json()) == (503, {"status": "unavailable"})
                    assert time.monotonic() - t0 < 5
                    assert c.get("/healthz").status_code == 200
                    if "redis_url" in where:
                        server.start()
                        time.sleep(1.1)
                        assert c.get("/readyz").status_code == 200
            finally:
                backend.close()


def test_a_redis_that_may_evict_keys_is_not_ready(world, redis_server: Any) -> None:
    """Under an eviction policy a Redis at its maxmemory deletes what it chooses (a done mark, an owner's
    notices, an opt-out): a backend is not opened on one, and is not ready while it has one (set after it
    opened), ready again once it is back to ``noeviction``."""
    from dispatcher.errors import InvalidQueueSettings

    index, _ = world
    with redis_server.client() as r:
        r.config_set("maxmemory-policy", "allkeys-random")
        try:
            with pytest.raises(InvalidQueueSettings, match="maxmemory-policy 'allkeys-random'"):
                open_backend(index, _registry(), clock=lambda: NOW, redis_url=redis_server.url)
        finally:
            r.config_set("maxmemory-policy", "noeviction")
    backend = open_backend(index, _registry(), clock=lambda: NOW, redis_url=redis_server.url)
    try:
        with serving(create_app(backend)) as url, httpx.Client(base_url=url, timeout=60) as c, \
                redis_server.client() as r:
            assert c.get("/readyz").status_code == 200
            for policy in ("allkeys-lru", "volatile-ttl"):
                r.config_set("maxmemory-policy", policy)
                try:
                    time.sleep(1.1)  # the last answer is a second old
                    got = c.get("/readyz")
                    assert (got.status_code, got.json()) == (503, {"status": "unavailable"})
                    assert c.get("/healthz").status_code == 200
                finally:
                    r.config_set("maxmemory-policy", "noeviction")
                time.sleep(1.1)
                assert c.get("/readyz").status_code == 200
    finally:
        backend.close()


def test_policy_refusal_is_422_with_the_rule_codes(api: Api) -> None:
    r = api.call("POST", "/v1/requests", api.chicago, json=body(incident_type="protest"))
    assert r.status_code == 422
    got = r.json()
    assert got["error"]["type"] == "request_refused" and got["request_id"] == "r1"
    assert got["codes"] and all(isinstance(c, str) for c in got["codes"])
    assert set(got) == {"error", "request_id", "status", "codes"}  # no count, no time
    assert api.requests() == []


def test_a_body_naming_another_agency_is_refused(api: Api) -> None:
    r = api.call("POST", "/v1/requests", api.chicago, json=body(agency_id="il-evanston"))
    assert r.status_code == 422
    assert r.json()["codes"] == ["agency_mismatch"]
    assert api.requests() == []
    assert api.call("GET", "/v1/requests", api.evanston).json() == {"requests": []}


def test_another_agencys_request_is_not_found_like_a_missing_one(api: Api) -> None:
    assert api.call("POST", "/v1/requests", api.chicago, json=body()).status_code == 202
    theirs = api.call("GET", "/v1/requests/r1", api.evanston)
    missing = api.call("GET", "/v1/requests/nosuch", api.evanston)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json() and theirs.headers["content-length"] == missing.headers["content-length"]
    scoped = api.call("GET", "/v1/requests/il-chicago:r1", api.evanston)  # the platform's form: not an id here
    assert scoped.status_code == 422 and scoped.json()["error"]["field"] == "request_id"

    # the same work either way (one store lookup of an id scoped to the caller): the same timing class. The two
    # are measured alternately, so that the load of a shared machine falls on both alike.
    times: dict[str, list[float]] = {"/v1/requests/r1": [], "/v1/requests/nosuch": []}
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.evanston}"}) as c:
        for _ in range(40):
            for path, got in times.items():
                t0 = time.perf_counter()
                assert c.get(path).status_code == 404
                got.append(time.perf_counter() - t0)
    a, b = (statistics.median(t) for t in times.values())
    assert 0.2 < a / b < 5, (a, b)


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nonsense", "Basic dXNlcjpwdw==",
                                    "Bearer gdk_000000000000_" + "A" * 43])
def test_missing_or_garbled_keys_are_401_and_change_nothing(api: Api, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    with httpx.Client(base_url=api.url, headers=headers) as c:
        for method, path, kw in [("POST", "/v1/requests", {"json": body()}), ("GET", "/v1/requests/r1", {}),
                                 ("POST", "/v1/requests", {"content": b"{not json"}),
                                 ("POST", "/v1/requests", {"json": {"colour": "red"}}),
                                 ("GET", "/v1/requests", {}), ("GET", "/v1/review/queue", {}),
                                 ("POST", "/v1/review/il-chicago:r1/approve", {})]:
            r = c.request(method, path, **kw)  # type: ignore[arg-type]
            assert r.status_code == 401, (method, path, r.text)
            assert r.json() == {"error": {"type": "unauthorized", "message": "missing or invalid API key",
                                          "field": "Authorization"}}
            assert r.headers["www-authenticate"] == "Bearer"
    assert api.requests() == []


def test_keys_rotate_and_revoke(api: Api) -> None:
    creds = api.backend.credentials
    second_id, second = creds.create(AGENCY, "il-chicago", NOW)
    with pytest.raises(ApiKeyError, match="already has 2 active keys"):
        creds.create(AGENCY, "il-chicago", NOW)
    assert api.call("GET", "/v1/requests", second).status_code == 200
    first_id = next(r.key_id for r in creds.records() if r.name == "il-chicago" and r.key_id != second_id)
    revoked = creds.revoke(first_id, NOW)
    assert not revoked.active and creds.revoke(first_id, NOW + timedelta(hours=1)).revoked_s == revoked.revoked_s
    r = api.call("POST", "/v1/requests", api.chicago, json=body())
    assert r.status_code == 401 and api.requests() == []
    assert api.call("POST", "/v1/requests", second, json=body()).status_code == 202
    creds.create(AGENCY, "il-chicago", NOW)  # room again for a successor
    with pytest.raises(ApiKeyError, match="no API key"):
        creds.revoke("000000000000", NOW)


def test_a_key_revoked_elsewhere_is_refused_at_the_next_call(api: Api, tmp_path) -> None:
    """A revocation made on another connection to the store (``api-key revoke`` in another process) is refused at
    the server's very next call, after the key was used twice: the guard any cache of key lookups must pass."""
    from dispatcher.api import open_credentials

    for _ in range(2):  # seen, then answered from what the server kept
        assert api.call("GET", "/v1/requests", api.chicago).status_code == 200
    elsewhere = open_credentials(redis_url=api.url_of_redis) if api.url_of_redis else \
        open_credentials(store=tmp_path / "geodispatch.sqlite")  # the api fixture's file, another connection
    key_id = next(r.key_id for r in elsewhere.records() if r.name == "il-chicago")
    elsewhere.revoke(key_id, NOW)
    assert api.call("GET", "/v1/requests", api.chicago).status_code == 401
    assert api.call("POST", "/v1/requests", api.chicago, json=body()).status_code == 401 and api.requests() == []
    assert api.call("GET", "/v1/requests", api.evanston).status_code == 200  # the other keys still work
    second_id, second = elsewhere.create(AGENCY, "il-chicago", NOW)  # and one made elsewhere works at once
    assert api.call("POST", "/v1/requests", second, json=body()).status_code == 202
    elsewhere.revoke(second_id, NOW)
    assert api.call("GET", "/v1/requests", second).status_code == 401


def test_reviewer_approves_and_the_request_is_dispatched(api: Api, world) -> None:
    _, ds = world
    assert api.call("POST", "/v1/requests", api.chicago, json=body()).status_code == 202
    queue = api.call("GET", "/v1/review/queue", api.reviewer).json()["requests"]
    assert [q["request_id"] for q in queue] == ["il-chicago:r1"] and queue[0]["agency_id"] == "il-chicago"
    assert shapely.geometry.shape(queue[0]["area"]).equals(shapely.geometry.shape(request().area))
    page = api.call("GET", queue[0]["map"], api.reviewer)  # the request's map for its review
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"] and "il-chicago:r1" in page.text
    assert "<svg" in page.text and "https://" not in page.text  # self-contained: nothing from elsewhere
    for key, status in ((api.chicago, 403), (None, 401)):
        assert api.call("GET", queue[0]["map"], key).status_code == status
    assert api.call("GET", "/v1/review/il-chicago:nosuch/map", api.reviewer).status_code == 404
    assert api.notified() == {}
    r = api.call("POST", "/v1/review/il-chicago:r1/approve", api.reviewer)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["status"] == "dispatched"
    v = request()
    expected = set(brute_force(ds, v.area, v.start, v.end, NOW))
    assert expected and api.notified() == {"il-chicago:r1": expected} and got["notified"] == len(expected)
    assert api.call("GET", "/v1/requests/r1", api.chicago).json()["status"] == "dispatched"
    assert api.call("GET", "/v1/review/queue", api.reviewer).json() == {"requests": []}
    again = api.call("POST", "/v1/review/il-chicago:r1/approve", api.reviewer)
    assert again.status_code == 409 and again.json()["error"]["type"] == "conflict"
    assert api.notified() == {"il-chicago:r1": expected}  # nothing sent twice
    assert api.call("POST", "/v1/review/il-chicago:nosuch/approve", api.reviewer).status_code == 404


def test_reviewer_rejects_with_a_reason(api: Api) -> None:
    api.call("POST", "/v1/requests", api.chicago, json=body())
    r = api.call("POST", "/v1/review/il-chicago:r1/reject", api.reviewer, json={})
    assert r.status_code == 422 and r.json()["error"]["field"] == "reason"
    r = api.call("POST", "/v1/review/il-chicago:r1/reject", api.reviewer, json={"reason": "too broad"})
    assert r.status_code == 200 and r.json() == {"request_id": "il-chicago:r1", "status": "rejected"}
    assert api.call("GET", "/v1/requests/r1", api.chicago).json()["status"] == "rejected"
    assert api.notified() == {}
    audit = api.backend.workflow.store.audit("il-chicago:r1")
    assert audit[-1]["actor"] == "reviewer:rev-1" and audit[-1]["detail"] == {"reason": "too broad"}


def test_roles_keep_to_their_endpoints(api: Api) -> None:
    api.call("POST", "/v1/requests", api.chicago, json=body())
    for method, path, kw in [("GET", "/v1/review/queue", {}), ("POST", "/v1/review/il-chicago:r1/approve", {}),
                             ("POST", "/v1/review/il-chicago:r1/reject", {"json": {"reason": "x"}})]:
        r = api.call(method, path, api.chicago, **kw)
        assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden", (method, path)
    for method, path, kw in [("POST", "/v1/requests", {"json": body(request_id="r9")}), ("GET", "/v1/requests", {}),
                             ("GET", "/v1/requests/r1", {})]:
        assert api.call(method, path, api.reviewer, **kw).status_code == 403
    assert api.call("GET", "/v1/requests/r1", api.chicago).json()["status"] == "submitted"
    assert api.requests() == ["il-chicago:r1"] and api.notified() == {}


def test_bodies_over_the_limit_are_413(api: Api) -> None:
    big = body(message="x" * 300_000)
    r = api.call("POST", "/v1/requests", api.chicago, json=big)
    assert r.status_code == 413 and r.json()["error"] == {"type": "body_too_large", "field": "body",
                                                          "message": "the body is larger than 262144 bytes"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as it arrives
        for _ in range(40):
            yield b" " * 8192
    r = api.call("POST", "/v1/requests", api.chicago, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert api.requests() == []


@pytest.mark.parametrize("content, kind, field", [
    (b'{"request_id": ', "invalid_json", "body"),
    (b"[1, 2]", "invalid_input", "body"),
    (None, "invalid_input", "request_id"),  # a number where a string goes
    (None, "invalid_input", "colour"),      # a field that is not a request's
    (None, "invalid_input", "area"),        # missing
])
def test_bad_bodies_are_422_naming_the_field(api: Api, content: bytes | None, kind: str, field: str) -> None:
    if content is None:
        b = body()
        if field == "request_id":
            b["request_id"] = 5
        elif field == "colour":
            b["colour"] = "red"
        else:
            del b[field]
        content = httpx.Request("POST", "/", json=b).content
    r = api.call("POST", "/v1/requests", api.chicago, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == kind and err["field"] == field, err
    assert api.requests() == []


def test_unknown_paths_and_methods_are_typed_errors(api: Api) -> None:
    r = api.call("GET", "/v1/nothing", api.chicago)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = api.call("DELETE", "/v1/requests", api.chicago)
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"


def test_openapi_schema_is_valid(api: Api) -> None:
    spec = api.call("GET", "/openapi.json").json()
    validate(spec)
    assert {"/v1/requests", "/v1/requests/{request_id}", "/v1/review/queue", "/v1/review/{request_id}/approve",
            "/v1/review/{request_id}/reject", "/v1/review/{request_id}/map"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # submit and status validate and encode themselves: their body, answers and security are declared by hand
    submit, status = spec["paths"]["/v1/requests"]["post"], spec["paths"]["/v1/requests/{request_id}"]["get"]
    ref = submit["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/Submission" and submit["requestBody"]["required"]
    assert set(spec["components"]["schemas"]["Submission"]["required"]) == set(body())
    assert spec["components"]["schemas"]["Submission"]["additionalProperties"] is False
    for op, model, code in ((submit, "SubmitResult", "202"), (status, "RequestStatus", "200")):
        assert op["security"] == [{"HTTPBearer": []}]
        assert op["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/" + model)
        assert {"401", "403", "422", "503"} <= set(op["responses"])


def test_api_key_commands(tmp_path) -> None:
    store = str(tmp_path / "keys.sqlite")
    runner = CliRunner()
    made = runner.invoke(main, ["api-key", "create", "--store", store, "--agency", "il-chicago"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("gdk_")
    listed = runner.invoke(main, ["api-key", "list", "--store", store])
    key_id = listed.stdout.split()[0]
    assert key_id in key and key not in listed.stdout and "active" in listed.stdout
    assert runner.invoke(main, ["api-key", "revoke", "--store", store, "--key-id", key_id]).exit_code == 0
    assert "revoked" in runner.invoke(main, ["api-key", "list", "--store", store]).stdout
    assert runner.invoke(main, ["api-key", "create", "--store", store]).exit_code == 2


def test_keys_are_stored_only_as_digests(tmp_path) -> None:
    from dispatcher.api.credentials import SqliteCredentials

    path = tmp_path / "k.sqlite"
    creds = SqliteCredentials(path)
    _, key = creds.create(AGENCY, "il-chicago", NOW)
    creds.close()
    assert key.encode() not in path.read_bytes() and key.split("_")[-1].encode() not in path.read_bytes()
    assert SqliteCredentials(path).authenticate(key) is not None


def test_ids_are_random(tmp_path) -> None:
    from dispatcher.api.credentials import new_key

    keys = {new_key()[1] for _ in range(100)}
    assert len(keys) == 100 and len({k[4:16] for k in keys}) == 100
    assert np.mean([len(k) for k in keys]) == 4 + 12 + 1 + 43


def test_the_api_command_serves_until_sigterm(world, tmp_path) -> None:
    """``geodispatch api`` as operators run it: a process on the embedded file, keys made by ``api-key create``."""
    import os
    import signal
    import subprocess
    import sys
    from datetime import datetime, timezone

    index, _ = world
    index.save(tmp_path / "index")
    _registry().save_parquet(tmp_path / "agencies.parquet")
    store = str(tmp_path / "geodispatch.sqlite")
    made = CliRunner().invoke(main, ["api-key", "create", "--store", store, "--agency", "il-chicago"])
    key = made.stdout.strip().splitlines()[-1]
    port = free_port()
    env = {**os.environ, "GEODISPATCH_API_STORE": store}  # every option from the environment too
    log = tmp_path / "api.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "dispatcher.cli", "api", "--index", str(tmp_path / "index"),
                                 "--agencies", str(tmp_path / "agencies.parquet"), "--port", str(port)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "geodispatch api did not start"
            try:
                httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        now = datetime.now(timezone.utc).replace(microsecond=0)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/requests", headers={"Authorization": f"Bearer {key}"},
                       json=body(start=now - timedelta(hours=5), end=now - timedelta(hours=3)),
                       timeout=60)
        assert r.status_code == 202 and r.json()["status"] == "submitted", r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise
    assert proc.returncode == 0 and "Traceback" not in log.read_text(), log.read_text()[-2000:]


def test_the_body_declares_exactly_the_fields_of_a_request() -> None:
    """The schema published for a submission cannot drift from what the pipeline reads."""
    from dataclasses import fields

    from dispatcher.api.app import Submission
    from dispatcher.workflow.requests import VideoRequest

    assert set(Submission.model_fields) == {f.name for f in fields(VideoRequest)} - {"submitted_at"}


def test_the_submission_time_is_the_servers_clock(api: Api) -> None:
    r = api.call("POST", "/v1/requests", api.chicago, json={**body(), "submitted_at": "2020-01-01T00:00:00Z"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "submitted_at"
    assert api.requests() == []
    assert api.call("POST", "/v1/requests", api.chicago, json=body()).status_code == 202
    stored = api.backend.workflow.get("il-chicago:r1").request
    assert stored.submitted_at == NOW  # the backend's clock (the fixture's), not anything the agency said


def test_the_review_queue_reads_an_index_of_submitted_requests(api: Api) -> None:
    for rid in ("r1", "r2", "r3"):
        assert api.call("POST", "/v1/requests", api.chicago, json=body(request_id=rid)).status_code == 202
    assert api.call("POST", "/v1/review/il-chicago:r2/reject", api.reviewer, json={"reason": "no"}).status_code == 200
    assert api.call("POST", "/v1/review/il-chicago:r3/approve", api.reviewer).status_code == 200
    store = api.backend.workflow.store
    queue = api.call("GET", "/v1/review/queue", api.reviewer).json()["requests"]
    assert [q["request_id"] for q in queue] == ["il-chicago:r1"] == store.submitted_ids(10)
    assert store.submitted_ids(1) == ["il-chicago:r1"] and len(store.request_ids()) == 3
    if hasattr(store, "_db"):  # SQLite: the query is answered from the (state, submitted) index
        plan = " ".join(str(r) for r in store._db.execute(
            "EXPLAIN QUERY PLAN SELECT request_id FROM requests WHERE state='submitted' "
            "ORDER BY submitted_us, request_id LIMIT 5"))
        assert "requests_state" in plan, plan
    else:  # Redis: the sorted set holds exactly the submitted ones
        assert store.r.zrange(store.k.submitted, 0, -1) == [b"il-chicago:r1"]
    api.call("POST", "/v1/review/il-chicago:r1/approve", api.reviewer)
    assert api.call("GET", "/v1/review/queue", api.reviewer).json() == {"requests": []} and store.submitted_ids(5) == []


def test_rate_limits_per_key_and_per_address(world, tmp_path) -> None:
    """Each key has its own window, and calls without a valid key count against the caller's address: over a
    limit, a 429 with Retry-After and the typed error, nothing done; another key, and keys once the address is
    limited, go on. Bad limits are refused when the settings are made."""
    index, _ = world
    backend = open_backend(index, _registry(), Policy(owner_cap=1000, rate_limit=1000), clock=lambda: NOW,
                           store=tmp_path / "gd.sqlite")
    chicago, evanston = (backend.credentials.create(AGENCY, name, NOW)[1] for name in ("il-chicago", "il-evanston"))
    settings = ApiSettings(rate_limit="3/minute", address_rate_limit="2/minute")
    try:
        with serving(create_app(backend, settings)) as url:
            api = Api(backend, url, chicago, evanston, "")
            assert [api.call("GET", "/v1/requests", chicago).status_code for _ in range(3)] == [200] * 3
            over = api.call("POST", "/v1/requests", chicago, json=body())
            assert over.status_code == 429 and over.json()["error"]["type"] == "rate_limited"
            assert 1 <= int(over.headers["retry-after"]) <= 60 and api.requests() == []  # refused: nothing stored
            assert api.call("GET", "/v1/requests", evanston).status_code == 200  # its own window
            assert [api.call("GET", "/v1/requests", "gdk_guess").status_code for _ in range(3)] == [401, 401, 429]
            assert api.call("GET", "/v1/requests", evanston).status_code == 200  # a valid key is not the address's
    finally:
        backend.close()
    for bad in ({"rate_limit": "lots"}, {"address_rate_limit": "0/never"}):
        with pytest.raises(InvalidApiSettings, match="rate_limit"):
            ApiSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidApiSettings, match="rate_storage"):
        create_app(backend, ApiSettings(rate_storage="nosuch://x"))
    with pytest.raises(InvalidApiSettings, match="port") as ei:  # shown without its password
        create_app(backend, ApiSettings(rate_storage="redis://api:s3cret@127.0.0.1:99999/0"))
    assert "s3cret" not in str(ei.value) and "api:***@" in str(ei.value)


@pytest.mark.redis
@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_rate_limits_on_redis_are_shared_by_every_server(world, redis_server, over) -> None:
    """Two servers on one Redis count a key's calls in one window (``rate_storage`` the Redis URL, as
    ``geodispatch api --redis-url`` sets it): three calls through either, then a 429 from both; over TCP and
    over a unix socket (whose URL the store and the rate limits once refused)."""
    index, _ = world
    url = redis_server.url if over == "tcp" else f"{redis_server.socket_url}?db=2"
    backend = open_backend(index, _registry(), Policy(owner_cap=1000, rate_limit=1000), clock=lambda: NOW,
                           redis_url=url)
    chicago = backend.credentials.create(AGENCY, "il-chicago", NOW)[1]
    settings = ApiSettings(rate_limit="3/minute", rate_storage=url)
    try:
        with serving(create_app(backend, settings)) as one, serving(create_app(backend, settings)) as two:
            apis = [Api(backend, u, chicago, "", "") for u in (one, two)]
            got = [apis[k % 2].call("GET", "/v1/requests", chicago).status_code for k in range(5)]
            assert got == [200, 200, 200, 429, 429]
    finally:
        backend.close()
    with redis_server.client() as r:  # the store and the windows in the database the URL names
        assert set(r.info("keyspace")) == {"db0" if over == "tcp" else "db2"}


@pytest.mark.redis
def test_rate_limits_on_a_redis_cluster(world, redis_cluster) -> None:
    """``geodispatch api --redis-url <a node>?cluster=true`` counts the windows on the cluster with its cluster
    client: each key's window lives in some slot, of any master. Counted with a plain client on the node named,
    every window in another master's slots was a MOVED reply, so a 503 for every call of that key or address."""
    index, _ = world
    backend = open_backend(index, _registry(), Policy(owner_cap=1000, rate_limit=1000), clock=lambda: NOW,
                           redis_url=redis_cluster.url)
    keys = [backend.credentials.create(AGENCY, agency, NOW)[1] for agency in ("il-chicago", "il-evanston")]
    keys += [backend.credentials.create(REVIEWER, f"reviewer-{k}", NOW)[1] for k in range(6)]
    settings = ApiSettings(rate_limit="2/minute", rate_storage=redis_cluster.url)
    try:
        with serving(create_app(backend, settings)) as url, httpx.Client(base_url=url, timeout=60) as c:
            # the front door records and (auto-approved) dispatches on the cluster too
            posted = c.post("/v1/requests", json=body(), headers={"Authorization": f"Bearer {keys[0]}"})
            assert posted.status_code in (200, 201, 202), posted.text
            keys = keys[1:]
            for key in keys:
                path = "/v1/requests" if key in keys[:1] else "/v1/review/queue"
                got = [c.get(path, headers={"Authorization": f"Bearer {key}"}).status_code for _ in range(3)]
                assert got == [200, 200, 429], (key[:8], got)
        rc = redis.cluster.RedisCluster.from_url(redis_cluster.url.partition("?")[0])
        try:
            windows = rc.keys("LIMITS*", target_nodes=redis.cluster.RedisCluster.PRIMARIES)
            masters = {rc.get_node_from_key(w).name for w in windows}
        finally:  # close() leaves open the connections a command sent to every primary used (redis-py 8)
            for node in rc.get_nodes():
                if node.redis_connection is not None:
                    node.redis_connection.connection_pool.disconnect()
            rc.close()
        assert len(windows) == len(keys) + 1 and len(masters) > 1  # windows on more than one master
    finally:
        backend.close()


def test_an_agencys_count_is_two_index_lookups_and_the_count_of_its_requests(tmp_path) -> None:
    """The policy's rate limit reads the embedded store's count of an agency's requests since a time at every
    submission: numbered in submission order, it is the total less the first one's place, equal to a count of
    the requests recorded (some out of order, some at the same time, repeats refused) at every time asked, and
    answered from indexes (no scan). A store written before the numbers were kept is numbered when opened."""
    from dispatcher.workflow.store import SqliteStore

    rng = np.random.default_rng(11)
    store = SqliteStore(tmp_path / "s.sqlite")
    base = NOW - timedelta(days=2)
    kept: list[tuple[str, int]] = []  # (agency, second) of each request recorded: the independent count's data
    for k in range(240):
        agency = ("a", "b", "c")[int(rng.integers(0, 3))]
        # mostly in order, with ties, and one in five from earlier than the last (another process's clock)
        t = k * 60 + int(rng.integers(0, 2)) * 30 - (int(rng.integers(1, 3000)) if rng.random() < 0.2 else 0)
        rid = f"{agency}:r{int(rng.integers(0, 200))}"  # some ids repeat: refused, not counted
        if store.create_many([(rid, agency, base + timedelta(seconds=t), "submitted", {}, ())])[0]:
            kept.append((agency, t))
        if k % 20 == 19:
            for since in [*rng.integers(-3000, k * 60 + 100, size=8).tolist(), -10**6, 10**6]:
                for agency in ("a", "b", "c", "nobody"):
                    want = sum(1 for a, t0 in kept if a == agency and t0 >= since)
                    assert store.count_agency_requests(agency, base + timedelta(seconds=since)) == want, (k, since)
    assert len(kept) < 240  # repeats were refused
    plan = " ".join(str(r) for r in store._db.execute("EXPLAIN QUERY PLAN SELECT agency_seq FROM requests WHERE "
                                                       "agency_id='a' AND submitted_us>=0 ORDER BY submitted_us, "
                                                       "agency_seq LIMIT 1"))
    assert "requests_agency_seq" in plan and "TEMP B-TREE" not in plan, plan
    store.close()

    old = tmp_path / "old.sqlite"  # as the store wrote it before: no numbers, no totals
    db = sqlite3.connect(old)
    db.executescript("CREATE TABLE requests (request_id TEXT PRIMARY KEY, agency_id TEXT NOT NULL, submitted_us "
                     "INTEGER NOT NULL, state TEXT NOT NULL, payload BLOB NOT NULL);"
                     "CREATE INDEX requests_agency ON requests (agency_id, submitted_us);")
    rows = [(f"r{k}", "ab"[k % 2], int(x), "submitted", b"{}") for k, x in enumerate(rng.integers(0, 50, 40))]
    db.executemany("INSERT INTO requests VALUES (?,?,?,?,?)", rows)
    db.commit()
    db.close()
    store = SqliteStore(old)
    try:
        for since in range(-1, 52, 3):
            for agency in "ab":
                want = sum(1 for _, a, us, _, _ in rows if a == agency and us >= since)
                got = store.count_agency_requests(agency, datetime.fromtimestamp(since / 1e6, timezone.utc))
                assert got == want, (agency, since)
    finally:
        store.close()


def test_moving_windows_in_memory_admit_what_a_count_of_the_window_admits() -> None:
    """The in-process rate limit against an independent count: a call is admitted when fewer than the limit's
    calls were admitted in the window before it (the ``limits`` library's moving window), and a refusal says when
    the window admits one again; ids are counted apart, and an id whose window emptied is dropped."""
    import limits

    from dispatcher.api.app import MovingWindows

    rng = np.random.default_rng(5)
    item = limits.parse("5/minute")
    windows = MovingWindows()
    windows.SWEEP = 50
    admitted: dict[str, list[float]] = {"a": [], "b": []}
    now = 1_000.0
    for _ in range(1_500):
        now += float(rng.exponential(8.0))
        who = "ab"[int(rng.integers(0, 2))]
        inside = [t for t in admitted[who] if t >= now - 60]
        wait = windows.hit(item, who, now)
        if len(inside) < 5:
            assert wait is None
            admitted[who].append(now)
        else:
            assert wait is not None and wait == pytest.approx(min(inside) + 60 - now)
            assert 0 <= wait <= 60
    assert 0 < len(admitted["a"]) < 1_000 and len(admitted["b"]) > 0
    windows.hit(item, "c", now)
    for _ in range(60):  # every id idle for longer than the window, then a sweep: only the id just seen is kept
        windows.hit(item, "d", now + 61)
    assert len(windows) == 1


def test_an_unknown_caller_is_401_and_counted_even_with_a_bad_path_or_body(world, tmp_path) -> None:
    """A call without a valid key counts against its address whatever else is wrong with it (an id out of its
    pattern, a body that is not JSON, found before the key is read): 401, then 429 over the limit."""
    index, _ = world
    backend = open_backend(index, _registry(), Policy(), clock=lambda: NOW, store=tmp_path / "gd.sqlite")
    try:
        with serving(create_app(backend, ApiSettings(address_rate_limit="3/minute"))) as url:
            api = Api(backend, url, "", "", "")
            got = [api.call("GET", "/v1/requests/not%20an%20id", "gdk_guess").status_code,
                   api.call("POST", "/v1/requests", "gdk_guess", content=b"{").status_code,
                   api.call("GET", "/v1/requests/r1", "gdk_guess").status_code,
                   api.call("GET", "/v1/requests/not%20an%20id", "gdk_guess").status_code]
            assert got == [401, 401, 401, 429]
    finally:
        backend.close()


def test_concurrent_submissions_run_as_one_batch_with_the_outcomes_of_one_at_a_time(world, tmp_path) -> None:
    """Submissions queued in one turn of the loop run as one pipeline call, and each gets what it would have got
    alone: the same outcomes as the same commands run one at a time on another store (a refusal, a repeat of an id
    in the batch, another agency's), the same requests stored."""
    import asyncio

    from dispatcher.api.app import Batches
    from dispatcher.workflow.pipeline import Submit

    index, _ = world
    sent = [Submit(body(request_id=f"r{k}"), agency="il-chicago") for k in range(6)]
    sent += [Submit(body(request_id="r1"), agency="il-chicago"),                 # a repeat in the batch
             Submit(body(request_id="bad", incident_type="protest"), agency="il-chicago"),  # refused by the policy
             Submit(body(request_id="r1", agency_id="il-evanston"), agency="il-evanston")]  # its own r1
    stores = [open_backend(index, _registry(), Policy(owner_cap=1000, rate_limit=1000), clock=lambda: NOW,
                           store=tmp_path / f"{name}.sqlite") for name in ("batched", "alone")]
    try:
        batches = Batches(stores[0])

        async def together() -> list[object]:
            return list(await asyncio.gather(*(batches.run(c) for c in sent)))
        got = asyncio.run(together())
        alone = [stores[1].pipeline.run([c], NOW)[0] for c in sent]
        assert (batches.runs, batches.commands) == (1, len(sent))
        assert got == alone and [o.status for o in alone].count("submitted") == len(sent) - 1  # type: ignore[attr-defined]
        assert stores[0].workflow.store.request_ids() == stores[1].workflow.store.request_ids()
    finally:
        for b in stores:
            b.close()


def test_the_embedded_api_deletes_the_records_past_their_retention(world, tmp_path) -> None:
    """Redis lets the records that name residents expire by themselves; on the embedded file the API deletes
    them, at start and every ``expire_every_s``: a dispatched request's recipients are gone once the server's
    clock is past the retention, and its aggregate counts stay."""
    index, ds = world
    clock = [NOW]
    backend = open_backend(index, _registry(), Policy(owner_cap=1000, rate_limit=1000), clock=lambda: clock[0],
                           store=tmp_path / "geodispatch.sqlite")
    keys = [backend.credentials.create(role, name, NOW)[1] for role, name in [(AGENCY, "il-chicago"),
                                                                             (REVIEWER, "rev-1")]]
    api = Api(backend, "", keys[0], "", keys[1])
    store = backend.workflow.store

    def was_notified() -> bool:
        with backend.lock:
            return any(store.was_notified("il-chicago:r1", o) for o in expected)

    v = request()
    expected = set(brute_force(ds, v.area, v.start, v.end, NOW))
    try:
        with serving(create_app(backend, ApiSettings(expire_every_s=0.05))) as url:
            api.url = url
            assert api.call("POST", "/v1/requests", api.chicago, json=body()).status_code == 202
            assert api.call("POST", "/v1/review/il-chicago:r1/approve", api.reviewer).json()["notified"] == \
                len(expected) > 0
            time.sleep(0.3)  # rounds of expiry at the clock of today: nothing is due
            assert was_notified() and api.notified() == {"il-chicago:r1": expected}
            # past the retention of the store's records (stamped at the clock: NOW) and of the batch (stamped by
            # the sink at the wall clock)
            clock[0] = datetime.now(timezone.utc) + timedelta(days=181)
            deadline = time.monotonic() + 10
            while (was_notified() or api.notified()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not was_notified() and api.notified() == {}  # the recipients and their batch are gone
            status = api.call("GET", "/v1/requests/r1", api.chicago).json()
            assert status["status"] == "dispatched"  # the request itself and its counts are kept
    finally:
        backend.close()
    with pytest.raises(InvalidApiSettings, match="expire_every_s"):
        ApiSettings(expire_every_s=0)
    with pytest.raises(InvalidApiSettings, match="expire_every_s"):
        ApiSettings(expire_every_s=float("nan"))


def test_submit_and_status_answer_as_fastapis_routing_does(world, tmp_path, caplog) -> None:
    """The app's front answers submit and status itself: every answer (status, headers, body) is the one the same
    call gets through FastAPI's own middleware and routing (``routed``), refusals and reads alike; and a failure
    the handlers do not expect is the catch-all's 500, raised on to the server, which logs it."""
    import asyncio

    index, _ = world
    backend = open_backend(index, _registry(), Policy(owner_cap=1000, rate_limit=1000), clock=lambda: NOW,
                           store=tmp_path / "gd.sqlite")
    chicago = backend.credentials.create(AGENCY, "il-chicago", NOW)[1]
    reviewer = backend.credentials.create(REVIEWER, "rev-1", NOW)[1]
    app = create_app(backend)
    calls = [("GET", "/v1/requests/r1", chicago, {}), ("GET", "/v1/requests/r1", None, {}),
             ("GET", "/v1/requests/r1", reviewer, {}), ("GET", "/v1/requests/r1", "gdk_guess", {}),
             ("POST", "/v1/requests", chicago, {"content": b'{"request_id": '}),
             ("POST", "/v1/requests", chicago, {"json": {**body(), "colour": "red"}}),
             ("POST", "/v1/requests", chicago, {"json": body(incident_type="protest")}),
             ("POST", "/v1/requests", reviewer, {"json": body()}), ("POST", "/v1/requests", None, {"json": body()})]

    async def answers(asgi: Any) -> list[tuple[int, list[tuple[str, str]], bytes]]:
        out = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://t") as c:
            for method, path, key, kw in calls:
                r = await c.request(method, path, headers={"Authorization": f"Bearer {key}"} if key else {}, **kw)
                out.append((r.status_code, sorted(r.headers.items()), r.content))
        return out
    try:
        front, routed = asyncio.run(answers(app)), asyncio.run(answers(app.routed))
        assert [a[0] for a in front] == [404, 401, 403, 401, 422, 422, 422, 403, 401]
        assert front == routed and backend.workflow.store.request_ids() == []
        ok = [asyncio.run(_submit(asgi, chicago, rid)) for asgi, rid in ((app, "r1"), (app.routed, "r2"))]
        assert ok[0] == ok[1].replace(b'"r2"', b'"r1"') and b'"submitted"' in ok[0]
        backend.workflow.store.close()  # the store gone under the API: nothing the handlers expect
        with serving(app) as url, caplog.at_level("ERROR"):
            r = httpx.post(f"{url}/v1/requests", json=body(request_id="r3"),
                           headers={"Authorization": f"Bearer {chicago}"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
        assert any(rec.exc_info for rec in caplog.records), "the failure was not logged"
    finally:
        backend.close()


async def _submit(asgi: Any, key: str, rid: str) -> bytes:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://t") as c:
        r = await c.post("/v1/requests", json=body(request_id=rid), headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 202, r.text
        return r.content

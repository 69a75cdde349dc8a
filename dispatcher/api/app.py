"""The HTTP front door: an ASGI app (FastAPI) that authenticates agencies and reviewers and runs the library's
pipeline in-process.

A handler is a transport and nothing more: it decodes the body, builds the command (``Submit(request,
agency=<the key's agency>)``, ``Dispatch(id)``), calls :meth:`Pipeline.run` and encodes the outcome, which for
an agency is what :func:`submitters_outcome` gives (status and rule codes). The identity comes from the key,
never from the body: a request naming another agency is refused by the pipeline (``agency_mismatch``), and an
agency's ids are scoped to it, so another agency's request is not found, exactly as a missing one.

Every error is JSON of one shape, ``{"error": {"type": ..., "message": ..., "field": ...}}``; every refusal
changes nothing.

The agencies' and reviewers' handlers (and the key check before them) run on the server's event loop, not in its
thread pool: the calls of one process into the pipeline are serialised anyway (``Backend.lock``: its store and
sink connections are shared), so a thread would only add two hand-offs between threads a call, which on a busy
machine cost more than the HTTP itself (``bench/bench_api.py``). A call then holds the loop while it runs, as it
held the lock; the submissions that arrive meanwhile run together as one pipeline call (:class:`Batches`), and
more throughput comes from more server processes. What may wait on the loop's I/O (reading a body, the rate
limits' counts on Redis) is awaited.

The module has no ``from __future__ import annotations``: FastAPI reads the handlers' annotations at run time,
and they name the dependencies made inside :func:`create_app`.
"""

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

import limits
import limits.aio.strategies
import limits.errors
import limits.storage
import orjson
import pydantic
import redis.asyncio
from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from dispatcher.api.backend import Backend
from dispatcher.api.credentials import AGENCY, REVIEWER, Principal
from dispatcher.api.residents import ResidentPages, residents_router
from dispatcher.connections import is_transient
from dispatcher.dispatch.settings import QueueSettings, redacted
from dispatcher.errors import (
    InvalidApiSettings,
    InvalidQueueSettings,
    InvalidTransition,
    NotAuthenticated,
    NotPermitted,
    RateLimited,
    UnknownRequest,
)
from dispatcher.reports.pages import page_csp
from dispatcher.reports.request_map import build_request_map, request_map_html
from dispatcher.service.commands import submitters_outcome
from dispatcher.workflow.pipeline import Dispatch, Outcome, Submit, scoped_id
from dispatcher.workflow.review import APPROVED, SUBMITTED

__all__ = ["ApiSettings", "Batches", "MovingWindows", "create_app"]

log = logging.getLogger(__name__)

#: Request ids as the library takes them (an agency's own, or the platform's ``<agency>:<id>``).
_ID = r"^[A-Za-z0-9_-]{1,64}$"
_SCOPED_ID = r"^[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9_-]{1,64})?$"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ApiSettings:
    """Limits of the front door."""

    #: Request bodies larger than this are refused (413) before they are read further.
    body_limit: int = 256 * 1024
    #: At most this many requests in a list (the agency's own, the review queue).
    list_limit: int = 1000
    #: Calls an authenticated key may make (a moving window, in the ``limits`` notation: "600/minute").
    rate_limit: str = "600/minute"
    #: Calls a client address may make without a valid key: a wrong or missing one, and the resident pages.
    address_rate_limit: str = "120/minute"
    #: Where the windows are counted: "memory://" (one process) or a Redis URL as ``--redis-url`` takes it (every
    #: server process of the API; ``?cluster=true``: a Redis Cluster).
    rate_storage: str = "memory://"
    #: On the embedded store, how often the records past their retention are deleted (at start, then this often).
    expire_every_s: float = 3600.0

    def __post_init__(self) -> None:
        if not isinstance(self.body_limit, int) or self.body_limit < 1024:
            raise InvalidApiSettings(f"body_limit must be at least 1024 bytes, got {self.body_limit!r}")
        if not isinstance(self.list_limit, int) or self.list_limit < 1:
            raise InvalidApiSettings(f"list_limit must be at least 1, got {self.list_limit!r}")
        if type(self.expire_every_s) not in (int, float) or not 0 < self.expire_every_s < float("inf"):
            raise InvalidApiSettings(f"expire_every_s must be a positive number of seconds, got "
                                     f"{self.expire_every_s!r}")
        for name in ("rate_limit", "address_rate_limit"):
            try:
                limits.parse(getattr(self, name))
            except (TypeError, ValueError):
                raise InvalidApiSettings(f"{name} must read like '600/minute', got {getattr(self, name)!r}") from None


class MovingWindows:
    """Moving windows counted in this process, on the event loop: for each id, the times of its calls admitted
    in the last window, oldest first. A call is refused when the window holds ``item.amount`` calls already, the
    ``limits`` library's moving window exactly, without its asyncio memory storage's cost: that storage starts a
    task at every call, and the task hands each id's expiry to a thread (a hop to the thread pool and back a call:
    a tenth of the server's CPU at a submission, ``bench/bench_api.py`` under py-spy). Nothing here awaits, so
    the loop needs no lock; an id whose window has emptied is dropped every :attr:`SWEEP` calls."""

    SWEEP = 4096

    def __init__(self) -> None:
        self._times: dict[str, tuple[float, deque[float]]] = {}
        self._calls = 0

    def __len__(self) -> int:
        """The ids counted (whose window may hold calls)."""
        return len(self._times)

    def hit(self, item: limits.RateLimitItem, key: str, now: float) -> float | None:
        """Count a call of ``key`` at ``now`` (seconds) against ``item``: None when admitted, else the seconds
        until the window admits one (nothing counted)."""
        self._calls += 1
        if self._calls % self.SWEEP == 0:
            self._times = {k: (w, t) for k, (w, t) in self._times.items() if t and t[-1] >= now - w}
        window = float(item.get_expiry())
        times = self._times.setdefault(key, (window, deque()))[1]
        while times and times[0] < now - window:
            times.popleft()
        if len(times) >= item.amount:
            return times[0] + window - now
        times.append(now)
        return None


class Throttle:
    """The front door's rate limits (moving windows): each key, once authenticated, and each client address for
    what comes without a valid key. A refusal is a 429 with ``Retry-After``; what is counted is the caller's own
    calls, nothing about any resident.

    The windows are counted on the event loop: in memory (:class:`MovingWindows`) or on Redis by the ``limits``
    library's asyncio side through redis-py's asyncio client, so a count never blocks the loop or costs a hop to a
    thread."""

    def __init__(self, settings: ApiSettings) -> None:
        self.per_key, self.per_address = limits.parse(settings.rate_limit), limits.parse(settings.address_rate_limit)
        where = settings.rate_storage
        #: The Redis connections of the counts (none in memory), closed by :meth:`aclose` as the server stops:
        #: a pool of ours, or the storage's cluster client.
        self._pool: redis.asyncio.ConnectionPool | None = None
        self._cluster: Any = None
        self._memory: MovingWindows | None = None
        try:
            if where.startswith("memory://"):
                self._memory = MovingWindows()
                return
            if not where.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("not memory:// or a Redis URL")
            # the URL `--redis-url` takes, checked as every Redis URL of ours; ?cluster=true: a Redis Cluster
            qs = QueueSettings.from_url(where)
            timeouts: dict[str, Any] = {"socket_timeout": qs.socket_timeout,
                                        "socket_connect_timeout": qs.connect_timeout}
            if qs.cluster:
                # Each window is a key of its own, in whichever slot it hashes to: counted with the cluster
                # client, which the storage makes from the node named (a plain one met MOVED on other masters).
                parts = urlsplit(str(qs.url))
                storage = limits.storage.storage_from_string(
                    f"async+redis+cluster://{parts.netloc}", implementation="redispy",
                    **timeouts, **({"ssl": True} if parts.scheme == "rediss" else {}))
                self._cluster = getattr(getattr(storage, "bridge", None), "storage", None)
            else:
                self._pool = redis.asyncio.ConnectionPool.from_url(str(qs.url), **timeouts)
                # a pool of ours, to close; the options' annotation (float | str | bool) leaves out the pool that
                # the storage documents and takes
                given: dict[str, Any] = {"connection_pool": self._pool}
                scheme = "async+redis+unix://" if where.startswith("unix://") else "async+"  # limits' names
                storage = limits.storage.storage_from_string(scheme + str(qs.url).removeprefix("unix://"),
                                                             implementation="redispy", **given)
            self.limiter = limits.aio.strategies.MovingWindowRateLimiter(storage)
        except (ValueError, InvalidQueueSettings, limits.errors.ConfigurationError) as exc:
            raise InvalidApiSettings(f"rate_storage {redacted(where)!r}: {exc}") from None

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()
        if self._cluster is not None:
            await self._cluster.aclose()

    async def key(self, principal: Principal) -> None:
        await self._hit(self.per_key, "key", f"{principal.role}:{principal.name}")

    async def address(self, request: Request) -> None:
        await self._hit(self.per_address, "address", request.client.host if request.client else "-")

    async def _hit(self, item: limits.RateLimitItem, *ids: str) -> None:
        if self._memory is not None:
            wait = self._memory.hit(item, item.key_for(*ids), time.time())
            if wait is not None:
                raise RateLimited(f"more than {item} calls; try again later", max(1, math.ceil(wait)))
        elif not await self.limiter.hit(item, *ids):
            wait = math.ceil((await self.limiter.get_window_stats(item, *ids)).reset_time - time.time())
            raise RateLimited(f"more than {item} calls; try again later", max(1, wait))


class Batches:
    """The submissions of one server process run through the pipeline together: those that arrive while a call
    holds the loop are read in the loop's next turn, each handler queues its command here, and the first one
    schedules a single :meth:`Pipeline.run` for all of them (at most :attr:`MAX` at once), after every handler
    made ready in that turn has queued its own. One call, one clock and one round trip to the store per step for
    the batch, as a stream worker runs its batches; a handler alone waits for no one (its batch runs in the same
    turn of the loop). A failure of the run (a store unreachable: worth a retry, harmless to repeat) is every
    command's of the batch."""

    MAX = 64

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._pending: list[tuple[Submit, asyncio.Future[Outcome]]] = []
        #: Pipeline calls made, and commands run by them (their ratio is the mean batch).
        self.runs = 0
        self.commands = 0

    async def run(self, command: Submit) -> Outcome:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()
        self._pending.append((command, done))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await done

    def _flush(self) -> None:
        batch, self._pending = self._pending[:self.MAX], self._pending[self.MAX:]
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        now = self.backend.clock()  # the pipeline takes it as the submission time of an authenticated sender
        try:
            with self.backend.lock:
                outcomes = self.backend.pipeline.run([c for c, _ in batch], now)
        except Exception as exc:
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        self.runs += 1
        self.commands += len(batch)
        for (_, done), outcome in zip(batch, outcomes, strict=True):
            if not done.done():  # not a handler cancelled meanwhile
                done.set_result(outcome)


class ApiError(Exception):
    """An HTTP refusal with its typed JSON body."""

    def __init__(self, status: int, kind: str, message: str, field: str | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.field = status, kind, message, field
        self.extra = extra or {}
        self.headers = headers


def _error(status: int, kind: str, message: str, field: str | None = None, extra: dict[str, Any] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, "field": field}, **(extra or {})}
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------- bodies


class Submission(BaseModel):
    """A video request as an agency sends it: the fields of the library's ``VideoRequest`` but its submission
    time, which is the server's clock, never the body's; the policy judges every value, here only their JSON
    types are checked."""

    model_config = ConfigDict(strict=True, extra="forbid")
    request_id: str = Field(description="The agency's own id for the request (1-64 of A-Z a-z 0-9 - _).")
    agency_id: str = Field(description="The agency sending it: must be the key's agency.")
    case_number: str
    incident_type: str
    investigator_contact: str
    message: str
    area: dict[str, Any] = Field(description="A GeoJSON Polygon or MultiPolygon, lng/lat.")
    start: str = Field(description="ISO-8601 date-time with an offset.")
    end: str = Field(description="ISO-8601 date-time with an offset.")


class Rejection(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    reason: str = Field(min_length=1, max_length=500)


class Health(BaseModel):
    """A probe's answer: ``ok`` (alive), ``ready``, or ``unavailable`` (the store does not answer)."""

    status: str


class Readiness:
    """Whether the store answered its last probe (``Backend.ready``), asked again once that answer is
    :attr:`EVERY_S` old: probes need no key, so however many come, the store sees one a second from this
    process. The probe runs in a thread (a store that hangs holds the thread, not the event loop), and callers
    that come while it runs wait for its answer."""

    EVERY_S = 1.0

    def __init__(self, probe: Callable[[], None] | None) -> None:
        self.probe = probe
        self.ok = True
        self._at = -math.inf
        self._lock = asyncio.Lock()

    async def __call__(self) -> bool:
        if self.probe is None:
            return True
        async with self._lock:
            if time.monotonic() - self._at >= self.EVERY_S:
                try:
                    await asyncio.to_thread(self.probe)
                    self.ok = True
                except Exception as exc:  # whatever keeps the store from answering: not ready, and why, in the log
                    if self.ok:
                        log.warning("not ready: the store did not answer, or cannot be used (%s: %s)",
                                    type(exc).__name__, exc)
                    self.ok = False
                self._at = time.monotonic()
        return self.ok


class RequestStatus(BaseModel):
    request_id: str
    status: str


class SubmitResult(RequestStatus):
    codes: list[str]


class RequestList(BaseModel):
    requests: list[RequestStatus]


class QueueEntry(BaseModel):
    request_id: str
    agency_id: str
    case_number: str
    incident_type: str
    submitted_at: str
    start: str
    end: str
    area_sq_mi: float
    #: The area as GeoJSON; ``map`` is the path of its map page (the area, the index cells, camera density).
    area: dict[str, Any]
    map: str


class ReviewQueue(BaseModel):
    requests: list[QueueEntry]


class ReviewResult(RequestStatus):
    notified: int


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}


#: An endpoint that checks the key itself (not by a dependency) declares the bearer scheme in its schema.
_SECURED: dict[str, Any] = {"security": [{"HTTPBearer": []}]}


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The schema of a body that the handler validates itself: the model's, published with the app's others
    (``components``, added by :func:`_with_bodies`)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {**_SECURED, "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


class InvalidBody(Exception):
    """A body that is not JSON or not of the model's types: the errors as pydantic gives them, located in the
    body as FastAPI locates them (``("body", field, ...)``), for the one 422 of every endpoint."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid body")
        self.errors = errors


def _submission(raw: bytes) -> dict[str, Any]:
    """A submission's body as the pipeline takes it, its JSON types checked by :class:`Submission` (the pipeline
    and the policy judge the values)."""
    try:
        # the model's fields as validated (str, and the area's fresh dict): what model_dump gives, without copying
        return dict(Submission.model_validate_json(raw).__dict__)
    except pydantic.ValidationError as exc:
        raise InvalidBody([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) from None


# ---------------------------------------------------------------------------------------------- the front


#: An endpoint answered by :class:`_Front`: it takes the call's ``Request`` and the id of its path, if any.
HotEndpoint = Callable[..., Awaitable[Response]]


class _Front:
    """The app's outermost layer, before FastAPI's own: refuses (413) a body over ``limit`` bytes, by its
    Content-Length or while it arrives, before the app sees any of it (the app then reads the body from
    memory); and routes the two calls an evidence system makes most, submit and status, to their handlers itself.

    Those two go to the same handler functions that FastAPI declares (and publishes in the schema), called with
    the call's ``Request``; what they raise is answered by the app's own exception handlers, looked up as
    Starlette's exception middleware looks them up, so every answer, refusal and header is the one FastAPI's
    routing would give. What it saves is the layers between (FastAPI's telemetry, server-error, exception,
    exit-stack and routing middleware, the match against every route, the endpoint's wrapper). Anything else
    (another method, a status id out of its pattern, a trailing slash) goes through FastAPI as before. An
    exception without a handler of its own is answered by the app's catch-all (500, or 503 when the store is
    unreachable) and raised on to the server, which logs it: what Starlette's server-error layer does."""

    def __init__(self, app: ASGIApp, limit: int, submit: HotEndpoint, status: HotEndpoint,
                 handlers: dict[Any, Callable[[Request, Any], Any]]) -> None:
        self.app = app
        self.limit = limit
        self.submit, self.status = submit, status
        #: The app's exception handlers (a dict FastAPI fills as they are declared), the catch-all among them.
        self.handlers = handlers

    async def _refuse(self, scope: Scope, send: Send) -> None:
        await _error(413, "body_too_large", f"the body is larger than {self.limit} bytes", "body")(
            scope, _no_receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            if not length.isdigit():
                await _error(400, "invalid_header", "Content-Length is not a number", "Content-Length")(
                    scope, _no_receive, send)
            else:
                await self._refuse(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:  # bounded: every message adds to size, and size stops at the limit
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        given = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        method, path = scope["method"], scope["path"]
        if method == "POST" and path == _SUBMIT:
            await self._answer(scope, replay, send, self.submit)
        elif method == "GET" and path.startswith(_STATUS) and _ID_RE.fullmatch(path, len(_STATUS)):
            await self._answer(scope, replay, send, self.status, path[len(_STATUS):])
        else:
            await self.app(scope, replay, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, endpoint: HotEndpoint,
                      *args: str) -> None:
        request = Request(scope, receive, send)
        try:
            response: Response = await endpoint(request, *args)
        except Exception as exc:
            kind = next((t for t in type(exc).__mro__ if t in self.handlers), None)
            if kind is None:
                raise
            response = await self.handlers[kind](request, exc)  # the app's handlers are all async
            if kind is Exception:  # unexpected: answered, then raised on for the server to log
                await response(scope, receive, send)
                raise
        await response(scope, receive, send)


class _App(FastAPI):
    """FastAPI behind :class:`_Front`, which :func:`create_app` sets."""

    front: _Front

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The call through FastAPI's own middleware and routing."""
        await super().__call__(scope, receive, send)


_SUBMIT, _STATUS = "/v1/requests", "/v1/requests/"
_ID_RE = re.compile(_ID.strip("^$"))


async def _no_receive() -> MutableMapping[str, Any]:
    return {"type": "http.disconnect"}


# ---------------------------------------------------------------------------------------------- the app


def create_app(backend: Backend, settings: ApiSettings | None = None, residents: ResidentPages | None = None
               ) -> _App:
    """The ASGI app over ``backend`` (see :func:`dispatcher.api.backend.open_backend`), with the residents'
    pages under ``/r`` when ``residents`` is given."""
    s = settings or ApiSettings()
    throttle = Throttle(s)
    batches = Batches(backend)
    readiness = Readiness(backend.ready)

    async def expire_due(expire: Callable[[datetime], int]) -> None:
        while True:
            try:
                with backend.lock:
                    n = expire(backend.clock())
                if n:
                    log.info("deleted %d records past their retention", n)
            except Exception:  # the next round tries again; the API goes on serving
                log.exception("deleting the records past their retention failed")
            await asyncio.sleep(s.expire_every_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        expiry = None if backend.expire is None else asyncio.create_task(expire_due(backend.expire))
        yield
        if expiry is not None:
            expiry.cancel()
        await throttle.aclose()  # on the loop that opened them

    app = _App(title="geodispatch", version="1", summary="Police video requests to camera owners, without "
                  "agencies learning who was asked.", openapi_url="/openapi.json", docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.state.backend = backend
    app.state.batches = batches
    bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer gdk_...`.")

    async def authenticated(request: Request) -> Principal:
        """The caller's principal, from its ``Authorization: Bearer`` key (as :class:`HTTPBearer` reads it), its
        key's calls counted; a missing or invalid key counts against the address and is refused."""
        # on the event loop, as the handlers are (the module's docstring says why): one hash, one lookup
        scheme, _, key = (request.headers.get("authorization") or "").partition(" ")
        key = key.strip()
        got = backend.credentials.authenticate(key) if key and scheme.lower() == "bearer" else None
        if got is None:
            await throttle.address(request)  # guessing keys costs the guesser's address its calls
            raise NotAuthenticated("missing or invalid API key")
        await throttle.key(got)
        return got

    async def principal(request: Request,
                        _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        # the bearer scheme declared (the OpenAPI schema's security), read by authenticated()
        return await authenticated(request)

    async def agency_of(request: Request) -> str:
        """The hot endpoints' check, without FastAPI's dependency solving: the key, then its role."""
        who = await authenticated(request)
        if who.role != AGENCY:
            raise NotPermitted("this endpoint is for agencies")
        return who.name

    async def agency(who: Annotated[Principal, Depends(principal)]) -> str:
        if who.role != AGENCY:
            raise NotPermitted("this endpoint is for agencies")
        return who.name

    async def reviewer(who: Annotated[Principal, Depends(principal)]) -> str:
        if who.role != REVIEWER:
            raise NotPermitted("this endpoint is for reviewers")
        return who.name

    # -- handlers of errors: one JSON shape -------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.kind, exc.message, exc.field, exc.extra, exc.headers)

    def _unauthorized(message: str) -> JSONResponse:
        return _error(401, "unauthorized", message, "Authorization", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(NotAuthenticated)
    async def _unauthenticated(_: Request, exc: NotAuthenticated) -> JSONResponse:
        return _unauthorized(str(exc))

    def _known(request: Request) -> bool:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and backend.credentials.authenticate(key.strip()) is not None

    @app.exception_handler(RateLimited)
    async def _limited(_: Request, exc: RateLimited) -> JSONResponse:
        return _error(429, "rate_limited", str(exc), headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(NotPermitted)
    async def _forbidden(_: Request, exc: NotPermitted) -> JSONResponse:
        return _error(403, "forbidden", str(exc), "Authorization")

    async def _invalid_input(request: Request, errors: list[Any]) -> JSONResponse:
        # a body that is not JSON, or a path parameter out of its pattern, is found before the key is checked: an
        # unknown caller still learns only 401, and it counts against the address as any call without a key
        if not _known(request):
            try:
                await throttle.address(request)
            except RateLimited as exc:
                return await _limited(request, exc)
            return _unauthorized("missing or invalid API key")
        errs = [_field_error(e) for e in errors]
        first = errs[0] if errs else {"field": "body", "message": "invalid", "type": ""}
        kind = "invalid_json" if first["type"] == "json_invalid" else "invalid_input"
        return _error(422, kind, f"{first['field']}: {first['message']}", first["field"],
                      {"errors": errs[:20]})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _invalid_input(request, list(exc.errors()))

    @app.exception_handler(InvalidBody)
    async def _invalid_body(request: Request, exc: InvalidBody) -> JSONResponse:
        return await _invalid_input(request, exc.errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, kind, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if is_transient(exc):
            return _error(503, "unavailable", "the store is unreachable; try again (a repeat is harmless)",
                          headers={"Retry-After": "1"})
        return _error(500, "internal_error", "the call failed; see the server's log")

    # -- operations: a load balancer's probes, without a key ----------------------------------------------

    @app.get("/healthz", tags=["operations"], response_model=Health)
    async def healthz() -> Any:
        """Liveness: the server answers. Nothing else is looked at, nothing is said but that."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], response_model=Health,
             responses={503: {"model": Health, "description": "The store does not answer."}})
    async def readyz() -> Response:
        """Readiness: 200 while the store answers (checked on a connection of its own, in a thread, at most once
        every second whoever asks, within about a second), else 503. The same few bytes whatever the store holds."""
        ready = await readiness()
        return _json({"status": "ready"} if ready else {"status": "unavailable"}, 200 if ready else 503)

    # -- agencies ---------------------------------------------------------------------------------------

    # The two calls an evidence system makes most, submit and status, are plain handlers of the Request: the key
    # checked, the body validated against the same model (pydantic's own JSON parser, one pass) and the answer
    # encoded by orjson, without FastAPI's dependency solving, body decoding and response model, which cost as
    # much as the rest of the HTTP layer. Their schema stays whole: the body, the answers and the security are
    # declared below, from the same models.

    @app.post("/v1/requests", status_code=202, tags=["agencies"], openapi_extra=_body_schema(Submission),
              responses={202: {"model": SubmitResult, "description": "The request's status."},
                         **_errors(401, 403, 413, 422, 503)})
    async def submit_request(request: Request) -> Response:
        """Submit a video request. 202 with its status (``submitted`` awaiting review, or further); 422 with the
        rule codes when the policy refuses it. Sending the same request again returns its status."""
        me = await agency_of(request)
        outcome = await batches.run(Submit(_submission(await request.body()), agency=me))
        seen = submitters_outcome(outcome, None, me)
        result = {"request_id": seen["request_id"], "status": seen["outcome"], "codes": list(seen["codes"])}
        if outcome.refused:
            raise ApiError(422, "request_refused", "the request was refused: " + ", ".join(result["codes"]),
                           "body", result)
        return _json(result, 202)

    @app.get("/v1/requests/{request_id}", tags=["agencies"], openapi_extra=_SECURED,
             responses={200: {"model": RequestStatus, "description": "The request's status."},
                        **_errors(401, 403, 404, 422, 503)})
    async def get_request(request: Request, request_id: Annotated[str, Path(pattern=_ID)]) -> Response:
        """The status of one of the agency's own requests; any other id is not found."""
        me = await agency_of(request)
        with backend.lock:
            got = backend.workflow.store.get_request(scoped_id(me, request_id))
        if got is None:
            raise _not_found()
        return _json({"request_id": request_id, "status": got[0]})

    @app.get("/v1/requests", response_model=RequestList, tags=["agencies"], responses=_errors(401, 403, 503))
    async def list_requests(me: Annotated[str, Depends(agency)]) -> Any:
        """The agency's own requests, newest first, with their status."""
        mine = f"{me}:"
        with backend.lock:
            store = backend.workflow.store
            ids = [r for r in store.agency_request_ids(me, s.list_limit) if r.startswith(mine)]
            found = store.lookup(ids, [])[0]
        return {"requests": [{"request_id": r[len(mine):], "status": got[0]}
                             for r, got in zip(ids, found, strict=True) if got is not None]}

    # -- reviewers --------------------------------------------------------------------------------------

    @app.get("/v1/review/queue", response_model=ReviewQueue, tags=["reviewers"], responses=_errors(401, 403, 503))
    async def review_queue(_: Annotated[str, Depends(reviewer)]) -> Any:
        """Requests awaiting review, oldest submission first (from the store's index of submitted requests)."""
        with backend.lock:
            store = backend.workflow.store
            ids = store.submitted_ids(s.list_limit)
            found = store.lookup(ids, [])[0]
        fields = ("agency_id", "case_number", "incident_type", "submitted_at", "start", "end", "area_sq_mi", "area")
        queue = [{"request_id": r, **{k: got[1][k] for k in fields}, "map": f"/v1/review/{r}/map"}
                 for r, got in zip(ids, found, strict=True) if got is not None and got[0] == SUBMITTED]
        return {"requests": queue}

    @app.get("/v1/review/{request_id}/map", response_class=HTMLResponse, tags=["reviewers"],
             responses=_errors(401, 403, 404, 503))
    async def review_map(request_id: Annotated[str, Path(pattern=_SCOPED_ID)], _: Annotated[str, Depends(reviewer)]
                   ) -> HTMLResponse:
        """A request's map for its review: the area, the index cells it is resolved with, and camera density
        (hexagons of at least 10 cameras, never a camera). One self-contained page, no script from elsewhere."""
        with backend.lock:
            try:
                m = build_request_map(request_id, backend.workflow.store, backend.pipeline.index,
                                      backend.workflow.registry)
            except UnknownRequest:
                raise _not_found() from None
        return HTMLResponse(request_map_html(m), headers={"Content-Security-Policy": page_csp(),
                                                          "Cache-Control": "no-store"})

    @app.post("/v1/review/{request_id}/approve", response_model=ReviewResult, tags=["reviewers"],
              responses=_errors(401, 403, 404, 409, 422, 503))
    async def approve(request_id: Annotated[str, Path(pattern=_SCOPED_ID)], me: Annotated[str, Depends(reviewer)]
                ) -> Any:
        """Approve a submitted request and dispatch it. An approved request whose dispatch did not finish is
        dispatched again (harmless: what was sent is not sent twice)."""
        wf = backend.workflow
        with backend.lock:
            state = _state(wf, request_id)
            if state == SUBMITTED:
                _move(lambda: wf.approve(request_id, me, backend.clock()))
            elif state != APPROVED:
                raise ApiError(409, "conflict", f"the request is {state}, not awaiting review", "request_id")
            outcome = backend.pipeline.run([Dispatch(request_id)], backend.clock())[0]
        return {"request_id": request_id, "status": outcome.status, "notified": outcome.notified}

    @app.post("/v1/review/{request_id}/reject", response_model=RequestStatus, tags=["reviewers"],
              responses=_errors(401, 403, 404, 409, 422, 503))
    async def reject(request_id: Annotated[str, Path(pattern=_SCOPED_ID)], body: Rejection,
               me: Annotated[str, Depends(reviewer)]) -> Any:
        """Reject a submitted request, with the reason (kept in the audit log)."""
        wf = backend.workflow
        with backend.lock:
            _state(wf, request_id)
            _move(lambda: wf.reject(request_id, me, backend.clock(), body.reason))
            return {"request_id": request_id, "status": wf.state(request_id)}

    from dispatcher.api.evidence import evidence_router  # it imports this module's errors

    app.include_router(evidence_router(backend, agency, principal, s.list_limit))
    if residents is not None:
        app.include_router(residents_router(backend, residents, throttle.address))
    app.front = _Front(app.routed, s.body_limit, submit_request, get_request, app.exception_handlers)
    _with_bodies(app, Submission)
    return app


def _with_bodies(app: FastAPI, *models: type[BaseModel]) -> None:
    """The app's schema with the models of the bodies its handlers validate themselves (:func:`_body_schema`)
    among its components, as FastAPI publishes those of the bodies it validates."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = plain().setdefault("components", {}).setdefault("schemas", {})
            for m in models:
                schemas[m.__name__] = m.model_json_schema(ref_template="#/components/schemas/{model}")
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _field_error(e: Any) -> dict[str, str]:
    """One validation error: the field (dotted path in the body, or the parameter), what is wrong, its kind."""
    loc = tuple(e.get("loc", ()))
    kind, msg = str(e.get("type", "")), str(e.get("msg", ""))[:300]
    if kind == "json_invalid":  # the location is the offset where parsing failed
        detail = (e.get("ctx") or {}).get("error")
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        return {"field": "body", "message": f"not JSON{at}" + (f" ({detail})" if detail else ""), "type": kind}
    return {"field": ".".join(str(p) for p in loc[1:]) or (str(loc[0]) if loc else "body"), "message": msg,
            "type": kind}


def _not_found() -> ApiError:
    """The one answer for an id the caller has no request under, whoever holds it."""
    return ApiError(404, "not_found", "no such request", "request_id")


def _state(wf: Any, request_id: str) -> str:
    try:
        return str(wf.state(request_id))
    except UnknownRequest:
        raise _not_found() from None


def _move(step: Callable[[], None]) -> None:
    try:
        step()
    except InvalidTransition as exc:
        raise ApiError(409, "conflict", str(exc), "request_id") from None

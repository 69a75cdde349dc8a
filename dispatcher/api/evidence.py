"""The evidence side of the HTTP API: an agency's shared clips (custody records and the bytes, their SHA-256
checked before they are served), residents' public posts in the agency's jurisdiction, and a resident posting a
clip publicly or withdrawing the post (authenticated by the resident's API key, as posting is).

Scoping is the agency routes' (``app.py``): an agency names its own request ids, looked up as
``<agency>:<id>``, so another agency's request is "no such request", exactly as a missing one. What an agency
reads here is :class:`~dispatcher.evidence.SharedClip` and :class:`~dispatcher.evidence.Post`, which hold no
owner id, camera id or place finer than a coarse H3 cell.

The module has no ``from __future__ import annotations``: FastAPI reads the handlers' annotations at run time.
"""

import base64
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from dispatcher.api.app import ApiError, _errors, _not_found
from dispatcher.api.backend import Backend
from dispatcher.api.credentials import RESIDENT, Principal
from dispatcher.errors import (
    EvidenceTampered,
    InvalidClip,
    InvalidResolution,
    NotPermitted,
    UnknownCamera,
    UnknownClip,
)
from dispatcher.evidence import POST_RES, EvidenceStore, Post, SharedClip
from dispatcher.evidence.places import COARSEST_POST_RES, in_jurisdiction
from dispatcher.workflow.pipeline import scoped_id

__all__ = ["evidence_router"]

log = logging.getLogger(__name__)

_ID = r"^[A-Za-z0-9_-]{1,64}$"
_REF = r"^[0-9a-f]{24}$"


class CustodyRecord(BaseModel):
    """Chain of custody of one shared clip: the share, the clip's SHA-256, size, media type and recorded time,
    when and by whom it was shared (a reference stable within the request, meaningless outside it)."""

    share_id: str = Field(description="The share's one reference: the path of its bytes and record, and the id the "
                          "request's view lists it under.")
    request_id: str
    sha256: str
    size: int
    media_type: str
    recorded_start: str
    recorded_end: str
    shared_at: str
    shared_by: str


class SharedClips(BaseModel):
    request_id: str
    clips: list[CustodyRecord]


class PublicPost(BaseModel):
    """A resident's public post: a clip, its recorded time, and a coarse H3 cell (hex), never the home point."""

    post_id: str
    cell: str
    res: int
    recorded_start: str
    recorded_end: str
    posted_at: str
    sha256: str
    size: int
    media_type: str


class PublicPosts(BaseModel):
    posts: list[PublicPost]


class NewPost(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    clip_id: str = Field(pattern=r"^[0-9a-f]{24}$", description="One of the resident's clips.")
    res: int = Field(default=POST_RES, ge=COARSEST_POST_RES, le=POST_RES,
                     description=f"The H3 resolution of the post's place ({POST_RES}, or coarser).")


_BYTES: dict[int | str, dict[str, Any]] = {200: {
    "description": "The clip's bytes; `Content-Digest` and `X-Content-SHA256` give their SHA-256.",
    "content": {"video/*": {}, "image/*": {}}}}


def _moment(value: str, field: str) -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(422, "invalid_input", f"{field}: not an ISO-8601 date-time", field) from None
    if t.utcoffset() is None:
        raise ApiError(422, "invalid_input", f"{field}: give an offset (Z or +hh:mm)", field)
    return t


def _bytes(data: bytes, sha256: str, media_type: str, name: str) -> Response:
    digest = base64.b64encode(bytes.fromhex(sha256)).decode()
    return Response(data, media_type=media_type, headers={
        "Content-Digest": f"sha-256=:{digest}:", "X-Content-SHA256": sha256, "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff", "Content-Disposition": f'attachment; filename="{name}"'})


def _tampered(exc: EvidenceTampered) -> ApiError:
    log.error("evidence integrity: %s", exc)
    return ApiError(500, "evidence_tampered", "the stored clip does not match its recorded SHA-256; it is not "
                    "served, and operators are alerted")


def evidence_router(backend: Backend, agency: Callable[..., Coroutine[Any, Any, str]],
                    principal: Callable[..., Coroutine[Any, Any, Principal]], list_limit: int) -> APIRouter:
    """The evidence routes over ``backend``, with the app's ``agency`` and ``principal`` dependencies."""
    router = APIRouter()

    def store() -> EvidenceStore:
        if backend.evidence is None:
            raise ApiError(404, "not_found", "this server keeps no evidence")
        return backend.evidence

    def own_request(me: str, request_id: str) -> str:
        rid = scoped_id(me, request_id)
        if backend.workflow.store.get_request(rid) is None:
            raise _not_found()
        return rid

    async def resident(who: Annotated[Principal, Depends(principal)]) -> int:
        if who.role != RESIDENT:
            raise NotPermitted("this endpoint is for residents")
        return int(who.name)

    def record(s: SharedClip, request_id: str) -> dict[str, Any]:
        return s.to_json(request_id)

    @router.get("/v1/requests/{request_id}/clips", response_model=SharedClips, tags=["agencies"],
                responses=_errors(401, 403, 404, 422, 503))
    async def shared_clips(request_id: Annotated[str, Path(pattern=_ID)], me: Annotated[str, Depends(agency)]
                           ) -> Any:
        """The clips residents shared for one of the agency's requests, with their custody records."""
        with backend.lock:
            rid = own_request(me, request_id)
            got = store().shared_for(rid)
        return {"request_id": request_id, "clips": [record(s, request_id) for s in got[:list_limit]]}

    def opened(me: str, request_id: str, share_id: str) -> tuple[SharedClip, bytes]:
        with backend.lock:
            rid = own_request(me, request_id)
            try:
                return store().open_shared(rid, share_id)
            except UnknownClip:
                raise ApiError(404, "not_found", "no such shared clip", "share_id") from None
            except EvidenceTampered as exc:
                raise _tampered(exc) from None

    @router.get("/v1/requests/{request_id}/clips/{share_id}", response_class=Response, tags=["agencies"],
                responses={**_BYTES, **_errors(401, 403, 404, 422, 500, 503)})
    async def download_clip(request_id: Annotated[str, Path(pattern=_ID)],
                            share_id: Annotated[str, Path(pattern=_REF)], me: Annotated[str, Depends(agency)]
                            ) -> Response:
        """A shared clip's bytes, served only if they still have the SHA-256 recorded when they were stored."""
        rec, data = opened(me, request_id, share_id)
        return _bytes(data, rec.sha256, rec.media_type, rec.share_id)

    @router.get("/v1/requests/{request_id}/clips/{share_id}/custody", response_model=CustodyRecord,
                tags=["agencies"], responses=_errors(401, 403, 404, 422, 500, 503))
    async def custody(request_id: Annotated[str, Path(pattern=_ID)], share_id: Annotated[str, Path(pattern=_REF)],
                      me: Annotated[str, Depends(agency)]) -> Any:
        """The chain-of-custody record of a shared clip (its bytes checked too)."""
        return record(opened(me, request_id, share_id)[0], request_id)

    @router.get("/v1/posts", response_model=PublicPosts, tags=["agencies"], responses=_errors(401, 403, 422, 503))
    async def public_posts(start: Annotated[str, Query(description="ISO-8601 date-time with an offset.")],
                           end: Annotated[str, Query(description="ISO-8601 date-time with an offset.")],
                           me: Annotated[str, Depends(agency)]) -> Any:
        """Residents' public posts inside the agency's jurisdiction (a post's cell centre in it) recorded during
        the window, oldest first."""
        t0, t1 = _moment(start, "start"), _moment(end, "end")
        if t1 <= t0:
            raise ApiError(422, "invalid_input", "end: not after start", "end")
        jur = backend.workflow.registry.get(me).jurisdiction
        with backend.lock:
            got = store().posts_in(jur, t0, t1, list_limit)
        return {"posts": [p.to_json() for p in got]}

    @router.get("/v1/posts/{post_id}/clip", response_class=Response, tags=["agencies"],
                responses={**_BYTES, **_errors(401, 403, 404, 422, 500, 503)})
    async def post_clip(post_id: Annotated[str, Path(pattern=_REF)], me: Annotated[str, Depends(agency)]
                        ) -> Response:
        """The clip of a public post in the agency's jurisdiction."""
        jur = backend.workflow.registry.get(me).jurisdiction
        with backend.lock:
            try:
                post, data = store().open_post(post_id)
            except UnknownClip:
                post, data = None, b""
            except EvidenceTampered as exc:
                raise _tampered(exc) from None
        if post is None or not in_jurisdiction(post.cell, post.res, jur):
            raise ApiError(404, "not_found", "no such public post", "post_id")
        return _bytes(data, post.sha256, post.media_type, post.post_id)

    @router.post("/v1/posts", status_code=201, response_model=PublicPost, tags=["residents"],
                 responses=_errors(401, 403, 404, 413, 422, 503))
    async def create_post(body: NewPost, owner: Annotated[int, Depends(resident)]) -> Any:
        """Post one of the resident's clips publicly, placed at the H3 cell of its camera at ``res`` (8 or
        coarser), never at the camera's point. Posting a clip again returns its post."""
        try:
            with backend.lock:
                post: Post = store().post(owner, body.clip_id, backend.clock(), body.res)
        except (UnknownClip, UnknownCamera):
            raise ApiError(404, "not_found", "no such clip of yours", "clip_id") from None
        except (InvalidClip, InvalidResolution) as exc:
            raise ApiError(422, "invalid_input", str(exc), "res") from None
        return post.to_json()

    @router.delete("/v1/posts/{post_id}", status_code=204, response_class=Response, tags=["residents"],
                   responses=_errors(401, 403, 404, 422, 503))
    async def withdraw_post(post_id: Annotated[str, Path(pattern=_REF)], owner: Annotated[int, Depends(resident)]
                            ) -> Response:
        """Withdraw one of the resident's public posts: it is gone from the posts agencies find, at once. Another
        resident's post is "no such post", as a missing one."""
        try:
            with backend.lock:
                store().withdraw(owner, post_id)
        except UnknownClip:
            raise ApiError(404, "not_found", "no such public post of yours", "post_id") from None
        return Response(status_code=204)

    return router

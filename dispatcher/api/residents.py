"""The residents' pages: a link from a notification opens the request's page (the agency, its message, the window
and the area on a map, the resident's own clips inside the window to pick), whose forms share clips, decline, opt
out of every request, or opt back in.

Every link and every form carries a signed, expiring token binding (request, resident, action)
(:mod:`dispatcher.dispatch.links`); the resident is whoever the token names, never a field of the form. A GET
changes nothing; a change is a POST of a form that holds its action's token and a CSRF value matching the
page's ``SameSite=Strict`` cookie, from the page's own origin. Forged, altered, expired or another action's
tokens, a resident not notified of the request, or an answer given twice (share and decline are one-shot) get a
page with a 4xx status and change nothing.

The pages carry no script at all: their Content-Security-Policy (sent as a header) allows only the page's own
style by its hash, ``data:`` images and forms posted to the page's origin, as strict as the maps'.
"""

import base64
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import shapely
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from dispatcher.api.backend import Backend
from dispatcher.dispatch.links import DECLINE, ONE_SHOT, OPT_IN, OPT_OUT, SHARE, VIEW, LinkClaim, LinkSigner
from dispatcher.errors import (
    DispatchError,
    ExpiredLink,
    InvalidChoice,
    InvalidClip,
    InvalidLink,
    QueueUnavailable,
    RateLimited,
    ShareRefused,
    UnknownAgency,
    UnknownClip,
)
from dispatcher.evidence.model import Clip
from dispatcher.reports.maps import svg_path
from dispatcher.reports.pages import BASE_STYLE, esc
from dispatcher.reports.request_map import HEIGHT, WIDTH, Frame
from dispatcher.workflow.review import DISPATCHED, MAX_CLIPS

__all__ = ["ResidentPages", "residents_router"]

CSRF_COOKIE = "gd_csrf"
#: A form body larger than this is refused before it is parsed (the app's body limit applies as well).
MAX_FORM_BYTES = 16 * 1024

_STYLE = BASE_STYLE + """
main { max-width: 960px; }
svg.map { width: 100%; max-width: 900px; height: auto; border: 1px solid var(--line); background: #f4f6f8; }
svg.map path { fill: #3b6fd8; fill-opacity: 0.25; stroke: #1f4fb0; stroke-width: 2; }
form { margin: 12px 0; }
fieldset { border: 1px solid var(--line); }
button { font: inherit; padding: 6px 14px; }
.refusal { color: #8a1c1c; }
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
CSP = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src data:; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


@dataclass
class ResidentPages:
    """What the pages need beside the backend (whose evidence store holds the clips): the link signer."""

    links: LinkSigner

    @property
    def secure(self) -> bool:
        return self.links.settings.base_url.startswith("https://")


class _Refusal(Exception):
    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def _document(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<meta name="referrer" '
            f'content="same-origin">\n<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n'
            f"{body}\n</body>\n</html>\n")


def _html(status: int, title: str, body: str, cookie: tuple[str, bool] | None = None) -> HTMLResponse:
    resp = HTMLResponse(_document(title, body), status_code=status, headers=_HEADERS)
    if cookie is not None:
        resp.set_cookie(CSRF_COOKIE, cookie[0], max_age=3600, path="/r", secure=cookie[1], httponly=True,
                        samesite="strict")
    return resp


def _refusal_page(r: _Refusal) -> HTMLResponse:
    return _html(r.status, r.title, f'<header><h1 class="refusal">{esc(r.title)}</h1></header>\n'
                 f"<main><p>{esc(r.message)}</p><p>Nothing was changed.</p></main>")


def _map_svg(area_geojson: dict[str, Any]) -> str:
    area = shapely.from_geojson(orjson.dumps(area_geojson).decode())
    frame = Frame.fit(area.bounds)
    return (f'<svg class="map" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="The request\'s area">'
            f'<path fill-rule="evenodd" d="{svg_path(frame.geometry(area))}"></path></svg>')


def _clip_label(clip: Clip) -> str:
    return f"camera {clip.camera_id}, {clip.start.isoformat()} to {clip.end.isoformat()}"


def residents_router(backend: Backend, pages: ResidentPages,
                     limit: Callable[[Request], Awaitable[None]] | None = None) -> APIRouter:
    """The routes under ``/r``: ``GET /r/{token}`` (the page) and ``POST /r/act`` (its forms). ``limit`` counts
    each call against its client's address (raising :class:`RateLimited` over the limit)."""
    router = APIRouter(prefix="/r", tags=["residents"])
    links = pages.links
    base = urlsplit(links.settings.base_url)
    origin = f"{base.scheme}://{base.netloc}"

    def claim_of(token: object, actions: Sequence[str]) -> LinkClaim:
        try:
            return links.verify(token, actions)
        except ExpiredLink:
            raise _Refusal(410, "This link has expired", "Ask for the request's page again from a newer "
                           "notification, or ignore it.") from None
        except InvalidLink:
            raise _Refusal(403, "This link is not valid", "The link was changed, is not ours, or is not for "
                           "this action.") from None

    def request_of(claim: LinkClaim) -> dict[str, Any]:
        """The request, if the token's resident was notified of it (any other answer is the same refusal)."""
        store = backend.workflow.store
        got = store.get_request(claim.request_id)
        if got is None or not store.was_notified(claim.request_id, claim.owner_id):
            raise _Refusal(404, "No such request", "There is no request for you at this link.")
        return {"state": got[0], **got[1]}

    def answered(claim: LinkClaim) -> str | None:
        return next((c for o, c, _ in backend.workflow.store.choices(claim.request_id) if o == claim.owner_id),
                    None)

    def agency_name(agency_id: str) -> str:
        try:
            return backend.workflow.registry.get(agency_id).name
        except UnknownAgency:
            return agency_id

    def clips_in(claim: LinkClaim, req: dict[str, Any]) -> list[Clip]:
        """The resident's clips recorded inside the window (those a share may hold)."""
        if backend.evidence is None:
            return []
        start, end = datetime.fromisoformat(req["start"]), datetime.fromisoformat(req["end"])
        return [c for c in backend.evidence.clips_of(claim.owner_id, start, end)
                if c.start >= start and c.end <= end][:MAX_CLIPS]

    def form(claim: LinkClaim, action: str, csrf: str, label: str, inner: str = "") -> str:
        token = links.token(claim.request_id, claim.owner_id, action)
        return (f'<form method="post" action="/r/act" class="{esc(action)}">'
                f'<input type="hidden" name="token" value="{esc(token)}">'
                f'<input type="hidden" name="csrf" value="{esc(csrf)}">{inner}'
                f'<button type="submit" name="do" value="{esc(action)}">{esc(label)}</button></form>')

    def page_body(claim: LinkClaim, req: dict[str, Any], csrf: str) -> str:
        name = agency_name(str(req["agency_id"]))
        head = (f"<header><h1>Video request from {esc(name)}</h1>\n"
                f'<p class="note">Case {esc(req["case_number"])} ({esc(req["incident_type"])}). The agency does '
                f"not know you were asked, and learns nothing unless you share.</p></header>\n")
        parts = [f'<p class="message">{esc(req["message"])}</p>',
                 f'<p class="window">From <time>{esc(req["start"])}</time> to <time>{esc(req["end"])}</time></p>',
                 _map_svg(req["area"])]
        choice = answered(claim)
        if req["state"] != DISPATCHED:
            parts.append(f"<p>This request is {esc(req['state'])}; it takes no answers now.</p>")
        elif choice is not None:
            parts.append(f'<p class="answered">You answered this request: {esc(choice)}.</p>')
        else:
            clips = clips_in(claim, req)
            boxes = "".join(f'<label><input type="checkbox" name="clip" value="{esc(c.clip_id)}"> '
                            f"{esc(_clip_label(c))}</label><br>" for c in clips)
            if clips:
                parts.append(form(claim, SHARE, csrf, "Share the clips I picked",
                                  f"<fieldset><legend>Your clips inside the window</legend>{boxes}</fieldset>"))
            else:
                parts.append("<p>None of your cameras has a clip inside the window.</p>")
            parts.append(form(claim, DECLINE, csrf, "Decline this request"))
        # the one of opt out and opt back in that applies: the resident's own state, for the token's resident only
        if backend.workflow.is_opted_out(claim.owner_id):
            parts.append('<p class="opted_out">You have opted out of all requests: you get no new ones.</p>')
            parts.append(form(claim, OPT_IN, csrf, "Opt back in to requests"))
        else:
            parts.append(form(claim, OPT_OUT, csrf, "Opt out of all requests"))
        return head + "<main>\n" + "\n".join(parts) + "\n</main>"

    def show(token: str, csrf: str) -> HTMLResponse:
        claim = claim_of(token, (VIEW, DECLINE, OPT_OUT))
        with backend.lock:
            req = request_of(claim)
            body = page_body(claim, req, csrf)
        return _html(200, "Video request", body, (csrf, pages.secure))

    def act(fields: dict[str, list[str]], cookie: str | None) -> HTMLResponse:
        csrf = (fields.get("csrf") or [""])[0]
        if not cookie or not csrf or not hmac.compare_digest(cookie.encode(), csrf.encode()):
            raise _Refusal(403, "This form has expired", "Open the link from your notification again and "
                           "resubmit.")
        claim = claim_of((fields.get("token") or [""])[0], (SHARE, DECLINE, OPT_OUT, OPT_IN))
        now = backend.clock()
        wf = backend.workflow
        with backend.lock:
            request_of(claim)
            if claim.action in ONE_SHOT and answered(claim) is not None:
                raise _Refusal(409, "Already answered", "You have already answered this request.")
            try:
                if claim.action == SHARE:
                    picked = _picked(fields.get("clip") or [])
                    req = request_of(claim)
                    if backend.evidence is None:
                        raise _Refusal(409, "Sharing is not available", "Clips cannot be shared here.")
                    if req["state"] != DISPATCHED:
                        raise _Refusal(409, "This request takes no answers", f"The request is {req['state']}.")
                    if not picked or not set(picked) <= {c.clip_id for c in clips_in(claim, req)}:
                        raise _Refusal(422, "Pick your clips", "Pick one or more of your clips listed on the page.")
                    # the evidence store checks again (recipient, owner, window) and records the custody, all or
                    # none; then the answer is recorded
                    backend.evidence.share(claim.request_id, claim.owner_id, picked, now)
                    wf.share(claim.request_id, claim.owner_id, picked, now)
                    done = f"You shared {len(picked)} clip{'s' if len(picked) != 1 else ''}."
                elif claim.action == DECLINE:
                    wf.decline(claim.request_id, claim.owner_id, now)
                    done = "You declined this request. The agency is not told."
                elif claim.action == OPT_OUT:
                    wf.opt_out(claim.owner_id, now)
                    done = "You will get no more requests."
                else:
                    wf.opt_in(claim.owner_id, now)
                    done = "You will get requests again."
            except (InvalidChoice, ShareRefused, InvalidClip, UnknownClip) as exc:
                raise _Refusal(409, "This answer was refused", str(exc)) from None
        return _html(200, "Done", f"<header><h1>Done</h1></header>\n<main><p class=\"done\">{esc(done)}</p></main>")

    @router.get("/{token}", response_class=HTMLResponse, summary="A resident's page for one request")
    async def resident_page(token: str, request: Request) -> HTMLResponse:
        """The request's page for the resident the token names; changes nothing."""
        if (limited := await _limited(limit, request)) is not None:
            return limited
        csrf = request.cookies.get(CSRF_COOKIE) or ""
        if not (16 <= len(csrf) <= 64 and csrf.isascii() and csrf.replace("-", "").replace("_", "").isalnum()):
            csrf = secrets.token_urlsafe(24)
        return _guarded(lambda: show(token, csrf))

    @router.post("/act", response_class=HTMLResponse, summary="A resident's answer (a form of the page)")
    async def resident_act(request: Request) -> HTMLResponse:
        """Share picked clips, decline, opt out or opt back in: a form posted from the page."""
        if (limited := await _limited(limit, request)) is not None:
            return limited
        sent_from = request.headers.get("origin")
        if sent_from is not None and sent_from != origin and sent_from != _own_origin(request):
            return _refusal_page(_Refusal(403, "This form was not sent from our page", "Open the link from your "
                                          "notification and use the page's buttons."))
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return _refusal_page(_Refusal(415, "Not a form", "Use the page's buttons."))
        raw = await request.body()
        if len(raw) > MAX_FORM_BYTES:
            return _refusal_page(_Refusal(413, "Too much", "The form is too large."))
        try:
            fields = parse_qs(raw.decode("ascii"), strict_parsing=False, max_num_fields=MAX_CLIPS + 8)
        except (UnicodeDecodeError, ValueError):
            return _refusal_page(_Refusal(400, "Not a form", "The form could not be read."))
        return _guarded(lambda: act(fields, request.cookies.get(CSRF_COOKIE)))

    return router


async def _limited(limit: Callable[[Request], Awaitable[None]] | None, request: Request) -> HTMLResponse | None:
    """The page of a caller over its rate limit, or None."""
    if limit is None:
        return None
    try:
        await limit(request)
    except RateLimited as exc:
        page = _refusal_page(_Refusal(429, "Too many requests", "Wait a moment, then open the link again."))
        page.headers["Retry-After"] = str(exc.retry_after_s)
        return page
    return None


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _picked(values: list[str]) -> list[str]:
    if len(values) > MAX_CLIPS or any(not 0 < len(v) <= 128 for v in values):
        raise _Refusal(422, "Pick your clips", f"Pick at most {MAX_CLIPS} of your clips.")
    return list(dict.fromkeys(values))


def _guarded(fn: Callable[[], HTMLResponse]) -> HTMLResponse:
    """``fn``'s page, on the event loop as the API's handlers are (:mod:`dispatcher.api.app`), or the page of its
    refusal."""
    try:
        return fn()
    except _Refusal as r:
        return _refusal_page(r)
    except QueueUnavailable:  # Redis unreachable through every retry
        resp = _refusal_page(_Refusal(503, "Try again in a moment", "The platform is briefly unavailable."))
        resp.headers["Retry-After"] = "1"
        return resp
    except DispatchError as exc:  # a stored record the page cannot show: say so, change nothing
        return _refusal_page(_Refusal(409, "This request cannot be shown", type(exc).__name__))

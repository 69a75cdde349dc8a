"""The residents' side, with real parts: signed links (forged, altered, expired, another action's), the address
book, e-mail to an aiosmtpd server and push to a webhook on loopback ports (retries, permanent refusals, a crash
between sends), and the resident pages served by a real uvicorn on the test session's redis-server, driven in
Debian's Chromium: an agency submits, a reviewer approves, the consumer mails, residents answer from the e-mail's
links; refused tokens change nothing; the agency's view is the same as in a world where those who declined or
opted out were never asked."""

from __future__ import annotations

import email
import email.policy
import hashlib
import http.server
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import numpy as np
import pytest
from aiosmtpd.controller import Controller
from itsdangerous import URLSafeTimedSerializer
from openapi_spec_validator import validate
from pyproj import Transformer

from dispatcher.api import REVIEWER, ApiSettings, Backend, ResidentPages, create_app, open_backend
from dispatcher.api.credentials import AGENCY
from dispatcher.api.residents import CSP
from dispatcher.dispatch.addresses import (
    Address,
    RedisAddressBook,
    SqliteAddressBook,
    addresses_from_owners,
)
from dispatcher.dispatch.consumer import Consumer, render
from dispatcher.dispatch.delivery import DeliverySender, SmtpSender, SmtpSettings, WebhookSender
from dispatcher.dispatch.gate import OwnerGate
from dispatcher.dispatch.links import ACTIONS, DECLINE, OPT_IN, OPT_OUT, SHARE, VIEW, LinkSettings, LinkSigner
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.wire import Notification
from dispatcher.errors import (
    DeliveryFailed,
    DispatchError,
    ExpiredLink,
    InvalidAddress,
    InvalidLink,
    InvalidLinkSettings,
    InvalidQueueSettings,
)
from dispatcher.evidence import RedisEvidence
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.index.camera_index import CameraIndex
from dispatcher.service.servers import free_port
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.notices import OPTED_OUT
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.store import RedisStore
from tests import data
from tests.api_server import agency_body, serving
from tests.browser import ARTIFACTS
from tests.notifications import LINK_SECRET, LINKS
from tests.video_requests import JOINED, LAT0, LNG0, NOW, request

# ---------------------------------------------------------------------------------------------- links


def test_a_genuine_link_binds_request_resident_and_action() -> None:
    for action in ACTIONS:
        token = LINKS.token("il-chicago:r1", 42, action)
        claim = LINKS.verify(token, [action])
        assert (claim.request_id, claim.owner_id, claim.action) == ("il-chicago:r1", 42, action)
        others = [a for a in ACTIONS if a != action]
        with pytest.raises(InvalidLink, match="not for this"):
            LINKS.verify(token, others)
    assert LINKS.url("r", 1).startswith("http://127.0.0.1:1/r/")


def test_forged_altered_expired_and_garbage_links_are_refused() -> None:
    token = LINKS.token("il-chicago:r1", 42, SHARE)
    forged = LinkSigner(LinkSettings("another-secret-of-at-least-32-characters!", "http://127.0.0.1:1/r"))
    with pytest.raises(InvalidLink):
        LINKS.verify(forged.token("il-chicago:r1", 42, SHARE), [SHARE])
    # another resident's: the payload changed, the signature kept (each character of the payload in turn)
    payload, rest = token.split(".", 1)
    other = URLSafeTimedSerializer(LINK_SECRET, salt="x").dumps(["il-chicago:r1", 43, SHARE]).split(".", 1)[0]
    signed, sig = token.rsplit(".", 1)
    # (the signature's first character: its last one also holds padding bits, which a decoder may ignore)
    flipped = f"{signed}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"
    for altered in (f"{other}.{rest}", flipped, token + "x",
                    payload[:5] + ("a" if payload[5] != "a" else "b") + payload[6:] + "." + rest):
        with pytest.raises(InvalidLink) as e:
            LINKS.verify(altered, [SHARE])
        assert not isinstance(e.value, ExpiredLink)
    for garbage in ("", "x" * 600, "é.é.é", None, 42, ["a"]):
        with pytest.raises(InvalidLink):
            LINKS.verify(garbage, [SHARE])
    past = LinkSigner(LINKS.settings, clock=lambda: time.time() - LINKS.settings.max_age_s - 5)
    with pytest.raises(ExpiredLink):
        LINKS.verify(past.token("il-chicago:r1", 42, SHARE), [SHARE])
    assert issubclass(InvalidLink, DispatchError) and issubclass(InvalidLink, PermissionError)


@pytest.mark.parametrize("kw", [{"secret": "short"}, {"base_url": "ftp://x/r"}, {"base_url": "https://x/r/"},
                                {"base_url": "https://x/r?a=1"}, {"base_url": "/r"}, {"max_age_s": 5},
                                {"max_age_s": True}])
def test_bad_link_settings_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidLinkSettings):
        LinkSettings(**{"secret": LINK_SECRET, **kw})


def test_link_settings_from_the_environment() -> None:
    got = LinkSettings.from_env({"GEODISPATCH_LINK_SECRET": LINK_SECRET, "GEODISPATCH_LINK_MAX_AGE_S": "3600"},
                                base_url="https://platform.example/r")
    assert (got.max_age_s, got.base_url) == (3600, "https://platform.example/r")
    with pytest.raises(InvalidLinkSettings):
        LinkSettings.from_env({"GEODISPATCH_LINK_SECRET": LINK_SECRET, "GEODISPATCH_LINK_MAXAGE": "1"})


# ---------------------------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("bad", ["nobody", "a@b", "a b@c.example", "a@b.example\r\nBcc: x@y.example", "<a@b.example>",
                                 "Name <a@b.example>", "a@@b.example", "x" * 250 + "@b.example", "", "a@b.example\x00"])
def test_bad_email_addresses_are_refused_without_repeating_them(bad: str) -> None:
    with pytest.raises(InvalidAddress) as e:
        Address(7, bad)
    assert "owner 7" in str(e.value) and (not bad or bad not in str(e.value))


@pytest.mark.parametrize("bad", ["http://push.example/h", "ftp://push.example/h", "https://u:p@push.example/h",
                                 "https:///h", "https://push.example:99999/h", "https://push.example/h#x",
                                 "javascript:alert(1)", "https://push.example/\u00e9"])
def test_bad_push_urls_are_refused(bad: str) -> None:
    with pytest.raises(InvalidAddress):
        Address(7, None, bad)


def test_address_books_keep_addresses_out_of_reprs(redis_server: Any, tmp_path: Any) -> None:
    table = {"owner_id": [1, 2, 3], "email": ["one@residents.example", None, "three@residents.example"],
             "push_url": [None, None, "http://127.0.0.1:9/push"]}
    got = addresses_from_owners(table)
    assert [a.owner_id for a in got] == [1, 3]  # owner 2 has neither
    assert "residents.example" not in repr(got) and "127.0.0.1" not in repr(got)
    with pytest.raises(InvalidAddress):
        addresses_from_owners({**table, "email": ["one@residents.example", "not an address", None]})
    qs = QueueSettings(url=redis_server.url)
    for book in (SqliteAddressBook(tmp_path / "book.sqlite"), RedisAddressBook(redis_server.client(), qs)):
        book.put_many(got)
        assert book.get_many([1, 2, 3, 4]) == {1: got[0], 3: got[1]}
        book.remove(1)
        assert book.get_many([1, 3]) == {3: got[1]}


# ---------------------------------------------------------------------------------------------- delivery


@dataclass
class Mailbox:
    """What the test SMTP server received; ``refuse`` maps a recipient to the reply its RCPT gets."""

    messages: list[EmailMessage] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield box, port
    finally:
        ctl.stop()


class _Hooks(http.server.BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]]
    replies: list[int]

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        code = self.replies.pop(0) if self.replies else 200
        if code == 200:
            self.got.append((dict(self.headers), body))
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[type[_Hooks], str]]:
    handler = type("Hooks", (_Hooks,), {"got": [], "replies": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}/push"
    finally:
        server.shutdown()
        server.server_close()


def _note(owner: int, rid: str = "il-chicago:r1") -> Notification:
    return Notification({"request_id": rid, "agency_id": "il-chicago", "agency_name": "Chicago PD",
                         "case_number": "C-1", "incident_type": "burglary", "start": "s", "end": "e",
                         "message": "Please help"}, owner, (7,))


FAST = QueueSettings(url="redis://", retries=3, backoff_base=0.01, backoff_max=0.02)


def test_smtp_and_push_delivery_with_retries(smtp: tuple[Mailbox, int], webhook: Any, tmp_path: Any,
                                            request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    request_cleanup = request.addfinalizer
    box, port = smtp
    hooks, url = webhook
    book = SqliteAddressBook(tmp_path / "book.sqlite")
    book.put_many([Address(1, "one@residents.example", url), Address(2, "two@residents.example"),
                   Address(3, None, url)])
    sender = DeliverySender(book, SmtpSender(SmtpSettings("127.0.0.1", port, "none"), FAST), WebhookSender(FAST))
    request_cleanup(sender.close)
    box.data_replies = ["451 try again later"]   # passing trouble: retried
    hooks.replies = [503]
    e1 = render(_note(1), LINKS)
    assert sender.send(e1)
    [m] = box.to("one@residents.example")
    assert m["Subject"] == e1.subject and m["From"] == "requests@geodispatch.example"
    assert m.get_body(("plain",)).get_content().count("http://127.0.0.1:1/r/") == 3
    assert e1.link in m.get_body(("html",)).get_content()
    [(headers, body)] = hooks.got
    assert headers["Idempotency-Key"] == e1.idempotency_key and e1.link.encode() in body
    assert b"residents.example" not in body
    assert sender.send(render(_note(3), LINKS)) and len(hooks.got) == 2 and len(box.messages) == 1
    assert not sender.send(render(_note(9), LINKS)) and sender.unreachable == 1  # no address: nothing sent
    # the same (request, resident) is the same message: a repeat after a crash can be recognised
    sender.send(render(_note(2), LINKS))
    sender.send(render(_note(2), LINKS))
    a, b = box.to("two@residents.example")
    assert a["Message-ID"] == b["Message-ID"] != m["Message-ID"]
    box.refuse["two@residents.example"] = "550 no such mailbox"  # permanent: not retried, not raised
    assert not sender.send(render(_note(2), LINKS)) and len(box.to("two@residents.example")) == 2
    box.data_replies = ["421 closing"] * 10       # passing trouble that does not pass
    with pytest.raises(DeliveryFailed, match="unreachable during SMTP send after 4 attempts"):
        sender.send(render(_note(1, "il-chicago:r2"), LINKS))
    with pytest.raises(InvalidQueueSettings):
        SmtpSettings.from_env({"GEODISPATCH_SMTP_USER": "u"})
    with pytest.raises(InvalidQueueSettings):
        SmtpSettings(security="tls")
    assert "secret-pw" not in repr(SmtpSettings(user="u", password="secret-pw"))
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("dispatcher")]
    assert any("retrying" in m for m in ours) and any("not retried" in m for m in ours)
    assert not [m for m in ours if "residents.example" in m or "/push" in m]  # never an address in our logs


@pytest.mark.redis
def test_a_crash_between_sends_repeats_no_message(redis_server: Any, smtp: tuple[Mailbox, int],
                                                  request: pytest.FixtureRequest) -> None:
    """A batch whose second e-mail cannot go out stays pending; when it is taken over, the first (sent and marked
    at once) is not sent again."""
    from dispatcher.dispatch.dispatcher import Dispatcher
    from dispatcher.dispatch.sinks import RedisSink
    from tests.notifications import header, make_recipients

    box, port = smtp
    qs = QueueSettings(url=redis_server.url, retries=1, backoff_base=0.01, backoff_max=0.02)
    rs = make_recipients(3)
    owners = rs.owner_ids.tolist()
    book = RedisAddressBook(redis_server.client(), qs)
    book.put_many([Address(o, f"owner{o}@residents.example") for o in owners])
    sender = DeliverySender(book, SmtpSender(SmtpSettings("127.0.0.1", port, "none"), qs))
    request.addfinalizer(sender.close)
    Dispatcher(RedisSink(qs), qs).dispatch(header(), rs, now=NOW)
    box.refuse[f"owner{owners[1]}@residents.example"] = "451 greylisted"
    first = Consumer(redis_server.client(), "first", sender, links=LINKS, settings=qs, min_idle_ms=0)
    first.ensure_group()
    with pytest.raises(DeliveryFailed):
        first.run_once(block_ms=10)
    assert [m["To"] for m in box.messages] == [f"owner{owners[0]}@residents.example"]
    box.refuse.clear()
    second = Consumer(redis_server.client(), "second", sender, links=LINKS, settings=qs, min_idle_ms=0)
    while second.run_once(block_ms=10):
        pass
    assert sorted(m["To"] for m in box.messages) == sorted(f"owner{o}@residents.example" for o in owners)
    assert second.sent == 2 and second.skipped == 1


# ---------------------------------------------------------------------------------------------- the pages


@pytest.fixture(scope="module")
def world() -> CameraIndex:
    cams = data.cameras(120, seed=11, cx=LNG0, cy=LAT0, spread=0.003)  # 28 owners notified of r1
    own = data.owners(cams, seed=11, share_out=0.0)
    index = CameraIndex.build(cams, own)
    v = request()
    index.resolve(v.area, v.start, v.end, now=NOW)  # compiled before any server starts
    return index


def _registry() -> AgencyRegistry:
    area = geodesic_circle(LNG0, LAT0, 20_000)
    return AgencyRegistry([Agency("il-chicago", "Chicago Police Department", "IL", area, JOINED)])


@dataclass
class Platform:
    """The API with the resident pages on the test Redis, the consumer mailing the test SMTP server."""

    backend: Backend
    url: str
    agency: str
    reviewer: str
    box: Mailbox
    consumer: Consumer

    def call(self, method: str, path: str, key: str, **kw: Any) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            return c.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kw)

    def submit_and_approve(self, rid: str) -> int:
        assert self.call("POST", "/v1/requests", self.agency, json=agency_body(request_id=rid)).status_code == 202
        r = self.call("POST", f"/v1/review/il-chicago:{rid}/approve", self.reviewer)
        assert r.status_code == 200, r.text
        while self.consumer.run_once(block_ms=10):
            pass
        return int(r.json()["notified"])

    def links_of(self, owner: int, rid: str) -> dict[str, str]:
        """The links of the resident's e-mail for the request, by their visible text."""
        [m] = [m for m in self.box.to(f"owner{owner}@residents.example")
               if _claim_of(m).request_id == f"il-chicago:{rid}"]
        return _links(m)

    def agency_view(self, rid: str) -> list[bytes]:
        """Everything the agency can ask about its request, byte for byte."""
        return [self.call("GET", f"/v1/requests/{rid}", self.agency).content,
                self.call("GET", "/v1/requests", self.agency).content]

    def state(self, rid: str) -> tuple[Any, ...]:
        """What a refusal must leave as it was: the choices, the audit log, the opt-outs."""
        store = self.backend.workflow.store
        opted = self.backend.pipeline.gate.check_many([("probe", np.array(self.owners(), np.int64))], NOW)[0]
        return store.choices(f"il-chicago:{rid}"), len(store.audit()), opted.tolist()

    def owners(self) -> list[int]:
        return sorted({int(m["To"].removeprefix("owner").split("@")[0]) for m in self.box.messages})


def _links(m: EmailMessage) -> dict[str, str]:
    html = m.get_body(("html",)).get_content()
    return {text: href for href, text in re.findall(r'<a href="([^"]+)">([^<]+)</a>', html)}


def _claim_of(m: EmailMessage) -> Any:
    href = re.search(r'href="([^"]+)"', m.get_body(("html",)).get_content())
    assert href is not None
    return LINKS.verify(href.group(1).rsplit("/", 1)[1], [VIEW])


@pytest.fixture
def platform(world: CameraIndex, redis_server: Any, smtp: tuple[Mailbox, int]) -> Iterator[Platform]:
    box, smtp_port = smtp
    port = free_port()
    links = LinkSigner(LinkSettings(LINK_SECRET, f"http://127.0.0.1:{port}/r"))
    backend = open_backend(world, _registry(), Policy(owner_cap=1000, rate_limit=1000), clock=lambda: NOW,
                           redis_url=redis_server.url)
    keys = [backend.credentials.create(role, name, NOW)[1] for role, name in [(AGENCY, "il-chicago"),
                                                                             (REVIEWER, "rev-1")]]
    qs = QueueSettings(url=redis_server.url)
    owners = np.unique(world.resolve(request().area, request().start, request().end, now=NOW).owner_ids)
    book = RedisAddressBook(redis_server.client(), qs)
    book.put_many([Address(int(o), f"owner{o}@residents.example") for o in owners])
    sender = DeliverySender(book, SmtpSender(SmtpSettings("127.0.0.1", smtp_port, "none"), qs))
    consumer = Consumer(redis_server.client(), "c1", sender, links=links, settings=qs, min_idle_ms=0)
    consumer.ensure_group()
    try:
        with serving(create_app(backend, residents=ResidentPages(links)), port) as url:
            yield Platform(backend, url, *keys, box, consumer)
    finally:
        sender.close()
        backend.close()


def _forms(html: str) -> dict[str, dict[str, str]]:
    """The page's forms by action: their hidden fields."""
    out = {}
    for action, inner in re.findall(r'<form method="post" action="/r/act" class="([a-z_]+)">(.*?)</form>', html,
                                    re.S):
        out[action] = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', inner))
    return out


def _answer(url: str, link: str, action: str, **extra: Any) -> httpx.Response:
    """A resident answering with a plain HTTP client: open the link (the cookie), post the action's form."""
    with httpx.Client(timeout=60) as c:
        page = c.get(link)
        assert page.status_code == 200, page.text
        return c.post(f"{url}/r/act", data={**_forms(page.text)[action], **extra})


@pytest.mark.redis
def test_resident_pages_refuse_bad_tokens_and_change_nothing(platform: Platform) -> None:
    assert platform.submit_and_approve("r1") >= 3
    a, b = platform.owners()[:2]
    link_a = platform.links_of(a, "r1")
    page = httpx.get(link_a["See the request and share clips"])
    assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
    assert "script-src" not in CSP and "form-action 'self'" in CSP and page.headers["referrer-policy"] == "same-origin"
    cookie = page.headers["set-cookie"].lower()
    assert "samesite=strict" in cookie and "httponly" in cookie and "path=/r" in cookie
    assert "Chicago Police Department" in page.text and "Burglary on the block." in page.text
    forms = _forms(page.text)
    assert set(forms) == {DECLINE, OPT_OUT}  # no clips: nothing to share; not opted out: no opt-in
    before = platform.state("r1")
    ours = {"csrf": forms[DECLINE]["csrf"]}
    other_secret = LinkSigner(LinkSettings("another-secret-of-at-least-32-characters!", LINKS.settings.base_url))
    payload, rest = forms[DECLINE]["token"].split(".", 1)
    b_payload = URLSafeTimedSerializer(LINK_SECRET, salt="x").dumps(["il-chicago:r1", b, DECLINE]).split(".")[0]
    expired = LinkSigner(LINKS.settings, clock=lambda: time.time() - 15 * 86_400).token("il-chicago:r1", a, DECLINE)
    cases = {"forged": (other_secret.token("il-chicago:r1", a, DECLINE), 403),
             "another resident's": (f"{b_payload}.{rest}", 403),
             "expired": (expired, 410), "a view token posted": (LINKS.token("il-chicago:r1", a, VIEW), 403),
             "not notified": (LINKS.token("il-chicago:r1", 10**9, DECLINE), 404),
             "another request": (LINKS.token("il-chicago:nosuch", a, DECLINE), 404)}
    with httpx.Client(timeout=60, cookies={"gd_csrf": ours["csrf"]}) as c:
        for name, (token, status) in cases.items():
            r = c.post(f"{platform.url}/r/act", data={"token": token, **ours})
            assert r.status_code == status, (name, r.text)
            assert "Nothing was changed" in r.text and r.headers["content-security-policy"] == CSP
        for bad_get in (f"{platform.url}/r/{other_secret.token('il-chicago:r1', a, VIEW)}", link_a["Decline"] + "x",
                        f"{platform.url}/r/{expired}"):
            assert c.get(bad_get).status_code in (403, 410)
        # CSRF: no cookie, a cookie not matching, another site's origin, not a form, a GET of the form's URL
        token = forms[DECLINE]["token"]
        assert httpx.post(f"{platform.url}/r/act", data={"token": token, **ours}).status_code == 403
        c.cookies.set("gd_csrf", "0" * 32)
        assert c.post(f"{platform.url}/r/act", data={"token": token, **ours}).status_code == 403
        c.cookies.set("gd_csrf", ours["csrf"])
        assert c.post(f"{platform.url}/r/act", data={"token": token, **ours},
                      headers={"Origin": "https://evil.example"}).status_code == 403
        assert c.post(f"{platform.url}/r/act", json={"token": token, **ours}).status_code == 415
        assert c.get(f"{platform.url}/r/act").status_code == 403  # "act" is no token: a page of refusal
        for genuine in (link_a["Decline"], link_a["Opt out of all requests"]):  # a GET only shows the page
            assert c.get(genuine).status_code == 200
    assert platform.state("r1") == before
    # the genuine answer works once; its replay is refused and changes nothing
    declined = _answer(platform.url, link_a["Decline"], DECLINE)
    assert declined.status_code == 200 and "declined" in declined.text
    after = platform.state("r1")
    assert after[0] == [(a, "decline", [])]
    with httpx.Client(timeout=60, cookies={"gd_csrf": ours["csrf"]}) as c:
        replay = c.post(f"{platform.url}/r/act", data={"token": token, **ours})
    assert replay.status_code == 409 and "Already answered" in replay.text
    assert platform.state("r1") == after
    spec = httpx.get(f"{platform.url}/openapi.json").json()
    validate(spec)
    assert {"/r/{token}", "/r/act"} <= set(spec["paths"])


def _add_clips(platform: Platform, world: CameraIndex, owner: int) -> dict[str, bytes]:
    """Two clips of the owner's camera inside r1's window and one outside it: id -> bytes."""
    assert platform.backend.evidence is not None
    v = request()
    cam = int(world.resolve(v.area, v.start, v.end, now=NOW).cameras_of(owner)[0])
    out = {}
    for k, (a, b) in enumerate([(v.start + timedelta(minutes=10), v.start + timedelta(minutes=12)),
                                (v.start + timedelta(minutes=40), v.start + timedelta(minutes=45)),
                                (v.end + timedelta(minutes=5), v.end + timedelta(minutes=6))]):
        data = bytes([k]) * 1000 + f"clip {k} of owner {owner}".encode()
        out[platform.backend.evidence.add_clip(owner, cam, a, b, data, "video/mp4").clip_id] = data
    return out


def _assert_map_is_the_area(d: str | None, area: dict[str, Any]) -> None:
    """The drawn ring is the area's, vertex for vertex, in Web Mercator as pyproj projects it (EPSG:3857): pixels
    are that projection scaled alike on both axes, y flipped, to within a pixel's rounding."""
    assert d is not None and d.startswith("M") and d.endswith("Z") and d.count("M") == 1
    px = np.array([[float(v) for v in p.split(",")] for p in d[1:-1].split("L")])
    ring = np.array(area["coordinates"][0][:-1])
    assert px.shape == ring.shape
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(ring[:, 0], ring[:, 1])
    # least squares: px = a * x + b, py = -a * y + c
    m = np.zeros((2 * len(x), 3))
    m[0::2, 0], m[0::2, 1] = x, 1
    m[1::2, 0], m[1::2, 2] = -np.asarray(y), 1
    (a, b, c), *_ = np.linalg.lstsq(m, px.reshape(-1), rcond=None)
    assert a > 0 and np.abs(m @ np.array([a, b, c]) - px.reshape(-1)).max() < 0.1
    assert px.min() >= 0 and px[:, 0].max() <= 900 and px[:, 1].max() <= 640  # inside the view


def _carry_over(redis_server: Any, keep: list[str]) -> list[tuple[str, bytes]]:
    """What the platform holds whatever it asks: the named keys, to restore in the other world."""
    with redis_server.client() as r:
        return [(k, r.dump(k)) for k in keep if r.exists(k)]


@pytest.mark.redis
def test_residents_answer_in_chromium_and_the_agency_sees_no_difference(platform: Platform, redis_server: Any,
                                                                         world: CameraIndex, browser: Any) -> None:
    """From the e-mail's links, in Chromium: one resident shares two clips, another declines, a third opts out.
    The agency gets both clips with the SHA-256 they were stored with, and its view is byte for byte the view of
    a world where the other two were never asked; the opt-out is seen by the gate at once and the next request
    does not reach that resident."""
    keys = QueueSettings(url=redis_server.url).keys
    evidence = platform.backend.evidence
    assert evidence is not None
    notified = platform.submit_and_approve("r1")
    sharer, decliner, leaver = platform.owners()[:3]
    clips = _add_clips(platform, world, sharer)
    inside = list(clips)[:2]
    ctx = browser.new_context(viewport={"width": 1100, "height": 900})
    seen: list[str] = []
    problems: list[str] = []
    try:
        page = ctx.new_page()
        page.on("request", lambda r: seen.append(r.url))
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(platform.links_of(sharer, "r1")["See the request and share clips"])
        assert page.locator("h1").inner_text() == "Video request from Chicago Police Department"
        assert page.locator("p.message").inner_text() == "Burglary on the block."
        _assert_map_is_the_area(page.locator("svg.map path").get_attribute("d"), request().area)
        boxes = page.locator("form.share input[type=checkbox]")
        assert sorted(boxes.evaluate_all("els => els.map(e => e.value)")) == sorted(inside)  # not the one outside
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "resident-page.png"), full_page=True)
        for cid in inside:
            page.check(f"form.share input[value='{cid}']")
        page.click("form.share button")
        assert page.locator("p.done").inner_text() == "You shared 2 clips."

        page.goto(platform.links_of(decliner, "r1")["Decline"])
        page.click("form.decline button")
        assert "declined" in page.locator("p.done").inner_text()

        page.goto(platform.links_of(leaver, "r1")["Opt out of all requests"])
        # from the moment Chromium sends the form to the first gate check that refuses the resident, polled by
        # another thread with its own connection, as a dispatching worker would
        gate = OwnerGate(RedisStore(redis_server.client(), keys))
        seen_at: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                if gate.check_many([("next", np.array([leaver], np.int64))], NOW)[0][0] == OPTED_OUT:
                    seen_at.append(time.time())
                    return
                time.sleep(0.001)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        with page.expect_request(lambda r: r.method == "POST") as posted:
            page.click("form.opt_out button")
        page.wait_for_load_state("load")
        poller.join(10)
        stop.set()
        assert seen_at, "the gate never saw the opt-out"
        click_to_gate_ms = seen_at[0] * 1000 - posted.value.timing["startTime"]
        assert "no more requests" in page.locator("p.done").inner_text()
        assert problems == []
        assert all(u.startswith(platform.url + "/r/") for u in seen), seen
    finally:
        ctx.close()
    print(f"\nresident's opt-out click to the gate: {click_to_gate_ms:.1f} ms")
    assert 0 < click_to_gate_ms < 1000  # the goal is 100 ms; a loaded shared machine gets slack

    def agency_view(rid: str, p: Platform = platform) -> list[bytes]:
        """Everything the agency can learn of its request over HTTP: status, list, the custody records, each
        clip's bytes and custody record, with the digest headers."""
        listed = p.call("GET", f"/v1/requests/{rid}/clips", p.agency)
        assert listed.status_code == 200, listed.text
        out = [*p.agency_view(rid), listed.content]
        for rec in listed.json()["clips"]:
            got = p.call("GET", f"/v1/requests/{rid}/clips/{rec['share_id']}", p.agency)
            assert got.status_code == 200 and got.headers["x-content-sha256"] == rec["sha256"]
            custody = p.call("GET", f"/v1/requests/{rid}/clips/{rec['share_id']}/custody", p.agency).content
            out += [got.content, got.headers["x-content-sha256"].encode(), got.headers["content-digest"].encode(),
                    custody]
        return out

    view = agency_view("r1")
    downloads = view[3::4]
    assert len(downloads) == 2 and sorted(downloads) == sorted(clips[c] for c in inside)
    assert [hashlib.sha256(d).hexdigest().encode() for d in downloads] == view[4::4]  # the SHA-256 matches
    # the opt-out is in force before the next batch: r2 reaches every resident but the one who left
    mailed = len(platform.box.messages)
    assert platform.submit_and_approve("r2") == notified - 1
    assert leaver not in {_claim_of(m).owner_id for m in platform.box.messages[mailed:]}
    view2 = agency_view("r2")

    # the other world: the same residents, clips and platform secret; the decliner and the leaver never asked
    kept = _carry_over(redis_server, [keys.addresses, keys.evidence_secret, keys.owner_clips(sharer),
                                      *(keys.clip(c) for c in clips)])
    with redis_server.client() as r:
        r.flushall()
        for k, dumped in kept:
            r.restore(k, 0, dumped)
    platform.backend.evidence = RedisEvidence(redis_server.client(), world, platform.backend.workflow.store, keys,
                                              QueueSettings(url=redis_server.url),
                                              clock=platform.backend.clock)  # a fresh process's, as it were
    api_keys = [platform.backend.credentials.create(role, name, NOW)[1] for role, name in [(AGENCY, "il-chicago"),
                                                                                           (REVIEWER, "rev-1")]]
    for o in (decliner, leaver):
        platform.backend.workflow.opt_out(o, NOW)
    platform.consumer.ensure_group()
    other = Platform(platform.backend, platform.url, *api_keys, Mailbox(), platform.consumer)
    assert other.submit_and_approve("r1") == notified - 2
    link = [m for m in platform.box.to(f"owner{sharer}@residents.example")][-1]
    shared = _answer(platform.url, _links(link)["See the request and share clips"], SHARE, clip=inside)
    assert shared.status_code == 200, shared.text
    assert agency_view("r1", other) == view
    platform.backend.workflow.opt_in(decliner, NOW)
    assert other.submit_and_approve("r2") == notified - 1
    assert agency_view("r2", other) == view2


@pytest.mark.redis
def test_the_addresses_command_loads_all_or_none(redis_server: Any, tmp_path: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from dispatcher.cli import main

    qs = QueueSettings(url=redis_server.url)
    good, bad = tmp_path / "owners.parquet", tmp_path / "bad.parquet"
    pq.write_table(pa.table({"owner_id": [1, 2], "email": ["one@residents.example", None],
                             "push_url": [None, "https://push.example/2"]}), good)
    pq.write_table(pa.table({"owner_id": [3, 4], "email": ["three@residents.example", "four at residents"]}), bad)
    runner = CliRunner()
    r = runner.invoke(main, ["addresses", "load", "--redis-url", redis_server.url, "--owners", str(good)])
    assert r.exit_code == 0 and "2 addresses loaded" in r.output, r.output
    r = runner.invoke(main, ["addresses", "load", "--redis-url", redis_server.url, "--owners", str(bad)])
    assert isinstance(r.exception, InvalidAddress) and "owner 4" in str(r.exception)  # (the CLI's main prints it)
    assert "four at residents" not in str(r.exception)
    assert sorted(RedisAddressBook(redis_server.client(), qs).get_many([1, 2, 3, 4])) == [1, 2]
    r = runner.invoke(main, ["consume", "--redis-url", redis_server.url], env={"GEODISPATCH_LINK_SECRET": LINK_SECRET})
    assert r.exit_code == 2 and "--outbox DIR or --smtp-host HOST" in r.output


def test_smtp_over_starttls_with_a_login(tmp_path: Any) -> None:
    """The relay as a provider runs it: STARTTLS required before AUTH, the certificate checked, the login taken."""
    import dataclasses
    import ssl
    import subprocess

    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"relay-pw", handled=False)  # failed: the server replies 535

    box, port = Mailbox(), free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port, tls_context=server_ctx, require_starttls=True,
                     authenticator=check, auth_require_tls=True)
    ctl.start()
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        relay = SmtpSettings("127.0.0.1", port, "starttls", user="relay", password="relay-pw", timeout_s=3)
        good = SmtpSender(relay, FAST, context=trusting)
        e = render(_note(1), LINKS)
        assert good.send_to(e, "one@residents.example")
        good.close()
        assert [m["To"] for m in box.messages] == ["one@residents.example"] and logins == [(b"relay", b"relay-pw")]
        wrong_pw = SmtpSender(dataclasses.replace(relay, password="nope"), FAST, context=trusting)
        t0 = time.perf_counter()
        with pytest.raises(DeliveryFailed, match="SMTPAuthenticationError"):  # not retried, never marked sent
            wrong_pw.send_to(e, "one@residents.example")
        assert time.perf_counter() - t0 < 3
        wrong_pw.close()
        untrusted = SmtpSender(relay, FAST)
        with pytest.raises(DeliveryFailed):  # the system's CAs do not know the relay's certificate: never sent
            untrusted.send_to(e, "one@residents.example")
        assert len(box.messages) == 1
    finally:
        ctl.stop()


def test_resident_pages_on_the_embedded_store(world: CameraIndex, tmp_path: Any) -> None:
    """The pages on the embedded SQLite file, no server but the API: decline once, opt out, opt back in."""
    from dispatcher.dispatch.wire import decode_batch

    port = free_port()
    links = LinkSigner(LinkSettings(LINK_SECRET, f"http://127.0.0.1:{port}/r"))
    backend = open_backend(world, _registry(), Policy(owner_cap=1000, rate_limit=1000), clock=lambda: NOW,
                           store=tmp_path / "gd.sqlite")
    agency, reviewer = (backend.credentials.create(role, name, NOW)[1] for role, name in [(AGENCY, "il-chicago"),
                                                                                          (REVIEWER, "rev-1")])
    try:
        with serving(create_app(backend, residents=ResidentPages(links)), port) as url:
            with httpx.Client(base_url=url, timeout=60) as c:
                assert c.post("/v1/requests", json=agency_body(), headers={"Authorization": f"Bearer {agency}"}
                              ).status_code == 202
                assert c.post("/v1/review/il-chicago:r1/approve", headers={"Authorization": f"Bearer {reviewer}"}
                              ).status_code == 200
            sink = backend.pipeline.dispatcher.sink
            owner, other = (n.owner_id for n in decode_batch(next(iter(sink.read_all()))[1])[1][:2])
            with httpx.Client(timeout=60) as c:
                form = _forms(c.get(links.url("il-chicago:r1", owner, DECLINE)).text)[DECLINE]
                assert c.post(f"{url}/r/act", data=form).status_code == 200
                assert backend.workflow.store.choices("il-chicago:r1") == [(owner, "decline", [])]
                assert c.post(f"{url}/r/act", data=form).status_code == 409  # a replay: answered already
                again = c.get(links.url("il-chicago:r1", owner, VIEW)).text
                assert "You answered this request: decline." in again and DECLINE not in _forms(again)
            gate = backend.pipeline.gate
            # each page offers the one of opt out and opt back in that applies to its own resident, whatever
            # another resident did
            for action, verdict, offered in ((OPT_OUT, OPTED_OUT, OPT_IN), (OPT_IN, 0, OPT_OUT)):
                assert _answer(url, links.url("il-chicago:r1", owner, OPT_OUT), action).status_code == 200
                assert gate.check_many([("next", np.array([owner, other], np.int64))], NOW)[0].tolist() == [
                    verdict, 0]
                with httpx.Client(timeout=60) as c:
                    mine, theirs = (c.get(links.url("il-chicago:r1", o, VIEW)).text for o in (owner, other))
                assert set(_forms(mine)) == {offered} and ("You have opted out" in mine) == (action == OPT_OUT)
                assert set(_forms(theirs)) == {DECLINE, OPT_OUT} and "opted out" not in theirs
    finally:
        backend.close()


def test_resident_pages_are_rate_limited_by_address(world: CameraIndex, tmp_path: Any) -> None:
    """The pages count each client address's calls, good links or not: over the limit, a 429 page with
    Retry-After, and nothing read or changed."""
    links = LinkSigner(LinkSettings(LINK_SECRET, "http://127.0.0.1:1/r"))
    backend = open_backend(world, _registry(), Policy(), clock=lambda: NOW, store=tmp_path / "gd.sqlite")
    try:
        app = create_app(backend, ApiSettings(address_rate_limit="2/minute"), residents=ResidentPages(links))
        with serving(app) as url, httpx.Client(base_url=url, timeout=60) as c:
            token = links.url("il-chicago:r1", 1, VIEW).rsplit("/", 1)[1]
            got = [c.get(f"/r/{token}") for _ in range(2)] + [c.get(f"/r/{token}"), c.post("/r/act", data={})]
            assert [r.status_code for r in got] == [404, 404, 429, 429]
            assert "Too many requests" in got[2].text and int(got[2].headers["retry-after"]) >= 1
            assert got[2].headers["content-security-policy"] == got[0].headers["content-security-policy"]
    finally:
        backend.close()


@pytest.mark.redis
def test_the_consume_command_mails_through_the_relay(redis_server: Any, smtp: tuple[Mailbox, int]) -> None:
    """``geodispatch consume --smtp-host`` as an operator runs it: the address book's residents get one e-mail
    each, with links under the given base URL; SIGTERM stops it."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from dispatcher.dispatch.dispatcher import Dispatcher
    from dispatcher.dispatch.sinks import RedisSink
    from tests.notifications import header, make_recipients

    box, port = smtp
    qs = QueueSettings(url=redis_server.url)
    rs = make_recipients(6)
    owners = rs.owner_ids.tolist()
    RedisAddressBook(redis_server.client(), qs).put_many([Address(o, f"owner{o}@residents.example")
                                                          for o in owners[:5]])  # the sixth has no address
    Dispatcher(RedisSink(qs), qs).dispatch(header(), rs, now=NOW)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "dispatcher.cli", "consume", "--redis-url", redis_server.url,
                             "--smtp-host", "127.0.0.1", "--smtp-port", str(port), "--smtp-security", "none",
                             "--smtp-from", "requests@platform.example", "--link-base-url",
                             "https://platform.example/r", "--consumers", "1"],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root),
                                           "GEODISPATCH_LINK_SECRET": LINK_SECRET},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(box.messages) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert sorted(m["To"] for m in box.messages) == sorted(f"owner{o}@residents.example" for o in owners[:5])
    assert all(m["From"] == "requests@platform.example" for m in box.messages)
    assert "https://platform.example/r/" in box.messages[0].get_body(("plain",)).get_content()
    assert "residents.example" not in output

"""Delivering notifications for real: e-mail over SMTP (smtplib: plain, STARTTLS or SSL, with a login from the
environment) and push through each resident's webhook (an HTTP POST of JSON), to the addresses of the address
book, looked up at the moment of sending.

Trouble that passes (a refused or dropped connection, a timeout, an SMTP 4xx reply, an HTTP 5xx or 429) is
retried with the project's one retry policy (:func:`dispatcher.connections.with_retries`, its backoff and
count from the queue settings); when the retries run out :class:`DeliveryFailed` leaves the notification pending
for a later attempt. A permanent refusal of one message (SMTP 5xx, HTTP 4xx) is logged with the owner id and
the reply code, never the address, and not retried; a relay refusing the session itself (login refused, no
STARTTLS) is :class:`DeliveryFailed` at once, so nothing is marked sent until an operator fixes the settings.
"""

from __future__ import annotations

import hashlib
import logging
import smtplib
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TypeVar

import orjson

from dispatcher.connections import with_retries
from dispatcher.dispatch.addresses import Address, AddressBook, _email
from dispatcher.dispatch.consumer import Email
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.errors import DeliveryFailed, InvalidAddress, InvalidQueueSettings
from dispatcher.settings import from_environment

__all__ = ["DeliverySender", "SmtpSender", "SmtpSettings", "WebhookSender"]

log = logging.getLogger(__name__)

T = TypeVar("T")
SECURITY = ("none", "starttls", "ssl")


class _Passing(Exception):
    """Delivery trouble that passes (a relay's 4xx, a dropped connection, a push endpoint's 5xx): retried."""


def _retried(settings: QueueSettings, what: str, fn: Callable[[], T]) -> T:
    return with_retries(settings, what, fn, transient=lambda exc: isinstance(exc, _Passing),
                        service="receiver", exhausted=DeliveryFailed)


@dataclass(frozen=True)
class SmtpSettings:
    """The mail relay. ``user`` and ``password`` come from ``GEODISPATCH_SMTP_USER`` and
    ``GEODISPATCH_SMTP_PASSWORD`` (never a command-line option); ``security`` is ``none``, ``starttls`` or
    ``ssl``."""

    host: str = "localhost"
    port: int = 25
    security: str = "starttls"
    from_addr: str = "requests@geodispatch.example"
    user: str = ""
    password: str = ""
    timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if self.security not in SECURITY:
            raise InvalidQueueSettings(f"SMTP security must be one of {', '.join(SECURITY)}, got {self.security!r}")
        if not 0 < self.port < 65536 or not self.timeout_s > 0 or not self.host:
            raise InvalidQueueSettings(f"SMTP host and port {self.host!r}:{self.port} or timeout are out of range")
        if bool(self.user) != bool(self.password):
            raise InvalidQueueSettings("give both GEODISPATCH_SMTP_USER and GEODISPATCH_SMTP_PASSWORD, or neither")
        try:
            _email(self.from_addr, 0)
        except InvalidAddress:
            raise InvalidQueueSettings(f"the From address {self.from_addr!r} is not a plain address") from None

    def __repr__(self) -> str:
        return (f"SmtpSettings(host={self.host!r}, port={self.port}, security={self.security!r}, "
                f"from_addr={self.from_addr!r}, user={'...' if self.user else ''!r})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> SmtpSettings:
        """``GEODISPATCH_SMTP_<FIELD>``, then the ``overrides`` that are not None; a misspelled one raises."""
        values = from_environment(cls, "GEODISPATCH_SMTP_", InvalidQueueSettings, environ)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _message_id(email: Email, domain: str) -> str:
    """The same for every attempt of one (request, resident): a repeat after a crash is the same message."""
    return f"<{hashlib.sha256(email.idempotency_key.encode()).hexdigest()[:32]}@{domain}>"


class SmtpSender:
    """Sends over one SMTP session per thread (a relay's session is not shared by threads), opened at the first
    send and opened again after any trouble."""

    def __init__(self, settings: SmtpSettings, queue: QueueSettings | None = None,
                 context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.queue = queue or QueueSettings(url="redis://")
        self.context = context or ssl.create_default_context()
        self._local = threading.local()
        self._open: set[smtplib.SMTP] = set()
        self._lock = threading.Lock()

    def message(self, email: Email, to: str) -> EmailMessage:
        s = self.settings
        msg = EmailMessage()
        msg["From"] = s.from_addr
        msg["To"] = to
        msg["Subject"] = email.subject
        msg["Message-ID"] = _message_id(email, s.from_addr.rpartition("@")[2])
        msg.set_content(email.text)
        msg.add_alternative(email.html, subtype="html")
        return msg

    def _session(self) -> smtplib.SMTP:
        smtp: smtplib.SMTP | None = getattr(self._local, "smtp", None)
        if smtp is None:
            s = self.settings
            smtp = (smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=self.context)
                    if s.security == "ssl" else smtplib.SMTP(s.host, s.port, timeout=s.timeout_s))
            try:
                if s.security == "starttls":
                    smtp.starttls(context=self.context)
                if s.user:
                    smtp.login(s.user, s.password)
            except BaseException:
                smtp.close()
                raise
            self._local.smtp = smtp
            with self._lock:
                self._open.add(smtp)
        return smtp

    def _drop(self) -> None:
        """Ends this thread's session, if any."""
        smtp: smtplib.SMTP | None = getattr(self._local, "smtp", None)
        self._local.smtp = None
        if smtp is not None:
            with self._lock:
                self._open.discard(smtp)
            _quit(smtp)

    def close(self) -> None:
        """Ends every thread's session (when the consumers have stopped)."""
        with self._lock:
            sessions, self._open = self._open, set()
        for smtp in sessions:
            _quit(smtp)

    def _once(self, msg: EmailMessage, owner_id: int) -> bool:
        try:
            self._session().send_message(msg)
        except (smtplib.SMTPAuthenticationError, smtplib.SMTPNotSupportedError) as exc:
            # the relay's settings are wrong (login refused, no STARTTLS): nothing is sent until an operator
            # fixes them, and nothing is marked sent either (the entries stay pending)
            self._drop()
            raise DeliveryFailed(f"the mail relay refused the session: {type(exc).__name__}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [c for c, _ in exc.recipients.values()]
            if any(400 <= c < 500 for c in codes):
                raise _Passing(f"SMTP recipient deferred ({codes})") from None
            log.warning("owner %d: the mail relay refused the recipient (%s); not retried", owner_id, codes)
            return False
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:
                self._drop()  # a 421 ends the session; any 4xx: start the retry on a fresh one
                raise _Passing(f"SMTP {exc.smtp_code}") from None
            log.warning("owner %d: the mail relay refused the message (SMTP %d); not retried", owner_id, exc.smtp_code)
            return False
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError) as exc:
            self._drop()
            raise _Passing(f"SMTP {type(exc).__name__}: {exc}") from None
        return True

    def send_to(self, email: Email, to: str) -> bool:
        msg = self.message(email, to)
        return _retried(self.queue, "SMTP send", lambda: self._once(msg, email.owner_id))


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


class WebhookSender:
    """POSTs ``{"subject", "url", "idempotency_key"}`` as JSON to a resident's push URL, with an
    ``Idempotency-Key`` header (the receiver may drop a repeat)."""

    def __init__(self, queue: QueueSettings | None = None, timeout_s: float = 10.0) -> None:
        self.queue = queue or QueueSettings(url="redis://")
        self.timeout_s = timeout_s
        # never follow a redirect: a push URL is the resident's, a redirect could point anywhere
        self._opener = urllib.request.build_opener(_NoRedirect)

    def _once(self, body: bytes, url: str, key: str, owner_id: int) -> bool:
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": key, "User-Agent": "geodispatch"})
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                resp.read(1024)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise _Passing(f"push HTTP {exc.code}") from None
            log.warning("owner %d: the push endpoint refused the notification (HTTP %d); not retried", owner_id,
                        exc.code)
            return False
        except (urllib.error.URLError, OSError) as exc:
            raise _Passing(f"push {type(exc).__name__}") from None
        return True

    def send_to(self, email: Email, url: str) -> bool:
        body = orjson.dumps({"subject": email.subject, "url": email.link, "idempotency_key": email.idempotency_key})
        return _retried(self.queue, "push", lambda: self._once(body, url, email.idempotency_key, email.owner_id))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class DeliverySender:
    """The consumer's sender: looks the owner up in the address book and sends the e-mail (SMTP) and the push
    (webhook) the resident has addresses for. An owner with no address is counted in :attr:`unreachable`."""

    def __init__(self, book: AddressBook, smtp: SmtpSender | None = None, push: WebhookSender | None = None) -> None:
        if smtp is None and push is None:
            raise InvalidQueueSettings("a delivery sender needs SMTP or push (or both)")
        self.book, self.smtp, self.push = book, smtp, push
        self.unreachable = 0

    def close(self) -> None:
        if self.smtp is not None:
            self.smtp.close()

    def send(self, email: Email) -> bool:
        addr: Address | None = self.book.get_many([email.owner_id]).get(email.owner_id)
        sent = False
        if addr is not None and addr.email is not None and self.smtp is not None:
            sent = self.smtp.send_to(email, addr.email) or sent
        if addr is not None and addr.push_url is not None and self.push is not None:
            sent = self.push.send_to(email, addr.push_url) or sent
        if not sent and (addr is None or (addr.email is None or self.smtp is None)
                         and (addr.push_url is None or self.push is None)):
            self.unreachable += 1
            log.info("owner %d has no address this sender can use", email.owner_id)
        return sent

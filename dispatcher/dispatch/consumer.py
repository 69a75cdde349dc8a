"""The reference consumer of the senders' side: a consumer group reads notification batches, renders each owner's
e-mail, hands it to a pluggable sender and acks.

Delivery is at-least-once (an entry is acked only after every e-mail of its batch went out); an idempotency key
per (request, owner), recorded in Redis right after each send and honoured by the sender itself where it can be
(the outbox writes each key once, exclusively; an SMTP message's Message-ID is derived from it), makes a
redelivery send nothing twice; only a crash between one send and its mark can repeat that one message. A
crashed consumer's pending entries are reclaimed with XAUTOCLAIM by any other consumer once they have been idle
for ``min_idle_ms``.

With several shards, a consumer reads every shard's notifications stream in turn (a read names one slot); a
batch's sent marks and its ack go together in its shard.
"""

from __future__ import annotations

import html
import logging
import os
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import redis

from dispatcher.connections import EvictionWatch, with_retries
from dispatcher.dispatch.links import DECLINE, OPT_OUT, VIEW, LinkSigner
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import trim_acknowledged
from dispatcher.dispatch.wire import Notification, decode_batch
from dispatcher.errors import InvalidServiceSettings, QueueUnavailable
from dispatcher.keys import Keys
from dispatcher.settings import check_count, check_seconds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Email:
    """One e-mail; ``subject`` and ``idempotency_key`` are safe to put in a header as they are."""

    idempotency_key: str
    owner_id: int
    subject: str
    html: str
    #: The same message as plain text, for mailers that do not show HTML.
    text: str = ""
    #: The signed link to the request's page (a push notification carries it).
    link: str = ""


class Sender(Protocol):
    def send(self, email: Email) -> bool:
        """Send once per idempotency key; False when that key was already sent."""
        ...


class OutboxSender:
    """The default sender: one file per idempotency key in an outbox directory, created exclusively."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        return self.directory / (quote(key, safe="") + ".html")

    def send(self, email: Email) -> bool:
        path = self.path_of(email.idempotency_key)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(email.html, encoding="utf-8")
        try:
            os.link(tmp, path)          # atomic and exclusive: a second send of the key fails here
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True


#: The longest subject: RFC 5322's recommended line length, so that a mailer sends it on one header line.
MAX_SUBJECT_CHARS = 78
SUBJECT_PREFIX = "Video request from "
#: Characters no header may carry: controls (CR, LF, NUL, NEL...), format characters (bidi overrides, zero
#: widths), surrogates, private-use and unassigned code points, line and paragraph separators (U+2028, U+2029).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def header_text(value: str, limit: int) -> str:
    """``value`` fit for an e-mail header: every character of ``_UNSAFE_CATEGORIES`` and all white space become
    one space between words, and the text is cut to ``limit`` characters, ending in an ellipsis when cut."""
    text = " ".join("".join(" " if c.isspace() or unicodedata.category(c) in _UNSAFE_CATEGORIES else c
                            for c in unicodedata.normalize("NFC", value)).split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "\u2026"


def _header_token(value: str) -> str:
    """``value`` with every white-space or header-unsafe character percent-encoded (printable text unchanged)."""
    return "".join(quote(c, safe="") if c.isspace() or unicodedata.category(c) in _UNSAFE_CATEGORIES else c
                   for c in value)


def render(n: Notification, links: LinkSigner) -> Email:
    """The e-mail a resident gets: every field HTML-escaped, and three links, each with its own signed token
    for (request, resident, action): the request's page (to share clips), decline, opt out of all requests. A
    link opens a page; nothing changes until the resident confirms there. The subject and the idempotency key
    (which a mailer may send as a header) hold no CR, LF or other control character; the subject is at most
    ``MAX_SUBJECT_CHARS`` long."""
    h = {k: html.escape(str(v)) for k, v in n.header.items()}
    rid = str(n.header["request_id"])
    view, decline, opt_out = (links.url(rid, n.owner_id, a) for a in (VIEW, DECLINE, OPT_OUT))
    cams = ", ".join(str(c) for c in n.camera_ids)
    body = (
        f"<p>{h['agency_name']} asks for footage for case {h['case_number']} ({h['incident_type']}), "
        f"from {h['start']} to {h['end']}.</p>\n<p>{h['message']}</p>\n"
        f"<p>Your cameras that may hold it: {cams}</p>\n"
        f'<p><a href="{html.escape(view)}">See the request and share clips</a> | '
        f'<a href="{html.escape(decline)}">Decline</a> | '
        f'<a href="{html.escape(opt_out)}">Opt out of all requests</a></p>\n'
    )
    text = (f"{n.header['agency_name']} asks for footage for case {n.header['case_number']} "
            f"({n.header['incident_type']}), from {n.header['start']} to {n.header['end']}.\n\n"
            f"{n.header['message']}\n\nYour cameras that may hold it: {cams}\n\n"
            f"See the request and share clips: {view}\nDecline: {decline}\nOpt out of all requests: {opt_out}\n")
    agency = header_text(str(n.header["agency_name"]), MAX_SUBJECT_CHARS - len(SUBJECT_PREFIX))
    subject = SUBJECT_PREFIX + agency if agency else SUBJECT_PREFIX.removesuffix(" from ")
    return Email(_header_token(f"{rid}:{n.owner_id}"), n.owner_id, subject, body, text, view)


class Consumer:
    """One consumer of a group. ``run_once`` reclaims stale entries, reads new ones, sends and acks."""

    def __init__(self, client: redis.Redis, name: str, sender: Sender, *, links: LinkSigner, group: str = "senders",
                 settings: QueueSettings | None = None, min_idle_ms: int = 30_000, keys: Keys | None = None,
                 trim_every_s: float | None = None, eviction_check_s: float = 10.0) -> None:
        # 0 takes over at once what another consumer holds, even while it sends it: a crash's test, never a
        # service (``consume --claim-idle-ms`` is 1 or more)
        check_count("min_idle_ms", min_idle_ms, InvalidServiceSettings, minimum=0)
        if not group or not isinstance(group, str):
            raise InvalidServiceSettings(f"group must be a non-empty string, got {group!r}")
        if trim_every_s is not None:
            check_seconds("trim_every_s", trim_every_s, InvalidServiceSettings)
        check_seconds("eviction_check_s", eviction_check_s, InvalidServiceSettings)
        self.client, self.name, self.sender, self.group = client, name, sender, group
        #: Trim what every group has acknowledged (:func:`trim_acknowledged`) at most this often; None: never.
        self.trim_every_s = trim_every_s
        self.trimmed = 0
        self._trimmed_at = time.monotonic()
        self.links = links
        self.settings = settings or QueueSettings(url="redis://")
        self.keys = keys or self.settings.keys
        self.min_idle_ms = min_idle_ms
        self.sent = 0
        #: Notifications not sent again: marked sent by this group, or their key sent already by the sender.
        self.skipped = 0
        self.dead_lettered = 0
        #: Called every turn of :meth:`run` and with ``final=True`` as it stops (a report of :meth:`figures` for
        #: operators: :class:`dispatcher.service.metrics.Report`); None: nobody asks.
        self.report: Callable[..., None] | None = None
        #: Whether Redis still keeps every key (no eviction policy: a sent mark evicted sends a notification
        #: twice), asked every ``eviction_check_s`` seconds (0: at the start of :meth:`run` only); nothing is
        #: read while it may evict.
        self.keeps_keys = EvictionWatch(client, self.settings, name, eviction_check_s)

    def figures(self) -> dict[str, int]:
        """What this consumer has done since it started."""
        return {"sent": self.sent, "already_sent": self.skipped, "dead_lettered": self.dead_lettered}

    def ensure_group(self) -> None:
        for stream in self.keys.notification_streams:
            try:
                self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _handle(self, entry_id: bytes, fields: dict[bytes, bytes], k: Keys) -> None:
        """One entry of shard ``k``'s stream."""
        try:
            _, notes = decode_batch(fields[b"data"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # orjson's decode error is a ValueError
            self._set_aside(entry_id, fields, f"{type(exc).__name__}: {exc}", k)
            return
        sent_key = k.sent(self.group, notes[0].header["request_id"]) if notes else ""
        emails = [render(n, self.links) for n in notes]
        already = with_retries(self.settings, "idempotency check", lambda: self.client.hmget(
            sent_key, [e.idempotency_key for e in emails])) if emails else []
        done: list[str] = []
        for e, mark in zip(emails, already, strict=True):
            if mark is not None or not self.sender.send(e):
                self.skipped += 1
            else:
                self.sent += 1
                # marked at once, not only with the ack: a crash later in the batch resends none of those before
                self._mark(sent_key, e.idempotency_key)
            done.append(e.idempotency_key)

        def ack() -> None:
            pipe = self.client.pipeline(transaction=True)
            if done:
                pipe.hset(sent_key, mapping=dict.fromkeys(done, 1))
                pipe.expire(sent_key, self.settings.retention_s)
            pipe.xack(k.notifications, self.group, entry_id)
            pipe.execute()
        with_retries(self.settings, "ack", ack)

    def _mark(self, sent_key: str, key: str) -> None:
        def mark() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(sent_key, key, 1)
            pipe.expire(sent_key, self.settings.retention_s)
            pipe.execute()
        with_retries(self.settings, "sent mark", mark)

    def _set_aside(self, entry_id: bytes, fields: dict[bytes, bytes], error: str, k: Keys) -> None:
        """A notification entry no consumer can read: to the senders' dead-letter stream with its error, and
        acknowledged, so the entries after it go on."""
        def move() -> None:
            pipe = self.client.pipeline(transaction=True)
            entry: dict[Any, Any] = {**fields, "id": entry_id, "group": self.group, "error": error[:2000]}
            pipe.xadd(k.notification_dead_letters, entry)
            pipe.xack(k.notifications, self.group, entry_id)
            pipe.execute()
        with_retries(self.settings, "dead letter", move)
        self.dead_lettered += 1
        log.error("%s: notification entry %r is unreadable (%s); moved to %s", self.name, entry_id, error,
                  k.notification_dead_letters)

    def reclaim(self, count: int = 16) -> int:
        """Take over entries another consumer left pending for longer than ``min_idle_ms``, and handle them."""
        n = 0
        for k in self.keys.all_shards:
            got: Any = with_retries(self.settings, "xautoclaim", partial(
                self.client.xautoclaim, k.notifications, self.group, self.name, self.min_idle_ms, start_id="0-0",
                count=count))
            n += len(got[1])
            for entry_id, fields in got[1]:
                if fields:                      # None when the entry was trimmed meanwhile
                    self._handle(entry_id, fields, k)
        return n

    def run_once(self, count: int = 16, block_ms: int = 100) -> int:
        """Reclaim, then read each shard's stream (blocking up to ``block_ms`` in all) and handle what came."""
        n = self.reclaim(count)
        shards = self.keys.all_shards
        for k in shards:
            got: Any = with_retries(self.settings, "xreadgroup", partial(
                self.client.xreadgroup, self.group, self.name, {k.notifications: ">"}, count=count,
                block=max(1, block_ms // len(shards))))
            for _stream, entries in got or []:
                for entry_id, fields in entries:
                    self._handle(entry_id, fields, k)
                    n += 1
        if self.trim_every_s is not None and time.monotonic() - self._trimmed_at >= self.trim_every_s:
            self._trimmed_at = time.monotonic()
            self.trimmed += sum(with_retries(self.settings, "trim", partial(trim_acknowledged, self.client, stream))
                                for stream in self.keys.notification_streams)
        return n

    def run(self, stop: threading.Event, count: int = 16, block_ms: int = 100) -> None:
        """Until ``stop`` is set; then the batch in hand is finished and acked (a clean drain)."""
        with_retries(self.settings, "create group", self.ensure_group)
        answered = True
        while not stop.is_set():
            if self.report is not None:
                self.report()
            if not self.keeps_keys():
                stop.wait(1.0)
                continue
            try:
                self.run_once(count, block_ms)
                answered = True
            except redis.ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                log.warning("%s: the consumer group is gone (Redis came back empty?); creating it again", self.name)
                with_retries(self.settings, "create group", self.ensure_group)
            except QueueUnavailable as exc:  # retries ran out: Redis is down; the entries in hand stay pending
                answered = False
                log.warning("%s: %s; retrying", self.name, exc)
                stop.wait(0.5)
        if answered and self.report is not None:  # a last one, unless Redis was away just now
            self.report(final=True)

"""The residents' address book: each owner's e-mail address and optional push webhook URL, kept by the platform
for its senders and nowhere else. Addresses never travel on the notifications stream (a notification names the
owner id only) and are never logged: the sender looks an owner up at the moment it sends.

Two books, one interface: :class:`RedisAddressBook` (one hash beside the stream) and :class:`SqliteAddressBook`
(the embedded file). :func:`addresses_from_owners` reads them from the owners table's optional ``email`` and
``push_url`` columns.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.headerregistry import Address as MailAddress
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
import pyarrow as pa
import redis

from dispatcher.connections import with_retries
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.errors import InvalidAddress, InvalidData
from dispatcher.keys import Keys

__all__ = ["Address", "AddressBook", "RedisAddressBook", "SqliteAddressBook", "addresses_from_owners"]

MAX_EMAIL_CHARS = 254
MAX_URL_CHARS = 2000


def _email(value: object, owner_id: int) -> str:
    if not isinstance(value, str) or not 3 <= len(value) <= MAX_EMAIL_CHARS or not value.isprintable() \
            or any(c.isspace() for c in value):
        raise InvalidAddress(f"owner {owner_id}: the e-mail address is not a plain address")
    try:
        parsed = MailAddress(addr_spec=value)
    except (HeaderParseError, ValueError, IndexError):
        raise InvalidAddress(f"owner {owner_id}: the e-mail address is not a plain address") from None
    if not parsed.username or "." not in parsed.domain or parsed.addr_spec != value:
        raise InvalidAddress(f"owner {owner_id}: the e-mail address is not a plain address")
    return value


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _push_url(value: object, owner_id: int) -> str:
    """https, or http to a loopback relay; no credentials in the URL."""
    bad = InvalidAddress(f"owner {owner_id}: the push URL must be https://host/... (http only to a loopback relay)")
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS or not value.isascii() or not value.isprintable():
        raise bad
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 (a port out of range raises ValueError)
    except ValueError:
        raise bad from None
    if not host or parts.username is not None or parts.password is not None or parts.fragment \
            or not (parts.scheme == "https" or (parts.scheme == "http" and _loopback(host))):
        raise bad
    return value


@dataclass(frozen=True)
class Address:
    """Where one resident is reached: an e-mail address, and a push webhook URL if they gave one."""

    owner_id: int
    email: str | None = None
    push_url: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.owner_id, bool) or not isinstance(self.owner_id, int) or self.owner_id < 0:
            raise InvalidAddress(f"owner id must be a non-negative integer, got {self.owner_id!r}")
        if self.email is None and self.push_url is None:
            raise InvalidAddress(f"owner {self.owner_id}: an address needs an e-mail address or a push URL")
        if self.email is not None:
            _email(self.email, self.owner_id)
        if self.push_url is not None:
            _push_url(self.push_url, self.owner_id)

    def __repr__(self) -> str:  # never the address itself, wherever an Address is printed or logged
        return f"Address(owner_id={self.owner_id}, email={'...' if self.email else None}, " \
               f"push_url={'...' if self.push_url else None})"


class AddressBook(Protocol):
    def put_many(self, addresses: Sequence[Address]) -> None:
        """Add or replace these owners' addresses, all or none."""
        ...

    def get_many(self, owner_ids: Sequence[int]) -> dict[int, Address]:
        """The addresses of the owners that have one."""
        ...

    def remove(self, owner_id: int) -> None: ...


def _decode(owner_id: int, raw: bytes | str) -> Address:
    email, push = orjson.loads(raw)
    return Address(owner_id, email, push)


class RedisAddressBook:
    """The book as one Redis hash (:attr:`Keys.addresses`), owner id -> ``[email, push_url]``."""

    def __init__(self, client: redis.Redis, settings: QueueSettings, keys: Keys | None = None) -> None:
        self.r, self.settings = client, settings
        self.key = (keys or settings.keys).addresses

    def put_many(self, addresses: Sequence[Address]) -> None:
        if addresses:
            mapping: dict[Any, Any] = {str(a.owner_id): orjson.dumps([a.email, a.push_url]) for a in addresses}
            with_retries(self.settings, "address book write", lambda: self.r.hset(self.key, mapping=mapping))

    def get_many(self, owner_ids: Sequence[int]) -> dict[int, Address]:
        ids = [int(o) for o in owner_ids]
        if not ids:
            return {}
        got = with_retries(self.settings, "address book read", lambda: self.r.hmget(self.key, [str(o) for o in ids]))
        return {o: _decode(o, raw) for o, raw in zip(ids, got, strict=True) if raw is not None}

    def remove(self, owner_id: int) -> None:
        with_retries(self.settings, "address book write", lambda: self.r.hdel(self.key, str(int(owner_id))))


class SqliteAddressBook:
    """The book as a table of an SQLite file (the embedded store's, or its own)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("CREATE TABLE IF NOT EXISTS addresses (owner_id INTEGER PRIMARY KEY, entry BLOB NOT NULL)")

    def close(self) -> None:
        self._db.close()

    def put_many(self, addresses: Sequence[Address]) -> None:
        rows = [(a.owner_id, orjson.dumps([a.email, a.push_url])) for a in addresses]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO addresses VALUES (?,?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def get_many(self, owner_ids: Sequence[int]) -> dict[int, Address]:
        ids = sorted({int(o) for o in owner_ids})
        out: dict[int, Address] = {}
        with self._lock:
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                q = f"SELECT owner_id, entry FROM addresses WHERE owner_id IN ({','.join('?' * len(chunk))})"
                out.update((int(o), _decode(int(o), e)) for o, e in self._db.execute(q, chunk))
        return out

    def remove(self, owner_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM addresses WHERE owner_id=?", (int(owner_id),))


def addresses_from_owners(owners: pa.Table | Mapping[str, Sequence[object]]) -> list[Address]:
    """The addresses in an owners table's optional ``email`` and ``push_url`` columns (string, nullable);
    owners with neither are left out. A bad address raises :class:`InvalidAddress` naming the owner (not the
    address), and nothing is returned."""
    table = owners if isinstance(owners, pa.Table) else pa.table(dict(owners))
    if "owner_id" not in table.column_names:
        raise InvalidData("the owners table has no owner_id column")
    cols = {}
    for name in ("email", "push_url"):
        if name in table.column_names:
            col = table.column(name)
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
                raise InvalidData(f"owners column {name} must be strings, got {col.type}")
            cols[name] = col.to_pylist()
    ids = table.column("owner_id").to_pylist()
    emails = cols.get("email", [None] * len(ids))
    pushes = cols.get("push_url", [None] * len(ids))
    return [Address(int(o), e, p) for o, e, p in zip(ids, emails, pushes, strict=True)
            if e is not None or p is not None]

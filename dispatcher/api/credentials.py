"""API keys of the HTTP front door: who is calling, from a ``Bearer`` key, never from what a body says.

A key is ``gdk_<key id>_<secret>``: 12 hex digits naming it (shown to operators, used to revoke it) and 32 random
bytes. Only the SHA-256 digest of the whole key is stored. A slow password hash (scrypt, argon2) protects
low-entropy secrets that people choose; a 256-bit random key cannot be guessed, so one SHA-256 is enough and
keeps authentication at a single hash and a single lookup per call.

Each key belongs to one principal: an agency (``agency``), a reviewer (``reviewer``) or a resident (``resident``,
named by the owner id: the resident app's key, for the resident's own clips and public posts). A principal may hold
:data:`MAX_ACTIVE` active keys at once, so a key is rotated by creating the new one, switching, and revoking the
old. A revoked key stays recorded (with the time), and never authenticates again.

:class:`SqliteCredentials` keeps them in a table of the workflow store's SQLite file, :class:`RedisCredentials` in
two hashes on the workflow's Redis (key names from :class:`dispatcher.keys.Keys`); the same tests run on both.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from dispatcher.connections import with_retries
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.errors import ApiKeyError
from dispatcher.keys import Keys

__all__ = ["AGENCY", "MAX_ACTIVE", "RESIDENT", "REVIEWER", "ROLES", "Credentials", "KeyRecord", "Principal",
           "RedisCredentials", "SqliteCredentials", "digest", "new_key"]

AGENCY, REVIEWER, RESIDENT = "agency", "reviewer", "resident"
ROLES = (AGENCY, REVIEWER, RESIDENT)
#: Active keys a principal may hold at once: the current one and its successor during a rotation.
MAX_ACTIVE = 2

_KEY_RE = re.compile(r"gdk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OWNER_RE = re.compile(r"[0-9]{1,18}")

T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """Who a key belongs to."""

    role: str
    name: str


@dataclass(frozen=True)
class KeyRecord:
    """What is kept of a key: never the key itself."""

    key_id: str
    role: str
    name: str
    created_s: int
    revoked_s: int = 0

    @property
    def active(self) -> bool:
        return self.revoked_s == 0


def new_key() -> tuple[str, str]:
    """A fresh (key id, key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"gdk_{key_id}_{secrets.token_urlsafe(32)}"


def digest(key: str) -> str | None:
    """The stored form of a key; None for text that is not a key at all (garbled, truncated, another scheme)."""
    if not _KEY_RE.fullmatch(key):
        return None
    return hashlib.sha256(key.encode()).hexdigest()


def _check_principal(role: str, name: str) -> None:
    if role not in ROLES:
        raise ApiKeyError(f"role must be one of {list(ROLES)}, got {role[:40]!r}")
    if role == RESIDENT and not _OWNER_RE.fullmatch(name):
        raise ApiKeyError(f"a resident is named by the owner id (1-18 digits), got {name[:80]!r}")
    if not _NAME_RE.fullmatch(name):
        raise ApiKeyError(f"{role} must be 1-64 ASCII letters, digits, '-' or '_', got {name[:80]!r}")


def _s(t: datetime) -> int:
    """Whole seconds: times of keys need no more, and Lua's cjson keeps integers exact only to 14 digits."""
    return int(t.timestamp())


class Credentials(Protocol):
    def create(self, role: str, name: str, now: datetime) -> tuple[str, str]:
        """A new key for the principal: (key id, key). The key is returned here once and stored only as its
        digest. Raises :class:`ApiKeyError` when the principal already holds :data:`MAX_ACTIVE` active keys."""
        ...

    def revoke(self, key_id: str, now: datetime) -> KeyRecord:
        """Revoke a key by its id (revoking a revoked key changes nothing); :class:`ApiKeyError` for an unknown
        id."""
        ...

    def authenticate(self, key: str) -> Principal | None:
        """The principal of an active key; None for anything else."""
        ...

    def records(self) -> list[KeyRecord]:
        """Every key, active and revoked, by creation time."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (digest TEXT PRIMARY KEY, key_id TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
    name TEXT NOT NULL, created_s INTEGER NOT NULL, revoked_s INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS api_keys_principal ON api_keys (role, name, revoked_s);
"""


class SqliteCredentials:
    """API keys in a table of an SQLite file (the embedded store's)."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def create(self, role: str, name: str, now: datetime) -> tuple[str, str]:
        _check_principal(role, name)
        key_id, key = new_key()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (n,) = self._db.execute("SELECT COUNT(*) FROM api_keys WHERE role=? AND name=? AND revoked_s=0",
                                        (role, name)).fetchone()
                if n >= MAX_ACTIVE:
                    raise ApiKeyError(f"{role} {name} already has {n} active keys; revoke one first")
                self._db.execute("INSERT INTO api_keys VALUES (?,?,?,?,?,0)",
                                 (digest(key), key_id, role, name, _s(now)))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return key_id, key

    def revoke(self, key_id: str, now: datetime) -> KeyRecord:
        with self._lock:
            self._db.execute("UPDATE api_keys SET revoked_s=? WHERE key_id=? AND revoked_s=0", (_s(now), key_id))
            row = self._db.execute("SELECT key_id, role, name, created_s, revoked_s FROM api_keys WHERE key_id=?",
                                   (key_id,)).fetchone()
        if row is None:
            raise ApiKeyError(f"no API key with id {key_id[:40]!r}")
        return KeyRecord(*row)

    def authenticate(self, key: str) -> Principal | None:
        d = digest(key)
        if d is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT role, name FROM api_keys WHERE digest=? AND revoked_s=0",
                                   (d,)).fetchone()
        return None if row is None else Principal(row[0], row[1])

    def records(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._db.execute("SELECT key_id, role, name, created_s, revoked_s FROM api_keys "
                                    "ORDER BY created_s, key_id").fetchall()
        return [KeyRecord(*r) for r in rows]


# KEYS: api_keys, api_key_ids; ARGV: digest, key id, record, role, name, max active
_CREATE = """
local n = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local r = cjson.decode(v)
  if r.role == ARGV[4] and r.name == ARGV[5] and r.revoked_s == 0 then n = n + 1 end
end
if n >= tonumber(ARGV[6]) then return n end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return -1
"""
# KEYS: api_keys, api_key_ids; ARGV: key id, now_s. Returns the record after, or nil for an unknown id.
_REVOKE = """
local d = redis.call('HGET', KEYS[2], ARGV[1])
if not d then return nil end
local r = cjson.decode(redis.call('HGET', KEYS[1], d))
if r.revoked_s == 0 then
  r.revoked_s = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], d, cjson.encode(r))
end
return cjson.encode(r)
"""


class RedisCredentials:
    """API keys on Redis, next to the workflow's state. Takes the client as an argument."""

    def __init__(self, client: Any, keys: Keys | None = None, settings: QueueSettings | None = None) -> None:
        self.r = client
        self.k = keys or Keys()
        self.settings = settings or QueueSettings(url="redis://")
        self._create = client.register_script(_CREATE)
        self._revoke = client.register_script(_REVOKE)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return with_retries(self.settings, what, fn)

    def create(self, role: str, name: str, now: datetime) -> tuple[str, str]:
        _check_principal(role, name)
        key_id, key = new_key()
        record = orjson.dumps({"key_id": key_id, "role": role, "name": name, "created_s": _s(now),
                               "revoked_s": 0})
        n = int(self._call("create API key", lambda: self._create(
            keys=[self.k.api_keys, self.k.api_key_ids], args=[digest(key), key_id, record, role, name, MAX_ACTIVE])))
        if n >= 0:
            raise ApiKeyError(f"{role} {name} already has {n} active keys; revoke one first")
        return key_id, key

    def revoke(self, key_id: str, now: datetime) -> KeyRecord:
        got = self._call("revoke API key", lambda: self._revoke(keys=[self.k.api_keys, self.k.api_key_ids],
                                                                 args=[key_id, _s(now)]))
        if got is None:
            raise ApiKeyError(f"no API key with id {key_id[:40]!r}")
        return _record(got)

    def authenticate(self, key: str) -> Principal | None:
        d = digest(key)
        if d is None:
            return None
        got = self._call("authenticate", lambda: self.r.hget(self.k.api_keys, d))
        if got is None:
            return None
        rec = _record(got)
        return Principal(rec.role, rec.name) if rec.active else None

    def records(self) -> list[KeyRecord]:
        got = self._call("API keys", lambda: self.r.hvals(self.k.api_keys))
        return sorted((_record(v) for v in got), key=lambda r: (r.created_s, r.key_id))


def _record(raw: bytes | str) -> KeyRecord:
    d = orjson.loads(raw)
    return KeyRecord(d["key_id"], d["role"], d["name"], int(d["created_s"]), int(d["revoked_s"]))

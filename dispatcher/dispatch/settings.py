"""Dispatch settings: the Redis connection, batch sizes, retries and back-pressure, in one frozen dataclass."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from dispatcher.errors import InvalidQueueSettings
from dispatcher.keys import Keys
from dispatcher.settings import coerce, from_environment

__all__ = ["QueueSettings", "redacted"]

#: The one query parameter of redis-py's that a URL keeps: a unix socket's database has no other place.
_REDIS_PY_PARAMS = ("db",)
_NUMBER = re.compile(r"[0-9]+")


def redacted(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: what logs and error messages show of it. The
    credentials run to the last ``@`` (a password may hold any character; too much hidden beats too little)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def _check_url(url: str, cluster: bool) -> None:
    """Refuse, with a typed error naming the setting and not its password, a URL that redis-py would refuse only
    when a client first connects (as a bare ValueError) or would read otherwise than it reads."""
    parts = urlsplit(url)

    def bad(why: str) -> InvalidQueueSettings:
        return InvalidQueueSettings(f"Redis URL {redacted(url)!r}: {why}")
    if parts.scheme not in ("redis", "rediss", "unix") or "://" not in url:
        raise bad("not a redis://, rediss:// or unix:// URL")
    if parts.fragment:
        raise bad("a URL of Redis has no #fragment")
    try:
        parts.port  # noqa: B018 (urllib checks the port when it is read)
    except ValueError:
        raise bad("the port is not a number from 0 to 65535") from None
    if parts.scheme == "unix":
        if not parts.path.strip("/"):
            raise bad("no socket path (unix:///path/to/redis.sock)")
        if cluster:
            raise bad("a Redis Cluster is reached over TCP (redis:// or rediss://), not a unix socket")
    else:  # no host is redis-py's localhost
        db = parts.path.strip("/")
        if db and not _NUMBER.fullmatch(db):
            raise bad(f"the database {db!r} is not a number")
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _REDIS_PY_PARAMS:
            raise bad(f"unknown parameter {key!r}")
        if not _NUMBER.fullmatch(value):
            raise bad(f"{key}={value!r} is not a number")


@dataclass(frozen=True)
class QueueSettings:
    """Connection and dispatch settings. ``url=None`` means the embedded local sink at ``local_path``.

    Every Redis client of geodispatch (store, sink, service, consumer) is made from these by
    :func:`dispatcher.connections.connect`, and every Redis call retried by
    :func:`dispatcher.connections.with_retries` with ``retries``, ``backoff_base`` and ``backoff_max``."""

    url: str | None = None
    #: The URL names one node of a Redis Cluster (``redis://host:port/0?cluster=true``): connect with the cluster
    #: client, which finds the others and follows failovers.
    cluster: bool = False
    local_path: str = "geodispatch-outbox.sqlite"
    hash_tag: str = "gd"
    prefix: str = "geodispatch"
    #: How many hash tags the work is spread over (:class:`dispatcher.keys.Keys`): on a Redis Cluster, as many as
    #: masters, so that each master serves a share; 1 on a single server.
    shards: int = 1
    batch_size: int = 500
    pipeline_batches: int = 64
    socket_timeout: float = 5.0
    connect_timeout: float = 2.0
    retries: int = 8
    backoff_base: float = 0.05
    backoff_max: float = 2.0
    max_backlog: int = 0                   # entries not yet acked by every group; 0 = unbounded
    backpressure_timeout: float = 300.0
    backpressure_poll: float = 0.05
    #: Days the records that name residents are kept: who was notified of a request, their choices, the
    #: dispatch plans and done marks, the consumers' sent marks (aggregate counts are kept). Footage is kept
    #: 180 days at most, so no request can be older.
    retention_days: int = 180
    #: Replicas that must confirm each dispatch step before its batches count as done (``WAIT``; 0: none). Redis
    #: replicates asynchronously: without it, a master that dies can take with it batches it acknowledged, whose
    #: commands were then acknowledged too; with it, what a step appended is on a replica before anything
    #: depends on it. ``wait_timeout_ms`` bounds each WAIT; a step not confirmed in time is retried.
    wait_replicas: int = 0
    wait_timeout_ms: int = 2000

    def __post_init__(self) -> None:
        for name in ("batch_size", "pipeline_batches"):
            if getattr(self, name) < 1:
                raise InvalidQueueSettings(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("socket_timeout", "connect_timeout", "backoff_base", "backoff_max", "backpressure_poll"):
            if not getattr(self, name) > 0:
                raise InvalidQueueSettings(f"{name} must be positive, got {getattr(self, name)}")
        if self.retention_days < 1:
            raise InvalidQueueSettings(f"retention_days must be positive, got {self.retention_days}")
        if self.wait_replicas < 0 or self.wait_timeout_ms < 1:
            raise InvalidQueueSettings(f"wait_replicas must not be negative and wait_timeout_ms must be positive, got "
                                       f"{self.wait_replicas} and {self.wait_timeout_ms}")
        if not 1 <= self.shards <= 16_384:  # a shard is a hash tag, so a slot of a cluster's 16,384 at most
            raise InvalidQueueSettings(f"shards must be from 1 to 16384, got {self.shards}")
        if self.retries < 0 or self.max_backlog < 0 or self.backpressure_timeout < 0:
            raise InvalidQueueSettings("retries, max_backlog and backpressure_timeout must not be negative")
        if not self.hash_tag or any(c in self.hash_tag for c in "{}"):
            raise InvalidQueueSettings(f"hash_tag must be non-empty without braces, got {self.hash_tag!r}")
        # a brace in the prefix would be the hash tag of every key (the first {...} of a name): every shard in
        # one slot, the cluster's capacity gone without a word
        if not self.prefix or any(c in self.prefix for c in "{}"):
            raise InvalidQueueSettings(f"prefix must be non-empty without braces, got {self.prefix!r}")
        if self.url is not None:
            _check_url(self.url, self.cluster)

    @property
    def where(self) -> str:
        """The URL as logs and error messages show it: without its password."""
        return "the local sink" if self.url is None else redacted(self.url)

    @property
    def retention_s(self) -> int:
        return self.retention_days * 86_400

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix, self.hash_tag, self.shards)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> QueueSettings:
        """``redis://host:port/db?batch_size=300&retries=5``, ``unix:///run/redis.sock?db=1&retries=5``: query
        parameters named after our fields are ours, ``db`` redis-py's (a unix socket's database), any other
        raises; the rest of the URL goes to redis-py. ``url`` keeps only what redis-py reads."""
        head, _, query = url.partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        kept = [(k, v) for k, v in pairs if k in _REDIS_PY_PARAMS]
        values = coerce(cls, {k: v for k, v in pairs if k not in _REDIS_PY_PARAMS}, f"URL {redacted(head)}",
                        InvalidQueueSettings, text=True)
        values.update(overrides)
        return cls(**{**values, "url": f"{head}?{urlencode(kept)}" if kept else head})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> QueueSettings:
        """``GEODISPATCH_REDIS_URL`` plus ``GEODISPATCH_QUEUE_<FIELD>``; a misspelled field raises."""
        env = os.environ if environ is None else environ
        values = from_environment(cls, "GEODISPATCH_QUEUE_", InvalidQueueSettings, env)
        url = env.get("GEODISPATCH_REDIS_URL") or values.pop("url", None) or None
        values.pop("url", None)
        return cls.from_url(url, **values) if url else cls(**values)

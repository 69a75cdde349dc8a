"""One connection factory and one retry policy for every Redis client: the store, the sink, the service
workers and the consumer all connect through :func:`connect` and retry through :func:`with_retries`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from redis.backoff import FullJitterBackoff
from redis.retry import Retry

from dispatcher.errors import InvalidQueueSettings, QueueUnavailable

if TYPE_CHECKING:
    from dispatcher.dispatch.settings import QueueSettings

__all__ = ["Prepacked", "connect", "is_transient", "retry_policy", "with_retries"]

#: Replies of a Redis that is full, loading, read-only after a failover, busy with a script or a cluster in
#: transition: each passes.
_TRANSIENT_REPLIES = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError,
                      redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
                      redis.exceptions.MasterDownError)

log = logging.getLogger(__name__)

T = TypeVar("T")


def connect(settings: QueueSettings) -> redis.Redis:
    """A client for ``settings.url`` with the settings' connect and socket timeouts."""
    if settings.url is None:
        raise InvalidQueueSettings("no Redis URL set: use the local sink")
    return redis.Redis.from_url(settings.url, socket_timeout=settings.socket_timeout,
                                socket_connect_timeout=settings.connect_timeout, health_check_interval=30)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis being unreachable or briefly unable to serve (full, loading, failing over):
    trouble that passes, never a fault of the command being run."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, QueueUnavailable, *_TRANSIENT_REPLIES)):
        return True  # BusyLoadingError (LOADING) is a ConnectionError
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("BUSY ")


def retry_policy(settings: QueueSettings) -> Retry:
    """redis-py's :class:`~redis.retry.Retry` for ``settings``: ``settings.retries`` retries after the first
    attempt, each after a full-jitter exponential backoff, uniform in ``[0, min(backoff_max, backoff_base *
    2**k)]`` before retry ``k`` (from 0; redis-py counts failures from 1, hence the halved base)."""
    return Retry(FullJitterBackoff(cap=settings.backoff_max, base=settings.backoff_base / 2), settings.retries,
                 supported_errors=(redis.ConnectionError, redis.TimeoutError, redis.ResponseError))


def with_retries(settings: QueueSettings, what: str, fn: Callable[[], T], *,
                 transient: Callable[[BaseException], bool] = is_transient, service: str = "Redis",
                 exhausted: type[QueueUnavailable] = QueueUnavailable) -> T:
    """``fn()`` retried on transient trouble (``transient``, by default :func:`is_transient`: connection errors,
    timeouts, a full or loading Redis) with :func:`retry_policy`'s attempts and backoff; any other error is
    raised at once. After ``settings.retries`` retries, ``exhausted`` (:class:`QueueUnavailable`) says what was
    being done. ``fn`` must be safe to run again. The senders of e-mail and push retry through it too, with their
    own ``transient``, ``service`` (for the log and the error) and ``exhausted``."""
    def failed(exc: Exception, failures: int) -> None:
        if failures <= settings.retries:
            log.warning("%s error during %s (attempt %d): %s; retrying", service, what, failures, exc)

    policy = retry_policy(settings)
    policy.update_supported_errors([Exception])  # which to retry is ``transient``'s to say
    try:
        return policy.call_with_retry(fn, failed, is_retryable=transient, with_failure_count=True)
    except Exception as exc:
        if not transient(exc):
            raise
        raise exhausted(f"{service} unreachable during {what} after {settings.retries + 1} attempts: "
                        f"{exc}") from exc


class Prepacked:
    """Commands encoded once and sent as they are each time: for the calls a worker repeats with the same
    arguments, a read naming every intake stream and a claim pass over them, whose encoding by redis-py costs
    far more CPU than Redis spends answering (a read of 401 streams: ~3 ms to encode, 0.1 ms in Redis), all of it
    under the worker process's GIL. :meth:`run` sends them in one write and returns the raw replies in order
    (RESP, without redis-py's reply callbacks); an error reply raises, and the connection is then dropped (the
    replies after it are unread)."""

    def __init__(self, client: redis.Redis, commands: Sequence[Sequence[Any]]) -> None:
        self.client = client
        self.count = len(commands)
        pool = client.connection_pool
        encoder = pool.connection_class(**pool.connection_kwargs)  # encodes as the pool's would; never connected
        self.packed = encoder.pack_commands([tuple(c) for c in commands])

    def run(self) -> list[Any]:
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(self.packed)  # type: ignore[no-untyped-call]
            return [conn.read_response() for _ in range(self.count)]
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(conn)

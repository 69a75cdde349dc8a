"""One connection factory and one retry policy for every Redis client: the store, the sink, the service
workers and the consumer all connect through :func:`connect` and retry through :func:`with_retries`.

With ``cluster=true`` in the queue settings, :func:`connect` gives redis-py's cluster client
(:class:`redis.cluster.RedisCluster`), which routes each command to the master serving its key's slot and follows
the cluster through a failover. A pipeline on it is split by node and is not atomic across slots: every atomic
step of geodispatch (each Lua script, each MULTI/EXEC) names keys of one slot only (:mod:`dispatcher.keys`).
Lua scripts go through :func:`script`, which works on both clients and in both kinds of pipeline."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import FullJitterBackoff
from redis.client import EMPTY_RESPONSE, NEVER_DECODE, Pipeline
from redis.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import Script
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from dispatcher.errors import InvalidQueueSettings, QueueUnavailable

if HIREDIS_AVAILABLE:
    import hiredis

if TYPE_CHECKING:
    from dispatcher.dispatch.settings import QueueSettings

__all__ = ["EvictionWatch", "Prepacked", "SlotPipeline", "check_at_start", "connect", "each_node", "held_connection",
           "is_transient", "not_durable", "pipeline", "refresh_cluster_map", "require_no_eviction", "retry_policy",
           "script", "transaction", "with_retries"]

#: Replies of a Redis that is full, loading, read-only after a failover, busy with a script or a cluster in
#: transition (a slot moved to another master, the cluster down while it fails over): each passes.
_TRANSIENT_REPLIES = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError,
                      redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
                      redis.exceptions.MasterDownError, redis.exceptions.AskError,
                      redis.exceptions.ClusterError, redis.exceptions.SlotNotCoveredError)

log = logging.getLogger(__name__)

T = TypeVar("T")


def connect(settings: QueueSettings) -> redis.Redis:
    """A client for ``settings.url`` with the settings' connect and socket timeouts: redis-py's cluster client
    when ``settings.cluster`` (the URL names any one node; the client learns the others), else the plain one.
    Both answer the same commands, so callers take either (typed as the plain one)."""
    if settings.url is None:
        raise InvalidQueueSettings("no Redis URL set: use the local sink")
    if settings.cluster:
        cluster: Any = RedisCluster.from_url(settings.url, socket_timeout=settings.socket_timeout,
                                             socket_connect_timeout=settings.connect_timeout,
                                             health_check_interval=30)
        return cluster  # type: ignore[no-any-return]
    return redis.Redis.from_url(settings.url, socket_timeout=settings.socket_timeout,
                                socket_connect_timeout=settings.connect_timeout, health_check_interval=30)


class _Script(Script):
    """A Lua script run by SHA where it can be. In a cluster pipeline redis-py refuses ``EVALSHA`` (it cannot
    load a missing script on the right node), so there the script goes whole with ``EVAL``: Redis caches it by
    its digest all the same, and the call is routed by its keys like any other."""

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        if type(client) is _LeanPipeline:  # the common case, queued as it is (no redis-py command layers)
            keys = tuple(keys or ())
            client.scripts.add(self)
            client.command_stack.append((("EVALSHA", self.sha, len(keys), *keys, *(args or ())), {}))
            return client
        if isinstance(client, SlotPipeline):
            return client.run_script(self, list(keys or ()), list(args or ()))
        if isinstance(client, ClusterPipeline):
            keys, args, pipe = list(keys or ()), list(args or ()), cast(Any, client)
            return pipe.execute_command("EVAL", self.script, len(keys), *keys, *args)
        return super().__call__(keys, args, client)


class SlotPipeline:
    """A non-transactional pipeline on a cluster client made of one plain pipeline per master: each command goes
    to the master of its first key's slot (a script's, of its first key), and :meth:`execute` returns the replies
    in the order the commands were queued. redis-py's own cluster pipeline asks a node (``COMMAND GETKEYS``, a
    round trip carrying every argument) where each script call goes; here the slot is computed from the key, the
    scripts run by SHA, and with ``wait`` each master's pipeline ends with ``WAIT`` on the connection that wrote
    (:meth:`execute` then also raises :class:`QueueUnavailable` when a master's replicas did not all confirm).
    After an error the client's map of the cluster is read again (a failover moved a slot) and the error raised,
    for the caller's retry to run the whole pipeline again."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster: Any = cluster
        self._queued: list[tuple[Any, str, tuple[Any, ...], dict[str, Any]]] = []  # (node, method, args, kwargs)

    def _node(self, key: Any) -> Any:
        return self.cluster.get_node_from_key(key)

    def __getattr__(self, method: str) -> Callable[..., SlotPipeline]:
        def queue(*args: Any, **kwargs: Any) -> SlotPipeline:  # XREAD's first argument maps its keys to ids
            key = next(iter(args[0])) if isinstance(args[0], dict) else args[0]
            self._queued.append((self._node(key), method, args, kwargs))
            return self
        return queue

    def run_script(self, s: Script, keys: list[Any], args: list[Any]) -> SlotPipeline:
        self._queued.append((self._node(keys[0]), "__script__", (s, keys, args), {}))
        return self

    def execute(self, wait: tuple[int, int] | None = None) -> list[Any]:
        by_node: dict[Any, list[int]] = {}
        for pos, (node, *_) in enumerate(self._queued):
            by_node.setdefault(node, []).append(pos)
        out: list[Any] = [None] * len(self._queued)
        try:
            for node, positions in by_node.items():
                pipe: Any = _LeanPipeline.on(self.cluster.get_redis_connection(node))
                for pos in positions:
                    _, method, args, kwargs = self._queued[pos]
                    if method == "__script__":
                        Script.__call__(args[0], args[1], args[2], client=pipe)
                    else:
                        getattr(pipe, method)(*args, **kwargs)
                if wait is not None:
                    pipe.execute_command("WAIT", *wait)
                got = pipe.execute()
                if wait is not None:
                    *got, acked = got
                    if int(acked) < wait[0]:
                        raise QueueUnavailable(f"{acked} of {wait[0]} replicas of {node.name} confirmed the writes "
                                               f"in {wait[1]} ms")
                for pos, reply in zip(positions, got, strict=True):
                    out[pos] = reply
        except redis.RedisError:
            refresh_cluster_map(self.cluster)
            raise
        return out


#: connection pool -> the SHAs of the scripts known to be loaded on its server
_loaded: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
_loaded_lock = threading.Lock()


class _LeanPipeline(Pipeline):
    """redis-py's pipeline (plain or MULTI/EXEC) on a plain client, run lean: the commands queued the same way,
    then packed, sent in one write and their replies read and converted (redis-py's reply callbacks) without the
    rest of redis-py's execute, which costs a worker several times what Redis spends answering: its own retries
    (ours are :func:`with_retries`'), instrumentation, a ``SCRIPT EXISTS`` round trip before every execute that
    holds a script. Here the scripts loaded on a server are remembered per connection pool; a pipeline that meets
    ``NOSCRIPT`` (the server restarted empty, or its scripts were flushed) loads its scripts and runs once more,
    which is harmless: every pipeline geodispatch queues a script in is safe to run again (:func:`with_retries`
    runs it again after a dropped connection too), each script skipping what is done. An error reply raises
    (with ``raise_on_error``) once every reply is read; a connection that failed is dropped. No ``WATCH``."""

    #: MULTI/EXEC around the commands (redis-py's ``transaction`` attribute, which its typing takes for a method)
    atomic = False

    @classmethod
    def on(cls, client: Any, transaction: bool = False) -> _LeanPipeline:
        pipe = cls(client.connection_pool, client.response_callbacks, transaction, None)
        pipe.atomic = transaction
        return pipe

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack, scripts = self.command_stack, set(self.scripts)
        if not stack:
            return []
        try:
            got = self._run(stack, scripts)
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in got):
                with _loaded_lock:
                    _loaded.pop(self.connection_pool, None)
                got = self._run(stack, scripts)
        finally:
            self.reset()
        if raise_on_error:
            for r in got:
                if isinstance(r, redis.ResponseError):
                    raise r
        return got

    def _run(self, stack: list[Any], scripts: set[Any]) -> list[Any]:
        """Every reply of ``stack`` in order (an error reply as its exception)."""
        conn = held_connection(self.connection_pool)
        try:
            if scripts:
                self._load(conn, scripts)
            cmds = [args for args, _ in stack]
            conn.send_packed_command(_packed(conn, [("MULTI",), *cmds, ("EXEC",)] if self.atomic else cmds))
            if not self.atomic:
                return [self._reply(conn, args, options) for args, options in stack]
            queued = [self._reply(conn, ("MULTI",), {})] + [self._reply(conn, ("_",), {}) for _ in stack]
            try:
                done = conn.read_response()
            except redis.exceptions.ExecAbortError as exc:  # a command refused as queued: nothing ran
                return [next((e for e in queued if isinstance(e, Exception)), exc)] * len(stack)
            if not isinstance(done, list) or len(done) != len(stack):
                raise redis.ResponseError(f"EXEC answered {done!r} for {len(stack)} commands")
            return [r if isinstance(r, Exception) else self._convert(args, options, r)
                    for r, (args, options) in zip(done, stack, strict=True)]
        except BaseException:
            conn.disconnect()
            raise

    def _reply(self, conn: Any, args: Sequence[Any], options: dict[str, Any]) -> Any:
        try:
            r = conn.read_response(disable_decoding=True) if NEVER_DECODE in options else conn.read_response()
        except redis.ResponseError as exc:
            return options[EMPTY_RESPONSE] if EMPTY_RESPONSE in options else exc
        return self._convert(args, options, r)

    def _convert(self, args: Sequence[Any], options: dict[str, Any], r: Any) -> Any:
        callbacks: Any = self.response_callbacks
        callback = callbacks.get(args[0])
        if callback is None:
            return r
        return callback(r, **{k: v for k, v in options.items() if k not in _NOT_FOR_CALLBACKS})

    def _load(self, conn: Any, scripts: set[Any]) -> None:
        """The scripts not known to be on the server: asked about (``SCRIPT EXISTS``), loaded where missing."""
        with _loaded_lock:
            known = _loaded.setdefault(self.connection_pool, set())
        missing = [s for s in scripts if s.sha not in known]
        if not missing:
            return
        conn.send_command("SCRIPT", "EXISTS", *(s.sha for s in missing))
        for s, there in zip(missing, conn.read_response(), strict=True):
            if not there:
                conn.send_command("SCRIPT", "LOAD", s.script)
                conn.read_response()
        known.update(s.sha for s in missing)


_held = threading.local()


def held_connection(pool: Any) -> Any:
    """The connection of ``pool`` the calling thread holds for its lean calls (:class:`_LeanPipeline`,
    :class:`Prepacked`): taken from the pool once and kept, not taken and given back for each call (redis-py's
    pool spends more CPU on that, its bookkeeping and the check that the connection is clean, than a worker's
    smaller calls cost in Redis). A caller reads every reply it asked for, or drops the connection
    (``disconnect``: the next call connects again), so it is clean each time. A new process takes its own."""
    conns: weakref.WeakKeyDictionary[Any, tuple[Any, int]] | None = getattr(_held, "conns", None)
    if conns is None:
        conns = _held.conns = weakref.WeakKeyDictionary()
    got = conns.get(pool)
    if got is None or got[1] != os.getpid():
        got = conns[pool] = (pool.get_connection(), os.getpid())
    return got[0]


_NOT_FOR_CALLBACKS = frozenset({"keys", NEVER_DECODE, EMPTY_RESPONSE})


def _packed(conn: Any, commands: list[Any]) -> Any:
    """The commands in the wire format, by hiredis in one piece when it can (every argument a str, bytes, int or
    float: ours are), else by the connection's encoder; a command name of several words (``XGROUP CREATE``) is
    sent as its words, as redis-py does."""
    if HIREDIS_AVAILABLE:
        try:
            return [b"".join(hiredis.pack_command(tuple(c[0].split()) + tuple(c[1:]) if " " in c[0] else tuple(c))
                             for c in commands)]
        except TypeError:
            pass
    return conn.pack_commands(commands)


def pipeline(client: Any) -> Any:
    """A non-transactional pipeline on ``client``: a :class:`SlotPipeline` on a cluster client, a lean one of
    redis-py's on a plain one (:class:`_LeanPipeline`). Each command is routed by its first key; what a call
    needs atomically is one script."""
    return SlotPipeline(client) if isinstance(client, RedisCluster) else _LeanPipeline.on(client)


def transaction(client: Any) -> Any:
    """A MULTI/EXEC pipeline on ``client`` (its commands in one slot on a cluster): redis-py's cluster pipeline
    on a cluster client, a lean one of redis-py's on a plain one (:class:`_LeanPipeline`)."""
    if isinstance(client, RedisCluster):
        return cast(Any, client).pipeline(transaction=True)
    return _LeanPipeline.on(client, True)


def script(client: Any, source: str) -> Script:
    """``source`` registered on ``client`` (plain or cluster): call it with ``keys``, ``args`` and optionally
    ``client=`` a pipeline of either kind. Every key a script touches is in ``keys``, all in one slot."""
    return _Script(client, source)


def require_no_eviction(client: Any, settings: QueueSettings) -> None:
    """Refuse a Redis that may delete keys to make room: every node's ``maxmemory-policy`` must be
    ``noeviction`` (Redis's default). Under any other policy a Redis at its ``maxmemory`` deletes what it
    chooses, and every promise the keys keep goes with them: a batch's done mark (the batch goes out again), a
    plan (a retry resolves anew), an owner's notices of the day (the cap forgets them), an opt-out. Under
    ``noeviction`` a full Redis refuses writes instead, which the service retries and reports. On a cluster every
    node is asked (:func:`each_node`). Raises :class:`InvalidQueueSettings` naming the node and its policy; Redis
    errors pass as they are (a transient one is for the caller to retry)."""
    for address, one in each_node(client, settings):
        try:
            got = one.info("memory")
        except redis.exceptions.NoPermissionError as exc:
            raise InvalidQueueSettings(f"cannot read Redis's eviction policy (INFO memory: {exc}): the service's "
                                       "connection needs +info") from exc
        policy = got.get("maxmemory_policy") if isinstance(got, dict) else None
        if policy != "noeviction":
            where = "" if address is None else f" node {address}"
            raise InvalidQueueSettings(
                f"Redis{where} has maxmemory-policy {policy!r}: at its maxmemory it would delete keys the service "
                "keeps its promises in (a batch's done mark, a plan, an owner's notices), sending a batch twice or "
                "an owner past the cap; set maxmemory-policy noeviction")


def each_node(client: Any, settings: QueueSettings) -> Iterator[tuple[str | None, Any]]:
    """(address, a client of that node alone) for every node of ``client``'s Redis: the client itself (address
    None) on a plain server; on a cluster every node ``CLUSTER NODES`` lists, on a connection of its own made from
    ``settings`` (credentials and all) and closed after: a replica too, which a failover makes a master
    (``CLUSTER SLOTS``, the cluster client's view, leaves out a replica that holds no data yet), but not one the
    cluster marks failed."""
    if not isinstance(client, RedisCluster):
        yield None, client
        return
    for address, node in sorted(cast(Any, client).cluster_nodes().items()):
        flags = set(str(node.get("flags", "")).split(","))
        if flags & {"fail", "noaddr", "handshake"}:
            continue
        with redis.Redis.from_url(_node_url(str(settings.url), address), socket_timeout=settings.socket_timeout,
                                  socket_connect_timeout=settings.connect_timeout) as one:
            yield address, one


class EvictionWatch:
    """Whether Redis still keeps every key it is given, for a loop that runs on (a worker's, a sender's): asked
    at once, then again every ``every_s`` seconds (each second while it does not; ``every_s`` 0: only at once),
    the last answer kept in between and through Redis trouble (that is the loop's to handle). An operator may set
    an eviction policy while the service runs; the loop then takes nothing more until it is set back. A change
    either way is logged once."""

    def __init__(self, client: Any, settings: QueueSettings, name: str, every_s: float = 10.0) -> None:
        self.client, self.settings, self.name, self.every_s = client, settings, name, every_s
        self.ok = True
        self._due = -float("inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self._due:
            return self.ok
        try:
            require_no_eviction(self.client, self.settings)
            if not self.ok:
                log.warning("%s: Redis keeps every key again (maxmemory-policy noeviction); going on", self.name)
            self.ok = True
        except InvalidQueueSettings as exc:
            if self.ok:
                log.error("%s: %s; taking nothing more until then", self.name, exc)
            self.ok = False
        except redis.RedisError:
            pass
        self._due = now + (1.0 if not self.ok else self.every_s if self.every_s > 0 else float("inf"))
        return self.ok


def check_at_start(settings: QueueSettings) -> None:
    """At start, before anything runs: a Redis that answers now and may evict keys is refused
    (:func:`require_no_eviction`), as one error, and one that would lose acknowledged writes in a restart is
    warned of (:func:`not_durable`); one that does not answer yet is left to the checks made once it does (a
    worker's, a sender's, the API's readiness)."""
    client = connect(settings)
    try:
        require_no_eviction(client, settings)
        for address in not_durable(client, settings):
            log.warning("Redis%s keeps no append-only file and has no replica: a restart loses what it acknowledged "
                        "since its last snapshot (done and sent marks among it: batches and e-mails would go out "
                        "again); set appendonly yes", "" if address is None else f" node {address}")
    except redis.RedisError as exc:
        if not is_transient(exc):
            raise
    finally:
        client.close()


def not_durable(client: Any, settings: QueueSettings) -> list[str | None]:
    """The masters (:func:`each_node`; None: a plain server) that keep no append-only file and have no replica
    connected: a restart of one loses every write since its last snapshot, those it acknowledged too."""
    out = []
    for address, one in each_node(client, settings):
        got = one.info("persistence", "replication")
        if got.get("role") == "master" and not got.get("aof_enabled") and not got.get("connected_slaves"):
            out.append(address)
    return out


def _node_url(url: str, address: str) -> str:
    """``url`` (a cluster's, credentials and all) naming the node at ``address`` (``host:port``) instead."""
    parts = urlsplit(url)
    host, _, port = address.rpartition(":")
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user + '@' if user else ''}"
                                            f"{f'[{host}]' if ':' in host else host}:{port}"))


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


@functools.lru_cache(maxsize=64)
def _policy(settings: QueueSettings) -> Retry:
    """:func:`retry_policy` retrying every exception (which to retry is ``transient``'s to say), made once per
    settings: it holds no state of a call (full-jitter backoff has none), and every Redis call goes through it."""
    policy = retry_policy(settings)
    policy.update_supported_errors([Exception])
    return policy


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

    policy = _policy(settings)
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
    replies after it are unread).

    On a cluster client every command must name keys of one slot; each run goes to the master serving that slot
    now, and after an error the client's map of the cluster is read again (a failover moved the slot)."""

    def __init__(self, client: redis.Redis, commands: Sequence[Sequence[Any]]) -> None:
        self.client = client
        self.count = len(commands)
        self.slot: int | None = None
        if isinstance(client, RedisCluster):
            slots = {client.determine_slot(*c) for c in commands}
            if len(slots) != 1:
                raise InvalidQueueSettings(f"prepacked commands span {len(slots)} cluster slots, not one")
            self.slot = slots.pop()
        pool = self._pool()
        encoder = pool.connection_class(**pool.connection_kwargs)  # encodes as the pool's would; never connected
        self.packed = encoder.pack_commands([tuple(c) for c in commands])

    def _pool(self) -> Any:
        if self.slot is None:
            return self.client.connection_pool
        cluster: Any = self.client
        node = cluster.nodes_manager.get_node_from_slot(self.slot)
        return cluster.get_redis_connection(node).connection_pool

    def run(self) -> list[Any]:
        conn = held_connection(self._pool())
        try:
            conn.send_packed_command(self.packed)
            return [conn.read_response() for _ in range(self.count)]
        except BaseException:
            conn.disconnect()
            if self.slot is not None:
                self._remap()
            raise

    def _remap(self) -> None:
        refresh_cluster_map(self.client)


def refresh_cluster_map(client: Any) -> None:
    """A cluster client reads again which master serves which slot (after an error that may be a failover);
    nothing for a plain client, or while the cluster cannot say (the caller's retry comes back here)."""
    if not isinstance(client, RedisCluster):
        return
    try:
        client.nodes_manager.initialize()
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        log.debug("cluster map not refreshed: %s", exc)

"""Process supervision for ``geodispatch serve``: worker processes that share one memory-mapped index, and the
signal forwarding that stops them all, even during start-up."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dispatcher.errors import WorkerFailed

if TYPE_CHECKING:
    from dispatcher.dispatch.consumer import Sender
    from dispatcher.dispatch.links import LinkSigner
    from dispatcher.service.feed import FeedFollower
    from dispatcher.service.worker import Worker

__all__ = ["LOG_FORMAT", "StopSignal", "consume", "open_worker", "serve", "serve_process", "stop_on_signals",
           "wait_for_redis"]

log = logging.getLogger(__name__)

#: One log format for the parent and its workers.
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


class StopSignal:
    """A stop flag a signal handler may set: ``threading.Event``'s ``set``, ``is_set`` and ``wait``, on a
    re-entrant lock.

    A Python signal handler runs on the main thread between two of its bytecodes. ``Event.set()`` in a handler that
    interrupts the main thread inside another ``set()`` or a ``wait()`` of the same Event waits for ever on the
    plain lock that thread already holds: a second SIGTERM close behind the first (the parent forwarding one a
    process group also got) left a worker hung with its threads retrying a Redis that was gone. Here the handler
    takes the lock again instead."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            if not self._flag:
                self._cond.wait(timeout)
            return self._flag


def stop_on_signals(stop: StopSignal, then: Callable[[int], None] | None = None) -> None:
    """Set ``stop`` on SIGTERM and SIGINT (then call ``then(signum)``, if given); from the main thread only."""

    def handle(signum: int, _frame: Any) -> None:
        stop.set()
        if then is not None:
            then(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


def serve_process(name: str, index_dir: str, redis_url: str, agencies: str, policy: dict[str, Any],
                  settings: Any, ready: Any = None, log_level: str = "WARNING") -> None:
    """One worker process: opens the memory-mapped index (shared with the other workers through the page
    cache), connects, and serves with ``settings.threads`` consumer threads until SIGTERM or SIGINT, finishing
    the batch in hand first. SIGUSR1 prints every thread's stack to stderr. With ``settings.feed_dir``, the index
    is the latest snapshot there, brought up to date from the change feed before the worker says it is ready,
    and kept so (before each batch, and by a follower thread while idle)."""
    import faulthandler
    import gc
    import sys

    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    stop = StopSignal()
    stop_on_signals(stop)
    opened = open_worker(name, index_dir, redis_url, agencies, policy, settings, stop)
    if opened is None:
        return
    workers, feed = opened
    threads = [threading.Thread(target=w.run, args=(stop,), name=w.name) for w in workers]
    # What start-up made (~200,000 objects: modules, the agencies' geometries, the compiled kernels' dispatchers)
    # lives as long as the process: out of the collector's sight, a full collection no longer walks it. It did
    # every few seconds under load (a batch's objects outlive a few young collections and count as old ones),
    # each pausing every thread of the worker: 150-185 ms at 10M cameras on a loaded machine, the p99 itself.
    gc.freeze()
    if feed is not None:
        threads.append(threading.Thread(target=feed.run, args=(stop,), name=f"{name}-feed"))
    for t in threads:
        t.start()
    if ready is not None:
        ready.set()
    for t in threads:
        t.join()
    for w in workers:
        log.info("%s stopped: %d handled, %d dispatched, %d refused, %d reclaimed", w.name, w.stats.handled,
                 w.stats.dispatched, w.stats.refused, w.stats.claimed)


def open_worker(name: str, index_dir: str, redis_url: str, agencies: str, policy: dict[str, Any], settings: Any,
                stop: Any) -> tuple[list[Worker], FeedFollower | None] | None:
    """What a worker process serves with, ready to run: its index (the latest snapshot brought up to date from
    the feed, with ``settings.feed_dir``) and ``settings.threads`` workers, each with its own connections and
    pipeline; with everything their first request and the feed's first change run compiled (or loaded from
    Numba's cache) by the layers that own it. None when ``stop`` was set before Redis answered."""
    from dispatcher.connections import connect
    from dispatcher.dispatch.dispatcher import Dispatcher
    from dispatcher.dispatch.settings import QueueSettings
    from dispatcher.dispatch.sinks import RedisSink
    from dispatcher.index.camera_index import CameraIndex
    from dispatcher.service.feed import FeedFollower, Snapshots
    from dispatcher.service.worker import Worker, consumer_threads
    from dispatcher.workflow.agencies import AgencyRegistry
    from dispatcher.workflow.pipeline import Pipeline
    from dispatcher.workflow.policy import Policy
    from dispatcher.workflow.review import Workflow
    from dispatcher.workflow.store import RedisStore

    snapshots = Snapshots(settings.feed_dir) if settings.feed_dir else None
    index = snapshots.open_latest() if snapshots is not None else CameraIndex.open(index_dir)
    registry = AgencyRegistry.load(agencies)
    qs = QueueSettings.from_url(redis_url)
    rules = Policy.from_dict(policy)
    if not wait_for_redis(qs, stop):
        return None
    feed = None
    if snapshots is not None:
        feed = FeedFollower(index, connect(qs), name, qs.keys, snapshots=snapshots, queue=qs)
        feed.catch_up()
        log.info("%s: index at feed position %d", name, index.version)
    # Each thread is a consumer of its own, with its own connections: while one waits on a Redis round trip,
    # another resolves (the index kernels release the GIL) or encodes.
    workers = []
    for k, (shards, backlog, standby) in enumerate(consumer_threads(settings.threads, qs.keys.shards,
                                                                    settings.standby)):
        pipeline = Pipeline(Workflow(RedisStore(connect(qs), qs.keys), registry, rules), index,
                            Dispatcher(RedisSink(qs), qs))
        workers.append(Worker(name if settings.threads == 1 else f"{name}-t{k}", connect(qs), pipeline, settings,
                              qs.keys, queue=qs, agencies=[a.agency_id for a in registry], feed=feed,
                              shards=shards, backlog=backlog, standby=standby))
    return workers, feed


def wait_for_redis(settings: Any, stop: Any) -> bool:
    """Block until Redis answers (logging once that it is awaited), pausing between tries as every Redis call
    retries (full-jitter exponential backoff, ``settings.backoff_base`` doubling up to ``backoff_max``); False
    when ``stop`` was set first. A Redis that may evict keys is refused once it answers
    (:func:`~dispatcher.connections.require_no_eviction`)."""
    import redis
    from redis.backoff import FullJitterBackoff

    from dispatcher.connections import connect, is_transient, require_no_eviction

    client = connect(settings)
    backoff = FullJitterBackoff(cap=settings.backoff_max, base=settings.backoff_base)
    warned = False
    failures = 0
    while not stop.is_set():
        try:
            client.ping()
            require_no_eviction(client, settings)
            if warned:
                log.warning("Redis answers at %s", settings.where)
            return True
        except redis.RedisError as exc:
            if not is_transient(exc):
                raise
            if not warned:
                log.warning("waiting for Redis at %s (%s)", settings.where, exc)
                warned = True
            failures += 1
            stop.wait(backoff.compute(min(failures, 30)))
    return False


def serve(index_dir: str, redis_url: str, workers: int, agencies: str, policy: dict[str, Any],
          settings: Any, say: Callable[[str], None], log_level: str = "WARNING",
          metrics: tuple[str, int] | None = None) -> None:
    """Run ``workers`` worker processes (spawned) until SIGTERM or SIGINT, which reaches every worker, even
    one still starting; raises :class:`WorkerFailed` when one exited with an error. With ``metrics`` (host,
    port), the workers' reports are served as Prometheus metrics there meanwhile (``/metrics``)."""
    from dispatcher.connections import check_at_start
    from dispatcher.dispatch.settings import QueueSettings
    from dispatcher.errors import InvalidServiceSettings
    from dispatcher.index.camera_index import CameraIndex
    from dispatcher.settings import check_count
    from dispatcher.workflow.agencies import AgencyRegistry
    from dispatcher.workflow.policy import Policy

    # A misspelt setting, a directory that is not an index or a bad agencies file fails here, as one error,
    # not in every worker.
    check_count("workers", workers, InvalidServiceSettings)
    qs = QueueSettings.from_url(redis_url)
    Policy.from_dict(policy)
    CameraIndex.open(index_dir, warm_up=False)
    AgencyRegistry.load(agencies)
    check_at_start(qs)  # as one error, before any worker starts
    ctx = mp.get_context("spawn")
    readies = [ctx.Event() for _ in range(workers)]
    procs = [ctx.Process(target=serve_process, name=f"geodispatch-worker-{k}",
                         args=(f"{os.uname().nodename}-{os.getpid()}-{k}", index_dir, redis_url, agencies, policy,
                               settings, readies[k], log_level)) for k in range(workers)]
    stopping: list[int] = []
    stopped = StopSignal()

    def forward(signum: int) -> None:
        stopping.append(signum)
        stopped.set()
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                os.kill(p.pid, signal.SIGTERM)

    # The handler goes in before any worker starts (and before Redis is awaited for the first snapshot): a
    # SIGTERM during start-up stops them all too.
    stop_on_signals(stopped, forward)
    # With a feed, the first snapshot needs Redis (has the feed been trimmed?): a Redis not up yet is waited for,
    # as the workers wait for it, rather than failing the start.
    if settings.feed_dir and not wait_for_redis(qs, stopped):
        say("stopped before Redis answered")
        return
    snapshots = _first_snapshot(index_dir, qs, settings)
    exporter = None
    if metrics is not None:
        from dispatcher.connections import connect
        from dispatcher.service.metrics import serve_metrics

        try:
            exporter, _ = serve_metrics(*metrics, connect(qs), qs.keys, qs, settings.group)
        except OSError as exc:  # before any worker starts: one line, nothing left running
            raise OSError(f"cannot serve the metrics at {metrics[0]}:{metrics[1]}: {exc.strerror}") from exc
        say(f"metrics at http://{metrics[0]}:{exporter.server_port}/metrics")
    for p in procs:
        p.start()
    done = threading.Event()
    background = None
    if snapshots is not None and settings.snapshot_every_s > 0:
        background = threading.Thread(target=_snapshot_loop, args=(snapshots, qs, settings, done),
                                      name="geodispatch-snapshots", daemon=True)
        background.start()
    if stopping:  # arrived while a worker was starting: that one had no pid to signal yet
        forward(stopping[0])
    while not stopping and not all(e.is_set() for e in readies):
        if any(p.exitcode is not None for p in procs):
            forward(signal.SIGTERM)
            break
        time.sleep(0.05)
    if not stopping:
        say(f"serving with {workers} workers; SIGTERM or Ctrl-C to stop")
    for p in procs:
        p.join()
    done.set()
    if exporter is not None:
        exporter.shutdown()
    if background is not None:
        background.join(timeout=60)
    # a worker stopped by SIGTERM before it could install its own handler exits with -SIGTERM: not a failure
    failed = [p.exitcode for p in procs if p.exitcode and not (stopping and p.exitcode == -signal.SIGTERM)]
    if failed:
        raise WorkerFailed(f"worker(s) exited with {failed}")
    say("all workers stopped")


def _first_snapshot(index_dir: str, qs: Any, settings: Any) -> Any:
    """With a feed directory: its :class:`Snapshots`, with a first snapshot when there is none (the index given,
    at position 0); None without one."""
    if not settings.feed_dir:
        return None
    from dispatcher.connections import connect
    from dispatcher.service.feed import Snapshots, ensure_snapshot

    snapshots = Snapshots(settings.feed_dir)
    ensure_snapshot(snapshots, index_dir, connect(qs), qs.keys)
    return snapshots


def _snapshot_loop(snapshots: Any, qs: Any, settings: Any, stop: Any) -> None:
    """The supervisor's background thread: a :class:`Snapshotter` following the feed into its own copy of the
    latest snapshot (never resolved from, so not warmed up), publishing every ``settings.snapshot_every_s``."""
    from dispatcher.connections import connect
    from dispatcher.service.feed import Snapshotter

    Snapshotter(snapshots, snapshots.open_latest(warm_up=False), connect(qs), qs.keys,
                every_s=settings.snapshot_every_s, queue=qs).run(stop)


def consume(redis_url: str, sender: Sender, links: LinkSigner, consumers: int, group: str, min_idle_ms: int,
            say: Callable[[str], None], stop: Any = None, trim_every_s: float | None = None,
            metrics_every_s: float = 5.0) -> int:
    """Run ``consumers`` consumer threads of ``group`` on the notifications stream until SIGTERM or SIGINT (or
    ``stop`` is set), each sending through ``sender`` (the outbox, or SMTP and push) with links signed by
    ``links``; every batch in hand is finished and acknowledged first. The first consumer trims what every group
    has acknowledged every ``trim_every_s`` seconds (None: never). Each reports what it did to Redis every
    ``metrics_every_s`` seconds for operators (0: never; :mod:`dispatcher.service.metrics`). Returns the
    notifications sent."""
    import threading

    from dispatcher.connections import check_at_start, connect
    from dispatcher.dispatch.consumer import Consumer
    from dispatcher.dispatch.settings import QueueSettings

    settings = QueueSettings.from_url(redis_url)
    stop = stop or StopSignal()
    if threading.current_thread() is threading.main_thread():
        stop_on_signals(stop)
    clients = [connect(settings) for _ in range(consumers)]
    clients[0].ping()  # a Redis that is not there, or that may evict the sent marks, is said before any thread starts
    check_at_start(settings)
    name = f"{os.uname().nodename}-{os.getpid()}"
    workers = [Consumer(client, f"{name}-{k}", sender, links=links, group=group, settings=settings,
                        min_idle_ms=min_idle_ms, trim_every_s=trim_every_s if k == 0 else None)
               for k, client in enumerate(clients)]
    workers[0].ensure_group()
    if metrics_every_s > 0:
        from dispatcher.service.metrics import Report

        for c in workers:
            c.report = Report(c.client, settings.keys.sender_reports, settings.keys.sender_seen, c.name,
                              metrics_every_s, c.figures)
    threads = [threading.Thread(target=c.run, args=(stop,), name=c.name) for c in workers]
    for t in threads:
        t.start()
    say(f"consuming with {consumers} consumers of group {group!r}; SIGTERM or Ctrl-C to stop")
    for t in threads:
        t.join()
    sent = sum(c.sent for c in workers)
    say(f"consumers stopped: {sent} sent, {sum(c.skipped for c in workers)} skipped as sent already")
    return sent

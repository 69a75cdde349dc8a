"""What the workers and the senders report, for operators: each worker's counters and batch times, each
sender's notifications, the change feed's lag and what waits on the streams, as Prometheus metrics.

Every consumer thread of ``geodispatch serve`` writes a snapshot of its :class:`WorkerStats` to Redis every
``ServiceSettings.metrics_every_s`` (a :class:`Report`: one script call, the snapshot in ``Keys.worker_reports``,
its time in ``Keys.worker_seen``; reports older than ``KEEP_S`` are dropped on the way), and every consumer of
``geodispatch consume`` its counts (``Keys.sender_reports``). :func:`collect` reads them back, checked, with the
feed's head and every follower's position and the backlogs of the requests and notifications streams, and
:class:`WorkersCollector` gives the result to a ``prometheus_client`` registry, which renders the text exposition
format (``geodispatch metrics``, ``serve --metrics-port``).

These keys are the operators': they count residents notified and commands refused, so no agency or submitter
ACL user can read them (the ACL rules name what those may touch, nothing else), and nothing here is served on the
agencies' HTTP API.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import redis

from dispatcher.connections import each_node, is_transient, script, with_retries
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.keys import Keys

__all__ = ["BATCH_BUCKETS", "KEEP_S", "STALE_REPORTS", "Report", "Snapshot", "WorkerStats", "WorkersCollector",
           "collect", "render", "report", "serve_metrics"]

log = logging.getLogger(__name__)

#: Upper bounds (s) of the batch-time histogram's buckets (a batch: one pipeline run, read to acknowledgement).
BATCH_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
#: A worker that has not reported for this many of its intervals is down (``geodispatch_worker_up`` 0).
STALE_REPORTS = 3
#: Reports older than this (s) are dropped: a worker gone for good leaves the metrics an hour later.
KEEP_S = 3600
#: The statuses a worker keeps in :attr:`WorkerStats.outcomes` (the latest; the counts are all-time).
RECENT = 1000


@dataclass
class WorkerStats:
    """What one consumer thread has done since it started: counters, the latest outcomes, and batch times."""

    handled: int = 0
    refused: int = 0
    dispatched: int = 0
    claimed: int = 0
    recipients: int = 0
    dead_lettered: int = 0
    #: Commands by outcome status (``dispatched``, ``submitted``, ``refused: InvalidArea``...), all-time.
    by_status: Counter[str] = field(default_factory=Counter)
    #: The statuses of the latest :data:`RECENT` commands, oldest first: a worker serves for months, so this
    #: is a window, not a log.
    outcomes: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT))
    batches: int = 0
    batch_seconds: float = 0.0
    #: Batches by wall time: ``batch_buckets[i]`` took at most ``BATCH_BUCKETS[i]`` s and more than the bucket
    #: before (the last: longer than every bound).
    batch_buckets: list[int] = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))

    def count(self, outcome: Any) -> None:
        """One command's outcome (a :class:`~dispatcher.workflow.pipeline.Outcome`)."""
        self.handled += 1
        self.refused += outcome.refused
        self.dispatched += outcome.dispatched_now
        self.recipients += outcome.notified
        self.by_status[outcome.status] += 1
        self.outcomes.append(outcome.status)

    def timed(self, seconds: float) -> None:
        """One batch, and how long it took."""
        self.batches += 1
        self.batch_seconds += seconds
        self.batch_buckets[bisect.bisect_left(BATCH_BUCKETS, seconds)] += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as a report carries them."""
        return {"handled": self.handled, "refused": self.refused, "dispatched": self.dispatched,
                "claimed": self.claimed, "recipients": self.recipients, "dead_lettered": self.dead_lettered,
                "by_status": dict(self.by_status), "batches": self.batches, "batch_seconds": self.batch_seconds,
                "batch_buckets": list(self.batch_buckets)}


# KEYS: reports (hash: worker -> its report), seen (sorted set: worker -> unix time of its report)
# ARGV: worker, report, now (unix s), keep_s
_REPORT_LUA = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3] - ARGV[4], 'LIMIT', 0, 100)
if #old > 0 then
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('ZREM', KEYS[2], unpack(old))
end
return #old
"""


class Report:
    """One service thread's reporter: its ``figures()`` (a JSON-able dict) to Redis under ``name`` in the
    ``reports`` hash and the ``seen`` sorted set, in one script call that also drops reports older than
    ``KEEP_S``. Calling it writes a report when one is due (every ``every_s``), or now when ``final``."""

    def __init__(self, client: Any, reports: str, seen: str, name: str, every_s: float,
                 figures: Callable[[], dict[str, Any]]) -> None:
        self.reports, self.seen, self.name, self.every_s, self.figures = reports, seen, name, every_s, figures
        self.started = time.time()
        self._run = script(client, _REPORT_LUA)
        self._next = 0.0
        self._failing = False

    def write(self) -> None:
        """Write a report now (raises what Redis says)."""
        now = time.time()
        body = orjson.dumps({**self.figures(), "at": now, "started": self.started, "every_s": self.every_s})
        self._run(keys=[self.reports, self.seen], args=[self.name, body, now, KEEP_S])

    def __call__(self, final: bool = False) -> None:
        """Write a report if one is due (or ``final``). One that fails (Redis away, full, or refusing) is
        skipped, never retried: it is nobody's command, and the next one says all. The first failure of a run is
        a warning (a NOPERM would otherwise hide for good), the others debug."""
        if not (final or time.monotonic() >= self._next):
            return
        self._next = time.monotonic() + self.every_s
        try:
            self.write()
            self._failing = False
        except redis.RedisError as exc:
            (log.debug if self._failing else log.warning)("%s: report skipped (%s)", self.name, exc)
            self._failing = True


def report(client: Any, keys: Keys, name: str, stats: WorkerStats, every_s: float = 5.0, **extra: Any) -> None:
    """Write one worker's report now (for a caller that reports once)."""
    Report(client, keys.worker_reports, keys.worker_seen, name, every_s, lambda: {**stats.snapshot(), **extra}).write()


@dataclass
class Snapshot:
    """What :func:`collect` read: each worker's latest report, the feed's head and followers, and the backlogs."""

    at: float
    #: worker -> its report (the :meth:`WorkerStats.snapshot` fields, ``at``, ``started``, ``every_s``...)
    workers: dict[str, dict[str, Any]]
    #: the feed's latest position (0: no change yet), and each follower's last applied position
    feed_head: int
    feed_applied: dict[str, int]
    #: requests stream -> (entries not yet read by the workers' group, entries read and not acknowledged)
    backlog: dict[str, tuple[int, int]]
    #: notifications stream -> its length (what the senders have not trimmed yet)
    notifications: dict[str, int]
    #: reports left out as not readable (another version's, or damaged)
    unreadable: int = 0
    #: notification sender (consumer) -> its report (sent, already_sent, dead_lettered, ``at``...)
    senders: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (notifications stream, consumer group) -> (entries the group has not read yet, read and not acknowledged)
    sending: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    #: Redis node ("" for a plain server, else host:port) -> (its maxmemory-policy, keys it evicted since it started)
    redis_nodes: dict[str, tuple[str, int]] = field(default_factory=dict)


def collect(client: Any, keys: Keys, settings: QueueSettings | None = None, group: str = "workers") -> Snapshot:
    """Read every worker's report, the feed's positions and the streams' backlogs (a few round trips)."""
    from dispatcher.service.feed import position

    qs = settings or QueueSettings(url="redis://")

    def reports() -> tuple[Any, Any, Any, Any]:
        return (client.hgetall(keys.worker_reports), client.hgetall(keys.sender_reports),
                client.hgetall(keys.feed_applied), client.xinfo_stream(keys.feed) if client.exists(keys.feed) else None)

    got, sent, applied, feed = with_retries(qs, "metrics", reports)
    unreadable = 0

    def readable(raw: dict[Any, bytes], check: Callable[[Any], bool]) -> dict[str, dict[str, Any]]:
        nonlocal unreadable
        out = {}
        for k, v in raw.items():
            rep = _readable(v, check)
            if rep is None:
                unreadable += 1
                log.warning("metrics: the report of %r is not one (%d bytes); left out", _s(k)[:80], len(v))
            else:
                out[_s(k)] = rep
        return out
    workers, senders = readable(got, _a_workers), readable(sent, _a_senders)
    head = position(_s(feed["last-generated-id"])) if feed else 0
    backlog: dict[str, tuple[int, int]] = {}
    notifications: dict[str, int] = {}

    sending: dict[tuple[str, str], tuple[int, int]] = {}

    def groups(stream: str) -> list[Any]:
        return client.xinfo_groups(stream) if client.exists(stream) else []

    def streams(k: Keys) -> tuple[list[Any], list[Any], int]:
        return groups(k.requests), groups(k.notifications), client.xlen(k.notifications)

    for k in keys.all_shards:
        commands, senders_groups, n = with_retries(qs, "metrics", lambda k=k: streams(k))  # type: ignore[misc]
        mine = [g for g in commands if _s(g["name"]) == group]
        backlog[k.requests] = _lag(mine[0]) if mine else (0, 0)
        notifications[k.notifications] = int(n)
        sending.update({(k.notifications, _s(g["name"])): _lag(g) for g in senders_groups})
    nodes = with_retries(qs, "metrics", lambda: _nodes(client, qs))
    return Snapshot(time.time(), workers, head, {_s(k): int(v) for k, v in applied.items()}, backlog, notifications,
                    unreadable, senders, sending, nodes)


def _nodes(client: Any, qs: QueueSettings) -> dict[str, tuple[str, int]]:
    """Each node's eviction policy and the keys it evicted (``INFO``): one that evicts breaks the service's promises
    (:func:`~dispatcher.connections.require_no_eviction`), so operators are shown both."""
    out = {}
    try:
        for address, one in each_node(client, qs):
            got = one.info("memory", "stats")
            out[address or ""] = (str(got.get("maxmemory_policy", "")), int(got.get("evicted_keys", 0)))
    except redis.exceptions.NoPermissionError:  # a connection without +info: the rest of the metrics all the same
        return {}
    return out


def _lag(g: dict[Any, Any]) -> tuple[int, int]:
    """A consumer group's (entries not read yet, entries read and not acknowledged), from ``XINFO GROUPS``."""
    return int(g.get("lag") or 0), int(g["pending"])


#: The figures every report has, and those of a worker's and of a sender's (all finite numbers).
_COMMON = ("at", "started", "every_s")
_WORKER = ("handled", "refused", "dispatched", "claimed", "recipients", "dead_lettered", "batches", "batch_seconds")
_SENDER = ("sent", "already_sent", "dead_lettered")


def _numbers(rep: dict[str, Any], names: tuple[str, ...]) -> bool:
    return all(type(rep.get(f)) in (int, float) and math.isfinite(rep[f]) for f in names)


def _a_workers(rep: dict[str, Any]) -> bool:
    """Whether ``rep`` reads as a worker's report: its figures, counts by status that are names to numbers, the
    histogram's buckets, an index version that is a number if any."""
    by_status, buckets = rep.get("by_status"), rep.get("batch_buckets")
    return (_numbers(rep, _WORKER) and isinstance(by_status, dict)
            and all(type(n) is int for n in by_status.values())
            and isinstance(buckets, list) and len(buckets) == len(BATCH_BUCKETS) + 1
            and all(type(n) is int for n in buckets)
            and (rep.get("index_version") is None or type(rep["index_version"]) is int))


def _a_senders(rep: dict[str, Any]) -> bool:
    return _numbers(rep, _SENDER)


def _readable(raw: bytes, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """A report as this version writes it (a JSON object with the common figures, passing ``check``), or None."""
    try:
        rep = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return rep if isinstance(rep, dict) and _numbers(rep, _COMMON) and check(rep) else None


class WorkersCollector:
    """A ``prometheus_client`` collector: every scrape reads Redis afresh (:func:`collect`)."""

    def __init__(self, client: Any, keys: Keys, settings: QueueSettings | None = None, group: str = "workers"):
        self.r, self.keys, self.settings, self.group = client, keys, settings, group

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("geodispatch_redis_up", "1 when the workers' Redis answered this scrape")
        try:
            snap = collect(self.r, self.keys, self.settings, self.group)
        except Exception as exc:  # Redis away or refusing: the scrape says so rather than failing
            if not is_transient(exc) and not isinstance(exc, redis.RedisError):
                raise
            log.warning("metrics: Redis did not answer (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        yield from _families(snap)

    def describe(self) -> list[Any]:
        return []  # read at scrape time: no fixed list to check at registration


def _families(snap: Snapshot) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    redis_up = GaugeMetricFamily("geodispatch_redis_up", "1 when the workers' Redis answered this scrape")
    redis_up.add_metric([], 1)
    yield redis_up
    evicting = GaugeMetricFamily("geodispatch_redis_may_evict", "1 when the node's maxmemory-policy is not "
                                 "noeviction (the service then takes nothing more)", labels=["node"])
    evicted = CounterMetricFamily("geodispatch_redis_evicted_keys", "Keys the node evicted since it started (any "
                                  "is a broken promise: a done mark, a plan, an owner's notices)", labels=["node"])
    for node, (policy, n) in sorted(snap.redis_nodes.items()):
        evicting.add_metric([node], float(policy != "noeviction"))
        evicted.add_metric([node], n)
    yield from (evicting, evicted)
    w = ["worker"]
    up = GaugeMetricFamily("geodispatch_worker_up", "1 while the worker reports on time, 0 once it is late", labels=w)
    age = GaugeMetricFamily("geodispatch_worker_report_age_seconds", "Seconds since the worker's last report",
                            labels=w)
    uptime = GaugeMetricFamily("geodispatch_worker_started_seconds", "Unix time the worker started", labels=w)
    commands = CounterMetricFamily("geodispatch_worker_commands", "Commands handled, by outcome and reason",
                                   labels=["worker", "outcome", "reason"])
    notified = CounterMetricFamily("geodispatch_worker_owners_notified", "Owners notified by the worker's dispatches",
                                   labels=w)
    claimed = CounterMetricFamily("geodispatch_worker_reclaimed", "Entries taken over from a dead worker", labels=w)
    dead = CounterMetricFamily("geodispatch_worker_dead_lettered", "Commands set aside as failing on their own",
                               labels=w)
    batches = HistogramMetricFamily("geodispatch_worker_batch_seconds", "Wall time of a batch, read to "
                                    "acknowledgement", labels=w)
    version = GaugeMetricFamily("geodispatch_worker_index_version", "The worker's index version (feed position)",
                                labels=w)
    for name, rep in sorted(snap.workers.items()):
        late = snap.at - rep["at"]
        up.add_metric([name], float(late <= STALE_REPORTS * rep["every_s"]))
        age.add_metric([name], late)
        uptime.add_metric([name], rep["started"])
        for status, n in sorted(rep["by_status"].items()):
            outcome, _, reason = status.partition(":")
            commands.add_metric([name, outcome.strip(), reason.strip()], n)
        notified.add_metric([name], rep["recipients"])
        claimed.add_metric([name], rep["claimed"])
        dead.add_metric([name], rep["dead_lettered"])
        cum, buckets = 0, []
        for bound, n in zip((*map(str, BATCH_BUCKETS), "+Inf"), rep["batch_buckets"], strict=True):
            cum += n
            buckets.append((bound, cum))
        batches.add_metric([name], buckets, rep["batch_seconds"])
        if rep.get("index_version") is not None:
            version.add_metric([name], rep["index_version"])
    yield from (up, age, uptime, commands, notified, claimed, dead, batches, version)
    head = GaugeMetricFamily("geodispatch_feed_head", "The change feed's latest position")
    head.add_metric([], snap.feed_head)
    behind = GaugeMetricFamily("geodispatch_feed_behind", "Feed positions between the head and what the follower "
                               "applied (0: up to date)", labels=["follower"])
    for name, pos in sorted(snap.feed_applied.items()):
        behind.add_metric([name], max(0, snap.feed_head - pos))
    waiting = GaugeMetricFamily("geodispatch_requests_waiting", "Commands no worker has read yet", labels=["stream"])
    pending = GaugeMetricFamily("geodispatch_requests_pending", "Commands read and not yet acknowledged",
                                labels=["stream"])
    for stream, (lag, held) in sorted(snap.backlog.items()):
        waiting.add_metric([stream], lag)
        pending.add_metric([stream], held)
    notes = GaugeMetricFamily("geodispatch_notifications_length", "Notification batches on the stream",
                              labels=["stream"])
    for stream, n in sorted(snap.notifications.items()):
        notes.add_metric([stream], n)
    bad = GaugeMetricFamily("geodispatch_reports_unreadable", "Reports left out: not one this version reads")
    bad.add_metric([], snap.unreadable)
    yield from (head, behind, waiting, pending, notes, bad)
    s_up = GaugeMetricFamily("geodispatch_sender_up", "1 while the sender reports on time, 0 once it is late",
                             labels=["sender"])
    s_notes = CounterMetricFamily("geodispatch_sender_notifications", "Notifications sent, and not sent again: "
                                  "marked sent by the group, or their key sent already by the channel (a redelivery)",
                                  labels=["sender", "result"])
    s_dead = CounterMetricFamily("geodispatch_sender_dead_lettered", "Notification entries set aside as unreadable",
                                 labels=["sender"])
    for name, rep in sorted(snap.senders.items()):
        s_up.add_metric([name], float(snap.at - rep["at"] <= STALE_REPORTS * rep["every_s"]))
        for result in ("sent", "already_sent"):
            s_notes.add_metric([name, result], rep[result])
        s_dead.add_metric([name], rep["dead_lettered"])
    s_wait = GaugeMetricFamily("geodispatch_notifications_waiting", "Notification batches a senders' group has not "
                               "read yet", labels=["stream", "group"])
    s_pend = GaugeMetricFamily("geodispatch_notifications_pending", "Notification batches a senders' group read and "
                               "has not acknowledged", labels=["stream", "group"])
    for (stream, grp), (lag, held) in sorted(snap.sending.items()):
        s_wait.add_metric([stream, grp], lag)
        s_pend.add_metric([stream, grp], held)
    yield from (s_up, s_notes, s_dead, s_wait, s_pend)


class _Read:
    """A collector of one snapshot read already (what :func:`render` prints)."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Any]:
        return _families(self.snap)


def _registry(collector: Any) -> Any:
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def render(snap: Snapshot) -> bytes:
    """A snapshot (:func:`collect`) in Prometheus's text exposition format."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(_registry(_Read(snap))))


def serve_metrics(host: str, port: int, client: Any, keys: Keys, settings: QueueSettings | None = None,
                  group: str = "workers") -> tuple[Any, Any]:
    """Serve ``/metrics`` over HTTP on ``host:port`` (prometheus_client's threaded server), each scrape read from
    Redis with one retry at most (a scrape is retried by the scraper: it says ``geodispatch_redis_up 0`` rather
    than wait out the workers' retries); returns (server, thread): ``server.shutdown()`` stops it."""
    from prometheus_client import start_http_server

    qs = replace(settings or QueueSettings(url="redis://"), retries=1)
    server, thread = start_http_server(port, addr=host, registry=_registry(WorkersCollector(client, keys, qs, group)))
    return server, thread


def _s(x: str | bytes) -> str:
    return x.decode() if isinstance(x, bytes) else x

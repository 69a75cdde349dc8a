"""What the HTTP front door runs on: the library's pipeline, its workflow store and sink, and the API keys.

Embedded (the default, no server): the SQLite workflow store, the local notification sink, the key table and the
evidence store in one file. With a Redis URL: :class:`RedisStore`, :class:`RedisSink`, :class:`RedisCredentials`
and :class:`RedisEvidence` on that Redis (queue settings in the URL's query apply, as everywhere).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dispatcher.api.credentials import Credentials, RedisCredentials, SqliteCredentials
from dispatcher.connections import check_at_start, connect, require_no_eviction
from dispatcher.dispatch.dispatcher import Dispatcher
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.dispatch.sinks import LocalSink, RedisSink
from dispatcher.errors import InvalidQueueSettings
from dispatcher.evidence import EvidenceStore, RedisEvidence, SqliteEvidence
from dispatcher.index.camera_index import CameraIndex
from dispatcher.workflow.agencies import AgencyRegistry
from dispatcher.workflow.pipeline import Pipeline
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import RedisStore, SqliteStore

__all__ = ["Backend", "open_backend", "open_credentials"]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Backend:
    """The pipeline the API calls, the keys it checks, and the clock a call is judged at. ``lock`` serialises
    the calls of one process into the pipeline (its store and sink connections are shared by the server's
    threads); more throughput comes from more server processes on the same Redis."""

    pipeline: Pipeline
    credentials: Credentials
    clock: Callable[[], datetime] = _utc_now
    lock: threading.Lock = field(default_factory=threading.Lock)
    closers: list[Callable[[], None]] = field(default_factory=list)
    #: Residents' clips, their shares (the chain of custody) and public posts; None: the evidence routes answer 404.
    evidence: EvidenceStore | None = None
    #: Deletes the records due at the time given and says how many (the embedded store, which the API runs
    #: every ``ApiSettings.expire_every_s``); None where the records expire by themselves (Redis).
    expire: Callable[[datetime], int] | None = None
    #: Raises unless the store answers now, within about a second, on a connection of its own (no retries, no
    #: wait for the pipeline's lock): ``GET /readyz``. None: always ready.
    ready: Callable[[], None] | None = None

    @property
    def workflow(self) -> Workflow:
        return self.pipeline.workflow

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()


def _one(store: str | Path | None, redis_url: str | None) -> None:
    if (store is None) == (redis_url is None):
        raise InvalidQueueSettings("give a store file or a Redis URL (one of the two)")


def open_credentials(store: str | Path | None = None, redis_url: str | None = None) -> Credentials:
    """The API keys kept with the workflow store: the SQLite file's table, or the Redis hashes."""
    _one(store, redis_url)
    if redis_url is not None:
        qs = QueueSettings.from_url(redis_url)
        return RedisCredentials(connect(qs), qs.keys, qs)
    return SqliteCredentials(str(store))


def open_backend(index: CameraIndex | str | Path, registry: AgencyRegistry, policy: Policy | None = None, *,
                 store: str | Path | None = None, redis_url: str | None = None,
                 clock: Callable[[], datetime] | None = None) -> Backend:
    """A backend on the embedded file ``store`` or on the Redis at ``redis_url``, over the index (an open one,
    or its directory, memory-mapped)."""
    _one(store, redis_url)
    idx = index if isinstance(index, CameraIndex) else CameraIndex.open(str(index))
    if redis_url is not None:
        qs = QueueSettings.from_url(redis_url)
        check_at_start(qs)
        wf = Workflow(RedisStore(connect(qs), qs.keys, qs), registry, policy)
        pipeline = Pipeline(wf, idx, Dispatcher(RedisSink(qs), qs))
        evidence = RedisEvidence(connect(qs), idx, wf.store, qs.keys, qs, clock=clock or _utc_now)
        probe_qs = replace(qs, socket_timeout=1.0, connect_timeout=1.0)
        probe = connect(probe_qs)  # one PING, never with_retries
        return Backend(pipeline, RedisCredentials(connect(qs), qs.keys, qs), clock or _utc_now, evidence=evidence,
                       ready=lambda: _answered(probe, probe_qs), closers=[probe.close])
    sink = LocalSink(str(store))
    db = SqliteStore(str(store))  # one file: the gate's records are written with each batch
    creds = SqliteCredentials(str(store))
    pipeline = Pipeline(Workflow(db, registry, policy), idx, Dispatcher(sink))
    ev = SqliteEvidence(str(store), idx, db, clock=clock or _utc_now)

    def expire(now: datetime) -> int:
        """What Redis would have let expire by ``now``: the records that name residents, then the evidence."""
        return db.expire_records(now, ev.retention) + sink.expire_records(now, ev.retention) + \
            ev.expire_records(now)

    # the file as it is (mode=rw: a file gone is not made again, empty, by the probe)
    uri = f"{Path(str(store)).resolve().as_uri()}?mode=rw"

    def ready() -> None:
        with closing(sqlite3.connect(uri, timeout=1.0, uri=True)) as probe:
            probe.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()

    return Backend(pipeline, creds, clock or _utc_now, closers=[sink.close, db.close, creds.close, ev.close],
                   evidence=ev, expire=expire, ready=ready)


def _answered(probe: Any, qs: QueueSettings) -> None:
    """Ready: Redis answers, and keeps what it is given (no eviction policy: a node that may delete keys is not
    ready to be written to)."""
    if not probe.ping():
        raise ConnectionError("the store did not answer PING")
    require_no_eviction(probe, qs)

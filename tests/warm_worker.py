"""Run as ``python -m tests.warm_worker DIR REDIS_URL`` (a process of its own: signatures are per process): starts
a worker as ``serve`` does (:func:`dispatcher.service.supervise.open_worker`, on the index and agencies in DIR,
following the change feed), then serves requests and applies one change of each kind, and prints as JSON what
the worker did and every compiled kernel's signatures that appeared after start-up (each one a compile, or a
load from Numba's disk cache, inside a request or a change)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import kernels
from dispatcher.connections import connect
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.service.client import submit
from dispatcher.service.feed import Change, Snapshots, ensure_snapshot, publish_changes
from dispatcher.service.supervise import StopSignal, open_worker
from dispatcher.service.worker import ServiceSettings
from tests.video_requests import LAT0, LNG0, square
from tests.video_requests import request as make_request


def signatures() -> dict[str, set[str]]:
    """Every Numba dispatcher of the ``kernels`` package, by name: the signatures it has compiled or loaded."""
    out = {}
    for m in pkgutil.iter_modules(kernels.__path__):
        for name, f in vars(importlib.import_module(f"kernels.{m.name}")).items():
            if hasattr(f, "signatures") and hasattr(f, "py_func"):
                out[f"{m.name}.{name}"] = {str(s) for s in f.signatures}
    return out


def main(tmp: Path, url: str) -> dict[str, Any]:
    feed_dir = tmp / "feed"
    qs = QueueSettings.from_url(url)
    r = connect(qs)
    ensure_snapshot(Snapshots(feed_dir), tmp / "idx", r, qs.keys)
    opened = open_worker("w", str(tmp / "idx"), url, str(tmp / "agencies.geojson"),
                         {"auto_approve": True, "rate_limit": 10_000, "owner_cap": 10_000},
                         ServiceSettings(feed_dir=str(feed_dir)), StopSignal())
    assert opened is not None
    (worker, *_), feed = opened
    assert feed is not None
    ready = signatures()
    now = datetime.now(timezone.utc)

    def serve(k: int, sq_mi: float) -> None:
        v = make_request(request_id=f"warm-{k}", area=square(sq_mi, LNG0 + 0.001 * k, LAT0),
                         start=now - timedelta(hours=5), end=now - timedelta(hours=3), submitted_at=now)
        submit(r, {f: getattr(v, f) for f in v.__dataclass_fields__})
        while worker.stats.handled < k:
            worker.step()

    serve(1, 0.2)
    serve(2, 0.04)
    row = {"camera_id": 10_000_001, "owner_id": 10_000_001, "lat": LAT0, "lng": LNG0,
           "installed_at": int((now - timedelta(days=30)).timestamp()), "removed_at": None, "retention_days": 30,
           "sharing_enabled": True}
    for change in (Change.sharing([5], False), Change.remove([6]), Change.opt_out([7], True),
                   Change.opt_out([7], False), Change.add([row])):
        publish_changes(r, [change])
        feed.catch_up()
    serve(3, 0.3)  # over the delta now
    grown = {k: sorted(v - ready.get(k, set())) for k, v in signatures().items() if v != ready.get(k, set())}
    return {"handled": worker.stats.handled, "dispatched": worker.stats.dispatched, "applied": feed.applied,
            "rejected": feed.rejected, "version": feed.index.version, "new_signatures": grown}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2])))

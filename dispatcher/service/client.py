"""The submitters' side of the service: queue commands for the workers and read their outcomes."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from dispatcher.keys import Keys
from dispatcher.service import commands
from dispatcher.workflow.pipeline import Dispatch, Submit

__all__ = ["read_outcomes", "request_dispatch", "submit"]


def submit(client: redis.Redis, request: dict[str, Any], keys: Keys | None = None, trace: Any = None,
           agency: str | None = None) -> str:
    """Queue a new request for the workers; returns the stream entry id. With ``agency``, on that agency's own
    intake stream (an agency's connection can write nowhere else: :func:`dispatcher.service.acl.set_agency`),
    else on the platform's stream (trusted writers only)."""
    k = keys or Keys()
    eid = client.xadd(k.requests if agency is None else k.intake(agency),
                      {commands.FIELD: commands.encode(Submit(request, trace))})
    return _s(eid)


def request_dispatch(client: redis.Redis, request_id: str, keys: Keys | None = None, trace: Any = None) -> str:
    """The reviewer's side: a request was approved; queue its dispatch."""
    eid = client.xadd((keys or Keys()).requests, {commands.FIELD: commands.encode(Dispatch(request_id, trace))})
    return _s(eid)


def read_outcomes(client: redis.Redis, after: str = "0-0", count: int = 10_000, block_ms: int | None = None,
                  keys: Keys | None = None, *, operators: bool = False,
                  agency: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Outcomes published after entry id ``after``: ``(last id read, [outcome, ...])``; ``count`` counts entries
    (a worker publishes a batch's outcomes in one). Each has ``request_id``,
    ``outcome`` (the request's status, or ``refused: ...``), ``codes`` (a refusal's rule codes) and the command's
    ``trace``: all a submitter may learn. With ``operators``, from the operators' channel, which adds
    ``notified`` (owners this run notified), ``now_us`` (the time the request was judged at), ``done`` (Unix
    seconds when its last batch was appended) and ``worker``. With ``agency``, that agency's outcomes (of what it
    submitted on its intake stream, under its own request ids)."""
    k = keys or Keys()
    stream = k.operator_outcomes if operators else k.outcomes if agency is None else k.agency_outcomes(agency)
    got: Any = client.xread({stream: after}, count=count, block=block_ms)
    out = []
    for _, entries in got or []:
        for eid, fields in entries:
            after = _s(eid)
            if commands.OUTCOMES in fields:  # a batch's outcomes, in order
                out.extend(orjson.loads(fields[commands.OUTCOMES]))
            else:  # one outcome an entry, as earlier workers wrote them
                out.append(orjson.loads(fields[b"o"]))
    return after, out


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)

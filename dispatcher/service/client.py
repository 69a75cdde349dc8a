"""The submitters' side of the service: queue commands for the workers and read their outcomes.

With several shards, a command goes to the stream of its request's shard (:meth:`Keys.request_shard` of the id
the request will be stored under), and outcomes are read from every shard's stream."""

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
    rid = request.get("request_id") if isinstance(request, dict) else None
    home = k.for_request(f"{agency}:{rid}" if agency is not None else rid) if isinstance(rid, str) else k.shard(0)
    eid = client.xadd(home.requests if agency is None else home.intake(agency),
                      {commands.FIELD: commands.encode(Submit(request, trace))})
    return _s(eid)


def request_dispatch(client: redis.Redis, request_id: str, keys: Keys | None = None, trace: Any = None) -> str:
    """The reviewer's side: a request was approved; queue its dispatch."""
    eid = client.xadd((keys or Keys()).for_request(request_id).requests,
                      {commands.FIELD: commands.encode(Dispatch(request_id, trace))})
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
    submitted on its intake stream, under its own request ids).

    With several shards each shard's stream is read after ``after`` (entry ids are times: the position is a time,
    read in every shard), up to ``count`` from each, and the outcomes are merged in id order; a read blocks for
    its share of ``block_ms`` on each shard only when none had any."""
    k = keys or Keys()
    streams = [s.operator_outcomes if operators else s.outcomes if agency is None else s.agency_outcomes(agency)
               for s in k.all_shards]
    if len(streams) == 1:
        passes = [block_ms]
    else:  # every shard without blocking; then, if none had any, each blocking for its share
        passes = [None, *([] if block_ms is None else [max(1, block_ms // len(streams))])]
    got: list[tuple[tuple[int, int], str, dict[Any, Any]]] = []
    for wait in passes:
        for stream in streams:
            reply: Any = client.xread({stream: after}, count=count, block=wait)
            for _, entries in reply or []:
                got += [(_id(eid), _s(eid), fields) for eid, fields in entries]
        if got:
            break
    got.sort(key=lambda g: g[0])
    out: list[dict[str, Any]] = []
    for _, _, fields in got:
        if commands.OUTCOMES in fields:  # a batch's outcomes, in order
            out.extend(orjson.loads(fields[commands.OUTCOMES]))
        else:  # one outcome an entry, as earlier workers wrote them
            out.append(orjson.loads(fields[b"o"]))
    return (got[-1][1] if got else after), out


def _id(eid: Any) -> tuple[int, int]:
    ms, _, seq = _s(eid).partition("-")
    return int(ms), int(seq or 0)


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)

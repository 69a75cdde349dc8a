"""The requests stream's wire format: one JSON command per entry, in the field ``cmd``.

- ``{"kind": "submit", "request": {...}, "trace": ...}``: a new request (the fields of :class:`VideoRequest`);
- ``{"kind": "dispatch", "request_id": "...", "trace": ...}``: a reviewer approved a request.

Agencies write to their own intake stream (``Keys.intake``), whose name is their identity; the platform's
stream (``Keys.requests``) is for trusted writers only.

``trace`` is any JSON value of the sender's; it comes back in the command's outcome. :func:`decode` never raises:
what is not a command becomes :class:`Malformed`, which the pipeline refuses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from dispatcher.workflow.pipeline import Command, Dispatch, Malformed, Outcome, Submit

__all__ = ["FIELD", "OUTCOMES", "decode", "encode", "submitters_outcome"]

#: The stream entry's field that holds the command.
FIELD = b"cmd"
#: The outcome streams' entry field: a JSON list, the outcomes of one batch of commands in their order.
OUTCOMES = b"os"


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    raise TypeError(f"cannot encode {type(o).__name__}")


def encode(cmd: Submit | Dispatch) -> bytes:
    if isinstance(cmd, Submit):
        return orjson.dumps({"kind": "submit", "request": cmd.request, "trace": cmd.trace}, default=_default)
    return orjson.dumps({"kind": "dispatch", "request_id": cmd.request_id, "trace": cmd.trace})


def decode(fields: dict[bytes, bytes] | None, agency: str | None = None) -> Command:
    """The command of one stream entry's fields; ``agency`` when the entry came from that agency's own intake
    stream (a submission there is that agency's, whatever it says; a dispatch there is not allowed)."""
    try:
        d = orjson.loads(fields[FIELD]) if fields else None
    except (KeyError, orjson.JSONDecodeError):
        d = None
    if not isinstance(d, dict):
        return Malformed("unknown command None")
    kind, trace = d.get("kind"), d.get("trace")
    if kind == "submit":
        return Submit(d.get("request"), trace, agency)
    if kind == "dispatch" and agency is not None:
        return Malformed("an agency cannot dispatch", trace)
    if kind == "dispatch":
        rid = d.get("request_id")
        return Dispatch(rid, trace) if isinstance(rid, str) else Malformed("unknown request", trace)
    return Malformed(f"unknown command {kind!r}"[:200], trace)


def submitters_outcome(outcome: Outcome, trace: Any, agency: str | None = None) -> dict[str, Any]:
    """What the submitters' channel carries of an outcome: the request's status and a refusal's rule codes,
    under the id its sender knows (an agency's own, without the platform's scope). No count, no time."""
    rid = outcome.request_id
    if agency is not None and rid is not None and rid.startswith(f"{agency}:"):
        rid = rid[len(agency) + 1:]
    return {"request_id": rid, "outcome": outcome.status, "codes": outcome.codes, "trace": trace}

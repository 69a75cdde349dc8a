"""Redis ACL rules for the roles that reach the service's Redis.

An agency connecting itself gets a user of its own (:func:`set_agency`) that can append to its intake stream
and read its outcomes, nothing else: the stream it writes to is its identity, so it cannot act as another
agency, and it sees no other agency's outcomes.

The agency-facing side (a submitter, or the front door that submits for agencies) needs two things: to append
commands to the requests stream and to read the submitters' outcomes, which carry a request's status and a
refusal's rule codes only. Everything else on that Redis names residents or counts them: the notifications
stream (owners and cameras), the gate's records, the workflow store, the operators' channel. A connection made
with :func:`submitter_rules` cannot touch any of it: Redis answers ``NOPERM``.
"""

from __future__ import annotations

from typing import Any

from dispatcher.keys import Keys

__all__ = ["agency_rules", "exact", "set_agency", "set_submitter", "submitter_rules"]

_GLOB = str.maketrans({c: "\\" + c for c in "\\*?[]"})


def exact(key: str) -> str:
    """A Redis ACL key pattern that matches ``key`` alone. Patterns are globs: an agency id such as ``il-*``
    or ``[a-z]l-chicago`` made into a pattern as it is would let that agency write to other agencies' intake
    streams (act as them) and read their outcomes."""
    return key.translate(_GLOB)


def submitter_rules(keys: Keys | None = None) -> list[str]:
    """``ACL SETUSER`` rules: XADD to the requests streams (write-only), XREAD of the submitters' outcomes
    (read-only), of every shard, nothing else."""
    k = keys or Keys()
    return ["resetkeys", "resetchannels", "nocommands", "+xadd", "+xread", "+ping",
            *(f"%W~{exact(s.requests)}" for s in k.all_shards), *(f"%R~{exact(s.outcomes)}" for s in k.all_shards)]


def set_submitter(client: Any, user: str, password: str, keys: Keys | None = None) -> None:
    """Create or reset ``user`` as a submitter (run by an operator, with an administrator's connection)."""
    client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *submitter_rules(keys))


def agency_rules(agency_id: str, keys: Keys | None = None) -> list[str]:
    """``ACL SETUSER`` rules for one agency: XADD to its intake stream, XREAD of its outcomes, nothing else."""
    k = keys or Keys()
    return ["resetkeys", "resetchannels", "nocommands", "+xadd", "+xread", "+ping",
            *(f"%W~{exact(s.intake(agency_id))}" for s in k.all_shards),
            *(f"%R~{exact(s.agency_outcomes(agency_id))}" for s in k.all_shards)]


def set_agency(client: Any, user: str, password: str, agency_id: str, keys: Keys | None = None) -> None:
    """Create or reset ``user`` as ``agency_id``'s own connection."""
    client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *agency_rules(agency_id, keys))

"""Redis ACL rules for the roles that reach the service's Redis.

The agency-facing side (a submitter, or the front door that submits for agencies) needs two things: to append
commands to the requests stream and to read the submitters' outcomes, which carry a request's status and a
refusal's rule codes only. Everything else on that Redis names residents or counts them: the notifications
stream (owners and cameras), the gate's records, the workflow store, the operators' channel. A connection made
with :func:`submitter_rules` cannot touch any of it: Redis answers ``NOPERM``.
"""

from __future__ import annotations

from typing import Any

from dispatcher.keys import Keys

__all__ = ["set_submitter", "submitter_rules"]


def submitter_rules(keys: Keys | None = None) -> list[str]:
    """``ACL SETUSER`` rules: XADD to the requests stream (write-only), XREAD of the submitters' outcomes
    (read-only), nothing else."""
    k = keys or Keys()
    return ["resetkeys", "resetchannels", "nocommands", "+xadd", "+xread", "+ping", f"%W~{k.requests}",
            f"%R~{k.outcomes}"]


def set_submitter(client: Any, user: str, password: str, keys: Keys | None = None) -> None:
    """Create or reset ``user`` as a submitter (run by an operator, with an administrator's connection)."""
    client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *submitter_rules(keys))

"""The privacy wall: what an agency may see of a request, and what the platform's operators may see.

:class:`AgencyView` can only hold a status string, the agency's own case fields, and per-owner shares, each as
a per-request pseudonym ("Neighbor 4821") and the share ids of the clips they shared, the very ids of the
custody records (:func:`share_id`, one reference for one shared clip). Its types validate every field against a
fixed pattern, so an owner id, camera id, location or count cannot be put into one: the wall holds by
construction, not by care. :class:`OperatorView` has the aggregate counts.

A resident's pseudonym is given the first time the agency's view shows the share, and is kept with the share in
the store: once shown it never changes, whoever shares later and in whatever order.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from dispatcher.errors import InvalidData, UnknownRequest
from dispatcher.workflow.review import SHARE, STATES, Workflow
from dispatcher.workflow.store import Store

PSEUDONYM_RE = re.compile(r"Neighbor [1-9][0-9]{3}")
SHARE_ID_RE = re.compile(r"[0-9a-f]{24}")


def _mac(secret: bytes, *parts: str) -> bytes:
    return hmac.new(secret, "\x1f".join(parts).encode(), hashlib.sha256).digest()


def opaque_id(secret: bytes, *parts: str) -> str:
    """24 hex digits of an HMAC-SHA256 of ``parts`` under ``secret``: the same parts give the same id, and the id
    says nothing of them to anyone without the secret."""
    return _mac(secret, *parts).hex()[:24]


def pseudonyms(secret: bytes, request_id: str, owner_ids: list[int], taken: Collection[str] = ()) -> dict[int, str]:
    """"Neighbor NNNN" (1000-9999) per owner, from an HMAC of (secret, request, owner); unique within the
    request and apart from the names already ``taken`` in it (a collision probes the next HMAC). Owners are taken in
    ascending id order, so it is deterministic."""
    bad = [n for n in taken if not PSEUDONYM_RE.fullmatch(n)]
    if bad:
        raise InvalidData(f"not a pseudonym: {bad[0]!r}")
    used = {int(n.removeprefix("Neighbor ")) for n in taken}
    owners = sorted(set(owner_ids))
    if len(owners) + len(used) > 9000:
        raise InvalidData(f"{len(owners)} owners and {len(used)} pseudonyms already given cannot all have distinct "
                          f"4-digit pseudonyms")
    out: dict[int, str] = {}
    for o in owners:
        k = 0
        while True:
            n = 1000 + int.from_bytes(_mac(secret, request_id, str(o), str(k))[:8], "big") % 9000
            if n not in used:
                break
            k += 1
        used.add(n)
        out[o] = f"Neighbor {n}"
    return out


def agency_names(store: Store, secret: bytes, request_id: str, owner_ids: Iterable[int]) -> dict[int, str]:
    """The name each owner has in the request as its agency sees it, everywhere: the pseudonym kept with the
    owner's answer in ``store``, given now (by :func:`pseudonyms`) to those without one. The agency's view of the
    request and the custody records of the clips shared for it (:mod:`dispatcher.evidence`) both name residents
    through this function, so a resident is one "Neighbor NNNN" to the agency in a request, and another, unlinked,
    in the next. Every owner must have answered the request (:class:`InvalidData` otherwise)."""
    return store.pseudonyms(request_id, sorted({int(o) for o in owner_ids}),
                            lambda owners, taken: pseudonyms(secret, request_id, owners, taken))


def share_id(secret: bytes, request_id: str, clip_id: str) -> str:
    """The one reference to a clip shared for a request, redeemable only through the platform: the id of its
    custody record in the evidence store and the id the agency's view lists (24 hex digits of an HMAC of the
    request and the clip; it says nothing of either without the secret, and differs from request to request)."""
    return opaque_id(secret, "share", request_id, clip_id)


@dataclass(frozen=True, slots=True)
class SharedClips:
    """One resident's share as the agency sees it: the per-request pseudonym and the share ids of the clips (those
    of their custody records)."""

    pseudonym: str
    share_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if type(self.pseudonym) is not str or not PSEUDONYM_RE.fullmatch(self.pseudonym):
            raise InvalidData(f"not a pseudonym: {self.pseudonym!r}")
        if type(self.share_ids) is not tuple or not all(type(c) is str and SHARE_ID_RE.fullmatch(c)
                                                        for c in self.share_ids):
            raise InvalidData("share_ids must be opaque share ids")


@dataclass(frozen=True, slots=True)
class AgencyView:
    """What the requesting agency sees. No field can hold an owner id, camera id, location or count."""

    request_id: str
    case_number: str
    status: str
    shared: tuple[SharedClips, ...]

    def __post_init__(self) -> None:
        if self.status not in STATES:
            raise InvalidData(f"unknown status {self.status!r}")
        if type(self.shared) is not tuple or not all(type(s) is SharedClips for s in self.shared):
            raise InvalidData("shared must be a tuple of SharedClips")
        if len({s.pseudonym for s in self.shared}) != len(self.shared):
            raise InvalidData("pseudonyms must be unique within a request")


@dataclass(frozen=True, slots=True)
class OperatorView:
    """Aggregates for the platform's operators."""

    request_id: str
    status: str
    notified: int
    shared: int
    declined: int
    suppressed_opted_out: int
    suppressed_capped: int


class Views:
    """The two views of a request, from the store: :meth:`agency_view` and :meth:`operator_view`. ``secret``
    (at least 16 bytes) keys the pseudonyms and share ids: the evidence store's, for the share ids to be those of
    its custody records (:meth:`dispatcher.evidence.store.EvidenceRules.views` gives these views)."""

    def __init__(self, store: Store, secret: bytes) -> None:
        if len(secret) < 16:
            raise InvalidData("the pseudonym secret must be at least 16 bytes")
        self.store = store
        self._secret = secret

    def agency_view(self, workflow: Workflow, request_id: str) -> AgencyView:
        got = self.store.get_request(request_id)
        if got is None:
            raise UnknownRequest(f"no request {request_id!r}")
        state, payload = got
        shares = [(o, clips) for o, choice, clips in self.store.choices(request_id) if choice == SHARE]
        names = agency_names(self.store, self._secret, request_id, [o for o, _ in shares])
        shared = tuple(sorted((SharedClips(names[o], tuple(share_id(self._secret, request_id, c) for c in clips))
                               for o, clips in shares), key=lambda s: s.pseudonym))
        return AgencyView(request_id, str(payload["case_number"]), state, shared)

    def operator_view(self, request_id: str) -> OperatorView:
        got = self.store.get_request(request_id)
        if got is None:
            raise UnknownRequest(f"no request {request_id!r}")
        ch = self.store.choices(request_id)
        c = self.store.counters(request_id)
        return OperatorView(request_id, got[0], self.store.notified_count(request_id),
                            sum(x[1] == SHARE for x in ch), sum(x[1] != SHARE for x in ch),
                            c.get("opted_out", 0), c.get("capped", 0))

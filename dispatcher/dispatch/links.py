"""Residents' links: every link in a notification carries a signed, expiring token that binds (request,
resident, action), made and checked with itsdangerous (HMAC-SHA1 over a timestamped, URL-safe payload; the
secret is the platform's setting, never in the token).

A token says nothing an observer could not learn from the e-mail itself (the request id and the resident's
owner id are in it, signed, not encrypted): it is a capability for one resident and one action, never shown to
an agency. Forged, altered, expired or another action's tokens raise :class:`InvalidLink`
(:class:`ExpiredLink`), and the caller changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from itsdangerous import BadData, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from dispatcher.errors import ExpiredLink, InvalidLink, InvalidLinkSettings
from dispatcher.settings import from_environment

__all__ = ["ACTIONS", "ONE_SHOT", "LinkClaim", "LinkSettings", "LinkSigner"]

#: What a token may let a resident do: open the request's page, or one of the page's forms.
VIEW, SHARE, DECLINE, OPT_OUT, OPT_IN = "view", "share", "decline", "opt_out", "opt_in"
ACTIONS = (VIEW, SHARE, DECLINE, OPT_OUT, OPT_IN)
#: Answers to a request, given once: a token for one of them is refused after the resident answered.
ONE_SHOT = frozenset({SHARE, DECLINE})
#: A token longer than this is refused before it is decoded.
MAX_TOKEN_CHARS = 512
_SALT = "geodispatch.resident-link.v1"


@dataclass(frozen=True)
class LinkSettings:
    """The signing secret (at least 32 characters, from ``GEODISPATCH_LINK_SECRET``), the public base URL the
    resident pages are served under (``https://host/r``: the API serves them at ``/r``) and a token's age."""

    secret: str = ""
    base_url: str = "https://geodispatch.example/r"
    max_age_s: int = 14 * 86_400

    def __post_init__(self) -> None:
        if not isinstance(self.secret, str) or len(self.secret) < 32:
            raise InvalidLinkSettings("the link secret must be at least 32 characters (GEODISPATCH_LINK_SECRET)")
        parts = urlsplit(self.base_url) if isinstance(self.base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
                or parts.fragment or self.base_url.endswith("/"):
            raise InvalidLinkSettings(f"the link base URL must be http(s)://host/path with no query, fragment or "
                                      f"trailing slash, got {str(self.base_url)[:200]!r}")
        if isinstance(self.max_age_s, bool) or not isinstance(self.max_age_s, int) or not 60 <= self.max_age_s \
                <= 180 * 86_400:
            raise InvalidLinkSettings(f"max_age_s must be 60 s to 180 days, got {self.max_age_s!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> LinkSettings:
        """``GEODISPATCH_LINK_<FIELD>`` (``SECRET``, ``BASE_URL``, ``MAX_AGE_S``), then ``overrides`` that are
        not None; a misspelled variable raises."""
        values = from_environment(cls, "GEODISPATCH_LINK_", InvalidLinkSettings, environ)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class LinkClaim:
    """What a genuine token binds, and when it was made (seconds since the epoch)."""

    request_id: str
    owner_id: int
    action: str
    issued_at: int


def _clocked(clock: Callable[[], float]) -> type[TimestampSigner]:
    class _Clocked(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())
    return _Clocked


class LinkSigner:
    """Makes and checks the tokens; ``clock`` (seconds since the epoch) judges their age."""

    def __init__(self, settings: LinkSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._s = URLSafeTimedSerializer(settings.secret, salt=_SALT, signer=_clocked(clock))

    def token(self, request_id: str, owner_id: int, action: str) -> str:
        if action not in ACTIONS:
            raise InvalidLink(f"unknown action {action!r}")
        return str(self._s.dumps([str(request_id), int(owner_id), action]))

    def url(self, request_id: str, owner_id: int, action: str = VIEW) -> str:
        return f"{self.settings.base_url}/{self.token(request_id, owner_id, action)}"

    def verify(self, token: object, actions: Collection[str]) -> LinkClaim:
        """The claim of a genuine, unexpired token for one of ``actions``; :class:`InvalidLink` otherwise."""
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS or not token.isascii():
            raise InvalidLink("the link is not one of ours")
        try:
            got, ts = self._s.loads(token, max_age=self.settings.max_age_s, return_timestamp=True)
        except SignatureExpired:
            raise ExpiredLink("the link has expired") from None
        except BadData:
            raise InvalidLink("the link is not one of ours") from None
        if not (isinstance(got, list) and len(got) == 3 and isinstance(got[0], str) and type(got[1]) is int
                and got[2] in ACTIONS):
            raise InvalidLink("the link is not one of ours")
        if got[2] not in actions:
            raise InvalidLink(f"the link is for {got[2]}, not for this")
        return LinkClaim(got[0], got[1], got[2], int(ts.timestamp()))

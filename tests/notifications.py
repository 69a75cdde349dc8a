"""What the dispatch tests send: a recipient set of a given size and a notification header."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from dispatcher.dispatch.links import LinkSettings, LinkSigner
from dispatcher.dispatch.wire import NotificationHeader
from dispatcher.index.recipients import RecipientSet
from tests.data import NOW

__all__ = ["LINKS", "LINK_SECRET", "NOW", "header", "make_recipients"]


def make_recipients(n: int, seed: int = 0) -> RecipientSet:
    """``n`` distinct owners with one to three cameras each."""
    rng = np.random.default_rng(seed)
    owners = np.unique(rng.integers(1, 50 * n + 10, size=n * 2))[:n].astype(np.int64)
    counts = rng.integers(1, 4, size=owners.shape[0])
    off = np.zeros(owners.shape[0] + 1, np.int64)
    np.cumsum(counts, out=off[1:])
    cams = np.arange(off[-1], dtype=np.int64) * 7 + 3
    return RecipientSet(owners, cams, off)


def header(rid: str = "req-1") -> NotificationHeader:
    return NotificationHeader(rid, "ag-1", "Springfield PD", "C-42", "burglary",
                              datetime(2026, 10, 30, 21, tzinfo=timezone.utc),
                              datetime(2026, 10, 30, 23, tzinfo=timezone.utc), "Please share <footage> & help")

#: The link secret of the tests (a real one is the platform's, from GEODISPATCH_LINK_SECRET).
LINK_SECRET = "test-link-secret-0123456789abcdef-not-for-production"
LINKS = LinkSigner(LinkSettings(LINK_SECRET, "http://127.0.0.1:1/r"))

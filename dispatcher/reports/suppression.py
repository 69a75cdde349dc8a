"""The small-count floor of the pages for people: the threshold ``k`` of the request map (no hexagon of fewer
than ``k`` cameras is drawn) and of the transparency report.

In the transparency report the floor applies to **released** figures, which carry differential-privacy noise: a
released figure under ``k`` is shown as "< k". The decision is a function of the released figure alone, never of
the true count, so it is post-processing and tells a reader nothing the released figure would not. A floor on the
true counts would be the opposite: whether a cell is withheld would depend on the data, outside the guarantee.
Complementary suppression and its audit (so that totals and the relations between counts do not give a withheld
exact count back) have no object here: no exact count is published, and a relation between noisy figures only
combines released values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dispatcher.errors import InvalidReportSettings

__all__ = ["check_k", "floor"]


def check_k(k: Any) -> int:
    """The threshold: a whole number of at least 1."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidReportSettings(f"k must be a whole number of at least 1, got {k!r}")
    return int(k)


def floor(released: int, k: int) -> int | None:
    """A released figure as shown: itself from ``k`` up, ``None`` ("< k") below."""
    return released if released >= k else None

"""Differential privacy for the transparency report: its settings, the budget of each measurement it releases,
the OpenDP mechanisms that release them, and the guarantee in words.

A month's report is a handful of **measurements**, each released once by an OpenDP mechanism
(``dp.enable_features("contrib")``):

- ``requests``: per agency row, each request's outcome as one count of five (pending, approved and not
  dispatched, dispatched, rejected by a reviewer, refused on submission). A request is in exactly one of them,
  in one row, so adding or removing one changes the vector of every row's counts by 1 (L1): sensitivity 1.
  Discrete Laplace noise (``make_geometric`` over a vector of integers, ``l1_distance``).
- ``rules``: per agency row, each refused submission under the first rule it broke (in the order the policy
  checks them; a code the policy does not list counts under "other"): sensitivity 1.
- ``residents``: per agency row, each notification sent as shared or not shared. The owners' gate admits a
  resident at most ``owner_cap`` times in any ``owner_cap_period``, and every notification counted for a month
  was sent between the month's start and the release, so one resident adds at most
  ``owner_cap * ceil((release - month start) / owner_cap_period)`` to the vector of every row's counts:
  that is its sensitivity. It grows with the time from the month's start to its release, so a month is best
  released as soon as it closes.
- ``requests_all``, ``rules_all``, ``residents_all``: the same counts for the "all agencies" row. With a budget
  share of 0 (the default) the row is the sum of the agency rows' released counts instead: exactly consistent
  with them and free, with the noise of ``n`` rows (``sqrt(n)`` times a row's). A share of its own gives a total
  steadier than that once there are more than about ``(epsilon_rows / epsilon_all) ** 2`` rows.
- ``median_area``, ``median_window``: the medians of the "all agencies" row, by the exponential mechanism over a
  grid of candidates between the policy's bounds (``make_private_quantile``, ``symmetric_distance``: one
  request adds or removes one value).

Every figure of the report is computed from these released values (sums of cells, a share rate, the "< k"
floor), so it is post-processing: it costs no budget and cannot weaken the guarantee. Budgets add up (basic
composition): each measurement's share of the month's ``epsilon`` is a setting.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from dispatcher.errors import InvalidReportSettings
from dispatcher.reports.suppression import check_k
from dispatcher.settings import coerce
from dispatcher.workflow.policy import Policy

__all__ = ["MEASUREMENTS", "REQUEST_UNIT", "RESIDENT_UNIT", "PrivacySettings", "count_scale", "error_bound",
           "median_candidates", "median_scale", "noise_sd", "noisy_counts", "noisy_median", "resident_sensitivity"]

#: The measurements of a month, in the order they are released.
MEASUREMENTS = ("requests", "requests_all", "rules", "rules_all", "median_area", "median_window", "residents",
                "residents_all")
#: The measurements a request is in, and those a resident is in.
REQUEST_UNIT = ("requests", "requests_all", "rules", "rules_all", "median_area", "median_window")
RESIDENT_UNIT = ("residents", "residents_all")


@dataclass(frozen=True)
class PrivacySettings:
    """The month's privacy budget ``epsilon`` and each measurement's share of it (the shares add up to 1; a
    share of 0 releases nothing for that measurement); ``k``: released counts under ``k`` are shown as "< k";
    ``settle``: a month closes this long after its last day, when its requests have been reviewed and
    dispatched."""

    epsilon: float = 1.0
    k: int = 10
    settle: timedelta = timedelta(days=7)
    budget_requests: float = 0.3
    budget_requests_all: float = 0.0
    budget_rules: float = 0.1
    budget_rules_all: float = 0.0
    budget_median_area: float = 0.05
    budget_median_window: float = 0.05
    budget_residents: float = 0.5
    budget_residents_all: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)) \
                or not math.isfinite(self.epsilon) or self.epsilon <= 0:
            raise InvalidReportSettings(f"epsilon must be a finite number above 0, got {self.epsilon!r}")
        check_k(self.k)
        if not isinstance(self.settle, timedelta) or self.settle < timedelta(0):
            raise InvalidReportSettings(f"settle must be a duration of 0 or more, got {self.settle!r}")
        shares = [getattr(self, f"budget_{m}") for m in MEASUREMENTS]
        for m, s in zip(MEASUREMENTS, shares, strict=True):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
                raise InvalidReportSettings(f"budget_{m} must be a share of epsilon from 0 to 1, got {s!r}")
        if abs(sum(shares) - 1) > 1e-9:
            raise InvalidReportSettings(f"the budget shares must add up to 1, they add up to {sum(shares):.6g}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the report settings") -> PrivacySettings:
        """Settings by name, as JSON values (``settle`` in seconds); misspelled names raise."""
        return cls(**coerce(cls, d, source, InvalidReportSettings))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["settle"] = self.settle.total_seconds()
        return out

    def epsilon_of(self, measurement: str) -> float:
        """The part of ``epsilon`` that ``measurement`` spends."""
        return float(self.epsilon * getattr(self, f"budget_{measurement}"))

    def unit_epsilon(self, unit: Sequence[str]) -> float:
        return sum(self.epsilon_of(m) for m in unit)


def resident_sensitivity(policy: Policy, month_start: datetime, released_at: datetime) -> int:
    """The most notifications one resident can have had, counted in a month released at ``released_at``: the
    gate's cap in each of the ``owner_cap_period`` spans that cover the month's start to the release (one span
    at least)."""
    periods = max(1, math.ceil((released_at - month_start) / policy.owner_cap_period))
    return int(policy.owner_cap * periods)


# ------------------------------------------------------------------------------------------------- mechanisms

def _dp() -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@functools.lru_cache(maxsize=64)
def _count_mechanism(sensitivity: int, epsilon: float) -> tuple[Any, float]:
    """OpenDP's geometric mechanism over integer vectors with the smallest scale OpenDP proves
    ``epsilon``-DP for an L1 change of ``sensitivity``, and that scale."""
    dp = _dp()
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    scale = float(dp.binary_search_param(lambda s: dp.m.make_geometric(*space, scale=s), d_in=sensitivity,
                                         d_out=epsilon))
    meas = dp.m.make_geometric(*space, scale=scale)
    if not meas.map(sensitivity) <= epsilon:
        raise InvalidReportSettings(f"OpenDP gives no scale for epsilon {epsilon} at sensitivity {sensitivity}")
    return meas, scale


def count_scale(sensitivity: int, epsilon: float) -> float:
    """The discrete Laplace scale a measurement of ``sensitivity`` at ``epsilon`` is released with."""
    return _count_mechanism(int(sensitivity), float(epsilon))[1]


def noisy_counts(values: Sequence[int], sensitivity: int, epsilon: float) -> list[int]:
    """``values`` (whole numbers of at least 0) with discrete Laplace noise, ``epsilon``-DP for a change of at
    most ``sensitivity`` in their sum of absolute differences."""
    meas, _ = _count_mechanism(int(sensitivity), float(epsilon))
    if not values:
        return []
    return [int(v) for v in meas([int(v) for v in values])]


def median_candidates(lo: float, hi: float, steps: int = 64) -> tuple[float, ...]:
    """The values a released median can take: multiples of ``lo`` up to ``hi`` (the policy's bounds), or
    ``steps`` evenly spaced values when there would be more than that."""
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise InvalidReportSettings(f"median bounds must be 0 < lo <= hi, got {lo!r}, {hi!r}")
    n = int(hi / lo + 1e-9)
    grid = [lo * i for i in range(1, n + 1)] if n <= steps else list(np.linspace(lo, hi, steps))
    if grid[-1] < hi - 1e-12:
        grid.append(hi)
    return tuple(round(float(x), 9) for x in grid)


@functools.lru_cache(maxsize=16)
def _median_mechanism(candidates: tuple[float, ...], epsilon: float) -> tuple[Any, float]:
    dp = _dp()

    def make(scale: float) -> Any:
        return dp.m.make_private_quantile(dp.vector_domain(dp.atom_domain(T=float, nan=False)),
                                          dp.symmetric_distance(), dp.max_divergence(), candidates=list(candidates),
                                          alpha=0.5, scale=scale)

    scale = float(dp.binary_search_param(make, d_in=1, d_out=epsilon))
    meas = make(scale)
    if not meas.map(1) <= epsilon:
        raise InvalidReportSettings(f"OpenDP gives no median scale for epsilon {epsilon}")
    return meas, scale


def median_scale(candidates: Sequence[float], epsilon: float) -> float:
    """The exponential mechanism's scale a median over ``candidates`` is released with at ``epsilon``."""
    return _median_mechanism(tuple(float(c) for c in candidates), float(epsilon))[1]


def noisy_median(values: Sequence[float], candidates: Sequence[float], epsilon: float) -> float:
    """A candidate near the median of ``values``, ``epsilon``-DP for one value added or removed."""
    meas, _ = _median_mechanism(tuple(float(c) for c in candidates), float(epsilon))
    return float(meas([float(v) for v in values]))


@functools.lru_cache(maxsize=256)
def error_bound(scale: float, cells: int, level: float = 0.95) -> int:
    """The smallest ``t`` such that the sum of ``cells`` independent discrete Laplace noises of ``scale`` is
    within ``±t`` with probability at least ``level``."""
    alpha = math.exp(-1 / scale)
    # one cell's noise, cut where its two tails together hold less than 1e-12
    half = int(math.ceil(math.log(1e-12 * (1 + alpha) / 2) / math.log(alpha)))
    if cells * (2 * half + 1) > 1 << 20:  # a sum of that many noises is normal to well under one unit
        return int(math.ceil(_normal_quantile((1 + level) / 2) * noise_sd(scale, cells)))
    z = np.arange(-half, half + 1)
    pmf = (1 - alpha) / (1 + alpha) * alpha ** np.abs(z)
    size = 1 << int(math.ceil(math.log2(cells * (2 * half + 1))))
    total = np.fft.irfft(np.fft.rfft(pmf, size) ** cells, size)[: cells * (2 * half) + 1]
    centre = cells * half
    inside = np.cumsum(total[centre:] + total[centre::-1]) - total[centre]  # P(|sum| <= t) for t = 0, 1, ...
    return int(np.searchsorted(inside, level - 1e-12))


def _normal_quantile(p: float) -> float:
    from statistics import NormalDist

    return float(NormalDist().inv_cdf(p))


def noise_sd(scale: float, cells: int) -> float:
    """The standard deviation of the sum of ``cells`` discrete Laplace noises of ``scale``."""
    alpha = math.exp(-1 / scale)
    return math.sqrt(cells * 2 * alpha / (1 - alpha) ** 2)

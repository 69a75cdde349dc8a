"""The transparency report's guarantee, attacked statistically.

The guarantee: for two stores that differ by one request of an agency (accepted or refused, with everything
recorded about it), or by one resident over the month (every notification sent to them and every choice they
made), and any set ``S`` of released figures of the month,

    P[release(D) in S] <= exp(epsilon) * P[release(D') in S]

with the epsilon the report states for that unit; for one measurement, OpenDP's own bound for the change the
difference makes to its input (``epsilon * change / sensitivity``). The tests build the report for both worlds many
times, each with a fresh release store (so each build draws fresh noise, as an attacker comparing two worlds
would need), and check the inequality, both ways, for the events that matter: every threshold event
``{figure >= t}`` and ``{figure <= t}`` on a row's figures, over the range the samples cover. Sampling slack: the
estimated probabilities may exceed the bound by 4.5 standard errors of the difference plus ``1/n``, which over
every event checked leaves a false alarm well under one run in a hundred. The same check is run against releases
that break the guarantee (eight times the budget; a resident's sensitivity understated as 1) and must catch them,
so a pass says something.

Differencing: one single-house request takes Chicago's notifications from 600 to 601; the released figures of the
two worlds overlap (no threshold tells them apart better than the guarantee allows), and a month released before
the request was dispatched keeps its figures when it is built again.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from dispatcher.dispatch.gate import OwnerGate
from dispatcher.geo.geodesy import geodesic_circle
from dispatcher.reports import privacy
from dispatcher.reports.privacy import PrivacySettings
from dispatcher.reports.releases import ReleaseStore
from dispatcher.reports.transparency import ALL, build_report
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.review import Workflow
from dispatcher.workflow.store import SqliteStore
from tests.video_requests import JOINED, LAT0, LNG0, square
from tests.video_requests import request as make_request

SEPTEMBER = datetime(2026, 9, 1, tzinfo=timezone.utc)
CLOSED = datetime(2026, 10, 9, tzinfo=timezone.utc)  # September closes on October 8
SETTINGS = PrivacySettings()
FIGURES = ("submitted", "dispatched", "notifications", "shares")
#: what one resident can add in September released on October 9: the gate's 3 a day over 38 days
DELTA = 3 * (CLOSED - SEPTEMBER).days
Z = 4.5


def _registry() -> AgencyRegistry:
    return AgencyRegistry([
        Agency("il-chicago", "Chicago Police Department", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED),
        Agency("il-evanston", "Evanston Police Department", "IL", geodesic_circle(LNG0, LAT0, 20_000), JOINED),
    ])


def _dispatch(wf: Workflow, rid: str, agency: str, at: datetime, owners: list[int], shares: list[int]) -> None:
    wf.submit(make_request(request_id=rid, agency_id=agency, submitted_at=at, area=square(0.1),
                           start=at - timedelta(hours=5), end=at - timedelta(hours=3)), at)
    wf.approve(rid, "rev", at + timedelta(minutes=5))
    OwnerGate(wf.store, wf.policy).admit(rid, np.array(owners, dtype=np.int64), at + timedelta(minutes=6))
    wf.mark_dispatched(rid, at + timedelta(minutes=7))
    for o in shares:
        if wf.store.was_notified(rid, o):  # the cap may have held one back (resident_world's resident)
            wf.share(rid, o, ["clip"], at + timedelta(hours=1))


def chicago_world(single_house: bool) -> SqliteStore:
    """Chicago: three requests of 200 residents each (600 notifications, 60 shares) and one pending; Evanston one
    request of 5; and, with ``single_house``, one more Chicago request that notified one resident, who shared."""
    store = SqliteStore(":memory:")
    wf = Workflow(store, _registry())
    for j in range(3):
        owners = list(range(1000 * (j + 1), 1000 * (j + 1) + 200))
        _dispatch(wf, f"c{j}", "il-chicago", SEPTEMBER + timedelta(days=2 + j), owners, owners[:20])
    at = SEPTEMBER + timedelta(days=9)
    wf.submit(make_request(request_id="c-pending", submitted_at=at, start=at - timedelta(hours=5),
                           end=at - timedelta(hours=3)), at)
    _dispatch(wf, "e0", "il-evanston", SEPTEMBER + timedelta(days=4), list(range(9000, 9005)), [9000])
    if single_house:
        _dispatch(wf, "house", "il-chicago", SEPTEMBER + timedelta(days=12), [5555], [5555])
    return store


def resident_world(with_resident: bool) -> SqliteStore:
    """Chicago: 90 requests in September, three a day, each to five residents of its own; with ``with_resident``,
    one more resident in every one of them, notified as often as the gate's cap lets through (three in every two
    UTC days: the cap counts by day), sharing in a third of the requests when notified."""
    store = SqliteStore(":memory:")
    wf = Workflow(store, _registry())
    for j in range(90):
        owners = list(range(10 * j, 10 * j + 5)) + ([7777] if with_resident else [])
        shares = [7777] if with_resident and j % 3 == 0 else []
        _dispatch(wf, f"r{j}", "il-chicago", SEPTEMBER + timedelta(hours=8 * j + 1), owners, shares)
    assert sum(store.was_notified(f"r{j}", 7777) for j in range(90)) == (45 if with_resident else 0)
    return store


def sample(store: SqliteStore, n: int, settings: PrivacySettings = SETTINGS) -> dict[tuple[str, str], np.ndarray]:
    """``n`` independent releases of September, each with a fresh release store: the released figures of the
    Chicago row and of the all-agencies row."""
    registry = _registry()
    out: dict[tuple[str, str], list[int]] = {(a, f): [] for a in ("il-chicago", ALL) for f in FIGURES}
    for _ in range(n):
        report = build_report(store, registry, releases=ReleaseStore(":memory:"), privacy_settings=settings,
                              since="2026-09", until="2026-09", now=CLOSED)
        for r in report.rows:
            if r.agency_id in ("il-chicago", ALL):
                for f in FIGURES:
                    out[(r.agency_id, f)].append(r.released[f])  # type: ignore[arg-type]
    return {key: np.array(v) for key, v in out.items()}


def violations(a: np.ndarray, b: np.ndarray, epsilon: float) -> list[tuple[str, float, float, float]]:
    """Threshold events on which the samples break ``P_a(S) <= e^epsilon P_b(S)`` (or the same with a and b
    swapped) by more than the sampling slack: (event, threshold, one probability, the other)."""
    n, m = len(a), len(b)
    bound = math.exp(epsilon)
    both = np.concatenate([a, b])
    out = []
    for t in np.unique(np.round(np.quantile(both, np.linspace(0.005, 0.995, 60)))):
        for name, sa, sb in ((">=", a >= t, b >= t), ("<=", a <= t, b <= t)):
            pa, pb = float(sa.mean()), float(sb.mean())
            for p, q, np_, nq in ((pa, pb, n, m), (pb, pa, m, n)):
                slack = Z * math.sqrt(p * (1 - p) / np_ + bound ** 2 * q * (1 - q) / nq) + 1 / min(n, m)
                if p > bound * q + slack:
                    out.append((name, float(t), p, q))
    return out


@pytest.fixture(scope="module")
def chicago_samples() -> tuple[dict, dict]:
    n = 1200
    return sample(chicago_world(False), n), sample(chicago_world(True), n)


def test_one_single_house_request_is_covered(chicago_samples) -> None:
    d, d2 = chicago_samples
    eps_requests = SETTINGS.epsilon_of("requests")
    res_scale = DELTA / SETTINGS.epsilon_of("residents")
    for key in d:
        _, figure = key
        # the request adds 1 to one outcome count (requests), and one notification, shared (residents)
        eps = eps_requests if figure in ("submitted", "dispatched") else 1 / res_scale
        assert not violations(d[key], d2[key], eps), (key, violations(d[key], d2[key], eps)[:3])
    # joint events on two figures of the row, bounded by the two measurements together
    for t in (2, 5, 8):
        for u in (300, 600, 900):
            a = (d[("il-chicago", "submitted")] >= t) & (d[("il-chicago", "notifications")] <= u)
            b = (d2[("il-chicago", "submitted")] >= t) & (d2[("il-chicago", "notifications")] <= u)
            assert not violations(a.astype(int), b.astype(int), eps_requests + 1 / res_scale), (t, u)
    # the bound is no looser than the guarantee states, either: the one-request change shows at about e^epsilon
    # on the tail of the dispatched count
    a, b = d[("il-chicago", "dispatched")], d2[("il-chicago", "dispatched")]
    t = 5  # above both worlds' counts (3 and 4): where the discrete Laplace ratio is exactly e^epsilon
    ratio = np.mean(b >= t) / np.mean(a >= t)
    assert math.exp(eps_requests) * 0.7 < ratio < math.exp(eps_requests) * 1.4


def test_600_to_601_no_longer_tells(chicago_samples) -> None:
    """The old report went from 600 notifications to 601. Now no threshold on the released notifications tells
    the two worlds apart: the two distributions overlap."""
    d, d2 = chicago_samples
    a, b = d[("il-chicago", "notifications")], d2[("il-chicago", "notifications")]
    assert abs(np.mean(a) - 600) < 4.5 * a.std() / math.sqrt(len(a))
    gap = max(abs(np.mean(a >= t) - np.mean(b >= t)) for t in np.unique(np.quantile(np.concatenate([a, b]),
                                                                                        np.linspace(0, 1, 101))))
    eps = SETTINGS.epsilon_of("residents") / DELTA
    # an attacker's best threshold is right no more often than (1 + gap) / 2; the guarantee allows
    # (e^eps - 1) / (e^eps + 1), a hair above 0
    assert gap <= (math.exp(eps) - 1) / (math.exp(eps) + 1) + Z * math.sqrt(0.5 / len(a))
    # the attack of the old report: "601 or more means the request exists" is a coin toss
    right = (np.mean(b >= 601) + np.mean(a < 601)) / 2
    assert abs(right - 0.5) < Z * math.sqrt(0.25 / len(a))
    assert np.mean(a == 600) < 0.01 and np.mean(b == 601) < 0.01


def test_a_released_month_cannot_be_differenced(tmp_path) -> None:
    """September is released while the single-house request is still pending; it is dispatched afterwards and the
    report built again: the same figures, so nothing to subtract."""
    store = chicago_world(False)
    wf = Workflow(store, _registry())
    at = SEPTEMBER + timedelta(days=20)
    wf.submit(make_request(request_id="house", submitted_at=at, area=square(0.1), start=at - timedelta(hours=5),
                           end=at - timedelta(hours=3)), at)
    releases = ReleaseStore(tmp_path / "releases.sqlite")
    kw = dict(releases=releases, since="2026-09", until="2026-09")
    before = build_report(store, _registry(), now=CLOSED, **kw)  # type: ignore[arg-type]
    wf.approve("house", "rev", CLOSED + timedelta(days=1))
    OwnerGate(store, wf.policy).admit("house", np.array([5555]), CLOSED + timedelta(days=1))
    wf.mark_dispatched("house", CLOSED + timedelta(days=1))
    after = build_report(store, _registry(), now=CLOSED + timedelta(days=2), **kw)  # type: ignore[arg-type]
    assert after.rows == before.rows and after.to_csv() == before.to_csv()


def test_the_check_catches_a_release_with_too_little_noise() -> None:
    """Eight times the budget behind a claim of the default: the check finds the events that break it."""
    loud = PrivacySettings(epsilon=8.0)
    d, d2 = sample(chicago_world(False), 400, loud), sample(chicago_world(True), 400, loud)
    found = violations(d[("il-chicago", "dispatched")], d2[("il-chicago", "dispatched")],
                       SETTINGS.epsilon_of("requests"))
    # Three requests, or four: with so little noise the release is 3 or 4 nine times in ten, so "at most 3" and
    # "at least 4" break the bound by far, every run; events further out (<= 2, >= 5) only in some runs.
    events = {(name, t) for name, t, _, _ in found}
    assert {("<=", 3.0), (">=", 4.0)} <= events, found


@pytest.fixture(scope="module")
def resident_stores() -> tuple[SqliteStore, SqliteStore]:
    return resident_world(False), resident_world(True)


def test_one_resident_over_the_month_is_covered(resident_stores) -> None:
    """A resident in all 90 requests of the month (three a day; notified in the 45 the gate's cap lets through)
    and sharing in some: each threshold event on the released notifications and shares within OpenDP's bound for
    that change, which is under the month's resident epsilon; and the released count unbiased."""
    without, with_ = resident_stores
    n = 600
    d, d2 = sample(without, n), sample(with_, n)
    eps_residents = SETTINGS.epsilon_of("residents")
    # the L1 change of the measurement: 30 notifications shared and 60 not
    eps = eps_residents * 90 / DELTA
    assert eps < eps_residents
    for figure in ("notifications", "shares"):
        for agency in ("il-chicago", ALL):
            a, b = d[(agency, figure)], d2[(agency, figure)]
            assert not violations(a, b, eps), (agency, figure, violations(a, b, eps)[:3])
    sd = privacy.noise_sd(DELTA / eps_residents, 2)
    # unbiased about the true count: 90 requests of five residents, and the resident's 45 notifications
    assert abs(np.mean(d2[("il-chicago", "notifications")]) - (90 * 5 + 45)) < Z * sd / math.sqrt(n)


def test_the_check_catches_an_understated_resident_sensitivity(resident_stores,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Were a resident taken to change a count by 1 (one notification, not one resident's month), the release
    of the resident above would break the bound the month claims; the check finds it."""
    without, with_ = resident_stores
    monkeypatch.setattr(privacy, "resident_sensitivity", lambda *a: 1)
    d, d2 = sample(without, 300), sample(with_, 300)
    found = violations(d[("il-chicago", "notifications")], d2[("il-chicago", "notifications")],
                       SETTINGS.epsilon_of("residents"))
    assert len(found) >= 3

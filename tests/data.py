"""Small random camera tables for tests, with every attribute exercised."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from dispatcher.index.schema import CAMERA_SCHEMA, EVENT_SCHEMA, OWNER_SCHEMA

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def cameras(n: int, seed: int = 0, *, cx: float = -73.95, cy: float = 40.75, spread: float = 0.03,
            extra_points: np.ndarray | None = None, first_id: int = 1) -> pa.Table:
    """``n`` cameras scattered around (cx, cy) plus, optionally, cameras at exactly ``extra_points`` (lng, lat)."""
    rng = np.random.default_rng(seed)
    lng = cx + rng.normal(0, spread, n)
    lat = cy + rng.normal(0, spread, n)
    if extra_points is not None and len(extra_points):
        lng = np.concatenate([lng, extra_points[:, 0]])
        lat = np.concatenate([lat, extra_points[:, 1]])
    m = lng.shape[0]
    now_s = int(NOW.timestamp())
    installed = now_s - rng.integers(0, 400 * 86_400, m)
    removed = installed + rng.integers(0, 400 * 86_400, m)
    removed_mask = (rng.random(m) < 0.8) | (removed > now_s)
    ids = np.arange(first_id, first_id + m, dtype=np.int64)
    return pa.Table.from_arrays([
        pa.array(ids),
        pa.array(first_id + rng.integers(0, max(1, m * 2 // 3), m)),
        pa.array(lat),
        pa.array(lng),
        pa.array(installed).cast(pa.timestamp("s", tz="UTC")),
        pa.array(removed, mask=removed_mask).cast(pa.timestamp("s", tz="UTC")),
        pa.array(rng.choice([30, 60, 180], m).astype(np.int16)),
        pa.array(rng.random(m) < 0.9),
    ], schema=CAMERA_SCHEMA)


def owners(cams: pa.Table, seed: int = 0, share_out: float = 0.05) -> pa.Table:
    rng = np.random.default_rng(seed + 1)
    ids = np.unique(cams.column("owner_id").to_numpy())
    return pa.Table.from_arrays([pa.array(ids), pa.array(rng.random(ids.shape[0]) < share_out)], schema=OWNER_SCHEMA)


def events(cams: pa.Table, seed: int = 0, days: int = 40, per_day: float = 1.0) -> pa.Table:
    rng = np.random.default_rng(seed + 2)
    ids = cams.column("camera_id").to_numpy()
    counts = rng.poisson(per_day * days, ids.shape[0])
    cam = np.repeat(ids, counts)
    ts = int(NOW.timestamp()) - rng.integers(0, days * 86_400, cam.shape[0])
    return pa.Table.from_arrays([pa.array(cam), pa.array(ts).cast(pa.timestamp("s", tz="UTC"))], schema=EVENT_SCHEMA)


def window(rng: np.random.Generator, max_days_ago: int = 250) -> tuple[datetime, datetime]:
    start = NOW - timedelta(seconds=int(rng.integers(15 * 60, max_days_ago * 86_400)),
                            microseconds=int(rng.integers(0, 1_000_000)))
    end = start + timedelta(seconds=int(rng.integers(15 * 60, 12 * 3600)), microseconds=int(rng.integers(0, 10**6)))
    return start, end

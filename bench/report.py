"""The operators' benchmark: resolve latency and build cost of geodispatch beside its peers, same data, same
polygons, same run, with identical result sets asserted. Used by ``geodispatch bench`` and ``geodispatch demo``."""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import shapely
import shapely.geometry

from bench.peers import DuckDBPeer, PeerUnavailable, PostGISPeer, RedisGeoPeer
from bench.reference import Dataset, LatSortedResolver, Rings, STRtreePeer, admit_vectorised
from bench.servers import PostgresServer
from dispatcher.geo.area import Area
from dispatcher.index.camera_index import CameraIndex
from dispatcher.service.servers import RedisServer, ServerUnavailable
from dispatcher.synthetic.areas import SQ_MILE_KM2, sample_areas
from dispatcher.synthetic.data import REFERENCE_NOW, SyntheticData, generate

#: Area sizes measured, by label, in km².
SIZES: dict[str, float] = {
    "0.025 sq mi": 0.025 * SQ_MILE_KM2,
    "0.5 sq mi": 0.5 * SQ_MILE_KM2,
    "10 km²": 10.0,
    "100 km²": 100.0,
    "city, 600 km²": 600.0,
}
PEERS = ("latsorted", "strtree", "duckdb", "postgis", "redis-geo")
#: The policy's area sizes (those :func:`policy_sizes` gives for the default policy), for the figures from a
#: GeoJSON dict (what a backend receives): parse, validate, resolve.
GEOJSON_SIZES: dict[str, float] = {label: sq_mi * SQ_MILE_KM2 for label, sq_mi in
                                   (("0.025 sq mi", 0.025), ("0.1 sq mi", 0.1), ("0.25 sq mi", 0.25),
                                    ("0.5 sq mi", 0.5))}

#: Sizes between the request policy's bounds that :func:`policy_sizes` adds to them, in square miles.
_POLICY_STEPS_SQ_MI = (0.1, 0.25)


def policy_sizes(policy: Any = None) -> dict[str, float]:
    """Area sizes a request may have under ``policy`` (default: the default policy), in km² by label: its
    smallest and largest area and the steps of :data:`_POLICY_STEPS_SQ_MI` between them. The demo measures
    these, never an area the policy would refuse."""
    from dispatcher.workflow.policy import Policy

    p = policy if policy is not None else Policy()
    lo, hi = p.min_area_sq_mi, p.max_area_sq_mi
    sq_mi = sorted({lo, hi, *(x for x in _POLICY_STEPS_SQ_MI if lo < x < hi)})
    return {f"{x:g} sq mi": x * SQ_MILE_KM2 for x in sq_mi}


Progress = Callable[[str, int, int], None]
#: Untimed requests each engine resolves before its timed batch.
_WARM_UP = 30
#: ... and for at least this many seconds.
_WARM_UP_S = 0.5
#: Timed passes over each batch per engine, in alternation (see :func:`_run_batches`).
ROUNDS = 5


def _noop(stage: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class Workload:
    areas: dict[str, list[Area]]
    windows: list[tuple[datetime, datetime]]
    now: datetime
    #: The same areas as the GeoJSON dicts they were parsed from.
    geojson: dict[str, list[dict[str, Any]]]


def make_workload(data: SyntheticData, queries: int, sizes: dict[str, float], seed: int = 0) -> Workload:
    """``queries`` polygons per size centred on cameras, and as many windows of 15 min to 12 h in whole
    seconds, starting 1 hour to 25 days before ``data.now``."""
    rng = np.random.default_rng(seed)
    geojson = {label: sample_areas(data.cameras, queries, km2, seed=seed + i)
               for i, (label, km2) in enumerate(sizes.items())}
    areas = {label: [Area.parse(a) for a in raws] for label, raws in geojson.items()}
    windows = []
    for _ in range(queries):
        start = data.now - timedelta(seconds=int(rng.integers(3600, 25 * 86_400)))
        windows.append((start, start + timedelta(seconds=int(rng.integers(15 * 60, 12 * 3600 + 1)))))
    return Workload(areas, windows, data.now, geojson)


def _pct(samples: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e6
    return {"p50_us": float(np.percentile(a, 50)), "p90_us": float(np.percentile(a, 90)),
            "p99_us": float(np.percentile(a, 99)), "max_us": float(a.max())}


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


class ResultMismatch(AssertionError):
    """A peer and geodispatch disagreed on a recipient set: the benchmark is void."""


Resolver = Callable[[Area, datetime, datetime, datetime], tuple[np.ndarray, ...]]


def _build_peer(name: str, data: SyntheticData, ds: Callable[[], Dataset], ev: Any, stack: ExitStack,
                workdir: Path, server_bytes: dict[str, int], from_geojson: dict[str, Resolver]) -> Resolver:
    """Build one peer (starting its server if it needs one) and return its resolve; raises PeerUnavailable or
    ServerUnavailable when it cannot run here. A peer living in a server process records the server's own
    memory for its data in ``server_bytes`` (our process's RSS says nothing about it); a peer that can take
    the GeoJSON dict itself puts that resolve in ``from_geojson``."""
    if name == "latsorted":
        peer = LatSortedResolver(data.cameras, data.owners, ev)
        from_geojson[name] = lambda d, s, e, now: peer.resolve(_peer_rings(d), s, e, now)
        rings: dict[Area, Rings] = {}  # each area converted once, as geodispatch parses each area once

        def resolve(a: Area, s: datetime, e: datetime, now: datetime) -> tuple[np.ndarray, ...]:
            r = rings.get(a)
            if r is None:
                r = rings[a] = Rings.of(a)
            return peer.resolve(r, s, e, now)

        return resolve
    if ev is not None:
        raise PeerUnavailable("no motion-event rule in this peer")
    if name == "strtree":
        d = ds()
        tree, opted = STRtreePeer(d), np.asarray(sorted(d.opted_out), dtype=np.int64)
        return lambda a, s, e, now: admit_vectorised(d, tree.spatial(a), s, e, now, opted)
    if name == "duckdb":
        duck = DuckDBPeer(ds())
        stack.callback(duck.close)
        return duck.resolve
    if name == "postgis":
        pg = stack.enter_context(PostgresServer())
        gis = PostGISPeer(ds(), pg.dsn)
        stack.callback(gis.close)
        server_bytes[name] = int(gis.con.execute("SELECT pg_total_relation_size('cams')").fetchone()[0])
        return gis.resolve
    if name == "redis-geo":
        server = stack.enter_context(RedisServer(workdir / "redis", appendonly=False))
        client = stack.enter_context(server.client())
        before = int(client.info("memory")["used_memory"])
        geo = RedisGeoPeer(ds(), client)
        server_bytes[name] = int(client.info("memory")["used_memory"]) - before
        return geo.resolve
    raise ValueError(f"unknown peer {name!r}; choose from {PEERS}")


def _peer_rings(d: Any) -> Rings:
    """The lat-sorted peer's arrays for a GeoJSON dict as a backend team would make them: a Polygon of one ring
    straight from its coordinates with numpy (its shapely polygon, for the points its own test leaves unsure, from
    the same array), anything else through shapely (:meth:`Rings.of`). ``shapely.geometry.shape`` followed by the
    parts, rings and coordinates taken back out of GEOS cost the peer about ten times its scan (150-250 µs a
    request against ~20), which said nothing about the spatial index being compared."""
    coords = d.get("coordinates") if type(d) is dict and d.get("type") == "Polygon" else None
    if not isinstance(coords, list) or len(coords) != 1:
        return Rings.of(d)
    xy = np.asarray(coords[0], dtype=np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    box = np.array([lo[0], lo[1], hi[0], hi[1]])
    return Rings(geometry=shapely.polygons(xy), x=np.ascontiguousarray(xy[:, 0]), y=np.ascontiguousarray(xy[:, 1]),
                 ring_ptr=np.array([0, xy.shape[0]], np.int64), poly_ptr=np.array([0, 1], np.int64),
                 poly_box=box.reshape(1, 4), box=box)


def _run_batches(engines: dict[str, Callable[..., tuple[np.ndarray, ...]]], requests: list[tuple[Any, datetime,
                 datetime]], now: datetime, label: str, tick: Callable[[], None]) -> dict[str, Any]:
    """Each engine runs the whole batch in turn (so none pays for caches another evicted), :data:`ROUNDS` times
    in alternation; a request's time is its median over the rounds (a batch of small areas takes a few
    milliseconds, which one burst of another process's work on a shared machine skewed for whichever engine ran
    then: both sides now see the same spread of conditions). Answers asserted equal."""
    times: dict[str, list[list[float]]] = {name: [] for name in engines}
    answers: dict[str, list[tuple[np.ndarray, ...]]] = {}
    for r in range(ROUNDS):
        for name, resolve in engines.items():
            # Warm up on the batch: before the first round for at least _WARM_UP requests and _WARM_UP_S seconds
            # (after another engine's build, a database loading 10M rows, 10 GB of peer arrays, the next fraction
            # of a second runs several times slower for reasons nobody meets in steady state: at 100M cameras, a
            # 300-request batch measured a 282 µs median right after a peer was built, 34 µs right after), before
            # the later ones with one pass, to bring back what the other engine's batch evicted.
            t_warm = time.perf_counter()
            k = 0
            while (k < len(requests)) if r else (k < _WARM_UP or time.perf_counter() - t_warm < _WARM_UP_S):
                a, start, end = requests[k % len(requests)]
                resolve(a, start, end, now)
                k += 1
            answered, took = [], []
            for a, start, end in requests:
                t = time.perf_counter()
                answered.append(resolve(a, start, end, now))
                took.append(time.perf_counter() - t)
                if r == 0:
                    tick()
            times[name].append(took)
            answers[name] = answered
    medians = {name: np.median(np.asarray(rounds), axis=0) for name, rounds in times.items()}
    for name in engines:
        for q, (want, got) in enumerate(zip(answers["geodispatch"], answers[name])):
            if any(not np.array_equal(w, g) for w, g in zip(want, got)):
                raise ResultMismatch(f"{name} disagrees with geodispatch on {label} request {q} "
                                     f"({len(got[0])} vs {len(want[0])} owners)")
    found = [len(a[1]) for a in answers["geodispatch"]]
    row: dict[str, Any] = {"requests": len(requests), "cameras_found_mean": float(np.mean(found)),
                           "rounds": ROUNDS, "geodispatch": _pct(medians["geodispatch"])}
    for name in engines:
        if name == "geodispatch":
            continue
        row[name] = _pct(medians[name])
        row[name]["p50_ratio"] = row[name]["p50_us"] / row["geodispatch"]["p50_us"]
        row[name]["p99_ratio"] = row[name]["p99_us"] / row["geodispatch"]["p99_us"]
    return row


def _selectivity_windows(now: datetime, n: int, seed: int) -> dict[str, list[tuple[datetime, datetime]]]:
    """Windows from the most to the least selective: short and recent, long and recent, long and near the
    oldest retention (where most cameras' footage is gone)."""
    rng = np.random.default_rng(seed + 99)

    def make(length_s: int, lo_days: float, hi_days: float) -> list[tuple[datetime, datetime]]:
        out = []
        for _ in range(n):
            start = now - timedelta(seconds=int(rng.integers(int(lo_days * 86_400), int(hi_days * 86_400))))
            out.append((start, start + timedelta(seconds=length_s)))
        return out

    return {"15 min, last 2 days": make(15 * 60, 1, 2), "12 h, last 2 days": make(12 * 3600, 1, 2),
            "12 h, 150-175 days ago": make(12 * 3600, 150, 175)}


def index_report(n_cameras: int = 1_000_000, queries: int = 300, *, seed: int = 0,
                 peers: Sequence[str] = PEERS, sizes: dict[str, float] | None = None, events: bool = False,
                 data: SyntheticData | None = None, progress: Progress = _noop,
                 window_queries: int = 100, geojson_queries: int | None = None) -> dict[str, Any]:
    """Generate (or take) a data set, build geodispatch and the peers, resolve the same requests with each,
    assert identical recipient sets, and return every figure as a JSON-ready dict. Peers that cannot run here
    (not installed, or without a motion-event rule when ``events``) are listed under ``skipped`` with why.

    ``from_geojson``: ``geojson_queries`` (default ``queries``) requests per size of :data:`GEOJSON_SIZES` given
    as GeoJSON dicts, as a backend receives them: ours parses and validates each (:meth:`Area.parse`) and
    resolves; the lat-sorted peer reads each into its arrays (:func:`_peer_rings`) and resolves. ``parse``: what
    parsing a typical request polygon costs, ours beside shapely's construction and validity check
    (:func:`parse_report`)."""
    sizes = SIZES if sizes is None else sizes
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown peer(s) {sorted(unknown)}; choose from {PEERS}")
    if data is None:
        # motion events only when asked for: at 100M cameras they are 600M rows (9.6 GB) nobody would read
        data = generate(n_cameras, seed=seed, now=REFERENCE_NOW, progress=progress,  # the same data on any day
                        events_per_day=2.0 if events else 0.0)
    ev = data.events if events else None
    report: dict[str, Any] = {"cameras": data.n_cameras, "queries_per_size": queries, "seed": seed,
                              "motion_events": events, "build": {}, "resolve": {}, "windows": {}, "skipped": {},
                              "from_geojson": {}}
    geojson_queries = queries if geojson_queries is None else geojson_queries

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
    shared: list[Dataset] = []

    def dataset() -> Dataset:
        if not shared:
            shared.append(Dataset.from_tables(data.cameras, data.owners))
        return shared[0]

    engines: dict[str, Callable[..., tuple[np.ndarray, ...]]] = {
        "geodispatch": lambda a, s, e, now: _triple(index.resolve(a, s, e, now=now))}
    raw_engines: dict[str, Resolver] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="geodispatch-bench-") as tmp:
        for k, name in enumerate(peers, start=1):
            progress("build", k, 1 + len(peers))
            rss0 = _rss()
            t = time.perf_counter()
            server_bytes: dict[str, int] = {}
            try:
                engines[name] = _build_peer(name, data, dataset, ev, stack, Path(tmp), server_bytes, raw_engines)
            except (PeerUnavailable, ServerUnavailable) as exc:
                report["skipped"][name] = str(exc)
                continue
            row = {"seconds": time.perf_counter() - t}
            if name in server_bytes:  # the data lives in the server process
                row["server_bytes_per_camera"] = server_bytes[name] / data.n_cameras
            else:
                row["rss_bytes_per_camera"] = (_rss() - rss0) / data.n_cameras
            report["build"][name] = row
        progress("build", 1 + len(peers), 1 + len(peers))

        work = make_workload(data, queries, sizes, seed)
        windows = _selectivity_windows(work.now, window_queries, seed) if window_queries else {}
        wl_area = make_workload(data, window_queries, {"0.5 sq mi": SIZES["0.5 sq mi"]}, seed + 7).areas["0.5 sq mi"]
        raw_engines = {"geodispatch": engines["geodispatch"], **raw_engines} if raw_engines else {}
        raw = make_workload(data, geojson_queries, GEOJSON_SIZES, seed + 13) if raw_engines and geojson_queries \
            else None
        total = ((sum(len(v) for v in work.areas.values()) + sum(len(v) for v in windows.values())) * len(engines)
                 + (sum(len(v) for v in raw.geojson.values()) * len(raw_engines) if raw else 0))
        done = [0]

        def tick() -> None:
            done[0] += 1
            progress("resolve", done[0], total)

        for label, areas in work.areas.items():
            requests = [(a, s, e) for a, (s, e) in zip(areas, work.windows)]
            report["resolve"][label] = _run_batches(engines, requests, work.now, label, tick)
        for label, wins in windows.items():
            requests = [(a, s, e) for a, (s, e) in zip(wl_area, wins)]
            report["windows"][label] = _run_batches(engines, requests, work.now, label, tick)
        if raw is not None:
            for label, dicts in raw.geojson.items():
                given = [(d, s, e) for d, (s, e) in zip(dicts, raw.windows)]
                report["from_geojson"][label] = _run_batches(raw_engines, given, raw.now, label, tick)
            report["parse"] = parse_report([d for dicts in raw.geojson.values() for d in dicts])
    return report


def parse_report(dicts: Sequence[dict[str, Any]], repeats: int = 5) -> dict[str, Any]:
    """µs of CPU (``time.process_time``, the best of ``repeats`` passes over ``dicts``) to parse and validate a
    GeoJSON Polygon: :meth:`Area.parse` beside shapely's ``shape`` + ``is_valid`` + ``area`` (what validation
    costs on GEOS), the same dicts in the same run."""
    def best(f: Callable[[dict[str, Any]], Any]) -> float:
        for d in dicts[:20]:
            f(d)
        times = []
        for _ in range(repeats):
            t = time.process_time()
            for d in dicts:
                f(d)
            times.append((time.process_time() - t) / max(len(dicts), 1) * 1e6)
        return min(times)

    def geos(d: dict[str, Any]) -> Any:
        g = shapely.geometry.shape(d)
        return shapely.is_valid(g) and shapely.area(g) > 0

    ours, theirs = best(Area.parse), best(geos)
    vertices = [len(d["coordinates"][0]) - 1 for d in dicts]
    return {"areas": len(dicts), "vertices": [min(vertices, default=0), max(vertices, default=0)],
            "geodispatch_us": ours, "shapely_us": theirs, "ratio": theirs / ours if ours else 0.0}


def _triple(rs: Any) -> tuple[np.ndarray, ...]:
    return rs.owner_ids, rs.camera_ids, rs.owner_offsets


def _table(title: str, rows: dict[str, Any], peers: list[str]) -> list[str]:
    lines = ["| " + title + " | found (mean) | geodispatch p50 / p99 µs | " +
             " | ".join(f"{p} p50 / p99 µs (ratio)" for p in peers) + " |",
             "|---|---|---|" + "---|" * len(peers)]
    for label, row in rows.items():
        g = row["geodispatch"]
        cells = [f"{row[p]['p50_us']:.1f} / {row[p]['p99_us']:.1f} ({row[p]['p50_ratio']:.2f}x / "
                 f"{row[p]['p99_ratio']:.2f}x)" if p in row else "-" for p in peers]
        lines.append(f"| {label} | {row['cameras_found_mean']:.1f} | {g['p50_us']:.1f} / {g['p99_us']:.1f} | "
                     + " | ".join(cells) + " |")
    return lines


def memory(build_row: dict[str, Any]) -> str:
    """Memory a camera costs: our process's RSS growth, or the server's own figure for a server peer."""
    if "server_bytes_per_camera" in build_row:
        return f"{build_row['server_bytes_per_camera']:.1f} (in the server)"
    return f"{build_row['rss_bytes_per_camera']:.1f} (RSS)"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (latencies in µs; a ratio > 1 means the peer is that many times slower)."""
    peers = [p for p in report["build"] if p != "geodispatch"]
    lines = [f"### {report['cameras']:,} cameras, {report['queries_per_size']} requests per area size"
             f"{', motion events on' if report['motion_events'] else ''}", "",
             f"Each engine's batch timed {ROUNDS} times in alternation; a request's time is its median.", ""]
    lines += _table("area", report["resolve"], peers)
    if report.get("windows"):
        lines += ["", "By time window (0.5 sq mi areas):", ""] + _table("window", report["windows"], peers)
    if report.get("from_geojson"):
        lines += ["", "From a GeoJSON dict (ours parses and validates it, then resolves; the peer reads it "
                  "with numpy, without validating it, then resolves):", ""]
        lines += _table("area", report["from_geojson"], [p for p in peers if p in report["from_geojson"][
            next(iter(report["from_geojson"]))]])
    if report.get("parse"):
        p = report["parse"]
        lines += ["", f"Parsing a request polygon ({p['vertices'][0]}-{p['vertices'][1]} vertices, {p['areas']} of "
                  f"them, CPU µs each): geodispatch {p['geodispatch_us']:.1f}, shapely shape + is_valid + area "
                  f"{p['shapely_us']:.1f} ({p['ratio']:.2f}x)"]
    lines += ["", "| engine | build s | bytes/camera (arrays) | memory bytes/camera |", "|---|---|---|---|"]
    for name, b in report["build"].items():
        arrays = f"{b['bytes_per_camera']:.1f}" if "bytes_per_camera" in b else "-"
        lines.append(f"| {name} | {b['seconds']:.2f} | {arrays} | {memory(b)} |")
    for name, why in report.get("skipped", {}).items():
        lines.append(f"\nSkipped {name}: {why}")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    """p50 and p99 latency by area for every engine (log scale), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(report["build"])
    labels = list(report["resolve"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    width = 0.8 / len(engines)
    for ax, stat in zip(axes, ("p50_us", "p99_us")):
        for k, name in enumerate(engines):
            vals = [report["resolve"][lab][name][stat] if name in report["resolve"][lab] else np.nan
                    for lab in labels]
            ax.bar(np.arange(len(labels)) + k * width, vals, width, label=name)
        ax.set_xticks(np.arange(len(labels)) + width * (len(engines) - 1) / 2, labels, rotation=20)
        ax.set_yscale("log")
        ax.set_title(f"{stat[:3]} resolve latency, {report['cameras']:,} cameras")
        ax.set_ylabel("µs")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pipeline_report(index: CameraIndex, data: SyntheticData, sink: Any, *, requests: int = 50, seed: int = 0,
                    batch: int = 16) -> dict[str, Any]:
    """Run ``requests`` typical requests from synthetic partner agencies through the pipeline (validate, record,
    resolve, dispatch to ``sink``, mark) on an embedded SQLite workflow store in the sink's file, with
    auto-approval, ``batch`` commands at a time as a service worker reads them; then run the same commands again:
    the repeat must append nothing (exactly-once), and the report says so."""
    from dispatcher.dispatch.dispatcher import Dispatcher
    from dispatcher.synthetic.agencies import generate_agencies
    from dispatcher.synthetic.requests import typical_requests
    from dispatcher.workflow.agencies import AgencyRegistry
    from dispatcher.workflow.pipeline import Pipeline, Submit
    from dispatcher.workflow.policy import Policy
    from dispatcher.workflow.review import Workflow
    from dispatcher.workflow.store import SqliteStore

    agencies = generate_agencies(400, seed=seed)
    store = SqliteStore(sink.path)  # one file: the gate's records are written with each batch
    pipeline = Pipeline(Workflow(store, AgencyRegistry(agencies), Policy(auto_approve=True)), index,
                        Dispatcher(sink))
    cmds = [Submit(r) for r in typical_requests(agencies, requests, seed, data.now, f"demo-{seed}")]

    def run_all() -> list[Any]:
        return [o for k in range(0, len(cmds), batch) for o in pipeline.run(cmds[k:k + batch], data.now)]

    before = len(sink.read_all())
    t0 = time.perf_counter()
    first = run_all()
    seconds = time.perf_counter() - t0
    appended = len(sink.read_all()) - before
    repeat = run_all()
    store.close()
    return {"requests": requests, "dispatched": sum(o.dispatched_now for o in first),
            "refused": sum(o.refused for o in first), "recipients": sum(o.notified for o in first),
            "batches": appended, "seconds": seconds,
            "recipients_per_s": sum(o.notified for o in first) / seconds if seconds else 0.0,
            "repeat_appended": len(sink.read_all()) - before - appended,
            "repeat_dispatched": sum(o.dispatched_now for o in repeat)}

"""H3 point-to-cell throughput of the Numba kernels beside h3-py's per-point loop and h3ronpy's vectorised call,
on the same points in the same run, with identical cells asserted. Compile time is measured apart, in fresh
processes: once on an empty Numba cache and once loading that cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import h3.api.basic_int as h3
import h3ronpy.vector as hv
import numba
import numpy as np
import pyarrow as pa

from dispatcher.geo import h3 as gh3


class CellMismatch(AssertionError):
    """A peer and geodispatch assigned different cells: the benchmark is void."""


def us_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points spread over the contiguous US box (where the cameras are)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(24.5, 49.4, n), rng.uniform(-124.8, -66.9, n)


def _best(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


_COMPILE_PROBE = (
    "import json, time; t = time.perf_counter(); from dispatcher.geo import h3 as g; imp = time.perf_counter() - t;"
    "w = g.warm_up(); print(json.dumps({'import_s': imp, 'compile_s': w}))"
)


def compile_times() -> dict[str, float]:
    """Seconds to import and to compile (empty cache) or load (warm cache) the kernels, in fresh processes."""
    with tempfile.TemporaryDirectory(prefix="geodispatch-numba-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = [json.loads(subprocess.run([sys.executable, "-c", _COMPILE_PROBE], env=env, check=True,
                                          capture_output=True, text=True).stdout) for _ in range(2)]
    return {"import_s": runs[1]["import_s"], "cold_compile_s": runs[0]["compile_s"],
            "cached_load_s": runs[1]["compile_s"]}


def h3_report(n_points: int = 10_000_000, res: int = 12, *, loop_points: int = 200_000, repeat: int = 3,
              seed: int = 0, with_compile: bool = True) -> dict[str, Any]:
    """Throughput of latlng_to_cell at ``res``: ours on all threads and on one, h3ronpy's call, h3-py's loop."""
    lat, lng = us_points(n_points, seed)
    gh3.warm_up()
    report: dict[str, Any] = {"points": n_points, "res": res, "threads": numba.get_num_threads(), "engines": {}}
    eng = report["engines"]

    ours = gh3.latlng_to_cell(lat, lng, res)
    eng["geodispatch"] = {"seconds": _best(lambda: gh3.latlng_to_cell(lat, lng, res), repeat)}
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        eng["geodispatch 1 thread"] = {"seconds": _best(lambda: gh3.latlng_to_cell(lat, lng, res), repeat)}
    finally:
        numba.set_num_threads(threads)

    def h3ronpy_call() -> np.ndarray:
        cells = pa.array(hv.coordinates_to_cells(lat, lng, res))
        return np.asarray(cells.to_numpy(zero_copy_only=False), dtype=np.uint64)

    theirs = h3ronpy_call()
    if not np.array_equal(ours, theirs):
        raise CellMismatch(f"h3ronpy disagrees on {int((ours != theirs).sum())} of {n_points} points")
    eng["h3ronpy"] = {"seconds": _best(h3ronpy_call, repeat)}

    m = min(loop_points, n_points)
    la, lo = lat[:m].tolist(), lng[:m].tolist()
    t = time.perf_counter()
    ref = [h3.latlng_to_cell(a, b, res) for a, b in zip(la, lo)]
    loop = time.perf_counter() - t
    if ref != ours[:m].tolist():
        raise CellMismatch("h3-py disagrees with geodispatch")
    eng["h3-py loop"] = {"seconds": loop * n_points / m, "measured_points": m}

    base = eng["geodispatch"]["seconds"]
    one = eng["geodispatch 1 thread"]["seconds"]
    for row in eng.values():
        row["ns_per_point"] = row["seconds"] / n_points * 1e9
        row["ratio"] = row["seconds"] / base
        row["ratio_1_thread"] = row["seconds"] / one
    if with_compile:
        report["compile"] = compile_times()
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [f"### H3 point to cell: {report['points']:,} points at res {report['res']}, "
             f"{report['threads']} threads", "",
             "| engine | seconds | ns/point | peer / ours (all threads) | peer / ours (1 thread) |",
             "|---|---|---|---|---|"]
    for name, r in report["engines"].items():
        lines.append(f"| {name} | {r['seconds']:.3f} | {r['ns_per_point']:.1f} | {r['ratio']:.2f}x | "
                     f"{r['ratio_1_thread']:.2f}x |")
    if "compile" in report:
        c = report["compile"]
        lines += ["", f"Import {c['import_s']:.2f} s; compile on an empty Numba cache {c['cold_compile_s']:.2f} s; "
                      f"load from the cache {c['cached_load_s']:.2f} s (fresh processes, outside every timing above)."]
    return "\n".join(lines) + "\n"

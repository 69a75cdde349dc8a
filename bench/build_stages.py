"""The index build from a data directory to a saved, openable index, stage by stage: wall and CPU seconds (this
process's, every thread) of reading the Parquet tables, each of the build's :data:`~dispatcher.index.build.STAGES`
after the read, saving and opening, best of ``--rounds`` in one process (the first round compiles, or loads
Numba's cache, outside the timings). The load average is printed beside each round: on a shared machine the CPU
seconds are the figures to compare, wall time follows the other jobs.

    python -m bench.build_stages --data data/ [--events] [--rounds 3] [--out /tmp/index] [--json out.json]
        [--warm-up-rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from dispatcher.index.build import STAGES
from dispatcher.index.camera_index import CameraIndex
from dispatcher.index.geotables import as_table


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def one_round(data: Path, out: Path, events: bool, rows: int | None = None) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of each stage of one build of ``data`` (its first ``rows`` cameras, and their events,
    when given) saved to ``out`` (replaced) and opened."""
    laps: dict[str, tuple[float, float]] = {}
    marks = [_clock()]

    def lap(name: str) -> None:
        now = _clock()
        laps[name] = (now[0] - marks[-1][0], now[1] - marks[-1][1])
        marks.append(now)

    cams = as_table(data / "cameras.parquet", "cameras")
    owners = as_table(data / "owners.parquet", "owners")
    ev = as_table(data / "events.parquet", "events") if events else None
    if rows is not None:
        cams = cams.slice(0, rows)
        if ev is not None:
            ev = ev.filter(pc.is_in(ev.column("camera_id"), value_set=cams.column("camera_id")))
    lap("read")
    seen: list[int] = []

    def progress(_: str, done: int, total: int) -> None:
        if done and done not in seen:  # stage ``done - 1`` ended ("read" of a table already read: ~0)
            seen.append(done)
            if STAGES[done - 1] != "read":
                lap(STAGES[done - 1])

    index = CameraIndex.build(cams, owners, ev, progress=progress)
    del cams, owners, ev
    if out.exists():
        shutil.rmtree(out)
    index.save(out)
    lap("save")
    CameraIndex.open(out, warm_up=False)
    lap("open")
    laps["total"] = (marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1])
    return laps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--events", action="store_true", help="Read and index events.parquet too.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="Where to save (default: a temporary directory).")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--warm-up-rows", type=int, default=None,
                   help="Warm up (compile or load the kernels) on this many cameras rather than on all of them.")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="geodispatch-build-")
    out = args.out or Path(tmp) / "index"
    try:
        one_round(args.data, out, args.events, args.warm_up_rows)  # compile or load the kernels
        rounds = []
        for k in range(args.rounds):
            load = os.getloadavg()[0]
            r = one_round(args.data, out, args.events)
            rounds.append({"load": load, "stages": r})
            print(f"round {k + 1} (load {load:.2f}): " + ", ".join(f"{n} {w:.3f}/{c:.3f}" for n, (w, c) in r.items()))
        best: dict[str, Any] = {n: (min(r["stages"][n][0] for r in rounds), min(r["stages"][n][1] for r in rounds))
                                for n in rounds[0]["stages"]}
        print("best wall/CPU s: " + ", ".join(f"{n} {w:.3f}/{c:.3f}" for n, (w, c) in best.items()))
        if args.json:
            args.json.write_text(json.dumps({"rounds": rounds, "best": best}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

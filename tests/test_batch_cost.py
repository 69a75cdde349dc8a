"""The batch-cost benchmark (``bench/batch_cost.py``) measures what it says: every request it feeds is handled and
dispatched, in batches of exactly the size asked for (the fit of CPU per batch against size depends on it)."""

from __future__ import annotations

import math

from bench.batch_cost import report, run


def test_each_size_handles_its_requests_in_batches_of_that_size() -> None:
    result = run(20_000, 24, [1, 8], seed=3, gaps_ms=(0.0, 2.0))
    rows = {(r["batch"], r["gap_ms"]): r for r in result["rows"]}
    assert sorted(rows) == [(1, 0.0), (1, 2.0), (8, 0.0), (8, 2.0)]
    for (size, _), r in rows.items():
        assert r["requests"] == 24
        assert r["dispatched"] == 24        # typical requests, auto-approved: none refused
        assert r["batches"] == 24 // size
        assert r["worker_cpu_ms_per_request"] > 0 and r["redis_cpu_ms_per_request"] >= 0  # 10 ms ticks
    assert sorted(result["fit"]) == ["0.0", "2.0"]
    assert all(math.isfinite(f["fixed_ms_per_batch"]) and math.isfinite(f["ms_per_request"])
               for f in result["fit"].values())
    assert "| 8 | 2 | 24 |" in report(result)

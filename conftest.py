"""Benchmarks and big-scale runs go in one process: with ``--benchmark-only`` or ``-m bigscale`` the suite's
``-n 2`` (pytest-xdist: it would disable pytest-benchmark, and two national-scale runs at once need twice the
memory) is turned off."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    marks = str(config.getoption("markexpr", "") or "")
    if config.getoption("benchmark_only", False) or ("bigscale" in marks and "not bigscale" not in marks):
        config.option.numprocesses = 0
        config.option.dist = "no"

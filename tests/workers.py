"""Run Python snippets in separate worker processes started together, each printing one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def run_workers(code: str, n: int, *, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                timeout: float = 600) -> list[dict[str, Any]]:
    """Start ``n`` processes at once running ``code``; wait for all and return what each printed."""
    procs = [subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True,
                              env=None if env is None else dict(env)) for _ in range(n)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"worker exited with {p.returncode}"
        outs.append(json.loads(out))
    return outs

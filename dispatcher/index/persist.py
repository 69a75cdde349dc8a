"""An index on disk: one ``.npy`` file per array and a ``meta.json``, memory-mapped on open so that worker
processes on one machine share one copy in the page cache. The flags are mapped copy-on-write: live updates
stay private to the process that makes them."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dispatcher.errors import IndexFormatError
from dispatcher.index.columns import Columns, empty_columns
from dispatcher.index.config import IndexConfig
from dispatcher.index.state import Base, State
from dispatcher.index.tree import Tree

__all__ = ["FORMAT_VERSION", "open_state", "save_state"]

FORMAT_VERSION = 2


def save_state(st: State, config: IndexConfig, path: str | Path) -> Path:
    """Write the base of ``st`` (its delta must be empty) to directory ``path`` (created; must not hold an
    index)."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    if (d / "meta.json").exists():
        raise IndexFormatError(f"{d}: already holds an index; choose another directory")
    arrays = {**{f"col_{n}": getattr(st.base.cols, n) for n in Columns.NAMES},
              **{f"tree_{n}": getattr(st.base.tree, n) for n in Tree.NAMES}, "optout": st.optout}
    for name, arr in arrays.items():
        np.save(d / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
    meta = {"format": FORMAT_VERSION, "cameras": st.base.cols.n, "has_events": st.has_events,
            "n_top": st.base.tree.n_top,
            "config": asdict(config), "arrays": sorted(arrays),
            "saved_at": datetime.now(timezone.utc).isoformat()}
    (d / "meta.json").write_text(json.dumps(meta, indent=2))
    return d


def open_state(path: str | Path) -> tuple[State, IndexConfig]:
    """Map an index written by :func:`save_state`: its state, with an empty delta, and its config."""
    d = Path(path)
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{d}: not an index directory ({exc})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise IndexFormatError(f"{d}: index format {meta.get('format')!r}, this version reads {FORMAT_VERSION}")
    arrays: dict[str, np.ndarray] = {}
    for name in meta["arrays"]:
        try:
            arrays[name] = np.load(d / f"{name}.npy", mmap_mode="c" if name == "col_flags" else "r",
                                   allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{d}: cannot map {name}.npy ({exc})") from None
    cols = Columns(**{n: arrays[f"col_{n}"] for n in Columns.NAMES})
    tree = Tree(**{n: arrays[f"tree_{n}"] for n in Tree.NAMES}, n_top=int(meta["n_top"]))
    if cols.n != meta["cameras"] or int(tree.nodes["p1"][:tree.n_top].max(initial=0)) != cols.n:
        raise IndexFormatError(f"{d}: array lengths disagree with meta.json ({meta['cameras']} cameras)")
    config = IndexConfig.from_dict(meta["config"])
    has_events = bool(meta["has_events"])
    return State(Base(cols, tree), empty_columns(has_events), np.array(arrays["optout"]), has_events), config

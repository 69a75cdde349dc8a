"""An index on disk: one ``.npy`` file per array and a ``meta.json``, memory-mapped on open so that worker
processes on one machine share one copy in the page cache. The flags are mapped copy-on-write: live updates
stay private to the process that makes them."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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


def save_state(st: State, config: IndexConfig, path: str | Path, *, replace: bool = False) -> Path:
    """Write the base of ``st`` (its delta must be empty) to directory ``path`` (created). A directory that holds
    an index already is refused, unless ``replace``: the new index is then written beside it and moved in file
    by file, ``meta.json`` last (the old one removed first), so that the directory never reads as a mix of the
    two, and processes that mapped the old files keep reading them."""
    d = Path(path)
    if (d / "meta.json").exists() and not replace:
        raise IndexFormatError(f"{d}: already holds an index; choose another directory, or replace it")
    d.mkdir(parents=True, exist_ok=True)
    if not replace:
        return _write(st, config, d)
    staging = Path(tempfile.mkdtemp(prefix=f".{d.name}-", dir=d.parent))
    try:
        _write(st, config, staging)
        old = _arrays_of(d)
        (d / "meta.json").unlink(missing_ok=True)
        new = [f.name for f in staging.iterdir() if f.name != "meta.json"]
        for name in new:
            os.replace(staging / name, d / name)
        for name in old - set(new):
            (d / name).unlink(missing_ok=True)
        os.replace(staging / "meta.json", d / "meta.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return d


def _arrays_of(d: Path) -> set[str]:
    """The array files of the index in ``d`` (none when it holds none, or one this version cannot read)."""
    try:
        return {f"{name}.npy" for name in json.loads((d / "meta.json").read_text())["arrays"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _write(st: State, config: IndexConfig, d: Path) -> Path:
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
    if not isinstance(meta, dict) or "format" not in meta:  # another meta.json: a data set's, say
        raise IndexFormatError(f"{d}: not an index directory (its meta.json is not an index's)")
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

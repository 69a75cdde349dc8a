"""How an index is laid out: the H3 levels of its hierarchy, the leaf capacity, and when the live delta is merged."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from dispatcher.errors import IndexFormatError, InvalidIndexSettings
from dispatcher.geo.area import MAX_VERTICES

__all__ = ["IndexConfig"]


@dataclass(frozen=True)
class IndexConfig:
    """How the index is laid out. ``levels`` are the H3 resolutions of the node hierarchy, coarsest first;
    cameras are sorted by their cell at the last one."""

    levels: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    #: A node holding more cameras than this is split into its cells at the next level.
    leaf_capacity: int = 32
    max_vertices: int = MAX_VERTICES
    #: Merge the delta in the background once it holds this many cameras (and this fraction of the base).
    merge_min_delta: int = 50_000
    merge_fraction: float = 0.01

    def __post_init__(self) -> None:
        lv = tuple(int(r) for r in self.levels)
        if not lv or any(not 0 <= r <= 15 for r in lv) or any(b <= a for a, b in zip(lv, lv[1:])):
            raise InvalidIndexSettings(f"levels must be strictly increasing H3 resolutions 0..15, got {self.levels}")
        object.__setattr__(self, "levels", lv)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexConfig:
        """The config saved in an index's meta.json; unknown keys raise (a misspelt setting is an error)."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise IndexFormatError(f"unknown index setting(s) {sorted(unknown)}")
        return cls(levels=tuple(d.get("levels", cls.levels)),
                   leaf_capacity=int(d.get("leaf_capacity", cls.leaf_capacity)),
                   max_vertices=int(d.get("max_vertices", cls.max_vertices)),
                   merge_min_delta=int(d.get("merge_min_delta", cls.merge_min_delta)),
                   merge_fraction=float(d.get("merge_fraction", cls.merge_fraction)))

    @property
    def finest_res(self) -> int:
        return self.levels[-1]

"""Where a public post is, and which posts lie in a jurisdiction, in H3 cells.

A post is placed at the H3 cell of its camera at :data:`POST_RES` (8: about 0.74 km², edges ~460 m), or at a
coarser ancestor the resident picks (down to :data:`COARSEST_POST_RES`); the camera's point is never stored. A
post is inside a jurisdiction when its cell's centre is, H3's own containment rule: its cell is one of
``polygon_to_cells(jurisdiction, res)`` (h3-py). The store keeps posts ordered by cell per resolution, and the
jurisdiction's cells, compacted, are cut into ranges of that order (a cell's descendants at a finer resolution
are one range of indexes), so a query reads the posts of those ranges and nothing else.
"""

from __future__ import annotations

import functools

import h3.api.basic_int as h3i
import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from dispatcher.errors import InvalidResolution

__all__ = ["COARSEST_POST_RES", "POST_RES", "POST_RESOLUTIONS", "in_jurisdiction", "jurisdiction_ranges", "post_cell"]

POST_RES = 8
COARSEST_POST_RES = 4
POST_RESOLUTIONS = tuple(range(COARSEST_POST_RES, POST_RES + 1))


def check_post_res(res: object) -> int:
    if type(res) is not int or not COARSEST_POST_RES <= res <= POST_RES:
        raise InvalidResolution(f"a post's H3 resolution must be an integer {COARSEST_POST_RES}..{POST_RES} "
                                f"(coarser is vaguer), got {res!r}")
    return res


def post_cell(lng: float, lat: float, res: int = POST_RES) -> int:
    """The H3 cell at ``res`` (:data:`COARSEST_POST_RES`..:data:`POST_RES`) holding the point: the ancestor of
    its res-8 cell. One point: h3-py's scalar call (microseconds), not our array kernels (a parallel launch)."""
    res = check_post_res(res)
    return int(h3i.cell_to_parent(h3i.latlng_to_cell(lat, lng, POST_RES), res))


def jurisdiction_ranges(jurisdiction: BaseGeometry, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive ``(lo, hi)`` ranges of res-``res`` cell indexes, ascending and disjoint, whose valid cells are
    exactly the jurisdiction's cells at ``res`` (compacted first: a range per compacted cell). Cached per
    (geometry, resolution)."""
    return _ranges(shapely.to_wkb(jurisdiction), check_post_res(res))


@functools.lru_cache(maxsize=256)
def _ranges(wkb: bytes, res: int) -> tuple[np.ndarray, np.ndarray]:
    geom = shapely.from_wkb(wkb)
    cells = h3i.compact_cells(h3i.geo_to_cells(geom, res))
    if not cells:
        empty = np.zeros(0, np.uint64)
        return empty, empty
    # a cell's first and last child at ``res`` (positions 0 and n - 1, digits all 0 and all 6) are the lowest and
    # highest of its descendants' indexes; compacted cells mix resolutions, so their ranges are sorted after
    ranges = sorted((h3i.child_pos_to_cell(c, res, 0), h3i.child_pos_to_cell(c, res, h3i.cell_to_children_size(c, res)
                                                                            - 1)) for c in cells)
    lo = np.asarray([r[0] for r in ranges], dtype=np.uint64)
    hi = np.asarray([r[1] for r in ranges], dtype=np.uint64)
    lo.setflags(write=False)
    hi.setflags(write=False)
    return lo, hi


def in_jurisdiction(cell: int, res: int, jurisdiction: BaseGeometry) -> bool:
    """Whether the res-``res`` cell is one of the jurisdiction's (its centre inside), by its ranges."""
    lo, hi = jurisdiction_ranges(jurisdiction, res)
    k = int(np.searchsorted(lo, np.uint64(cell), side="right")) - 1
    return k >= 0 and cell <= int(hi[k])

"""Bit-exact H3 (v4) cell arithmetic in Numba: point to cell, hierarchy, centres, boundaries and grid disks.

The algorithm is the published H3 one, step by step as the reference C library (4.x, the version h3-py wraps)
does it, so every floating-point operation happens in the same order on the same values and the results are
bit-identical:

1. degrees to radians (``deg * pi/180``), then a unit vector ``(cos lng cos lat, sin lng cos lat, sin lat)``;
2. the icosahedron face whose centre is nearest (smallest squared chord, first face wins ties);
3. a gnomonic projection on that face: ``r = tan(acos(1 - d2/2))`` scaled to the resolution
   (``* phi^2 * sqrt7^res``), the angle measured from the face's i axis through the face centre's
   north/east tangent basis, turned by ``asin(sqrt(3/28))`` on Class III (odd) resolutions;
4. the quantisation of that 2-D point to the nearest hexagon centre, giving IJK+ coordinates;
5. climbing to resolution 0 with the aperture-7 parent map (counter-clockwise on Class III, clockwise on
   Class II), one base-7 digit per level, then the face-IJK -> base cell lookup and the base cell's
   60-degree rotations (pentagons skip their deleted k-axis sub-sequence).

Constant data: the 20 face centres (unit vectors) and the azimuths of the faces' i axes are the published
H3 values; they cannot be recovered bit-exactly through h3-py's public API (which only returns rounded
degrees), and bit-exactness depends on every one of their bits. Everything else is *derived at import* from
h3-py itself (about 6,000 calls): which base cell sits at each of the 20 x 19 face-IJK positions
(by projecting h3-py's base-cell centres onto each face), the rotation into each base cell's frame (by
probing the digits h3-py assigns to points around it), base-cell homes, pentagon offsets, base-cell
neighbours (from h3-py's directed edges) and the face adjacency. The digit tables of neighbour traversal are
derived from IJK arithmetic. All of these tables live in :mod:`kernels.h3tables`.

Point to cell takes a faster road than step 3 where it provably ends in the same cell: see
:func:`kernels.h3faces._vec3_to_face_ij_fast`.

This module is the kernels' public surface: the per-element kernels, re-exported from the modules that hold them by
what they work on, and their array forms, each generated from its per-element kernel by the one parallel driver of
:mod:`kernels.h3driver`.

- :mod:`kernels.h3index`: the index's bits and digits; validity, inspection, the hierarchy, neighbours, grid disks;
- :mod:`kernels.h3ijk`: IJK+ lattice coordinates, between resolutions and to and from the hex plane;
- :mod:`kernels.h3faces`: the icosahedron's faces, the gnomonic projections, face-IJK <-> cell index;
- :mod:`kernels.h3cells`: point to cell, cell centres and boundaries;
- :mod:`kernels.h3tables`: the constant tables.

All kernels are pure (array in, array out) and compile with ``cache=True``. H3 indices travel through the
kernels as int64 bit patterns (valid cells never use the top bit) and come out as uint64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.h3cells import cell_to_boundary, cell_to_latlng, invalid_latlng, latlng_to_cell
from kernels.h3driver import elementwise
from kernels.h3index import (
    cell_to_children_range,
    cell_to_parent,
    get_base_cell_number,
    get_resolution,
    grid_disk,
    is_pentagon,
    is_valid_cell,
)
from kernels.h3tables import MAX_BOUNDARY_VERTS, MAX_RES, NUM_BASE_CELLS

__all__ = [
    "MAX_BOUNDARY_VERTS",
    "MAX_RES",
    "NUM_BASE_CELLS",
    "cell_to_boundary",
    "cell_to_boundary_array",
    "cell_to_children_range",
    "cell_to_children_range_array",
    "cell_to_latlng",
    "cell_to_latlng_array",
    "cell_to_parent",
    "cell_to_parent_array",
    "get_base_cell_number",
    "get_base_cell_number_array",
    "get_resolution",
    "get_resolution_array",
    "grid_disk",
    "invalid_latlng",
    "invalid_latlng_array",
    "is_pentagon",
    "is_pentagon_array",
    "is_valid_cell",
    "is_valid_cell_array",
    "latlng_to_cell",
    "latlng_to_cell_array",
]

#: ``latlng_to_cell_array(lat, lng, res)``: the cell of every point (degrees) at ``res``.
latlng_to_cell_array = elementwise(latlng_to_cell, np.uint64, arrays=2)
#: ``invalid_latlng_array(lat, lng)``: True where a point is NaN, infinite or outside its range.
invalid_latlng_array = elementwise(invalid_latlng, np.bool_, arrays=2)
is_valid_cell_array = elementwise(is_valid_cell, np.bool_)
get_resolution_array = elementwise(get_resolution, np.int8)
get_base_cell_number_array = elementwise(get_base_cell_number, np.int8)
is_pentagon_array = elementwise(is_pentagon, np.bool_)
#: ``cell_to_parent_array(cells, res)``: the ancestor of every cell at ``res``.
cell_to_parent_array = elementwise(cell_to_parent, np.uint64)
#: ``cell_to_children_range_array(cells, child_res)``: ``(lo, hi)``, the range of every cell's descendants.
cell_to_children_range_array = elementwise(cell_to_children_range, (np.uint64, np.uint64))
#: ``cell_to_latlng_array(cells)``: ``(lat, lng)``, every cell's centre in degrees.
cell_to_latlng_array = elementwise(cell_to_latlng, (np.float64, np.float64))
_boundary_counts = elementwise(cell_to_boundary, np.int8, arrays=2, name="cell_to_boundary_counts")


@njit(cache=True)
def cell_to_boundary_array(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boundaries of many cells: ``(verts, counts)``, ``verts[n, :counts[n]]`` the ``(lat, lng)`` rows."""
    verts = np.full((cells.shape[0], MAX_BOUNDARY_VERTS, 2), np.nan)
    return verts, _boundary_counts(cells, verts)

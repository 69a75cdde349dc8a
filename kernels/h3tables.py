"""Constant tables of the H3 kernels: the published face geometry, and everything else derived at import from
h3-py (see :mod:`kernels.h3core` for how each table is found). Plain numpy, run once per process (~0.2 s);
the kernels read these arrays as compile-time constants.
"""

from __future__ import annotations

import math

import h3.api.basic_int as _h3
import numpy as np

# ------------------------------------------------------------------------------ published constants

_M_PI_180 = 0.0174532925199432957692369076848861271111
_M_180_PI = 57.29577951308232087679815481410517033240547
_EPSILON = 0.0000000000000001
_M_2PI = 6.28318530717958647692528676655900576839433
_M_SQRT3_2 = 0.8660254037844386467637231707529361834714
_M_RSIN60 = 1.1547005383792515290182975610039149112953
_M_ONETHIRD = 0.333333333333333333333333333333333333333
_M_AP7_ROT_RADS = 0.333473172251832115336090755351601070065900389
_RES0_U_GNOMONIC = 0.38196601125010500003
_INV_RES0_U_GNOMONIC = 2.61803398874989588842
_M_SQRT7 = 2.6457513110645905905016157536392604257102
_M_RSQRT7 = 0.37796447300922722721451653623418006081576
_FLT_EPSILON = 1.1920928955078125e-07

#: Icosahedron face centres on the unit sphere (x towards 0N 0E, y towards 0N 90E, z towards the north pole).
_FACE_CENTER = np.array([
    (0.2199307791404606, 0.6583691780274996, 0.7198475378926182),
    (-0.2139234834501421, 0.1478171829550703, 0.9656017935214205),
    (0.1092625278784797, -0.4811951572873210, 0.8697775121287253),
    (0.7428567301586791, -0.3593941678278028, 0.5648005936517033),
    (0.8112534709140969, 0.3448953237639384, 0.4721387736413930),
    (-0.1055498149613921, 0.9794457296411413, 0.1718874610009365),
    (-0.8075407579970092, 0.1533552485898818, 0.5695261994882688),
    (-0.2846148069787907, -0.8644080972654206, 0.4144792552473539),
    (0.7405621473854482, -0.6673299564565524, -0.0789837646326737),
    (0.8512303986474293, 0.4722343788582681, -0.2289137388687808),
    (-0.7405621473854481, 0.6673299564565524, 0.0789837646326737),
    (-0.8512303986474292, -0.4722343788582682, 0.2289137388687808),
    (0.1055498149613919, -0.9794457296411413, -0.1718874610009365),
    (0.8075407579970092, -0.1533552485898819, -0.5695261994882688),
    (0.2846148069787908, 0.8644080972654204, -0.4144792552473539),
    (-0.7428567301586791, 0.3593941678278027, -0.5648005936517033),
    (-0.8112534709140971, -0.3448953237639382, -0.4721387736413930),
    (-0.2199307791404607, -0.6583691780274996, -0.7198475378926182),
    (0.2139234834501420, -0.1478171829550704, -0.9656017935214205),
    (-0.1092625278784796, 0.4811951572873210, -0.8697775121287253),
], dtype=np.float64)

#: Azimuth (radians, clockwise from north) from each face centre to the face's i-axis vertex.
_FACE_AXIS_AZ = np.array([
    5.619958268523939882, 5.760339081714187279, 0.780213654393430055, 0.430469363979999913,
    6.130269123335111400, 2.692877706530642877, 2.982963003477243874, 3.532912002790141181,
    3.494305004259568154, 3.003214169499538391, 5.930472956509811562, 0.138378484090254847,
    0.448714947059150361, 0.158629650112549365, 5.891865957979238535, 2.711123289609793325,
    3.294508837434268316, 3.804819692245439833, 3.664438879055192436, 2.361378999196363184,
], dtype=np.float64)

MAX_RES = 15
NUM_BASE_CELLS = 122
#: Most vertices a cell boundary can have (a Class III pentagon: 5 corners + 5 edge crossings).
MAX_BOUNDARY_VERTS = 10

_NUM_FACES = 20
_INVALID_BASE_CELL = 127
_H3_CELL_INIT = (1 << 59) | ((1 << 45) - 1)  # cell mode, resolution 0, base cell 0, every digit 7
_DIGITS_MASK = (1 << 45) - 1
_DIGIT_LOW_BITS = _DIGITS_MASK // 7  # the lowest bit of each of the 15 digits
#: Directions as IJK+ unit vectors, indexed by digit: the digit's bits are (i, j, k).
_UNIT = np.array([(d >> 2 & 1, d >> 1 & 1, d & 1) for d in range(7)], dtype=np.int64)
#: Digit of an IJ offset ``(di, dj)`` in -1..1, at ``[di + 1, dj + 1]`` (7: not a unit offset).
_IJ_DIGIT = np.full((3, 3), 7, dtype=np.int64)
for _d in range(7):
    _IJ_DIGIT[_UNIT[_d, 0] - _UNIT[_d, 2] + 1, _UNIT[_d, 1] - _UNIT[_d, 2] + 1] = _d
del _d
#: Face quadrants (directions across a face edge) as used by the face-neighbour tables.
_IJ, _KI, _JK = 1, 2, 3
#: Largest i+j+k on a face, and the IJK length of one face-neighbour translation, per Class II resolution.
_MAX_DIM = np.array([2 * 7 ** (r // 2) if r % 2 == 0 else -1 for r in range(17)], dtype=np.int64)
_UNIT_SCALE = np.array([7 ** (r // 2) if r % 2 == 0 else -1 for r in range(17)], dtype=np.int64)
#: Hexagon / pentagon vertices on the aperture-3-3r substrate, Class II and Class III (ccw from the i axis).
_HEX_VERTS_CII = np.array([(2, 1, 0), (1, 2, 0), (0, 2, 1), (0, 1, 2), (1, 0, 2), (2, 0, 1)], dtype=np.int64)
_HEX_VERTS_CIII = np.array([(5, 4, 0), (1, 5, 0), (0, 5, 4), (0, 1, 5), (4, 0, 5), (5, 0, 1)], dtype=np.int64)
#: Ring walk directions of the neighbour traversal (j, jk, k, ik, i, ij).
_DIRECTIONS = np.array([2, 3, 1, 5, 4, 6], dtype=np.int64)
#: Odd multiplier (fits int64) scattering cell ids over the grid-disk hash set.
_HASH_MUL = 0x7F4A7C159E3779B9
#: IJ coordinates stay far below 2**40 in magnitude (about 1.2e7 at res 15).
_DIV_BIAS = 1 << 40
_DIV_SHIFT = 7 * _DIV_BIAS + 3


# ------------------------------------------------------------------- derived tables (import time)


def _normalized(v: np.ndarray) -> np.ndarray:
    """IJK+ normal form of rows of ``v``: the same cell with the smallest component 0."""
    return v - v.min(axis=-1, keepdims=True)


#: IJK linear maps (rows: the images of the i, j, k unit vectors); results are normalised after use.
_DOWN7 = np.array([(3, 0, 1), (1, 3, 0), (0, 1, 3)])  # one finer Class III (counter-clockwise) level
_DOWN7R = np.array([(3, 1, 0), (0, 3, 1), (1, 0, 3)])  # one finer Class II (clockwise) level
_DOWN3 = np.array([(2, 0, 1), (1, 2, 0), (0, 1, 2)])  # aperture 3, counter-clockwise (vertex substrate)
_DOWN3R = np.array([(2, 1, 0), (0, 2, 1), (1, 0, 2)])  # aperture 3, clockwise
_ROT60CCW = np.array([(1, 1, 0), (0, 1, 1), (1, 0, 1)])
_ROT60CW = np.array([(1, 0, 1), (1, 1, 0), (0, 1, 1)])


def _digit_of(v: np.ndarray) -> int:
    """Digit of a normalised IJK+ unit vector."""
    i, j, k = (int(c) for c in v)
    return 4 * i + 2 * j + k


def _face_bases() -> tuple[np.ndarray, np.ndarray]:
    """North and east unit tangents at each face centre, computed with the reference's exact operations."""
    north = np.empty((_NUM_FACES, 3))
    east = np.empty((_NUM_FACES, 3))
    for f, (px, py, pz) in enumerate(_FACE_CENTER.tolist()):
        d = 0.0 * px + 0.0 * py + 1.0 * pz  # dot(north pole, p)
        nx, ny, nz = 0.0 + (-d) * px, 0.0 + (-d) * py, 1.0 + (-d) * pz
        s = 1.0 / math.sqrt(nx * nx + ny * ny + nz * nz)
        nx, ny, nz = nx * s, ny * s, nz * s
        north[f] = nx, ny, nz
        east[f] = ny * pz - nz * py, nz * px - nx * pz, nx * py - ny * px
    return north, east


_FACE_NORTH, _FACE_EAST = _face_bases()


def _project(p: np.ndarray, face: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic hex-plane coordinates of unit vectors ``p`` on the given faces (derivation only, not exact)."""
    fc = _FACE_CENTER[face]
    d = np.clip(np.einsum("ij,ij->i", p, fc), -1.0, 1.0)
    proj = p - d[:, None] * fc
    az = np.arctan2(np.einsum("ij,ij->i", proj, _FACE_EAST[face]), np.einsum("ij,ij->i", proj, _FACE_NORTH[face]))
    theta = _FACE_AXIS_AZ[face] - az - (_M_AP7_ROT_RADS if res % 2 else 0.0)
    r = np.tan(np.arccos(d)) * _INV_RES0_U_GNOMONIC * _M_SQRT7**res
    return r * np.cos(theta), r * np.sin(theta)


def _unproject_deg(x: np.ndarray, y: np.ndarray, face: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_project`, as (lat, lng) degrees (derivation only, not exact)."""
    r = np.arctan(np.hypot(x, y) / _M_SQRT7**res * _RES0_U_GNOMONIC)
    az = _FACE_AXIS_AZ[face] - np.arctan2(y, x) - (_M_AP7_ROT_RADS if res % 2 else 0.0)
    direction = np.cos(az)[:, None] * _FACE_NORTH[face] + np.sin(az)[:, None] * _FACE_EAST[face]
    p = np.cos(r)[:, None] * _FACE_CENTER[face] + np.sin(r)[:, None] * direction
    return np.degrees(np.arcsin(np.clip(p[:, 2], -1, 1))), np.degrees(np.arctan2(p[:, 1], p[:, 0]))


def _hex2d(ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i = ijk[..., 0] - ijk[..., 2]
    j = ijk[..., 1] - ijk[..., 2]
    return i - 0.5 * j, j * _M_SQRT3_2


def _nearest_ijk(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest lattice IJK+ (normalised) to hex-plane points, and the distance to it."""
    jf = y / _M_SQRT3_2
    i_f = x + 0.5 * jf
    best_d = np.full(x.shape, np.inf)
    best = np.zeros(x.shape + (3,), dtype=np.int64)
    for di in (0, 1):
        for dj in (0, 1):
            c = np.stack([np.floor(i_f) + di, np.floor(jf) + dj, np.zeros_like(x)], axis=-1).astype(np.int64)
            cx, cy = _hex2d(c)
            d = np.hypot(cx - x, cy - y)
            take = d < best_d
            best_d = np.where(take, d, best_d)
            best[take] = c[take]
    return _normalized(best), best_d


def _rotate_digit(d: int, n: int) -> int:
    """Digit ``d`` turned ``n`` times 60 degrees counter-clockwise."""
    for _ in range(n):
        d = _ROT_CCW[d]
    return int(d)


def _pentagon_rotate(digits: list[int], n: int, cw_offset: bool) -> list[int]:
    """What the reference does to the digits of a point on a pentagon base cell rotated ``n`` times."""
    out = list(digits)

    def lead() -> int:
        return next((d for d in out if d), 0)

    if lead() == 1:
        table = _ROT_CW if cw_offset else _ROT_CCW
        out = [int(table[d]) for d in out]
    for _ in range(n):
        found = False
        for r in range(len(out)):
            out[r] = int(_ROT_CCW[out[r]])
            if not found and out[r]:
                found = True
                if lead() == 1:
                    out = [int(_ROT_CCW[d]) for d in out]
    return out


def _derive_digit_rotations() -> tuple[np.ndarray, np.ndarray]:
    ccw = np.zeros(7, dtype=np.int64)
    for d in range(7):
        ccw[d] = _digit_of(_normalized(_UNIT[d] @ _ROT60CCW))
    cw = np.zeros(7, dtype=np.int64)
    cw[ccw] = np.arange(7)
    return ccw, cw


_ROT_CCW, _ROT_CW = _derive_digit_rotations()
#: ``_ROT_CCW_N[n, d]``: digit ``d`` turned ``n`` times counter-clockwise.
_ROT_CCW_N = np.array([[_rotate_digit(d, n) for d in range(7)] for n in range(6)], dtype=np.int64)


def _derive_neighbour_digits(down: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Digit and carry of moving one step in ``dir`` from child digit ``old`` (``down``: parent->child map).

    The child at ``down(P) + u[old]`` stepped by ``u[dir]`` is ``down(P + u[carry]) + u[new]``.
    """
    down_units = [_normalized(_UNIT[a] @ down) for a in range(7)]
    new = np.zeros((7, 7), dtype=np.int64)
    carry = np.zeros((7, 7), dtype=np.int64)
    for old in range(7):
        for step in range(7):
            target = _normalized(_UNIT[old] + _UNIT[step])
            (found,) = [(a, d) for a in range(7) for d in range(7)
                        if (_normalized(down_units[a] + _UNIT[d]) == target).all()]
            carry[old, step], new[old, step] = found
    return new, carry


#: Neighbour traversal digit tables for a Class III digit level (parent->child is the ccw aperture 7) and a
#: Class II level (cw aperture 7).
_NEW_DIGIT_CIII, _NEW_CARRY_CIII = _derive_neighbour_digits(_DOWN7)
_NEW_DIGIT_CII, _NEW_CARRY_CII = _derive_neighbour_digits(_DOWN7R)


def _derive_base_cell_tables() -> dict[str, np.ndarray]:
    """Every integer table of the base cells and faces, from h3-py's answers (see the module docstring)."""
    bases = sorted(_h3.get_res0_cells(), key=_h3.get_base_cell_number)
    is_pent = np.array([_h3.is_pentagon(b) for b in bases], dtype=np.bool_)
    ll = np.radians(np.array([_h3.cell_to_latlng(b) for b in bases]))
    centres = np.stack([np.cos(ll[:, 1]) * np.cos(ll[:, 0]), np.sin(ll[:, 1]) * np.cos(ll[:, 0]),
                        np.sin(ll[:, 0])], axis=1)

    # 1. Which base cell sits at each face-IJK position (components 0..2): project every base-cell centre
    #    onto every face it is in front of and take the nearest lattice point.
    fijk_bc = np.full((_NUM_FACES, 3, 3, 3), -1, dtype=np.int64)
    ff, bb = np.meshgrid(np.arange(_NUM_FACES), np.arange(NUM_BASE_CELLS), indexing="ij")
    ff, bb = ff.ravel(), bb.ravel()
    front = np.einsum("ij,ij->i", centres[bb], _FACE_CENTER[ff]) > 0.2
    ff, bb = ff[front], bb[front]
    ijk, dist = _nearest_ijk(*_project(centres[bb], ff, 0))
    keep = (ijk.max(axis=1) <= 2) & (dist < 0.45)
    for f, b, (i, j, k) in zip(ff[keep], bb[keep], ijk[keep]):
        if fijk_bc[f, i, j, k] != -1:
            raise RuntimeError(f"two base cells at face {f} ijk {(i, j, k)}")
        fijk_bc[f, i, j, k] = b
    slots = np.argwhere(fijk_bc >= 0)
    if len(slots) != _NUM_FACES * 19:
        raise RuntimeError(f"found {len(slots)} face-IJK base cell positions, expected 380")

    # 2. Rotation into each base cell's frame: step from the base cell's centre towards each of its six
    #    res-1 children in the face's frame and read the digit h3-py gives there. Hexagons: one rotation
    #    maps all six. Pentagons: the skipped k sub-sequence needs res-2 probes on the face itself.
    fijk_rot = np.zeros((_NUM_FACES, 3, 3, 3), dtype=np.int64)
    slot_face, slot_bc = slots[:, 0], fijk_bc[tuple(slots.T)]
    cx, cy = _project(centres[slot_bc], slot_face, 1)
    ux, uy = _hex2d(_UNIT[1:])
    px, py = (cx[:, None] + ux[None, :]).ravel(), (cy[:, None] + uy[None, :]).ravel()
    lat, lng = _unproject_deg(px, py, np.repeat(slot_face, 6), 1)
    probes = np.array([_h3.latlng_to_cell(a, b, 1) for a, b in zip(lat.tolist(), lng.tolist())]).reshape(-1, 6)
    cw_offset = np.zeros((NUM_BASE_CELLS, _NUM_FACES), dtype=np.bool_)
    for s, (f, i, j, k) in enumerate(slots):
        b = slot_bc[s]
        if is_pent[b]:
            cw_offset[b, f] = (i, j, k) == (0, 2, 0)  # the pentagon sits at this face's j-axis vertex
            continue
        seen = [(d, _h3.get_index_digit(int(c), 1)) for d, c in zip(range(1, 7), probes[s])
                if _h3.get_base_cell_number(int(c)) == b]
        (rot,) = [n for n in range(6) if all(_ROT_CCW_N[n, d] == got for d, got in seen)]
        fijk_rot[f, i, j, k] = rot
    for s in np.flatnonzero(is_pent[slot_bc]):
        f, i, j, k = slots[s]
        fijk_rot[f, i, j, k] = _pentagon_rotation(int(f), np.array([i, j, k]), int(slot_bc[s]),
                                                  bool(cw_offset[slot_bc[s], f]))

    # 3. Home face and IJK of each base cell: where it needs no rotation (pentagons: at an i-axis vertex),
    #    the position nearest that face's centre.
    home_face = np.zeros(NUM_BASE_CELLS, dtype=np.int64)
    home_ijk = np.zeros((NUM_BASE_CELLS, 3), dtype=np.int64)
    slot_rot = fijk_rot[tuple(slots.T)]
    at_i_vertex = (slots[:, 1] == 2) & (slots[:, 2] == 0) & (slots[:, 3] == 0)
    usable = (slot_rot == 0) & (~is_pent[slot_bc] | at_i_vertex)
    # Per base cell, the usable slot with the smallest i+j+k, ties broken by (face, i, j, k): ``slots`` is in
    # that order already (argwhere), so a stable sort on (base cell, i+j+k) leaves each cell's choice first.
    order = np.flatnonzero(usable)
    order = order[np.lexsort((slots[order, 1:].sum(axis=1), slot_bc[order]))]
    first = order[np.r_[True, slot_bc[order][1:] != slot_bc[order][:-1]]]
    if not np.array_equal(slot_bc[first], np.arange(NUM_BASE_CELLS)):
        raise RuntimeError("a base cell has no home face")
    home_face[:], home_ijk[:] = slots[first, 0], slots[first, 1:]

    # 4. Base-cell neighbours by direction (h3-py's directed edges carry the direction) and the rotation
    #    into the neighbour's frame: for a hexagon, the rotation of the neighbour's position on the home
    #    face; for a pentagon, the turn that maps the reverse direction onto the neighbour's own direction.
    neighbour = np.full((NUM_BASE_CELLS, 7), _INVALID_BASE_CELL, dtype=np.int64)
    neighbour_rot = np.full((NUM_BASE_CELLS, 7), -1, dtype=np.int64)
    neighbour[:, 0] = np.arange(NUM_BASE_CELLS)
    neighbour_rot[:, 0] = 0
    for b, origin in enumerate(bases):
        for cell in _h3.grid_ring(origin, 1):
            d = _h3.cells_to_directed_edge(origin, cell) >> 56 & 7
            nb = _h3.get_base_cell_number(cell)
            neighbour[b, d] = nb
            if is_pent[b]:
                back = _h3.cells_to_directed_edge(cell, origin) >> 56 & 7
                (rot,) = [n for n in range(6) if _ROT_CCW_N[n, 7 - d] == back]
            else:
                i, j, k = _normalized(home_ijk[b] + _UNIT[d])
                rot = fijk_rot[home_face[b], i, j, k]
            neighbour_rot[b, d] = rot

    # 5. Face adjacency: across each edge quadrant lies the face whose centre cell sits at (2,2,0)-like
    #    positions; the translation is where this face's centre cell sits in the neighbour's frame.
    centre_cell = [int(fijk_bc[f, 0, 0, 0]) for f in range(_NUM_FACES)]
    face_of_centre = {b: f for f, b in enumerate(centre_cell)}
    face_nb = np.zeros((_NUM_FACES, 4), dtype=np.int64)
    face_nb_rot = np.zeros((_NUM_FACES, 4), dtype=np.int64)
    face_nb_trans = np.zeros((_NUM_FACES, 4, 3), dtype=np.int64)
    adjacent_dir = np.full((_NUM_FACES, _NUM_FACES), -1, dtype=np.int64)
    for f in range(_NUM_FACES):
        face_nb[f, 0] = f
        adjacent_dir[f, f] = 0
        for quadrant, pos in ((_IJ, (2, 2, 0)), (_KI, (2, 0, 2)), (_JK, (0, 2, 2))):
            g = face_of_centre[int(fijk_bc[(f, *pos)])]
            face_nb[f, quadrant] = g
            face_nb_rot[f, quadrant] = fijk_rot[(f, *pos)]
            face_nb_trans[f, quadrant] = np.argwhere(fijk_bc[g] == centre_cell[f])[0]
            adjacent_dir[f, g] = quadrant

    polar = [b for b in np.flatnonzero(is_pent) if not cw_offset[b].any()]
    return {
        "fijk_bc": fijk_bc, "fijk_rot": fijk_rot, "is_pent": is_pent, "cw_offset": cw_offset,
        "home_face": home_face, "home_ijk": home_ijk, "neighbour": neighbour, "neighbour_rot": neighbour_rot,
        "face_nb": face_nb, "face_nb_rot": face_nb_rot, "face_nb_trans": face_nb_trans,
        "adjacent_dir": adjacent_dir, "is_polar": np.isin(np.arange(NUM_BASE_CELLS), polar),
        "polar_jk_neighbour": np.isin(np.arange(NUM_BASE_CELLS), [int(neighbour[b, 3]) for b in polar]),
    }


def _pentagon_rotation(face: int, ijk: np.ndarray, bc: int, cw_offset: bool) -> int:
    """Rotation of a pentagon base cell seen from ``face``, from res-2 probes on that face."""
    d1, d2 = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
    d1, d2 = d1.ravel(), d2.ravel()
    child = _normalized(_normalized(ijk @ _DOWN7) + _UNIT[d1])
    grandchild = _normalized(_normalized(child @ _DOWN7R) + _UNIT[d2])
    x, y = _hex2d(grandchild)
    lat, lng = _unproject_deg(x, y, np.full(len(x), face), 2)
    ll = np.radians(np.stack([lat, lng], axis=1))
    p = np.stack([np.cos(ll[:, 1]) * np.cos(ll[:, 0]), np.sin(ll[:, 1]) * np.cos(ll[:, 0]), np.sin(ll[:, 0])], 1)
    on_face = np.argmax(p @ _FACE_CENTER.T, axis=1) == face
    seen = []
    for a, b, la, lo in zip(d1[on_face], d2[on_face], lat[on_face], lng[on_face]):
        cell = _h3.latlng_to_cell(float(la), float(lo), 2)
        if _h3.get_base_cell_number(cell) == bc:
            seen.append(([int(a), int(b)], [_h3.get_index_digit(cell, 1), _h3.get_index_digit(cell, 2)]))
    # Five turns about a pentagon skip the k sub-sequence once, i.e. they are a full turn: 0 and 5 are
    # the same rotation there, and the reference tables say 0.
    return min(n for n in range(6) if all(_pentagon_rotate(raw, n, cw_offset) == got for raw, got in seen))


_T = _derive_base_cell_tables()
_FIJK_BC: np.ndarray = _T["fijk_bc"]
_FIJK_ROT: np.ndarray = _T["fijk_rot"]
_BC_IS_PENT: np.ndarray = _T["is_pent"]
_BC_CW_OFFSET: np.ndarray = _T["cw_offset"]
_BC_HOME_FACE: np.ndarray = _T["home_face"]
_BC_HOME_IJK: np.ndarray = _T["home_ijk"]
_BC_NEIGHBOUR: np.ndarray = _T["neighbour"]
_BC_NEIGHBOUR_ROT: np.ndarray = _T["neighbour_rot"]
_BC_IS_POLAR: np.ndarray = _T["is_polar"]
_BC_POLAR_JK_NEIGHBOUR: np.ndarray = _T["polar_jk_neighbour"]
_FACE_NB: np.ndarray = _T["face_nb"]
_FACE_NB_ROT: np.ndarray = _T["face_nb_rot"]
_FACE_NB_TRANS: np.ndarray = _T["face_nb_trans"]
_ADJACENT_FACE_DIR: np.ndarray = _T["adjacent_dir"]
del _T


def _derive_face_candidates(step_deg: float = 1.0) -> np.ndarray:
    """For each ``step_deg`` latitude/longitude bin, the faces that can be nearest anywhere in it.

    A face is left out only when, at the bin's centre ``p0``, its centre's dot product trails the best one by
    more than twice the largest chord from ``p0`` to the bin (with half again as much and 1e-9 to spare):
    moving a point by a chord ``c`` changes each dot product by at most ``c``, so that face is further than
    the leader everywhere in the bin, under any rounding. Rows list candidates in ascending face order
    (so ties resolve as in the full scan), padded with -1.
    """
    nlat, nlng = int(round(180 / step_deg)), int(round(360 / step_deg))
    lat_c = np.radians(-90 + step_deg * (np.arange(nlat) + 0.5))
    lng_c = np.radians(-180 + step_deg * (np.arange(nlng) + 0.5))
    la, lo = np.meshgrid(lat_c, lng_c, indexing="ij")
    la, lo = la.ravel(), lo.ravel()

    def unit(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.stack([np.cos(a) * np.cos(b), np.cos(a) * np.sin(b), np.sin(a)], axis=-1)

    p0 = unit(la, lo)
    h = math.radians(step_deg) / 2
    corners = [unit(np.clip(la + s1 * h, -np.pi / 2, np.pi / 2), lo + s2 * h) for s1 in (-1, 1) for s2 in (-1, 1)]
    chord = np.max([np.linalg.norm(c - p0, axis=1) for c in corners], axis=0) * 1.5 + 1e-9
    dots = p0 @ _FACE_CENTER.T
    keep = dots >= dots.max(axis=1, keepdims=True) - 2 * chord[:, None]
    width = int(keep.sum(axis=1).max())
    # Each row's kept faces in ascending order, then the left-out ones as a sentinel that sorts last: one sort
    # for all 64,800 bins (a loop over them was most of every process's import time).
    faces = np.sort(np.where(keep, np.arange(_NUM_FACES), _NUM_FACES), axis=1)[:, :width]
    return np.where(faces == _NUM_FACES, -1, faces).astype(np.int8).reshape(nlat, nlng, width)


#: Candidate nearest faces per 1-degree latitude/longitude bin (see :func:`_derive_face_candidates`).
_FACE_CANDIDATES = _derive_face_candidates()

"""Kernels of the camera index: building the adaptive H3 hierarchy and resolving an area and a time window.

Layout (built by :mod:`dispatcher.index.camera_index`):

- points are sorted by their H3 cell at the finest index level; per point ``xy`` (float64 ``[lng, lat]``),
  ``installed`` and ``removed`` (int32 seconds since 2000-01-01Z, ``removed == NOT_REMOVED`` while installed),
  ``retention`` (uint16 days), ``flags`` (uint8: bit 0 sharing enabled, bit 1 deleted, bit 2 owner opted
  out; a camera is admissible only when its flags are exactly "sharing"), ``owner`` and
  ``camera`` ids (int32 when they fit, else int64);
- nodes are occupied H3 cells. The top level holds the cells at the coarsest resolution; a node with more
  points than the leaf capacity is split into its occupied cells at the next resolution. Node ``i`` is one
  32-byte record of :data:`NODE_DTYPE` (one cache line holds two): the float32 bounding box of its points rounded
  outwards (``x0 y0 x1 y1``), its points ``p0:p1`` and its children ``k0:k1`` (empty for a leaf).

Bounding boxes come from the points themselves, so the fact that H3 children do not nest inside their parents
costs nothing: a node's box covers exactly its descendants, wherever they lie.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.cpython.unsafe.numbers import leading_zeros
from numba.extending import intrinsic

from kernels.geometry import BOX_IN, BOX_MIXED, BOX_OUT, WORK_SIZE, classify_box, covers_point
from kernels.h3core import cell_to_parent, invalid_latlng
from kernels.validation import AREA_VALID, parse_area

SHARING = np.uint8(1)
DELETED = np.uint8(2)
OPTED_OUT = np.uint8(4)  # the camera's owner opted out of every request
NOT_REMOVED = np.int32(2**31 - 1)
US = np.int64(1_000_000)
NODE_DTYPE = np.dtype([("x0", np.float32), ("y0", np.float32), ("x1", np.float32), ("y1", np.float32),
                       ("p0", np.int32), ("p1", np.int32), ("k0", np.int32), ("k1", np.int32)])
DAY_US = np.int64(86_400_000_000)


# ----------------------------------------------------------------------------------------------- build


@njit(cache=True)
def _grow(a: np.ndarray, m: int) -> np.ndarray:
    """``a`` in an array twice as long, its first ``m`` items copied (element by element: a slice assignment
    brings in Numba's broadcasting checks, seconds of compilation for each type)."""
    out = np.zeros(2 * a.shape[0], dtype=a.dtype)
    for k in range(m):
        out[k] = a[k]
    return out


@njit(cache=True)
def _grow_pairs(a: np.ndarray, m: int) -> np.ndarray:
    """:func:`_grow` of an ``(n, 2)`` array."""
    out = np.zeros((2 * a.shape[0], 2), dtype=a.dtype)
    for k in range(m):
        out[k, 0] = a[k, 0]
        out[k, 1] = a[k, 1]
    return out


@njit(cache=True, parallel=True)
def split_levels(cells: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """For each point of ``cells`` (ascending, all at ``levels[-1]``), the first level at which its cell's ancestor
    differs from the previous point's (0 for the first point; ``len(levels)`` when the two cells are the same), in
    one parallel pass. Two cells at one resolution share their ancestor at ``r`` exactly when they agree in every
    bit above the digits finer than ``r`` (mode, resolution, base cell, digits 1..r), and an ancestor that differs
    at one level differs at every finer one, so a point starts a node at level ``d`` exactly when this is <= d;
    the level is read from a table by the highest bit in which the two cells differ."""
    n = cells.shape[0]
    nl = levels.shape[0]
    by_bit = np.empty(65, dtype=np.uint8)  # by_bit[b]: the first level whose ancestors differ in bit b - 1
    by_bit[0] = nl  # no bit differs
    for b in range(64):
        d = 0
        while d < nl and b < 3 * (15 - levels[d]):
            d += 1
        by_bit[b + 1] = d
    out = np.empty(n, dtype=np.uint8)
    for i in prange(n):
        if i == 0:
            out[i] = 0
        else:
            out[i] = by_bit[64 - leading_zeros(cells[i] ^ cells[i - 1])]
    return out


@njit(cache=True, parallel=True)
def _leaf_boxes(xy: np.ndarray, pt: np.ndarray, kids: np.ndarray, box: np.ndarray) -> None:
    """The bounding box of each leaf's points (``box`` float64 ``x0 y0 x1 y1``), the leaves in parallel."""
    for k in prange(box.shape[0]):
        if kids[k, 1] > kids[k, 0]:
            continue
        x0 = np.inf
        y0 = np.inf
        x1 = -np.inf
        y1 = -np.inf
        for q in range(pt[k, 0], pt[k, 1]):
            x0 = min(x0, xy[q, 0])
            y0 = min(y0, xy[q, 1])
            x1 = max(x1, xy[q, 0])
            y1 = max(y1, xy[q, 1])
        box[k, 0] = x0
        box[k, 1] = y0
        box[k, 2] = x1
        box[k, 3] = y1


@njit(cache=True, parallel=True)
def _inner_boxes(kids: np.ndarray, box: np.ndarray, lo: int, hi: int) -> None:
    """The boxes of the inner nodes among ``lo:hi`` (one level, whose children's boxes are done), in parallel."""
    for k in prange(lo, hi):
        c0 = kids[k, 0]
        if kids[k, 1] <= c0:
            continue
        for j in range(4):
            box[k, j] = box[c0, j]
        for c in range(c0 + 1, kids[k, 1]):
            box[k, 0] = min(box[k, 0], box[c, 0])
            box[k, 1] = min(box[k, 1], box[c, 1])
            box[k, 2] = max(box[k, 2], box[c, 2])
            box[k, 3] = max(box[k, 3], box[c, 3])


@njit(cache=True)
def build_tree(cells: np.ndarray, xy: np.ndarray, levels: np.ndarray, capacity: int):  # type: ignore[no-untyped-def]
    """The adaptive hierarchy over points sorted by their cell at ``levels[-1]``.

    Returns ``(node_cell, box, pt, kids, n_top)``; ``box`` is float64 here (the caller rounds it
    outwards to float32). Nodes are numbered level by level, so every node's children are contiguous. Where
    nodes split comes from :func:`split_levels` (a parallel pass; the walk below then reads one byte a point and
    computes a parent only per node), and the boxes are filled in parallel, leaves first, then each level's inner
    nodes from the deepest up.
    """
    n = cells.shape[0]
    split = split_levels(cells, levels)
    size = max(16, n // 8)
    node_cell = np.empty(size, dtype=np.uint64)
    pt = np.zeros((size, 2), dtype=np.int64)
    kids = np.zeros((size, 2), dtype=np.int64)
    depth = np.zeros(size, dtype=np.int64)
    level_end = np.zeros(levels.shape[0] + 1, dtype=np.int64)  # nodes of level d: level_end[d]:level_end[d + 1]
    m = 0
    head = -1  # -1: the virtual root, whose children are the top level
    while head < m:
        if head < 0:
            lo, hi, li = 0, n, -1
        else:
            lo, hi, li = pt[head, 0], pt[head, 1], depth[head]
            if hi - lo <= capacity or li + 1 == levels.shape[0]:
                head += 1
                continue
            kids[head, 0] = m
        d = li + 1
        res = levels[d]
        i = lo
        while i < hi:
            j = i + 1
            while j < hi and split[j] > d:
                j += 1
            if m == node_cell.shape[0]:
                node_cell = _grow(node_cell, m)
                pt = _grow_pairs(pt, m)
                kids = _grow_pairs(kids, m)
                depth = _grow(depth, m)
            node_cell[m] = cell_to_parent(cells[i], res)
            pt[m, 0] = i
            pt[m, 1] = j
            depth[m] = d
            m += 1
            level_end[d + 1] = m
            i = j
        if head >= 0:
            kids[head, 1] = m
        head += 1
    n_top = 0
    while n_top < m and depth[n_top] == 0:
        n_top += 1
    pt = pt[:m].copy()
    kids = kids[:m].copy()
    box = np.empty((m, 4), dtype=np.float64)
    _leaf_boxes(xy, pt, kids, box)
    for d in range(levels.shape[0] - 1, -1, -1):  # children have larger numbers: fill bottom-up, a level at once
        if level_end[d + 1] > level_end[d]:  # levels below the deepest have no nodes (both ends 0 past it)
            _inner_boxes(kids, box, level_end[d], level_end[d + 1])
    return node_cell[:m].copy(), box, pt, kids, n_top


@njit(cache=True, parallel=True)
def pack_cell_rows(cells: np.ndarray, res: int, row_bits: int) -> None:
    """Replace each point's cell (at ``res``) by one uint64 holding its base-cell and digit bits above its row
    number, so that sorting these sorts points by cell, stably (in place: the cells are not needed again)."""
    shift = np.uint64(3 * (15 - res))
    key_mask = (np.uint64(1) << np.uint64(7 + 3 * res)) - np.uint64(1)
    for i in prange(cells.shape[0]):
        cells[i] = (((cells[i] >> shift) & key_mask) << np.uint64(row_bits)) | np.uint64(i)


@njit(cache=True, parallel=True)
def unpack_cells(packed: np.ndarray, row_bits: int, res: int, high: np.uint64) -> np.ndarray:
    """Turn sorted :func:`pack_cell_rows` keys back into cells, in place, and return where each row went
    (``inverse[row] = position``), in one pass: a cell at ``res`` is its ``high`` bits (mode and resolution, the
    same for every cell at ``res``), the key's base-cell and digit bits, and the digits below ``res``, which H3
    sets to 7 (all ones). No gather of the cells by row."""
    mask = (np.uint64(1) << np.uint64(row_bits)) - np.uint64(1)
    shift = np.uint64(3 * (15 - res))
    low = (np.uint64(1) << shift) - np.uint64(1)
    inverse = np.empty(packed.shape[0], dtype=np.int64)
    for i in prange(packed.shape[0]):
        key = packed[i]
        inverse[np.int64(key & mask)] = i
        packed[i] = high | ((key >> np.uint64(row_bits)) << shift) | low
    return inverse


@njit(cache=True, inline="always")
def _chunk(t: int, chunks: int, n: int) -> tuple[int, int]:
    """Items ``[lo, hi)`` of chunk ``t`` of ``chunks`` (near-equal, consecutive) over ``n`` items."""
    step = (n + chunks - 1) // chunks
    return min(n, t * step), min(n, (t + 1) * step)


@njit(cache=True, inline="always")
def _chunk_offsets(counts: np.ndarray) -> None:
    """Per-chunk counts of each bucket (``counts[t, b]``) to where chunk ``t`` writes its first value of bucket
    ``b``: buckets in order, and within one the chunks in order, so a scatter by these offsets is stable."""
    total = 0
    for b in range(counts.shape[1]):
        for t in range(counts.shape[0]):
            v = counts[t, b]
            counts[t, b] = total
            total += v


@njit(cache=True, parallel=True)
def node_records(box: np.ndarray, pt: np.ndarray, kids: np.ndarray, out: np.ndarray) -> None:
    """Fill :data:`NODE_DTYPE` records from :func:`build_tree`'s arrays, each float64 box rounded outwards to the
    float32 box that contains it (minima down, maxima up), the nodes in parallel."""
    down = np.float32(-np.inf)
    up = np.float32(np.inf)
    for k in prange(box.shape[0]):
        x0 = np.float32(box[k, 0])
        if np.float64(x0) > box[k, 0]:
            x0 = np.nextafter(x0, down)
        y0 = np.float32(box[k, 1])
        if np.float64(y0) > box[k, 1]:
            y0 = np.nextafter(y0, down)
        x1 = np.float32(box[k, 2])
        if np.float64(x1) < box[k, 2]:
            x1 = np.nextafter(x1, up)
        y1 = np.float32(box[k, 3])
        if np.float64(y1) < box[k, 3]:
            y1 = np.nextafter(y1, up)
        out[k].x0 = x0
        out[k].y0 = y0
        out[k].x1 = x1
        out[k].y1 = y1
        out[k].p0 = pt[k, 0]
        out[k].p1 = pt[k, 1]
        out[k].k0 = kids[k, 0]
        out[k].k1 = kids[k, 1]


@njit(cache=True, parallel=True)
def gather(src: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``src[order]`` for 1-D ``src``, in parallel."""
    out = np.empty(order.shape[0], dtype=src.dtype)
    for i in prange(order.shape[0]):
        out[i] = src[order[i]]
    return out


#: :func:`permute_cameras` moves cameras in buckets of 2**PERMUTE_BITS consecutive positions: what a bucket
#: permutes (about 35 bytes a camera) stays in the second-level cache, and the buckets are few enough for the
#: first pass to write to all of them at once without thrashing it.
PERMUTE_BITS = 14


@njit(cache=True)
def _permute_within(col: np.ndarray, tmp: np.ndarray, slot: np.ndarray, lo: int, hi: int) -> None:
    """Move ``col[lo + k]`` to ``col[lo + slot[lo + k]]`` for every ``k < hi - lo`` (a permutation of the span).
    Element by element: a slice assignment would bring in Numba's broadcasting checks, whose compilation (once
    per column type) was most of the build's compile time."""
    m = hi - lo
    for k in range(m):
        tmp[k] = col[lo + k]
    for k in range(m):
        col[lo + np.int64(slot[lo + k])] = tmp[k]


@njit(cache=True)
def _permute_within_xy(xy: np.ndarray, tmp: np.ndarray, slot: np.ndarray, lo: int, hi: int) -> None:
    """:func:`_permute_within` of the rows of the ``(n, 2)`` coordinates."""
    m = hi - lo
    for k in range(m):
        tmp[k, 0] = xy[lo + k, 0]
        tmp[k, 1] = xy[lo + k, 1]
    for k in range(m):
        d = lo + np.int64(slot[lo + k])
        xy[d, 0] = tmp[k, 0]
        xy[d, 1] = tmp[k, 1]


@njit(cache=True, parallel=True)
def permute_cameras(inverse, chunks, lng, lat, installed, removed, retention, sharing, owner, camera,  # type: ignore[no-untyped-def]
                    xy, o_installed, o_removed, o_retention, o_flags, o_owner, o_camera):
    """Every camera column permuted so that row ``r`` lands at position ``inverse[r]``, in two passes that each
    touch memory in order or within one cache-sized bucket, where a gather by row would miss the cache (and the
    TLB) for every camera, and with no memory but the outputs' and a two-byte slot a camera (fresh memory costs
    its page faults): the first pass (``chunks`` consecutive chunks of rows in parallel, each writing its own part
    of every bucket) writes each row into the outputs among the ``2**PERMUTE_BITS`` positions of its bucket, with
    its place in that bucket; the second puts each bucket in order, in the cache."""
    n = inverse.shape[0]
    size = np.int64(1) << PERMUTE_BITS
    buckets = (n + size - 1) >> PERMUTE_BITS
    counts = np.zeros((chunks, buckets), dtype=np.int64)
    for t in prange(chunks):
        lo, hi = _chunk(t, chunks, n)
        for r in range(lo, hi):
            counts[t, inverse[r] >> PERMUTE_BITS] += 1
    _chunk_offsets(counts)
    slot = np.empty(n, dtype=np.uint16)
    for t in prange(chunks):
        lo, hi = _chunk(t, chunks, n)
        c = counts[t]
        for r in range(lo, hi):
            d = inverse[r]
            b = d >> PERMUTE_BITS
            q = c[b]
            c[b] = q + 1
            xy[q, 0] = lng[r]
            xy[q, 1] = lat[r]
            o_installed[q] = installed[r]
            o_removed[q] = removed[r]
            o_retention[q] = retention[r]
            o_flags[q] = SHARING if sharing[r] else np.uint8(0)
            o_owner[q] = owner[r]
            o_camera[q] = camera[r]
            slot[q] = d & (size - 1)
    for t in prange(chunks):  # bucket b now holds, unordered, exactly the rows bound for [b * size, (b + 1) * size)
        b_lo, b_hi = _chunk(t, chunks, buckets)
        t_xy = np.empty((size, 2), dtype=xy.dtype)
        t_i4 = np.empty(size, dtype=o_installed.dtype)
        t_u2 = np.empty(size, dtype=o_retention.dtype)
        t_u1 = np.empty(size, dtype=o_flags.dtype)
        t_own = np.empty(size, dtype=o_owner.dtype)
        t_cam = np.empty(size, dtype=o_camera.dtype)
        for b in range(b_lo, b_hi):
            lo = b * size
            hi = min(n, lo + size)
            _permute_within_xy(xy, t_xy, slot, lo, hi)
            _permute_within(o_installed, t_i4, slot, lo, hi)
            _permute_within(o_removed, t_i4, slot, lo, hi)
            _permute_within(o_retention, t_u2, slot, lo, hi)
            _permute_within(o_flags, t_u1, slot, lo, hi)
            _permute_within(o_owner, t_own, slot, lo, hi)
            _permute_within(o_camera, t_cam, slot, lo, hi)


@njit(cache=True, inline="always")
def _whole_units(r: np.int64, scale: int) -> np.int64:
    """``r // scale`` (floor) for the timestamp units' scales, each a division by a constant (a multiplication and
    shifts once compiled) rather than by a variable: an integer division by a variable, twice a value, was most of
    the time conversion's cost (about 20 ns a value)."""
    if scale == 1:
        return r
    if scale == 1_000:
        return r // 1_000
    if scale == 1_000_000:
        return r // 1_000_000
    if scale == 1_000_000_000:
        return r // 1_000_000_000
    return r // scale


@njit(cache=True, parallel=True)
def epoch_seconds(raw: np.ndarray, valid: np.ndarray, scale: int, epoch: int, null_value: int,
                  out: np.ndarray) -> int:
    """Times in units of ``1 / scale`` s since the Unix epoch (``raw``, int64) as int32 seconds since ``epoch``
    into ``out``, in one parallel pass; where ``valid`` (bool, or empty: every value) is False, ``null_value``.
    Returns how many values are not whole seconds or do not fit, where a value equal to ``null_value`` after the
    shift always fits. ``out`` holds nothing meaningful where one does not."""
    lo = np.int64(np.iinfo(np.int32).min + 1)
    hi = np.int64(np.iinfo(np.int32).max - 1)
    every = valid.shape[0] == 0
    bad = 0
    for i in prange(raw.shape[0]):
        if not every and not valid[i]:
            out[i] = np.int32(null_value)
            continue
        r = np.int64(raw[i])
        q = _whole_units(r, scale)
        v = q - epoch
        if q * scale != r or ((v < lo or v > hi) and v != null_value):
            bad += 1
        out[i] = np.int32(v)
    return bad


@njit(cache=True, parallel=True)
def camera_checks(lat: np.ndarray, lng: np.ndarray, installed: np.ndarray, removed: np.ndarray,
                  retention: np.ndarray, o_retention: np.ndarray) -> int:
    """The data model's per-camera rules in one parallel pass over the columns: coordinates finite and in range,
    not removed before installed, retention positive (copied into the uint16 ``o_retention``). Returns how many
    cameras break one; which, and how, is for the caller to find (only then)."""
    bad = 0
    for i in prange(lat.shape[0]):
        r = retention[i]
        if invalid_latlng(lat[i], lng[i]) or removed[i] < installed[i] or r <= 0:
            bad += 1
        o_retention[i] = np.uint16(r)
    return bad


@njit(cache=True)
def events_csr(pos: np.ndarray, ts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Group event times by point position (counting sort), each group sorted ascending."""
    ptr = np.zeros(n + 1, dtype=np.int64)
    for k in range(pos.shape[0]):
        ptr[pos[k] + 1] += 1
    for i in range(n):
        ptr[i + 1] += ptr[i]
    fill = ptr[:-1].copy()
    out = np.empty(ts.shape[0], dtype=np.int32)
    for k in range(pos.shape[0]):
        out[fill[pos[k]]] = ts[k]
        fill[pos[k]] += 1
    for i in range(n):
        lo = ptr[i]
        hi = ptr[i + 1]
        sorted_already = True
        for k in range(lo + 1, hi):
            if out[k] < out[k - 1]:
                sorted_already = False
                break
        if not sorted_already:
            out[lo:hi] = np.sort(out[lo:hi])
    return ptr, out


# ----------------------------------------------------------------------------------------------- query


@njit(cache=True, inline="always")
def _first_at_least(arr: np.ndarray, lo: np.int64, hi: np.int64, value: np.int64) -> np.int64:
    while lo < hi:
        mid = (lo + hi) >> 1
        if arr[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, _nrt=False)  # per point, never allocates (see kernels.geometry)
def admissible(i: np.int64, installed: np.ndarray, removed: np.ndarray, retention: np.ndarray,
               flags: np.ndarray, ev_ptr: np.ndarray, ev_ts: np.ndarray,
               t0: np.int64, t1: np.int64, now: np.int64) -> bool:
    """Whether point ``i`` may hold footage of ``[t0, t1]`` that is still retained at ``now``.

    Times are microseconds since 2000-01-01Z; ``t1`` is already ``min(end, now)``. Sharing must be on, the
    camera not deleted and its owner not opted out (all in ``flags``). ``ev_ptr`` is empty when no motion
    events are loaded; otherwise at least one event must fall in the retained, installed part of the window.
    """
    if flags[i] != SHARING:
        return False
    first = max(t0, np.int64(installed[i]) * US)
    r = removed[i]
    last = t1 if r == NOT_REMOVED else min(t1, np.int64(r) * US)
    if first > last:
        return False
    keep_from = now - np.int64(retention[i]) * DAY_US
    if last < keep_from:
        return False
    if ev_ptr.shape[0]:
        lo = max(first, keep_from)
        # first event second s with s * US >= lo, i.e. s >= ceil(lo / US)
        s_lo = -((-lo) // US)
        k = _first_at_least(ev_ts, ev_ptr[i], ev_ptr[i + 1], s_lo)
        if k >= ev_ptr[i + 1] or np.int64(ev_ts[k]) * US > last:
            return False
    return True


@njit(cache=True, parallel=True)
def mark_owners(flags: np.ndarray, owner: np.ndarray, owners_sorted: np.ndarray, bit: np.uint8, on: bool) -> int:
    """Set (or clear) ``bit`` in the flags of every camera whose owner is in ``owners_sorted``; returns how many
    cameras were marked. One parallel pass; membership is a byte-map lookup over the owners' id span when that
    span is modest (opt-outs among a few million dense ids), else a binary search per camera."""
    m = owners_sorted.shape[0]
    if m == 0:
        return 0
    lo = owners_sorted[0]
    span = owners_sorted[m - 1] - lo + 1
    use_map = span <= 64 * m + 16_000_000
    member = np.zeros(span if use_map else 0, dtype=np.uint8)
    if use_map:
        for k in range(m):
            member[owners_sorted[k] - lo] = 1
    count = 0
    for i in prange(owner.shape[0]):
        o = np.int64(owner[i])
        if use_map:
            hit = o >= lo and o - lo < span and member[o - lo] == 1
        else:
            k = _first_at_least(owners_sorted, 0, m, o)
            hit = k < m and owners_sorted[k] == o
        if hit:
            if on:
                flags[i] |= bit
            else:
                flags[i] &= ~bit
            count += 1
    return count


@njit(cache=True)
def _with_room(a: np.ndarray, n: int, need: int) -> np.ndarray:
    """``a`` when it holds ``need`` values, else a copy of its first ``n`` in an array of at least ``need``. The
    walk calls it only when a node's values would not fit, then writes them in place: an array handed back on
    every push cost its reference counting each time (0.7 µs of a small area's 1.6 µs walk)."""
    if need <= a.shape[0]:
        return a
    bigger = np.empty(max(need, 2 * a.shape[0]), dtype=a.dtype)
    for k in range(n):  # not a slice assignment: its broadcasting checks take seconds to compile
        bigger[k] = a[k]
    return bigger


@njit(cache=True, inline="always")
def _push(out: np.ndarray, n: int, value: np.int64) -> tuple[np.ndarray, int]:
    if n == out.shape[0]:
        bigger = np.empty(max(16, 2 * n), dtype=np.int64)
        for k in range(n):
            bigger[k] = out[k]
        out = bigger
    out[n] = value
    return out, n + 1


@njit(cache=True, inline="always")
def _box_misses(nodes: np.ndarray, i: np.int64, qx0: float, qy0: float, qx1: float, qy1: float) -> bool:
    nd = nodes[i]
    return (np.float64(nd.x1) < qx0 or np.float64(nd.x0) > qx1
            or np.float64(nd.y1) < qy0 or np.float64(nd.y0) > qy1)


@njit(cache=True, inline="always")
def _walk_start(poly_bbox: np.ndarray, nodes: np.ndarray, n_top: int):  # type: ignore[no-untyped-def]
    """The area's box and the walk's first stack: the top-level nodes whose boxes meet the area's."""
    qx0 = np.inf
    qy0 = np.inf
    qx1 = -np.inf
    qy1 = -np.inf
    for p in range(poly_bbox.shape[0]):  # a loop: column slices' min() and max() cost a small query 0.2 µs
        qx0 = min(qx0, poly_bbox[p, 0])
        qy0 = min(qy0, poly_bbox[p, 1])
        qx1 = max(qx1, poly_bbox[p, 2])
        qy1 = max(qy1, poly_bbox[p, 3])
    stack = np.empty(n_top + 64, dtype=np.int64)
    sp = 0
    for top in range(n_top - 1, -1, -1):
        if not _box_misses(nodes, top, qx0, qy0, qx1, qy1):
            stack[sp] = top
            sp += 1
    return qx0, qy0, qx1, qy1, stack, sp


@njit(cache=True, inline="always")
def _push_children(stack: np.ndarray, sp: int, nodes: np.ndarray, node: np.int64, qx0: float, qy0: float,
                   qx1: float, qy1: float) -> int:
    """Push the children of ``node`` whose boxes meet the area's, so that the first child is visited first; the
    stack has room for all of them (:func:`_with_room`). Returns the new stack size."""
    nd = nodes[node]
    for c in range(nd.k1 - 1, nd.k0 - 1, -1):
        if not _box_misses(nodes, c, qx0, qy0, qx1, qy1):
            stack[sp] = c
            sp += 1
    return sp


@njit(cache=True, inline="always")
def _node_class(nodes: np.ndarray, node: np.int64, qx0: float, qy0: float, qx1: float, qy1: float, xs: np.ndarray,
                ys: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray, poly_bbox: np.ndarray,
                work: np.ndarray) -> int:
    """How the walk treats a node: BOX_IN (accept its points at once), BOX_OUT (skip it), BOX_MIXED (a leaf
    tests its points one by one, an inner node is descended)."""
    nd = nodes[node]
    bx0 = np.float64(nd.x0)
    by0 = np.float64(nd.y0)
    bx1 = np.float64(nd.x1)
    by1 = np.float64(nd.y1)
    if nd.k0 != nd.k1 and bx0 <= qx0 and by0 <= qy0 and bx1 >= qx1 and by1 >= qy1:
        return BOX_MIXED  # the node's box holds the whole area: no need to look at its edges
    return classify_box(bx0, by0, bx1, by1, xs, ys, ring_ptr, poly_ptr, poly_bbox, work)


@njit(cache=True)
def visit_nodes(xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray, poly_bbox: np.ndarray,
                nodes: np.ndarray, n_top: int) -> tuple[np.ndarray, np.ndarray]:
    """The walk of :func:`resolve_points` without the points: ``(node, class)`` of every node it reaches and does
    not skip, in visit order (the class is ``_node_class``'s, decided exactly as a resolve decides it)."""
    qx0, qy0, qx1, qy1, stack, sp = _walk_start(poly_bbox, nodes, n_top)
    seen = np.empty(64, dtype=np.int64)
    cls_of = np.empty(64, dtype=np.int64)
    n = 0
    m = 0
    work = np.empty(WORK_SIZE)
    while sp:
        sp -= 1
        node = stack[sp]
        cls = _node_class(nodes, node, qx0, qy0, qx1, qy1, xs, ys, ring_ptr, poly_ptr, poly_bbox, work)
        if cls == BOX_OUT:
            continue
        seen, n = _push(seen, n, node)
        cls_of, m = _push(cls_of, m, cls)
        if cls == BOX_IN:
            continue
        if sp + nodes[node].k1 - nodes[node].k0 > stack.shape[0]:
            stack = _with_room(stack, sp, sp + nodes[node].k1 - nodes[node].k0)
        sp = _push_children(stack, sp, nodes, node, qx0, qy0, qx1, qy1)
    return seen[:n], cls_of[:m]


@njit(cache=True, nogil=True)
def resolve_points(
    xs: np.ndarray, ys: np.ndarray, ring_ptr: np.ndarray, poly_ptr: np.ndarray, poly_bbox: np.ndarray,
    nodes: np.ndarray, n_top: int,
    xy: np.ndarray, installed: np.ndarray, removed: np.ndarray, retention: np.ndarray, flags: np.ndarray,
    ev_ptr: np.ndarray, ev_ts: np.ndarray, t0: np.int64, t1: np.int64, now: np.int64,
) -> np.ndarray:
    """Positions of the points covered by the area and admissible for the window (in visit order).

    Walks the hierarchy from the top level; a node whose box lies wholly inside the area is accepted without
    locating its points one by one, one wholly outside is skipped, and a straddling leaf tests each point."""
    qx0, qy0, qx1, qy1, stack, sp = _walk_start(poly_bbox, nodes, n_top)
    out = np.empty(64, dtype=np.int64)
    n = 0
    work = np.empty(WORK_SIZE)
    while sp:
        sp -= 1
        node = stack[sp]
        nd = nodes[node]
        is_leaf = nd.k0 == nd.k1
        cls = _node_class(nodes, node, qx0, qy0, qx1, qy1, xs, ys, ring_ptr, poly_ptr, poly_bbox, work)
        if cls == BOX_OUT:
            continue
        if cls == BOX_IN or is_leaf:
            if n + nd.p1 - nd.p0 > out.shape[0]:
                out = _with_room(out, n, n + nd.p1 - nd.p0)
            for i in range(nd.p0, nd.p1):
                if cls != BOX_IN:
                    # the area's box first: it reads only the point's place, where the rules read five columns
                    x = xy[i, 0]
                    y = xy[i, 1]
                    if x < qx0 or x > qx1 or y < qy0 or y > qy1:
                        continue
                if not admissible(i, installed, removed, retention, flags, ev_ptr, ev_ts, t0, t1, now):
                    continue
                if cls != BOX_IN and not covers_point(xy[i, 0], xy[i, 1], xs, ys, ring_ptr, poly_ptr, poly_bbox,
                                                      work):
                    continue
                out[n] = i
                n += 1
            continue
        if sp + nd.k1 - nd.k0 > stack.shape[0]:
            stack = _with_room(stack, sp, sp + nd.k1 - nd.k0)
        sp = _push_children(stack, sp, nodes, node, qx0, qy0, qx1, qy1)
    return out[:n]


@njit(cache=True)
def radix_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of int64 ``keys`` by LSD radix, linear in the number of keys.

    Digits are as wide as the input is long (8 to 16 bits), and only the bits in which keys differ are
    sorted: a query's few thousand owner ids take two or three passes."""
    m = keys.shape[0]
    order = np.arange(m)
    if m < 2:
        return order
    lo = keys.min()
    span = np.uint64(keys.max() - lo)
    bits = 8
    while bits < 16 and (1 << bits) < m:
        bits += 1
    mask = np.uint64((1 << bits) - 1)
    tmp = np.empty(m, dtype=np.int64)
    count = np.empty((1 << bits) + 1, dtype=np.int64)
    digit = np.empty(m, dtype=np.int64)
    shift = 0
    while shift < 64 and (span >> np.uint64(shift)) != 0:
        count[:] = 0
        for k in range(m):
            d = np.int64((np.uint64(keys[order[k]] - lo) >> np.uint64(shift)) & mask)
            digit[k] = d
            count[d + 1] += 1
        for d in range(1 << bits):
            count[d + 1] += count[d]
        for k in range(m):
            d = digit[k]
            tmp[count[d]] = order[k]
            count[d] += 1
        order, tmp = tmp, order
        shift += bits
    return order


#: Up to this many (owner, camera) pairs are put in order by insertion sort: below it a radix pass (clearing and
#: summing 257 or more counts) costs more than the few comparisons a small area's handful of cameras need.
SMALL_GROUP = 48


@njit(cache=True, inline="always")
def _pair_less(o1: np.int64, c1: np.int64, o2: np.int64, c2: np.int64) -> bool:
    return o1 < o2 or (o1 == o2 and c1 < c2)


@njit(cache=True)
def group_by_owner(own: np.ndarray, cam: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Sort (owner, camera) pairs by owner, then camera; return them packed in one array,
    ``[owners (distinct, ascending) | cameras in that order | CSR offsets]`` (``n_own + m + n_own + 1`` values:
    a single array crosses back to Python for less than three), with ``n_own`` and ``m``. ``own`` and ``cam``
    are int64 arrays of the caller's, put in order in place. Camera ids are unique, so the order is fully
    determined."""
    m = own.shape[0]
    if m <= SMALL_GROUP:
        for k in range(1, m):
            o = own[k]
            c = cam[k]
            q = k - 1
            while q >= 0 and _pair_less(o, c, own[q], cam[q]):
                own[q + 1] = own[q]
                cam[q + 1] = cam[q]
                q -= 1
            own[q + 1] = o
            cam[q + 1] = c
    else:
        order = radix_argsort(own)
        own = own[order]
        cam = cam[order]
    n_own = 1 if m else 0
    for k in range(1, m):
        if own[k] != own[k - 1]:
            n_own += 1
    out = np.empty(n_own + m + n_own + 1, dtype=np.int64)
    j = -1
    for k in range(m):
        if k == 0 or own[k] != own[k - 1]:
            j += 1
            out[j] = own[k]
            out[n_own + m + j] = k
        elif m > SMALL_GROUP:  # insertion sort within the owner: an owner has a handful of cameras
            c = cam[k]
            q = k - 1
            while q >= 0 and own[q] == own[k] and cam[q] > c:
                cam[q + 1] = cam[q]
                q -= 1
            cam[q + 1] = c
    for k in range(m):
        out[n_own + k] = cam[k]
    out[n_own + m + n_own] = m
    return out, n_own, m


@intrinsic
def _read_only(typingctx, arr):  # type: ignore[no-untyped-def]
    """``arr`` as a read-only array type (the same memory): Numba hands such an array to Python with its
    writeable flag already off, where a ``setflags`` call on each result cost a small query about 0.1 µs."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return impl_ret_borrowed(context, builder, signature.return_type, args[0])
    return arr.copy(readonly=True)(arr), codegen


@njit(cache=True, inline="always")
def _answer(own: np.ndarray, cam: np.ndarray):  # type: ignore[no-untyped-def]
    """:func:`group_by_owner`, its packed array read-only (what every resolve kernel returns)."""
    packed, n_own, m = group_by_owner(own, cam)
    return _read_only(packed), n_own, m


@njit(cache=True, inline="always")
def _ids_at(own: np.ndarray, cam: np.ndarray, at: int, pos: np.ndarray, owner: np.ndarray,
            camera: np.ndarray) -> None:
    """The owner and camera ids of the points at ``pos``, written from ``at`` on."""
    for k in range(pos.shape[0]):
        own[at + k] = owner[pos[k]]
        cam[at + k] = camera[pos[k]]


@njit(cache=True, nogil=True)
def resolve(nodes, n_top, xy, installed, removed, retention, flags, owner, ev_ptr, ev_ts,  # type: ignore[no-untyped-def]
            camera, dxy, dinstalled, dremoved, dretention, dflags, downer, dev_ptr, dev_ts, dcamera,
            xs, ys, ring_ptr, poly_ptr, poly_bbox, t0, t1, now):
    """A whole query in one compiled call (so it pays Numba's dispatch once): walk the base hierarchy, scan
    the live delta, gather ids and group cameras by owner. Returns ``(owners, cameras, offsets)`` packed in one
    array, and the numbers of owners and cameras, as :func:`group_by_owner` does. The state's arrays come first
    and the request's after, so that the caller binds the state's once (``functools.partial``)."""
    pos = resolve_points(xs, ys, ring_ptr, poly_ptr, poly_bbox, nodes, n_top,
                         xy, installed, removed, retention, flags, ev_ptr, ev_ts, t0, t1, now)
    if dxy.shape[0]:  # the delta is one leaf with an unbounded box: every camera's location is tested
        leaf = np.zeros(1, dtype=NODE_DTYPE)
        leaf[0].x0 = -np.inf
        leaf[0].y0 = -np.inf
        leaf[0].x1 = np.inf
        leaf[0].y1 = np.inf
        leaf[0].p1 = dxy.shape[0]
        dpos = resolve_points(xs, ys, ring_ptr, poly_ptr, poly_bbox, leaf, 1,
                              dxy, dinstalled, dremoved, dretention, dflags, dev_ptr, dev_ts, t0, t1, now)
    else:
        dpos = np.empty(0, dtype=np.int64)
    m = pos.shape[0] + dpos.shape[0]
    own = np.empty(m, dtype=np.int64)
    cam = np.empty(m, dtype=np.int64)
    _ids_at(own, cam, 0, pos, owner, camera)
    _ids_at(own, cam, pos.shape[0], dpos, downer, dcamera)
    return _answer(own, cam)


@njit(cache=True, nogil=True)
def resolve_base(nodes, n_top, xy, installed, removed, retention, flags, owner, ev_ptr,  # type: ignore[no-untyped-def]
                 ev_ts, camera, xs, ys, ring_ptr, poly_ptr, poly_bbox, t0, t1, now):
    """:func:`resolve` of a state whose delta is empty, without the delta's nine arrays: each array argument
    costs a call about 50 ns to take from Python, which a small query notices."""
    pos = resolve_points(xs, ys, ring_ptr, poly_ptr, poly_bbox, nodes, n_top,
                         xy, installed, removed, retention, flags, ev_ptr, ev_ts, t0, t1, now)
    own = np.empty(pos.shape[0], dtype=np.int64)
    cam = np.empty(pos.shape[0], dtype=np.int64)
    _ids_at(own, cam, 0, pos, owner, camera)
    return _answer(own, cam)


@intrinsic
def _pointer(typingctx, address):  # type: ignore[no-untyped-def]
    """The memory at ``address`` (an int64) as a void pointer, for :func:`numba.carray`."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(types.int64), codegen


#: The arrays of a base that :func:`resolve_table` takes as one table of (address, length) pairs, in this order,
#: with the dtype each must have (C-contiguous; ``xy`` has two columns).
TABLE_DTYPES = (("nodes", NODE_DTYPE), ("xy", np.dtype(np.float64)), ("installed", np.dtype(np.int32)),
                ("removed", np.dtype(np.int32)), ("retention", np.dtype(np.uint16)), ("flags", np.dtype(np.uint8)),
                ("ev_ptr", np.dtype(np.int64)), ("ev_ts", np.dtype(np.int32)))
#: ... then the owner and camera id columns' (address, length) pairs (C-contiguous, int32 or int64 each), the
#: number of top-level nodes, and the two id columns' widths in bytes (4 or 8): the table's positions of these.
TABLE_OWNER = 2 * len(TABLE_DTYPES)
TABLE_CAMERA = TABLE_OWNER + 2
TABLE_N_TOP = TABLE_CAMERA + 2
TABLE_WIDTHS = TABLE_N_TOP + 1
TABLE_SIZE = TABLE_WIDTHS + 2


@njit(cache=True, inline="always")
def _ids_from(out: np.ndarray, pos: np.ndarray, address: np.int64, length: np.int64, width: np.int64) -> None:
    """``out[j] = ids[pos[j]]``, widened to int64, for the id column of ``length`` values of ``width`` bytes at
    ``address``."""
    if width == 4:
        ids32 = carray(_pointer(address), (length,), np.int32)
        for j in range(pos.shape[0]):
            out[j] = ids32[pos[j]]
    else:
        ids64 = carray(_pointer(address), (length,), np.int64)
        for j in range(pos.shape[0]):
            out[j] = ids64[pos[j]]


@njit(cache=True, inline="always")
def _resolve_on_table(table, xs, ys, ring_ptr, poly_ptr, poly_bbox, t0, t1, now):  # type: ignore[no-untyped-def]
    """The body of :func:`resolve_table` (and of :func:`resolve_table_ring`, after its checks)."""
    nodes = carray(_pointer(table[0]), (table[1],), NODE_DTYPE)
    xy = carray(_pointer(table[2]), (table[3], 2), np.float64)
    installed = carray(_pointer(table[4]), (table[5],), np.int32)
    removed = carray(_pointer(table[6]), (table[7],), np.int32)
    retention = carray(_pointer(table[8]), (table[9],), np.uint16)
    flags = carray(_pointer(table[10]), (table[11],), np.uint8)
    ev_ptr = carray(_pointer(table[12]), (table[13],), np.int64)
    ev_ts = carray(_pointer(table[14]), (table[15],), np.int32)
    pos = resolve_points(xs, ys, ring_ptr, poly_ptr, poly_bbox, nodes, table[TABLE_N_TOP],
                         xy, installed, removed, retention, flags, ev_ptr, ev_ts, t0, t1, now)
    own = np.empty(pos.shape[0], dtype=np.int64)
    cam = np.empty(pos.shape[0], dtype=np.int64)
    _ids_from(own, pos, table[TABLE_OWNER], table[TABLE_OWNER + 1], table[TABLE_WIDTHS])
    _ids_from(cam, pos, table[TABLE_CAMERA], table[TABLE_CAMERA + 1], table[TABLE_WIDTHS + 1])
    return _answer(own, cam)


@njit(cache=True, nogil=True)
def resolve_table(table, xs, ys, ring_ptr, poly_ptr, poly_bbox, t0, t1, now):  # type: ignore[no-untyped-def]
    """:func:`resolve_base` with everything of the base in one int64 array of :data:`TABLE_SIZE` values (its
    arrays as their addresses and lengths, ``table[2k]`` and ``table[2k + 1]``: :data:`TABLE_DTYPES` first, then
    the ids; the number of top-level nodes and the ids' widths after): taking an array from Python costs a call
    about 100 ns, so only the table and the request's area and window cross per call. The caller keeps the arrays
    alive and checked (:class:`dispatcher.index.state.State`)."""
    return _resolve_on_table(table, xs, ys, ring_ptr, poly_ptr, poly_bbox, t0, t1, now)


#: :func:`resolve_table_ring` did not resolve: the ring is not one the compiled checks certify, or its bounds
#: reach the unit square (where a flag read as 0 or 1 may hide among the positions); the caller parses it.
RING_NOT_CERTIFIED = -1


@njit(cache=True, nogil=True)
def resolve_table_ring(table, xy, t0, t1, now):  # type: ignore[no-untyped-def]
    """:func:`resolve_table` of the area of one ring, given as its positions ``xy`` ((n, 2) float64, C order, as
    a GeoJSON Polygon's only ring reads), checked by :func:`kernels.validation.parse_area` in the same call: a
    request's area from the dict a backend receives, in one compiled call instead of a parse (four small arrays
    and the Area made in Python) and a resolve. Returns what :func:`resolve_table` returns when the checks certify
    the area and its bounds do not reach ``[0, 1]`` in either coordinate (what :meth:`dispatcher.geo.area.Area.parse`
    accepts without looking at the positions' types), else an empty array and :data:`RING_NOT_CERTIFIED`: the
    caller then parses the area, which decides (and names what is wrong)."""
    n = xy.shape[0]
    ptrs = np.empty(4, dtype=np.int64)
    ptrs[0] = 0
    ptrs[1] = n
    ptrs[2] = 0
    ptrs[3] = 1
    coords = np.empty(2 * n + 4)
    ring_ptr = ptrs[:2]
    poly_ptr = ptrs[2:]
    if parse_area(xy, ring_ptr, poly_ptr, coords) != AREA_VALID:
        return _read_only(np.empty(0, dtype=np.int64)), RING_NOT_CERTIFIED, 0
    x0 = coords[2 * n]
    y0 = coords[2 * n + 1]
    x1 = coords[2 * n + 2]
    y1 = coords[2 * n + 3]
    if (x0 <= 1.0 and x1 >= 0.0) or (y0 <= 1.0 and y1 >= 0.0):
        return _read_only(np.empty(0, dtype=np.int64)), RING_NOT_CERTIFIED, 0
    return _resolve_on_table(table, coords[:n], coords[n:2 * n], ring_ptr, poly_ptr,
                             coords[2 * n:].reshape((1, 4)), t0, t1, now)

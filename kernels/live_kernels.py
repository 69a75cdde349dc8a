"""Kernels of the index's live updates: a run of flag changes (cameras removed, sharing turned on or off) applied
in one compiled call, in order, each one all or nothing.

Flags are the index's per-camera bytes (:mod:`kernels.index_kernels`: bit 0 sharing, bit 1 deleted, bit 2 owner
opted out). A camera lives in the base or in the delta, never both; a caller gives each change's cameras as their
positions there (-1 where absent).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.index_kernels import DELETED, SHARING

__all__ = ["OP_REMOVE", "OP_SHARING_OFF", "OP_SHARING_ON", "apply_flag_changes", "mark_owner_cameras"]

OP_REMOVE = np.int8(0)
OP_SHARING_ON = np.int8(1)
OP_SHARING_OFF = np.int8(2)
NOT_SHARING = np.uint8(0xFF ^ int(SHARING))


@njit(cache=True)
def apply_flag_changes(base_flags: np.ndarray, delta_flags: np.ndarray, base_pos: np.ndarray,
                       delta_pos: np.ndarray, ptr: np.ndarray, ops: np.ndarray, first_bad: np.ndarray) -> int:
    """Apply change ``j`` (cameras ``ptr[j]:ptr[j + 1]`` of the run, op ``ops[j]``) for each ``j`` in order, in
    place: when every one of its cameras is present and not removed (by then: an earlier change of the run may have
    removed one), its bit is set or cleared on all of them; else nothing of it, and ``first_bad[j]`` is the run
    index of its first such camera (-1 for a change applied). Returns the number of changes refused."""
    refused = 0
    for j in range(ops.shape[0]):
        first_bad[j] = -1
        for i in range(ptr[j], ptr[j + 1]):
            b, d = base_pos[i], delta_pos[i]
            if not (b >= 0 and base_flags[b] & DELETED == 0 or b < 0 <= d and delta_flags[d] & DELETED == 0):
                first_bad[j] = i
                break
        if first_bad[j] >= 0:
            refused += 1
            continue
        op = ops[j]
        for i in range(ptr[j], ptr[j + 1]):
            b = base_pos[i]
            if b >= 0:
                base_flags[b] = _changed(base_flags[b], op)
            else:
                d = delta_pos[i]
                delta_flags[d] = _changed(delta_flags[d], op)
    return refused


@njit(cache=True, inline="always")
def _changed(flags: np.uint8, op: np.int8) -> np.uint8:
    if op == OP_REMOVE:
        return np.uint8(flags | DELETED)
    if op == OP_SHARING_ON:
        return np.uint8(flags | SHARING)
    return np.uint8(flags & NOT_SHARING)


@njit(cache=True)
def mark_owner_cameras(flags: np.ndarray, owner_sorted: np.ndarray, order: np.ndarray, owners: np.ndarray,
                       bit: np.uint8, on: bool) -> int:
    """Set (or clear) ``bit`` in the flags of the cameras of ``owners`` (sorted, distinct), found through the
    owner column sorted (``owner_sorted``, and ``order``: the position of each); returns how many were marked.
    Costs what the owners' cameras number, not what the index holds."""
    count = 0
    keep = np.uint8(0xFF ^ int(bit))
    lo = np.searchsorted(owner_sorted, owners, side="left")
    hi = np.searchsorted(owner_sorted, owners, side="right")
    for k in range(owners.shape[0]):
        for p in range(lo[k], hi[k]):
            i = order[p]
            flags[i] = flags[i] | bit if on else flags[i] & keep
        count += hi[k] - lo[k]
    return count

"""Live updates: cameras added, removed, sharing turned on or off, owners opting out, each visible to the next
resolve; and the merge that folds them into a new base.

Flags change in place (in memory, or in a private copy-on-write mapping of a saved index); added cameras go to
a small delta that the resolve scans by brute force. A merge rebuilds the base from the base and the delta
without the removed cameras; updates made while it runs are journaled and replayed onto the new state.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from dispatcher.errors import DispatchError, InvalidData, UnknownCamera
from dispatcher.index.build import build_base
from dispatcher.index.columns import (
    EMPTY_I32,
    EMPTY_I64,
    columns_from,
    concat_columns,
    empty_columns,
    gather_events,
    lookup_table,
    positions,
    rows_of,
)
from dispatcher.index.config import IndexConfig
from dispatcher.index.schema import CAMERA_SCHEMA, CameraColumns, camera_columns, event_columns
from dispatcher.index.state import State
from kernels import index_kernels as K
from kernels import live_kernels as L

__all__ = ["Update", "added", "applied", "live_positions", "locate", "merged", "owner_lookup", "pending", "prepare",
           "replay", "set_flag", "warm_up"]

_EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)

#: A journaled update: its kind ("add", "remove", "sharing", "optout") and its two arguments.
Update = tuple[str, Any, Any]


def added(st: State, cols: CameraColumns, events: pa.Table | None) -> tuple[State, Update]:
    """``st`` with the validated cameras ``cols`` (and their events) in the delta, and the update to journal.
    Ids must be new."""
    if events is not None and not st.has_events:
        raise InvalidData("events: this index was built without motion events; rebuild it with them")
    present = _present(st, cols.camera_id)
    if present.shape[0]:
        raise InvalidData(f"cameras: id(s) already in the index: {present[:5].tolist()}")
    if st.has_events and events is not None:
        ev_cam, ev_ts = event_columns(events)
        ev_row = rows_of(cols.camera_id, ev_cam, "events")
    else:
        ev_row, ev_ts = EMPTY_I64, EMPTY_I32
    update: Update = ("add", (cols, ev_row, ev_ts), None)
    return replay(st, *update), update


def replay(st: State, kind: str, a: Any, b: Any) -> State:
    """``st`` with one journaled update applied (a camera removed meanwhile is simply gone)."""
    if kind == "add":
        cols, ev_row, ev_ts = a
        new = columns_from(cols, None, ev_row, ev_ts, st.has_events, st.optout)
        delta = concat_columns(st.delta, new, st.has_events)
        # The delta's ids stay int64, as the empty delta's: a resolve over it has one signature, compiled at
        # open, whatever ids arrive (narrowed, the first addition compiled another mid-service).
        return replace(st, delta=replace(delta, owner=delta.owner.astype(np.int64, copy=False),
                                         camera=delta.camera.astype(np.int64, copy=False)))
    if kind == "optout":
        for cols in (st.base.cols, st.delta):
            L.mark_owner_cameras(cols.flags, *owner_lookup(cols.owner), a, K.OPTED_OUT, b)
        return replace(st, optout=_sorted_with(st.optout, a, bool(b)))
    if kind == "remove":
        set_flag(st, locate(st, a, strict=False), K.DELETED, True)
    elif kind == "sharing":
        set_flag(st, locate(st, a, strict=False), K.SHARING, b)
    return st


_FLAG_OPS = {("remove", None): L.OP_REMOVE, ("sharing", True): L.OP_SHARING_ON, ("sharing", False): L.OP_SHARING_OFF}


def applied(st: State, updates: Sequence[Update]) -> tuple[State, list[DispatchError | None], list[Update]]:
    """``st`` with a batch of updates applied as if one after the other, each one all or nothing; what each one
    was refused with (None: applied), and the updates to journal. ``("add", cols, events)`` takes validated
    columns; removals and sharing are ``(kind, ids, flag)`` as :meth:`replay` takes them.

    Cost is per batch, not per update: each run of removals and sharing changes between two additions is one
    lookup of all its ids and one compiled pass (:func:`kernels.live_kernels.apply_flag_changes`, which sees a
    removal earlier in the run); opt-outs, which commute with every other update (an added camera's opted-out
    flag only depends on its owner being opted out by the end), are one pass for the owners opted out and one for
    those opted back in, each owner as its last update in the batch left it."""
    errors: list[DispatchError | None] = [None] * len(updates)
    journal: list[Update] = []
    owners: dict[int, bool] = {}
    run: list[int] = []

    def flush(st: State) -> None:
        if not run:
            return
        ids = [updates[k][1] for k in run]
        ptr = np.zeros(len(run) + 1, dtype=np.int64)
        np.cumsum([a.shape[0] for a in ids], out=ptr[1:])
        flat = np.concatenate(ids).astype(np.int64, copy=False)
        base = positions(*st.base.lookup(), flat)
        delta = positions(*lookup_table(st.delta.camera), flat)
        ops = np.array([_FLAG_OPS[updates[k][0], updates[k][2]] for k in run], dtype=np.int8)
        first_bad = np.empty(len(run), dtype=np.int64)
        L.apply_flag_changes(st.base.cols.flags, st.delta.flags, base, delta, ptr, ops, first_bad)
        for j, k in enumerate(run):
            if first_bad[j] >= 0:
                errors[k] = UnknownCamera(f"unknown or removed camera id(s): [{int(flat[first_bad[j]])}]")
            else:
                journal.append(updates[k])
        run.clear()

    for k, (kind, a, b) in enumerate(updates):
        if kind in ("remove", "sharing"):
            run.append(k)
        elif kind == "optout":
            owners.update(dict.fromkeys(a.tolist(), bool(b)))
        else:
            flush(st)
            try:
                st, update = added(st, a, b)
            except DispatchError as exc:
                errors[k] = exc
            else:
                journal.append(update)
    flush(st)
    for flag in (True, False):
        ids = np.array(sorted(o for o, v in owners.items() if v is flag), dtype=np.int64)
        if ids.shape[0]:
            st = replay(st, "optout", ids, flag)
            journal.append(("optout", ids, flag))
    return st, errors, journal


#: id of an owner column -> (it sorted, the position of each), built on first use: an opt-out then costs what the
#: owner's cameras number. Owner columns never change in place (a state is replaced, not changed, when cameras
#: come); an entry goes when its column does (arrays are not hashable: keyed by id, dropped by a finalizer).
_OWNER_LOOKUPS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def owner_lookup(owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(owner ids sorted, the position of each in owner)`` (positions as int32 when they fit: 8 bytes a camera
    in all), built once per owner column."""
    got = _OWNER_LOOKUPS.get(id(owner))
    if got is None:
        order = np.argsort(owner)  # any order among one owner's cameras
        if owner.shape[0] < 2 ** 31:
            order = order.astype(np.int32)
        got = _OWNER_LOOKUPS[id(owner)] = (np.ascontiguousarray(owner[order]), order)
        weakref.finalize(owner, _OWNER_LOOKUPS.pop, id(owner), None)
    return got


def prepare(st: State) -> None:
    """Build the lookups live updates use (cameras by id, cameras by owner), ahead of the first update: at 10M
    cameras each is a sort of about a second, better spent before an update than while resolves wait on one."""
    st.base.lookup()
    owner_lookup(st.base.cols.owner)
    owner_lookup(st.delta.owner)


def warm_up(st: State) -> None:
    """Compile (or load from Numba's cache) every kernel live updates run on ``st``'s arrays, so that no update
    pays for it (a first sharing change, opt-out or addition in a worker compiled mid-service: 0.4-3 s). Each
    runs on empty slices of the state's arrays or on scratch ones: nothing of the state changes, and no lookup
    is built (:func:`prepare` builds those)."""
    for cols in (st.base.cols, st.delta):  # opt-outs: through each column's owner lookup (its arrays' types)
        order = EMPTY_I32 if cols.n < 2 ** 31 else EMPTY_I64
        L.mark_owner_cameras(cols.flags[:0], cols.owner[:0].copy(), order, EMPTY_I64, K.OPTED_OUT, True)
    L.apply_flag_changes(st.base.cols.flags[:0], st.delta.flags[:0], EMPTY_I64, EMPTY_I64,
                         np.zeros(1, np.int64), np.empty(0, np.int8), EMPTY_I64)  # removals and sharing
    # Additions: a camera's columns validated and laid out, with ids of the base's widths and with ids that need
    # 64 bits, flagged as an opted-out owner's (the opt-outs as opened, maybe mapped read-only, and as an opt-out
    # change leaves them).
    owner = int(st.base.cols.owner[0]) if st.base.cols.n else 1
    camera = int(st.base.cols.camera[0]) if st.base.cols.n else 1
    for camera_id, owner_id in ((camera, owner), (2 ** 62, 2 ** 62)):
        scratch = camera_columns(pa.Table.from_pylist([_scratch_camera(camera_id, owner_id)],
                                                      schema=CAMERA_SCHEMA))
        new = columns_from(scratch, None, EMPTY_I64, EMPTY_I32, st.has_events, st.optout)
        for optout in (st.optout[:0], EMPTY_I64):
            K.mark_owners(new.flags[:0], new.owner[:0], optout, K.OPTED_OUT, True)


def _scratch_camera(camera_id: int, owner_id: int) -> dict[str, Any]:
    """A camera row whose columns :func:`warm_up` lays out (and drops)."""
    return {"camera_id": camera_id, "owner_id": owner_id, "lat": 0.0, "lng": 0.0, "installed_at": _EPOCH,
            "removed_at": None, "retention_days": 30, "sharing_enabled": True}


def _sorted_with(ids: np.ndarray, change: np.ndarray, present: bool) -> np.ndarray:
    """Sorted distinct ``ids`` with the sorted distinct ``change`` in (``present``) or out: a search and a copy,
    where a set union sorts or hashes the whole set (a million owners opted out: ~1 ms against tens)."""
    at = np.searchsorted(ids, change)
    found = (at < ids.shape[0]) & (ids[np.minimum(at, ids.shape[0] - 1)] == change) if ids.shape[0] else \
        np.zeros(change.shape[0], bool)
    if present:
        return np.insert(ids, at[~found], change[~found]).astype(np.int64, copy=False)
    return np.delete(ids, at[found]).astype(np.int64, copy=False)


def _present(st: State, ids: np.ndarray) -> np.ndarray:
    """Which of ``ids`` the state holds (base or delta), removed ones included."""
    in_base = positions(*st.base.lookup(), ids) >= 0
    in_delta = positions(*lookup_table(st.delta.camera), ids) >= 0
    return ids[in_base | in_delta]


def live_positions(st: State, ids: np.ndarray, *, strict: bool = True) -> tuple[np.ndarray, ...]:
    """``(base, delta, base_live, delta_live)``, aligned with ``ids``: each id's position in the base and in the
    delta (-1 where absent) and whether a live (not removed) camera is there. With ``strict``, unknown or removed
    ids raise :class:`UnknownCamera`."""
    base = positions(*st.base.lookup(), ids)
    delta = positions(*lookup_table(st.delta.camera), ids)
    base_live = np.zeros(ids.shape[0], bool)
    base_live[base >= 0] = (st.base.cols.flags[base[base >= 0]] & K.DELETED) == 0
    delta_live = np.zeros(ids.shape[0], bool)
    delta_live[delta >= 0] = (st.delta.flags[delta[delta >= 0]] & K.DELETED) == 0
    unknown = ~(base_live | delta_live)
    if strict and unknown.any():
        raise UnknownCamera(f"unknown or removed camera id(s): {ids[unknown][:5].tolist()}")
    return base, delta, base_live, delta_live


def locate(st: State, ids: np.ndarray, *, strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(base positions, delta positions) of the live cameras among ``ids``. With ``strict``, unknown or removed
    ids raise before any change; a replay after a merge is not strict (a camera removed while the merge ran is
    already gone from the new base)."""
    base, delta, base_live, delta_live = live_positions(st, ids, strict=strict)
    return base[base_live], delta[delta_live]


def set_flag(st: State, where: tuple[np.ndarray, np.ndarray], bit: np.uint8, on: bool) -> None:
    """Set or clear a flag bit in place (flags are always writeable: built in memory, or mapped copy-on-write)."""
    for cols, pos in ((st.base.cols, where[0]), (st.delta, where[1])):
        if pos.shape[0]:
            if on:
                cols.flags[pos] |= bit
            else:
                cols.flags[pos] &= np.uint8(~bit & 0xFF)


def pending(st: State) -> bool:
    """Whether a merge of ``st`` would change its base: cameras in the delta, or removed ones in the base. Without
    either the merged base is the base itself, array for array (the cells' stable sort of cameras already in cell
    order keeps them there, and the flags come out of the same sharing and opt-outs), so a save or a snapshot
    writes it as it is rather than building it again (at 10M cameras a whole build, 3-4 s of CPU)."""
    return st.delta.n > 0 or bool(np.bitwise_and(st.base.cols.flags, K.DELETED).any())


def merged(st: State, config: IndexConfig) -> State:
    """A state whose base holds ``st``'s base and delta without the removed cameras, and whose delta is empty.
    Reads ``st`` only; the journaled updates are the caller's to replay onto the result."""
    merged_cols = concat_columns(st.base.cols, st.delta, st.has_events)
    keep = np.flatnonzero((merged_cols.flags & K.DELETED) == 0)
    cols = CameraColumns(
        camera_id=merged_cols.camera.astype(np.int64)[keep], owner_id=merged_cols.owner.astype(np.int64)[keep],
        lat=np.ascontiguousarray(merged_cols.xy[keep, 1]), lng=np.ascontiguousarray(merged_cols.xy[keep, 0]),
        installed=merged_cols.installed[keep], removed=merged_cols.removed[keep],
        retention_days=merged_cols.retention[keep], sharing=(merged_cols.flags[keep] & K.SHARING) != 0)
    if st.has_events:
        counts = np.diff(merged_cols.ev_ptr)[keep]
        ev_row = np.repeat(np.arange(keep.shape[0], dtype=np.int64), counts)
        ev_ts = gather_events(merged_cols.ev_ptr, merged_cols.ev_ts, keep)
    else:
        ev_row, ev_ts = EMPTY_I64, EMPTY_I32
    base, _ = build_base(cols, ev_row, ev_ts, st.has_events, st.optout, config)
    return State(base, empty_columns(st.has_events), st.optout, st.has_events)

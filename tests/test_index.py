from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.reference import Dataset, brute_force, reference_index
from dispatcher.errors import (
    DispatchError,
    IndexFormatError,
    InvalidData,
    InvalidIndexSettings,
    InvalidTimeWindow,
    UnknownCamera,
)
from dispatcher.geo import h3 as h3x
from dispatcher.geo.area import Area
from dispatcher.index import CAMERA_SCHEMA, CameraIndex, IndexConfig
from dispatcher.index.schema import EVENT_SCHEMA, camera_columns, event_columns, window_us
from tests import data
from tests.polygons import areas, boundary_points
from tests.workers import run_workers

NOW = data.NOW


def as_dict(rs) -> dict[int, list[int]]:
    return {owner: cams.tolist() for owner, cams in rs.items()}


@pytest.fixture(scope="module")
def world():
    cams = data.cameras(6000, seed=7)
    own = data.owners(cams, seed=7)
    ev = data.events(cams, seed=7)
    return cams, own, ev


@pytest.fixture(scope="module")
def index_with_events(world):
    cams, own, ev = world
    return CameraIndex.build(cams, own, ev), Dataset.from_tables(cams, own, ev)


@pytest.fixture(scope="module")
def index_plain(world):
    cams, own, _ = world
    return CameraIndex.build(cams, own), Dataset.from_tables(cams, own)


@given(area=areas(), seed=st.integers(0, 2**32 - 1))
def test_resolve_equals_oracle(index_plain, area, seed):
    index, ref = index_plain
    start, end = data.window(np.random.default_rng(seed))
    got = index.resolve(area, start, end, now=NOW)
    assert as_dict(got) == brute_force(ref, area, start, end, NOW)


@given(area=areas(), seed=st.integers(0, 2**32 - 1))
def test_resolve_with_motion_events_equals_oracle(index_with_events, area, seed):
    index, ref = index_with_events
    start, end = data.window(np.random.default_rng(seed), max_days_ago=45)
    got = index.resolve(area, start, end, now=NOW)
    assert as_dict(got) == brute_force(ref, area, start, end, NOW)


@settings(max_examples=25)
@given(area=areas(snap=2.0**-12), seed=st.integers(0, 2**32 - 1))
def test_cameras_on_the_boundary_are_included(area, seed):
    rng = np.random.default_rng(seed)
    edge = boundary_points(area, rng, 2.0**-12)
    cams = data.cameras(300, seed=seed % 1000, extra_points=edge, spread=0.02)
    # Every boundary camera shares, was installed long ago and is never removed, so only geometry decides.
    n = cams.num_rows
    k = edge.shape[0]
    cams = cams.set_column(5, "removed_at", pa.nulls(n, pa.timestamp("s", tz="UTC")))
    cams = cams.set_column(7, "sharing_enabled", pa.array(np.ones(n, bool)))
    cams = cams.set_column(6, "retention_days", pa.array(np.full(n, 180, np.int16)))
    index = CameraIndex.build(cams)
    start, end = NOW - timedelta(hours=2), NOW - timedelta(hours=1)
    got = index.resolve(area, start, end, now=NOW)
    ref = Dataset.from_tables(cams)
    assert as_dict(got) == brute_force(ref, area, start, end, NOW)
    installed = cams.column("installed_at").cast(pa.int64()).to_numpy()
    edge_ids = cams.column("camera_id").to_numpy()[n - k:][installed[n - k:] <= int(end.timestamp())]
    assert set(edge_ids.tolist()) <= set(got.camera_ids.tolist())


def _one_camera(installed: datetime, removed: datetime | None, retention: int = 30, sharing: bool = True,
                lng: float = -73.95, lat: float = 40.75) -> pa.Table:
    ts = pa.timestamp("s", tz="UTC")
    return pa.Table.from_arrays([
        pa.array([1]), pa.array([10]), pa.array([lat]), pa.array([lng]),
        pa.array([installed], ts), pa.array([removed], ts), pa.array([retention], pa.int16()),
        pa.array([sharing]),
    ], schema=CAMERA_SCHEMA)


SQUARE = {"type": "Polygon", "coordinates": [[[-74, 40.7], [-73.9, 40.7], [-73.9, 40.8], [-74, 40.8], [-74, 40.7]]]}
START = datetime(2026, 10, 20, 10, 0, tzinfo=timezone.utc)
END = datetime(2026, 10, 20, 11, 0, tzinfo=timezone.utc)
S = timedelta(seconds=1)


@pytest.mark.parametrize("installed, removed, retention, now, expected", [
    (END, None, 30, NOW, True),                       # installed at the very end of the window
    (END + S, None, 30, NOW, False),                  # installed just after it
    (START - S, START, 30, NOW, True),                # removed at the very start
    (START - 2 * S, START - S, 30, NOW, False),       # removed just before
    (START - S, None, 30, END + timedelta(days=30), True),       # last footage retained to the second
    (START - S, None, 30, END + timedelta(days=30, microseconds=1), False),  # one microsecond too late
    (START - S, END - S, 30, END - S + timedelta(days=30), True),   # removed: last footage is at removal
    (START - S, END - S, 30, END + timedelta(days=30), False),
    (START - S, None, 180, END + timedelta(days=100), True),
])
def test_window_and_retention_edges(installed, removed, retention, now, expected):
    cams = _one_camera(installed, removed, retention)
    got = CameraIndex.build(cams).resolve(SQUARE, START, END, now=now)
    assert (got.n_owners == 1) is expected
    assert as_dict(got) == brute_force(Dataset.from_tables(cams), SQUARE, START, END, now)


@pytest.mark.parametrize("event, expected", [
    (START, True), (END, True), (START - S, False), (END + S, False), (START + timedelta(minutes=30), True),
])
def test_motion_event_must_fall_inside_the_window(event, expected):
    cams = _one_camera(START - timedelta(days=1), None)
    ev = pa.table({"camera_id": pa.array([1]), "ts": pa.array([event], pa.timestamp("s", tz="UTC"))})
    got = CameraIndex.build(cams, events=ev).resolve(SQUARE, START, END, now=NOW)
    assert (got.n_owners == 1) is expected


def test_window_cut_by_now_and_sharing_and_optout():
    cams = _one_camera(START - timedelta(days=1), None)
    # The window runs past now: only footage up to now can exist, and it does.
    assert CameraIndex.build(cams).resolve(SQUARE, START, END + timedelta(days=1), now=END).n_owners == 1
    assert CameraIndex.build(_one_camera(START - S, None, sharing=False)).resolve(SQUARE, START, END, NOW).n_owners == 0
    owners = pa.table({"owner_id": pa.array([10]), "opted_out": pa.array([True])})
    assert CameraIndex.build(cams, owners).resolve(SQUARE, START, END, now=NOW).n_owners == 0


@pytest.mark.parametrize("start, end, now, message", [
    (datetime(2026, 10, 20, 10), END, NOW, "naive"),
    (END, START, NOW, "not after its start"),
    (START, START, NOW, "not after its start"),
    (START, END, START - S, "after now"),
    ("yesterday", END, NOW, "not an ISO-8601"),
    (1700000000, END, NOW, "expected an aware datetime"),
])
def test_bad_windows_raise(index_plain, start, end, now, message):
    index, _ = index_plain
    with pytest.raises(InvalidTimeWindow, match=message):
        index.resolve(SQUARE, start, end, now=now)


def test_iso_strings_with_offsets_are_accepted(index_plain):
    index, _ = index_plain
    a = index.resolve(SQUARE, "2026-10-20T06:00:00-04:00", "2026-10-20T11:00:00Z", now="2026-11-01T12:00:00+00:00")
    b = index.resolve(SQUARE, START, END, now=NOW)
    assert as_dict(a) == as_dict(b)


def _replace(table: pa.Table, name: str, values) -> pa.Table:
    field = table.schema.field(name)
    return table.set_column(table.schema.get_field_index(name), field, pa.array(values, field.type))


@pytest.mark.parametrize("column, values, message", [
    ("lat", [float("nan")], "NaN, infinite or out-of-range"),
    ("lng", [181.0], "out-of-range"),
    ("camera_id", [5], "duplicated id"),
    ("retention_days", [0], "retention_days must be positive"),
])
def test_bad_camera_rows_are_named(column, values, message):
    cams = data.cameras(50, seed=1)
    col = cams.column(column).to_pylist()
    col[3] = values[0]
    if column == "camera_id":
        col[4] = values[0]
    bad = _replace(cams, column, col)
    with pytest.raises(InvalidData, match=message) as err:
        CameraIndex.build(bad)
    if column != "camera_id":
        assert str(cams.column("camera_id")[3].as_py()) in str(err.value)


def test_unknown_owner_and_unknown_event_camera_and_lossy_times():
    cams = data.cameras(50, seed=2)
    own = data.owners(cams).slice(1)
    with pytest.raises(InvalidData, match="unknown owner"):
        CameraIndex.build(cams, own)
    ev = pa.table({"camera_id": pa.array([999_999]), "ts": pa.array([NOW], pa.timestamp("s", tz="UTC"))})
    with pytest.raises(InvalidData, match="unknown camera id"):
        CameraIndex.build(cams, events=ev)
    fine = cams.set_column(4, "installed_at", cams.column("installed_at").cast(pa.timestamp("ms", tz="UTC")))
    CameraIndex.build(fine)  # whole seconds in ms are fine
    shifted = pa.compute.add(fine.column("installed_at"), pa.scalar(1, pa.duration("ms")))
    lossy = fine.set_column(4, "installed_at", shifted)
    with pytest.raises(InvalidData, match="installed_at"):
        CameraIndex.build(lossy)
    with pytest.raises(InvalidData, match="missing column"):
        CameraIndex.build(cams.drop_columns(["lat"]))


def _in_unit(table: pa.Table, unit: str, pieces: int) -> pa.Table:
    """``table`` with its times in ``unit`` and its rows in ``pieces`` chunks, each a slice of a larger array."""
    out = table
    for name in ("installed_at", "removed_at"):
        out = out.set_column(out.schema.get_field_index(name), name,
                             out.column(name).cast(pa.timestamp(unit, tz="UTC")))
    n = out.num_rows
    cuts = np.linspace(0, n, pieces + 1).astype(int)
    padded = pa.concat_tables([out.slice(0, 1), out, out.slice(0, 1)]).combine_chunks()  # slices keep an offset
    return pa.concat_tables([padded.slice(1 + a, b - a) for a, b in zip(cuts[:-1], cuts[1:])])


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_columns_and_errors_the_same_in_every_time_unit_and_chunking(unit):
    cams = data.cameras(60, seed=5)
    removed = cams.column("removed_at")
    assert 0 < removed.null_count < len(removed)  # both kinds of removal time go through the chunks
    want = camera_columns(cams)
    got = camera_columns(_in_unit(cams, unit, 4))
    for name in ("camera_id", "owner_id", "lat", "lng", "installed", "removed", "retention_days", "sharing"):
        a, b = getattr(want, name), getattr(got, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    events = pa.table({"camera_id": cams.column("camera_id").slice(0, 3),
                       "ts": pa.array([NOW] * 3, pa.timestamp("s", tz="UTC")).cast(pa.timestamp(unit, tz="UTC"))})
    assert event_columns(events)[1].tolist() == event_columns(events.cast(EVENT_SCHEMA))[1].tolist()

    def message(table: pa.Table) -> str:
        with pytest.raises(InvalidData) as err:
            camera_columns(table)
        return str(err.value)

    # one broken rule: named as in seconds; two: the first of the rules' order, whichever the unit
    lat = cams.column("lat").to_numpy().copy()
    lat[7] = np.nan
    bad_lat = cams.set_column(cams.schema.get_field_index("lat"), "lat", pa.array(lat))
    early = cams.column("installed_at").cast(pa.int64()).to_numpy() - 86_400
    bad_removed = cams.set_column(cams.schema.get_field_index("removed_at"), "removed_at",
                                  pa.array(early, pa.int64()).cast(pa.timestamp("s", tz="UTC")))
    both = bad_removed.set_column(bad_removed.schema.get_field_index("lat"), "lat", pa.array(lat))
    for table, expected in ((bad_lat, "out-of-range lat/lng"), (bad_removed, "removed_at before installed_at"),
                            (both, "out-of-range lat/lng")):
        assert message(_in_unit(table, unit, 3)) == message(table)
        assert expected in message(table)
    if unit != "s":
        fine = _in_unit(bad_lat, unit, 3)
        at = fine.schema.get_field_index("installed_at")
        lossy = fine.set_column(at, "installed_at", pa.compute.add(fine.column(at), pa.scalar(1, pa.duration(unit))))
        assert "does not convert exactly" in message(lossy)  # the cast's rule comes before the coordinates'
        ev_lossy = events.set_column(1, "ts", pa.compute.add(events.column("ts"), pa.scalar(1, pa.duration(unit))))
        with pytest.raises(InvalidData, match="does not convert exactly"):
            event_columns(ev_lossy)


@pytest.mark.parametrize("scale", [1, 1_000, 1_000_000, 1_000_000_000, 60])
def test_epoch_seconds_kernel_equals_numpy(scale):
    """The time conversion (a division by each unit's constant) against numpy's floor division and remainder, on
    times before and after 1970 and 2000, whole seconds and not, in range and not, nulls among them."""
    from kernels import index_kernels as K

    rng = np.random.default_rng(scale)
    n = 20_000
    seconds = rng.integers(-3 * 10**9, 4 * 10**9, n)
    raw = seconds * scale + np.where(rng.random(n) < 0.1, rng.integers(1, max(2, scale), n), 0) \
        if scale > 1 else seconds.copy()
    raw[:4] = [0, -scale, scale * 946_684_800, -1]
    valid = rng.random(n) < 0.8
    epoch, null = 946_684_800, 2**31 - 1
    out = np.empty(n, np.int32)
    bad = K.epoch_seconds(raw, valid, scale, epoch, null, out)
    q = np.floor_divide(raw, scale)
    v = q - epoch
    broken = valid & ((np.remainder(raw, scale) != 0) | (((v < -(2**31) + 1) | (v > 2**31 - 2)) & (v != null)))
    assert bad == int(broken.sum()) and 0 < bad < n
    keep = valid & ~broken
    assert np.array_equal(out[keep], v[keep].astype(np.int32)) and np.all(out[~valid] == null)


@pytest.mark.parametrize("typ", [pa.int16(), pa.int64(), pa.uint16(), pa.float64(), pa.bool_()], ids=str)
def test_column_values_equal_arrows_conversion_whatever_the_chunks(typ):
    """The build's columns read from Arrow's buffers (without Arrow's conversion, which imports pandas): slices one
    after another in one buffer, slices out of order, separate arrays, slices at offsets that are not a byte's
    bits (booleans), each equal to ``to_numpy`` in value and dtype; with a null, ``to_numpy`` itself."""
    from dispatcher.index.schema import column_values

    values = np.random.default_rng(7).integers(0, 2 if typ == pa.bool_() else 30_000, 45)
    whole = pa.array(values.astype(bool) if typ == pa.bool_() else values, typ)
    layouts = {
        "one array": [whole],
        "consecutive slices": [whole.slice(k, 9) for k in range(0, 45, 9)],
        "slices out of order": [whole.slice(23, 22), whole.slice(3, 20)],
        "separate arrays": [pa.array(whole.slice(k, 15).to_pylist(), typ) for k in range(0, 45, 15)],
        "odd offsets": [whole.slice(5, 11), whole.slice(1, 3), whole.slice(17, 0), whole.slice(19, 26)],
    }
    for label, chunks in layouts.items():
        col = pa.chunked_array(chunks, typ)
        got, want = column_values(col), col.to_numpy()
        assert got.dtype == want.dtype and np.array_equal(got, want), label
    with_null = pa.chunked_array([pa.array([1, None, 3], pa.int64())])
    assert np.array_equal(column_values(with_null), with_null.to_numpy(), equal_nan=True)


def test_time_columns_convert_alike_whatever_their_chunks_share():
    """A column's chunks converted in one call: slices one after another in one buffer (a Parquet read's layout:
    one view), the same slices out of order, separate arrays, and a chunk of nulls with no values buffer, each as
    Arrow's own cast gives them."""
    from dispatcher.index.schema import EPOCH_UNIX_S, epoch_seconds

    ts = pa.timestamp("ms", tz="UTC")
    whole = pa.array(np.arange(40, dtype=np.int64) * 86_400_000 + 10**12, ts, mask=np.arange(40) % 7 == 3)
    layouts = {
        "consecutive slices": [whole.slice(k, 10) for k in range(0, 40, 10)],
        "slices out of order": [whole.slice(20, 20), whole.slice(0, 20)],
        "separate arrays": [pa.array(whole.slice(k, 10).to_pylist(), ts) for k in range(0, 40, 10)],
        "a chunk of nulls": [whole.slice(0, 15), pa.nulls(5, ts), whole.slice(15, 25)],
    }
    for label, chunks in layouts.items():
        col = pa.chunked_array(chunks, ts)
        out = np.empty(len(col), np.int32)
        assert epoch_seconds(col, -1, out) == 0, label
        want = col.cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
        want = np.where(col.is_null().to_numpy(zero_copy_only=False), -1, np.nan_to_num(want) - EPOCH_UNIX_S)
        assert out.tolist() == want.astype(np.int64).tolist(), label
    lossy = pa.chunked_array([whole.slice(0, 20), pa.array([10**12 + 1], ts), whole.slice(20, 20)])
    assert epoch_seconds(lossy, -1, np.empty(len(lossy), np.int32)) == 1


class Mirror:
    """The same cameras, owners and flags as the index, kept as plain tables for the oracle."""

    def __init__(self, cams: pa.Table, own: pa.Table) -> None:
        self.cams = cams
        self.optout = set(own.filter(own.column("opted_out")).column("owner_id").to_pylist())

    def dataset(self) -> Dataset:
        ids = sorted(set(self.cams.column("owner_id").to_pylist()) | self.optout)
        own = pa.table({"owner_id": pa.array(ids, pa.int64()), "opted_out": pa.array([i in self.optout for i in ids])})
        return Dataset.from_tables(self.cams, own)


def test_live_updates_are_visible_and_survive_merges(world):
    cams, own, _ = world
    rng = np.random.default_rng(3)
    index = CameraIndex.build(cams, own, config=IndexConfig(merge_min_delta=10**9))
    mirror = Mirror(cams, own)
    area = {"type": "Polygon", "coordinates": [[[-74.0, 40.72], [-73.9, 40.72], [-73.95, 40.8], [-74.0, 40.72]]]}
    next_id = 1_000_000
    for step in range(40):
        op = rng.integers(0, 6)
        live = mirror.cams.column("camera_id").to_numpy()
        if op == 0:
            new = data.cameras(int(rng.integers(1, 60)), seed=step, first_id=next_id)
            next_id += new.num_rows
            index.add_cameras(new)
            mirror.cams = pa.concat_tables([mirror.cams, new])
        elif op == 1:
            gone = rng.choice(live, int(rng.integers(1, 30)), replace=False)
            index.remove_cameras(gone.tolist())
            mirror.cams = mirror.cams.filter(~np.isin(live, gone))
        elif op == 2:
            pick = rng.choice(live, 40, replace=False)
            on = bool(rng.integers(0, 2))
            index.set_sharing(pick.tolist(), on)
            col = mirror.cams.column("sharing_enabled").to_numpy(zero_copy_only=False).copy()
            col[np.isin(live, pick)] = on
            mirror.cams = _replace(mirror.cams, "sharing_enabled", col)
        elif op == 3:
            who = rng.choice(mirror.cams.column("owner_id").to_numpy(), 20).tolist()
            out = bool(rng.integers(0, 2))
            index.set_opted_out(who, out)
            mirror.optout = mirror.optout | set(who) if out else mirror.optout - set(who)
        elif op == 4:
            index.merge()
            assert index.pending_updates == 0
        else:
            index.merge(background=True)
        start, end = data.window(rng)
        got = index.resolve(area, start, end, now=NOW)
        want = brute_force(mirror.dataset(), area, start, end, NOW)
        assert as_dict(got) == want, f"step {step}, op {op}"
    index.merge()
    start, end = data.window(rng)
    assert as_dict(index.resolve(area, start, end, now=NOW)) == brute_force(mirror.dataset(), area, start, end, NOW)


def test_bad_updates_change_nothing(world):
    cams, own, _ = world
    index = CameraIndex.build(cams, own)
    before = as_dict(index.resolve(SQUARE, START, END, now=NOW))
    first = cams.column("camera_id")[0].as_py()
    with pytest.raises(UnknownCamera, match="123456789"):
        index.remove_cameras([first, 123456789])
    with pytest.raises(InvalidData, match="already in the index"):
        index.add_cameras(cams.slice(0, 2))
    assert as_dict(index.resolve(SQUARE, START, END, now=NOW)) == before
    index.remove_cameras([first])
    with pytest.raises(UnknownCamera):
        index.set_sharing([first], True)  # removed cameras stay removed


def test_save_open_roundtrip_and_worker_processes(world, tmp_path):
    cams, own, ev = world
    index = CameraIndex.build(cams, own, ev)
    index.add_cameras(data.cameras(20, seed=9, first_id=500_000))
    index.set_opted_out([int(cams.column("owner_id")[0].as_py())])
    area = {"type": "Polygon", "coordinates": [[[-74.0, 40.7], [-73.9, 40.7], [-73.9, 40.8], [-74.0, 40.7]]]}
    start, end = NOW - timedelta(days=20), NOW - timedelta(days=20) + timedelta(hours=6)
    want = as_dict(index.resolve(area, start, end, now=NOW))
    path = index.save(tmp_path / "idx")
    opened = CameraIndex.open(path)
    assert as_dict(opened.resolve(area, start, end, now=NOW)) == want
    # Live updates in one process stay private to it: the files are untouched.
    victim = want and next(iter(want.values()))[0]
    if victim:
        opened.remove_cameras([victim])
        assert victim not in opened.resolve(area, start, end, now=NOW).camera_ids
        assert as_dict(CameraIndex.open(path).resolve(area, start, end, now=NOW)) == want
    code = (
        "import sys, json; from datetime import datetime; from dispatcher.index import CameraIndex;"
        "i = CameraIndex.open(sys.argv[1]);"
        f"r = i.resolve({area!r}, datetime.fromisoformat('{start.isoformat()}'), "
        f"datetime.fromisoformat('{end.isoformat()}'), now=datetime.fromisoformat('{NOW.isoformat()}'));"
        "from kernels import index_kernels as K; st = [K.resolve.stats, K.resolve_table.stats];"
        "print(json.dumps({'r': {int(k): v.tolist() for k, v in r.items()},"
        "'hits': sum(sum(s.cache_hits.values()) for s in st),"
        "'misses': sum(sum(s.cache_misses.values()) for s in st)}))"
    )
    # This process compiled the query's kernels or loaded them, so Numba's cache holds them: the workers load
    # them from it instead of compiling.
    for o in run_workers(code, 3, args=[str(path)]):
        assert {int(k): v for k, v in o["r"].items()} == want
        assert o["hits"] >= 1 and o["misses"] == 0
    with pytest.raises(IndexFormatError, match="already holds an index"):
        index.save(path)
    with pytest.raises(IndexFormatError, match="not an index directory"):
        CameraIndex.open(tmp_path / "nowhere")


def _saved_bytes(path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in path.iterdir() if f.suffix == ".npy"}


def _npy(a: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("first_id", [1, 2**33], ids=["int32 ids", "int64 ids"])
@pytest.mark.parametrize("with_events", [True, False], ids=["events", "no events"])
def test_saved_index_is_byte_identical_to_a_reference_build(tmp_path, first_id, with_events):
    """Every file a saved index holds equals, byte for byte, what the plain reference build (h3-py cells, numpy's
    stable argsort and fancy indexing, the tree level by level in Python: bench.reference.reference_index) gives
    for the same tables: over several of the permutation's buckets, dense places whose nodes split down to the
    last level, opted-out owners, events or none, ids of either width."""
    n = 40_000
    cams = data.cameras(n, seed=11, spread=0.02, first_id=first_id)
    own = data.owners(cams, seed=11, share_out=0.1)
    ev = data.events(cams, seed=11, days=3) if with_events else None
    want = _matches_reference(CameraIndex.build(cams, own, ev).save(tmp_path / "idx"), cams, own, ev)
    leaves = want["tree_nodes"]["k0"] == want["tree_nodes"]["k1"]
    assert int(leaves.sum()) < want["tree_nodes"].shape[0] and want["tree_nodes"]["p1"][leaves].max() > 0


@pytest.mark.bigscale
def test_saved_national_index_is_byte_identical_to_a_reference_build(tmp_path):
    """The same at 1M cameras of the national generator, with motion events (about 30 s)."""
    from dispatcher.synthetic.data import REFERENCE_NOW, generate

    d = generate(1_000_000, seed=5, now=REFERENCE_NOW, event_days=2.0, events_per_day=1.0)
    _matches_reference(CameraIndex.build(d.cameras, d.owners, d.events).save(tmp_path / "idx"), d.cameras, d.owners,
                       d.events)


def _matches_reference(path, cams, own, ev) -> dict[str, np.ndarray]:
    """Assert that the index saved at ``path`` holds the reference build's files, byte for byte; its arrays."""
    import json

    want, n_top = reference_index(Dataset.from_tables(cams, own, ev))
    got = _saved_bytes(path)
    assert sorted(got) == sorted(f"{name}.npy" for name in want)
    for name, a in want.items():
        assert got[f"{name}.npy"] == _npy(a), name
    assert json.loads((path / "meta.json").read_text())["n_top"] == n_top
    return want


def test_saving_an_index_with_nothing_to_merge_keeps_its_base(world, tmp_path):
    """A save (or a snapshot) with no camera in the delta and none removed writes the base as it is: it used to
    rebuild it first (a whole build, 3-4 s of CPU at 10M cameras), to the same arrays. With a camera removed the
    save still merges, and the saved index no longer holds it."""
    cams, own, ev = world
    index = CameraIndex.build(cams, own, ev)
    before = index._state
    index.save(tmp_path / "a")
    index.snapshot(tmp_path / "b")
    assert index._state is before
    assert _saved_bytes(tmp_path / "a") == _saved_bytes(tmp_path / "b")
    gone = int(cams.column("camera_id")[5].as_py())
    index.remove_cameras([gone])
    index.save(tmp_path / "c")
    assert index._state is not before
    saved = np.load(tmp_path / "c" / "col_camera.npy")
    assert saved.shape[0] == cams.num_rows - 1 and gone not in saved.tolist()


def test_recipient_set_views_and_arrow(index_plain):
    index, _ = index_plain
    big = {"type": "Polygon",
           "coordinates": [[[-74.2, 40.5], [-73.7, 40.5], [-73.7, 41.0], [-74.2, 41.0], [-74.2, 40.5]]]}
    rs = index.resolve(big, NOW - timedelta(days=10), NOW - timedelta(days=9), now=NOW)
    assert rs.n_owners > 100
    assert np.all(np.diff(rs.owner_ids) > 0)
    assert rs.counts().sum() == rs.n_cameras
    owner = int(rs.owner_ids[5])
    cams = rs.cameras_of(owner)
    assert cams.base is not None and np.all(np.diff(cams) > 0)
    assert rs.cameras_of(-1).shape[0] == 0
    table = rs.to_arrow()
    assert table.column("owner_id").to_pylist() == rs.owner_ids.tolist()
    assert table.column("camera_ids")[5].as_py() == cams.tolist()
    batches = list(rs.batches(37))
    assert sum(b.n_owners for b in batches) == rs.n_owners
    assert np.array_equal(np.concatenate([b.camera_ids for b in batches]), rs.camera_ids)
    with pytest.raises(ValueError):
        rs.owner_ids[0] = 1
    with pytest.raises(InvalidData, match="batch size must be positive, got 0"):
        next(rs.batches(0))


@pytest.mark.parametrize("levels", [(), (3, 3), (5, 4), (2, 16), (-1, 2)])
def test_bad_index_settings_raise_typed(levels):
    with pytest.raises(InvalidIndexSettings, match="strictly increasing H3 resolutions") as ei:
        IndexConfig(levels=levels)
    assert isinstance(ei.value, DispatchError) and isinstance(ei.value, ValueError)
    with pytest.raises(IndexFormatError, match="unknown index setting"):
        IndexConfig.from_dict({"levles": [1, 2]})


def test_empty_region_and_whole_city(index_plain):
    index, ref = index_plain
    ocean = {"type": "Polygon", "coordinates": [[[-40, 30], [-39, 30], [-39, 31], [-40, 30]]]}
    assert index.resolve(ocean, START, END, now=NOW).n_owners == 0
    city = {"type": "Polygon",
            "coordinates": [[[-74.3, 40.4], [-73.6, 40.4], [-73.6, 41.1], [-74.3, 41.1], [-74.3, 40.4]]]}
    got = index.resolve(Area.parse(city), START, END, now=NOW)
    assert as_dict(got) == brute_force(ref, city, START, END, NOW)


def test_numba_disk_cache_with_concurrent_workers(tmp_path):
    """Worker processes starting together on an empty Numba cache compile, write the cache side by side and
    all answer correctly; a later worker loads the kernels from that cache instead of compiling them. The race
    is run on the area validation's kernels (parsing and coverage), the cheapest of ours to compile twice at
    once (the query's took this test 50 s; test_h3 races the H3 kernels, and the worker processes of
    test_save_open_roundtrip_and_worker_processes check that the query's kernels come from the cache)."""
    code = (
        "import json; from dispatcher.geo.area import Area; from kernels import validation as V;"
        f"a = Area.parse({SQUARE!r}); k = a.kernel_args(); covered = bool(V.covers_area(*k, *k));"
        "vs = [V.parse_area.stats, V.covers_area.stats];"
        "print(json.dumps({'covered': covered, 'hits': sum(sum(v.cache_hits.values()) for v in vs),"
        "'misses': sum(sum(v.cache_misses.values()) for v in vs)}))"
    )
    import os
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}

    cold = run_workers(code, 2, env=env)  # two at once on a 2-core machine: a real race
    assert all(o["covered"] is True for o in cold)  # an area covers itself
    assert any((tmp_path / "numba-cache").rglob("*.nbi")), "no Numba cache index was written"
    assert any(o["misses"] >= 1 for o in cold)  # someone compiled (the others may have found its cache)
    warm = run_workers(code, 1, env=env)[0]
    assert warm["covered"] is True
    assert warm["hits"] >= 2 and warm["misses"] == 0  # both kernels loaded from the cache, not compiled


def test_opt_out_marking_byte_map_and_search_agree():
    from kernels.index_kernels import OPTED_OUT, mark_owners

    rng = np.random.default_rng(0)
    owner = rng.integers(0, 10**6, 200_000).astype(np.int32)
    opted = np.unique(rng.integers(0, 10**6, 5000)).astype(np.int64)
    by_map = np.zeros(owner.shape[0], np.uint8)
    n_map = mark_owners(by_map, owner, opted, OPTED_OUT, True)
    by_search = np.zeros(owner.shape[0], np.uint8)  # an id far away makes the span too wide for a byte map
    n_search = mark_owners(by_search, owner, np.append(opted, 10**12), OPTED_OUT, True)
    want = np.isin(owner, opted)
    assert n_map == n_search == int(want.sum())
    assert np.array_equal(by_map == OPTED_OUT, want) and np.array_equal(by_search, by_map)
    mark_owners(by_map, owner, opted[:10], OPTED_OUT, False)
    assert np.array_equal(by_map == OPTED_OUT, np.isin(owner, opted[10:]))


def test_build_permutation_and_sort_match_numpy():
    """The build's sort (packed keys, unpacked in place into cells and each row's position) and its two-pass
    permutation in buckets of 2**PERMUTE_BITS positions agree with numpy's stable argsort and fancy indexing, over
    several buckets, chunks that cut them, a last bucket part-filled and cells repeated."""
    from dispatcher.index.columns import EMPTY_I32, EMPTY_I64, columns_from
    from dispatcher.index.schema import CameraColumns
    from dispatcher.index.tree import sort_positions
    from kernels import index_kernels as K

    rng = np.random.default_rng(3)
    n = 3 * (1 << K.PERMUTE_BITS) + 123
    lat, lng = rng.uniform(41.6, 42.0, n), rng.uniform(-88.0, -87.5, n)
    cells = h3x.latlng_to_cell(lat, lng, 10)
    cells[::7] = cells[0]  # ties: the sort must keep them in row order
    order = np.argsort(cells, kind="stable")
    inverse, sorted_cells = sort_positions(cells.copy(), 10)
    assert np.array_equal(sorted_cells, cells[order]) and np.array_equal(order[inverse], np.arange(n))
    cols = CameraColumns(camera_id=rng.permutation(n).astype(np.int64) + 10**6, owner_id=rng.integers(0, 99, n),
                         lat=lat, lng=lng, installed=rng.integers(0, 10**8, n).astype(np.int32),
                         removed=rng.integers(10**8, 10**9, n).astype(np.int32),
                         retention_days=rng.integers(1, 365, n).astype(np.uint16), sharing=rng.random(n) < 0.5)
    out = columns_from(cols, inverse, EMPTY_I64, EMPTY_I32, False, np.array([5, 7], np.int64))
    assert np.array_equal(out.xy, np.column_stack([lng, lat])[order])
    assert out.camera.dtype == np.int32 and np.array_equal(out.camera, cols.camera_id[order])
    assert out.owner.dtype == np.int32 and np.array_equal(out.owner, cols.owner_id[order])
    for name, src in (("installed", cols.installed), ("removed", cols.removed), ("retention", cols.retention_days)):
        assert np.array_equal(getattr(out, name), src[order]), name
    opted = np.isin(cols.owner_id[order], [5, 7])
    assert np.array_equal(out.flags, np.where(cols.sharing[order], K.SHARING, 0) | np.where(opted, K.OPTED_OUT, 0))


def test_table_kernel_and_array_kernel_agree(index_with_events):
    """The resolve that takes the base's arrays as a table of addresses answers as the one taking them as arrays
    (the live delta's kernel, with the delta empty); a base whose arrays are not laid out as the table reads them
    (here a strided copy) gets the array kernel."""
    from dispatcher.index.state import Base, State
    from kernels import index_kernels as K

    index, _ = index_with_events
    st = index._state
    assert st.kernel is K.resolve_table
    cols = st.base.cols
    strided = np.empty(2 * cols.n, np.int32)[::2]
    strided[:] = cols.installed
    other = State(Base(replace(cols, installed=strided), st.base.tree), st.delta, st.optout, st.has_events)
    assert other.kernel is K.resolve_base and len(other.args) == 11
    base = (*st.base.tree.kernel_args(), *cols.kernel_args(), cols.camera)
    start, end = NOW - timedelta(days=3), NOW - timedelta(days=2)
    for area in (SQUARE, {"type": "Polygon", "coordinates": [[[-73.99, 40.72], [-73.93, 40.73], [-73.96, 40.78],
                                                              [-73.99, 40.72]]]}):
        args = Area.parse(area).kernel_args()
        t = window_us(start, end, NOW)
        a = st.resolve(args, *t)
        b = K.resolve(*base, *st.delta.kernel_args(), st.delta.camera, *args, *t)
        c = other.resolve(args, *t)
        assert a[1:] == b[1:] == c[1:] and np.array_equal(a[0], b[0]) and np.array_equal(a[0], c[0]) and a[1] > 0
        # every kernel hands its answer back read-only: RecipientSet.unpack makes views of it as it is
        assert not (a[0].flags.writeable or b[0].flags.writeable or c[0].flags.writeable)


@pytest.mark.parametrize("tz", [timezone.utc, timezone(timedelta(hours=-5))])
def test_window_fast_path_equals_general(tz):
    """Three UTC datetimes take a shorter path than other zones and strings; all give the same microseconds."""
    start = datetime(2026, 10, 20, 3, 4, 5, 123456, tzinfo=tz)
    end, now = start + timedelta(hours=3, microseconds=7), start + timedelta(hours=2)
    got = window_us(start, end, now)
    assert got == window_us(start.isoformat(), end.isoformat(), now.isoformat())
    assert got == window_us(pd.Timestamp(start), pd.Timestamp(end), pd.Timestamp(now))  # a datetime subclass
    with pytest.raises(InvalidTimeWindow):
        window_us(end, start, now)
    with pytest.raises(InvalidTimeWindow):
        window_us(now + timedelta(seconds=1), now + timedelta(hours=1), now)


@pytest.mark.parametrize("wide", ["owner", "camera"])
def test_table_kernel_reads_ids_of_either_width(index_plain, wide):
    """The table kernel reads the id columns from their addresses at the width each has (int32 when the ids fit,
    else int64): ids beyond int32 in one column beside narrow ones in the other come out as they are."""
    from dispatcher.index.state import Base, State
    from kernels import index_kernels as K

    index, _ = index_plain
    st = index._state
    cols = st.base.cols
    assert cols.owner.dtype == cols.camera.dtype == np.int32
    widened = getattr(cols, wide).astype(np.int64) * 3 + 2**40  # ascending as before, and distinct
    other = State(Base(replace(cols, **{wide: widened}), st.base.tree), st.delta, st.optout, st.has_events)
    assert other.kernel is K.resolve_table
    big = {"type": "Polygon",
           "coordinates": [[[-74.2, 40.5], [-73.7, 40.5], [-73.7, 41.0], [-74.2, 41.0], [-74.2, 40.5]]]}
    rng = np.random.default_rng(3)
    for area in (SQUARE, big):
        args = Area.parse(area).kernel_args()
        t = window_us(*data.window(rng, 30), NOW)
        packed, n, m = st.resolve(args, *t)
        owners, cameras = packed[:n].copy(), packed[n:n + m].copy()
        if wide == "owner":
            owners = owners * 3 + 2**40
        else:
            cameras = cameras * 3 + 2**40
        got, gn, gm = other.resolve(args, *t)
        assert (gn, gm) == (n, m) and m > 0
        assert np.array_equal(got[:n], owners) and np.array_equal(got[n:n + m], cameras)
        assert np.array_equal(got[n + m:], packed[n + m:])


def test_threads_making_a_new_states_first_resolve_at_once_agree(index_plain):
    """A new state (every update publishes one) binds its compiled entry point on its first resolve; threads making
    that first resolve together, and many after it, each get the answer a lone resolve gets."""
    import threading

    index, _ = index_plain
    rng = np.random.default_rng(5)
    small = {"type": "Polygon", "coordinates": [[[-73.96, 40.74], [-73.94, 40.74], [-73.95, 40.76], [-73.96, 40.74]]]}
    requests = [(small, *data.window(rng, 60)) for _ in range(8)]
    fresh = CameraIndex(replace(index._state), index.config)  # the same arrays, its first call not yet made
    barrier = threading.Barrier(4)
    got: dict[int, list[dict[int, list[int]]]] = {}

    def work(t: int) -> None:
        barrier.wait()
        got[t] = [as_dict(fresh.resolve(a, s, e, now=NOW)) for _ in range(5) for a, s, e in requests]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    want = [as_dict(index.resolve(a, s, e, now=NOW)) for _ in range(5) for a, s, e in requests]
    assert sum(map(bool, want)) > 0
    assert all(got[t] == want for t in range(4))


def _ring(cx: float, cy: float, r: float, n: int) -> list[list[float]]:
    pts = [[cx + r * np.cos(2 * np.pi * k / n), cy + r * 0.8 * np.sin(2 * np.pi * k / n)] for k in range(n)]
    return pts + [pts[0]]


def test_resolve_from_a_polygon_dict_in_one_call_equals_the_parsed_path_and_the_oracle():
    """A GeoJSON Polygon of one ring goes to the compiled resolve as its positions, checked there
    (:func:`kernels.index_kernels.resolve_table_ring`); every other area, and a ring those checks do not certify,
    is parsed first. Both answer as the oracle and as the parsed area; errors are Area.parse's, an area's before
    a window's. Cameras sit on the rings' vertices, and near the unit square (where a flag among the positions
    reads as 0 or 1, so that ring is parsed)."""
    from kernels import index_kernels as K

    rings = [_ring(-73.95, 40.75, 0.01, 9), _ring(-73.93, 40.76, 0.004, 300),  # 300 vertices: GEOS decides
             _ring(0.5, 0.5, 0.2, 12), [[-73.96, 40.74], [-73.94, 40.74], [-73.95, 40.76], [-73.96, 40.74]]]
    corners = np.array([p for r in rings for p in r[:-1]], dtype=np.float64)
    cams = data.cameras(3000, seed=11, extra_points=corners, spread=0.02)
    cams = pa.concat_tables([cams, data.cameras(500, seed=12, cx=0.5, cy=0.5, spread=0.2, first_id=10**6)])
    own = data.owners(cams, seed=11)
    index, ref = CameraIndex.build(cams, own), Dataset.from_tables(cams, own)
    assert index._state.ring_call is not None
    start, end = NOW - timedelta(days=5), NOW - timedelta(days=1)
    xy = np.asarray(rings[0], dtype=np.float64)
    t = window_us(start, end, NOW)
    packed, n, m = index._state.ring_call(xy, *t)  # ... certified, so resolved in the one call
    assert n != K.RING_NOT_CERTIFIED and m > 0
    for ring in rings:
        area = {"type": "Polygon", "coordinates": [ring]}
        got = as_dict(index.resolve(area, start, end, now=NOW))
        assert got == as_dict(index.resolve(Area.parse(area), start, end, now=NOW))
        assert got == brute_force(ref, area, start, end, NOW) and got
    packed, n, m = index._state.ring_call(np.asarray(rings[1], dtype=np.float64), *t)
    assert n == K.RING_NOT_CERTIFIED
    packed, n, m = index._state.ring_call(np.asarray(rings[2], dtype=np.float64), *t)
    assert n == K.RING_NOT_CERTIFIED

    flagged = {"type": "Polygon", "coordinates": [[[True, 0.0], [0.9, 0.0], [0.5, 0.8], [True, 0.0]]]}
    bowtie = {"type": "Polygon", "coordinates": [[[-74, 40.7], [-73.9, 40.8], [-73.9, 40.7], [-74, 40.8],
                                                  [-74, 40.7]]]}
    for bad in (flagged, bowtie, {"type": "Polygon", "coordinates": [rings[0][:-1]]}):
        with pytest.raises(DispatchError) as parsed:
            Area.parse(bad)
        with pytest.raises(type(parsed.value), match=str(parsed.value)[:40].replace("(", r"\(").replace("[", r"\[")):
            index.resolve(bad, start, end, now=NOW)
        with pytest.raises(type(parsed.value)):  # the area is named first, also with a bad window
            index.resolve(bad, end, start, now=NOW)
    with pytest.raises(InvalidTimeWindow):
        index.resolve({"type": "Polygon", "coordinates": [rings[0]]}, end, start, now=NOW)
    with pytest.raises(DispatchError):  # more vertices than the index allows: parsed, and refused
        CameraIndex(index._state, replace(index.config, max_vertices=5)).resolve(
            {"type": "Polygon", "coordinates": [rings[0]]}, start, end, now=NOW)

    # with cameras in the live delta there is no table: the ring is parsed, and the delta's cameras count
    added = data.cameras(50, seed=13, first_id=5 * 10**6)
    index.add_cameras(added)
    assert index._state.ring_call is None
    area = {"type": "Polygon", "coordinates": [rings[0]]}
    both = Dataset.from_tables(pa.concat_tables([cams, added]), own)
    assert as_dict(index.resolve(area, start, end, now=NOW)) == brute_force(both, area, start, end, NOW)

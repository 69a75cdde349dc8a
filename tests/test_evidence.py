"""The evidence store on both backends (the embedded SQLite file and the test session's redis-server), behind a
real pipeline that dispatched a real request: ingest and its refusals, shares and every refusal (another owner's
clip, a clip outside the window, a non-recipient, a request not approved), idempotent shares, tampered bytes,
what the agency's custody records hold, and public posts placed and found through H3, checked against h3-py and
shapely."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

import h3
import h3ronpy.vector as hv
import numpy as np
import pytest
import shapely
from shapely.geometry import box

from dispatcher.api import Backend, open_backend
from dispatcher.errors import (
    EvidenceTampered,
    InvalidClip,
    InvalidData,
    InvalidResolution,
    ShareRefused,
    UnknownCamera,
    UnknownClip,
    UnknownRequest,
)
from dispatcher.evidence import COARSEST_POST_RES, POST_RES, EvidenceStore, Share, SharedClip, jurisdiction_ranges
from dispatcher.evidence.redis import RedisEvidence
from dispatcher.evidence.sqlite import SqliteEvidence
from dispatcher.index.camera_index import CameraIndex
from dispatcher.workflow.pipeline import Dispatch, Submit
from dispatcher.workflow.policy import Policy
from dispatcher.workflow.privacy import PSEUDONYM_RE, SharedClips
from tests import data
from tests.test_api import _registry, body
from tests.video_requests import LAT0, LNG0, NOW, request

RID = "il-chicago:r1"
V = request()
IN = (V.start + timedelta(minutes=30), V.start + timedelta(minutes=31))  # inside the request's window
MP4 = "video/mp4"


@pytest.fixture(scope="module")
def index() -> CameraIndex:
    cams = data.cameras(3_000, seed=11, cx=LNG0, cy=LAT0, spread=0.01)
    idx = CameraIndex.build(cams, data.owners(cams, seed=11, share_out=0.0))
    idx.resolve(V.area, V.start, V.end, now=NOW)
    return idx


@dataclass
class World:
    backend: Backend
    ev: EvidenceStore
    recipients: list[int]           # owners the request was dispatched to
    camera_of: dict[int, int]        # a camera of each owner
    outsider: int                    # an owner the request did not reach
    path: str  # the SQLite file (the sqlite backend)

    def tamper(self, clip_id: str, data: bytes) -> None:
        if isinstance(self.ev, SqliteEvidence):
            self.ev._db.execute("UPDATE clips SET data=? WHERE clip_id=?", (data, clip_id))
        else:
            assert isinstance(self.ev, RedisEvidence)
            self.ev.r.hset(self.ev.k.clip(clip_id), "data", data)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def world(request: pytest.FixtureRequest, index: CameraIndex, tmp_path) -> Iterator[World]:
    where = ({"store": tmp_path / "geodispatch.sqlite"} if request.param == "sqlite"
             else {"redis_url": request.getfixturevalue("redis_server").url})
    b = open_backend(index, _registry(), Policy(owner_cap=1000, rate_limit=1000), clock=lambda: NOW,
                     **where)  # type: ignore[arg-type]
    at = {"submitted_at": NOW.isoformat()}
    b.pipeline.run([Submit({**body(), **at}, agency="il-chicago"),
                    Submit({**body(request_id="r2"), **at}, agency="il-chicago")], NOW)
    b.workflow.approve(RID, "rev", NOW)
    assert b.pipeline.run([Dispatch(RID)], NOW)[0].status == "dispatched"
    rs = index.resolve(V.area, V.start, V.end, now=NOW)
    recipients = [int(o) for o in rs.owner_ids]
    assert len(recipients) >= 3 and all(b.workflow.store.was_notified(RID, o) for o in recipients)
    camera_of = {o: int(rs.cameras_of(o)[0]) for o in recipients}
    cams = data.cameras(3_000, seed=11, cx=LNG0, cy=LAT0, spread=0.01).to_pydict()
    outsider = next(o for c, o in zip(cams["camera_id"], cams["owner_id"], strict=True) if o not in camera_of)
    camera_of[outsider] = next(c for c, o in zip(cams["camera_id"], cams["owner_id"], strict=True) if o == outsider)
    assert b.evidence is not None
    try:
        yield World(b, b.evidence, recipients, camera_of, outsider, str(tmp_path / "geodispatch.sqlite"))
    finally:
        b.close()


def _add(w: World, owner: int, start: datetime = IN[0], end: datetime = IN[1], payload: bytes | None = None):
    return w.ev.add_clip(owner, w.camera_of[owner], start, end, payload or f"clip of {owner} {start}".encode(), MP4)


def _share(w: World, rid: str, owner: int, clip_ids: list[str], now: datetime = NOW) -> list[Share]:
    """A share as the resident's page makes it: the custody records, then the answer (which keeps the pseudonym)."""
    got = w.ev.share(rid, owner, clip_ids, now)
    w.backend.workflow.share(rid, owner, clip_ids, now)
    return got


def test_clips_are_stored_with_their_sha256_and_listed_by_owner_and_window(world: World) -> None:
    a, b = world.recipients[:2]
    early = _add(world, a, NOW - timedelta(days=2), NOW - timedelta(days=2) + timedelta(hours=1))
    mine = _add(world, a, payload=b"\x00\x01" * 5000)
    theirs = _add(world, b)
    assert mine.sha256 == hashlib.sha256(b"\x00\x01" * 5000).hexdigest() and mine.size == 10_000
    assert (mine.owner_id, mine.camera_id, mine.media_type) == (a, world.camera_of[a], MP4)
    assert mine.start == IN[0] and mine.start.tzinfo is not None
    assert world.ev.clips_of(a, V.start, V.end) == [mine]
    assert world.ev.clips_of(a, NOW - timedelta(days=3), NOW) == [early, mine]
    # overlap, not containment: a window that ends inside the clip finds it
    assert world.ev.clips_of(a, IN[0] - timedelta(hours=1), IN[0] + timedelta(seconds=1)) == [mine]
    assert world.ev.clips_of(b, V.start, V.end) == [theirs]
    assert world.ev.clips_of(a, NOW - timedelta(days=1), NOW - timedelta(hours=6)) == []


_INGEST_REFUSALS = [
    ({"camera": "another owner's"}, InvalidClip),
    ({"camera": 10**12}, UnknownCamera),
    ({"data": b""}, InvalidClip),
    ({"data": b"x" * 2049}, InvalidClip),           # over the store's limit (2 KiB here)
    ({"data": "text"}, InvalidClip),
    ({"start": IN[0].replace(tzinfo=None)}, InvalidClip),
    ({"end": IN[0]}, InvalidClip),                  # not after start
    ({"end": IN[0] + timedelta(days=2)}, InvalidClip),
    ({"media_type": "text/html"}, InvalidClip),
    ({"media_type": "video/mp4\r\nX: y"}, InvalidClip),
    ({"owner": "1"}, InvalidClip),
]


def test_ingest_refusals_are_typed_and_store_nothing(world: World) -> None:
    a, b = world.recipients[:2]
    ev = world.ev
    small = (SqliteEvidence(world.path, ev.cameras, ev.requests, max_clip_bytes=2048) if isinstance(ev, SqliteEvidence)
             else RedisEvidence(ev.r, ev.cameras, ev.requests, ev.k, ev.settings, max_clip_bytes=2048))
    for change, error in _INGEST_REFUSALS:
        args = {"owner": a, "camera": world.camera_of[a], "start": IN[0], "end": IN[1], "data": b"x" * 2048,
                "media_type": MP4, **change}
        if args["camera"] == "another owner's":
            args["camera"] = world.camera_of[b]
        with pytest.raises(error):
            small.add_clip(args["owner"], args["camera"], args["start"], args["end"], args["data"],
                           args["media_type"])
    assert issubclass(InvalidClip, ValueError) and issubclass(UnknownCamera, KeyError)
    assert ev.clips_of(a, NOW - timedelta(days=3), NOW) == [] and ev.clips_of(b, NOW - timedelta(days=3), NOW) == []
    assert small.add_clip(a, world.camera_of[a], *IN, b"x" * 2048, MP4).size == 2048  # the limit itself is fine


def test_share_gives_custody_records_and_the_checked_bytes(world: World) -> None:
    a, b = world.recipients[:2]
    c1, c2 = _add(world, a, payload=b"one"), _add(world, a, IN[0] + timedelta(minutes=5), IN[1] + timedelta(minutes=5),
                                                  payload=b"two")
    shares = _share(world, RID, a, [c1.clip_id, c2.clip_id])
    assert [s.clip_id for s in shares] == [c1.clip_id, c2.clip_id] and {s.request_id for s in shares} == {RID}
    got = sorted(world.ev.shared_for(RID), key=lambda g: g.start)  # by time shared, then share id
    assert [g.share_id for g in got] == [s.share_id for s in shares]
    assert [(g.sha256, g.size, g.start, g.end) for g in got] == [(c.sha256, c.size, c.start, c.end) for c in (c1, c2)]
    assert all(g.shared_at == NOW and g.request_id == RID for g in got)
    assert len({g.shared_by for g in got}) == 1  # one resident, one reference within the request
    record, raw = world.ev.open_shared(RID, shares[1].share_id)
    assert raw == b"two" and hashlib.sha256(raw).hexdigest() == record.sha256 == c2.sha256

    # again, later, with one more: the first two keep their records, nothing is duplicated
    c3 = _add(world, a, payload=b"three")
    again = _share(world, RID, a, [c2.clip_id, c3.clip_id, c2.clip_id], NOW + timedelta(hours=1))
    assert again[0] == shares[1] and again[1].shared_at == NOW + timedelta(hours=1) and len(again) == 2
    assert len(world.ev.shared_for(RID)) == 3

    other = _share(world, RID, b, [_add(world, b).clip_id])[0]
    theirs = next(r for r in world.ev.shared_for(RID) if r.share_id == other.share_id)
    assert theirs.shared_by != got[0].shared_by  # another resident, another reference


def test_share_refusals_change_nothing(world: World) -> None:
    a, b = world.recipients[:2]
    mine, theirs = _add(world, a), _add(world, b)
    straddling = _add(world, a, V.start - timedelta(minutes=1), V.start + timedelta(minutes=1))
    after = _add(world, a, V.end, V.end + timedelta(seconds=1))
    outsiders = _add(world, world.outsider)
    cases = [
        (RID, a, [mine.clip_id, theirs.clip_id], ShareRefused),       # one clip of another owner: all refused
        (RID, a, [mine.clip_id, "f" * 24], ShareRefused),              # a clip that does not exist
        (RID, a, [straddling.clip_id], ShareRefused),                  # recorded partly before the window
        (RID, a, [after.clip_id], ShareRefused),                       # recorded after it
        (RID, world.outsider, [outsiders.clip_id], ShareRefused),      # not a recipient of the request
        ("il-chicago:r2", a, [mine.clip_id], ShareRefused),            # submitted, not approved
        ("il-chicago:nosuch", a, [mine.clip_id], UnknownRequest),
        (RID, a, [], InvalidClip), (RID, a, mine.clip_id, InvalidClip), (RID, a, ["x"] * 101, InvalidClip),
        (RID, a, [7], InvalidClip), (RID, "a", [mine.clip_id], InvalidClip), (RID, a, 5, InvalidClip),
    ]
    for rid, owner, clips, error in cases:
        with pytest.raises(error):
            world.ev.share(rid, owner, clips, NOW)  # type: ignore[arg-type]
    with pytest.raises(InvalidClip):
        world.ev.share(RID, a, [mine.clip_id], NOW.replace(tzinfo=None))
    assert world.ev.shared_for(RID) == [] and world.ev.shared_for("il-chicago:r2") == []
    world.backend.workflow.reject("il-chicago:r2", "rev", NOW, "too broad")
    with pytest.raises(ShareRefused, match="rejected"):
        world.ev.share("il-chicago:r2", a, [mine.clip_id], NOW)
    assert issubclass(ShareRefused, PermissionError)
    # the boundary itself is inside
    edge = _add(world, a, V.start, V.end)
    assert len(_share(world, RID, a, [edge.clip_id])) == 1


def test_tampered_bytes_are_never_served(world: World) -> None:
    a = world.recipients[0]
    clip = _add(world, a, payload=b"original footage")
    share = _share(world, RID, a, [clip.clip_id])[0]
    world.tamper(clip.clip_id, b"Original footage")  # same size, other bytes
    with pytest.raises(EvidenceTampered, match="SHA-256"):
        world.ev.open_shared(RID, share.share_id)
    world.tamper(clip.clip_id, b"original footage, extended")
    with pytest.raises(EvidenceTampered):
        world.ev.open_shared(RID, share.share_id)
    with pytest.raises(UnknownClip):
        world.ev.open_shared("il-chicago:r2", share.share_id)  # a share is found only under its own request
    assert issubclass(EvidenceTampered, OSError)


def test_the_agencys_records_name_no_owner_camera_or_place(world: World) -> None:
    a, b = world.recipients[:2]
    clip_of = {o: _add(world, o).clip_id for o in (a, b)}
    share_of = {o: _share(world, RID, o, [clip_of[o]])[0].share_id for o in (a, b)}
    records = [r.to_json() for r in world.ev.shared_for(RID)]
    assert {f.name for f in fields(SharedClip)} == {"share_id", "request_id", "sha256", "size", "media_type",
                                                    "start", "end", "shared_at", "shared_by"}
    assert all(set(r) == {"share_id", "request_id", "sha256", "size", "media_type", "recorded_start",
                          "recorded_end", "shared_at", "shared_by"} for r in records)
    secrets_of = {str(v) for o in (a, b) for v in (o, world.camera_of[o])}
    for r in records:
        assert not secrets_of & {str(v) for v in r.values()}
        assert not any(s in r["share_id"] for s in secrets_of if len(s) > 3)
    # one reference for one shared clip: the agency's view lists each under its custody record's share id (the
    # path of its bytes), and names its sharer as the record does
    store, wf = world.backend.workflow.store, world.backend.workflow
    views = world.ev.views()

    def view_names(rid: str) -> dict[str, str]:
        """share id -> the pseudonym the agency's view gives its sharer"""
        return {c: s.pseudonym for s in views.agency_view(wf, rid).shared for c in s.share_ids}
    names = view_names(RID)
    by_share = {r["share_id"]: r["shared_by"] for r in records}
    assert names == by_share and set(names) == set(share_of.values())
    assert {f.name for f in fields(SharedClips)} == {"pseudonym", "share_ids"}
    for sid in names:
        assert world.ev.open_shared(RID, sid)[0].share_id == sid
    assert len(set(by_share.values())) == 2 and all(PSEUDONYM_RE.fullmatch(n) for n in by_share.values())
    # per request: the same resident sharing for another request gets that request's name, given apart
    world.backend.workflow.approve("il-chicago:r2", "rev", NOW)
    assert world.backend.pipeline.run([Dispatch("il-chicago:r2")], NOW)[0].status == "dispatched"
    c2 = _add(world, a).clip_id
    _share(world, "il-chicago:r2", a, [c2])
    (other,) = world.ev.shared_for("il-chicago:r2")
    assert view_names("il-chicago:r2") == {other.share_id: other.shared_by}
    assert store.pseudonyms("il-chicago:r2", [a], lambda *_: {}) == {a: other.shared_by}  # kept with the answer
    # the record type itself refuses an identifying value
    r0 = world.ev.shared_for(RID)[0]
    for bad in (str(a), f"owner-{a}", "0" * 23 + "G", "a" * 24, f"Neighbor {a}x"):
        with pytest.raises(InvalidData):
            SharedClip(r0.share_id, RID, r0.sha256, r0.size, r0.media_type, r0.start, r0.end, r0.shared_at, bad)


# -- public posts ---------------------------------------------------------------------------------------------

def _h3o(lat: float, lng: float, res: int) -> int:
    return int(hv.coordinates_to_cells(np.asarray([lat]), np.asarray([lng]), res)[0].as_py())


def test_posts_are_placed_at_a_coarse_cell_matching_h3_py(world: World, index: CameraIndex) -> None:
    a = world.recipients[0]
    clip = _add(world, a)
    _, lng, lat = index.camera(world.camera_of[a])
    post = world.ev.post(a, clip.clip_id, NOW)
    # the cells against h3ronpy (Rust h3o): independent of the h3-py calls that place them
    assert post.res == POST_RES and post.cell == _h3o(lat, lng, POST_RES)
    assert post.sha256 == clip.sha256 and post.posted_at == NOW
    assert world.ev.post(a, clip.clip_id, NOW + timedelta(hours=1)) == post  # posted once
    coarse = world.ev.post(a, _add(world, a, payload=b"coarse").clip_id, NOW, res=COARSEST_POST_RES)
    assert coarse.cell == _h3o(lat, lng, COARSEST_POST_RES)
    assert h3.cell_to_parent(h3.int_to_str(post.cell), COARSEST_POST_RES) == h3.int_to_str(coarse.cell)
    assert "lat" not in str(post.to_json()) and set(post.to_json()) == {
        "post_id", "cell", "res", "recorded_start", "recorded_end", "posted_at", "sha256", "size", "media_type"}
    got, raw = world.ev.open_post(post.post_id)
    assert got == post and hashlib.sha256(raw).hexdigest() == post.sha256
    with pytest.raises(UnknownClip):
        world.ev.post(world.recipients[1], clip.clip_id, NOW)  # another owner's clip
    for res in (POST_RES + 1, COARSEST_POST_RES - 1, 8.0, "8"):
        with pytest.raises(InvalidResolution):
            world.ev.post(a, clip.clip_id, NOW, res=res)  # type: ignore[arg-type]


def test_a_clip_shared_and_posted_links_the_two_by_its_footage_alone(world: World) -> None:
    """A clip shared for a request and posted publicly (README, "A clip both shared and posted"): the agency's
    custody record and the public post have in common only what the footage is (its bytes, and so its SHA-256,
    size, media type and recorded time); the post names no request, share or pseudonym, and its id is apart from
    the share's."""
    a = world.recipients[0]
    clip = _add(world, a, payload=b"the same footage")
    (share,) = _share(world, RID, a, [clip.clip_id])
    post = world.ev.post(a, clip.clip_id, NOW + timedelta(hours=1))  # posted later: its own moment
    custody, public = world.ev.shared_for(RID)[0].to_json(), post.to_json()
    assert {k for k, v in custody.items() if v in public.values()} == {
        "sha256", "size", "media_type", "recorded_start", "recorded_end"}
    assert not {custody["share_id"], custody["shared_by"], custody["request_id"], RID} & {str(v) for v in
                                                                                         public.values()}
    assert post.post_id != share.share_id
    assert world.ev.open_shared(RID, share.share_id)[1] == world.ev.open_post(post.post_id)[1] == b"the same footage"


def test_posts_in_a_jurisdiction_and_window_equal_the_h3_py_and_shapely_oracle(world: World,
                                                                                index: CameraIndex) -> None:
    rng = np.random.default_rng(5)
    owners = list(world.camera_of)
    posts = []
    for i in range(40):
        o = owners[i % len(owners)]
        start = NOW - timedelta(hours=int(rng.integers(1, 72)))
        clip = world.ev.add_clip(o, world.camera_of[o], start, start + timedelta(minutes=2), f"p{i}".encode(), MP4)
        posts.append(world.ev.post(o, clip.clip_id, NOW, res=int(rng.choice([8, 8, 7, 6]))))
    # half of the cameras' spread, and a far-away city
    west = box(LNG0 - 0.05, LAT0 - 0.05, LNG0, LAT0 + 0.05)
    for jur in (west, west.buffer(0.004), box(-100.0, 30.0, -99.9, 30.1), _registry().get("il-chicago").jurisdiction):
        for w0, w1 in [(NOW - timedelta(days=4), NOW), (NOW - timedelta(hours=30), NOW - timedelta(hours=10))]:
            want = sorted(p.post_id for p in posts
                          if jur.contains(shapely.Point(h3.cell_to_latlng(h3.int_to_str(p.cell))[::-1]))
                          and p.end >= w0 and p.start <= w1)
            got = world.ev.posts_in(jur, w0, w1)
            assert sorted(p.post_id for p in got) == want
            assert [p.start for p in got] == sorted(p.start for p in got)
    assert 0 < len(world.ev.posts_in(west, NOW - timedelta(days=4), NOW)) < len(posts)
    assert len(world.ev.posts_in(west, NOW - timedelta(days=4), NOW, limit=3)) == 3


@pytest.mark.parametrize("res", [5, 6, 8])
def test_jurisdiction_ranges_hold_exactly_h3_pys_polyfill(res: int) -> None:
    jur = shapely.Point(LNG0, LAT0).buffer(0.15).union(box(LNG0, LAT0, LNG0 + 0.4, LAT0 + 0.03))
    lo, hi = jurisdiction_ranges(jur, res)
    cells = {h3.str_to_int(c) for c in h3.geo_to_cells(jur, res)}
    assert cells and len(lo) <= len(cells)

    def inside(c: int) -> bool:
        k = np.searchsorted(lo, np.uint64(c), side="right") - 1
        return bool(k >= 0 and c <= int(hi[k]))
    assert all(inside(c) for c in cells)
    around = {h3.str_to_int(n) for c in cells for n in h3.grid_disk(h3.int_to_str(c), 2)} - cells
    assert around and not any(inside(c) for c in around)
    assert jurisdiction_ranges(jur, res)[0] is lo  # cached per geometry


def test_the_store_lives_in_the_workflow_file(world: World) -> None:
    """Evidence written by one process is there for the next: the same file or Redis, the same secret."""
    a = world.recipients[0]
    clip = _add(world, a)
    share = _share(world, RID, a, [clip.clip_id])[0]
    ev = world.ev
    again = (SqliteEvidence(world.path, ev.cameras, ev.requests)
             if isinstance(ev, SqliteEvidence) else RedisEvidence(ev.r, ev.cameras, ev.requests, ev.k, ev.settings))
    assert again.clips_of(a, V.start, V.end) == [clip]
    assert again.share(RID, a, [clip.clip_id], NOW + timedelta(days=1)) == [share]
    assert again.shared_for(RID) == world.ev.shared_for(RID)


@pytest.mark.redis
def test_an_agencys_redis_user_cannot_reach_the_evidence_keys(redis_server, index: CameraIndex) -> None:
    """Deployed with per-agency Redis ACL users (issue 14), an agency's connection gets NOPERM on every evidence
    key: clips and their bytes, an owner's clip list, custody records, posts, the secret."""
    import redis

    from dispatcher.service.acl import set_agency
    from dispatcher.workflow.store import RedisStore

    with redis_server.client() as admin:
        set_agency(admin, "user-chicago", "pw-chicago-0123456789", "il-chicago")
        store = RedisStore(admin)
        ev = RedisEvidence(admin, index, store)
        rs = index.resolve(V.area, V.start, V.end, now=NOW)
        owner = int(rs.owner_ids[0])
        clip = ev.add_clip(owner, int(rs.cameras_of(owner)[0]), *IN, b"bytes", MP4)
        ev.post(owner, clip.clip_id, NOW)
        k = ev.k
        keys = [k.clip(clip.clip_id), k.owner_clips(owner), k.shares(RID), k.posts, k.post_cells(POST_RES),
                k.posts_due, k.evidence_secret]
        assert all(admin.exists(x) for x in keys if x != k.shares(RID))
    agency = redis.Redis(host="127.0.0.1", port=redis_server.port, username="user-chicago",
                         password="pw-chicago-0123456789")
    try:
        for key in keys:
            with pytest.raises(redis.exceptions.NoPermissionError):
                agency.type(key)
        with pytest.raises(redis.exceptions.NoPermissionError):
            RedisEvidence(agency, index, RedisStore(agency)).clips_of(owner, V.start, V.end)
    finally:
        agency.close()


# -- retention ------------------------------------------------------------------------------------------------

@dataclass
class Timed:
    """An evidence store on the world's storage with a short retention and a clock the test moves. Moving it moves
    Redis too: every evidence key's time left is shortened by as much (a key left none is gone), as the same time
    passing would; on SQLite, ``expire_records`` runs at the new time."""

    world: World
    ev: SqliteEvidence | RedisEvidence
    now: list[datetime]

    def advance(self, by: timedelta) -> None:
        self.now[0] += by
        if isinstance(self.ev, SqliteEvidence):
            self.ev.expire_records(self.now[0])
            return
        r, ms = self.ev.r, int(by / timedelta(milliseconds=1))
        prefix = self.ev.k.clip("x")[: -len("clip:x")]
        for key in list(r.scan_iter(match=prefix + "*")):
            left = r.pttl(key)
            if left > 0:
                r.delete(key) if left <= ms else r.pexpire(key, left - ms)

    def ttl_s(self, key: str) -> float:
        assert isinstance(self.ev, RedisEvidence)
        return float(self.ev.r.pttl(key)) / 1000


def _timed(w: World, retention: timedelta, now: datetime) -> Timed:
    clock = [now]
    ev = w.ev
    timed = (SqliteEvidence(w.path, ev.cameras, ev.requests, retention=retention, clock=lambda: clock[0])
             if isinstance(ev, SqliteEvidence) else
             RedisEvidence(ev.r, ev.cameras, ev.requests, ev.k, ev.settings, retention=retention,
                           clock=lambda: clock[0]))
    return Timed(w, timed, clock)


DAY = timedelta(days=1)
M = timedelta(seconds=30)  # a margin: far more than a test's own steps take on a loaded machine


def _unsplit(t: Timed, rids: Sequence[str]) -> None:
    """Every custody record shown serves its bytes (a share never outlives them)."""
    for rid in rids:
        for rec in t.ev.shared_for(rid):
            assert hashlib.sha256(t.ev.open_shared(rid, rec.share_id)[1]).hexdigest() == rec.sha256


def test_an_unshared_clip_goes_retention_after_its_end(world: World) -> None:
    a = world.recipients[0]
    t = _timed(world, 10 * DAY, IN[1] + DAY)
    first = t.ev.add_clip(a, world.camera_of[a], *IN, b"first", MP4)
    later = t.ev.add_clip(a, world.camera_of[a], IN[0] + 3 * DAY, IN[1] + 3 * DAY, b"later", MP4)
    if isinstance(t.ev, RedisEvidence):  # the expiry is set at ingest, from the recorded end
        assert 9 * DAY.total_seconds() - 5 < t.ttl_s(t.ev.k.clip(first.clip_id)) <= 9 * DAY.total_seconds() + 1
        assert 12 * DAY.total_seconds() - 5 < t.ttl_s(t.ev.k.owner_clips(a)) <= 12 * DAY.total_seconds() + 1
    everything = (IN[0] - DAY, IN[1] + 5 * DAY)
    t.advance(9 * DAY - M)
    assert t.ev.clips_of(a, *everything) == [first, later]
    t.advance(2 * M)
    assert t.ev.clips_of(a, *everything) == [later]
    assert t.ev.clips_of(a, *everything) == [later]  # the owner's list forgot it too
    with pytest.raises(InvalidClip, match="retention"):  # recorded longer ago than the retention: not kept
        t.ev.add_clip(a, world.camera_of[a], IN[0] - 20 * DAY, IN[1] - 20 * DAY, b"old", MP4)
    t.advance(3 * DAY)
    assert t.ev.clips_of(a, *everything) == []
    if isinstance(t.ev, RedisEvidence):
        assert not t.ev.r.exists(t.ev.k.clip(first.clip_id), t.ev.k.clip(later.clip_id), t.ev.k.owner_clips(a))
    else:
        assert t.ev._db.execute("SELECT COUNT(*) FROM clips").fetchone()[0] == 0


def test_a_share_and_its_bytes_go_together_and_a_second_share_keeps_the_clip(world: World) -> None:
    a = world.recipients[0]
    r2 = "il-chicago:r2"
    world.backend.workflow.approve(r2, "rev", NOW)
    assert world.backend.pipeline.run([Dispatch(r2)], NOW)[0].status == "dispatched"
    t0 = IN[1] + 2 * M
    t = _timed(world, 10 * DAY, t0)
    clip = t.ev.add_clip(a, world.camera_of[a], *IN, b"evidence", MP4)

    def share(rid: str) -> Share:
        (s,) = t.ev.share(rid, a, [clip.clip_id], t.now[0])
        world.backend.workflow.share(rid, a, [clip.clip_id], t.now[0])
        return s
    first = share(RID)
    t.advance(3 * DAY)
    second = share(r2)
    if isinstance(t.ev, RedisEvidence):  # the bytes are held exactly as long as the last share
        assert 10 * DAY.total_seconds() - 5 < t.ttl_s(t.ev.k.clip(clip.clip_id)) <= 10 * DAY.total_seconds() + 1
    t.advance(7 * DAY - M)  # the first share's last moments, beyond the clip's own period
    assert [s.share_id for s in t.ev.shared_for(RID)] == [first.share_id]
    _unsplit(t, [RID, r2])
    t.advance(2 * M)  # the first share is gone; the second keeps the clip
    assert t.ev.shared_for(RID) == []
    with pytest.raises(UnknownClip):
        t.ev.open_shared(RID, first.share_id)
    assert t.ev.open_shared(r2, second.share_id)[1] == b"evidence"
    assert t.ev.clips_of(a, *IN) == [clip]
    _unsplit(t, [RID, r2])
    again = share(RID)  # re-made while the clip is stored: the same share, a new record
    assert again.share_id == first.share_id and again.shared_at == t.now[0] > first.shared_at
    assert [s.shared_at for s in t.ev.shared_for(RID)] == [t.now[0]]
    t.advance(10 * DAY + M)
    assert t.ev.shared_for(RID) == t.ev.shared_for(r2) == [] and t.ev.clips_of(a, *IN) == []
    for rid, sid in ((RID, first.share_id), (r2, second.share_id)):
        with pytest.raises(UnknownClip):
            t.ev.open_shared(rid, sid)
    if isinstance(t.ev, RedisEvidence):
        assert not t.ev.r.exists(t.ev.k.clip(clip.clip_id), t.ev.k.shares(RID), t.ev.k.shares(r2))
    else:
        db = t.ev._db
        assert db.execute("SELECT (SELECT COUNT(*) FROM clips) + (SELECT COUNT(*) FROM shares)").fetchone()[0] == 0
    with pytest.raises(ShareRefused):  # gone: nothing to share any more
        t.ev.share(RID, a, [clip.clip_id], t.now[0])


def test_posts_expire_and_a_withdrawn_post_leaves_the_index_at_once(world: World) -> None:
    a, b = world.recipients[:2]
    jur = _registry().get("il-chicago").jurisdiction
    t0 = IN[1] + 2 * M
    t = _timed(world, 10 * DAY, t0)
    c1 = t.ev.add_clip(a, world.camera_of[a], *IN, b"one", MP4)
    c2 = t.ev.add_clip(a, world.camera_of[a], IN[0] + M, IN[1] + M, b"two", MP4)
    t.advance(2 * DAY)
    p1, p2 = t.ev.post(a, c1.clip_id, t.now[0]), t.ev.post(a, c2.clip_id, t.now[0], res=6)
    assert [p.post_id for p in t.ev.posts_in(jur, V.start, V.end)] == [p1.post_id, p2.post_id]

    def indexed() -> set[str]:
        """Post ids in the cell index (the Redis sorted sets; SQLite's index is the posts table's)"""
        if isinstance(t.ev, SqliteEvidence):
            return {r[0] for r in t.ev._db.execute("SELECT post_id FROM posts")}
        k = t.ev.k
        return {m.decode().rsplit(":", 1)[1] for res in range(COARSEST_POST_RES, POST_RES + 1)
                for key in (k.post_cells(res), k.posts_due) for m in t.ev.r.zrange(key, 0, -1)} | \
            {f.decode() for f in t.ev.r.hkeys(k.posts)}
    assert indexed() == {p1.post_id, p2.post_id}
    for who, post_id in ((b, p1.post_id), (a, "0" * 24), (a, 5)):
        with pytest.raises(UnknownClip):  # another resident's post, or none: refused alike, nothing changed
            t.ev.withdraw(who, post_id)  # type: ignore[arg-type]
    assert indexed() == {p1.post_id, p2.post_id}
    t.ev.withdraw(a, p1.post_id)
    assert indexed() == {p2.post_id}
    assert [p.post_id for p in t.ev.posts_in(jur, V.start, V.end)] == [p2.post_id]
    with pytest.raises(UnknownClip):
        t.ev.open_post(p1.post_id)
    # the withdrawn post's clip falls back to its own period; the posted one is held by its post
    t.advance(8 * DAY)
    assert t.ev.clips_of(a, *IN) == [c2]
    assert [p.post_id for p in t.ev.posts_in(jur, V.start, V.end)] == [p2.post_id]
    t.advance(2 * DAY + M)  # the post's period ends
    assert t.ev.posts_in(jur, V.start, V.end) == [] and indexed() == set()
    with pytest.raises(UnknownClip):
        t.ev.open_post(p2.post_id)
    assert t.ev.clips_of(a, *IN) == []

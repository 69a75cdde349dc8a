"""The evidence routes of the HTTP API on a real uvicorn (the fixtures of tests/test_api.py), on the embedded file
and on redis-server: an agency lists and downloads the clips shared for its request, each checked against its
SHA-256 before it is served; another agency's credential learns nothing; a tampered clip is never served; the
agency's view names no owner or camera; residents post clips publicly and agencies find them by window; the
schema publishes the routes."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta

import httpx

from dispatcher.api.credentials import RESIDENT
from dispatcher.evidence.redis import RedisEvidence
from dispatcher.evidence.sqlite import SqliteEvidence
from tests.test_api import Api, api, body, world  # noqa: F401  (fixtures)
from tests.video_requests import NOW, request

V = request()
IN = (V.start + timedelta(minutes=10), V.start + timedelta(minutes=12))
RECORD_KEYS = {"share_id", "request_id", "sha256", "size", "media_type", "recorded_start", "recorded_end",
               "shared_at", "shared_by"}


def _dispatched(api: Api, world) -> tuple[list[int], dict[int, int]]:  # noqa: F811
    """r1 submitted over HTTP and approved (dispatched): its recipients and a camera of each."""
    index, _ = world
    assert api.call("POST", "/v1/requests", api.chicago, json=body()).status_code == 202
    assert api.call("POST", "/v1/review/il-chicago:r1/approve", api.reviewer).json()["status"] == "dispatched"
    rs = index.resolve(V.area, V.start, V.end, now=NOW)
    owners = sorted(api.notified()["il-chicago:r1"])
    return owners, {o: int(rs.cameras_of(o)[0]) for o in owners}


def _share(api: Api, owner: int, camera: int, payload: bytes) -> str:  # noqa: F811
    ev = api.backend.evidence
    assert ev is not None
    clip = ev.add_clip(owner, camera, *IN, payload, "video/mp4")
    sid = ev.share("il-chicago:r1", owner, [clip.clip_id], NOW)[0].share_id
    api.backend.workflow.share("il-chicago:r1", owner, [clip.clip_id], NOW)  # the answer, as the page records it
    return sid


def test_the_agency_lists_and_downloads_shared_clips_with_their_sha256(api: Api, world) -> None:  # noqa: F811
    owners, cams = _dispatched(api, world)
    payloads = {o: f"footage of camera {cams[o]}".encode() * 100 for o in owners[:2]}
    shares = {_share(api, o, cams[o], payloads[o]): o for o in owners[:2]}
    listed = api.call("GET", "/v1/requests/r1/clips", api.chicago)
    assert listed.status_code == 200, listed.text
    got = listed.json()
    assert got["request_id"] == "r1" and {c["share_id"] for c in got["clips"]} == set(shares)
    for rec in got["clips"]:
        assert set(rec) == RECORD_KEYS and rec["request_id"] == "r1"
        r = api.call("GET", f"/v1/requests/r1/clips/{rec['share_id']}", api.chicago)
        assert r.status_code == 200 and r.content == payloads[shares[rec["share_id"]]]
        sha = hashlib.sha256(r.content).hexdigest()
        assert sha == rec["sha256"] == r.headers["x-content-sha256"]
        assert r.headers["content-digest"] == "sha-256=:" + base64.b64encode(bytes.fromhex(sha)).decode() + ":"
        assert r.headers["content-type"] == "video/mp4" and r.headers["cache-control"] == "no-store"
        assert api.call("GET", f"/v1/requests/r1/clips/{rec['share_id']}/custody", api.chicago).json() == rec
    # the agency's view holds no owner id, camera id or place
    ids = {str(v) for o in owners[:2] for v in (o, cams[o])}
    text = listed.text
    assert all(f'"{i}"' not in text and f": {i}," not in text and f":{i}," not in text for i in ids)
    assert {str(v) for c in got["clips"] for v in c.values()}.isdisjoint(ids)
    assert len({c["shared_by"] for c in got["clips"]}) == 2

    # bytes altered in the store are never served
    share, owner = next(iter(shares.items()))
    ev = api.backend.evidence
    (clip,) = ev.clips_of(owner, *IN)  # type: ignore[union-attr]
    altered = payloads[owner].replace(b"footage", b"F00tage")
    if isinstance(ev, SqliteEvidence):
        ev._db.execute("UPDATE clips SET data=? WHERE clip_id=?", (altered, clip.clip_id))
    else:
        assert isinstance(ev, RedisEvidence)
        ev.r.hset(ev.k.clip(clip.clip_id), "data", altered)
    for path in (f"/v1/requests/r1/clips/{share}", f"/v1/requests/r1/clips/{share}/custody"):
        r = api.call("GET", path, api.chicago)
        assert r.status_code == 500 and r.json()["error"]["type"] == "evidence_tampered"
        assert b"F00tage" not in r.content and b"footage" not in r.content


def test_another_agency_gets_the_404_of_a_missing_request(api: Api, world) -> None:  # noqa: F811
    owners, cams = _dispatched(api, world)
    share = _share(api, owners[0], cams[owners[0]], b"x" * 500)
    for path in ("/v1/requests/{}/clips", "/v1/requests/{}/clips/" + share, "/v1/requests/{}/clips/" + share
                 + "/custody"):
        theirs = api.call("GET", path.format("r1"), api.evanston)
        missing = api.call("GET", path.format("nosuch"), api.evanston)
        assert theirs.status_code == missing.status_code == 404, path
        assert theirs.content == missing.content and b"x" * 50 not in theirs.content
    r = api.call("GET", "/v1/requests/r1/clips/" + "0" * 24, api.chicago)
    assert r.status_code == 404 and r.json()["error"]["field"] == "share_id"
    assert api.call("GET", "/v1/requests/r1/clips/not-a-share", api.chicago).status_code == 422
    assert api.call("GET", "/v1/requests/r1/clips", api.reviewer).status_code == 403
    assert api.call("GET", "/v1/requests/r1/clips").status_code == 401
    assert len(api.call("GET", "/v1/requests/r1/clips", api.chicago).json()["clips"]) == 1
    spec = api.call("GET", "/openapi.json").json()  # validated whole by tests/test_api.py
    assert {"/v1/requests/{request_id}/clips", "/v1/requests/{request_id}/clips/{share_id}",
            "/v1/requests/{request_id}/clips/{share_id}/custody", "/v1/posts", "/v1/posts/{post_id}/clip"
            } <= set(spec["paths"])
    assert set(spec["paths"]["/v1/posts"]) == {"get", "post"}


def test_residents_post_publicly_and_agencies_find_posts_by_window(api: Api, world) -> None:  # noqa: F811
    import h3

    index, _ = world
    owners, cams = _dispatched(api, world)
    a, b = owners[:2]
    ev = api.backend.evidence
    assert ev is not None
    key_a = api.backend.credentials.create(RESIDENT, str(a), NOW)[1]
    mine = ev.add_clip(a, cams[a], *IN, b"a public clip", "video/mp4")
    old = ev.add_clip(a, cams[a], IN[0] - timedelta(days=10), IN[1] - timedelta(days=10), b"old", "video/mp4")
    theirs = ev.add_clip(b, cams[b], *IN, b"theirs", "video/mp4")
    r = api.call("POST", "/v1/posts", key_a, json={"clip_id": mine.clip_id})
    assert r.status_code == 201, r.text
    post = r.json()
    _, lng, lat = index.camera(cams[a])
    assert post["res"] == 8 and int(post["cell"], 16) == h3.str_to_int(h3.latlng_to_cell(lat, lng, 8))
    assert api.call("POST", "/v1/posts", key_a, json={"clip_id": mine.clip_id}).json() == post  # once
    coarse = api.call("POST", "/v1/posts", key_a, json={"clip_id": old.clip_id, "res": 6}).json()
    assert int(coarse["cell"], 16) == h3.str_to_int(h3.latlng_to_cell(lat, lng, 6))
    for bad, status in [({"clip_id": theirs.clip_id}, 404), ({"clip_id": mine.clip_id, "res": 9}, 422),
                        ({"clip_id": mine.clip_id, "res": 3}, 422), ({"clip_id": "zz"}, 422), ({}, 422)]:
        assert api.call("POST", "/v1/posts", key_a, json=bad).status_code == status, bad
    assert api.call("POST", "/v1/posts", api.chicago, json={"clip_id": mine.clip_id}).status_code == 403

    def posts(start, end, key=api.chicago) -> httpx.Response:
        return api.call("GET", "/v1/posts", key, params={"start": start.isoformat(), "end": end.isoformat()})
    assert [p["post_id"] for p in posts(V.start, V.end).json()["posts"]] == [post["post_id"]]
    both = posts(V.start - timedelta(days=11), V.end).json()["posts"]
    assert [p["post_id"] for p in both] == [coarse["post_id"], post["post_id"]]
    assert posts(V.end + timedelta(hours=1), V.end + timedelta(hours=2)).json() == {"posts": []}
    assert posts(V.end, V.start).status_code == 422
    assert api.call("GET", "/v1/posts", api.chicago, params={"start": "2026-10-01T00:00:00",
                                                             "end": V.end.isoformat()}).status_code == 422
    assert posts(V.start, V.end, key_a).status_code == 403
    assert {str(a), str(cams[a]), f"{lat}", f"{lng}"}.isdisjoint(str(v) for v in both[0].values())
    clip = api.call("GET", f"/v1/posts/{post['post_id']}/clip", api.evanston)
    assert clip.status_code == 200 and clip.content == b"a public clip"
    assert clip.headers["x-content-sha256"] == hashlib.sha256(b"a public clip").hexdigest() == post["sha256"]
    assert api.call("GET", f"/v1/posts/{'0' * 24}/clip", api.chicago).status_code == 404

    # the resident withdraws a post: gone from the agencies' search and its clip link at once
    key_b = api.backend.credentials.create(RESIDENT, str(b), NOW)[1]
    path = f"/v1/posts/{post['post_id']}"
    for key, status in [(key_b, 404), (api.chicago, 403), (None, 401)]:  # another resident's post: as a missing one
        assert api.call("DELETE", path, key).status_code == status
    assert api.call("DELETE", f"/v1/posts/{'0' * 24}", key_a).status_code == 404
    assert api.call("DELETE", "/v1/posts/not-a-post", key_a).status_code == 422
    assert len(posts(V.start - timedelta(days=11), V.end).json()["posts"]) == 2  # nothing changed
    r = api.call("DELETE", path, key_a)
    assert r.status_code == 204 and r.content == b""
    assert [p["post_id"] for p in posts(V.start - timedelta(days=11), V.end).json()["posts"]] == [coarse["post_id"]]
    assert api.call("GET", f"{path}/clip", api.chicago).status_code == 404
    assert api.call("DELETE", path, key_a).status_code == 404  # once
    assert "delete" in api.call("GET", "/openapi.json").json()["paths"]["/v1/posts/{post_id}"]

"""The evidence store: residents' clips, their shares with a request's agency (the chain of custody) and their
public posts. :class:`~dispatcher.evidence.sqlite.SqliteEvidence` is the embedded default,
:class:`~dispatcher.evidence.redis.RedisEvidence` the shared one; both implement :class:`EvidenceStore`, and the
same tests run on both.

The rules live here, once (:class:`EvidenceRules`); a backend only stores and reads. Every refusal is typed and
raised before anything is written:

- ingest (:meth:`add_clip`): the camera is a live camera of the owner (the camera index says), the recorded time
  is aware, ordered and at most :attr:`EvidenceRules.max_clip_seconds` long, the bytes at most
  :attr:`EvidenceRules.max_clip_bytes`; their SHA-256 is computed here, once, and kept with them;
- a share (:meth:`share`): the request is approved or dispatched, the owner was one of its recipients (the gate's
  record of whom the dispatch notified), every clip is the owner's and was recorded inside the request's window.
  Sharing a clip again for the same request gives the same share (its id is an HMAC of (request, clip),
  :func:`~dispatcher.workflow.privacy.share_id`: the one reference to it, in the custody record and in the agency's
  view of the request, :meth:`EvidenceRules.views`);
- serving (:meth:`open_shared`): the bytes must still have the SHA-256 recorded at ingest.

Who shared a clip is named in its custody record as the agency's view of the request names them: the resident's
pseudonym in that request (:func:`~dispatcher.workflow.privacy.agency_names`, kept with their answer in the
workflow store), so the agency meets one "Neighbor 4821" per resident and request, and nothing links it to the
same resident's name in another request. A share whose resident's answer is not recorded (yet, or any more) is
not shown.

What is kept, and for how long (:attr:`EvidenceRules.retention`, 180 days by default: the queue's
``retention_days`` on Redis, the longest footage retention). Every period is counted on the store's clock:

- a clip is kept until ``retention`` after its recorded end (a clip recorded longer ago than that is refused at
  ingest), and longer only while a share or a post holds it;
- a share (the custody record, and the clip's bytes it serves) is kept until ``retention`` after it was made: the
  agency's custody period, counted from the moment the evidence was handed over, as long as any footage is kept.
  The bytes are held at least as long as every share of them, so a custody record is never left without its
  bytes; a clip shared for two requests stays while either share lasts. A share re-made after its period ended,
  of a clip still stored, is a new record under the same share id;
- a public post is kept until ``retention`` after it was posted, or until its resident withdraws it
  (:meth:`withdraw`); the post and its entry in the cell index go together, in one step, so the index never
  returns a withdrawn or expired post. A withdrawn post's clip falls back to its own period.

On Redis every record carries its own expiry (the clip's hash and its owner's list by ``PEXPIRE``, extended by a
share or a post, shortened again by a withdrawal; custody records and posts by their due time, read past it as
gone and removed). On SQLite, reads judge shares and posts by their period too, and
:meth:`~dispatcher.evidence.sqlite.SqliteEvidence.expire_records` deletes what is due, shares, posts and the clips
nothing holds any more, in one transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Protocol

import numpy as np
from shapely.geometry.base import BaseGeometry

from dispatcher.errors import EvidenceTampered, InvalidClip, InvalidData, ShareRefused, UnknownClip, UnknownRequest
from dispatcher.evidence.model import MEDIA_TYPE_RE, Clip, Post, Share, SharedClip, from_us, opaque_id, us, utc
from dispatcher.evidence.places import POST_RES, POST_RESOLUTIONS, check_post_res, jurisdiction_ranges, post_cell
from dispatcher.workflow.privacy import Views, agency_names, share_id
from dispatcher.workflow.review import APPROVED, DISPATCHED, MAX_CLIPS
from dispatcher.workflow.store import Store

__all__ = ["CameraDirectory", "EvidenceRules", "EvidenceStore"]

#: (share id, clip id, owner id, shared at µs) as a backend stores a share (the owner never leaves the platform).
ShareRow = tuple[str, str, int, int]
#: The default retention: the queue's ``retention_days`` default, the longest footage retention.
RETENTION = timedelta(days=180)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class CameraDirectory(Protocol):
    """Whose a camera is and where: :class:`~dispatcher.index.camera_index.CameraIndex` answers it."""

    def camera(self, camera_id: int) -> tuple[int, float, float]:
        """``(owner id, lng, lat)`` of a live camera; :class:`~dispatcher.errors.UnknownCamera` otherwise."""
        ...


class EvidenceStore(Protocol):
    """Clips, shares and public posts (see the module's docstring for the rules)."""

    def add_clip(self, owner_id: int, camera_id: int, start: datetime, end: datetime, data: bytes,
                 media_type: str) -> Clip: ...
    def clips_of(self, owner_id: int, start: datetime, end: datetime) -> list[Clip]: ...
    def share(self, request_id: str, owner_id: int, clip_ids: Sequence[str], now: datetime) -> list[Share]: ...
    def shared_for(self, request_id: str) -> list[SharedClip]: ...
    def views(self) -> Views: ...
    def open_shared(self, request_id: str, share_id: str) -> tuple[SharedClip, bytes]: ...
    def post(self, owner_id: int, clip_id: str, now: datetime, res: int = POST_RES) -> Post: ...
    def posts_in(self, jurisdiction: BaseGeometry, start: datetime, end: datetime, limit: int = 1000
                 ) -> list[Post]: ...
    def open_post(self, post_id: str) -> tuple[Post, bytes]: ...
    def withdraw(self, owner_id: int, post_id: str) -> None: ...
    def close(self) -> None: ...


def _int_id(v: object, what: str) -> int:
    if type(v) is not int and not isinstance(v, np.integer):
        raise InvalidClip(f"{what} must be an integer, got {v!r}")
    return int(v)


def _window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    s, e = utc(start, "start"), utc(end, "end")
    if e <= s:
        raise InvalidClip(f"end {e.isoformat()} is not after start {s.isoformat()}")
    return s, e


class EvidenceRules:
    """What both backends share: the checks, the ids, the records built from what a backend stores. A backend
    subclasses it and supplies the ``_``-prefixed storage steps."""

    #: Largest clip accepted, in bytes.
    max_clip_bytes: int = 64 * 1024 * 1024
    #: Longest recorded time of one clip.
    max_clip_seconds: int = 24 * 3600
    #: How long a clip is kept after its recorded end, a share after it was made, a post after it was posted.
    retention: timedelta = RETENTION

    def __init__(self, cameras: CameraDirectory, requests: Store, *, secret: bytes | None = None,
                 max_clip_bytes: int | None = None, retention: timedelta | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.cameras = cameras
        self.requests = requests
        if retention is not None:
            if not isinstance(retention, timedelta) or retention <= timedelta(0):
                raise InvalidData(f"retention must be a positive timedelta, got {retention!r}")
            self.retention = retention
        #: What "now" is when a record's period is judged (the API's clock; the wall clock by default).
        self.clock = clock or _utc_now
        self._given_secret = secret
        self._secret_bytes: bytes | None = None
        if secret is not None and len(secret) < 16:
            raise InvalidData("the evidence secret must be at least 16 bytes")
        if max_clip_bytes is not None:
            if type(max_clip_bytes) is not int or max_clip_bytes < 1:
                raise InvalidData(f"max_clip_bytes must be a positive integer, got {max_clip_bytes!r}")
            self.max_clip_bytes = max_clip_bytes

    # -- storage steps, per backend ------------------------------------------------------------------------
    def _load_secret(self, fresh: bytes) -> bytes:
        """The stored secret, ``fresh`` stored first if there is none."""
        raise NotImplementedError

    def _put_clip(self, clip: Clip, data: bytes) -> None:
        raise NotImplementedError

    def _clips(self, clip_ids: Sequence[str]) -> list[Clip | None]:
        raise NotImplementedError

    def _owner_clips(self, owner_id: int, start_from_us: int, start_to_us: int) -> list[Clip]:
        """The owner's clips recorded from a start in ``[start_from_us, start_to_us]``."""
        raise NotImplementedError

    def _data(self, clip_id: str) -> bytes | None:
        raise NotImplementedError

    def _put_shares(self, request_id: str, rows: Sequence[ShareRow]) -> None:
        """Each share that is not recorded yet (by share id), or whose period ended (re-made: the new row), with
        its clip held at least until the new row's period ends; all in one atomic step, and nothing written if a
        clip is no longer stored (:class:`ShareRefused`)."""
        raise NotImplementedError

    def _shares(self, request_id: str) -> list[ShareRow]:
        """The request's shares still kept."""
        raise NotImplementedError

    def _put_post(self, post: Post, clip_id: str) -> Post:
        """The post recorded with its index entry and its clip held until the post's period ends, or the post kept
        under its id before; :class:`UnknownClip` if the clip is no longer stored."""
        raise NotImplementedError

    def _post(self, post_id: str) -> tuple[Post, str] | None:
        """A post still kept, and its clip id."""
        raise NotImplementedError

    def _drop_post(self, post: Post, clip_id: str) -> None:
        """The post and its index entry deleted in one step; its clip kept no longer than its other holds say."""
        raise NotImplementedError

    def _expire_posts(self) -> None:
        """Remove the posts past their period now, before a query (a backend that deletes them otherwise: nothing
        to do; every read judges a post by its period anyway)."""

    def _posts_in_ranges(self, res: int, lo: np.ndarray, hi: np.ndarray, start_from_us: int, start_to_us: int
                         ) -> list[Post]:
        """The posts at ``res`` whose cell lies in one of the inclusive ranges and whose recorded start lies in
        ``[start_from_us, start_to_us]`` (decided from the index, before any post is read)."""
        raise NotImplementedError

    # -- the rules ---------------------------------------------------------------------------------------
    def _due_us(self, t: datetime) -> int:
        """When a record dated ``t`` (a clip's end, a share's or post's time) is due to go, in µs."""
        return us(t + self.retention)

    def _now_us(self) -> int:
        return us(utc(self.clock(), "the store's clock"))

    @property
    def _secret(self) -> bytes:
        if self._secret_bytes is None:
            self._secret_bytes = self._given_secret or self._load_secret(secrets.token_bytes(32))
        return self._secret_bytes

    def add_clip(self, owner_id: int, camera_id: int, start: datetime, end: datetime, data: bytes,
                 media_type: str) -> Clip:
        """Store a clip of ``owner_id``'s camera ``camera_id``, recorded over ``[start, end]``."""
        owner, camera = _int_id(owner_id, "owner_id"), _int_id(camera_id, "camera_id")
        s, e = _window(start, end)
        if (e - s).total_seconds() > self.max_clip_seconds:
            raise InvalidClip(f"a clip is at most {self.max_clip_seconds} s long, this one {(e - s).total_seconds()} s")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidClip(f"a clip's data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not 0 < len(data) <= self.max_clip_bytes:
            raise InvalidClip(f"a clip must hold 1 to {self.max_clip_bytes} bytes, this one has {len(data)}")
        if type(media_type) is not str or not MEDIA_TYPE_RE.fullmatch(media_type):
            raise InvalidClip(f"media_type must be video/... or image/..., got {str(media_type)[:80]!r}")
        if self._due_us(e) <= self._now_us():
            raise InvalidClip(f"a clip recorded until {e.isoformat()} is past the retention of {self.retention} "
                              "and is not kept")
        if self.cameras.camera(camera)[0] != owner:  # an unknown or removed camera raises UnknownCamera
            raise InvalidClip(f"camera {camera} is not one of owner {owner}'s cameras")
        clip = Clip(secrets.token_hex(12), camera, owner, s, e, hashlib.sha256(data).hexdigest(), len(data),
                    media_type)
        self._put_clip(clip, data)
        return clip

    def clips_of(self, owner_id: int, start: datetime, end: datetime) -> list[Clip]:
        """The owner's clips whose recorded time overlaps ``[start, end]``, by start."""
        owner = _int_id(owner_id, "owner_id")
        s, e = _window(start, end)
        got = self._owner_clips(owner, us(s) - self.max_clip_seconds * 1_000_000, us(e))
        return sorted((c for c in got if c.end >= s and c.start <= e), key=lambda c: (c.start, c.clip_id))

    def share(self, request_id: str, owner_id: int, clip_ids: Sequence[str], now: datetime) -> list[Share]:
        """Share the owner's clips with the agency of ``request_id`` (the stored, scoped id); all or none."""
        owner = _int_id(owner_id, "owner_id")
        at = utc(now, "now")
        if not isinstance(clip_ids, Sequence) or isinstance(clip_ids, str) or not 0 < len(clip_ids) <= MAX_CLIPS \
                or not all(type(c) is str for c in clip_ids):
            raise InvalidClip(f"share 1 to {MAX_CLIPS} clip ids")
        got = self.requests.get_request(request_id) if isinstance(request_id, str) else None
        if got is None:
            raise UnknownRequest(f"no request {request_id!r}")
        state, payload = got
        if state not in (APPROVED, DISPATCHED):
            raise ShareRefused(f"request {request_id} is {state}: only an approved or dispatched request takes clips")
        if not self.requests.was_notified(request_id, owner):
            raise ShareRefused(f"owner {owner} was not a recipient of request {request_id}")
        w0, w1 = (datetime.fromisoformat(payload[k]) for k in ("start", "end"))
        wanted = list(dict.fromkeys(clip_ids))
        for cid, clip in zip(wanted, self._clips(wanted), strict=True):
            if clip is None or clip.owner_id != owner:
                raise ShareRefused(f"clip {cid[:64]!r} is not one of owner {owner}'s clips")
            if clip.start < w0 or clip.end > w1:
                raise ShareRefused(f"clip {cid} was recorded {clip.start.isoformat()}..{clip.end.isoformat()}, not "
                                   f"inside the request's window {w0.isoformat()}..{w1.isoformat()}")
        if self._due_us(at) <= self._now_us():
            raise ShareRefused(f"a share made at {at.isoformat()} is past its custody period of {self.retention}")
        rows = [(share_id(self._secret, request_id, cid), cid, owner, us(at)) for cid in wanted]
        self._put_shares(request_id, rows)
        kept = {r[0]: r for r in self._shares(request_id)}  # a clip shared before keeps its first record
        return [Share(sid, request_id, kept[sid][1], from_us(kept[sid][3])) for sid, *_ in rows if sid in kept]

    def _custody(self, request_id: str, rows: Sequence[ShareRow]) -> list[SharedClip]:
        """The custody records of ``rows`` whose clip is stored and whose resident's answer is recorded, each
        naming its resident by their pseudonym in the request."""
        clips = self._clips([r[1] for r in rows])
        answered = {o for o, _, _ in self.requests.choices(request_id)} if rows else set()
        live = [(r, c) for r, c in zip(rows, clips, strict=True) if c is not None and r[2] in answered]
        names = agency_names(self.requests, self._secret, request_id, {r[2] for r, _ in live}) if live else {}
        return [SharedClip(sid, request_id, c.sha256, c.size, c.media_type, c.start, c.end, from_us(at),
                           names[owner]) for (sid, _, owner, at), c in live]

    def views(self) -> Views:
        """The views of a request (:class:`~dispatcher.workflow.privacy.Views`) keyed by this store's secret, so that
        the agency's view lists each shared clip under the share id of its custody record, and names its resident
        as the record does."""
        return Views(self.requests, self._secret)

    def shared_for(self, request_id: str) -> list[SharedClip]:
        """The custody records of the clips shared for the request, by time shared."""
        out = self._custody(request_id, self._shares(request_id))
        return sorted(out, key=lambda s: (s.shared_at, s.share_id))

    def open_shared(self, request_id: str, share_id: str) -> tuple[SharedClip, bytes]:
        """A shared clip's custody record and bytes, the bytes checked against the SHA-256 taken at ingest."""
        row = next((r for r in self._shares(request_id) if r[0] == share_id), None)
        if row is None:
            raise UnknownClip(f"no shared clip {str(share_id)[:64]!r} in request {request_id!r}")
        found = self._custody(request_id, [row])
        if not found:
            raise UnknownClip(f"shared clip {share_id} of request {request_id!r} is no longer stored")
        return found[0], self._checked(row[1], found[0].sha256, found[0].size)

    def _checked(self, clip_id: str, sha256: str, size: int) -> bytes:
        data = self._data(clip_id)
        if data is None:
            raise UnknownClip(f"clip {clip_id} is no longer stored")
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
            raise EvidenceTampered(f"clip {clip_id}: the stored bytes do not have the SHA-256 recorded at ingest "
                                   f"({sha256}); not served")
        return data

    # -- public posts ------------------------------------------------------------------------------------
    def post(self, owner_id: int, clip_id: str, now: datetime, res: int = POST_RES) -> Post:
        """Make one of the owner's clips public at the H3 cell of its camera at ``res`` (coarse: 8 by default, or
        coarser). Posting a clip again gives the post it already has."""
        owner = _int_id(owner_id, "owner_id")
        res = check_post_res(res)
        at = utc(now, "now")
        clip = self._clips([clip_id])[0] if type(clip_id) is str else None
        if clip is None or clip.owner_id != owner:
            raise UnknownClip(f"clip {str(clip_id)[:64]!r} is not one of owner {owner}'s clips")
        if self._due_us(at) <= self._now_us():
            raise InvalidClip(f"a post made at {at.isoformat()} is past the retention of {self.retention}")
        _, lng, lat = self.cameras.camera(clip.camera_id)
        p = Post(opaque_id(self._secret, "post", clip.clip_id), post_cell(lng, lat, res), res, clip.start, clip.end,
                 at, clip.sha256, clip.size, clip.media_type)
        return self._put_post(p, clip.clip_id)

    def posts_in(self, jurisdiction: BaseGeometry, start: datetime, end: datetime, limit: int = 1000) -> list[Post]:
        """The public posts whose cell's centre lies in ``jurisdiction`` and whose recorded time overlaps
        ``[start, end]``, by recorded start, at most ``limit``: read through the cell index, range by range."""
        s, e = _window(start, end)
        first = us(s) - self.max_clip_seconds * 1_000_000  # a clip is at most that long
        self._expire_posts()
        out: list[Post] = []
        for res in POST_RESOLUTIONS:
            lo, hi = jurisdiction_ranges(jurisdiction, res)
            if lo.shape[0]:
                out.extend(p for p in self._posts_in_ranges(res, lo, hi, first, us(e)) if p.end >= s)
        return sorted(out, key=lambda p: (p.start, p.post_id))[:limit]

    def open_post(self, post_id: str) -> tuple[Post, bytes]:
        """A public post and its clip's bytes (checked against the SHA-256 taken at ingest)."""
        got = self._post(post_id) if type(post_id) is str else None
        if got is None:
            raise UnknownClip(f"no public post {str(post_id)[:64]!r}")
        p, clip_id = got
        return p, self._checked(clip_id, p.sha256, p.size)

    def withdraw(self, owner_id: int, post_id: str) -> None:
        """The owner withdraws their public post: the post and its entry in the cell index are deleted in one step
        (never found again, by id or by place), and its clip is kept no longer than its own period and its
        shares say. Another owner's post, or none, is :class:`UnknownClip`, alike."""
        owner = _int_id(owner_id, "owner_id")
        got = self._post(post_id) if type(post_id) is str else None
        clip = self._clips([got[1]])[0] if got is not None else None
        if got is None or clip is None or clip.owner_id != owner:
            raise UnknownClip(f"no public post {str(post_id)[:64]!r} of owner {owner}")
        self._drop_post(got[0], got[1])

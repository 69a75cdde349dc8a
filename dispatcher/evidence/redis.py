"""The shared evidence store, on Redis: a hash per clip (its record and its bytes), a sorted set of each owner's
clips by recorded start, a hash of custody records per request, and the public posts in one sorted set per H3
resolution whose members sort by cell (key names in :class:`dispatcher.keys.Keys`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import orjson

from dispatcher.connections import with_retries
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.evidence.model import Clip, Post, us
from dispatcher.evidence.store import CameraDirectory, EvidenceRules, ShareRow
from dispatcher.keys import Keys
from dispatcher.workflow.store import Store, pipelined

__all__ = ["RedisEvidence"]

T = TypeVar("T")


class RedisEvidence(EvidenceRules):
    """The same behaviour as :class:`~dispatcher.evidence.sqlite.SqliteEvidence`, on the Redis ``client``; every
    multi-key write is one MULTI/EXEC, every call retried on transient trouble."""

    def __init__(self, client: Any, cameras: CameraDirectory, requests: Store, keys: Keys | None = None,
                 settings: QueueSettings | None = None, *, secret: bytes | None = None,
                 max_clip_bytes: int | None = None) -> None:
        super().__init__(cameras, requests, secret=secret, max_clip_bytes=max_clip_bytes)
        self.r = client
        self.k = keys or Keys()
        self.settings = settings or QueueSettings(url="redis://")

    def close(self) -> None:
        """The client is the caller's."""

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return with_retries(self.settings, what, fn)

    def _batch(self, what: str, build: Callable[[Any], object], transaction: bool = False) -> list[Any]:
        return pipelined(self.r, self.settings, what, build, transaction)

    def _load_secret(self, fresh: bytes) -> bytes:
        key = self.k.evidence_secret
        got = self._batch("evidence secret", lambda p: (p.set(key, fresh, nx=True), p.get(key)))
        return bytes(got[1])

    def _put_clip(self, clip: Clip, data: bytes) -> None:
        def build(p: Any) -> None:
            p.hset(self.k.clip(clip.clip_id), mapping={"meta": orjson.dumps(clip.to_json()), "data": data})
            p.zadd(self.k.owner_clips(clip.owner_id), {clip.clip_id: us(clip.start)})
        self._batch("add clip", build, transaction=True)

    def _clips(self, clip_ids: Sequence[str]) -> list[Clip | None]:
        got = self._batch("clips", lambda p: [p.hget(self.k.clip(c), "meta") for c in clip_ids])
        return [None if g is None else Clip.from_json(orjson.loads(g)) for g in got]

    def _owner_clips(self, owner_id: int, start_from_us: int, start_to_us: int) -> list[Clip]:
        ids = self._call("owner clips", lambda: self.r.zrangebyscore(self.k.owner_clips(owner_id), start_from_us,
                                                                      start_to_us))
        return [c for c in self._clips([i.decode() for i in ids]) if c is not None]

    def _data(self, clip_id: str) -> bytes | None:
        got = self._call("clip data", lambda: self.r.hget(self.k.clip(clip_id), "data"))
        return None if got is None else bytes(got)

    def _put_shares(self, request_id: str, rows: Sequence[ShareRow]) -> None:
        key = self.k.shares(request_id)
        self._batch("share", lambda p: [p.hsetnx(key, sid, orjson.dumps([cid, sharer, at]))
                                        for sid, cid, sharer, at in rows], transaction=True)

    def _shares(self, request_id: str) -> list[ShareRow]:
        got = self._call("shares", lambda: self.r.hgetall(self.k.shares(request_id)))
        return [(k.decode(), *orjson.loads(v)) for k, v in got.items()]

    def _put_post(self, post: Post, clip_id: str) -> Post:
        fresh = orjson.dumps(post.to_record(clip_id))

        def build(p: Any) -> None:
            p.hsetnx(self.k.posts, post.post_id, fresh)
            # indexed in the same step; a member whose cell is not its post's (the clip was posted first at
            # another resolution) is passed over when read
            p.zadd(self.k.post_cells(post.res), {_member(post): 0})
            p.hget(self.k.posts, post.post_id)
        return Post.from_record(orjson.loads(self._batch("post", build, transaction=True)[2]))

    def _post(self, post_id: str) -> tuple[Post, str] | None:
        got = self._call("post", lambda: self.r.hget(self.k.posts, post_id))
        if got is None:
            return None
        rec = orjson.loads(got)
        return Post.from_record(rec), str(rec["clip_id"])

    def _posts_in_ranges(self, res: int, lo: np.ndarray, hi: np.ndarray, start_from_us: int, start_to_us: int
                         ) -> list[Post]:
        key = self.k.post_cells(res)
        # ':' < ';': every member of cell c sorts inside [c: .. c;]
        members = self._batch("posts", lambda p: [p.zrangebylex(key, f"[{a:016x}:", f"[{b:016x};")
                                                  for a, b in zip(lo.tolist(), hi.tolist(), strict=True)])
        found = [m.decode().split(":") for got in members for m in got]
        found = [f for f in found if start_from_us <= int(f[1], 16) <= start_to_us]  # the time, from the member
        if not found:
            return []
        recs = self._call("posts", lambda: self.r.hmget(self.k.posts, [f[2] for f in found]))
        posts = [(Post.from_record(orjson.loads(r)), int(f[0], 16)) for r, f in zip(recs, found, strict=True)
                 if r is not None]
        return [p for p, cell in posts if p.cell == cell and p.res == res]


def _member(post: Post) -> str:
    """A post's member in its resolution's sorted set: cell, recorded start (µs, from 1970) and id, in fixed-width
    hex, so that members sort by cell and a cell's descendants are one lexicographic range."""
    return f"{post.cell:016x}:{us(post.start):014x}:{post.post_id}"

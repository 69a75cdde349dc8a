"""The shared evidence store, on Redis: a hash per clip (its record, its bytes, and when each thing holding it ends),
a sorted set of each owner's clips by recorded start, a hash of custody records per request, and the public posts
in one sorted set per H3 resolution whose members sort by cell, plus one sorted set of the posts by the end of their
period (key names in :class:`dispatcher.keys.Keys`).

Retention (the rules: :mod:`dispatcher.evidence.store`): a clip's hash is given its expiry at ingest, the end of
its own period (``hold:own``, ``retention`` after its recorded end), and a share or a post that holds it longer
records its end in the hash (``hold:s:<request>``, ``hold:post``) and pushes the expiry out in the same script; a
withdrawal sets it back to the latest hold left. Times are the store's clock's: an expiry is set as the time left
by that clock (``PEXPIRE``; with the wall clock, the default, it is a ``PEXPIREAT`` at the end of the period).
Custody records and posts carry their end, are read past it as gone, and are removed by the next write or read
(posts by a sweep of the due set, the record and its cell entry in one script). Every multi-step write is one
Lua script, so no reader sees half of it, and every call is retried on transient trouble.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import orjson

from dispatcher.connections import script, with_retries
from dispatcher.dispatch.settings import QueueSettings
from dispatcher.errors import ShareRefused, UnknownClip
from dispatcher.evidence.model import Clip, Post, span_us, us
from dispatcher.evidence.places import COARSEST_POST_RES, POST_RESOLUTIONS
from dispatcher.evidence.store import CameraDirectory, EvidenceRules, ShareRow
from dispatcher.keys import Keys
from dispatcher.workflow.store import Store, pipelined

__all__ = ["RedisEvidence"]

T = TypeVar("T")

#: Posts removed by one sweep at most (the rest by the next; a read judges each post by its end anyway).
SWEEP_LIMIT = 500

# ``keep(key, due, now)``: the key kept at least until ``due`` (µs, store clock), never shortened.
_KEEP = """
local function left_ms(due, now) return math.floor((tonumber(due) - tonumber(now)) / 1000) + 1 end
local function keep(key, due, now)
  local ttl = left_ms(due, now)
  local t = redis.call('PTTL', key)
  if t < 0 or t < ttl then redis.call('PEXPIRE', key, ttl) end
end
"""
# KEYS: clip, owner clips; ARGV: meta, data, start µs, clip id, due µs, now µs
_ADD_CLIP = _KEEP + """
redis.call('HSET', KEYS[1], 'meta', ARGV[1], 'data', ARGV[2], 'hold:own', ARGV[5])
redis.call('PEXPIRE', KEYS[1], left_ms(ARGV[5], ARGV[6]))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
keep(KEYS[2], ARGV[5], ARGV[6])
return 1
"""
# KEYS: shares, owner clips, clip...; ARGV: now µs, due µs, request id, then (share id, record) per clip.
# Nothing is written if a clip is gone (returns its position); a live record is kept, one past its end replaced.
_SHARE = _KEEP + """
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return i - 2 end
end
for i = 3, #KEYS do
  local sid, rec = ARGV[2 * i - 2], ARGV[2 * i - 1]
  local old = redis.call('HGET', KEYS[1], sid)
  if (not old) or tonumber(cjson.decode(old)[4]) <= tonumber(ARGV[1]) then
    redis.call('HSET', KEYS[1], sid, rec)
    redis.call('HSET', KEYS[i], 'hold:s:' .. ARGV[3], ARGV[2])
    keep(KEYS[i], ARGV[2], ARGV[1])
    keep(KEYS[1], ARGV[2], ARGV[1])
    keep(KEYS[2], ARGV[2], ARGV[1])
  end
end
return 0
"""
# KEYS: posts, posts due, the cells sets from the coarsest resolution up; ARGV: now µs, limit, coarsest res.
# Every post whose period ended: its record, its cell entry and its due entry, together.
_SWEEP_BODY = """
local function sweep(now, limit, coarsest)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
  for _, m in ipairs(gone) do
    local res, member = string.match(m, '^(%d+):(.+)$')
    redis.call('HDEL', KEYS[1], string.match(member, ':([%x]+)$'))
    redis.call('ZREM', KEYS[3 + tonumber(res) - tonumber(coarsest)], member)
    redis.call('ZREM', KEYS[2], m)
  end
  return #gone
end
"""
_SWEEP = _SWEEP_BODY + """
return sweep(ARGV[1], ARGV[2], ARGV[3])
"""
# KEYS: posts, posts due, cells sets (coarsest first), clip, owner clips; ARGV: now µs, limit, coarsest res, post id,
# record, res, cell member, due µs. Returns the record kept under the post id (this one, or a live one from before),
# or false if the clip is gone.
_POST = _KEEP + _SWEEP_BODY + """
local clip, owner = KEYS[#KEYS - 1], KEYS[#KEYS]
sweep(ARGV[1], ARGV[2], ARGV[3])
if redis.call('EXISTS', clip) == 0 then return false end
local old = redis.call('HGET', KEYS[1], ARGV[4])
if old then return old end
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[3 + tonumber(ARGV[6]) - tonumber(ARGV[3])], 0, ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[8], ARGV[6] .. ':' .. ARGV[7])
redis.call('HSET', clip, 'hold:post', ARGV[8])
keep(clip, ARGV[8], ARGV[1])
keep(owner, ARGV[8], ARGV[1])
return ARGV[5]
"""
# KEYS: posts, posts due, the post's cells set, clip; ARGV: post id, cell member, res, now µs.
# The post, its cell entry and due entry deleted together; the clip then kept only as long as its holds left say.
_WITHDRAW = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3] .. ':' .. ARGV[2])
redis.call('HDEL', KEYS[4], 'hold:post')
local due = nil
for _, f in ipairs(redis.call('HKEYS', KEYS[4])) do
  if string.sub(f, 1, 5) == 'hold:' then
    local d = tonumber(redis.call('HGET', KEYS[4], f))
    if due == nil or d > due then due = d end
  end
end
if due == nil then return 0 end
local ttl = math.floor((due - tonumber(ARGV[4])) / 1000) + 1
if ttl <= 0 then redis.call('DEL', KEYS[4]) else redis.call('PEXPIRE', KEYS[4], ttl) end
return 1
"""


class RedisEvidence(EvidenceRules):
    """The same behaviour as :class:`~dispatcher.evidence.sqlite.SqliteEvidence`, on the Redis ``client``; the
    retention is the queue settings' ``retention_days`` unless given."""

    def __init__(self, client: Any, cameras: CameraDirectory, requests: Store, keys: Keys | None = None,
                 settings: QueueSettings | None = None, *, secret: bytes | None = None,
                 max_clip_bytes: int | None = None, retention: timedelta | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings or QueueSettings(url="redis://")
        super().__init__(cameras, requests, secret=secret, max_clip_bytes=max_clip_bytes,
                         retention=retention or timedelta(seconds=self.settings.retention_s), clock=clock)
        self.r = client
        self.k = keys or Keys()
        self._add = script(client, _ADD_CLIP)
        self._share = script(client, _SHARE)
        self._sweep = script(client, _SWEEP)
        self._post_script = script(client, _POST)
        self._withdraw = script(client, _WITHDRAW)

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
        keys = [self.k.clip(clip.clip_id), self.k.owner_clips(clip.owner_id)]
        args: list[Any] = [orjson.dumps(clip.to_json()), data, us(clip.start), clip.clip_id, self._due_us(clip.end),
                self._now_us()]
        self._call("add clip", lambda: self._add(keys=keys, args=args))

    def _clips(self, clip_ids: Sequence[str]) -> list[Clip | None]:
        got = self._batch("clips", lambda p: [p.hget(self.k.clip(c), "meta") for c in clip_ids])
        return [None if g is None else Clip.from_json(orjson.loads(g)) for g in got]

    def _owner_clips(self, owner_id: int, start_from_us: int, start_to_us: int) -> list[Clip]:
        key = self.k.owner_clips(owner_id)
        ids = [i.decode() for i in self._call("owner clips", lambda: self.r.zrangebyscore(key, start_from_us,
                                                                                           start_to_us))]
        clips = self._clips(ids)
        gone = [i for i, c in zip(ids, clips, strict=True) if c is None]
        if gone:  # expired: their ids leave the owner's list too
            self._call("owner clips", lambda: self.r.zrem(key, *gone))
        return [c for c in clips if c is not None]

    def _data(self, clip_id: str) -> bytes | None:
        got = self._call("clip data", lambda: self.r.hget(self.k.clip(clip_id), "data"))
        return None if got is None else bytes(got)

    def _put_shares(self, request_id: str, rows: Sequence[ShareRow]) -> None:
        _, _, owner, at = rows[0]  # one owner's share, made at one time
        due = at + span_us(self.retention)
        keys = [self.k.shares(request_id), self.k.owner_clips(owner), *(self.k.clip(r[1]) for r in rows)]
        args: list[Any] = [self._now_us(), due, request_id]
        for sid, cid, _, _ in rows:
            args += [sid, orjson.dumps([cid, owner, at, due])]
        missing = self._call("share", lambda: self._share(keys=keys, args=args))
        if missing:
            raise ShareRefused(f"clip {rows[int(missing) - 1][1]} is no longer stored")

    def _shares(self, request_id: str) -> list[ShareRow]:
        key = self.k.shares(request_id)
        got = self._call("shares", lambda: self.r.hgetall(key))
        now = self._now_us()
        rows = {k.decode(): orjson.loads(v) for k, v in got.items()}
        ended = [sid for sid, r in rows.items() if r[3] <= now]
        if ended:  # past their period: removed (the bytes go with the clip's own expiry)
            self._call("shares", lambda: self.r.hdel(key, *ended))
        return [(sid, str(r[0]), int(r[1]), int(r[2])) for sid, r in rows.items() if r[3] > now]

    def _cells(self) -> list[str]:
        return [self.k.post_cells(res) for res in POST_RESOLUTIONS]

    def _expire_posts(self) -> None:
        keys = [self.k.posts, self.k.posts_due, *self._cells()]
        self._call("sweep posts", lambda: self._sweep(keys=keys, args=[self._now_us(), SWEEP_LIMIT,
                                                                       COARSEST_POST_RES]))

    def _put_post(self, post: Post, clip_id: str) -> Post:
        clip = self._clips([clip_id])[0]
        if clip is None:
            raise UnknownClip(f"clip {clip_id} is no longer stored")
        rec = {**post.to_record(clip_id), "due_us": self._due_us(post.posted_at)}
        keys = [self.k.posts, self.k.posts_due, *self._cells(), self.k.clip(clip_id),
                self.k.owner_clips(clip.owner_id)]
        args: list[Any] = [self._now_us(), SWEEP_LIMIT, COARSEST_POST_RES, post.post_id, orjson.dumps(rec), post.res,
                _member(post), rec["due_us"]]
        got = self._call("post", lambda: self._post_script(keys=keys, args=args))
        if got is None:
            raise UnknownClip(f"clip {clip_id} is no longer stored")
        return Post.from_record(orjson.loads(got))

    def _live(self, raw: bytes | None) -> dict[str, Any] | None:
        rec: dict[str, Any] | None = None if raw is None else orjson.loads(raw)
        return rec if rec is not None and int(rec["due_us"]) > self._now_us() else None

    def _post(self, post_id: str) -> tuple[Post, str] | None:
        rec = self._live(self._call("post", lambda: self.r.hget(self.k.posts, post_id)))
        return None if rec is None else (Post.from_record(rec), str(rec["clip_id"]))

    def _drop_post(self, post: Post, clip_id: str) -> None:
        keys = [self.k.posts, self.k.posts_due, self.k.post_cells(post.res), self.k.clip(clip_id)]
        args: list[Any] = [post.post_id, _member(post), post.res, self._now_us()]
        self._call("withdraw post", lambda: self._withdraw(keys=keys, args=args))

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
        posts = [(Post.from_record(rec), int(f[0], 16)) for r, f in zip(recs, found, strict=True)
                 if (rec := self._live(r)) is not None]
        return [p for p, cell in posts if p.cell == cell and p.res == res]


def _member(post: Post) -> str:
    """A post's member in its resolution's sorted set: cell, recorded start (µs, from 1970) and id, in fixed-width
    hex, so that members sort by cell and a cell's descendants are one lexicographic range."""
    return f"{post.cell:016x}:{us(post.start):014x}:{post.post_id}"

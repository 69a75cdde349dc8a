"""The embedded evidence store: tables in a SQLite file (the workflow store's, by default), clips as blobs.
Records are deleted when due by :meth:`SqliteEvidence.expire_records` (the rules: :mod:`dispatcher.evidence.store`)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from dispatcher.errors import InvalidData, ShareRefused, UnknownClip
from dispatcher.evidence.model import Clip, Post, from_us, span_us, us, utc
from dispatcher.evidence.store import CameraDirectory, EvidenceRules, ShareRow
from dispatcher.workflow.store import Store, immediate

__all__ = ["SqliteEvidence"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence_secret (id INTEGER PRIMARY KEY CHECK (id = 1), secret BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS clips (clip_id TEXT PRIMARY KEY, camera_id INTEGER NOT NULL, owner_id INTEGER NOT NULL,
    start_us INTEGER NOT NULL, end_us INTEGER NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    media_type TEXT NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS clips_owner ON clips (owner_id, start_us);
CREATE TABLE IF NOT EXISTS shares (share_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, clip_id TEXT NOT NULL,
    owner_id INTEGER NOT NULL, shared_us INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS shares_request ON shares (request_id);
CREATE INDEX IF NOT EXISTS shares_clip ON shares (clip_id);
CREATE INDEX IF NOT EXISTS shares_time ON shares (shared_us);
CREATE INDEX IF NOT EXISTS clips_end ON clips (end_us);
CREATE TABLE IF NOT EXISTS posts (post_id TEXT PRIMARY KEY, clip_id TEXT NOT NULL, res INTEGER NOT NULL,
    cell INTEGER NOT NULL, start_us INTEGER NOT NULL, end_us INTEGER NOT NULL, posted_us INTEGER NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, media_type TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS posts_cell ON posts (res, cell, start_us);
CREATE INDEX IF NOT EXISTS posts_clip ON posts (clip_id);
CREATE INDEX IF NOT EXISTS posts_time ON posts (posted_us);
"""
_CLIP_COLUMNS = "clip_id, camera_id, owner_id, start_us, end_us, sha256, size, media_type"
_POST_COLUMNS = "post_id, cell, res, start_us, end_us, posted_us, sha256, size, media_type"


def _clip(row: Sequence[Any]) -> Clip:
    return Clip(row[0], int(row[1]), int(row[2]), from_us(row[3]), from_us(row[4]), row[5], int(row[6]), row[7])


def _post(row: Sequence[Any]) -> Post:
    return Post(row[0], int(row[1]), int(row[2]), from_us(row[3]), from_us(row[4]), from_us(row[5]), row[6],
                int(row[7]), row[8])


class SqliteEvidence(EvidenceRules):
    """Clips, shares and posts in the SQLite file ``path`` (``":memory:"`` for a test), each change one
    transaction. ``requests`` is the workflow store the requests' states and recipients are read from."""

    def __init__(self, path: str | Path, cameras: CameraDirectory, requests: Store, *, secret: bytes | None = None,
                 max_clip_bytes: int | None = None, retention: timedelta | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(cameras, requests, secret=secret, max_clip_bytes=max_clip_bytes, retention=retention,
                         clock=clock)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        if "sharer" in {r[1] for r in self._db.execute("PRAGMA table_info(shares)")}:
            self._db.close()
            raise InvalidData(f"{path}: its shares table is of an earlier version (a sharer reference per row, not "
                              "the owner the pseudonym is kept for); move the file aside")
        self._db.executescript(_SCHEMA)

    def expire_records(self, now: datetime, retention: timedelta | None = None) -> int:
        """Delete what is due at ``now`` (``retention``: the store's by default): shares made, and posts posted,
        longer ago than the retention, then clips recorded until longer ago than that which no share or post
        holds any more; one transaction, so a share never loses its bytes. Returns the rows deleted."""
        cut = us(utc(now, "now") - (self.retention if retention is None else retention))
        with self._lock, self._transaction():
            gone = self._db.execute("DELETE FROM shares WHERE shared_us <= ?", (cut,)).rowcount
            gone += self._db.execute("DELETE FROM posts WHERE posted_us <= ?", (cut,)).rowcount
            gone += self._db.execute("DELETE FROM clips WHERE end_us <= ? AND NOT EXISTS (SELECT 1 FROM shares s "
                                     "WHERE s.clip_id = clips.clip_id) AND NOT EXISTS (SELECT 1 FROM posts p "
                                     "WHERE p.clip_id = clips.clip_id)", (cut,)).rowcount
        return int(gone)

    def _cut_us(self) -> int:
        """Shares made and posts posted at or before this are past their period (read as gone until deleted)."""
        return self._now_us() - span_us(self.retention)

    def _transaction(self) -> AbstractContextManager[None]:
        return immediate(self._db)

    def close(self) -> None:
        self._db.close()

    def _load_secret(self, fresh: bytes) -> bytes:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO evidence_secret VALUES (1, ?)", (fresh,))
            return bytes(self._db.execute("SELECT secret FROM evidence_secret").fetchone()[0])

    def _put_clip(self, clip: Clip, data: bytes) -> None:
        with self._lock:
            self._db.execute(f"INSERT INTO clips ({_CLIP_COLUMNS}, data) VALUES (?,?,?,?,?,?,?,?,?)",
                             (clip.clip_id, clip.camera_id, clip.owner_id, us(clip.start), us(clip.end), clip.sha256,
                              clip.size, clip.media_type, data))

    def _clips(self, clip_ids: Sequence[str]) -> list[Clip | None]:
        with self._lock:
            found = {r[0]: _clip(r) for r in self._db.execute(
                f"SELECT {_CLIP_COLUMNS} FROM clips WHERE clip_id IN (SELECT value FROM json_each(?))",
                (_json_list(clip_ids),))}
        return [found.get(c) for c in clip_ids]

    def _owner_clips(self, owner_id: int, start_from_us: int, start_to_us: int) -> list[Clip]:
        with self._lock:
            return [_clip(r) for r in self._db.execute(
                f"SELECT {_CLIP_COLUMNS} FROM clips WHERE owner_id=? AND start_us BETWEEN ? AND ?",
                (owner_id, start_from_us, start_to_us))]

    def _data(self, clip_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM clips WHERE clip_id=?", (clip_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def _stored(self, clip_ids: Sequence[str]) -> bool:
        want = set(clip_ids)
        n = self._db.execute("SELECT COUNT(*) FROM clips WHERE clip_id IN (SELECT value FROM json_each(?))",
                             (_json_list(sorted(want)),)).fetchone()[0]
        return int(n) == len(want)

    def _put_shares(self, request_id: str, rows: Sequence[ShareRow]) -> None:
        cut = self._cut_us()
        with self._lock, self._transaction():
            if not self._stored([r[1] for r in rows]):
                raise ShareRefused("a clip of the share is no longer stored")
            # a row past its period and not deleted yet is replaced: the share re-made
            self._db.executemany("INSERT INTO shares VALUES (?,?,?,?,?) ON CONFLICT(share_id) DO UPDATE SET "
                                 "owner_id = excluded.owner_id, shared_us = excluded.shared_us "
                                 "WHERE shares.shared_us <= ?",
                                 [(sid, request_id, cid, owner, at, cut) for sid, cid, owner, at in rows])

    def _shares(self, request_id: str) -> list[ShareRow]:
        with self._lock:
            return [(r[0], r[1], int(r[2]), int(r[3])) for r in self._db.execute(
                "SELECT share_id, clip_id, owner_id, shared_us FROM shares WHERE request_id=? AND shared_us > ?",
                (request_id, self._cut_us()))]

    def _put_post(self, post: Post, clip_id: str) -> Post:
        r = post.to_record(clip_id)
        with self._lock, self._transaction():
            if not self._stored([clip_id]):
                raise UnknownClip(f"clip {clip_id} is no longer stored")
            # a post past its period and not deleted yet is replaced: posted anew
            self._db.execute(f"INSERT INTO posts (clip_id, {_POST_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                             "ON CONFLICT(post_id) DO UPDATE SET cell = excluded.cell, res = excluded.res, "
                             "posted_us = excluded.posted_us WHERE posts.posted_us <= ?",
                             (clip_id, r["post_id"], r["cell"], r["res"], r["start_us"], r["end_us"], r["posted_us"],
                              r["sha256"], r["size"], r["media_type"], self._cut_us()))
            got = self._post(post.post_id)
        return post if got is None else got[0]

    def _drop_post(self, post: Post, clip_id: str) -> None:
        with self._lock:  # the row and its entry in the (res, cell, start) index go in one statement
            self._db.execute("DELETE FROM posts WHERE post_id=?", (post.post_id,))

    def _post(self, post_id: str) -> tuple[Post, str] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_POST_COLUMNS}, clip_id FROM posts WHERE post_id=? AND posted_us > ?",
                                   (post_id, self._cut_us())).fetchone()
        return None if row is None else (_post(row), str(row[-1]))

    def _posts_in_ranges(self, res: int, lo: np.ndarray, hi: np.ndarray, start_from_us: int, start_to_us: int
                         ) -> list[Post]:
        out: list[Post] = []
        q = (f"SELECT {_POST_COLUMNS} FROM posts WHERE res=? AND cell BETWEEN ? AND ? "
             "AND start_us BETWEEN ? AND ? AND posted_us > ?")  # the time is tested in the index
        cut = self._cut_us()
        with self._lock:
            for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
                out.extend(_post(r) for r in self._db.execute(q, (res, a, b, start_from_us, start_to_us, cut)))
        return out


def _json_list(items: Sequence[str]) -> str:
    return orjson.dumps(list(items)).decode()

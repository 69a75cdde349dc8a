"""The embedded evidence store: tables in a SQLite file (the workflow store's, by default), clips as blobs."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from dispatcher.evidence.model import Clip, Post, from_us, us
from dispatcher.evidence.store import CameraDirectory, EvidenceRules, ShareRow
from dispatcher.workflow.store import Store

__all__ = ["SqliteEvidence"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence_secret (id INTEGER PRIMARY KEY CHECK (id = 1), secret BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS clips (clip_id TEXT PRIMARY KEY, camera_id INTEGER NOT NULL, owner_id INTEGER NOT NULL,
    start_us INTEGER NOT NULL, end_us INTEGER NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    media_type TEXT NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS clips_owner ON clips (owner_id, start_us);
CREATE TABLE IF NOT EXISTS shares (share_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, clip_id TEXT NOT NULL,
    sharer TEXT NOT NULL, shared_us INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS shares_request ON shares (request_id);
CREATE TABLE IF NOT EXISTS posts (post_id TEXT PRIMARY KEY, clip_id TEXT NOT NULL, res INTEGER NOT NULL,
    cell INTEGER NOT NULL, start_us INTEGER NOT NULL, end_us INTEGER NOT NULL, posted_us INTEGER NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, media_type TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS posts_cell ON posts (res, cell, start_us);
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
                 max_clip_bytes: int | None = None) -> None:
        super().__init__(cameras, requests, secret=secret, max_clip_bytes=max_clip_bytes)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

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

    def _put_shares(self, request_id: str, rows: Sequence[ShareRow]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO shares VALUES (?,?,?,?,?)",
                                     [(sid, request_id, cid, sharer, at) for sid, cid, sharer, at in rows])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _shares(self, request_id: str) -> list[ShareRow]:
        with self._lock:
            return [(r[0], r[1], r[2], int(r[3])) for r in self._db.execute(
                "SELECT share_id, clip_id, sharer, shared_us FROM shares WHERE request_id=?", (request_id,))]

    def _put_post(self, post: Post, clip_id: str) -> Post:
        r = post.to_record(clip_id)
        with self._lock:
            self._db.execute(f"INSERT OR IGNORE INTO posts (clip_id, {_POST_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                             (clip_id, r["post_id"], r["cell"], r["res"], r["start_us"], r["end_us"], r["posted_us"],
                              r["sha256"], r["size"], r["media_type"]))
            got = self._post(post.post_id)
        return post if got is None else got[0]  # None only if the row vanished between the two statements

    def _post(self, post_id: str) -> tuple[Post, str] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_POST_COLUMNS}, clip_id FROM posts WHERE post_id=?",
                                   (post_id,)).fetchone()
        return None if row is None else (_post(row), str(row[-1]))

    def _posts_in_ranges(self, res: int, lo: np.ndarray, hi: np.ndarray, start_from_us: int, start_to_us: int
                         ) -> list[Post]:
        out: list[Post] = []
        q = (f"SELECT {_POST_COLUMNS} FROM posts WHERE res=? AND cell BETWEEN ? AND ? "
             "AND start_us BETWEEN ? AND ?")  # the time is tested in the index, only matches are read
        with self._lock:
            for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
                out.extend(_post(r) for r in self._db.execute(q, (res, a, b, start_from_us, start_to_us)))
        return out


def _json_list(items: Sequence[str]) -> str:
    return orjson.dumps(list(items)).decode()

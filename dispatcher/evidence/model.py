"""Clips, shares and public posts as the evidence store keeps them, and the records each side may see.

A resident's :class:`Clip` names its owner and camera; it never leaves the platform. What an agency sees of a
shared clip is a :class:`SharedClip`, the chain-of-custody record: the share, the request, the clip's SHA-256,
size, media type and recorded time, when it was shared, and "who shared it" as the resident's pseudonym in the
request ("Neighbor 4821"), the very name the agency's view of the request gives them
(:func:`dispatcher.workflow.privacy.agency_names`): stable within the request, unlinked to the resident's name in
any other. Its fields are checked against fixed patterns, so an owner id, camera id or place cannot be put into
one. A
:class:`Post` is a clip a resident made public, placed at a coarse H3 cell, never at the camera's point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from dispatcher.errors import InvalidClip, InvalidData
from dispatcher.workflow.privacy import PSEUDONYM_RE, SHARE_ID_RE, opaque_id

__all__ = ["Clip", "Post", "Share", "SharedClip", "opaque_id"]

SHA256_RE = re.compile(r"[0-9a-f]{64}")
MEDIA_TYPE_RE = re.compile(r"(video|image)/[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")


def utc(t: datetime, what: str) -> datetime:
    """``t`` in UTC, whole microseconds as stored; a naive or non-datetime value is :class:`InvalidClip`."""
    if not isinstance(t, datetime) or t.utcoffset() is None:
        raise InvalidClip(f"{what} must be an aware datetime, got {t!r}")
    return t.astimezone(timezone.utc)


def us(t: datetime) -> int:
    return int(round(t.timestamp() * 1_000_000))


def span_us(d: timedelta) -> int:
    """A duration in whole µs."""
    return d // timedelta(microseconds=1)


def from_us(v: int) -> datetime:
    return datetime.fromtimestamp(v / 1e6, tz=timezone.utc)


@dataclass(frozen=True, slots=True)
class Clip:
    """A stored clip: recorded by ``camera_id`` of ``owner_id`` over ``[start, end]`` (aware UTC)."""

    clip_id: str
    camera_id: int
    owner_id: int
    start: datetime
    end: datetime
    sha256: str
    size: int
    media_type: str

    def to_json(self) -> dict[str, Any]:
        return {"clip_id": self.clip_id, "camera_id": self.camera_id, "owner_id": self.owner_id,
                "start_us": us(self.start), "end_us": us(self.end), "sha256": self.sha256, "size": self.size,
                "media_type": self.media_type}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Clip:
        return cls(str(d["clip_id"]), int(d["camera_id"]), int(d["owner_id"]), from_us(d["start_us"]),
                   from_us(d["end_us"]), str(d["sha256"]), int(d["size"]), str(d["media_type"]))


@dataclass(frozen=True, slots=True)
class Share:
    """The resident's side of a share: which of their clips went to which request, and when."""

    share_id: str
    request_id: str
    clip_id: str
    shared_at: datetime


@dataclass(frozen=True, slots=True)
class SharedClip:
    """The chain-of-custody record an agency sees. No field can hold an owner id, camera id or place."""

    #: The share's one reference (:func:`~dispatcher.workflow.privacy.share_id`), as the agency's view lists it.
    share_id: str
    request_id: str
    sha256: str
    size: int
    media_type: str
    start: datetime
    end: datetime
    shared_at: datetime
    #: Who shared it: the resident's pseudonym in this request (the agency's view's), another in the next.
    shared_by: str

    def __post_init__(self) -> None:
        if not (type(self.share_id) is str and SHARE_ID_RE.fullmatch(self.share_id)):
            raise InvalidData("share_id must be an opaque reference")
        if not (type(self.shared_by) is str and PSEUDONYM_RE.fullmatch(self.shared_by)):
            raise InvalidData(f"shared_by must be a pseudonym, got {str(self.shared_by)[:40]!r}")
        if type(self.sha256) is not str or not SHA256_RE.fullmatch(self.sha256):
            raise InvalidData(f"not a SHA-256: {self.sha256!r}")
        if type(self.size) is not int or self.size < 1 or not MEDIA_TYPE_RE.fullmatch(self.media_type):
            raise InvalidData("a shared clip has a positive size and a video or image media type")
        if not all(type(t) is datetime and t.utcoffset() is not None for t in (self.start, self.end, self.shared_at)):
            raise InvalidData("a shared clip's times are aware datetimes")

    def to_json(self, request_id: str | None = None) -> dict[str, Any]:
        """The record as JSON, with ``request_id`` as the reader knows it (an agency: its own id)."""
        return {"share_id": self.share_id, "request_id": request_id or self.request_id, "sha256": self.sha256,
                "size": self.size, "media_type": self.media_type, "recorded_start": self.start.isoformat(),
                "recorded_end": self.end.isoformat(), "shared_at": self.shared_at.isoformat(),
                "shared_by": self.shared_by}


@dataclass(frozen=True, slots=True)
class Post:
    """A public post: a clip made public at H3 cell ``cell`` (resolution ``res``, coarse), never the home point."""

    post_id: str
    cell: int
    res: int
    start: datetime
    end: datetime
    posted_at: datetime
    sha256: str
    size: int
    media_type: str

    def to_json(self) -> dict[str, Any]:
        return {"post_id": self.post_id, "cell": format(self.cell, "x"), "res": self.res,
                "recorded_start": self.start.isoformat(), "recorded_end": self.end.isoformat(),
                "posted_at": self.posted_at.isoformat(), "sha256": self.sha256, "size": self.size,
                "media_type": self.media_type}

    def to_record(self, clip_id: str) -> dict[str, Any]:
        """The stored form (with the clip it shows, which never leaves the platform)."""
        return {"post_id": self.post_id, "clip_id": clip_id, "cell": self.cell, "res": self.res,
                "start_us": us(self.start), "end_us": us(self.end), "posted_us": us(self.posted_at),
                "sha256": self.sha256, "size": self.size, "media_type": self.media_type}

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> Post:
        return cls(str(d["post_id"]), int(d["cell"]), int(d["res"]), from_us(d["start_us"]), from_us(d["end_us"]),
                   from_us(d["posted_us"]), str(d["sha256"]), int(d["size"]), str(d["media_type"]))

"""The wire format of notifications: a request's header and columnar batches of owners and their cameras.

A batch is one stream entry: orjson of the request header and three columns built straight from numpy slices,
no Python object per owner: ``owners``, ``offsets`` and ``cameras`` (owner ``k``'s cameras are
``cameras[offsets[k]:offsets[k + 1]]``). :func:`plan_digest` fingerprints a recipient set, so that every attempt
to dispatch a request can be checked to send the same one.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import orjson

from dispatcher.errors import InvalidData
from dispatcher.index.recipients import RecipientSet

__all__ = ["BatchPart", "Notification", "NotificationHeader", "batch_part", "decode_batch", "decode_recipients",
           "encode_batch", "encode_recipients", "plan_digest"]


@dataclass(frozen=True)
class NotificationHeader:
    """What every notification of one request says, apart from the owner's own cameras."""

    request_id: str
    agency_id: str
    agency_name: str
    case_number: str
    incident_type: str
    start: datetime
    end: datetime
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "request_id": self.request_id, "agency_id": self.agency_id, "agency_name": self.agency_name,
            "case_number": self.case_number, "incident_type": self.incident_type,
            "start": self.start.isoformat(), "end": self.end.isoformat(), "message": self.message,
        }



def plan_digest(recipients: RecipientSet) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in (recipients.owner_ids, recipients.owner_offsets, recipients.camera_ids):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()


def encode_batch(header_json: bytes, batch_no: int, owners: np.ndarray, offsets: np.ndarray,
                 cameras: np.ndarray) -> bytes:
    """One batch as JSON, columnar: ``owners[k]``'s cameras are ``cameras[offsets[k]:offsets[k + 1]]``.
    Built straight from numpy slices, no per-owner Python objects."""
    body = orjson.dumps({"batch": batch_no, "owners": owners, "offsets": offsets, "cameras": cameras},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    return b'{"header":' + header_json + b"," + body[1:]


@dataclass(frozen=True)
class Notification:
    """One owner's notification: the request's header and that owner's cameras, no other recipient."""

    header: dict[str, str]
    owner_id: int
    camera_ids: tuple[int, ...]


def decode_batch(payload: bytes) -> tuple[int, list[Notification]]:
    d = orjson.loads(payload)
    header, owners, off, cams = d["header"], d["owners"], d["offsets"], d["cameras"]
    return d["batch"], [Notification(header, int(o), tuple(cams[off[k]:off[k + 1]])) for k, o in enumerate(owners)]


_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass
class BatchPart:
    """One part of a batch to append: the batch's owners in one gate shard (all of them with one shard), with their
    cameras, ``cameras[offsets[k]:offsets[k + 1]]`` being ``owners[k]``'s."""

    header_json: bytes
    batch_no: int
    #: The gate shard of its owners (:meth:`dispatcher.keys.Keys.owner_shards`): with several, a batch of the plan
    #: goes out as one entry per shard, each with its own done mark, in that shard's slot.
    shard: int
    owners: np.ndarray
    offsets: np.ndarray
    cameras: np.ndarray
    #: Each owner's verdict, from a gate the sink does not hold (:meth:`RecipientGate.check_many`); None when the
    #: sink's own gate decides, in the append.
    verdicts: np.ndarray | None = field(default=None)

    @property
    def n_owners(self) -> int:
        return int(self.owners.shape[0])

    def entry(self, admit: np.ndarray) -> bytes | None:
        """The stream entry naming the owners ``admit`` keeps, with their cameras (None: it keeps none)."""
        admit = np.asarray(admit, dtype=bool)
        if admit.shape != self.owners.shape:
            raise InvalidData(f"a gate's verdicts have shape {admit.shape} for {self.n_owners} owners")
        k = int(admit.sum())
        if k == 0:
            return None
        kept = (self.owners, self.offsets, self.cameras) if k == self.n_owners else _keep(
            self.owners, self.offsets, self.cameras, admit)
        return encode_batch(self.header_json, self.batch_no, *kept)

    def pieces(self) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """The entry of every owner in the pieces a sink that gates in its append step (a Lua script) builds the
        entry of the admitted ones from: the JSON up to the first owner; the owners as comma-separated decimals;
        the offsets, then where each owner's cameras start in the cameras' piece (byte index from 0, and one past
        its end), as little-endian int32s; the cameras as comma-separated decimals; the offsets as comma-separated
        decimals. With every owner admitted (the usual case) the script joins the pieces as they are, and the
        entry is :func:`encode_batch`'s bytes; else it keeps the admitted owners' text and cameras' substrings and
        writes their offsets."""
        head = b'{"header":' + self.header_json + b',"batch":' + str(self.batch_no).encode() + b',"owners":['
        cameras = orjson.dumps(self.cameras, option=_NUMPY)[1:-1]
        # camera j starts at byte starts[j]; starts[m] is one past the end, as if a comma followed the last one
        starts = np.zeros(self.cameras.shape[0] + 1, np.int64)
        starts[1:-1] = np.flatnonzero(np.frombuffer(cameras, np.uint8) == ord(",")) + 1
        starts[-1] = len(cameras) + 1
        at = np.concatenate([self.offsets, starts[self.offsets]])
        return (head, orjson.dumps(self.owners, option=_NUMPY)[1:-1], at.astype("<i4").tobytes(), cameras,
                orjson.dumps(self.offsets, option=_NUMPY)[1:-1])


def batch_part(header_json: bytes, batch_no: int, shard: int, recipients: RecipientSet, lo: int, hi: int,
               where: np.ndarray | None = None) -> BatchPart:
    """Owners ``lo:hi`` of ``recipients`` (those ``where`` selects of them) as a part of batch ``batch_no``."""
    off = recipients.owner_offsets[lo:hi + 1]
    part = (recipients.owner_ids[lo:hi], off - off[0], recipients.camera_ids[off[0]:off[-1]])
    return BatchPart(header_json, batch_no, shard, *(part if where is None else _keep(*part, where)))


def _keep(owners: np.ndarray, offsets: np.ndarray, cameras: np.ndarray, mask: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The owners ``mask`` keeps, with their offsets (from 0) and cameras."""
    counts = np.diff(offsets)
    rel = np.zeros(int(mask.sum()) + 1, np.int64)
    np.cumsum(counts[mask], out=rel[1:])
    return owners[mask], rel, cameras[np.repeat(mask, counts)]


#: The first byte of a recipient set encoded raw (:func:`encode_recipients`). A zlib stream, the form of before,
#: never starts with it (its first byte names the deflate method: low four bits 8).
_RAW = b"\x00"
#: Sets larger than this (bytes) are still compressed: a wide request's plan (40,000 owners, ~1.5 MB raw) shrinks
#: about threefold, for a cost that is small beside its resolve and dispatch.
_COMPRESS_OVER = 64 * 1024


def encode_recipients(recipients: RecipientSet) -> bytes:
    """A recipient set as bytes, to be kept with its dispatch plan (every retry sends exactly this set), with the
    index version it was resolved at last (-1: none): little-endian int64 columns after a marker byte.
    Uncompressed unless large: zlib cost ~30 µs for a typical request at 10M cameras (~1.4 kB, 53 owners), an
    eighth of a worker's CPU for it, to save ~800 bytes of a plan that expires with the request's records."""
    version = -1 if recipients.version is None else recipients.version
    parts = (np.array([recipients.n_owners, recipients.n_cameras], np.int64), recipients.owner_ids,
             recipients.owner_offsets, recipients.camera_ids, np.array([version], np.int64))
    raw = b"".join(np.ascontiguousarray(a, dtype="<i8").tobytes() for a in parts)
    return zlib.compress(raw, 1) if len(raw) > _COMPRESS_OVER else _RAW + raw


def decode_recipients(blob: bytes) -> RecipientSet:
    """A recipient set from :func:`encode_recipients`' bytes, or from the zlib form plans were recorded in before."""
    try:
        raw = blob[1:] if blob[:1] == _RAW else zlib.decompress(blob)
        a = np.frombuffer(raw, dtype="<i8")
        n, m = int(a[0]), int(a[1])
        size = 2 + n + (n + 1) + m
        if a.shape[0] not in (size, size + 1):  # a plan recorded before versions has none
            raise ValueError(f"{a.shape[0]} numbers for {n} owners and {m} cameras")
    except (zlib.error, ValueError, IndexError) as exc:
        raise InvalidData(f"a recorded recipient set is unreadable: {exc}") from None
    owners, offsets, cameras = a[2:2 + n], a[2 + n:3 + 2 * n], a[3 + 2 * n:size]
    version = int(a[size]) if a.shape[0] > size and a[size] >= 0 else None
    return RecipientSet(owners.astype(np.int64), cameras.astype(np.int64), offsets.astype(np.int64), version)

"""The answer to a resolve: who to notify, and which of their cameras matched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import shapely

from dispatcher.errors import InvalidData
from dispatcher.index.geotables import geodataframe

if TYPE_CHECKING:
    from geopandas import GeoDataFrame

    from dispatcher.index.camera_index import CameraIndex


class RecipientSet:
    """Distinct owners (ascending) and, per owner, the ids of their matching cameras (ascending).

    ``camera_ids[owner_offsets[k]:owner_offsets[k + 1]]`` are the cameras of ``owner_ids[k]``. All arrays are
    read-only numpy arrays; the accessors return views, never copies.
    """

    __slots__ = ("owner_ids", "camera_ids", "owner_offsets", "version")

    def __init__(self, owner_ids: np.ndarray, camera_ids: np.ndarray, owner_offsets: np.ndarray,
                 version: int | None = None) -> None:
        owner_ids.setflags(write=False)
        camera_ids.setflags(write=False)
        owner_offsets.setflags(write=False)
        self.owner_ids = owner_ids
        self.camera_ids = camera_ids
        self.owner_offsets = owner_offsets
        #: The index version (change feed position) the resolve used; None when not from a resolve.
        self.version = version

    def __repr__(self) -> str:
        return f"RecipientSet({self.n_owners} owners, {self.n_cameras} cameras)"

    @classmethod
    def unpack(cls, packed: np.ndarray, n: int, m: int, version: int | None = None) -> RecipientSet:
        """The set of ``n`` owners and ``m`` cameras a resolve kernel packed as ``[owners | cameras | offsets]``
        (``n + m + n + 1`` values, read-only already: the kernels hand it back so): views of the one array."""
        rs = cls.__new__(cls)
        rs.owner_ids = packed[:n]
        rs.camera_ids = packed[n:n + m]
        rs.owner_offsets = packed[n + m:]
        rs.version = version
        return rs

    @classmethod
    def empty(cls) -> RecipientSet:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.zeros(1, np.int64))

    @property
    def n_owners(self) -> int:
        return int(self.owner_ids.shape[0])

    @property
    def n_cameras(self) -> int:
        return int(self.camera_ids.shape[0])

    def __len__(self) -> int:
        return self.n_owners

    def __bool__(self) -> bool:
        return self.n_owners > 0

    def cameras_of(self, owner_id: int) -> np.ndarray:
        """The matching cameras of ``owner_id`` (an empty array when the owner is not a recipient)."""
        k = int(np.searchsorted(self.owner_ids, owner_id))
        if k == self.n_owners or self.owner_ids[k] != owner_id:
            return self.camera_ids[:0]
        return self.camera_ids[self.owner_offsets[k]:self.owner_offsets[k + 1]]

    def counts(self) -> np.ndarray:
        """Number of matching cameras per owner, aligned with :attr:`owner_ids`."""
        return np.diff(self.owner_offsets)

    def items(self) -> Iterator[tuple[int, np.ndarray]]:
        off = self.owner_offsets
        for k in range(self.n_owners):
            yield int(self.owner_ids[k]), self.camera_ids[off[k]:off[k + 1]]

    def batches(self, size: int) -> Iterator[RecipientSet]:
        """Consecutive slices of at most ``size`` owners, each a :class:`RecipientSet` of views."""
        if size < 1:
            raise InvalidData(f"batch size must be positive, got {size}")
        for lo in range(0, self.n_owners, size):
            hi = min(lo + size, self.n_owners)
            off = self.owner_offsets[lo:hi + 1]
            yield RecipientSet(self.owner_ids[lo:hi], self.camera_ids[off[0]:off[-1]], off - off[0], self.version)

    def to_arrow(self) -> pa.Table:
        """One row per owner: ``owner_id`` and ``camera_ids`` (a list), built without copying the ids."""
        cams = pa.ListArray.from_arrays(pa.array(self.owner_offsets.astype(np.int32)), pa.array(self.camera_ids))
        return pa.table({"owner_id": pa.array(self.owner_ids), "camera_ids": cams})

    def to_geodataframe(self, index: CameraIndex) -> GeoDataFrame:
        """For operators (it holds who was asked, and where their cameras are: never for an agency): one row per
        matching camera, ``owner_id``, ``camera_id`` and its ``geometry``, a Point located in ``index`` (the
        index resolved; a camera removed since raises :class:`~dispatcher.errors.UnknownCamera`), in OGC:CRS84.
        Needs geopandas (the ``geo`` extra)."""
        xy = index.locations(self.camera_ids)
        owners = np.repeat(self.owner_ids, self.counts())
        table = pa.table({"owner_id": pa.array(owners, pa.int64()), "camera_id": pa.array(self.camera_ids, pa.int64())})
        return geodataframe(table, shapely.points(xy))

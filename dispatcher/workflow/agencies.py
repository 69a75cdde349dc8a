"""Partner agencies: who may send video requests, where, and since when.

Each agency has a jurisdiction polygon and a join date. The registry saves to and loads from Parquet
(jurisdictions as WKB), GeoParquet, GeoJSON and GeoDataFrames (geopandas, the ``geo`` extra); synthetic agencies for
tests, benchmarks and the demo come from :mod:`dispatcher.synthetic.agencies`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from shapely.geometry.base import BaseGeometry

from dispatcher.errors import AgencyFileMissing, InvalidData, UnknownAgency
from dispatcher.index.geotables import CRS84, GeoColumn, as_table, geodataframe, geometry_column, shapes
from dispatcher.index.schema import conform
from dispatcher.workflow.requests import is_plain_id

if TYPE_CHECKING:
    from geopandas import GeoDataFrame

AGENCY_SCHEMA = pa.schema([
    pa.field("agency_id", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("state", pa.string(), nullable=False),
    pa.field("joined_at", pa.timestamp("s", tz="UTC"), nullable=False),
    pa.field("suspended", pa.bool_(), nullable=False),
    pa.field("jurisdiction_wkb", pa.binary(), nullable=False),
])
#: The columns beside the jurisdiction, which a GeoParquet file or a GeoDataFrame holds as its geometry.
_PROPERTIES = pa.schema([f for f in AGENCY_SCHEMA if f.name != "jurisdiction_wkb"])


@dataclass(frozen=True)
class Agency:
    """A partner agency. ``jurisdiction`` is a valid shapely (Multi)Polygon in lng/lat degrees."""

    agency_id: str
    name: str
    state: str
    jurisdiction: BaseGeometry
    joined_at: datetime
    suspended: bool = False

    def __post_init__(self) -> None:
        if not is_plain_id(self.agency_id):  # the platform stores an agency's requests as <agency>:<id>
            raise InvalidData(f"agency_id must be 1-64 ASCII letters, digits, '-' or '_', got "
                              f"{str(self.agency_id)[:80]!r}")
        if self.joined_at.tzinfo is None:
            raise InvalidData(f"agency {self.agency_id}: joined_at {self.joined_at} is naive")
        if self.jurisdiction.geom_type not in ("Polygon", "MultiPolygon") or not self.jurisdiction.is_valid \
                or self.jurisdiction.is_empty:
            raise InvalidData(f"agency {self.agency_id}: jurisdiction must be a valid, non-empty (Multi)Polygon")


class AgencyRegistry:
    """Agencies by id. Add, suspend, reinstate and remove; save to and load from Parquet, GeoParquet, GeoJSON or a
    GeoDataFrame."""

    def __init__(self, agencies: list[Agency] | None = None) -> None:
        self._by_id: dict[str, Agency] = {}
        for a in agencies or []:
            self.add(a)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, agency_id: object) -> bool:
        return agency_id in self._by_id

    def __iter__(self) -> Any:
        return iter(self._by_id.values())

    def get(self, agency_id: str) -> Agency:
        try:
            return self._by_id[agency_id]
        except (KeyError, TypeError):
            raise UnknownAgency(f"no partner agency {agency_id!r}") from None

    def add(self, agency: Agency) -> None:
        if agency.agency_id in self._by_id:
            raise InvalidData(f"agency {agency.agency_id!r} is already registered")
        self._by_id[agency.agency_id] = agency

    def suspend(self, agency_id: str) -> None:
        self._by_id[agency_id] = replace(self.get(agency_id), suspended=True)

    def reinstate(self, agency_id: str) -> None:
        self._by_id[agency_id] = replace(self.get(agency_id), suspended=False)

    def remove(self, agency_id: str) -> None:
        self.get(agency_id)
        del self._by_id[agency_id]

    # -- persistence ---------------------------------------------------------------------------------------

    def to_arrow(self) -> pa.Table:
        ag = list(self._by_id.values())
        return pa.Table.from_pylist([
            {"agency_id": a.agency_id, "name": a.name, "state": a.state, "joined_at": a.joined_at,
             "suspended": a.suspended, "jurisdiction_wkb": shapely.to_wkb(a.jurisdiction)} for a in ag],
            schema=AGENCY_SCHEMA)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> AgencyRegistry:
        """From :meth:`to_arrow`'s table, or from one whose jurisdictions are a geometry column (GeoParquet,
        GeoArrow) in WGS84 longitude/latitude. Bad rows raise :class:`InvalidData` naming them."""
        what = "agencies"
        g = geometry_column(table, what)
        if g is None:
            table = conform(table, AGENCY_SCHEMA, what)
            g = GeoColumn("jurisdiction_wkb", "wkb", table.column("jurisdiction_wkb"), CRS84, "agency table")
            props = table.drop_columns(["jurisdiction_wkb"])
        else:
            props = conform(table.drop_columns([g.name]), _PROPERTIES, what)
        geoms = shapes(g, table, "agency_id", what)
        # The times as seconds since the epoch: Arrow's conversion of zoned timestamps imports pandas (half a
        # second of every worker's start).
        joined = props.column("joined_at").cast(pa.int64()).to_pylist()
        return cls([Agency(agency_id=r["agency_id"], name=r["name"], state=r["state"],
                           joined_at=datetime.fromtimestamp(t, timezone.utc), suspended=r["suspended"],
                           jurisdiction=geom)
                    for r, t, geom in zip(props.drop_columns(["joined_at"]).to_pylist(), joined, geoms)])

    def to_geodataframe(self) -> GeoDataFrame:
        """One row per agency: its columns and its jurisdiction as the ``geometry``, in OGC:CRS84 (needs geopandas,
        the ``geo`` extra)."""
        geoms = np.array([a.jurisdiction for a in self._by_id.values()], dtype=object)
        return geodataframe(self.to_arrow().drop_columns(["jurisdiction_wkb"]), geoms)

    @classmethod
    def from_geodataframe(cls, frame: GeoDataFrame) -> AgencyRegistry:
        """From a GeoDataFrame with :meth:`to_geodataframe`'s columns, in WGS84 longitude/latitude."""
        table = as_table(frame, "agencies")
        if table is None:
            raise InvalidData("agencies: a GeoDataFrame is required, got None")
        return cls.from_arrow(table)

    def save_parquet(self, path: str | Path) -> None:
        pq.write_table(self.to_arrow(), str(path))

    def save_geoparquet(self, path: str | Path) -> None:
        """GeoParquet as geopandas writes it (WKB jurisdictions, CRS in the ``geo`` metadata); :meth:`load` and
        :meth:`load_parquet` read it back, and so does any GIS."""
        self.to_geodataframe().to_parquet(str(path))

    @classmethod
    def load_parquet(cls, path: str | Path) -> AgencyRegistry:
        """From Parquet as :meth:`save_parquet` writes it, or GeoParquet (:meth:`save_geoparquet`, a GIS)."""
        # One file: ParquetFile reads it without pyarrow.dataset, whose import pulls in pandas (about 1 s of every
        # worker's start).
        return cls.from_arrow(pq.ParquetFile(str(path)).read())

    @classmethod
    def load(cls, path: str | Path) -> AgencyRegistry:
        """From GeoJSON (``.json``, ``.geojson``) or (Geo)Parquet (anything else). There is no default: a path that
        is None or names no file raises :class:`~dispatcher.errors.AgencyFileMissing`."""
        if path is None or not Path(path).is_file():
            raise AgencyFileMissing(f"partner agencies: no file {path!r}; give a Parquet or GeoJSON file "
                                    "(synthetic agencies: dispatcher.synthetic.agencies)")
        if str(path).endswith((".json", ".geojson")):
            return cls.load_geojson(path)
        return cls.load_parquet(path)

    def save_geojson(self, path: str | Path) -> None:
        feats = [{"type": "Feature", "id": a.agency_id,
                  "geometry": orjson.loads(shapely.to_geojson(a.jurisdiction)),
                  "properties": {"name": a.name, "state": a.state, "joined_at": a.joined_at.isoformat(),
                                 "suspended": a.suspended}} for a in self._by_id.values()]
        Path(path).write_bytes(orjson.dumps({"type": "FeatureCollection", "features": feats}))

    @classmethod
    def load_geojson(cls, path: str | Path) -> AgencyRegistry:
        try:
            doc = orjson.loads(Path(path).read_bytes())
            return cls([Agency(agency_id=f["id"], name=f["properties"]["name"], state=f["properties"]["state"],
                               joined_at=datetime.fromisoformat(f["properties"]["joined_at"]),
                               suspended=bool(f["properties"]["suspended"]),
                               jurisdiction=shapely.from_geojson(orjson.dumps(f["geometry"])))
                        for f in doc["features"]])
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            raise InvalidData(f"{path}: not an agency FeatureCollection: {exc}") from None

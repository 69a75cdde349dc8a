"""What a backend team would reach for instead of geodispatch, each answering the same request exactly:
DuckDB with its spatial extension and an R-tree index, PostGIS with a GiST index, and Redis ``GEOSEARCH``
followed by an exact filter. Each returns ``(owner_ids, camera_ids, owner_offsets)`` like our kernels, and the
benchmark asserts the sets equal to ours before keeping any figure.

The admission rules are the README's, in whole seconds (the benchmark's windows are whole seconds), written in
each peer's own language: SQL for the databases, :func:`bench.reference.admit_vectorised` after ``GEOSEARCH``.
The area goes to the databases as WKB, so they see the same float bits we do; ``ST_Intersects`` counts the
boundary as inside, as we do.
"""

from __future__ import annotations

import glob
import io
import math
import os
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import shapely

from bench.reference import DAY_S, Dataset, admit_vectorised
from dispatcher.geo.area import Area

Answer = tuple[np.ndarray, np.ndarray, np.ndarray]


class PeerUnavailable(RuntimeError):
    """The peer's software is not installed here; the benchmark skips it and says why."""


def _group(owner: np.ndarray, camera: np.ndarray) -> Answer:
    """Rows already ordered by (owner, camera) -> owners, cameras, offsets."""
    owner = np.asarray(owner, dtype=np.int64)
    camera = np.asarray(camera, dtype=np.int64)
    owners, starts = np.unique(owner, return_index=True)
    return owners, camera, np.append(starts, owner.shape[0]).astype(np.int64)


def _columns(data: Dataset) -> pa.Table:
    """The cameras as one flat table for the SQL peers, owners' opt-outs folded in."""
    opted = np.isin(data.owner_id, np.fromiter(data.opted_out, dtype=np.int64, count=len(data.opted_out)))
    removed = data.removed_s  # later than any window when never removed
    retention = data.retention_days.astype(np.int64) * DAY_S
    return pa.table({
        "camera_id": pa.array(data.camera_id.astype(np.int64)),
        "owner_id": pa.array(data.owner_id.astype(np.int64)),
        "lng": pa.array(data.lng),
        "lat": pa.array(data.lat),
        "installed_s": pa.array(data.installed_s),
        "removed_s": pa.array(removed),
        "retention_s": pa.array(retention),
        "kept_until_s": pa.array(removed + retention),
        "admissible": pa.array(data.sharing & ~opted & (data.installed_s <= removed)),
    })


def _window(start: datetime, end: datetime, now: datetime) -> dict[str, int]:
    s, e, n = int(start.timestamp()), int(end.timestamp()), int(now.timestamp())
    return {"s": s, "e": min(e, n), "n": n}


# The README's rules: installed at some moment of [start, e = min(end, now)], and footage of that moment retained:
# min(e, removed) >= now - retention, split into two comparisons of a column with a constant (a comparison of two
# columns keeps DuckDB from using its R-tree); installed <= removed is folded into ``admissible``.
_ADMIT_SQL = ("admissible AND installed_s <= {e} AND removed_s >= {s} AND retention_s >= {n} - {e} "
              "AND kept_until_s >= {n}")


def duckdb_spatial_path() -> str:
    """The spatial extension shipped in the ``duckdb-extension-spatial`` wheel for the running DuckDB."""
    try:
        import duckdb
        import duckdb_extension_spatial
    except ImportError as exc:
        raise PeerUnavailable("DuckDB peer needs `pip install duckdb duckdb-extension-spatial`") from exc
    root = os.path.dirname(duckdb_extension_spatial.__file__)
    found = glob.glob(os.path.join(root, "extensions", f"v{duckdb.__version__}", "spatial.duckdb_extension"))
    if not found:
        raise PeerUnavailable(f"no spatial extension for DuckDB {duckdb.__version__} under {root}")
    return found[0]


class DuckDBPeer:
    """DuckDB in-process, spatial extension loaded from its wheel (no network), an R-tree over the points."""

    name = "duckdb"

    def __init__(self, data: Dataset, *, threads: int | None = None) -> None:
        import duckdb

        path = duckdb_spatial_path()
        self.con = duckdb.connect()
        self.con.execute(f"LOAD '{path}'")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.con.register("cams_arrow", _columns(data))
        self.con.execute("CREATE TABLE cams AS SELECT *, ST_Point(lng, lat) AS geom FROM cams_arrow")
        self.con.unregister("cams_arrow")
        self.con.execute("CREATE INDEX cams_rtree ON cams USING RTREE (geom)")

    def plan(self, area: Area, start: datetime, end: datetime, now: datetime) -> str:
        """The query plan of a resolve, to check the R-tree is used."""
        w = _window(start, end, now)
        sql = "EXPLAIN " + self._sql(area, w["s"], w["e"], w["n"])
        return "\n".join(str(r[-1]) for r in self.con.execute(sql).fetchall())

    def _sql(self, area: Area, s: int, e: int, n: int) -> str:
        # The area must be a constant of the plan for the R-tree to be used, so it is inlined, as hex WKB.
        wkb = shapely.to_wkb(area.geometry, hex=True)
        return (f"SELECT owner_id, camera_id FROM cams WHERE ST_Intersects(geom, ST_GeomFromHEXWKB('{wkb}')) "
                f"AND {_ADMIT_SQL.format(s=s, e=e, n=n)} ORDER BY owner_id, camera_id")

    def resolve(self, area: Area, start: datetime, end: datetime, now: datetime) -> Answer:
        w = _window(start, end, now)
        got = self.con.execute(self._sql(area, w["s"], w["e"], w["n"])).fetchnumpy()
        return _group(got["owner_id"], got["camera_id"])

    def close(self) -> None:
        self.con.close()


class PostGISPeer:
    """PostGIS: the table loaded with COPY, a GiST index on the points, one prepared query per request."""

    name = "postgis"

    def __init__(self, data: Dataset, dsn: str) -> None:
        import psycopg

        self.con = psycopg.connect(dsn, autocommit=True)
        self.con.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        self.con.execute("DROP TABLE IF EXISTS cams")
        self.con.execute("CREATE UNLOGGED TABLE cams (camera_id bigint, owner_id bigint, lng float8, lat float8, "
                         "installed_s bigint, removed_s bigint, retention_s bigint, kept_until_s bigint, "
                         "admissible boolean)")
        t = _columns(data)
        with self.con.cursor() as cur, cur.copy("COPY cams FROM STDIN WITH (FORMAT csv)") as copy:
            step = 200_000
            for lo in range(0, t.num_rows, step):
                buf = io.BytesIO()
                pacsv.write_csv(t.slice(lo, step), buf, pacsv.WriteOptions(include_header=False))
                copy.write(buf.getvalue())
        self.con.execute("ALTER TABLE cams ADD COLUMN geom geometry(Point)")
        self.con.execute("UPDATE cams SET geom = ST_MakePoint(lng, lat)")
        self.con.execute("CREATE INDEX cams_gist ON cams USING GIST (geom)")
        self.con.execute("VACUUM ANALYZE cams")
        self._sql = ("SELECT owner_id, camera_id FROM cams WHERE ST_Intersects(geom, ST_GeomFromWKB(%(wkb)s)) "
                     "AND " + _ADMIT_SQL.format(s="%(s)s", e="%(e)s", n="%(n)s") + " ORDER BY owner_id, camera_id")

    def plan(self, area: Area, start: datetime, end: datetime, now: datetime) -> str:
        """The query plan of a resolve, to check the GiST index is used."""
        args = {"wkb": shapely.to_wkb(area.geometry), **_window(start, end, now)}
        return "\n".join(r[0] for r in self.con.execute("EXPLAIN " + self._sql, args).fetchall())

    def resolve(self, area: Area, start: datetime, end: datetime, now: datetime) -> Answer:
        w = _window(start, end, now)
        rows = self.con.execute(self._sql, {"wkb": shapely.to_wkb(area.geometry), **w}, prepare=True).fetchall()
        if not rows:
            return _group(np.empty(0, np.int64), np.empty(0, np.int64))
        arr = np.asarray(rows, dtype=np.int64)
        return _group(arr[:, 0], arr[:, 1])

    def close(self) -> None:
        self.con.execute("DROP TABLE IF EXISTS cams")
        self.con.close()


#: Metres of slack around the search box: Redis stores positions as 52-bit geohashes (about 0.6 m off).
_GEO_SLACK_M = 50.0
_EARTH_M = 6_372_797.560856  # the radius Redis's geo commands use


class RedisGeoPeer:
    """Redis ``GEOADD`` of every camera (member = row number), ``GEOSEARCH ... BYBOX`` around the area's bounding
    box with slack for Redis's 52-bit positions, then the exact test on the original coordinates (shapely) and
    the admission rules (numpy)."""

    name = "redis-geo"

    def __init__(self, data: Dataset, client: Any, key: str = "{geodispatch-bench}:cams", chunk: int = 5_000) -> None:
        self.r = client
        self.key = key
        self.data = data
        self.opted = np.asarray(sorted(data.opted_out), dtype=np.int64)
        self.r.delete(key)
        n = data.camera_id.shape[0]
        pipe = self.r.pipeline(transaction=False)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            flat: list[Any] = []
            for i, (x, y) in enumerate(zip(data.lng[lo:hi].tolist(), data.lat[lo:hi].tolist()), start=lo):
                flat += (x, y, i)
            pipe.execute_command("GEOADD", key, *flat)
            if (lo // chunk) % 20 == 19:
                pipe.execute()
        pipe.execute()

    def candidates(self, area: Area) -> np.ndarray:
        x0, y0, x1, y1 = area.bbox
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        # Widest east-west extent is at the latitude nearest the equator; height along the meridian.
        coslat = math.cos(math.radians(min(abs(y0), abs(y1)) if y0 * y1 > 0 else 0.0))
        width = 2 * math.radians((x1 - x0) / 2) * _EARTH_M * coslat + 2 * _GEO_SLACK_M
        height = 2 * math.radians((y1 - y0) / 2) * _EARTH_M + 2 * _GEO_SLACK_M
        got = self.r.execute_command("GEOSEARCH", self.key, "FROMLONLAT", cx, cy, "BYBOX", width * 1.001,
                                     height * 1.001, "m")
        return np.fromiter((int(m) for m in got), dtype=np.int64, count=len(got))

    def resolve(self, area: Area, start: datetime, end: datetime, now: datetime) -> Answer:
        cand = self.candidates(area)
        keep = shapely.intersects_xy(area.geometry, self.data.lng[cand], self.data.lat[cand])
        return admit_vectorised(self.data, np.sort(cand[keep]), start, end, now, self.opted)

    def close(self) -> None:
        self.r.delete(self.key)

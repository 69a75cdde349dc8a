"""The camera index: the data model, the build, live updates, persistence and inspection for maps.

Modules, bottom up: :mod:`~dispatcher.index.geotables` (GeoParquet, GeoArrow and GeoDataFrames in and out),
:mod:`~dispatcher.index.schema` (tables and their validation), :mod:`~dispatcher.index.config`,
:mod:`~dispatcher.index.columns` (per-camera columns), :mod:`~dispatcher.index.tree` (the H3 hierarchy),
:mod:`~dispatcher.index.state` (what a resolve reads), :mod:`~dispatcher.index.build`, :mod:`~dispatcher.index.live`
(updates and merges), :mod:`~dispatcher.index.persist` (save and open), :mod:`~dispatcher.index.inspection`
(cells and density for maps), :mod:`~dispatcher.index.recipients` (the answer) and
:mod:`~dispatcher.index.camera_index`, whose :class:`CameraIndex` composes them.
"""

from dispatcher.index.build import BuildStats
from dispatcher.index.camera_index import CameraIndex
from dispatcher.index.config import IndexConfig
from dispatcher.index.recipients import RecipientSet
from dispatcher.index.schema import CAMERA_SCHEMA, EVENT_SCHEMA, OWNER_SCHEMA

__all__ = ["CAMERA_SCHEMA", "EVENT_SCHEMA", "OWNER_SCHEMA", "BuildStats", "CameraIndex", "IndexConfig", "RecipientSet"]

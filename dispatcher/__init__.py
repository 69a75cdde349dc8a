"""geodispatch: resolve a video request's area and time window to the exact set of camera owners."""

from dispatcher.area import Area
from dispatcher.errors import (
    DispatchError,
    IndexFormatError,
    InvalidArea,
    InvalidCoordinates,
    InvalidData,
    InvalidTimeWindow,
    UnknownCamera,
)
from dispatcher.index import CameraIndex, IndexConfig
from dispatcher.models import CAMERA_SCHEMA, EVENT_SCHEMA, OWNER_SCHEMA
from dispatcher.recipients import RecipientSet

__all__ = [
    "CAMERA_SCHEMA",
    "EVENT_SCHEMA",
    "OWNER_SCHEMA",
    "Area",
    "CameraIndex",
    "DispatchError",
    "IndexConfig",
    "IndexFormatError",
    "InvalidArea",
    "InvalidCoordinates",
    "InvalidData",
    "InvalidTimeWindow",
    "RecipientSet",
    "UnknownCamera",
]

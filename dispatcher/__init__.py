"""geodispatch: resolve a video request's area and time window to the exact set of camera owners."""

from dispatcher.area import Area
from dispatcher.consumer import Consumer, Email, OutboxSender, Sender
from dispatcher.errors import (
    DispatchConflict,
    DispatchError,
    IndexFormatError,
    InvalidArea,
    InvalidCoordinates,
    InvalidData,
    InvalidQueueSettings,
    InvalidTimeWindow,
    QueueFull,
    QueueUnavailable,
    UnknownCamera,
)
from dispatcher.index import CameraIndex, IndexConfig
from dispatcher.models import CAMERA_SCHEMA, EVENT_SCHEMA, OWNER_SCHEMA
from dispatcher.queue import (
    AdmitAll,
    Dispatcher,
    DispatchReport,
    LocalSink,
    NotificationHeader,
    QueueSettings,
    RecipientGate,
    RedisSink,
    Sink,
)
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
    # dispatch (issue 5)
    "AdmitAll",
    "Consumer",
    "DispatchConflict",
    "DispatchReport",
    "Dispatcher",
    "Email",
    "InvalidQueueSettings",
    "LocalSink",
    "NotificationHeader",
    "OutboxSender",
    "QueueFull",
    "QueueSettings",
    "QueueUnavailable",
    "RecipientGate",
    "RedisSink",
    "Sender",
    "Sink",
]

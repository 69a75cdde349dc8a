"""geodispatch: resolve a video request's area and time window to the exact set of camera owners."""

from dispatcher.dispatch.consumer import Consumer, Email, OutboxSender, Sender
from dispatcher.dispatch.queue import (
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
from dispatcher.errors import (
    DispatchConflict,
    DispatchError,
    IndexFormatError,
    InvalidArea,
    InvalidChoice,
    InvalidCoordinates,
    InvalidData,
    InvalidPolicy,
    InvalidQueueSettings,
    InvalidReportSettings,
    InvalidRequest,
    InvalidTimeWindow,
    InvalidTransition,
    QueueFull,
    QueueUnavailable,
    RequestRejected,
    UnknownAgency,
    UnknownCamera,
    UnknownRequest,
)
from dispatcher.geo.area import Area
from dispatcher.index import CAMERA_SCHEMA, EVENT_SCHEMA, OWNER_SCHEMA, CameraIndex, IndexConfig, RecipientSet
from dispatcher.reports.maps import agencies_html, agencies_png
from dispatcher.reports.request_map import RequestMap, build_request_map, request_map_html
from dispatcher.reports.transparency import TransparencyReport, build_report
from dispatcher.synthetic.agencies import generate_agencies
from dispatcher.workflow.agencies import Agency, AgencyRegistry
from dispatcher.workflow.policy import Policy, validate
from dispatcher.workflow.privacy import AgencyView, OperatorView, SharedClips, Views
from dispatcher.workflow.requests import INCIDENT_TYPES, ValidRequest, VideoRequest
from dispatcher.workflow.review import OwnerGate, Workflow
from dispatcher.workflow.store import RedisStore, SqliteStore, Store

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
    # requests, policy, review, owner choices, privacy wall (issue 4)
    "INCIDENT_TYPES",
    "Agency",
    "AgencyRegistry",
    "AgencyView",
    "InvalidChoice",
    "InvalidPolicy",
    "InvalidRequest",
    "InvalidTransition",
    "OperatorView",
    "OwnerGate",
    "Policy",
    "RedisStore",
    "RequestRejected",
    "SharedClips",
    "SqliteStore",
    "Store",
    "UnknownAgency",
    "ValidRequest",
    "VideoRequest",
    "Views",
    "Workflow",
    "generate_agencies",
    "validate",
    # maps and the transparency report (issue 7)
    "InvalidReportSettings",
    "RequestMap",
    "TransparencyReport",
    "UnknownRequest",
    "agencies_html",
    "agencies_png",
    "build_report",
    "build_request_map",
    "request_map_html",
]

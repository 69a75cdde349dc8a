"""geodispatch: resolve a video request's area and time window to the exact set of camera owners.

The public API, grouped by subpackage in the order a request flows through them: ``geo`` (areas), ``index`` (the
camera index), ``workflow`` (requests, policy, review, privacy, stores, and the pipeline that joins the steps),
``dispatch`` (wire format, gate, dispatcher, sinks, consumer), ``service`` (the Redis-stream workers), ``reports``
(maps and the transparency report).

The names are imported on first use (PEP 562), each from the module that ``_HOMES`` names: a command that needs
the index alone (``geodispatch build``) does not pay for importing Redis, the workflow, the HTTP stack and the
reports. Type checkers and the documentation read the same imports under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.dispatch.addresses import Address, AddressBook, RedisAddressBook, SqliteAddressBook
    from dispatcher.dispatch.consumer import Consumer, Email, OutboxSender, Sender
    from dispatcher.dispatch.delivery import DeliverySender, SmtpSender, SmtpSettings, WebhookSender
    from dispatcher.dispatch.dispatcher import Dispatcher, DispatchReport
    from dispatcher.dispatch.gate import AdmitAll, GateMigration, OwnerGate, RecipientGate, migrate_legacy_notices
    from dispatcher.dispatch.links import LinkClaim, LinkSettings, LinkSigner
    from dispatcher.dispatch.settings import QueueSettings
    from dispatcher.dispatch.sinks import LocalSink, RedisSink, Sink
    from dispatcher.dispatch.wire import Notification, NotificationHeader
    from dispatcher.errors import (
        AgencyFileMissing,
        DeliveryFailed,
        DispatchConflict,
        DispatchError,
        EvidenceTampered,
        ExpiredLink,
        FeedGap,
        IndexFormatError,
        InvalidAddress,
        InvalidArea,
        InvalidCell,
        InvalidChange,
        InvalidChoice,
        InvalidClip,
        InvalidCoordinates,
        InvalidData,
        InvalidIndexSettings,
        InvalidLink,
        InvalidLinkSettings,
        InvalidPolicy,
        InvalidQueueSettings,
        InvalidReportSettings,
        InvalidRequest,
        InvalidResolution,
        InvalidTimeWindow,
        InvalidTransition,
        MissingDependency,
        MonthNotClosed,
        QueueFull,
        QueueUnavailable,
        ReleaseStoreError,
        RequestRejected,
        ShareRefused,
        UnknownAgency,
        UnknownCamera,
        UnknownClip,
        UnknownRequest,
        WorkerFailed,
    )
    from dispatcher.evidence import Clip, EvidenceStore, Post, RedisEvidence, Share, SharedClip, SqliteEvidence
    from dispatcher.geo.area import Area
    from dispatcher.index import CAMERA_SCHEMA, EVENT_SCHEMA, OWNER_SCHEMA, CameraIndex, IndexConfig, RecipientSet
    from dispatcher.keys import Keys
    from dispatcher.reports.maps import agencies_html, agencies_png
    from dispatcher.reports.privacy import PrivacySettings
    from dispatcher.reports.releases import ReleaseStore
    from dispatcher.reports.request_map import RequestMap, build_request_map, request_map_html
    from dispatcher.reports.transparency import TransparencyReport, build_report
    from dispatcher.service.client import read_outcomes, request_dispatch, submit
    from dispatcher.service.feed import Change, FeedFollower, Snapshots, Snapshotter, parse_change, publish_changes
    from dispatcher.service.worker import ServiceSettings, Worker
    from dispatcher.workflow.agencies import Agency, AgencyRegistry
    from dispatcher.workflow.pipeline import Dispatch, Malformed, Outcome, Pipeline, Submit
    from dispatcher.workflow.policy import Policy, validate
    from dispatcher.workflow.privacy import AgencyView, OperatorView, SharedClips, Views, agency_names
    from dispatcher.workflow.requests import INCIDENT_TYPES, StoredRequest, ValidRequest, VideoRequest
    from dispatcher.workflow.review import Workflow
    from dispatcher.workflow.store import RedisStore, SqliteStore, Store

#: Each public name's module, by module (names separated by spaces).
_HOMES: dict[str, str] = {
    "dispatcher.dispatch.addresses": "Address AddressBook RedisAddressBook SqliteAddressBook",
    "dispatcher.dispatch.consumer": "Consumer Email OutboxSender Sender",
    "dispatcher.dispatch.delivery": "DeliverySender SmtpSender SmtpSettings WebhookSender",
    "dispatcher.dispatch.dispatcher": "Dispatcher DispatchReport",
    "dispatcher.dispatch.gate": "AdmitAll GateMigration OwnerGate RecipientGate migrate_legacy_notices",
    "dispatcher.dispatch.links": "LinkClaim LinkSettings LinkSigner",
    "dispatcher.dispatch.settings": "QueueSettings",
    "dispatcher.dispatch.sinks": "LocalSink RedisSink Sink",
    "dispatcher.dispatch.wire": "Notification NotificationHeader",
    "dispatcher.errors": ("AgencyFileMissing DeliveryFailed DispatchConflict DispatchError EvidenceTampered "
                          "ExpiredLink FeedGap IndexFormatError InvalidAddress InvalidArea InvalidCell InvalidChange "
                          "InvalidChoice InvalidClip InvalidCoordinates InvalidData InvalidIndexSettings InvalidLink "
                          "InvalidLinkSettings InvalidPolicy InvalidQueueSettings InvalidReportSettings "
                          "InvalidRequest InvalidResolution InvalidTimeWindow InvalidTransition MissingDependency "
                          "MonthNotClosed QueueFull QueueUnavailable ReleaseStoreError RequestRejected ShareRefused "
                          "UnknownAgency UnknownCamera UnknownClip UnknownRequest WorkerFailed"),
    "dispatcher.evidence": "Clip EvidenceStore Post RedisEvidence Share SharedClip SqliteEvidence",
    "dispatcher.geo.area": "Area",
    "dispatcher.index": "CAMERA_SCHEMA EVENT_SCHEMA OWNER_SCHEMA CameraIndex IndexConfig RecipientSet",
    "dispatcher.keys": "Keys",
    "dispatcher.reports.maps": "agencies_html agencies_png",
    "dispatcher.reports.privacy": "PrivacySettings",
    "dispatcher.reports.releases": "ReleaseStore",
    "dispatcher.reports.request_map": "RequestMap build_request_map request_map_html",
    "dispatcher.reports.transparency": "TransparencyReport build_report",
    "dispatcher.service.client": "read_outcomes request_dispatch submit",
    "dispatcher.service.feed": "Change FeedFollower Snapshots Snapshotter parse_change publish_changes",
    "dispatcher.service.worker": "ServiceSettings Worker",
    "dispatcher.workflow.agencies": "Agency AgencyRegistry",
    "dispatcher.workflow.pipeline": "Dispatch Malformed Outcome Pipeline Submit",
    "dispatcher.workflow.policy": "Policy validate",
    "dispatcher.workflow.privacy": "AgencyView OperatorView SharedClips Views agency_names",
    "dispatcher.workflow.requests": "INCIDENT_TYPES StoredRequest ValidRequest VideoRequest",
    "dispatcher.workflow.review": "Workflow",
    "dispatcher.workflow.store": "RedisStore SqliteStore Store",
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names.split()}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use and kept in this module's namespace."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    # errors
    "AgencyFileMissing",
    "DeliveryFailed",
    "DispatchConflict",
    "DispatchError",
    "EvidenceTampered",
    "ExpiredLink",
    "FeedGap",
    "IndexFormatError",
    "InvalidAddress",
    "InvalidArea",
    "InvalidCell",
    "InvalidChange",
    "InvalidChoice",
    "InvalidClip",
    "InvalidCoordinates",
    "InvalidData",
    "InvalidIndexSettings",
    "InvalidLink",
    "InvalidLinkSettings",
    "InvalidPolicy",
    "InvalidQueueSettings",
    "InvalidReportSettings",
    "InvalidRequest",
    "InvalidResolution",
    "InvalidTimeWindow",
    "InvalidTransition",
    "MissingDependency",
    "MonthNotClosed",
    "QueueFull",
    "QueueUnavailable",
    "ReleaseStoreError",
    "RequestRejected",
    "ShareRefused",
    "UnknownAgency",
    "UnknownCamera",
    "UnknownClip",
    "UnknownRequest",
    "WorkerFailed",
    # geo
    "Area",
    # index
    "CAMERA_SCHEMA",
    "EVENT_SCHEMA",
    "OWNER_SCHEMA",
    "CameraIndex",
    "IndexConfig",
    "RecipientSet",
    # workflow
    "INCIDENT_TYPES",
    "Agency",
    "AgencyRegistry",
    "AgencyView",
    "Dispatch",
    "Malformed",
    "OperatorView",
    "Outcome",
    "Pipeline",
    "Policy",
    "RedisStore",
    "SharedClips",
    "SqliteStore",
    "Store",
    "StoredRequest",
    "Submit",
    "ValidRequest",
    "VideoRequest",
    "Views",
    "Workflow",
    "agency_names",
    "validate",
    # evidence
    "Clip",
    "EvidenceStore",
    "Post",
    "RedisEvidence",
    "Share",
    "SharedClip",
    "SqliteEvidence",
    # dispatch
    "Address",
    "AddressBook",
    "AdmitAll",
    "Consumer",
    "DeliverySender",
    "DispatchReport",
    "Dispatcher",
    "Email",
    "GateMigration",
    "Keys",
    "LinkClaim",
    "LinkSettings",
    "LinkSigner",
    "LocalSink",
    "Notification",
    "NotificationHeader",
    "OutboxSender",
    "OwnerGate",
    "QueueSettings",
    "RecipientGate",
    "RedisAddressBook",
    "RedisSink",
    "Sender",
    "Sink",
    "SmtpSender",
    "SmtpSettings",
    "SqliteAddressBook",
    "WebhookSender",
    "migrate_legacy_notices",
    # service
    "Change",
    "FeedFollower",
    "ServiceSettings",
    "Snapshots",
    "Snapshotter",
    "Worker",
    "parse_change",
    "publish_changes",
    "read_outcomes",
    "request_dispatch",
    "submit",
    # reports
    "PrivacySettings",
    "ReleaseStore",
    "RequestMap",
    "TransparencyReport",
    "agencies_html",
    "agencies_png",
    "build_report",
    "build_request_map",
    "request_map_html",
]

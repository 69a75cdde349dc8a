"""One exception hierarchy for the library.

Every error we raise derives from :class:`DispatchError` and also from the matching built-in exception, so a
caller can catch ours (``except DispatchError``) or Python's (``except ValueError``).
"""

from __future__ import annotations


class DispatchError(Exception):
    """Base class of every error geodispatch raises on purpose."""


class InvalidCoordinates(DispatchError, ValueError):
    """Latitude/longitude that are NaN, infinite or outside their range."""


class InvalidResolution(DispatchError, ValueError):
    """An H3 resolution outside 0..15 or coarser/finer than the operation allows, or an H3 grid distance (a number of
    steps at the cell's resolution) out of range."""


class InvalidCell(DispatchError, ValueError):
    """An integer that is not a valid H3 cell index."""


class InvalidArea(DispatchError, ValueError):
    """An area that is not a valid, bounded, non-empty (Multi)Polygon we can resolve."""


class InvalidTimeWindow(DispatchError, ValueError):
    """A time window that is naive, reversed, non-finite or otherwise unusable."""


class InvalidData(DispatchError, ValueError):
    """Camera, owner or event rows that break the data model; the message names the offending rows."""


class IndexFormatError(DispatchError, OSError):
    """An index directory that is missing, truncated or written by an incompatible version."""


class UnknownCamera(DispatchError, KeyError):
    """A live update that names a camera the index does not hold."""


class InvalidQueueSettings(DispatchError, ValueError):
    """Queue settings that are misspelled, of the wrong type or out of range."""


class DispatchConflict(DispatchError, RuntimeError):
    """A request dispatched again with a recipient set other than the one its first dispatch recorded."""


class QueueUnavailable(DispatchError, ConnectionError):
    """Redis stayed unreachable through every retry; nothing was lost, the dispatch can be run again."""


class QueueFull(DispatchError, TimeoutError):
    """The queue stayed full (backpressure) for longer than the configured timeout."""


class UnknownAgency(DispatchError, KeyError):
    """A request or registry operation naming an agency that is not a partner."""


class InvalidRequest(DispatchError, ValueError):
    """A video request that cannot even be parsed (wrong types, missing fields, duplicated id)."""


class RequestRejected(DispatchError, ValueError):
    """A parsed request that breaks one or more policy rules; ``violations`` lists every one, with its code."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = list(violations)
        super().__init__("request rejected: " + "; ".join(f"[{c}] {m}" for c, m in self.violations))

    @property
    def codes(self) -> list[str]:
        return [c for c, _ in self.violations]


class InvalidPolicy(DispatchError, ValueError):
    """Policy settings that are misspelled, of the wrong type or out of range."""


class InvalidTransition(DispatchError, RuntimeError):
    """A workflow step that the request's current state does not allow (or a request that does not exist)."""


class InvalidChoice(DispatchError, ValueError):
    """An owner choice that is malformed or comes from an owner who was not notified of the request."""


class UnknownRequest(DispatchError, KeyError):
    """A request id that the store does not hold."""


class InvalidReportSettings(DispatchError, ValueError):
    """Map or report settings out of range: a suppression threshold k below 1, an H3 resolution outside 0..15,
    a malformed month."""


class InvalidServiceSettings(DispatchError, ValueError):
    """Worker or sender settings out of range: no worker or thread, a reclaim that takes entries still being
    handled (an idle time of 0), a read that would block forever, a period that is negative or not a number."""


class WorkerFailed(DispatchError, RuntimeError):
    """A service worker process exited with an error."""


class AgencyFileMissing(DispatchError, FileNotFoundError):
    """No partner-agency file: the path given is None or names no file. Agencies are never made up by default."""


class InvalidChange(DispatchError, ValueError):
    """A camera registry change (for the change feed) that is malformed: an unknown operation, a missing or
    mistyped field, too many ids, a camera row the data model refuses."""


class FeedGap(DispatchError, LookupError):
    """The change feed was trimmed past an index's position and no snapshot covers the gap."""


class InvalidIndexSettings(DispatchError, ValueError):
    """Index settings out of range: H3 levels that are not strictly increasing resolutions 0..15."""



class MonthNotClosed(DispatchError, ValueError):
    """A transparency report asked for a month that has not closed yet (its requests are still being reviewed
    and dispatched): it can be published only once, after it closes, or shown as an internal preview."""


class ReleaseStoreError(DispatchError, OSError):
    """A release file of the transparency report that cannot be read, or that holds a release in a format this
    version does not know."""


class NotAuthenticated(DispatchError, PermissionError):
    """A call to the HTTP API without a valid credential: none given, garbled, unknown or revoked."""


class NotPermitted(DispatchError, PermissionError):
    """A credential whose role may not make this call (an agency's key on a reviewer's endpoint)."""


class RateLimited(DispatchError, RuntimeError):
    """A caller over its rate limit: ``retry_after_s`` is when its window has room again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ApiKeyError(DispatchError, ValueError):
    """An API key operation refused: a principal that already has two active keys, an unknown key id, a malformed
    agency or reviewer name."""


class InvalidApiSettings(DispatchError, ValueError):
    """HTTP API settings out of range (a body limit under 1 KiB, a list limit under 1)."""


class MissingDependency(DispatchError, ImportError):
    """An optional library that a call needs is not installed (GeoDataFrames need geopandas: the ``geo`` extra)."""


class InvalidClip(DispatchError, ValueError):
    """A clip refused at ingest: empty or larger than the limit, a naive or reversed recorded time, a media type
    that is not ``video/...`` or ``image/...``, or a camera that is not the owner's."""


class UnknownClip(DispatchError, KeyError):
    """A clip, share or public post id the evidence store does not hold (or not for this caller)."""


class ShareRefused(DispatchError, PermissionError):
    """A share the platform refuses, with nothing recorded: a clip that is not the owner's, recorded outside the
    request's window, a request not approved or dispatched, or an owner who was not one of its recipients."""


class EvidenceTampered(DispatchError, OSError):
    """A stored clip whose bytes no longer have the SHA-256 recorded at ingest: never served."""


class InvalidLink(DispatchError, PermissionError):
    """A resident's link whose token is forged, altered, for another action, or unreadable."""


class ExpiredLink(InvalidLink):
    """A resident's link whose token was genuine but is past its age."""


class InvalidLinkSettings(DispatchError, ValueError):
    """Settings of the residents' links (secret, base URL, age) that cannot be used."""


class InvalidAddress(DispatchError, ValueError):
    """A resident's e-mail address or push URL that cannot be used (the message never repeats it)."""


class DeliveryFailed(QueueUnavailable):
    """An e-mail or push could not be delivered after every retry: the notification stays pending, to be sent
    again later (a consumer treats it as it treats Redis being down)."""

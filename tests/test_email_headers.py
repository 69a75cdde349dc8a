"""The resident's e-mail: whatever an agency's name holds, no CR, LF or other control character reaches a header
(the subject, the idempotency key a mailer sends along), and the subject fits one header line."""

from __future__ import annotations

import email.policy
import unicodedata
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.dispatch.consumer import MAX_SUBJECT_CHARS, SUBJECT_PREFIX, Email, render
from dispatcher.dispatch.wire import Notification
from tests.notifications import LINKS

UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def rendered(agency_name: str, request_id: str = "r1") -> Email:
    return render(Notification({"request_id": request_id, "agency_id": "a", "agency_name": agency_name,
                                "case_number": "C-1", "incident_type": "burglary", "start": "s", "end": "e",
                                "message": "m"}, 42, (7,)), LINKS)


def header_safe(value: str) -> bool:
    return all(c == " " or not (c.isspace() or unicodedata.category(c) in UNSAFE) for c in value)


HOSTILE = {
    "crlf": ("Chicago PD\r\nBcc: everyone@example.com", "Video request from Chicago PD Bcc: everyone@example.com"),
    "bare_lf": ("Chicago PD\nX-Injected: 1", "Video request from Chicago PD X-Injected: 1"),
    "bare_cr": ("Chicago PD\rBcc: x@example.com", "Video request from Chicago PD Bcc: x@example.com"),
    "line_separator": ("Chicago PD\u2028Bcc: x@example.com", "Video request from Chicago PD Bcc: x@example.com"),
    "paragraph_separator": ("Chicago\u2029PD", "Video request from Chicago PD"),
    "next_line": ("Chicago\u0085PD", "Video request from Chicago PD"),
    "nul": ("Chicago\x00PD", "Video request from Chicago PD"),
    "escape": ("\x1b[31mChicago PD", "Video request from [31mChicago PD"),
    "bidi_override": ("Chicago \u202eDP", "Video request from Chicago DP"),
    "zero_width": ("Chi\u200bcago PD", "Video request from Chi cago PD"),
    "tabs_and_runs": ("\tChicago   \x0b PD \x0c", "Video request from Chicago PD"),
    "only_controls": ("\r\n\x00\u2028", "Video request"),
    "empty": ("", "Video request"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_agency_names_stay_on_one_header_line(name: str) -> None:
    raw, subject = HOSTILE[name]
    e = rendered(raw)
    assert e.subject == subject
    assert header_safe(e.subject) and header_safe(e.idempotency_key)
    # a standard-library mailer takes the subject as it is (it refuses a header value holding CR or LF)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = e.subject
    msg["X-Idempotency-Key"] = e.idempotency_key
    lines = msg.as_bytes().split(b"\r\n")
    assert [ln.split(b":")[0] for ln in lines if ln and not ln.startswith((b" ", b"\t"))] == \
           [b"Subject", b"X-Idempotency-Key"]


def test_a_very_long_name_is_cut_to_one_line() -> None:
    e = rendered("Metropolitan " * 1000 + "Police Department")
    assert len(e.subject) == MAX_SUBJECT_CHARS and e.subject.endswith("\u2026")
    assert e.subject.startswith(SUBJECT_PREFIX + "Metropolitan Metropolitan")
    assert len(rendered("x" * (MAX_SUBJECT_CHARS - len(SUBJECT_PREFIX))).subject) == MAX_SUBJECT_CHARS
    assert not rendered("x" * (MAX_SUBJECT_CHARS - len(SUBJECT_PREFIX))).subject.endswith("\u2026")


def test_the_body_still_names_the_agency_escaped() -> None:
    e = rendered("<b>Chicago</b> PD\r\nBcc: x")
    assert "&lt;b&gt;Chicago&lt;/b&gt; PD" in e.html and "<b>" not in e.html


def test_an_ordinary_name_and_key_are_unchanged() -> None:
    e = rendered("Chicago Police Department", "req-1_a")
    assert e.subject == "Video request from Chicago Police Department"
    assert e.idempotency_key == "req-1_a:42"
    assert rendered("x", "r/1").idempotency_key == "r/1:42"
    assert rendered("x", "r\r\n1").idempotency_key == "r%0D%0A1:42"


@given(st.text(max_size=300), st.text(min_size=1, max_size=40))
def test_no_name_breaks_a_header(agency_name: str, request_id: str) -> None:
    e = rendered(agency_name, request_id)
    assert header_safe(e.subject) and header_safe(e.idempotency_key)
    assert e.subject.startswith("Video request") and len(e.subject) <= MAX_SUBJECT_CHARS
    assert e.subject == e.subject.strip() and "  " not in e.subject

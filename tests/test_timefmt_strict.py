"""Strict RFC 3339 and v1.1 dates: the forms Python's own parsers accept but RFC 3339 does not.

One parser (``schemas.timefmt``) is used by the records, the generator and the Kafka
tools (``kafka_client.parse_time_ms``); these tests pin both.
"""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafka_client import parse_time_ms
from schemas.errors import InvalidRecord
from schemas.timefmt import format_rfc3339, parse_rfc3339, parse_twitter_v1


def rejected(fn, *args) -> str:
    with pytest.raises(InvalidRecord) as info:
        fn(*args)
    return str(info.value)


NOT_RFC3339 = [
    "2026-W47-4T15:00:00Z",            # ISO week date
    "20261119T150000Z",                # ISO basic format
    "2026-11-19T15Z",                  # hour only
    "2026-11-19T15:00Z",               # no seconds
    "2026-11-19T15:00:00.Z",           # empty fraction
    "2026-11-19T15:00:00+0900",        # offset without colon
    "2026-11-19T15:00:00+09",          # offset hours only
    "２０２６-11-19T15:00:00Z",          # full-width digits
    "2026-11-19T15:00:00.５Z",          # a full-width digit in the fraction
    "٢٠٢٦-11-19T15:00:00Z",            # Arabic-Indic digits
    "2026-11-19T15:00:00Z ",           # trailing space
    " 2026-11-19T15:00:00Z",           # leading space
    "2026-11-19T15:00:00ZZ",
    "2026-11-19T15:00:00.1234567890Z",  # more than nanoseconds
    "+2026-11-19T15:00:00Z",
    "2026-11-19_15:00:00Z",
    "2026-11-19T15:00:00\u200bZ",      # zero-width space
]


@pytest.mark.parametrize("text", NOT_RFC3339)
def test_forms_python_accepts_but_rfc3339_does_not_are_rejected(text):
    assert rejected(parse_rfc3339, text) == f"ts: {text!r} is not an RFC 3339 timestamp"
    assert parse_time_ms(text) is None


@pytest.mark.parametrize("text, reason", [
    ("2016-12-31T23:59:60Z", "is a leap second, which UTC epoch time cannot represent"),
    ("2026-11-19T15:00:00+24:00", "has an offset outside -23:59..+23:59"),
    ("2026-11-19T15:00:00-00:60", "has an offset outside -23:59..+23:59"),
    ("2026-11-19T24:00:00Z", "is not an RFC 3339 timestamp"),
    ("2026-11-19T15:60:00Z", "is not an RFC 3339 timestamp"),
    ("2026-02-29T15:00:00Z", "is not an RFC 3339 timestamp"),
    ("2026-11-19T15:00", "has no UTC offset (RFC 3339 requires one)"),
])
def test_out_of_range_fields_are_rejected_with_their_reason(text, reason):
    assert rejected(parse_rfc3339, text) == f"ts: {text!r} {reason}"


def test_a_huge_value_is_rejected_and_shown_shortened():
    text = "2026-11-19T15:00:00" + "0" * 10_000 + "Z"
    assert rejected(parse_rfc3339, text) == f"ts: {text[:40]!r}... ({len(text)} chars) is not an RFC 3339 timestamp"


@pytest.mark.parametrize("text, seconds", [
    ("2026-11-19t15:00:00z", 1795100400.0),          # RFC 3339 5.6: t and z may be lower case
    ("2026-11-19T15:00:00-00:00", 1795100400.0),     # unknown local offset, UTC time
    ("2026-11-20T14:59:00+23:59", 1795100400.0),
    ("2026-11-19T15:00:00.123456789Z", 1795100400.123456789),
    ("2026-11-19T15:00:00.5Z", 1795100400.5),
])
def test_valid_rfc3339_forms(text, seconds):
    assert parse_rfc3339(text) == seconds
    assert parse_time_ms(text) == round(seconds * 1000)


@given(st.integers(min_value=1142899200000, max_value=4102444799999))
def test_kafka_times_agree_with_the_pipeline(millis):
    text = format_rfc3339(millis / 1000)
    assert parse_time_ms(text) == millis


@pytest.mark.parametrize("text", [
    "Mon Oct 10 20:19:24 +0000 2018",    # 2018-10-10 was a Wednesday
    "Wed Oct 10 20:19:60 +0000 2018",    # leap second
    "Wed Oct 10 20:19:24 +0000 ٢٠١٨",    # Arabic-Indic digits
])
def test_v1_dates_with_a_wrong_weekday_or_odd_digits_are_rejected(text):
    assert rejected(parse_twitter_v1, text) == (
        f"created_at: {text!r} is not a v1.1 date like 'Wed Oct 10 20:19:24 +0000 2018'")
    assert parse_time_ms(text) is None


def test_v1_weekday_is_checked_in_local_time():
    # 05:19 on Thursday in +09:00 is Wednesday 20:19 UTC: the weekday is the local one
    assert parse_twitter_v1("Thu Oct 11 05:19:24 +0900 2018") == dt.datetime(
        2018, 10, 10, 20, 19, 24, tzinfo=dt.timezone.utc).timestamp()

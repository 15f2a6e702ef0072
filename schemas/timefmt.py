"""Event-time conversions: RFC 3339 in the files, float epoch seconds (UTC) inside.

Records carry time as float seconds since the Unix epoch, UTC, so that Beam
timestamps, windows and comparisons need no parsing; outputs format it back to
RFC 3339 with millisecond precision and a ``Z`` suffix, always the same way, so
the same input gives byte-identical outputs.
"""
from __future__ import annotations

import datetime as _dt
import math
import re

from schemas.errors import InvalidRecord

_UTC = _dt.timezone.utc
_EARLIEST = _dt.datetime(2006, 3, 21, tzinfo=_UTC).timestamp()  # Twitter's first tweet
_LATEST = _dt.datetime(2100, 1, 1, tzinfo=_UTC).timestamp()


# RFC 3339 section 5.6, exactly: full-date "T" full-time, ASCII digits only (Python's
# int() and fromisoformat also take full-width or Arabic-Indic digits, ISO week dates,
# basic format and hour-only times; none of those is RFC 3339). "T" and "Z" may be
# lower case (ABNF literals are case-insensitive) and, as section 5.6's note allows, a
# space may stand for "T". Offsets are within +-23:59.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))", re.ASCII)
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?", re.ASCII)


def parse_rfc3339(value, field: str = "ts") -> float:
    """RFC 3339 string (``Z`` or numeric offset) -> epoch seconds, UTC.

    The one parser of RFC 3339 in the project (records, the generator's ``--start``,
    Kafka timestamps): strict, see ``_RFC3339``.
    """
    if not isinstance(value, str):
        raise InvalidRecord(f"{field}: expected an RFC 3339 string, got {type(value).__name__}")
    match = _RFC3339.fullmatch(value) if len(value) <= 64 else None
    if match is None:
        if len(value) <= 64 and _DATE_ONLY.fullmatch(value):
            raise InvalidRecord(f"{field}: {value!r} has no UTC offset (RFC 3339 requires one)")
        raise InvalidRecord(f"{field}: {_shown(value)} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if second == "60":
        raise InvalidRecord(f"{field}: {value!r} is a leap second, which UTC epoch time cannot represent")
    if not zulu and (int(off_h) > 23 or int(off_m) > 59):
        raise InvalidRecord(f"{field}: {value!r} has an offset outside -23:59..+23:59")
    try:
        moment = _dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                              tzinfo=_UTC)
    except ValueError:  # February 30th, hour 24 ...
        raise InvalidRecord(f"{field}: {value!r} is not an RFC 3339 timestamp") from None
    whole = int(moment.timestamp())
    if not zulu:
        offset_s = (int(off_h) * 60 + int(off_m)) * 60
        whole -= offset_s if sign == "+" else -offset_s
    # One division, so "…24.123Z" gives exactly millis / 1000, as format_rfc3339 wrote it.
    seconds = (whole * 10 ** len(fraction) + int(fraction)) / 10 ** len(fraction) if fraction else float(whole)
    return check_epoch(seconds, field)


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 64 else f"{value[:40]!r}... ({len(value)} chars)"


# v1.1 dates use English names whatever the process locale; strptime's %a/%b
# would follow LC_TIME (and costs ~8 us a call on the firehose's hot path).
_V1_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}
_V1_WEEKDAYS = {name: number for number, name in enumerate(("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"))}


def parse_twitter_v1(value, field: str = "created_at") -> float:
    """v1.1 ``created_at`` (``Wed Oct 10 20:19:24 +0000 2018``) -> epoch seconds."""
    if not isinstance(value, str):
        raise InvalidRecord(f"{field}: expected a string, got {type(value).__name__}")
    parts = value.split(" ")
    try:
        weekday, month, day, clock, offset, year = parts
        hour, minute, second = clock.split(":")
        digits = day + hour + minute + second + offset[1:] + year
        if (weekday not in _V1_WEEKDAYS or not digits.isascii() or not digits.isdigit()
                or len(day) != 2 or len(hour) != 2 or len(minute) != 2 or len(second) != 2
                or len(offset) != 5 or offset[0] not in "+-" or len(year) != 4):
            raise ValueError(value)
        offset_minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        if int(offset[3:5]) >= 60 or offset_minutes >= 24 * 60:
            raise ValueError(value)
        local_moment = _dt.datetime(int(year), _V1_MONTHS[month], int(day), int(hour), int(minute), int(second),
                                    tzinfo=_UTC)
        if local_moment.weekday() != _V1_WEEKDAYS[weekday]:  # "Mon Oct 10 … 2018" was a Wednesday
            raise ValueError(value)
        local = local_moment.timestamp()
    except (ValueError, KeyError):
        raise InvalidRecord(
            f"{field}: {value!r} is not a v1.1 date like 'Wed Oct 10 20:19:24 +0000 2018'"
        ) from None
    return check_epoch(local - 60 * (offset_minutes if offset[0] == "+" else -offset_minutes), field)


def check_epoch(seconds: float, field: str = "ts") -> float:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or math.isnan(seconds):
        raise InvalidRecord(f"{field}: not a finite time")
    if not _EARLIEST <= seconds < _LATEST:
        raise InvalidRecord(f"{field}: {format_rfc3339(seconds) if math.isfinite(seconds) else seconds} is outside 2006..2100")
    return float(seconds)


def format_rfc3339(seconds: float) -> str:
    """Epoch seconds -> ``2026-11-25T23:36:41.123Z`` (milliseconds, always)."""
    millis = int(round(seconds * 1000))
    moment = _dt.datetime.fromtimestamp(millis // 1000, tz=_UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis % 1000:03d}Z"


# How far an event time may lie ahead of the clock where it is judged (the worker's wall
# clock in ParseInputs, the producer's when a Kafka CreateTime is set): phone clocks drift a
# little, but no genuine record lies in the future. The pipeline's ``--max_event_future_s``.
DEFAULT_MAX_EVENT_FUTURE_S = 300.0


def ahead_of_clock(ts: float, now: float, max_future_s: float) -> str | None:
    """Why ``ts`` may not be used as an event time at clock ``now`` (more than ``max_future_s``
    ahead of it), or None when it may."""
    ahead = ts - now
    if ahead <= max_future_s:
        return None
    return (f"event time {format_rfc3339(ts)} is {ahead:.3f} s ahead of the clock {format_rfc3339(now)} "
            f"(max_event_future_s={max_future_s:g}): a future time would move the watermark past every "
            "genuine record")

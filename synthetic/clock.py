"""Fast, locale-independent time formatting for the generator's hot loops.

A 10,000-user day is about a million timestamps; ``datetime.strftime`` per
line would dominate the run. These formatters cache the date-and-minute
prefix (so one ``gmtime`` per distinct minute) and produce exactly the strings
of ``schemas.timefmt.format_rfc3339`` (tests hold them equal), Twitter v1.1's
``created_at`` and v2's ``created_at``. Month and day names are spelled out
here rather than taken from ``strftime`` so a non-English locale cannot change
the output.
"""
from __future__ import annotations

import time

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_minute_prefix: dict[int, str] = {}


def _prefix(minute: int) -> str:
    text = _minute_prefix.get(minute)
    if text is None:
        t = time.gmtime(minute * 60)
        text = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
        if len(_minute_prefix) > 200_000:  # bounded: a run spans at most a few thousand minutes
            _minute_prefix.clear()
        _minute_prefix[minute] = text
    return text


def rfc3339_ms(millis: int) -> str:
    """Unix milliseconds -> ``2026-11-20T01:02:03.456Z`` (== schemas.timefmt.format_rfc3339)."""
    seconds, ms = divmod(millis, 1000)
    minute, sec = divmod(seconds, 60)
    return f"{_prefix(minute)}{sec:02d}.{ms:03d}Z"


def rfc3339(seconds: float) -> str:
    return rfc3339_ms(int(round(seconds * 1000)))


def twitter_v1(seconds: int) -> str:
    """Unix seconds -> v1.1 ``created_at`` such as ``Wed Oct 10 20:19:24 +0000 2018``."""
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:02d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000 {t.tm_year:04d}")


def twitter_v2(seconds: int) -> str:
    """Unix seconds -> v2 ``created_at`` (``2026-11-20T01:02:03.000Z``: v2 reports whole seconds)."""
    return rfc3339_ms(seconds * 1000)

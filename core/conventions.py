"""The conventions every step and every engine shares, each defined once.

* :data:`METRICS_NAMESPACE`: the namespace of every counter (``read.<kind>``,
  ``emitted.<name>``, each step's own); the run summary queries it.
* :func:`dead_letter`: how a rejected input becomes a ``DeadLetter``, with one
  encoding of ``raw``: an input line as received (:func:`raw_text`: bytes that are not
  UTF-8 and lone surrogates as backslash escapes, a huge line truncated), or a record a
  later step rejects as JSON (:func:`record_json`: its contract fields, times RFC 3339).
* :func:`event_time`: the event time of a raw input line -- exactly the one the parser
  stamps it with -- used by the file replay to schedule lines and by every Kafka
  producer for CreateTime.
* :func:`is_bounded`: whether a step runs its batch or its streaming form, decided
  from its inputs (an engine's collection exposes ``is_bounded``; the launcher makes its
  sources bounded or not from ``--streaming``, so the two never disagree).

Engine-neutral: standard library, ``schemas`` and ``core`` only.
"""
from __future__ import annotations

import json
import time

from core.lines import MAX_RAW_KEPT, DamagedLine
from schemas.parse import parse_line
from schemas.records import TIME_FIELDS, DeadLetter
from schemas.timefmt import ahead_of_clock, format_rfc3339

METRICS_NAMESPACE = "tapfollow"


def writable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) as a backslash escape."""
    if text.isascii():
        return text
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def raw_text(line) -> str:
    """An input line as received, always writable as UTF-8: bytes that are not UTF-8 and lone
    surrogates kept as backslash escapes (``\\xff``, ``\\ud800``), a huge line truncated (the
    10 MB line rejected for its size is kept as its first 64 KiB plus a marker)."""
    if isinstance(line, bytes):
        size = len(line)
        text = line[: MAX_RAW_KEPT + 4].decode("utf-8", errors="backslashreplace")
        if size > MAX_RAW_KEPT:
            return text[:MAX_RAW_KEPT] + f"…[truncated from {size} bytes]"
        return text
    if not isinstance(line, str):
        line = repr(line)
    if len(line) > MAX_RAW_KEPT:
        line = line[:MAX_RAW_KEPT] + f"…[truncated from {len(line)} chars]"
    return writable(line)


def _plain(value):
    if hasattr(value, "_asdict"):
        return {name: (format_rfc3339(v) if name in TIME_FIELDS and isinstance(v, (int, float))
                       and not isinstance(v, bool) else _plain(v))
                for name, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def record_json(record) -> str:
    """A record (or a step's message of records) as the ``raw`` of its dead letter: its fields
    as JSON, nested records too, times RFC 3339 as in the outputs, keys sorted."""
    try:
        return writable(json.dumps(_plain(record), ensure_ascii=False, sort_keys=True, default=str))
    except (TypeError, ValueError):
        return writable(repr(record))


def dead_letter(source: str, error: str, raw) -> DeadLetter:
    """The one way a rejection becomes a ``DeadLetter``: ``raw`` is the input line as received
    (bytes or str, :func:`raw_text`) or the record a step rejected (:func:`record_json`)."""
    encoded = raw_text(raw) if isinstance(raw, (bytes, str)) else record_json(raw)
    return DeadLetter(source=source, error=writable(str(error)), raw=encoded)


def event_time(kind: str, line, now: float | None = None, max_future_s: float | None = None) -> float | None:
    """The event time (epoch s) the parser stamps on this raw input line, or None when it will
    reject the line (or, like a user, it has no time).

    With ``max_future_s``, also None for a line stamped more than that ahead of ``now``
    (default the wall clock): ParseInputs dead-letters it by the same rule, so its time
    must never schedule a replay or become a Kafka CreateTime."""
    if isinstance(line, DamagedLine):
        return None
    try:
        ts = getattr(parse_line(kind, line), "ts", None)
    except Exception:  # noqa: BLE001 - rejected (or a parser bug): ParseInputs dead-letters it
        return None
    if ts is None or max_future_s is None:
        return ts
    clock = time.time() if now is None else now
    return None if ahead_of_clock(ts, clock, max_future_s) is not None else ts


def event_time_ms(kind: str, line) -> int | None:
    """:func:`event_time` in epoch milliseconds (Kafka's CreateTime unit)."""
    ts = event_time(kind, line)
    return None if ts is None else int(round(ts * 1000))


def is_bounded(*collections, override: bool | None = None) -> bool:
    """Batch (True) or streaming (False): ``override`` when a caller states it, else whether
    every input collection is bounded (each engine's collection says so as ``is_bounded``)."""
    if override is not None:
        return bool(override)
    return all(getattr(c, "is_bounded", True) for c in collections)

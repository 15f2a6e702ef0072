"""The conventions every step and every engine shares, each defined once.

* :data:`METRICS_NAMESPACE`: the namespace of every counter (``read.<kind>``,
  ``emitted.<name>``, each step's own); the run summary queries it.
* :func:`dead_letter`: how a rejected input becomes a ``DeadLetter``, with one
  encoding of ``raw``: an input line as received (:func:`raw_text`: bytes that are not
  UTF-8 and lone surrogates as backslash escapes, a huge line truncated), or a record a
  later step rejects as JSON (:func:`record_json`: its contract fields, times RFC 3339).
* the event time of a raw input line is ``core.inputs``': the one judgement of a line
  (``judge_line``) gives it to ParseInputs, the file replay and every Kafka producer.
* :func:`is_bounded`: whether a step runs its batch or its streaming form, decided
  from its inputs (an engine's collection exposes ``is_bounded``; the launcher makes its
  sources bounded or not from ``--streaming``, so the two never disagree).

Engine-neutral: standard library, ``schemas`` and ``core`` only.
"""
from __future__ import annotations

import json

from core.lines import MAX_RAW_KEPT
from schemas.records import TIME_FIELDS, DeadLetter
from schemas.timefmt import format_rfc3339

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


def is_bounded(*collections, override: bool | None = None) -> bool:
    """Batch (True) or streaming (False): ``override`` when a caller states it, else whether
    every input collection is bounded (each engine's collection says so as ``is_bounded``)."""
    if override is not None:
        return bool(override)
    return all(getattr(c, "is_bounded", True) for c in collections)

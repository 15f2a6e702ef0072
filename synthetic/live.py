"""The generator's live firehose: a world's tweets written to a stream as they happen.

``python -m pipelines.generate --output DIR --live [--speed X]`` builds the
world of the ``--hours`` that have just ended (unless ``--start`` is given: no
record is dated ahead of the wall clock, which the pipeline and the gateway
refuse), writes everything but the firehose to ``DIR`` (users, pings, taps,
truth), and then writes the firehose lines -- v1.1 statuses, v2 objects and
compliance messages, in event-time order -- to standard output in their event-time
rhythm from the moment it starts (``--speed 60`` plays an hour in a minute). Piped into the gateway, it is the
"live stream" the firehose connector hands on (``serve`` needs a users registry,
and one that exists before it starts: the live run is still writing its own)::

    python -m pipelines.generate --output W0 --users 300 --hours 1      # once: the registry
    python -m pipelines.generate --output W --live --speed 60 \\
      | python -m nfc_gateway serve --output OUT --users W0/users.jsonl --firehose - --rate 0

The lines are exactly those a file-mode run with the same arguments writes to
``tweets.jsonl``; only their timing differs.
"""
from __future__ import annotations

import re
import time
from typing import Callable, IO, Iterable, Iterator, Optional

from schemas.timefmt import parse_rfc3339
from synthetic.twitter import snowflake_millis

# The first fields of each rendered line (synthetic.twitter keeps the top-level ids first).
_V1_ID = re.compile(r'^\{"created_at":"[^"]*","id":(\d+)')
_V2_ID = re.compile(r'^\{"data":\{"id":"(\d+)"')
_TIMESTAMP_MS = re.compile(r'"timestamp_ms":"(\d+)"')    # v1.1 compliance messages
_EVENT_AT = re.compile(r'"event_at":"([^"]+)"')            # v2 compliance events


def line_millis(line: str) -> Optional[int]:
    """The event time (epoch ms) of a firehose line, or None when it carries none
    that can be read cheaply (an adversarial malformed line, say)."""
    head = line[:120]
    match = _V1_ID.match(head) or _V2_ID.match(head)
    if match:
        return snowflake_millis(int(match.group(1)))
    if head.startswith('{"data":{"'):
        match = _EVENT_AT.search(line)
        if match:
            try:
                return int(round(parse_rfc3339(match.group(1), "event_at") * 1000))
            except ValueError:
                return None
        return None
    match = _TIMESTAMP_MS.search(line)
    return int(match.group(1)) if match else None


def paced(lines: Iterable[str], t0_ms: int, speed: float,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """Yield each line once ``(clock() - start) * speed`` seconds have passed since
    ``t0_ms`` in event time; a line without a readable time goes with the one before.

    ``speed`` <= 0 or infinite means no waiting at all. The schedule is against
    the start, not the previous line, so a slow consumer never accumulates drift.
    """
    if not speed > 0 or speed == float("inf"):
        yield from lines
        return
    start = clock()
    for line in lines:
        ms = line_millis(line)
        if ms is not None:
            due = start + (ms - t0_ms) / 1000.0 / speed
            wait = due - clock()
            if wait > 0:
                sleep(wait)
        yield line


def stream_lines(lines: Iterable[str], t0_ms: int, speed: float, out: IO[bytes],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    """Write paced lines to a binary stream, flushing each one (a pipe's reader sees it
    at once). Returns the number of lines written."""
    written = 0
    for line in paced(lines, t0_ms, speed, clock, sleep):
        out.write(line.encode("utf-8") + b"\n")
        out.flush()
        written += 1
    return written

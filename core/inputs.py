"""How one raw input line is judged: its typed record, or its dead letter. Written once.

``ParseInputs`` (every engine) judges each line it reads with :func:`judge_line`; the
file replay (``pipelines.sources``) judges each line once, when it schedules it, and
hands the :class:`Judged` result on, so a replayed line is parsed once, not twice.

One rule for every kind but the registry: a record stamped more than ``max_future_s``
ahead of ``now`` (the run's clock) is a dead letter -- no genuine ping, tap, tweet or
delete lies in the future, and a 2099 record would move a streaming watermark past
every genuine record after it.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

from core.conventions import dead_letter
from core.lines import DamagedLine
from schemas.errors import InvalidRecord
from schemas.parse import parse_line
from schemas.records import Ping, RegistryChange, TapReport, Tweet, TweetDelete, User
from schemas.timefmt import ahead_of_clock

TAG_OF_TYPE = {User: "users", RegistryChange: "users", Ping: "pings", TapReport: "taps", Tweet: "tweets", TweetDelete: "deletes"}
OUTPUT_TAGS = tuple(dict.fromkeys(TAG_OF_TYPE.values()))   # users, pings, taps, tweets, deletes
DEAD = "dead_letters"


class Judged(NamedTuple):
    """One input line, judged: ``tag`` is the output it goes to (a record kind or
    ``dead_letters``), ``value`` the typed record or the DeadLetter."""
    kind: str             # the input it came from: users|pings|taps|tweets
    line: object          # the line as received (bytes or str)
    tag: str
    value: object
    future: bool = False  # dead-lettered by the clock rule

    @property
    def event_time(self) -> Optional[float]:
        """The time the record is stamped with; None for a dead letter or a registry row (a
        settings change is stamped with its ``updated_at``)."""
        return None if self.tag == DEAD else getattr(self.value, "ts", None)


def classify(kind: str, origin: str, line):
    """(tag, value) for one raw line: the typed record, or a DeadLetter naming ``origin``."""
    try:
        record = parse_line(kind, line)
        return TAG_OF_TYPE[type(record)], record
    except InvalidRecord as exc:
        return DEAD, dead_letter(origin, str(exc), line)
    except Exception as exc:  # noqa: BLE001 - a parser bug must not lose the record either
        return DEAD, dead_letter(origin, f"internal parser error {type(exc).__name__}: {exc}", line)


def judge_line(kind: str, origin: str, line, now: float, max_future_s: float) -> Judged:
    """The whole judgement of one line: :func:`classify`, then the clock rule."""
    tag, value = classify(kind, origin, line)
    if tag != DEAD and getattr(value, "ts", None) is not None:
        problem = ahead_of_clock(value.ts, now, max_future_s)
        if problem is not None:
            return Judged(kind, line, DEAD, dead_letter(origin, problem, line), future=True)
    return Judged(kind, line, tag, value)


def event_time_ms(kind: str, line) -> Optional[int]:
    """The event time ParseInputs stamps on this raw line, in epoch milliseconds (Kafka's
    CreateTime unit); None for a line it rejects or a registry row. The clock rule is not
    applied here: producers clamp CreateTime against their own clock (``kafka_client``)."""
    if isinstance(line, DamagedLine):
        return None
    ts = judge_line(kind, kind, line, 0.0, math.inf).event_time
    return None if ts is None else int(round(ts * 1000))

"""ParseInputs: raw input lines -> typed, event-time-stamped records + dead letters.

The first step of every run, batch or streaming, files or Kafka. Each element
is ``(kind, line)`` with kind one of users|pings|taps|tweets and line the
record as received (bytes or str), ``(kind, raw, error)`` for a line the
reader could not read whole (``core.lines``: over-long, a damaged ``.gz``), or a
``core.inputs.Judged`` line the file replay already judged (``core.inputs.judge_line``
is the one judgement either way). Every line ends in exactly one output:
its typed collection, or ``dead_letters`` with a specific reason, and is
counted (``read.<kind>``, ``parsed.<kind>``, ``rejected.<kind>``), so the
counts in ``run_summary.json`` add up.

One rule for every input kind, batch and streaming: a record whose event time is
more than ``max_future_s`` (``--max_event_future_s``, default 300 s) ahead of the
run's clock -- this worker's wall clock when the record is judged -- is a dead
letter ("event time ... is ... s ahead of the clock ...", also counted as
``future.<kind>``). No genuine ping, tap, tweet or delete lies in the future, and
one stamped 2099 would otherwise move the streaming watermark past every genuine
record after it.
"""
from __future__ import annotations

import time
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from core.conventions import METRICS_NAMESPACE, dead_letter, raw_text
from core.inputs import OUTPUT_TAGS, TAG_OF_TYPE, Judged, judge_line
from schemas.parse import SOURCES
from schemas.records import DeadLetter, RegistryChange, User
from schemas.timefmt import DEFAULT_MAX_EVENT_FUTURE_S

OUTPUTS = OUTPUT_TAGS
# a users line is a User or a settings change (RegistryChange): its collection carries either
_TYPE_OF_TAG = {tag: record_type for record_type, tag in TAG_OF_TYPE.items() if record_type is not RegistryChange}
_ELEMENT_TYPES = dict(_TYPE_OF_TAG, users=typing.Union[User, RegistryChange], dead_letters=DeadLetter)


def _identity(value):
    return value


class _ParseLineFn(beam.DoFn):
    def __init__(self, origins: dict[str, str], with_raw: frozenset = frozenset(),
                 max_future_s: float = DEFAULT_MAX_EVENT_FUTURE_S, clock=None):
        self._origins = origins
        self._with_raw = with_raw
        self._max_future_s = max_future_s
        self._clock = clock  # None: this worker's wall clock (tests pass a fixed one)
        self._counters = {}

    def setup(self):
        self._counters = {
            (stage, kind): Metrics.counter(METRICS_NAMESPACE, f"{stage}.{kind}")
            for kind in SOURCES for stage in ("read", "parsed", "rejected", "future")
        }
        self._unknown = Metrics.counter(METRICS_NAMESPACE, "rejected.unknown_kind")

    def process(self, element):
        # (kind, line), (kind, raw, error) from a reader, or a Judged line from the file replay
        kind, line = element[0], element[1]
        if kind not in self._origins:
            self._unknown.inc()
            yield beam.pvalue.TaggedOutput("dead_letters", dead_letter(str(kind), f"unknown input kind {kind!r}", line))
            return
        self._counters["read", kind].inc()
        if isinstance(element, Judged):  # the file replay judged it when it scheduled it
            judged = element
        elif len(element) == 3:  # (kind, raw, error): the reader could not read this line whole
            judged = Judged(kind, line, "dead_letters", dead_letter(self._origins[kind], element[2], line))
        else:
            now = time.time() if self._clock is None else self._clock()
            judged = judge_line(kind, self._origins[kind], line, now, self._max_future_s)
        tag, value = judged.tag, judged.value
        if judged.future:
            self._counters["future", kind].inc()
        if tag == "dead_letters":
            self._counters["rejected", kind].inc()
            yield beam.pvalue.TaggedOutput(tag, value)
            return
        self._counters["parsed", kind].inc()
        ts = judged.event_time  # a registry row has none (it stays where it was read); a change: updated_at
        if tag in self._with_raw:
            value = (value, raw_text(line))
        yield beam.pvalue.TaggedOutput(tag, value if ts is None else TimestampedValue(value, ts))


class ParseInputs(beam.PTransform):
    """``PCollection[(kind, line)]`` -> dict of typed PCollections and ``dead_letters``.

    ``origins`` names, per kind, where its lines came from (a file or a topic):
    that name is the dead letter's ``source``. The outputs named in ``with_raw``
    carry ``(record, raw line)`` pairs instead of records, for a later step that
    may still dead-letter the record (a duplicate, an unknown user). ``max_future_s``:
    how far an event time may lie ahead of the run's clock (``clock``, default the
    worker's wall clock ``time.time``; a fixed one for tests).
    """

    def __init__(self, origins: dict[str, str], with_raw: tuple = (),
                 max_future_s: float = DEFAULT_MAX_EVENT_FUTURE_S, clock=None):
        super().__init__()
        if not max_future_s >= 0:
            raise ValueError(f"max_future_s={max_future_s}: must be >= 0 seconds")
        self._origins = dict(origins)
        self._with_raw = frozenset(with_raw)
        self._max_future_s = float(max_future_s)
        self._clock = clock

    def expand(self, raw_lines):
        tagged = raw_lines | "ParseAndValidate" >> beam.ParDo(
            _ParseLineFn(self._origins, self._with_raw, self._max_future_s, self._clock)).with_outputs(*OUTPUTS, "dead_letters")
        # Tagged outputs carry no element type; naming it lets runners use RowCoder.
        types = dict(_ELEMENT_TYPES)
        for tag in self._with_raw:
            types[tag] = typing.Tuple[types[tag], str]
        typed = {
            tag: tagged[tag] | f"As{_TYPE_OF_TAG.get(tag, DeadLetter).__name__}{'WithRaw' if tag in self._with_raw else ''}"
            >> beam.Map(_identity).with_output_types(types[tag])
            for tag in (*OUTPUTS, "dead_letters")
        }
        return typed

"""Where the pipeline's raw lines come from: files (batch), files replayed as a
stream in event time (``--streaming`` on DirectRunner), or Kafka topics.

Every source yields ``(kind, line)`` elements for ``transforms.parse_inputs`` (the
file replay: lines it has already judged, ``core.inputs.Judged``, so none is parsed twice);
the user registry is read as its own *bounded* collection (the snapshot at job start,
every step's side input, complete before the events that need it are processed), and in
streaming its later records -- subscribers' settings changes -- arrive with the events
(the file replay schedules each at its ``updated_at``; Kafka: the ``users`` topic from the
snapshot on), folded per user by ``transforms.registry.FollowRegistry``.
"""
from __future__ import annotations

import math
import os
import random
import time

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from core.input_files import (EVENT_KINDS, as_element, input_files, kafka_origins,  # noqa: F401 -- the launcher's names
                              origin_names)
from core.inputs import judge_line
from core.lines import DamagedLine, iter_lines
from schemas.parse import SOURCES
from schemas.timefmt import DEFAULT_MAX_EVENT_FUTURE_S


def _read_file(path: str, kind: str):
    for line in iter_lines(path):
        yield as_element(kind, line)


class ReadKindFromFiles(beam.PTransform):
    """Bounded ``(kind, line bytes)`` from one kind's files (``core.lines``: bounded memory,
    damage as ``(kind, raw, error)``); bytes so bad UTF-8 is a dead letter, not a crash."""

    def __init__(self, kind: str, paths: list[str]):
        super().__init__()
        self._kind, self._paths = kind, list(paths)

    def expand(self, pbegin):
        return (pbegin
                | "Files" >> beam.Create(self._paths)
                | "ReadLines" >> beam.FlatMap(_read_file, self._kind))


def replay_schedule(events, disorder_s: float, seed: int, step_s: float = 600.0):
    """TestStream steps replaying ``[(event_time, element)]`` as a live feed would.

    Each element is delivered at event_time + U(0, disorder_s) (seeded), so
    events arrive shuffled and out of order, but never later than the
    watermark allows: after delivering everything due by delivery time D the
    watermark moves to D - disorder_s, which every undelivered event is past.
    Yields ("elements", [TimestampedValue…]) and ("watermark", t) steps.
    """
    rng = random.Random(seed)
    scheduled = sorted(
        ((event_time + rng.uniform(0.0, disorder_s), i, event_time, element)
         for i, (event_time, element) in enumerate(events)),
        key=lambda item: (item[0], item[1]))
    batch, batch_end, watermark = [], None, None
    for delivery, _, event_time, element in scheduled:
        if batch_end is None:
            batch_end = delivery + step_s
        if delivery > batch_end:
            yield "elements", batch
            # Runners keep watermarks in whole milliseconds; round down, never past an event.
            mark = math.floor((batch_end - disorder_s) * 1000) / 1000
            if watermark is None or mark > watermark:
                watermark = mark
                yield "watermark", watermark
            batch, batch_end = [], delivery + step_s
        batch.append(TimestampedValue(element, event_time))
    if batch:
        yield "elements", batch


def judged_element(kind: str, origin: str, line, now: float, max_future_s: float):
    """(event time to schedule at or None, element) for one line of the replay.

    The line is judged here, once (``core.inputs.judge_line``, the judgement ParseInputs
    makes), and the ``Judged`` result is what the stream delivers, so ParseInputs does not
    parse it again. A line it rejects -- a 2099 one included, judged against ``now`` -- has
    no time of its own to schedule: it goes at its neighbour's, so it never moves the
    replay's watermark. A damaged line is handed on as ``(kind, raw, error)``."""
    if isinstance(line, DamagedLine):
        return None, as_element(kind, line)
    judged = judge_line(kind, origin, line, now, max_future_s)
    return judged.event_time, judged


def split_registry(files: dict[str, list[str]], max_future_s: float = DEFAULT_MAX_EVENT_FUTURE_S,
                   now: float | None = None):
    """(the registry snapshot's elements, the settings changes to replay) of the users files.

    The replay treats the registry as the changing input it is: its rows (and the lines it
    rejects) are the snapshot the job starts from; each settings change (a line with
    ``updated_at``, ``schemas.records.RegistryChange``) is replayed at its ``updated_at``
    among the events, judged once here as every replayed line is."""
    now = time.time() if now is None else now
    origin = origin_names(files)["users"]
    snapshot, changes = [], []
    for path in files["users"]:
        for line in iter_lines(path):
            own, element = judged_element("users", origin, line, now, max_future_s)
            if own is None:
                snapshot.append(element)
            else:
                changes.append((own, element))
    return snapshot, changes


def replay_steps(files: dict[str, list[str]], disorder_s: float, seed: int,
                 max_future_s: float = DEFAULT_MAX_EVENT_FUTURE_S, now: float | None = None,
                 registry_changes=()):
    """The replay's TestStream steps (see :func:`replay_schedule`) for the event files and
    ``registry_changes`` (``(updated_at, judged line)``, :func:`split_registry`).

    Every line is judged against ``now`` (default: the wall clock when the schedule is
    built) and scheduled at its own event time, or at its neighbour's when it is a dead
    letter (see :func:`judged_element`)."""
    now = time.time() if now is None else now
    origins = origin_names(files)
    events, first = [], None
    for kind in EVENT_KINDS:
        previous = None
        for path in files[kind]:
            for line in iter_lines(path):
                own, element = judged_element(kind, origins[kind], line, now, max_future_s)
                scheduled = previous if own is None else own
                if scheduled is not None:
                    previous = scheduled
                    first = scheduled if first is None else min(first, scheduled)
                events.append([scheduled, element])
    for event in events:  # a leading run of bad lines takes the earliest time seen
        if event[0] is None:
            event[0] = first if first is not None else 0.0
    # after the events: their delivery shuffle is drawn first, so it does not depend on the changes
    events.extend(list(change) for change in registry_changes)
    return replay_schedule([tuple(e) for e in events], disorder_s, seed)


def stream_from_files(pipeline, files: dict[str, list[str]], disorder_s: float, seed: int,
                      max_future_s: float = DEFAULT_MAX_EVENT_FUTURE_S, now: float | None = None,
                      registry_changes=()):
    """Unbounded judged lines from the event files (and the registry's settings changes), in
    event time (DirectRunner): :func:`replay_steps`.

    Returns (the stream, lines delivered per kind): the run summary's ``read`` counts, as
    DirectRunner's streaming counters are not exact and the files need no second reading."""
    stream = TestStream()
    delivered = {kind: 0 for kind in ("users",) + tuple(EVENT_KINDS)}
    for step, value in replay_steps(files, disorder_s, seed, max_future_s, now, registry_changes):
        if step == "elements":
            stream.add_elements(value)
            for timestamped in value:
                delivered[timestamped.value[0]] += 1
        else:
            stream.advance_watermark_to(value)
    stream.advance_watermark_to_infinity()
    return pipeline | "ReplayEventsInEventTime" >> stream, delivered

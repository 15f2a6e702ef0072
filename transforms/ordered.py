"""The Beam host of ``core.processor`` processors: each key's messages in one event-time order.

:class:`OrderedByKey` runs any processor, batch or streaming, with the same
outputs as the local host (``core.processor.run_keyed``): bounded input is
grouped, sorted and run (or the processor's ``run_batch_timed`` shortcut);
unbounded input is cut into event-time ticks whose panes a stateful DoFn runs
in order, with a watermark GC timer freeing each key's state once
``processor.expire`` says nothing in it can matter. ``BeamOps.run_ordered``
(``transforms.beam_ops``) is how compositions reach it.
"""
from __future__ import annotations

import math
import typing
from typing import Optional

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from core.conventions import METRICS_NAMESPACE as NS, is_bounded
from core.processor import ProcessorProtocol, late_counter_name, late_dead_letter, run_ordered
from schemas.records import DeadLetter


def _seconds(timestamp) -> float:
    return timestamp.micros / 1e6


class _StampAtDue(beam.DoFn):
    """Element timestamp := max(due, timestamp): forward only, so nothing becomes late."""

    def __init__(self, processor):
        self._processor = processor

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        due = self._processor.sort_key(element[1])[0]
        if due > _seconds(timestamp):
            yield TimestampedValue(element, due)
        else:
            yield element


class _RunTickGroups(beam.DoFn):
    """Runs the processor over each key's tick groups, carrying its state across ticks.

    Every message of a tick group is due within that tick, and the group is
    emitted only when the watermark has passed the tick, so the groups reach
    here in event-time order; a message due before what the key has already
    decided (a late pane) is a dead letter. A GC timer frees the key's state
    once ``processor.expire`` says nothing in it can matter any more.
    """
    LATE = "late"
    STATE = ReadModifyWriteStateSpec("state", PickleCoder())
    DONE_UNTIL = ReadModifyWriteStateSpec("done_until", PickleCoder())
    GC = TimerSpec("gc", TimeDomain.WATERMARK)

    def __init__(self, processor: ProcessorProtocol, tick_s: float, lateness_s: float, step: str):
        self._processor = processor
        self._tick_s = tick_s
        self._lateness_s = lateness_s
        self._step = step
        self._late = Metrics.counter(NS, late_counter_name(step, processor))

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(STATE), done_until=beam.DoFn.StateParam(DONE_UNTIL),
                gc=beam.DoFn.TimerParam(GC)):
        _key, messages = element
        processor = self._processor
        current = state.read()
        if current is None:
            current = processor.initial_state()
        done = done_until.read()
        on_time = []
        for msg in messages:
            if done is not None and not processor.immediate(msg) and processor.sort_key(msg)[0] < done:
                self._late.inc()
                yield beam.pvalue.TaggedOutput(self.LATE, late_dead_letter(self._step, processor, msg, done))
            else:
                on_time.append(msg)
        current, outputs = run_ordered(processor, on_time, current)
        yield from outputs
        tick_end = _seconds(timestamp)
        done_until.write(tick_end if done is None else max(done, tick_end))
        current = processor.expire(current, tick_end)
        if current is None:
            state.clear()
            # keep done_until while late data could still come, then forget the key
            gc.set(self._on_tick(tick_end + self._lateness_s))
            return
        state.write(current)
        when = processor.gc_time(current)
        if when is not None:
            gc.set(self._on_tick(max(when, tick_end)))

    @on_timer(GC)
    def on_gc(self, fired=beam.DoFn.TimestampParam, state=beam.DoFn.StateParam(STATE),
              done_until=beam.DoFn.StateParam(DONE_UNTIL), gc=beam.DoFn.TimerParam(GC)):
        now = _seconds(fired)
        current = state.read()
        if current is not None:
            current = self._processor.expire(current, now)
        if current is None:
            state.clear()
            done = done_until.read()
            if done is None or now >= done + self._lateness_s:
                done_until.clear()  # nothing of this key outlives the stream
            else:
                gc.set(self._on_tick(done + self._lateness_s))
            return
        state.write(current)
        when = self._processor.gc_time(current)
        if when is not None:
            gc.set(self._on_tick(max(when, now + 1e-3)))

    def _on_tick(self, seconds: float) -> Timestamp:
        """The first tick boundary at or after ``seconds`` (ticks start at multiples of tick_s)."""
        return Timestamp.of(math.ceil(seconds / self._tick_s) * self._tick_s)


class OrderedByKey(beam.PTransform):
    """(key, msg) -> processor outputs, each key in event-time order; batch or streaming.

    Returns {'out': outputs, 'late': DeadLetter}. Bounded input: GroupByKey in the
    global window, sort, run. Unbounded input: messages are grouped per key into
    ``tick_s`` event-time ticks (a GroupByKey fires each tick once the watermark
    has passed it, and holds the watermark downstream until it has, so a chain of
    these steps stays in order), then run tick after tick with the key's state.
    Messages up to ``allowed_lateness_s`` behind the watermark come out as dead
    letters; later ones Beam drops with their expired tick.
    """

    def __init__(self, processor: ProcessorProtocol, bounded: Optional[bool] = None, tick_s: float = 1.0,
                 allowed_lateness_s: float = 3600.0, step: str = "alerts"):
        super().__init__()
        self._processor = processor
        self._bounded = bounded
        self._tick_s = tick_s
        self._allowed_lateness_s = allowed_lateness_s
        self._step = step

    def expand(self, keyed):
        processor = self._processor
        bounded = is_bounded(keyed, override=self._bounded)
        if bounded:
            def run_group(kv):
                _key, messages = kv
                for due, out in processor.run_batch_timed(list(messages)):
                    yield TimestampedValue(out, due)
            out = (keyed
                   | "GroupByKey" >> beam.GroupByKey()
                   | "RunInEventTimeOrder" >> beam.FlatMap(run_group))
            late = keyed.pipeline | "NoLateData" >> beam.Create([]).with_output_types(DeadLetter)
            return {"out": out, "late": late}
        results = (
            keyed
            | "StampAtDue" >> beam.ParDo(_StampAtDue(processor)).with_output_types(typing.Tuple[str, typing.Any])
            | "IntoTicks" >> beam.WindowInto(
                window.FixedWindows(self._tick_s),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
                allowed_lateness=Duration(seconds=self._allowed_lateness_s))
            | "GroupTicks" >> beam.GroupByKey()
            | "BackToGlobal" >> beam.WindowInto(window.GlobalWindows())
            # str keys: a deterministic key coder, as state and timers require
            | "RunInEventTimeOrder" >> beam.ParDo(_RunTickGroups(processor, self._tick_s, self._allowed_lateness_s, self._step)).with_input_types(
                typing.Tuple[str, typing.Iterable[typing.Any]]).with_outputs(_RunTickGroups.LATE, main="out"))
        return {"out": results.out, "late": results[_RunTickGroups.LATE]}


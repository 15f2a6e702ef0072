"""The Flink host of ``core.processor`` processors: each key's messages in one event-time order.

:func:`run_ordered` runs any processor in a ``KeyedProcessFunction`` keyed by the pair's
key (as a string), with the same outputs as Beam's ``transforms.ordered.OrderedByKey``
and the local host (``core.processor.run_keyed``):

- **bounded** input (BATCH runtime mode, or a bounded source): every message of a key is
  buffered (a ListState append each), and one end-of-input timer runs
  ``processor.run_batch_timed`` over them all; each output is then stamped at its due
  time, as Beam's bounded host does. Nothing is ever late.
- **unbounded** input: a message is due at ``t = max(sort_key(msg)[0], its timestamp)``
  (Beam's ``StampAtDue``: forward only, so an ``immediate`` configuration message, due at
  -inf, is applied in the tick where it arrives) and buffered in its ``tick_s`` event-time
  tick (a MapState tick end -> messages, so an element costs one tick's list, not the
  key's whole backlog). An event-time timer at the tick's last millisecond fires once the
  watermark has passed the tick; the tick's messages then run in ``sort_key`` order with
  the key's state (``core.processor.run_ordered``), their outputs stamped with the
  timer's time, inside the tick. Timers fire in time order, so ticks run in order.

Late data, as on Beam: a message due before what its key has already decided
(``done_until``, the end of the last tick it ran) and not ``processor.immediate`` is a
dead letter on the ``late`` side output (``core.processor.late_dead_letter``, counted as
``core.processor.late_counter_name``). A message whose tick the watermark has already
passed, but by no more than ``allowed_lateness_s``, runs at once as a tick of its own
(Beam's late pane). One further behind is dropped, as Beam drops it with its expired
window; Flink counts it as ``<step>_late_dropped_<processor.name>``.

State is freed as ``_RunTickGroups`` does on Beam: after each tick ``processor.expire``
(None frees the key's state) and a GC timer at ``processor.gc_time``; ``done_until`` is
kept until ``allowed_lateness_s`` has passed, then forgotten, so a key with nothing left
has no state and no timer (replaced GC timers are deleted). All timers lie on tick
boundaries minus 1 ms; one firing may be a tick, a GC, or both (tick first).
"""
from __future__ import annotations

import json
import math
from typing import Optional

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeExecutionMode
from pyflink.datastream.state import ValueStateDescriptor

from core.processor import ProcessorProtocol, late_counter_name, late_dead_letter, run_ordered as run_in_order
from flink_job.counters import FlinkCounter, bind_metrics
from flink_job.keyed_state import Bound, KeyedValue

PICKLED = Types.PICKLED_BYTE_ARRAY()
MAX_TIMESTAMP = 2 ** 63 - 1          # Flink's Long.MAX_VALUE: the end-of-input watermark
MIN_TIMESTAMP = -(2 ** 63)


def dropped_counter_name(step: str, processor: ProcessorProtocol) -> str:
    """Messages beyond the allowed lateness: Beam drops them silently, Flink counts them."""
    return f"{step}_late_dropped_{processor.name}"


# Every operator has a stable uid, so a savepoint restores into a job built by newer code
# or at another parallelism: the stateful ones (keyed process functions, sources, sinks)
# and FlinkOps' stages get their scope path where they are built; every other operator one
# from :func:`assign_uids` once the job is built (PyFlink adds operators of its own -- key
# extraction, side-output and timestamp maps -- that no call here names). (An earlier
# "Hash collision on user-specified ID" came from two side-output maps given one uid;
# assign_uids numbers siblings.)


def _transformations(env) -> list:
    """Every transformation of ``env``'s job, inputs before their consumers, in build order."""
    seen, ordered = set(), []

    def visit(t):
        if t.getId() in seen:
            return
        seen.add(t.getId())
        for parent in t.getInputs():
            visit(parent)
        ordered.append(t)
    for sink in env._j_stream_execution_environment.getTransformations():
        visit(sink)
    return ordered


def assign_uids(env) -> int:
    """A stable uid for every operator of the built job that has none: its name when that is
    a scope path no other operator has (``ReleaseDpStatistics/CountSpentHours``), else its
    first input's uid and its name (``<input uid>/_stream_key_by_map_operator``, ``#n`` for
    the n-th sibling of one name), so the same code builds the same uids and a savepoint maps
    onto every operator; the number assigned. Deterministic: transformations are visited
    inputs first, in build order."""
    transformations = _transformations(env)
    taken = {t.getUid() for t in transformations if t.getUid()}
    assigned = 0
    for t in transformations:
        if t.getUid():
            continue
        name = str(t.getName())
        inputs = list(t.getInputs())
        scoped = "/" in name and name not in taken
        base = name if scoped else uid_path(inputs[0].getUid() if inputs else "", name)
        uid, n = base, 1
        while uid in taken:
            n += 1
            uid = f"{base}#{n}"
        t.setUid(uid)
        taken.add(uid)
        assigned += 1
    return assigned


def uid_path(*parts: str) -> str:
    """A stable operator uid (and name) from a scope path: the non-empty parts joined by '/'."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def str_key(key) -> str:
    """A pair's key as the string Flink keys by: itself if a str, else canonical JSON
    (deterministic across workers, unlike hash or repr of a set)."""
    if isinstance(key, str):
        return key
    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(key)


def _pair_key(pair) -> str:
    return str_key(pair[0])


def key_pairs(pairs):
    """``pairs`` keyed by their key as a string (PyFlink adds a stateless Python operator
    that extracts it, chained to the one before)."""
    return pairs.key_by(_pair_key, key_type=Types.STRING())


def _identity(value):
    return value


def side_output(stream, tag: OutputTag, uid: str):
    """The side output ``tag`` of ``stream``, through an identity operator named ``uid``.

    PyFlink 2.2's Python operator chaining fails the job ("Hash collision on
    user-specified ID") when an operator's side output feeds a Java operator (a union, a
    sink) while its main output feeds a chained Python operator with a uid; a Python
    operator first on the side output avoids one form of that, whatever the caller does
    with it.
    """
    return stream.get_side_output(tag).map(_identity, output_type=PICKLED).name(uid).uid(uid)


def runtime_is_batch(env) -> bool:
    """Whether ``env`` runs in BATCH runtime mode (read from its configuration)."""
    try:
        from pyflink.java_gateway import get_gateway
        options = get_gateway().jvm.org.apache.flink.configuration.ExecutionOptions
        mode = env._j_stream_execution_environment.getConfiguration().get(options.RUNTIME_MODE)
        return str(mode.toString()) == str(RuntimeExecutionMode.BATCH._to_j_execution_mode().toString())
    except Exception:
        return False


# ---- bounded input ------------------------------------------------------------------------

class _RunBatch(Bound, KeyedProcessFunction):
    """Buffers a key's messages; at end of input runs ``run_batch_timed`` once -> (due_ms, out).

    In BATCH runtime mode the buffer is the worker's memory, not keyed state
    (``flink_job.keyed_state.KeyedValue`` says why); a bounded input in STREAMING mode
    (a checkpointed job) buffers in keyed state, which works there.
    """

    def __init__(self, processor: ProcessorProtocol, in_memory: bool):
        self._processor = processor
        self.in_memory = in_memory

    def setup(self, runtime_context):
        self._buffer = KeyedValue(runtime_context, "messages", self.in_memory)
        self._armed_key = None

    def process_element(self, value, ctx):
        key = ctx.get_current_key()
        held = self._buffer.get(key, [])
        held.append(value[1])
        self._buffer.put(key, held)
        # a key's elements come together: arm its timer once (a repeat registration is
        # deduplicated, and a repeat firing finds nothing left)
        if key != self._armed_key:
            self._armed_key = key
            ctx.timer_service().register_event_time_timer(MAX_TIMESTAMP)

    def on_timer(self, timestamp, ctx):
        bind_metrics(self._rc)
        key = ctx.get_current_key()
        if key == self._armed_key:
            self._armed_key = None
        messages = self._buffer.get(key)
        self._buffer.clear(key)
        if messages:
            for due, out in self._processor.run_batch_timed(messages):
                yield _millis(due), out


def _millis(seconds: float) -> int:
    """Event time in epoch seconds -> a Flink timestamp (ms), clamped to Flink's range."""
    if seconds != seconds:
        return 0
    if math.isinf(seconds):
        return MIN_TIMESTAMP + 1 if seconds < 0 else MAX_TIMESTAMP - 1
    return math.floor(seconds * 1000)


class _DueTimestamp(TimestampAssigner):
    def extract_timestamp(self, value, record_timestamp) -> int:
        return value[0]


def _unstamp(timed):
    return timed[1]


# ---- unbounded input ----------------------------------------------------------------------

# All a key holds is one ValueState, a list: when it is decided up to, its GC timer, its
# buffered ticks, the processor's state. See _RunTicks for why.
_DONE, _GC, _TICKS, _STATE = 0, 1, 2, 3


class _RunTicks(KeyedProcessFunction):
    """The streaming host: event-time ticks per key, run in order with the key's state.

    All a key holds is one ValueState ``key``: ``[done_until, gc_at, {tick end ms:
    [messages]}, processor state]`` (cleared when all four are empty). Why one, and no
    MapState (the costs PyFlink 2.2 puts on Python state, measured in
    ``benchmarks/bench_flink_ordered.py``):

    - a MapState lookup of an absent map key (each new tick) is a blocking round trip to
      Java; a ValueState is read from PyFlink's Python state cache, a dict lookup, as
      long as the key is in it (``python.state.cache-size`` entries, one per key here:
      see :func:`recommended_configuration`);
    - at the end of every bundle each changed state of each key is written back to Java,
      one blocking round trip each: one state per key is one round trip per key touched
      in a bundle, however many messages and timers it had.

    Outputs are returned as lists, made while this operator's metric group is bound
    (``flink_job.counters``).
    """

    def __init__(self, processor: ProcessorProtocol, tick_s: float, lateness_s: float, step: str,
                 late_tag: OutputTag):
        tick_ms = round(tick_s * 1000)
        if tick_ms < 1 or abs(tick_ms - tick_s * 1000) > 1e-6:
            raise ValueError(f"tick_s must be a positive whole number of milliseconds, got {tick_s!r}")
        self._processor = processor
        self._tick_ms = tick_ms
        self._lateness_s = lateness_s
        self._lateness_ms = math.ceil(lateness_s * 1000)
        self._step = step
        self._late_tag = late_tag
        self._late = FlinkCounter(late_counter_name(step, processor))
        self._dropped = FlinkCounter(dropped_counter_name(step, processor))

    def open(self, runtime_context):
        self._rc = runtime_context
        bind_metrics(runtime_context)
        self._key = runtime_context.get_state(ValueStateDescriptor("key", PICKLED))

    # -- what the key holds --

    def _load(self) -> list:
        held = self._key.value()
        return [None, None, {}, None] if held is None else held

    def _store(self, held: list) -> None:
        if held[_DONE] is None and held[_GC] is None and not held[_TICKS] and held[_STATE] is None:
            self._key.clear()
        else:
            self._key.update(held)

    def held(self) -> tuple:
        """What the current key holds: (has processor state, done_until, GC timer, buffered
        tick ends ms) (tests)."""
        held = self._load()
        return held[_STATE] is not None, held[_DONE], held[_GC], sorted(held[_TICKS])

    # -- time arithmetic (integer ms, ticks end on multiples of tick_ms) --

    def _tick_end_ms(self, seconds: float) -> int:
        return (math.floor(seconds * 1000) // self._tick_ms + 1) * self._tick_ms

    def _boundary_ms(self, seconds: float) -> int:
        """The first tick boundary at or after ``seconds`` (Beam's ``_on_tick``)."""
        return -(-math.ceil(seconds * 1000) // self._tick_ms) * self._tick_ms

    # -- elements --

    def process_element(self, value, ctx):
        bind_metrics(self._rc)
        msg = value[1]
        processor = self._processor
        due = processor.sort_key(msg)[0]
        stamp = ctx.timestamp()
        t = due if stamp is None else max(due, stamp / 1000)
        if not math.isfinite(t):
            # configuration with no time at all: applied now, in whatever tick this is
            held = self._load()
            held[_STATE], outputs = run_in_order(processor, [msg], held[_STATE])
            self._store(held)
            return outputs
        timers = ctx.timer_service()
        watermark = timers.current_watermark()
        tick_end = self._tick_end_ms(t)
        if tick_end - 1 + self._lateness_ms < watermark:
            self._dropped.inc()   # its tick expired: Beam drops it with its window
            return ()
        held = self._load()
        if held[_GC] is not None and held[_GC] < watermark:
            self._overdue_gc(ctx, held, watermark)
        done = held[_DONE]
        if done is not None and due < done and not processor.immediate(msg):
            return [self._late_letter(msg, done)]
        if tick_end - 1 <= watermark:
            # its tick has passed (within the allowed lateness): run now, Beam's late pane
            outputs = []
            self._run_tick(ctx, held, [msg], tick_end, watermark, outputs)
            self._store(held)
            return outputs
        ticks = held[_TICKS]
        pending = ticks.get(tick_end)
        if pending is None:
            # a tick's timer is registered once per key, with its first message
            timers.register_event_time_timer(tick_end - 1)
            ticks[tick_end] = [msg]
        else:
            pending.append(msg)
        self._key.update(held)
        return ()

    def _late_letter(self, msg, done: float):
        self._late.inc()
        return self._late_tag, late_dead_letter(self._step, self._processor, msg, done)

    # -- timers --

    def on_timer(self, timestamp, ctx):
        bind_metrics(self._rc)
        held = self._load()
        if held[_GC] is not None and held[_GC] < timestamp:
            self._overdue_gc(ctx, held, timestamp)
        outputs = []
        pending = held[_TICKS].pop(timestamp + 1, None)
        if pending is not None:
            self._run_tick(ctx, held, pending, timestamp + 1, timestamp, outputs)
        if held[_GC] == timestamp:
            held[_GC] = None
            self._collect(ctx, held, timestamp)
        self._store(held)
        return outputs

    def _run_tick(self, ctx, held: list, messages, tick_end_ms: int, now_ms: int, outputs: list) -> None:
        """One tick of a key (``_RunTickGroups.process``): run, note it decided, expire."""
        processor = self._processor
        done = held[_DONE]
        on_time = []
        for msg in messages:
            if done is not None and processor.sort_key(msg)[0] < done and not processor.immediate(msg):
                outputs.append(self._late_letter(msg, done))
            else:
                on_time.append(msg)
        current, outs = run_in_order(processor, on_time, held[_STATE])
        outputs.extend(outs)
        tick_end = tick_end_ms / 1000
        held[_DONE] = tick_end if done is None else max(done, tick_end)
        current = held[_STATE] = processor.expire(current, tick_end)
        if current is None:
            # keep done_until while late data could still come, then forget the key
            self._set_gc(ctx, held, tick_end + self._lateness_s, now_ms)
            return
        when = processor.gc_time(current)
        if when is not None:
            self._set_gc(ctx, held, max(when, tick_end), now_ms)

    def _collect(self, ctx, held: list, timestamp: int) -> None:
        """The GC timer (``_RunTickGroups.on_gc``): expire the state, forget the key when done."""
        now = (timestamp + 1) / 1000
        current = held[_STATE]
        if current is not None:
            current = held[_STATE] = self._processor.expire(current, now)
        if current is None:
            done = held[_DONE]
            if done is None or now >= done + self._lateness_s:
                held[_DONE] = None   # nothing of this key outlives the stream
            else:
                self._set_gc(ctx, held, done + self._lateness_s, timestamp)
            return
        when = self._processor.gc_time(current)
        if when is not None:
            self._set_gc(ctx, held, max(when, now + 1e-3), timestamp)

    def _overdue_gc(self, ctx, held: list, now_ms: int) -> None:
        """Run the key's GC timers due before ``now_ms`` that have not fired.

        A GC timer re-armed by ``_collect`` can lie behind the watermark (the boundary
        after the key's ``gc_time``, when the watermark had jumped past it): Flink fires it
        only at the next watermark, after elements and timers already on their way. The
        key collects first, as if it had fired in time, and drops that timer.
        """
        timers = ctx.timer_service()
        while held[_GC] is not None and held[_GC] < now_ms:
            at = held[_GC]
            held[_GC] = None
            if at + 1 not in held[_TICKS]:
                timers.delete_event_time_timer(at)
            self._collect(ctx, held, at)

    def _set_gc(self, ctx, held: list, when_s: float, now_ms: int) -> None:
        """The key's one GC timer at the first tick boundary at or after ``when_s``, after ``now_ms``.

        A timer must lie after the current time (a timer behind the watermark would wait
        for the next watermark); expiring again at the current tick would change nothing.

        A GC timer only moves earlier: one due later than the key's armed timer leaves that
        in place (when it fires, ``_collect`` expires the state, which frees nothing yet, and
        arms the timer at the then due ``gc_time``). Most ticks push ``gc_time`` later (the
        key was active), so this spares a timer deletion and registration per tick. Earlier
        expiry is harmless: ``expire`` runs after every tick anyway. A timer moved earlier
        is deleted unless a tick's timer shares its time.
        """
        soonest = ((now_ms + 1) // self._tick_ms + 1) * self._tick_ms
        at = max(self._boundary_ms(when_s), soonest) - 1
        old = held[_GC]
        if old is not None and old <= at:
            return
        timers = ctx.timer_service()
        if old is not None and old + 1 not in held[_TICKS]:
            timers.delete_event_time_timer(old)
        timers.register_event_time_timer(at)
        held[_GC] = at


# ---- the host -----------------------------------------------------------------------------

# What the streaming host needs from the job's configuration (measured with
# benchmarks/bench_flink_ordered.py, 50,000 messages, parallelism 2):
RECOMMENDED_CONFIGURATION = {
    # Every bundle ends with one blocking write-back round trip per key it changed
    # (_RunTicks), and a watermark reaches a Python operator only when a bundle ends. With
    # the default 1,000 elements a bundle, 500 keys cost ~6x the throughput of 10,000;
    # bundle.time (default 1 s) still bounds how late a bundle, and so a watermark, ends.
    "python.fn-execution.bundle.size": "10000",
    # Entries of PyFlink's Python state cache per keyed operator: one per key for the
    # ordered host. Keys beyond it are evicted (a blocking write) and read back (another):
    # 5,000 keys ran 8x slower at the default 1,000 than at 20,000. Each entry is one key's
    # pickled-on-write state, held as Python objects; every bundle end walks the cache.
    "python.state.cache-size": "20000",
}


def recommended_configuration() -> dict:
    """Job configuration entries (key -> string value) the ordered hosts run fast with.

    The launcher sets them on the job's ``Configuration`` (``config.set_string(key,
    value)``, before the environment is made); a value the user gives explicitly should
    win. Tests that pace their input set their own bundle size (1) and keep it.
    """
    return dict(RECOMMENDED_CONFIGURATION)


def run_ordered(pairs, processor, stage_name: str, *, tick_s: float, allowed_lateness_s: float,
                step: str, uid_prefix: str = "", bounded: Optional[bool] = None) -> dict:
    """pairs: DataStream of (key, msg) -> {'out': DataStream of outputs, 'late': DataStream of
    DeadLetter}; host of any ``core.processor.Processor`` (see the module doc).

    ``bounded``: the batch plan (True) or the streaming one (False); None reads the
    environment's runtime mode (BATCH: bounded). Operators are named
    ``<uid_prefix>/<stage_name>/<part>``; the stateful one also gets that as its uid.
    """
    base = uid_path(uid_prefix, stage_name)
    batch_runtime = runtime_is_batch(pairs.get_execution_environment())
    if bounded is None:
        bounded = batch_runtime
    elif batch_runtime and not bounded:
        raise ValueError(f"{stage_name}: the streaming plan needs STREAMING runtime mode "
                         f"(BATCH mode fires timers per key at end of input)")
    keyed = key_pairs(pairs)
    late_tag = OutputTag(uid_path(base, "late"), PICKLED)
    if bounded:
        timed = (keyed.process(_RunBatch(processor, in_memory=batch_runtime), output_type=PICKLED)
                 .name(uid_path(base, "RunBatch")).uid(uid_path(base, "RunBatch")))
        stamped = (timed.assign_timestamps_and_watermarks(
                       WatermarkStrategy.no_watermarks().with_timestamp_assigner(_DueTimestamp()))
                   .name(uid_path(base, "StampAtDue")))
        out = (stamped.map(_unstamp, output_type=PICKLED)
               .name(uid_path(base, "Outputs")))
        return {"out": out, "late": side_output(timed, late_tag, uid_path(base, "Late"))}
    run = _RunTicks(processor, tick_s, allowed_lateness_s, step, late_tag)
    out = (keyed.process(run, output_type=PICKLED)
           .name(uid_path(base, "RunInEventTimeOrder")).uid(uid_path(base, "RunInEventTimeOrder")))
    return {"out": out, "late": side_output(out, late_tag, uid_path(base, "Late"))}

"""The follow step on Flink: tap reports in, mutual follows and dead letters out.

The same core as the Beam host (``transforms.follows``, whose module docstring is
the spec of the streaming semantics): ``core.follows.TapChecker`` checks each
report without keys or crypto, ``JudgeTouch`` judges the reports of one nonce,
``KeepFirstFollow`` keeps one edge per user pair. Here each stateful step is a
``KeyedProcessFunction`` with event-time timers::

    taps --CheckTaps (registry's public keys)--> CheckedTap            | dead letter
         --key_by nonce: JudgeNonce (buffer; timer at the deadline)--> Follow | dead letter
         --key_by user pair: KeepFirstFollowPerPair (timer per deadline granule)--> Follow

Why this shape
--------------
* A nonce's reports are buffered until the watermark passes its touch's
  deadline granule, then judged as ONE final pane. Beam fires an extra early
  pane on the second report (latency only: a follow still leaves at the
  deadline, see ``transforms.follows``); the outcomes are the same, and one pane
  per touch is what BATCH mode sees (each key's timers fire after all of its
  elements, so the final pane holds every report: exactly
  ``core.follows.resolve_reports``).
* A report that arrives after its nonce's final pane (a replay, a late
  partner) is judged at once, alone, against the nonce's memory, as Beam's
  late panes (``AfterCount(1)``) are. Like Beam's, the pane is final
  (``timing != EARLY``): a report that is the first of its nonce to arrive after
  the deadline is unmatched at once instead of waiting for a partner that
  could not match any more. The memory lives until ``JudgeTouch.gc_time``
  (``replay_memory_s`` after the deadline, Beam's allowed lateness); reports
  later still are dropped and counted as ``follows_late_dropped`` (Beam's
  runner drops them uncounted).
* Outputs of the judge leave from the deadline timer, stamped inside the
  deadline granule (its last millisecond, Beam's ``max_timestamp``), so they are
  never behind the watermark. The pair step groups a pair's confirmed touches
  per deadline granule and runs each group, when the watermark passes it, in
  event-time order through ``KeepFirstFollow`` with the edge (the follow graph)
  in keyed state, kept for good. Flink fires a key's timers in timestamp order
  (in BATCH mode too), and a touch's granule follows its ``established_at``
  (both are the nonce's time), so the first group holds the earliest touch.
"""
from __future__ import annotations

import time
from typing import Dict, Mapping

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction

from core.follows import (FOLLOWS_EMITTED, TAPS_READ, TOUCHES_CONFIRMED, TOUCHES_REPEAT, FollowParams,
                          JudgeTouch, KeepFirstFollow, PairTouches, RepeatedTouch, TapChecker, TouchPane,
                          dead_letter, deadline_granule, pair_key, touch_deadline)
from core.pairing import Rejection
from flink_job.counters import FlinkCounter, bind_metrics
from flink_job.keyed_state import Bound, KeyedValue
from flink_job.ordered import key_pairs, runtime_is_batch, side_output, uid_path

PICKLED = Types.PICKLED_BYTE_ARRAY()
# A report behind the watermark by more than the nonce's memory: it can no longer be judged.
LATE_DROPPED = "follows_late_dropped"


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def close_ms(nonce: str, params: FollowParams) -> int:
    """Event time (ms) at which a nonce's touch is decided: the last millisecond of its deadline granule."""
    return _ms(deadline_granule(touch_deadline(nonce, params))[1]) - 1


def forget_ms(nonce: str, params: FollowParams) -> int:
    """Event time (ms) at which a nonce is forgotten: Beam's window GC (granule end + allowed lateness)."""
    return close_ms(nonce, params) + _ms(params.replay_memory_s)


class _Counters:
    """``FlinkCounter``s by name, made on first use (the rejection kinds come from ``core.pairing``)."""

    def __init__(self):
        self._counters: Dict[str, FlinkCounter] = {}

    def inc(self, name: str, n: int = 1):
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = FlinkCounter(name)
        counter.inc(n)


class _CheckTaps(Bound, ProcessFunction):
    """Key-free checks (``TapChecker``): (nonce, CheckedTap) out, or its dead letter to the side output."""

    def __init__(self, params: FollowParams, pubkeys: Mapping[str, str], dead: OutputTag):
        self._params, self._pubkeys, self._dead = params, dict(pubkeys), dead

    def setup(self, runtime_context):
        self._counters = _Counters()
        self._checker = TapChecker(self._params)

    def process_element(self, report, ctx):
        bind_metrics(self._rc)
        self._counters.inc(TAPS_READ)
        # The run's clock is this worker's wall clock (FollowParams.max_future_s), as in Beam.
        checked = self._checker.check(report, self._pubkeys, now=time.time())
        if isinstance(checked, Rejection):
            self._counters.inc(checked.kind)
            return [(self._dead, dead_letter(checked))]
        return [(report.nonce, checked)]


class _JudgeNonce(Bound, KeyedProcessFunction):
    """Keyed by nonce: one final pane at the deadline, then one pane per late report, then forget.

    Confirmed touches leave as (pair key, Follow), rejections as dead letters on the side output.
    """

    def __init__(self, params: FollowParams, dead: OutputTag, in_memory: bool):
        self._params, self._dead, self.in_memory = params, dead, in_memory

    def setup(self, runtime_context):
        self._counters = _Counters()
        self._judge = JudgeTouch(self._params)
        # reports of the touch not yet judged (until the final pane)
        self._buffer = KeyedValue(runtime_context, "pending_reports", self.in_memory)
        # the judge's NonceState, from the final pane until the nonce is forgotten
        self._memory = KeyedValue(runtime_context, "nonce_state", self.in_memory)

    def process_element(self, value, ctx):
        bind_metrics(self._rc)
        nonce, checked = value
        timers = ctx.timer_service()
        watermark = timers.current_watermark()
        if watermark >= forget_ms(nonce, self._params):
            self._counters.inc(LATE_DROPPED)
            return []
        state = self._memory.get(nonce)
        if state is None and watermark < close_ms(nonce, self._params):
            self._buffer.put(nonce, self._buffer.get(nonce, []) + [checked])
            timers.register_event_time_timer(close_ms(nonce, self._params))
            return []
        # after the final pane (or first seen after the deadline): a late pane of its own, at once
        return self._judge_pane(state, TouchPane(nonce, (checked,), True), timers)

    def on_timer(self, timestamp, ctx):
        bind_metrics(self._rc)
        nonce = ctx.get_current_key()
        outputs = []
        taps = self._buffer.get(nonce)
        if taps is not None:
            self._buffer.clear(nonce)
            # the pane's order is the same whatever the arrival order (the rules sort anyway)
            taps = tuple(sorted(taps, key=lambda t: (t.report.tap_id, repr(t.report))))
            outputs = self._judge_pane(self._memory.get(nonce), TouchPane(nonce, taps, True), ctx.timer_service())
        if timestamp >= forget_ms(nonce, self._params):
            self._memory.clear(nonce)
        return outputs

    def _judge_pane(self, state, pane: TouchPane, timers) -> list:
        state, outputs = self._judge.process(state or self._judge.initial_state(), pane)
        if self.in_memory:
            # BATCH mode: the final pane held every report of the nonce, nothing comes later
            # (and PyFlink 2.2 hangs the job when a BATCH timer registers another timer)
            self._memory.clear(pane.nonce)
        else:
            self._memory.put(pane.nonce, state)
            timers.register_event_time_timer(forget_ms(pane.nonce, self._params))
        emitted = []
        for out in outputs:
            if isinstance(out, Rejection):
                self._counters.inc(out.kind)
                emitted.append((self._dead, dead_letter(out)))
            else:
                self._counters.inc(TOUCHES_CONFIRMED)
                emitted.append((pair_key(out), out))
        return emitted


class _KeepFirstFollowPerPair(Bound, KeyedProcessFunction):
    """Keyed by user pair: confirmed touches grouped per deadline granule, the edge kept for good."""

    def __init__(self, params: FollowParams, in_memory: bool):
        self._params, self.in_memory = params, in_memory

    def setup(self, runtime_context):
        self._counters = _Counters()
        self._graph = KeepFirstFollow()
        # {granule close (ms): [Follow]}: the pair's touches whose granule the watermark has not passed
        self._groups = KeyedValue(runtime_context, "touches_by_granule", self.in_memory)
        self._edge = KeyedValue(runtime_context, "edge", self.in_memory)

    def process_element(self, value, ctx):
        pair, follow = value
        at = close_ms(follow.nonce, self._params)
        groups = self._groups.get(pair, {})
        groups.setdefault(at, []).append(follow)
        self._groups.put(pair, groups)
        # a timer behind the watermark (a touch confirmed late) fires at the next watermark
        ctx.timer_service().register_event_time_timer(at)
        return []

    def on_timer(self, timestamp, ctx):
        bind_metrics(self._rc)
        pair = ctx.get_current_key()
        groups = self._groups.get(pair, {})
        touches = groups.pop(timestamp, None)
        if groups:
            self._groups.put(pair, groups)
        else:
            self._groups.clear(pair)
        if not touches:
            return []
        edge, outputs = self._graph.process(self._edge.get(pair), PairTouches(tuple(sorted(touches))))
        if self.in_memory and not groups:
            # BATCH mode: the pair's last timer; no touch of it comes any more
            self._edge.clear(pair)
        else:
            self._edge.put(pair, edge)
        repeats = sum(isinstance(out, RepeatedTouch) for out in outputs)
        if repeats:
            self._counters.inc(TOUCHES_REPEAT, repeats)
        follows = [out for out in outputs if not isinstance(out, RepeatedTouch)]
        if follows:
            self._counters.inc(FOLLOWS_EMITTED, len(follows))
        return follows


def resolve_follows(ops, taps, registry: dict, params: FollowParams) -> dict:
    """taps: DataStream[TapReport] (event-time stamped); registry: {user_id: User} (the merged
    snapshot) -> {'follows': DataStream[Follow], 'dead_letters': DataStream[DeadLetter]}.

    ``ops`` (``flink_job.ops.FlinkOps``) gives the operators' uid prefix.
    """
    base = uid_path(getattr(ops, "uid_prefix", ""), "ResolveMutualFollows")
    dead = OutputTag(uid_path(base, "dead_letters"), PICKLED)
    pubkeys = {user_id: user.pubkey for user_id, user in registry.items()}

    in_memory = runtime_is_batch(taps.get_execution_environment())

    def stateful(stream, function, name):
        # its own chain: PyFlink 2.2 fuses chained Python operators and, with a side output
        # in the chain, holds a uid twice ("Hash collision on user-specified ID")
        return (stream.process(function, output_type=PICKLED).name(uid_path(base, name)).uid(uid_path(base, name))
                .disable_chaining())

    # stateless: its uid comes from flink_job.ordered.assign_uids
    checked = (taps.process(_CheckTaps(params, pubkeys, dead), output_type=PICKLED)
               .name(uid_path(base, "CheckTapReports")))
    judged = stateful(key_pairs(checked), _JudgeNonce(params, dead, in_memory), "JudgeTouches")
    follows = stateful(key_pairs(judged), _KeepFirstFollowPerPair(params, in_memory), "KeepFirstFollowPerPair")
    dead_letters = side_output(checked, dead, uid_path(base, "CheckDeadLetters")).union(
        side_output(judged, dead, uid_path(base, "JudgeDeadLetters")))
    return {"follows": follows, "dead_letters": dead_letters}

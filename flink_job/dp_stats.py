"""The DP statistics step on Flink: hourly H3-cell statistics with user-day differential privacy.

The chain, its rules and its time semantics are ``transforms.dp_stats``'s (module
docstring = spec) over the same core (``core.dp_stats``); here each stateful step is a
``KeyedProcessFunction`` with event-time timers::

    pings/taps/tweets --ToContributions--> Contribution (drops counted by reason)
      --key (user, hour): BoundUserHour, at the hour's end--> (user, UserHour)
      [+ registry updates --key user: RegistryGate, at the hour's end--> (user, UserHour)]
      --key user: SpendUserDay (flink_job.ordered.run_ordered)--> kept UserHour
      + one tick per scheduled hour
      --key hour: ReleaseHour, at the hour's end--> Statistic rows, ledger rows (side output)

Why this shape
--------------
* Flink holds the watermark for timers (an operator forwards a watermark only after
  the timers it fires), so each step's timer outputs, stamped inside their hour, reach
  the next step before the watermark passes the hour: no day-so-far windows are needed
  (Beam's DirectRunner does not hold it, hence its groupings). The user's day is spent
  in hour order by the ordered host, one message per user-hour.
* Every scheduled hour is released exactly once, data or not: a tick per scheduled
  hour (a bounded source, stamped inside its hour) makes the hour's key exist; the key
  remembers that it released, so late UserHours are counted, never released twice.
* Contributions for an hour already decided, within ``late_count_horizon_s``, are
  only counted (``dp_late_dropped``, after the registry's opt-out/unknown checks, as
  Beam's late panes are); later still they are dropped and counted as
  ``dp_too_late_dropped`` (Beam's runner drops them uncounted).
* Streaming with a changing registry (``registry_updates``: each user's record whenever it
  changes, ``core.registry.registry_over``), the RegistryGate decides each bounded user-hour
  at its hour's end with the user's record in force then -- the latest update stamped at or
  before that end (``core.dp_stats.opted_out_since_launch``): a user who left the statistics
  is out of every hour released after the change, in event time, however far ahead or behind
  the registry's path runs (Beam's ``RegistryGateFn`` takes updates in arrival order).
* BATCH runtime mode: each key's elements, then its timers, so every (user, hour)
  is decided whole and each hour released with all its user-hours: exactly
  ``core.dp_stats.release_contributions``.
"""
from __future__ import annotations

import json
import time
from typing import Optional

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction

from core import dp_accounting as acct
from core import dp_bounding as bnd
from core.compliance import screen_for_statistics
from core.dp_noise import SecureGaussianNoise
from core.dp_stats import (STATISTICS_RELEASED, WINDOWS_RELEASED, DpParams, SpendUserDay, add_to_histogram,
                           bound_user_hour_of, hour_end_us, hour_tick, opted_out_since_launch, release_window,
                           to_contribution)
from flink_job.counters import FlinkCounter, bind_metrics
from flink_job.io import from_records
from flink_job.keyed_state import Bound, KeyedValue
from flink_job.ordered import key_pairs, run_ordered, runtime_is_batch, side_output, uid_path
from schemas import service_area

PICKLED = Types.PICKLED_BYTE_ARRAY()
STEP = "dp"
# Contributions behind the watermark by more than late_count_horizon_s (Beam drops them uncounted).
TOO_LATE = "dp_too_late_dropped"
# Bounded UserHours reaching an hour already released (never added: that would be a second release).
LATE_HOURS = "dp_late_hours_dropped"


def close_ms(hour: float) -> int:
    """The last millisecond of ``hour``: where its timers fire and their outputs are stamped."""
    return hour_end_us(hour) // 1000


class _Counters:
    """``FlinkCounter``s by name, made on first use."""

    def __init__(self):
        self._counters = {}

    def count(self, pairs):
        for name, amount in pairs:
            if amount:
                counter = self._counters.get(name)
                if counter is None:
                    counter = self._counters[name] = FlinkCounter(name)
                counter.inc(amount)


class _ToContributions(Bound, ProcessFunction):
    """A ping / touch / tweet -> (json [user, hour], Contribution), or a counted drop."""

    def __init__(self, kind: str, params: DpParams, max_future_s: Optional[float]):
        self._kind, self._params, self._max_future_s = kind, params, max_future_s
        self._schedule = params.schedule()

    def setup(self, runtime_context):
        self._counters = _Counters()
        self._public = frozenset(service_area.public_cells(self._params.h3_res))

    def process_element(self, record, ctx):
        bind_metrics(self._rc)
        p = self._params
        result = to_contribution(record, self._kind, p.h3_res, self._public, p.max_accuracy_m,
                                 self._schedule, self._max_future_s, time.time)
        if isinstance(result, str):
            self._counters.count([(result, 1)])
            return []
        return [(json.dumps([result.user_id, acct.hour_start(result.ts)]), result)]


class _BoundUserHour(Bound, KeyedProcessFunction):
    """Keyed by (user, hour): the hour's contributions, bounded when the watermark passes its end."""

    def __init__(self, registry: dict, params: DpParams, in_memory: bool):
        self._registry, self.in_memory = registry, in_memory
        self._bounds, self._bands = params.hour_bounds(), params.bands()
        self._horizon_ms = int(params.late_count_horizon_s) * 1000

    def setup(self, runtime_context):
        self._counters = _Counters()
        self._buffer = KeyedValue(runtime_context, "contributions", self.in_memory)
        self._decided = KeyedValue(runtime_context, "decided", self.in_memory)

    def process_element(self, value, ctx):
        bind_metrics(self._rc)
        key, contribution = value
        user_id, hour = json.loads(key)
        timers = ctx.timer_service()
        watermark = timers.current_watermark()
        if watermark >= close_ms(hour) + self._horizon_ms:
            self._counters.count([(TOO_LATE, 1)])
            return []
        if self._decided.get(key) or watermark >= close_ms(hour):
            # the hour was released already: only counted (opt-outs and unknown users first)
            _, counts = bound_user_hour_of(self._registry.get(user_id), [contribution], True,
                                           self._bounds, self._bands)
            self._counters.count(counts)
            return []
        self._buffer.put(key, self._buffer.get(key, []) + [contribution])
        timers.register_event_time_timer(close_ms(hour))
        return []

    def on_timer(self, timestamp, ctx):
        bind_metrics(self._rc)
        key = ctx.get_current_key()
        user_id, hour = json.loads(key)
        contributions = self._buffer.get(key)
        self._buffer.clear(key)
        if timestamp >= close_ms(hour) + self._horizon_ms:
            self._decided.clear(key)
        if not contributions:
            return []
        user_hour, counts = bound_user_hour_of(self._registry.get(user_id), contributions, False,
                                               self._bounds, self._bands)
        self._counters.count(counts)
        if not self.in_memory:
            # remember the decision while late data is still counted, then forget the key
            # (BATCH mode: nothing comes later; PyFlink 2.2 hangs when a BATCH timer sets a timer)
            self._decided.put(key, True)
            ctx.timer_service().register_event_time_timer(close_ms(hour) + self._horizon_ms)
        return [] if user_hour is None else [(user_id, user_hour)]


_HOUR, _UPDATE = "hour", "update"
# A registry update with no timestamp (the launch snapshot's seeds): in force from the start.
_SINCE_LAUNCH = -(2 ** 63)


def _as_hour(pair):
    return pair[0], (_HOUR, pair[1])


def _as_update(user):
    return user.user_id, (_UPDATE, user)


class _RegistryGate(Bound, KeyedProcessFunction):
    """Keyed by user: each bounded user-hour is passed on at its hour's end unless the user's
    record in force then (the latest registry update stamped at or before it) has left the
    statistics since launch (``core.dp_stats.opted_out_since_launch``).

    State: ``(updates [(stamp ms, User)] in stamp order, held UserHours)``; an update is kept
    until a later one is in force (the latest in force stays: the user's current record)."""

    def __init__(self, in_memory: bool):
        self.in_memory = in_memory

    def setup(self, runtime_context):
        self._counters = _Counters()
        self._held = KeyedValue(runtime_context, "registry_gate", self.in_memory)

    def process_element(self, value, ctx):
        bind_metrics(self._rc)
        user_id, (kind, item) = value
        updates, hours = self._held.get(user_id, ([], []))
        if kind == _UPDATE:
            stamp = ctx.timestamp()
            updates = sorted(updates + [(_SINCE_LAUNCH if stamp is None else stamp, item)], key=lambda u: u[0])
            self._held.put(user_id, (updates, hours))
            return []
        timers = ctx.timer_service()
        if close_ms(item.window_start) <= timers.current_watermark():   # its end has passed: decide now
            return self._release(user_id, updates, hours + [item], timers.current_watermark())
        timers.register_event_time_timer(close_ms(item.window_start))
        self._held.put(user_id, (updates, hours + [item]))
        return []

    def on_timer(self, timestamp, ctx):
        bind_metrics(self._rc)
        user_id = ctx.get_current_key()
        updates, hours = self._held.get(user_id, ([], []))
        return self._release(user_id, updates, hours, timestamp)

    def _release(self, user_id: str, updates: list, hours: list, now_ms: int) -> list:
        """The held hours that ended by ``now_ms``, decided with the record in force then."""
        in_force = [update for update in updates if update[0] <= now_ms]
        counts = opted_out_since_launch(in_force[-1][1] if in_force else None)
        ended = [h for h in hours if close_ms(h.window_start) <= now_ms]
        self._counters.count([(name, amount * len(ended)) for name, amount in counts])
        held = (in_force[-1:] + updates[len(in_force):], [h for h in hours if close_ms(h.window_start) > now_ms])
        if held == ([], []):
            self._held.clear(user_id)
        else:
            self._held.put(user_id, held)
        return [] if counts else [(user_id, h) for h in ended]


def _kept(spent) -> list:
    """A SpentHour -> (its hour's key, the kept UserHour), or nothing when its day had no hour left."""
    return [] if spent.kept is None else [(str(spent.kept.window_start), spent.kept)]


class _CountSpent(Bound, ProcessFunction):
    """SpentHour -> (hour key, kept UserHour); counts what the day's bounds dropped (as Beam)."""

    def setup(self, runtime_context):
        self._counters = _Counters()

    def process_element(self, spent, ctx):
        bind_metrics(self._rc)
        self._counters.count(spent.counts())
        return _kept(spent)


class _TickTime(TimestampAssigner):
    def extract_timestamp(self, value, record_timestamp) -> int:
        return close_ms(value[1].window_start)


def _tick_pair(hour: float):
    return str(float(hour)), hour_tick(float(hour))


class _ReleaseHour(Bound, KeyedProcessFunction):
    """Keyed by hour: its histogram, released once when the watermark passes the hour's end."""

    def __init__(self, params: DpParams, noise, ledger: OutputTag, in_memory: bool):
        self._params, self._noise, self._ledger, self.in_memory = params, noise, ledger, in_memory
        self._families = tuple(params.plan().metrics)

    def setup(self, runtime_context):
        self._counters = _Counters()
        self._plan = self._params.plan()
        self._histogram = KeyedValue(runtime_context, "histogram", self.in_memory)
        self._released = KeyedValue(runtime_context, "released", self.in_memory)

    def process_element(self, value, ctx):
        bind_metrics(self._rc)
        key, user_hour = value
        if self._released.get(key):
            self._counters.count([(LATE_HOURS, 1)])
            return []
        self._histogram.put(key, add_to_histogram(self._histogram.get(key, {}), user_hour, self._families))
        ctx.timer_service().register_event_time_timer(close_ms(float(key)))
        return []

    def on_timer(self, timestamp, ctx):
        bind_metrics(self._rc)
        key = ctx.get_current_key()
        if self._released.get(key):
            return []
        statistics, ledger = release_window(self._params, self._plan, self._histogram.get(key, {}),
                                            float(key), self._noise)
        self._histogram.clear(key)
        # for good: an hour is never released twice. In BATCH mode too: PyFlink fired an hour's
        # timer a second time there (its histogram then empty), releasing the hour again as zeros.
        self._released.put(key, True)
        self._counters.count([(STATISTICS_RELEASED, len(statistics)), (WINDOWS_RELEASED, 1)])
        return list(statistics) + [(self._ledger, row) for row in ledger]


def release_statistics(ops, inputs: dict, registry: dict, params: DpParams, noise=None,
                       live: bool = False, compliance=None) -> dict:
    """inputs: {'pings','tweets','taps'[,'deletes'][,'registry_updates']} DataStreams (event-time
    stamped); registry: {user_id: User} (the launch snapshot) -> {'statistics':
    DataStream[Statistic], 'ledger': DataStream[dict]}.

    ``registry_updates`` (streaming, optional): each user's record whenever it changes while
    the job runs (``core.registry.registry_over``); it then decides, at each hour's end,
    whether the user's bounded hour may still be released (the RegistryGate).

    With ``deletes`` (every compliance message) and ``compliance`` (the ``AlertParams`` of the
    fan-out's gate) the tweets pass the same gates first (``core.compliance.screen_for_statistics``).

    ``noise``: None is ``SecureGaussianNoise()`` (tests pass ``NoNoiseForTests``); ``live``:
    a live source, whose events far ahead of the wall clock are dropped (``max_future_s``).
    """
    noise = noise if noise is not None else SecureGaussianNoise()
    p = params
    p.scheduled_hours()   # raises without a schedule: which hours are released never depends on the data
    base = uid_path(getattr(ops, "uid_prefix", ""), "ReleaseDpStatistics")
    env = inputs["pings"].get_execution_environment()
    in_memory = runtime_is_batch(env)
    max_future_s = p.max_future_s if live else None

    def stateful(stream, function, name):
        # its own chain: PyFlink 2.2 fuses chained Python operators and, with a side output
        # in the chain, holds a uid twice ("Hash collision on user-specified ID")
        return (stream.process(function, output_type=PICKLED).name(uid_path(base, name)).uid(uid_path(base, name))
                .disable_chaining())

    if "deletes" in inputs:
        if compliance is None:
            raise ValueError("release_statistics: 'deletes' given without the compliance (AlertParams) to apply them")
        inputs = dict(inputs, tweets=ops.nested("ScreenTweets", lambda o, tweets: screen_for_statistics(
            o, tweets, inputs["deletes"], compliance)["tweets"], inputs["tweets"]))
    contributions = [
        inputs[name].process(_ToContributions(kind, p, max_future_s), output_type=PICKLED)
        .name(uid_path(base, f"{label}Contributions"))
        for name, label, kind in (("pings", "Ping", bnd.PING), ("taps", "Touch", bnd.TOUCH),
                                  ("tweets", "Tweet", bnd.TWEET))
    ]
    keyed = key_pairs(contributions[0].union(*contributions[1:]))
    user_hours = stateful(keyed, _BoundUserHour(registry, p, in_memory), "BoundUserHour")
    if "registry_updates" in inputs:
        tagged = (user_hours.map(_as_hour, output_type=PICKLED).name(uid_path(base, "TagUserHours"))
                  .union(inputs["registry_updates"].map(_as_update, output_type=PICKLED)
                         .name(uid_path(base, "KeyRegistryUpdates"))))
        user_hours = stateful(key_pairs(tagged), _RegistryGate(in_memory), "RegistryGate")
    # The ordered host stamps a user's spent hours inside their hour (due: its start), or
    # at the timer of its tick (the hour's end): either way before the watermark passes the hour.
    spent = run_ordered(user_hours, SpendUserDay(p.max_hours_per_day, p.cells_per_day()), "SpendUserDay",
                        tick_s=float(acct.HOUR_S), allowed_lateness_s=float(p.late_count_horizon_s), step=STEP,
                        uid_prefix=base, bounded=in_memory or getattr(ops, "bounded", False))["out"]
    kept = spent.process(_CountSpent(), output_type=PICKLED).name(uid_path(base, "CountSpentHours"))
    # a checkpointed source (io.from_records), not from_collection: that legacy source is
    # non-parallel (max parallelism 1), which the operators chained to it took on, and a
    # savepoint of them could not be rescaled ("Max parallelism mismatch")
    ticks = (from_records(env, [_tick_pair(h) for h in p.scheduled_hours()], base, "ScheduledHours")
             .assign_timestamps_and_watermarks(
                 WatermarkStrategy.for_monotonous_timestamps().with_timestamp_assigner(_TickTime()))
             .name(uid_path(base, "HourTicks")))
    ledger_tag = OutputTag(uid_path(base, "ledger"), PICKLED)
    released = stateful(key_pairs(kept.union(ticks)), _ReleaseHour(p, noise, ledger_tag, in_memory), "ReleaseHour")
    return {"statistics": released, "ledger": side_output(released, ledger_tag, uid_path(base, "Ledger"))}

"""ReleaseDpStatistics: hourly H3-cell statistics with user-day differential privacy.

This module is the Beam host only: ``DpParams`` and every rule of the chain below
(contributions, bounding a user-hour, spending days, summing, releasing an hour)
live in ``core.dp_stats`` and ``core.dp_bounding``, engine-neutral.

``{'pings', 'tweets', 'taps', 'users'} | ReleaseDpStatistics(DpParams())`` returns
``{'statistics': PCollection[Statistic], 'ledger': PCollection[dict]}``. The
chain, the same in batch and streaming except where step 2 says:

1. ``ToContributions``: every ping, NFC touch report and precisely located
   tweet becomes a ``Contribution`` (user, time, public H3 cell, kind);
   positions outside the public service area, pings less precise than
   ``max_accuracy_m`` and tweets without a precise location are dropped and
   counted (``dp_outside_area_dropped``, ``dp_imprecise_dropped``,
   ``dp_unlocated_dropped``).
2. ``BoundUserHours``: hourly event-time windows (UTC), grouped per user. The
   first thing done with a user's group is the registry lookup: users with
   ``stats_opt_out`` are removed (before any bounding, counting or noise), and
   users not in the registry are dropped and counted. (The lookup sits after
   the grouping, not before it, so the registry side input never holds back
   the watermark of raw events: lateness is judged on event arrival, and it is
   one lookup per user-hour instead of one per event.) Then one user's hour
   becomes one ``UserHour`` within the hour's bounds (``core.dp_bounding``).
   A second grouping per user, over "the JST day so far" windows
   (``DaySoFarWindows``), then fits each hour, in time order, into what is
   left of the user's day (``max_hours_per_day`` hours, ``max_cells_per_day``
   cell-hours per metric), deciding each hour when the watermark passes it.
   Bounded input takes a shorter road to the same result: one global-window
   grouping per user over all time, in which ``core.dp_stats.spend_user_history``
   bounds each hour and walks each JST day in hour order (no hourly windows, whose
   GroupByKey takes Beam's slow general trigger path, and one element per
   user-hour instead of up to 24 day-so-far copies; the batch = streaming tests
   compare the two with zero noise).
3. ``SumPerCell`` + ``ReleaseHour``: one histogram per scheduled hour; every public
   partition of every enabled metric is released, data or not, with Gaussian
   noise from Google's DP library; the hour's ledger rows go out beside them.

Time. Windows are UTC hours; the privacy unit is the JST day of a user (see
``dp_accounting``). An hour is released once, when the watermark passes its end
(default trigger for the release, allowed lateness 0). Data arriving after that
is *not* added to a second release — a second release of the same hour would
spend that hour's budget twice — it is dropped and counted
(``dp_late_dropped``). To be able to count it at all, the first grouping keeps a
window open for ``late_count_horizon_s`` after its end and fires late panes
that are only counted, never released; data later still is dropped by the
runner uncounted.

Which hours are released. Never a function of the data: the set of released
windows, and of ledger rows, would otherwise tell that somebody was somewhere
in an hour nobody else was. The hours come from a public schedule,
``first_hour``..``last_hour`` (``--dp_first_hour``/``--dp_last_hour``; the
launcher otherwise takes the input's ``world.json``, see
``pipelines.dp_schedule``, and refuses to run without either):

* every scheduled hour is released — all public partitions of every enabled
  metric, and its ledger rows — whether or not anyone was there: one empty
  "tick" ``UserHour`` per scheduled hour (a bounded ``Create`` of the
  schedule) joins the hour's sums, so its histogram exists with or without
  data;
* ``ToContributions`` drops, first of all, every event outside the scheduled
  hours (before, after, far future, NaN), counted as
  ``dp_outside_schedule_dropped``: it opens no window and uses none of its
  user's day;
* streaming: the ticks are event-time stamped inside their hour, so hour h is
  released once, when the watermark passes its end, data or not, and nothing
  past ``last_hour`` ever is. The stream's clock is the watermark, which the
  data cannot pull past the schedule (only sources move it); in addition, on a
  live source (``live=True``: the launcher's Kafka source) an event stamped more
  than ``max_future_s`` (default 1 h) ahead of the wall clock is dropped
  (``dp_future_dropped``). Batch and replays of recorded files do not apply
  that wall-clock bound (their period may lie anywhere relative to now), so a
  future-stamped event inside the schedule is the one case where a live run
  and a batch run of the same records may differ.

Sensitivity and budgets are unchanged: the schedule only decides which
hours exist; each user-day is still charged at most its budget (a day's 24
windows add up to it exactly; a schedule that covers part of a day charges
that part).

Sensitivity and bounds of each metric: see ``core.dp_bounding``; the
noise they imply and the ledger: ``core.dp_accounting``.

Post-processing. Noisy values below ``suppress_below`` (default 0: negative
counts) are published as 0.0; rows are never omitted, so the release set is
the same whatever the data. ``noise_scale`` and ``ci95_halfwidth`` describe the
noise before that clamp. Row ``epsilon``/``delta`` are the ledger charge of
the release the row belongs to (see ``dp_accounting``).

Tests make noise reproducible by passing ``noise=NoNoiseForTests(for_tests_only=True)``
(an object, never a flag; see ``core.dp_noise``).
"""
from __future__ import annotations

import time
import typing
from typing import Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from core import dp_accounting as acct
from core import dp_bounding as bnd
from core.dp_noise import SecureGaussianNoise
from core.compliance import screen_for_statistics
from core.dp_stats import (BOUNDED_HOURS, BOUNDED_PRESENCE, BOUNDED_TOUCHES, BOUNDED_TWEETS, FUTURE, LATE,
                           OPTED_OUT, OPTED_OUT_LIVE, OUTSIDE_SCHEDULE, STATISTICS_RELEASED, UNKNOWN_USER, USED, WITHDRAWN,
                           WITHDRAWN_AFTER_RELEASE, WITHDRAWN_UNUSED, WINDOWS_RELEASED, DpParams, SpendUserDay,
                           add_to_histogram, bound_user_hour_of, opted_out_since_launch,
                           drop_counter, hour_end_us, hour_tick, merge_histograms, release_window,
                           spend_user_history, to_contribution)
from core.conventions import METRICS_NAMESPACE as _NS, is_bounded
from core.processor import run_ordered
from schemas import service_area
from schemas.records import Statistic
from transforms.beam_ops import BeamOps



class _Counters:
    """The step's ``Metrics.counter`` objects by name, made up front (names from ``core.dp_stats``)."""

    def __init__(self, names):
        self._counters = {name: Metrics.counter(_NS, name) for name in names}

    def count(self, pairs):
        for name, amount in pairs:
            self._counters[name].inc(amount)

    def inc(self, name: str, amount: int = 1):
        self._counters[name].inc(amount)


class ToContributionsFn(beam.DoFn):
    """A ping / touch / tweet -> a Contribution, or a counted drop (``core.dp_stats.to_contribution``)."""

    def __init__(self, kind: str, h3_res: int, max_accuracy_m: float,
                 schedule: Tuple[float, float], max_future_s: Optional[float] = None):
        self._kind, self._res, self._max_accuracy_m = kind, h3_res, max_accuracy_m
        self._schedule = tuple(schedule)
        self._max_future_s = max_future_s
        self._now = time.time  # the wall clock (tests swap it)
        self._counters = _Counters([OUTSIDE_SCHEDULE, FUTURE, WITHDRAWN_UNUSED] + [
            drop_counter(reason) for reason in (bnd.UNLOCATED, bnd.IMPRECISE, bnd.OUTSIDE)])

    def setup(self):
        self._public = frozenset(service_area.public_cells(self._res))

    def process(self, record):
        result = to_contribution(record, self._kind, self._res, self._public, self._max_accuracy_m,
                                 self._schedule, self._max_future_s, lambda: self._now())
        if isinstance(result, str):
            self._counters.inc(result)
            return
        if result.withdrawn:
            # it arrives at its compliance message's time: back to its tweet's, so it meets the
            # tweet's contribution in that hour's window (late, and only counted, once released)
            yield window.TimestampedValue(result, result.ts)
            return
        yield result


class ToContributions(beam.PTransform):
    def __init__(self, params: DpParams, live: bool = False):
        super().__init__()
        self._params, self._live = params, live

    def expand(self, inputs):
        p = self._params
        schedule = p.schedule()
        if schedule is None:
            p.scheduled_hours()  # raises: says what to give
        max_future_s = p.max_future_s if self._live else None
        streams = [
            inputs[name] | f"{label}Contributions" >> beam.ParDo(
                ToContributionsFn(kind, p.h3_res, p.max_accuracy_m, schedule, max_future_s))
            for name, label, kind in (("pings", "Ping", bnd.PING), ("taps", "Touch", bnd.TOUCH),
                                      ("tweets", "Tweet", bnd.TWEET))
        ]
        # col : Contribution, event-time stamped, global window
        return streams | "FlattenContributions" >> beam.Flatten()


class BoundUserHourFn(beam.DoFn):
    """(user, [Contribution] of one hour) -> (user, UserHour); drops are counted (``core.dp_stats``)."""

    def __init__(self, bounds: bnd.HourBounds, bands: Tuple[str, ...]):
        self._bounds, self._bands = bounds, bands
        self._counters = _Counters([OPTED_OUT, UNKNOWN_USER, LATE, USED, BOUNDED_PRESENCE, BOUNDED_TWEETS,
                                    BOUNDED_TOUCHES, WITHDRAWN, WITHDRAWN_AFTER_RELEASE, WITHDRAWN_UNUSED])

    def process(self, element, users, pane=beam.DoFn.PaneInfoParam):
        user_id, contributions = element
        user_hour, counts = bound_user_hour_of(users.get(user_id), list(contributions),
                                               pane.timing == PaneInfoTiming.LATE, self._bounds, self._bands)
        self._counters.count(counts)
        if user_hour is not None:
            yield user_id, user_hour


class RegistryGateFn(beam.DoFn):
    """Streaming with a changing registry: keyed by user, in the global window, the user's
    current record (each update from ``FollowRegistry``) decides whether a bounded user-hour
    about to be released still may be (``core.dp_stats.opted_out_since_launch``): "leave the
    statistics" holds for every hour released after the change arrived."""
    USER = ReadModifyWriteStateSpec("user", PickleCoder())

    def __init__(self):
        self._counters = _Counters([OPTED_OUT_LIVE])

    def process(self, element, current=beam.DoFn.StateParam(USER)):
        user_id, (kind, value) = element
        if kind == "user":
            current.write(value)
            return
        counts = opted_out_since_launch(current.read())
        self._counters.count(counts)
        if not counts:
            yield user_id, value


class DaySoFarWindows(window.NonMergingWindowFn):
    """Windows [JST day start, h end): each holds a user's day up to hour h, decided at h's end.

    A user-hour of hour g goes, whole, to its own window [day start, g end)
    and, as its small ``HourUse``, to every later window of the day. The window
    ending at hour h's end thus holds everything that deciding hour h "first
    in time" needs, and fires (default trigger) when the watermark passes h.
    Timers would need one copy instead of up to 24, but the direct runner does
    not hold the watermark for user timers, so their output could reach the
    release late; a grouping's output is always on time.
    """

    def assign(self, context):
        _, value = context.element
        start = acct.hour_start(float(context.timestamp))
        day_start = acct.day_end(start) - acct.HOURS_PER_DAY * acct.HOUR_S
        first_end = int(start) + acct.HOUR_S
        if isinstance(value, bnd.UserHour):
            return [window.IntervalWindow(day_start, first_end)]
        day_end = int(day_start) + acct.HOURS_PER_DAY * acct.HOUR_S
        return [window.IntervalWindow(day_start, end)
                for end in range(first_end + acct.HOUR_S, day_end + 1, acct.HOUR_S)]

    def get_window_coder(self):
        return beam.coders.coders.IntervalWindowCoder()


def _with_hour_use(element):
    """(user, UserHour) -> itself, and (user, HourUse) for the day's later windows."""
    user_id, user_hour = element
    yield element
    yield user_id, bnd.hour_use(user_hour)


class _CollectHoursFn(beam.CombineFn):
    """A GroupByKey that the runner may pre-combine per bundle (fewer elements to shuffle)."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, item):
        acc.append(item)
        return acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        out = next(accs)
        for acc in accs:
            out.extend(acc)
        return out

    def extract_output(self, acc):
        return acc


class SpendUserDayFn(beam.DoFn):
    """Streaming: (user, [this hour's UserHour, earlier hours' HourUse]) -> this hour within the
    day's bounds (``core.dp_stats.SpendUserDay``), drops counted."""

    def __init__(self, max_hours: int, max_cells_per_day: int):
        self._max_hours, self._max_cells = max_hours, max_cells_per_day
        self._counters = _Counters([BOUNDED_HOURS, BOUNDED_PRESENCE, BOUNDED_TWEETS, BOUNDED_TOUCHES])

    def setup(self):
        self._spender = SpendUserDay(self._max_hours, self._max_cells)

    def process(self, element):
        _, items = element
        # without this hour's UserHour the user had earlier hours today but none in this window's hour
        _, spent = run_ordered(self._spender, items)
        for hour in spent:
            self._counters.count(hour.counts())
            if hour.kept is not None:
                yield hour.kept


class SpendUserHistoryFn(beam.DoFn):
    """Bounded input: (user, [every Contribution of the user]) -> the user's UserHours, each
    bounded and fitted into its day (``core.dp_stats.spend_user_history``: the same rules as the
    streaming chain's ``BoundUserHourFn`` + ``SpendUserDayFn``), stamped at its hour's end.

    One global-window grouping per user instead of hourly windows then a second grouping:
    the hourly windows sent every contribution through Beam's general trigger driver, the
    batch runner's slowest GroupByKey (issue #13's profile)."""

    def __init__(self, bounds: bnd.HourBounds, bands: Tuple[str, ...], max_hours: int, max_cells_per_day: int):
        self._bounds, self._bands = bounds, bands
        self._max_hours, self._max_cells = max_hours, max_cells_per_day
        self._counters = _Counters([WITHDRAWN, WITHDRAWN_AFTER_RELEASE, WITHDRAWN_UNUSED,
                                    OPTED_OUT, UNKNOWN_USER, LATE, USED, BOUNDED_HOURS, BOUNDED_PRESENCE,
                                    BOUNDED_TWEETS, BOUNDED_TOUCHES])

    def setup(self):
        self._spender = SpendUserDay(self._max_hours, self._max_cells)

    def process(self, element, users):
        user_id, contributions = element
        kept, counts = spend_user_history(users.get(user_id), list(contributions), self._bounds, self._bands,
                                          self._spender)
        self._counters.count(counts)
        for user_hour in kept:
            yield window.TimestampedValue(user_hour, Timestamp(micros=hour_end_us(user_hour.window_start)))


class BoundUserHours(beam.PTransform):
    """Contributions -> bounded UserHours (no user id), each in its hourly window.

    ``registry`` is the user registry as a side input (``AsDict`` of user id -> User);
    ``updates`` (streaming, optional): each user's record whenever it changes while the job
    runs (``transforms.registry.FollowRegistry``), which then decides the hours released after.
    """

    def __init__(self, params: DpParams, registry, updates=None):
        super().__init__()
        self._params, self._registry, self._updates = params, registry, updates

    def expand(self, contributions):
        p, users = self._params, self._registry
        if is_bounded(contributions):
            # Bounded input: a user's whole history is at hand, so each hour is bounded and each
            # day spent in one pass over one global-window group per user (the runner's fast
            # GroupByKey; one element per user-hour out, none of the day-so-far copies).
            return (contributions
                    | "KeyByUser" >> beam.Map(lambda c: (c.user_id, c))
                    | "GroupUserHistory" >> beam.GroupByKey()
                    | "SpendUserHistory" >> beam.ParDo(
                        SpendUserHistoryFn(p.hour_bounds(), p.bands(), p.max_hours_per_day, p.cells_per_day()),
                        users))
        # Late firings exist only so late data can be counted; they are never released.
        grouped = (contributions
                   | "HourlyWindows" >> beam.WindowInto(
                       window.FixedWindows(acct.HOUR_S),
                       trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                       accumulation_mode=trigger.AccumulationMode.DISCARDING,
                       allowed_lateness=p.late_count_horizon_s)
                   | "KeyByUser" >> beam.Map(lambda c: (c.user_id, c))
                   | "GroupUserHour" >> beam.GroupByKey())
        hourly = grouped | "BoundUserHour" >> beam.ParDo(BoundUserHourFn(p.hour_bounds(), p.bands()), users)
        if self._updates is not None:
            hours = (hourly
                     | "TagUserHours" >> beam.Map(lambda kv: (kv[0], ("hour", kv[1])))
                     | "UserHoursToGlobal" >> beam.WindowInto(window.GlobalWindows()))
            changes = self._updates | "KeyRegistryUpdates" >> beam.Map(lambda u: (u.user_id, ("user", u)))
            hourly = ((hours, changes)
                      # str keys: a deterministic key coder, as state requires
                      | "HoursAndRegistry" >> beam.Flatten().with_output_types(Tuple[str, Tuple[str, typing.Any]])
                      | "RegistryGate" >> beam.ParDo(RegistryGateFn()))
        # hourly : (user_id, UserHour), stamped at the hour's end
        # col : UserHour within the day's bounds, stamped at its hour's end, in the day-so-far window
        return (hourly
                | "WithHourUse" >> beam.FlatMap(_with_hour_use)
                | "DaySoFar" >> beam.WindowInto(DaySoFarWindows())
                | "GroupUserDay" >> beam.CombinePerKey(_CollectHoursFn())
                | "SpendUserDay" >> beam.ParDo(SpendUserDayFn(p.max_hours_per_day, p.cells_per_day())))


class SumHistogramFn(beam.CombineFn):
    """UserHour increments -> {(metric, cell): count} for one hour (``core.dp_stats``)."""

    def __init__(self, families: Tuple[str, ...]):
        self._families = families

    def create_accumulator(self):
        return {}

    def add_input(self, acc, user_hour):
        return add_to_histogram(acc, user_hour, self._families)

    def merge_accumulators(self, accs):
        return merge_histograms(accs)

    def extract_output(self, acc):
        return acc


def _hour_tick(hour: float):
    """``core.dp_stats.hour_tick``, stamped inside its hour."""
    return window.TimestampedValue(hour_tick(hour), Timestamp(micros=hour_end_us(hour)))


class ReleaseHourFn(beam.DoFn):
    LEDGER = "ledger"

    def __init__(self, params: DpParams, noise):
        self._params, self._noise = params, noise
        self._counters = _Counters([STATISTICS_RELEASED, WINDOWS_RELEASED])

    def setup(self):
        self._plan = self._params.plan()

    def process(self, histogram, win=beam.DoFn.WindowParam):
        start = win.start.micros / 1_000_000
        statistics, ledger = release_window(self._params, self._plan, histogram, start, self._noise)
        self._counters.count([(STATISTICS_RELEASED, len(statistics)), (WINDOWS_RELEASED, 1)])
        for row in ledger:
            yield pvalue.TaggedOutput(self.LEDGER, row)
        for stat in statistics:
            yield stat


class _ScreenTweets(beam.PTransform):
    """Tweets -> the ones the statistics may use, and withdrawals (``screen_for_statistics``)."""

    def __init__(self, params):
        super().__init__()
        self._params = params

    def expand(self, inputs):
        p, tweets, deletes = self._params, inputs["tweets"], inputs["deletes"]
        return screen_for_statistics(BeamOps(is_bounded(tweets, deletes)), tweets, deletes, p)["tweets"]


class ReleaseDpStatistics(beam.PTransform):
    """{'pings', 'tweets', 'taps', 'users'[, 'deletes'][, 'registry_updates']} -> {'statistics', 'ledger'}.

    ``registry_updates`` (streaming): each user's record as it changes while the job runs
    (``transforms.registry.FollowRegistry``): an opt-out holds for every hour released after it.

    With ``deletes`` (every compliance message) and ``compliance`` (the ``AlertParams`` whose
    service country, horizon and ticks the alert fan-out's gate uses), the tweets pass the
    same gates first (``core.compliance.screen_for_statistics``): what a user took back is
    not counted in an hour released after the message."""

    def __init__(self, params: Optional[DpParams] = None, noise=None, live: bool = False, compliance=None):
        super().__init__()
        self._params = params or DpParams()
        self._compliance = compliance
        # live: events arrive as they happen (Kafka), so the wall clock bounds their times
        # (max_future_s). Not for replays of recorded files, whose times are all "past".
        self._live = live
        # Not a DpParams field on purpose: only code (tests) can swap the noise.
        self._noise = noise if noise is not None else SecureGaussianNoise()

    def expand(self, inputs):
        p = self._params
        families = tuple(p.plan().metrics)
        registry = pvalue.AsDict(inputs["users"] | "KeyUsers" >> beam.Map(lambda u: (u.user_id, u)))
        updates = inputs.get("registry_updates")
        hours = p.scheduled_hours()
        if "deletes" in inputs:
            if self._compliance is None:
                raise ValueError("ReleaseDpStatistics: 'deletes' given without the compliance (AlertParams) to apply them")
            screened = ({"tweets": inputs["tweets"], "deletes": inputs["deletes"]}
                        | "ScreenTweets" >> _ScreenTweets(self._compliance))
            inputs = dict(inputs, tweets=screened)
        contributions = inputs | "ToContributions" >> ToContributions(p, self._live)
        user_hours = (contributions
                      | "BoundUserHours" >> BoundUserHours(p, registry, updates)
                      # One release per hour: default trigger, no lateness.
                      | "ReleaseWindows" >> beam.WindowInto(window.FixedWindows(acct.HOUR_S)))
        # The schedule, not the data, decides which hours exist: one empty tick per scheduled
        # hour (a bounded source, so in streaming each hour still waits for the watermark).
        ticks = (inputs["users"].pipeline
                 | "ScheduledHours" >> beam.Create(hours, reshuffle=False)
                 | "HourTicks" >> beam.Map(_hour_tick)
                 | "TickWindows" >> beam.WindowInto(window.FixedWindows(acct.HOUR_S)))
        released = ((user_hours, ticks)
                    | "EveryScheduledHour" >> beam.Flatten()
                    | "SumPerCell" >> beam.CombineGlobally(SumHistogramFn(families)).without_defaults()
                    | "ReleaseHour" >> beam.ParDo(ReleaseHourFn(p, self._noise))
                    .with_output_types(Statistic)
                    .with_outputs(ReleaseHourFn.LEDGER, main="statistics"))
        return {"statistics": released.statistics, "ledger": released[ReleaseHourFn.LEDGER]}

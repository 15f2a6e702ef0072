"""ReleaseDpStatistics: hourly H3-cell statistics with user-day differential privacy.

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
   Bounded input takes a shorter road to the same result: one grouping per
   user over all time, and ``spend_days`` walks each JST day in hour order
   (one element per user-hour instead of up to 24 day-so-far copies; the
   batch = streaming tests compare the two with zero noise).
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

import dataclasses
import math
import time
from typing import Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

import h3

from schemas import service_area
from schemas.records import Statistic
from schemas.timefmt import format_rfc3339, parse_rfc3339
from core import dp_accounting as acct
from core import dp_bounding as bnd
from core.dp_noise import SecureGaussianNoise, ci95_halfwidth

_NS = "tapfollow"


@dataclasses.dataclass(frozen=True)
class DpParams:
    """Configuration of the marketing statistics (each field is a ``--dp_<field>`` flag)."""
    epsilon_per_user_day: float = 1.0
    delta_per_user_day: float = 1e-6
    h3_res: int = 8
    max_cells_per_hour: int = 3          # C: per metric, per user-hour
    max_cells_per_day: int = 36          # K: per metric, per user-day (cell-hours); sets the noise
    max_hours_per_day: int = 24          # per user, per JST day
    max_tweets_per_cell_hour: int = 2
    max_touches_per_cell_hour: int = 2
    share_footfall: float = 0.4          # parts of the user-day budget (μ²); must sum to <= 1
    share_footfall_by_age: float = 0.2
    share_tweets: float = 0.2
    share_nfc_touches: float = 0.2
    flows: bool = False                  # hourly flows between coarse cells
    share_flows: float = 0.2
    flow_res: int = 6
    age_bands: str = "10-19,20-29,30-39,40-49,50-59,60-69,70+"  # the bands users.jsonl uses
    max_accuracy_m: float = 250.0        # pings less precise than this place nobody in a cell
    suppress_below: float = 0.0          # noisy values below this are published as 0.0
    late_count_horizon_s: int = 6 * 3600  # how long late data is still seen (to count it)
    # The release schedule (public, never from the data): every hour from first_hour to
    # last_hour (RFC 3339 hour starts, both included) is released, data or not; events
    # outside it are dropped and counted. "" = the launcher takes the input's world.json.
    first_hour: str = ""
    last_hour: str = ""
    max_future_s: int = 3600             # live source: events further ahead of the wall clock are dropped

    def __post_init__(self):
        if not (isinstance(self.epsilon_per_user_day, (int, float)) and math.isfinite(self.epsilon_per_user_day)
                and self.epsilon_per_user_day > 0):
            raise ValueError(f"epsilon_per_user_day={self.epsilon_per_user_day}: must be a number > 0 "
                             f"(e.g. 1.0)")
        if self.epsilon_per_user_day > 10:
            raise ValueError(f"epsilon_per_user_day={self.epsilon_per_user_day} protects nobody; "
                             f"choose at most 10 (1.0 is the default)")
        if not 0 < self.delta_per_user_day <= 1e-5:
            raise ValueError(f"delta_per_user_day={self.delta_per_user_day}: must be in (0, 1e-5] "
                             f"(Gaussian noise needs delta > 0; 1e-6 is the default)")
        if not 5 <= self.h3_res <= 10:
            raise ValueError(f"h3_res={self.h3_res}: choose 5..10 (8 is ~0.7 km², the default)")
        for name in ("max_cells_per_hour", "max_cells_per_day", "max_tweets_per_cell_hour",
                     "max_touches_per_cell_hour"):
            value = getattr(self, name)
            if not 1 <= value <= 1000:
                raise ValueError(f"{name}={value}: choose 1..1000")
        if self.flows and not 0 <= self.flow_res < self.h3_res:
            raise ValueError(f"flow_res={self.flow_res} must be coarser than h3_res={self.h3_res}")
        if not self.bands():
            raise ValueError("age_bands is empty: give comma-separated labels like '20-29,30-39'")
        if len(set(self.bands())) != len(self.bands()):
            raise ValueError(f"age_bands={self.age_bands!r} lists a band twice")
        if not self.max_accuracy_m > 0:
            raise ValueError(f"max_accuracy_m={self.max_accuracy_m}: must be > 0 metres (250 is the default)")
        if self.late_count_horizon_s < 0:
            raise ValueError(f"late_count_horizon_s={self.late_count_horizon_s}: must be >= 0")
        if not (isinstance(self.max_future_s, int) and self.max_future_s >= 0):
            raise ValueError(f"max_future_s={self.max_future_s}: must be an integer >= 0 seconds "
                             f"(3600 is the default)")
        self.schedule()
        for name in ("share_footfall", "share_footfall_by_age", "share_tweets", "share_nfc_touches",
                     "share_flows"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be in [0, 1]")
        if self.flows and self.share_flows <= 0:
            raise ValueError("flows=True needs share_flows > 0 (and the shares summing to <= 1)")
        try:
            self.plan()
        except acct.BudgetError as exc:
            raise ValueError(str(exc)) from None

    def schedule(self) -> Optional[Tuple[float, float]]:
        """(first_hour, last_hour) as epoch seconds, or None when no schedule is configured."""
        if not self.first_hour and not self.last_hour:
            return None
        if not (self.first_hour and self.last_hour):
            raise ValueError("first_hour and last_hour go together: give both (e.g. "
                             "--dp_first_hour 2026-11-20T03:00:00Z --dp_last_hour 2026-11-20T08:00:00Z)")
        bounds = []
        for name in ("first_hour", "last_hour"):
            value = getattr(self, name)
            try:
                ts = parse_rfc3339(value, name)
            except ValueError as exc:
                raise ValueError(f"{exc}; give an RFC 3339 time on the hour, e.g. 2026-11-20T03:00:00Z") from None
            if ts % acct.HOUR_S:
                raise ValueError(f"{name}={value!r} is not on the hour: give an hour start, "
                                 f"e.g. 2026-11-20T03:00:00Z")
            bounds.append(float(ts))
        first, last = bounds
        if last < first:
            raise ValueError(f"last_hour={self.last_hour!r} is before first_hour={self.first_hour!r}: "
                             f"swap them")
        hours = int(last - first) // acct.HOUR_S + 1
        if hours > acct.MAX_SCHEDULE_HOURS:
            raise ValueError(f"first_hour..last_hour spans {hours} hours: release at most "
                             f"{acct.MAX_SCHEDULE_HOURS} (a year) per run")
        return first, last

    def with_schedule(self, first_hour: float, last_hour: float) -> "DpParams":
        """The same parameters releasing every hour from first_hour to last_hour (epoch seconds)."""
        return dataclasses.replace(self, first_hour=format_rfc3339(first_hour),
                                   last_hour=format_rfc3339(last_hour))

    def scheduled_hours(self) -> List[float]:
        """The start of every released hour; ValueError when no schedule is configured."""
        schedule = self.schedule()
        if schedule is None:
            raise ValueError("no release schedule: give DpParams(first_hour=..., last_hour=...) "
                             "(--dp_first_hour/--dp_last_hour); which hours are released must not "
                             "depend on the data")
        return acct.scheduled_hours(*schedule)

    def bands(self) -> Tuple[str, ...]:
        return tuple(b.strip() for b in self.age_bands.split(",") if b.strip())

    def hour_bounds(self) -> bnd.HourBounds:
        return bnd.HourBounds(self.max_cells_per_hour, self.max_tweets_per_cell_hour,
                              self.max_touches_per_cell_hour, self.flow_res if self.flows else None)

    def cells_per_day(self) -> int:
        """K as enforced: a user cannot fill more than max_hours_per_day x max_cells_per_hour."""
        return min(self.max_cells_per_day, self.max_hours_per_day * self.max_cells_per_hour)

    def metric_bounds(self) -> List[acct.MetricBounds]:
        c, k, h = self.max_cells_per_hour, self.cells_per_day(), self.max_hours_per_day
        first = f"first in time per user: {c} cells per hour, {k} cell-hours and {h} hours per JST day"
        candidates = [
            (bnd.FOOTFALL, self.share_footfall, c, k, 1, first),
            (bnd.FOOTFALL_BY_AGE, self.share_footfall_by_age, c, k, 1, f"{first}; one age band per user"),
            (bnd.TWEETS, self.share_tweets, c, k, self.max_tweets_per_cell_hour,
             f"{first}; {self.max_tweets_per_cell_hour} tweets per cell-hour"),
            (bnd.NFC_TOUCHES, self.share_nfc_touches, c, k, self.max_touches_per_cell_hour,
             f"{first}; {self.max_touches_per_cell_hour} touches per cell-hour"),
            (bnd.FLOWS, self.share_flows if self.flows else 0.0, 1, h, 1,
             f"one (first, last) coarse-cell pair per user-hour, {h} hours per JST day"),
        ]
        return [acct.MetricBounds(*row) for row in candidates if row[1] > 0]

    def plan(self) -> acct.BudgetPlan:
        return acct.plan_budget(self.epsilon_per_user_day, self.delta_per_user_day,
                                self.max_hours_per_day, self.metric_bounds())


# ---------------------------------------------------------------- pure release

def release_window(params: DpParams, plan: acct.BudgetPlan, histogram: Dict[Tuple[str, str], int],
                   window_start: float, noise) -> Tuple[List[Statistic], List[dict]]:
    """All rows and ledger entries of one hour: every public partition, noised."""
    public = service_area.public_cells(params.h3_res)
    statistics, ledger = [], []
    for family, metric_plan in plan.metrics.items():
        partitions = bnd.public_partitions(family, public, params.bands(), params.flow_res)
        add_noise = noise.sampler(metric_plan.noise_stddev)
        row = acct.ledger_row(plan, family, window_start, len(partitions))
        res = params.flow_res if family == bnd.FLOWS else params.h3_res
        for metric, cell in partitions:
            value = add_noise(histogram.get((metric, cell), 0))
            statistics.append(Statistic(
                window_start=window_start,
                window_end=window_start + acct.HOUR_S,
                h3_cell=cell,
                h3_res=res,
                metric=metric,
                value=value if value >= params.suppress_below else 0.0,
                mechanism=noise.mechanism,
                noise_scale=metric_plan.noise_stddev,
                ci95_halfwidth=ci95_halfwidth(metric_plan.noise_stddev),
                epsilon=row["epsilon"],
                delta=row["delta"],
            ))
        row["mechanism"] = noise.mechanism
        ledger.append(row)
    return statistics, ledger


# ---------------------------------------------------------------- Beam steps

class ToContributionsFn(beam.DoFn):
    """A ping / touch / tweet -> a Contribution, or a counted drop (never an exception).

    ``schedule`` is (first_hour, last_hour): an event outside every scheduled hour
    (before, after, far future) is dropped first (``dp_outside_schedule_dropped``), so
    it neither opens a window nor uses its user's day. ``max_future_s`` (live sources only,
    None for batch and replays): an event stamped further than that ahead of the wall clock is dropped
    (``dp_future_dropped``).
    """

    def __init__(self, kind: str, h3_res: int, max_accuracy_m: float,
                 schedule: Tuple[float, float], max_future_s: Optional[float] = None):
        self._kind, self._res, self._max_accuracy_m = kind, h3_res, max_accuracy_m
        self._first, self._last = schedule
        self._max_future_s = max_future_s
        self._now = time.time  # the wall clock (tests swap it)
        self._dropped = {reason: Metrics.counter(_NS, f"dp_{reason}_dropped")
                         for reason in (bnd.UNLOCATED, bnd.IMPRECISE, bnd.OUTSIDE)}
        self._unscheduled = Metrics.counter(_NS, "dp_outside_schedule_dropped")
        self._future = Metrics.counter(_NS, "dp_future_dropped")

    def setup(self):
        self._public = frozenset(service_area.public_cells(self._res))

    def process(self, record):
        if not acct.in_schedule(record.ts, self._first, self._last):
            self._unscheduled.inc()
            return
        if self._max_future_s is not None and record.ts > self._now() + self._max_future_s:
            self._future.inc()
            return
        result = bnd.contribution_of(record, self._kind, self._res, self._public, self._max_accuracy_m)
        if isinstance(result, str):
            self._dropped[result].inc()
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
    """(user, [Contribution] of one hour) -> (user, UserHour); drops are counted."""

    def __init__(self, bounds: bnd.HourBounds, bands: Tuple[str, ...]):
        self._bounds, self._bands = bounds, bands
        self._opted_out = Metrics.counter(_NS, "dp_opted_out_dropped")
        self._unknown = Metrics.counter(_NS, "dp_unknown_user_dropped")
        self._late = Metrics.counter(_NS, "dp_late_dropped")
        self._used = Metrics.counter(_NS, "dp_contributions_used")
        self._presence = Metrics.counter(_NS, "dp_bounded_presence_dropped")
        self._tweets = Metrics.counter(_NS, "dp_bounded_tweets_dropped")
        self._touches = Metrics.counter(_NS, "dp_bounded_touches_dropped")

    def process(self, element, users, pane=beam.DoFn.PaneInfoParam):
        user_id, contributions = element
        contributions = list(contributions)
        user = users.get(user_id)
        if user is not None and user.stats_opt_out:
            self._opted_out.inc(len(contributions))
            return
        if user is None:
            self._unknown.inc(len(contributions))
            return
        if pane.timing == PaneInfoTiming.LATE:
            # The hour was already released: adding these would need a second release.
            self._late.inc(len(contributions))
            return
        self._used.inc(len(contributions))
        user_hour, dropped = bnd.bound_user_hour(contributions, self._bounds,
                                                 bnd.age_band_of(user.age_band, self._bands))
        self._presence.inc(dropped.presence)
        self._tweets.inc(dropped.tweets)
        self._touches.inc(dropped.touches)
        yield user_id, user_hour


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


class _SpendDayFn(beam.DoFn):
    """What both ways of fitting hours into a user's day share: the bounds and the counters."""

    def __init__(self, max_hours: int, max_cells_per_day: int):
        self._max_hours, self._max_cells = max_hours, max_cells_per_day
        self._hours = Metrics.counter(_NS, "dp_bounded_hours_dropped")
        self._presence = Metrics.counter(_NS, "dp_bounded_presence_dropped")
        self._tweets = Metrics.counter(_NS, "dp_bounded_tweets_dropped")
        self._touches = Metrics.counter(_NS, "dp_bounded_touches_dropped")

    def _count(self, hours_dropped: int, dropped: bnd.Dropped) -> None:
        self._hours.inc(hours_dropped)
        self._presence.inc(dropped.presence)
        self._tweets.inc(dropped.tweets)
        self._touches.inc(dropped.touches)


class SpendUserDayFn(_SpendDayFn):
    """(user, [this hour's UserHour, earlier hours' HourUse]) -> this hour within the day's bounds."""

    def process(self, element):
        _, items = element
        current = [h for h in items if isinstance(h, bnd.UserHour)]
        if not current:
            # the user had earlier hours today but none in this window's hour
            return
        (user_hour,) = current
        day_use = bnd.DayUse()
        for earlier in sorted((h for h in items if isinstance(h, bnd.HourUse)), key=lambda h: h.window_start):
            day_use = bnd.spend_earlier(day_use, earlier, self._max_hours, self._max_cells)
        kept, _, dropped = bnd.spend_day(user_hour, day_use, self._max_hours, self._max_cells)
        self._count(int(kept is None), dropped)
        if kept is not None:
            yield kept


class SpendWholeDaysFn(_SpendDayFn):
    """Bounded input: (user, [every UserHour]) -> each hour within its day's bounds, stamped at
    its hour's end (``spend_days``: the same arithmetic as ``SpendUserDayFn``, hour by hour)."""

    def process(self, element):
        _, hours = element
        hours = list(hours)
        kept, dropped = bnd.spend_days(hours, self._max_hours, self._max_cells)
        self._count(len(hours) - len(kept), dropped)
        for user_hour in kept:
            hour_end_us = (int(user_hour.window_start) + acct.HOUR_S) * 1_000_000
            yield window.TimestampedValue(user_hour, Timestamp(micros=hour_end_us - 1))


class BoundUserHours(beam.PTransform):
    """Contributions -> bounded UserHours (no user id), each in its hourly window.

    ``registry`` is the user registry as a side input (``AsDict`` of user id -> User).
    """

    def __init__(self, params: DpParams, registry):
        super().__init__()
        self._params, self._registry = params, registry

    def expand(self, contributions):
        p, users = self._params, self._registry
        streaming = contributions.pipeline.options.view_as(StandardOptions).streaming
        if streaming:
            # Late firings exist only so late data can be counted; they are never released.
            hourly_windows = beam.WindowInto(
                window.FixedWindows(acct.HOUR_S),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
                allowed_lateness=p.late_count_horizon_s)
        else:
            # Bounded input is never late; the default trigger takes the runner's fast path.
            hourly_windows = beam.WindowInto(window.FixedWindows(acct.HOUR_S))
        hourly = (contributions
                  | "HourlyWindows" >> hourly_windows
                  | "KeyByUser" >> beam.Map(lambda c: (c.user_id, c))
                  | "GroupUserHour" >> beam.GroupByKey()
                  # col : (user_id, UserHour), stamped at the hour's end
                  | "BoundUserHour" >> beam.ParDo(BoundUserHourFn(p.hour_bounds(), p.bands()), users))
        if not streaming:
            # Bounded input: a user's whole history is at hand, so each day is spent in one pass
            # (one element per user-hour, not up to 24 copies in day-so-far windows).
            # The group is stamped at its earliest hour's end (not the global window's end), so
            # each hour re-stamped at its own end is on time for the hourly release downstream:
            # Prism judges lateness in batch too.
            return (hourly
                    | "AllHours" >> beam.WindowInto(window.GlobalWindows(),
                                                    timestamp_combiner=window.TimestampCombiner.OUTPUT_AT_EARLIEST)
                    | "GroupUserHours" >> beam.GroupByKey()
                    | "SpendWholeDays" >> beam.ParDo(SpendWholeDaysFn(p.max_hours_per_day, p.cells_per_day())))
        # col : UserHour within the day's bounds, stamped at its hour's end, in the day-so-far window
        return (hourly
                | "WithHourUse" >> beam.FlatMap(_with_hour_use)
                | "DaySoFar" >> beam.WindowInto(DaySoFarWindows())
                | "GroupUserDay" >> beam.CombinePerKey(_CollectHoursFn())
                | "SpendUserDay" >> beam.ParDo(SpendUserDayFn(p.max_hours_per_day, p.cells_per_day())))


class SumHistogramFn(beam.CombineFn):
    """UserHour increments -> {(metric, cell): count} for one hour."""

    def __init__(self, families: Tuple[str, ...]):
        self._families = families

    def create_accumulator(self):
        return {}

    def add_input(self, acc, user_hour):
        for key, amount in bnd.increments(user_hour, self._families):
            acc[key] = acc.get(key, 0) + amount
        return acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        out = next(accs)
        for acc in accs:
            for key, amount in acc.items():
                out[key] = out.get(key, 0) + amount
        return out

    def extract_output(self, acc):
        return acc


def _hour_tick(hour: float):
    """An empty UserHour stamped inside ``hour``: it adds nothing, but makes the hour's
    histogram exist, so the hour is released whether or not anyone was there."""
    tick = bnd.UserHour(hour, bnd.UNKNOWN_BAND, (), (), (), None)
    return window.TimestampedValue(tick, Timestamp(micros=(int(hour) + acct.HOUR_S) * 1_000_000 - 1))


class ReleaseHourFn(beam.DoFn):
    LEDGER = "ledger"

    def __init__(self, params: DpParams, noise):
        self._params, self._noise = params, noise
        self._released = Metrics.counter(_NS, "dp_statistics_released")
        self._windows = Metrics.counter(_NS, "dp_windows_released")

    def setup(self):
        self._plan = self._params.plan()

    def process(self, histogram, win=beam.DoFn.WindowParam):
        start = win.start.micros / 1_000_000
        statistics, ledger = release_window(self._params, self._plan, histogram, start, self._noise)
        self._released.inc(len(statistics))
        self._windows.inc()
        for row in ledger:
            yield pvalue.TaggedOutput(self.LEDGER, row)
        for stat in statistics:
            yield stat


class ReleaseDpStatistics(beam.PTransform):
    """{'pings', 'tweets', 'taps', 'users'} -> {'statistics': [Statistic], 'ledger': [dict]}."""

    def __init__(self, params: Optional[DpParams] = None, noise=None, live: bool = False):
        super().__init__()
        self._params = params or DpParams()
        # live: events arrive as they happen (Kafka), so the wall clock bounds their times
        # (max_future_s). Not for replays of recorded files, whose times are all "past".
        self._live = live
        # Not a DpParams field on purpose: only code (tests) can swap the noise.
        self._noise = noise if noise is not None else SecureGaussianNoise()

    def expand(self, inputs):
        p = self._params
        families = tuple(p.plan().metrics)
        registry = pvalue.AsDict(inputs["users"] | "KeyUsers" >> beam.Map(lambda u: (u.user_id, u)))
        hours = p.scheduled_hours()
        contributions = inputs | "ToContributions" >> ToContributions(p, self._live)
        user_hours = (contributions
                      | "BoundUserHours" >> BoundUserHours(p, registry)
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

"""The DP statistics step, engine-neutral: ``DpParams`` and every per-step rule of the release.

``transforms.dp_stats.ReleaseDpStatistics`` hosts these in Beam (its module
docstring tells the chain, the windows and the lateness rules); a Flink job
hosts the same functions, and :func:`release_contributions` runs the chain on
plain lists (the benchmark's "ours without a runner"). In chain order:

1. :func:`to_contribution`: one ping / touch / tweet -> a ``Contribution`` or the
   counter of why it is dropped (outside the schedule, ahead of a live clock,
   unlocated, imprecise, outside the service area).
2. :func:`bound_user_hour_of`: one user's contributions of one hour -> one bounded
   ``UserHour`` (after the registry lookup: opted-out and unknown users and late
   panes are dropped and counted).
3. :class:`SpendUserDay` (a processor keyed by user): each hour, in time order,
   fitted into what is left of the user's JST day.
4. :func:`add_to_histogram` / :func:`merge_histograms`: one hour's sums per
   (metric, cell); :func:`hour_tick` makes every scheduled hour exist.
5. :func:`release_window`: every public partition of the hour, noised, and the
   hour's ledger rows.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from core import dp_accounting as acct
from core import dp_bounding as bnd
from core.compliance import UsedTweet
from core.dp_noise import ci95_halfwidth
from core.processor import Processor
from schemas import service_area
from schemas.records import Statistic, User
from schemas.timefmt import format_rfc3339, parse_rfc3339

# Counter names (``Metrics.counter('tapfollow', name)`` in Beam).
OUTSIDE_SCHEDULE = "dp_outside_schedule_dropped"
FUTURE = "dp_future_dropped"
OPTED_OUT = "dp_opted_out_dropped"
UNKNOWN_USER = "dp_unknown_user_dropped"
LATE = "dp_late_dropped"
USED = "dp_contributions_used"
BOUNDED_PRESENCE = "dp_bounded_presence_dropped"
BOUNDED_TWEETS = "dp_bounded_tweets_dropped"
BOUNDED_TOUCHES = "dp_bounded_touches_dropped"
BOUNDED_HOURS = "dp_bounded_hours_dropped"
STATISTICS_RELEASED = "dp_statistics_released"
WINDOWS_RELEASED = "dp_windows_released"
WITHDRAWN = "dp_tweets_withdrawn_before_release"         # taken back before its hour was released
WITHDRAWN_AFTER_RELEASE = "dp_tweets_withdrawn_after_release"   # too late: its hour was out
WITHDRAWN_UNUSED = "dp_withdrawals_of_unused_tweets"      # the tweet never counted (no place, ...)
OPTED_OUT_LIVE = "dp_user_hours_opted_out_live"   # a settings change while the job ran: hours not yet released


def drop_counter(reason: str) -> str:
    """The counter of a ``dp_bounding.contribution_of`` drop reason (unlocated, imprecise, outside)."""
    return f"dp_{reason}_dropped"


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


# ---------------------------------------------------------------- 1. one event

def to_contribution(record, kind: str, h3_res: int, public: frozenset, max_accuracy_m: float,
                    schedule: Tuple[float, float], max_future_s: Optional[float] = None,
                    clock: Optional[Callable[[], float]] = None):
    """A ``Contribution``, or the name of the counter that counts why the event is dropped.

    ``schedule`` is (first_hour, last_hour): an event outside every scheduled hour
    (before, after, far future) is dropped first, so it neither opens a window nor
    uses its user's day. ``max_future_s`` (live sources only, None for batch and
    replays): an event stamped further than that ahead of ``clock()`` (the wall
    clock) is dropped. A retracted ``UsedTweet`` (``core.compliance.screen_for_statistics``)
    becomes the withdrawal of its tweet's contribution, in the tweet's hour; one whose tweet
    never counted (no place, outside the schedule) is dropped, counted.
    """
    if isinstance(record, UsedTweet):
        used = to_contribution(record.tweet, kind, h3_res, public, max_accuracy_m, schedule, max_future_s, clock)
        return WITHDRAWN_UNUSED if isinstance(used, str) else used._replace(withdrawn=True)
    if not acct.in_schedule(record.ts, *schedule):
        return OUTSIDE_SCHEDULE
    if max_future_s is not None and record.ts > clock() + max_future_s:
        return FUTURE
    result = bnd.contribution_of(record, kind, h3_res, public, max_accuracy_m)
    return drop_counter(result) if isinstance(result, str) else result


# ---------------------------------------------------------------- 2. one user-hour

def opted_out_since_launch(current) -> list:
    """Streaming with a changing registry (``core.registry.registry_over``): the counts that drop
    a bounded user-hour about to be released, given the user's record as it is now (None: no
    change since launch). "Leave the statistics" holds for every hour not yet released; the
    launch snapshot's opt-outs were dropped before bounding (:func:`bound_user_hour_of`), and an
    opt-in after launch counts from the next launch (the most private reading)."""
    return [(OPTED_OUT_LIVE, 1)] if current is not None and current.stats_opt_out else []


def bound_user_hour_of(user: Optional[User], contributions: Sequence[bnd.Contribution], late: bool,
                       bounds: bnd.HourBounds, bands: Tuple[str, ...]):
    """(the user's bounded hour or None, [(counter, amount)]) for one user's contributions of one hour.

    The registry comes first: an opted-out user is removed before any bounding,
    counting or noise. ``late``: the hour was already released, and adding these
    would need a second release, so they are only counted.
    """
    withdrawals = sum(1 for c in contributions if c.withdrawn)
    if late and withdrawals:
        # the hour is out: a released statistic is not recalled (it is noised, and the user's
        # loss for it is already in the ledger); counted, and the rest as late as before
        rest, counts = bound_user_hour_of(user, [c for c in contributions if not c.withdrawn], late, bounds, bands)
        return rest, [(WITHDRAWN_AFTER_RELEASE, withdrawals)] + counts
    contributions, withdrawn, unmatched = bnd.without_withdrawn(contributions)
    counts = [(WITHDRAWN, withdrawn), (WITHDRAWN_UNUSED, unmatched)] if withdrawals else []
    n = len(contributions)
    if not n:
        return None, counts
    if user is not None and user.stats_opt_out:
        return None, counts + [(OPTED_OUT, n)]
    if user is None:
        return None, counts + [(UNKNOWN_USER, n)]
    if late:
        return None, counts + [(LATE, n)]
    user_hour, dropped = bnd.bound_user_hour(contributions, bounds, bnd.age_band_of(user.age_band, bands))
    return user_hour, counts + [(USED, n), (BOUNDED_PRESENCE, dropped.presence), (BOUNDED_TWEETS, dropped.tweets),
                                (BOUNDED_TOUCHES, dropped.touches)]


# ---------------------------------------------------------------- 3. a user's days

class DayState(NamedTuple):
    """What a user has spent of the JST day being decided (the day named by its end)."""
    day_end: Optional[float] = None
    used: bnd.DayUse = bnd.DayUse()


class SpentHour(NamedTuple):
    """One hour fitted into its day: the kept part (None: the day had no hour left) and what was dropped."""
    kept: Optional[bnd.UserHour]
    dropped: bnd.Dropped

    def counts(self) -> List[Tuple[str, int]]:
        return [(BOUNDED_HOURS, int(self.kept is None)), (BOUNDED_PRESENCE, self.dropped.presence),
                (BOUNDED_TWEETS, self.dropped.tweets), (BOUNDED_TOUCHES, self.dropped.touches)]


class SpendUserDay(Processor):
    """Keyed by user: each ``UserHour``, in time order, within what is left of its JST day.

    Messages: ``UserHour`` (an hour to decide: one ``SpentHour`` out) or ``HourUse``
    (an earlier hour already decided elsewhere, known only by what it would take:
    Beam's streaming host sees a user's day as "this hour plus the day's earlier
    hours' uses" in one day-so-far window). The state is freed at the day's end.
    """
    name = "spend_user_day"

    def __init__(self, max_hours: int, max_cells_per_day: int):
        self.max_hours, self.max_cells_per_day = max_hours, max_cells_per_day

    @staticmethod
    def sort_key(msg):
        # an hour's own UserHour never shares a window_start with an earlier hour's HourUse
        return (msg.window_start, isinstance(msg, bnd.UserHour))

    def initial_state(self) -> DayState:
        return DayState()

    def process(self, state: DayState, msg):
        day = acct.day_end(msg.window_start)
        used = state.used if state.day_end == day else bnd.DayUse()
        if isinstance(msg, bnd.HourUse):
            return DayState(day, bnd.spend_earlier(used, msg, self.max_hours, self.max_cells_per_day)), []
        kept, used, dropped = bnd.spend_day(msg, used, self.max_hours, self.max_cells_per_day)
        return DayState(day, used), [SpentHour(kept, dropped)]

    def expire(self, state: DayState, now: float):
        return None if state.day_end is None or now >= state.day_end else state

    def gc_time(self, state: DayState) -> Optional[float]:
        return state.day_end


# ---------------------------------------------------------------- 4. one hour's sums

def add_to_histogram(histogram: Dict[Tuple[str, str], int], user_hour: bnd.UserHour,
                     families: Tuple[str, ...]) -> Dict[Tuple[str, str], int]:
    """Add one bounded user-hour to its hour's {(metric, cell): count} (in place, returned)."""
    for key, amount in bnd.increments(user_hour, families):
        histogram[key] = histogram.get(key, 0) + amount
    return histogram


def merge_histograms(histograms: Iterable[Dict[Tuple[str, str], int]]) -> Dict[Tuple[str, str], int]:
    """Partial sums of one hour -> their total (into the first one)."""
    histograms = iter(histograms)
    out = next(histograms)
    for histogram in histograms:
        for key, amount in histogram.items():
            out[key] = out.get(key, 0) + amount
    return out


def hour_tick(hour: float) -> bnd.UserHour:
    """An empty UserHour of ``hour``: it adds nothing, but makes the hour's histogram exist,
    so the hour is released whether or not anyone was there."""
    return bnd.UserHour(hour, bnd.UNKNOWN_BAND, (), (), (), None)


def hour_end_us(hour: float) -> int:
    """The last microsecond of ``hour``: where ticks and bounded hours are stamped (inside the hour)."""
    return (int(hour) + acct.HOUR_S) * 1_000_000 - 1


# ---------------------------------------------------------------- the chain on a list

def spend_user_history(user: Optional[User], contributions: Sequence[bnd.Contribution], hour_bounds: bnd.HourBounds,
                       bands: Tuple[str, ...], spender: "SpendUserDay"):
    """Steps 2-3 for one user's whole history, as a bounded input has it: each hour bounded
    (``bound_user_hour_of``), then each JST day spent in hour order (``SpendUserDay``).
    Returns (the kept UserHours, [(counter, amount)]). Nothing is late in a bounded input."""
    hours: Dict[float, List[bnd.Contribution]] = {}
    for c in contributions:
        hours.setdefault(acct.hour_start(c.ts), []).append(c)
    counted: List[Tuple[str, int]] = []
    bounded = []
    for start in sorted(hours):
        user_hour, counts = bound_user_hour_of(user, hours[start], False, hour_bounds, bands)
        counted.extend(counts)
        if user_hour is not None:
            bounded.append(user_hour)
    kept = []
    state = spender.initial_state()
    for user_hour in sorted(bounded, key=spender.sort_key):
        state, spent = spender.process(state, user_hour)
        for hour in spent:
            counted.extend(hour.counts())
            if hour.kept is not None:
                kept.append(hour.kept)
    return kept, counted


def release_contributions(contributions: Iterable[bnd.Contribution], users: Mapping[str, User],
                          params: DpParams, noise) -> Tuple[List[Statistic], List[dict], Dict[str, int]]:
    """Steps 2-5 on plain lists, as a bounded input is released: (statistics, ledger, counters).

    Every scheduled hour is released, data or not; nothing is late.
    """
    counts: Dict[str, int] = {}

    def count(pairs):
        for name, amount in pairs:
            counts[name] = counts.get(name, 0) + amount

    plan, families = params.plan(), tuple(params.plan().metrics)
    by_user: Dict[str, List[bnd.Contribution]] = {}
    for c in contributions:
        by_user.setdefault(c.user_id, []).append(c)
    hour_bounds, bands = params.hour_bounds(), params.bands()
    spender = SpendUserDay(params.max_hours_per_day, params.cells_per_day())
    histograms: Dict[float, Dict[Tuple[str, str], int]] = {}
    for user_id in sorted(by_user):
        kept, counted = spend_user_history(users.get(user_id), by_user[user_id], hour_bounds, bands, spender)
        count(counted)
        for user_hour in kept:
            add_to_histogram(histograms.setdefault(user_hour.window_start, {}), user_hour, families)
    statistics, ledger = [], []
    for start in params.scheduled_hours():
        rows, ledger_rows = release_window(params, plan, histograms.get(start, {}), start, noise)
        count([(STATISTICS_RELEASED, len(rows)), (WINDOWS_RELEASED, 1)])
        statistics.extend(rows)
        ledger.extend(ledger_rows)
    return statistics, ledger, counts

"""Privacy accounting for the marketing statistics: one (epsilon, delta) per user-day.

Pure functions, no Beam. ``plan_budget`` turns the user-day budget and the
contribution bounds into the noise of every hourly release; ``ledger_rows``
writes down what each release costs; ``worst_case_user_day`` re-derives, from the
bounds and noise alone, what one user can lose in a day, so a test can check the
plan against first principles rather than against its own arithmetic.

Why Gaussian noise with Gaussian-DP (GDP) accounting. A user-day touches many
hourly releases of every metric; basic composition of Laplace releases would
divide epsilon by all of them. Gaussian mechanisms compose exactly in GDP
(Dong, Roth & Su 2019): releases with L2 sensitivity ``Δ_i`` and noise ``σ_i``
together are ``μ``-GDP with ``μ² = Σ (Δ_i/σ_i)²``, and ``μ``-GDP is (ε, δ)-DP
for exactly ``δ(ε) = Φ(-ε/μ + μ/2) − e^ε Φ(-ε/μ − μ/2)`` (the analytic
Gaussian bound of Balle & Wang 2018, which PipelineDP and Google's library use
for one release). So the configured (ε, δ) is converted once to the largest
``μ_day`` that meets it, and ``μ_day²`` is split across metrics (the
``share_*`` parameters). No slack is lost to a zCDP conversion, and with one
metric the noise equals PipelineDP's for one Gaussian aggregation with the
same bounds.

Why a per-day partition bound. Bounding keeps, per user-day and metric, at
most ``K`` partitions (cell-hours; at most ``C`` in any one hour), each changed
by at most ``T``. Every hour of a metric gets the same noise ``σ_m``; a user
who adds ``k_h`` partitions in hour ``h`` costs ``k_h·T²/σ_m²`` of μ², and
``Σ_h k_h <= K``, so the day costs at most ``K·T²/σ_m²`` however the user's
partitions fall across hours. Hence ``σ_m = T·sqrt(K) / (μ_day·sqrt(share_m))``,
and a user whose day fits in ``K`` partitions loses nothing to bounding, while a
per-hour-only bound would have to pay for ``24·C``.

Ledger semantics. A user-day loses at most ``Σ_m share_m · μ_day² = μ_day²``,
the configured budget, over all of a day's releases. The ledger charges each
released window ``share_m / 24`` of the day's (ε, δ), so that the rows of a day
add up to at most the budget (all 24 windows released: exactly the budget);
``gdp_mu`` on the row is the release's own worst-case guarantee,
``T·sqrt(min(C, K)) / σ_m``.
"""
from __future__ import annotations

import datetime as _dt
import math
from typing import Dict, Iterable, List, Mapping, NamedTuple

from schemas.timefmt import format_rfc3339

HOUR_S = 3600
HOURS_PER_DAY = 24
# The privacy unit is the user-day of Japan Standard Time (UTC+9, no DST): the
# users are in Tokyo, so a "day" is their day, and JST midnight is 15:00 UTC, on
# an hour boundary, so every hourly window lies in exactly one JST day.
DAY_UTC_OFFSET_S = 9 * HOUR_S
MECHANISM = "gaussian"
# A smaller share would drown the metric in noise (and underflow the arithmetic).
MIN_SHARE = 1e-3
# Tolerance for float round-off when comparing spends to the budget.
_SLACK = 1e-9


class BudgetError(ValueError):
    """A configuration that would overspend or cannot be met; the text says what to change."""


def day_of(ts: float) -> str:
    """The JST calendar day (``YYYY-MM-DD``) an event time belongs to."""
    moment = _dt.datetime.fromtimestamp(math.floor(ts) + DAY_UTC_OFFSET_S, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%d")


def day_end(ts: float) -> float:
    """The end (exclusive) of the JST day holding ``ts``, as epoch seconds."""
    local = math.floor(ts) + DAY_UTC_OFFSET_S
    return float(local - local % (HOURS_PER_DAY * HOUR_S) + HOURS_PER_DAY * HOUR_S - DAY_UTC_OFFSET_S)


def hour_start(ts: float) -> float:
    """The start of the UTC-aligned hourly window holding ``ts``."""
    return float(math.floor(ts / HOUR_S) * HOUR_S)


# ---------------------------------------------------------------- the release schedule
#
# Which hours are released is public configuration, never a function of the data:
# every hour of [first_hour, last_hour] (both hour starts, inclusive), and no other.

# The longest schedule one run may release (a leap year of hours).
MAX_SCHEDULE_HOURS = 366 * HOURS_PER_DAY


def scheduled_hours(first_hour: float, last_hour: float) -> List[float]:
    """Every hour start of the schedule, in order (first_hour and last_hour are hour starts)."""
    return [float(h) for h in range(int(first_hour), int(last_hour) + 1, HOUR_S)]


def in_schedule(ts: float, first_hour: float, last_hour: float) -> bool:
    """Whether an event time falls in a scheduled hour (False for NaN)."""
    return first_hour <= ts < last_hour + HOUR_S


def schedule_of_period(start: float, end: float) -> tuple[float, float]:
    """(first_hour, last_hour) covering the period [start, end): every hour it touches."""
    if not end > start:
        raise BudgetError(f"a period must end after it starts, got [{start}, {end})")
    return hour_start(start), float(math.ceil(end / HOUR_S) * HOUR_S - HOUR_S)


# ---------------------------------------------------------------- Gaussian DP

def _phi(x: float) -> float:
    """Standard normal CDF, accurate in the far tails (erfc, not 1 - erf)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gdp_delta(mu: float, epsilon: float) -> float:
    """The smallest δ for which a μ-GDP mechanism is (ε, δ)-DP."""
    if mu <= 0:
        return 0.0
    return _phi(-epsilon / mu + mu / 2.0) - math.exp(epsilon) * _phi(-epsilon / mu - mu / 2.0)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest ε for which a μ-GDP mechanism is (ε, δ)-DP (bisection; δ(ε) decreases)."""
    if mu <= 0:
        return 0.0
    low, high = 0.0, 1.0
    while gdp_delta(mu, high) > delta:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if gdp_delta(mu, mid) > delta:
            low = mid
        else:
            high = mid
    return high


def gdp_mu(epsilon: float, delta: float) -> float:
    """The largest μ such that μ-GDP implies (ε, δ)-DP (bisection; δ(μ) increases)."""
    if not (epsilon > 0 and 0 < delta < 1):
        raise BudgetError(f"need epsilon > 0 and 0 < delta < 1, got epsilon={epsilon}, delta={delta}")
    low, high = 0.0, 1.0
    while gdp_delta(high, epsilon) < delta:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if gdp_delta(mid, epsilon) <= delta:
            low = mid
        else:
            high = mid
    return low


# ---------------------------------------------------------------- the plan

class MetricBounds(NamedTuple):
    """What one user can add to one metric in one day."""
    metric: str                  # the metric family, e.g. "footfall_by_age"
    share: float                 # this metric's part of the user-day budget (of μ²)
    partitions_per_hour: int     # C: partitions (cells, bands, flow pairs) per user-hour
    partitions_per_day: int      # K: partitions per user-day, over all hours
    per_partition: int           # T: the most a user adds to one partition
    note: str                    # how the bound is enforced, for the ledger

    @property
    def day_l2_sensitivity(self) -> float:
        return math.sqrt(self.partitions_per_day) * self.per_partition

    @property
    def hour_l2_sensitivity(self) -> float:
        return math.sqrt(min(self.partitions_per_hour, self.partitions_per_day)) * self.per_partition


class MetricPlan(NamedTuple):
    bounds: MetricBounds
    release_mu: float            # the GDP μ of one hourly release, worst case
    noise_stddev: float          # σ, the same for every hour of the metric


class BudgetPlan(NamedTuple):
    epsilon_per_user_day: float
    delta_per_user_day: float
    max_hours_per_day: int
    day_mu: float
    metrics: Dict[str, MetricPlan]


def plan_budget(epsilon: float, delta: float, max_hours_per_day: int,
                bounds: Iterable[MetricBounds]) -> BudgetPlan:
    """The noise of every hourly release; refuses any split that would overspend."""
    bounds = list(bounds)
    if not bounds:
        raise BudgetError("no metric is enabled: give at least one --dp_share_* a value > 0")
    if not 1 <= max_hours_per_day <= HOURS_PER_DAY:
        raise BudgetError(
            f"max_hours_per_day={max_hours_per_day}: a day has {HOURS_PER_DAY} hourly windows; "
            f"choose 1..{HOURS_PER_DAY}")
    names = [b.metric for b in bounds]
    if len(set(names)) != len(names):
        raise BudgetError(f"metric listed twice in {names}")
    for b in bounds:
        if not (MIN_SHARE <= b.share and math.isfinite(b.share)):
            raise BudgetError(f"share of {b.metric} is {b.share}: give it a value in [{MIN_SHARE}, 1], "
                              f"or 0 to disable it")
        if min(b.partitions_per_hour, b.partitions_per_day, b.per_partition) < 1:
            raise BudgetError(f"bounds of {b.metric} must be >= 1, got {b.partitions_per_hour} per hour, "
                              f"{b.partitions_per_day} per day, {b.per_partition} per partition")
    total = sum(b.share for b in bounds)
    if total > 1.0 + _SLACK:
        parts = " + ".join(f"{b.metric} {b.share:g}" for b in bounds)
        raise BudgetError(
            f"the metric shares add up to {total:g} > 1 ({parts}): that would spend more than "
            f"the user-day budget; lower the --dp_share_* values so they sum to at most 1")
    day_mu = gdp_mu(epsilon, delta)
    metrics = {}
    for b in bounds:
        sigma = b.day_l2_sensitivity / (day_mu * math.sqrt(b.share))
        metrics[b.metric] = MetricPlan(b, b.hour_l2_sensitivity / sigma, sigma)
    plan = BudgetPlan(epsilon, delta, max_hours_per_day, day_mu, metrics)
    spent_eps, spent_delta = worst_case_user_day(plan)
    if spent_delta > delta * (1 + 1e-6) or spent_eps > epsilon * (1 + 1e-6):
        raise BudgetError(f"plan would spend ({spent_eps}, {spent_delta}) > ({epsilon}, {delta})")
    return plan


def worst_case_user_day(plan: BudgetPlan) -> tuple[float, float]:
    """(ε at the budget's δ, δ at the budget's ε) of the most a user can lose in a day.

    Derived only from the bounds and the noise: a user adds to at most K
    partitions of a metric per day (at most min(C, K) in any of at most
    ``max_hours_per_day`` hours), at most T to each, so the day is μ-GDP with
    μ² = Σ_m T²·min(K, H·C) / σ_m².
    """
    mu2 = 0.0
    for m in plan.metrics.values():
        b = m.bounds
        partitions = min(b.partitions_per_day, plan.max_hours_per_day * b.partitions_per_hour)
        mu2 += partitions * b.per_partition ** 2 / m.noise_stddev ** 2
    mu = math.sqrt(mu2)
    return (gdp_epsilon(mu, plan.delta_per_user_day), gdp_delta(mu, plan.epsilon_per_user_day))


# ---------------------------------------------------------------- the ledger

def ledger_row(plan: BudgetPlan, metric: str, window_start: float, partitions: int) -> dict:
    """The ledger entry of one hourly release of one metric (JSON-serialisable)."""
    m = plan.metrics[metric]
    charge = m.bounds.share / HOURS_PER_DAY
    return {
        "date": day_of(window_start),
        "metric": metric,
        "window_start": format_rfc3339(window_start),
        "window_end": format_rfc3339(window_start + HOUR_S),
        "epsilon": plan.epsilon_per_user_day * charge,
        "delta": plan.delta_per_user_day * charge,
        "mechanism": MECHANISM,
        "noise_scale": m.noise_stddev,
        "l2_sensitivity": m.bounds.hour_l2_sensitivity,
        "l2_sensitivity_per_user_day": m.bounds.day_l2_sensitivity,
        "gdp_mu": m.release_mu,
        "bounds": {
            "max_partitions_per_user_hour": m.bounds.partitions_per_hour,
            "max_partitions_per_user_day": m.bounds.partitions_per_day,
            "max_per_partition": m.bounds.per_partition,
            "max_hours_per_day": plan.max_hours_per_day,
            "enforced_by": m.bounds.note,
        },
        "partitions_released": partitions,
        "privacy_unit": "user-day (JST)",
    }


class DaySpend(NamedTuple):
    date: str
    epsilon: float
    delta: float
    releases: int


def spend_per_day(rows: Iterable[Mapping]) -> Dict[str, DaySpend]:
    """Sum ledger rows per JST day; duplicate (metric, window) rows are an error (double spend)."""
    seen = set()
    totals: Dict[str, List[float]] = {}
    for row in rows:
        key = (row["metric"], row["window_start"])
        if key in seen:
            raise BudgetError(f"{row['metric']} for window {row['window_start']} was released twice")
        seen.add(key)
        acc = totals.setdefault(row["date"], [0.0, 0.0, 0])
        acc[0] += row["epsilon"]
        acc[1] += row["delta"]
        acc[2] += 1
    return {d: DaySpend(d, e, dl, int(n)) for d, (e, dl, n) in totals.items()}


def check_ledger(rows: Iterable[Mapping], epsilon: float, delta: float) -> Dict[str, DaySpend]:
    """Raise ``BudgetError`` if any day of the ledger spends more than (ε, δ)."""
    spends = spend_per_day(rows)
    for spend in spends.values():
        if spend.epsilon > epsilon * (1 + _SLACK) or spend.delta > delta * (1 + _SLACK):
            raise BudgetError(
                f"{spend.date}: ledger spends epsilon {spend.epsilon:g}, delta {spend.delta:g} "
                f"over a budget of ({epsilon:g}, {delta:g})")
    return spends

"""Contribution bounding for the marketing statistics: what one user may add, and which.

Pure functions, no Beam. Every input record that places a user somewhere
becomes a ``Contribution`` (user, time, H3 cell, kind); one user's
contributions to one hourly window become one ``UserHour`` that already obeys
the hour's bounds and no longer carries the user id; ``spend_day`` then fits
each hour, in time order, into what is left of the user's JST day: at most
``max_hours_per_day`` hours and ``max_cells_per_day`` partitions per metric.

Which contributions are kept depends only on that user's own data, never on
anyone else's (that is what lets the bounds define the sensitivity): the
*first in time* — the first ``max_cells_per_hour`` distinct cells of the hour,
the first ``max_per_cell`` tweets or touches in each kept cell, the first
``max_hours_per_day`` hours of the day and, across the day, the first
``max_cells_per_day`` cell-hours of each metric. Ties in time break on the
cell id, so the choice is deterministic and the same in batch and streaming.

Metrics and their bounds (C = max_cells_per_hour, K = max_cells_per_day, both
per metric; the L2 sensitivity is of all of one user-day's releases of the
metric, which is what the accountant charges):

==================  =====================================================  ======================
metric family       partitions (one row each, every hour)                  L2 sensitivity per day
==================  =====================================================  ======================
footfall            every public cell: distinct users present              sqrt(K)
footfall_by_age     every public cell x age band: distinct users present   sqrt(K)
tweets              every public cell: precisely located tweets posted     T_tweets * sqrt(K)
nfc_touches         every public cell: NFC touch reports                   T_touch * sqrt(K)
flows               every ordered pair of coarse public cells: users       sqrt(max_hours_per_day)
                    whose first and last position of the hour are there
==================  =====================================================  ======================

A user is one age band, so the age histogram has the footfall's sensitivity.
Presence (footfall) counts pings, NFC touches and precisely located tweets
alike: each says "this user was here then". The defaults (C = 3, K = 36,
T = 2) come from the generated world: with pings no less precise than 250 m,
a user-hour touches one res-8 cell 79 % of the time and two 16 %, so about 30
cell-hours make a whole day; K = 36 keeps nearly every day whole while the
noise grows only with sqrt(K).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import h3

from core.dp_accounting import day_of, hour_start

PING, TWEET, TOUCH = "ping", "tweet", "touch"
UNKNOWN_BAND = "unknown"

FOOTFALL = "footfall"
FOOTFALL_BY_AGE = "footfall_by_age"
TWEETS = "tweets"
NFC_TOUCHES = "nfc_touches"
FLOWS = "flows"
METRIC_FAMILIES = (FOOTFALL, FOOTFALL_BY_AGE, TWEETS, NFC_TOUCHES, FLOWS)


class Contribution(NamedTuple):
    """One piece of evidence that a user was in a public cell."""
    user_id: str
    ts: float
    cell: str                    # H3 cell at the release resolution, always a public cell
    kind: str                    # ping | tweet | touch
    ref: str = ""                # a tweet's id (what a compliance message can take back)
    withdrawn: bool = False      # True: takes back the contribution of ``ref`` (not one itself)


def without_withdrawn(contributions: Sequence[Contribution]) -> Tuple[List[Contribution], int, int]:
    """(the contributions no withdrawal names, how many were withdrawn, how many withdrawals
    named none of them). A tweet a compliance message took back after it was used comes
    again as its withdrawal, to the same user-hour: its location no longer counts."""
    gone = {c.ref for c in contributions if c.withdrawn}
    if not gone:
        return list(contributions), 0, 0
    kept = [c for c in contributions if not c.withdrawn and c.ref not in gone]
    used = {c.ref for c in contributions if not c.withdrawn}
    withdrawn = sum(1 for c in contributions if not c.withdrawn and c.ref in gone)
    return kept, withdrawn, len(gone - used)


class UserHour(NamedTuple):
    """One user's bounded contributions to one hourly window, without the user id."""
    window_start: float
    age_band: str
    presence_cells: Tuple[str, ...]           # <= C cells, first in time
    tweet_counts: Tuple[Tuple[str, int], ...]  # <= C cells, <= T_tweets each
    touch_counts: Tuple[Tuple[str, int], ...]  # <= C cells, <= T_touch each
    flow: Optional[Tuple[str, str]]           # (coarse cell first seen, coarse cell last seen)


class HourBounds(NamedTuple):
    max_cells_per_hour: int
    max_tweets_per_cell_hour: int
    max_touches_per_cell_hour: int
    flow_res: Optional[int]                   # None: flows not computed


class Dropped(NamedTuple):
    """How many contributions bounding left out, by metric (for the counters)."""
    presence: int
    tweets: int
    touches: int


# Why a record places nobody, as the counter names it (see ``contribution_of``).
UNLOCATED, IMPRECISE, OUTSIDE = "unlocated", "imprecise", "outside_area"


def contribution_of(record, kind: str, h3_res: int, public: frozenset,
                    max_accuracy_m: float) -> "Contribution | str":
    """A ping / touch report / tweet -> its Contribution, or why it places nobody.

    A tweet with no location, or only a place's centre (``coarse``), is not a
    presence; nor is a ping whose stated accuracy radius is larger than
    ``max_accuracy_m`` (a cell-tower fix ~1 km wide would scatter one person
    over many ~0.7 km² cells); nor a position outside the public cells.
    """
    if record.lat is None or record.lng is None or getattr(record, "coarse", False):
        return UNLOCATED
    accuracy = getattr(record, "accuracy_m", None)
    if accuracy is not None and accuracy > max_accuracy_m:
        return IMPRECISE
    cell = h3.latlng_to_cell(record.lat, record.lng, h3_res)
    if cell not in public:
        return OUTSIDE
    if kind == TWEET:
        return Contribution(record.author_id, record.ts, cell, kind, record.tweet_id)
    return Contribution(record.user_id, record.ts, cell, kind)


def age_band_of(raw: Optional[str], bands: Sequence[str]) -> str:
    """The public band label for a user's ``age_band`` (anything unlisted is "unknown")."""
    return raw if raw in bands else UNKNOWN_BAND


def _first_cells(ordered: Sequence[Contribution], limit: int) -> List[str]:
    cells: List[str] = []
    for c in ordered:
        if c.cell not in cells:
            if len(cells) == limit:
                break
            cells.append(c.cell)
    return cells


def _capped_counts(ordered: Sequence[Contribution], max_cells: int, per_cell: int):
    keep = _first_cells(ordered, max_cells)
    counts = {cell: 0 for cell in keep}
    for c in ordered:
        if c.cell in counts and counts[c.cell] < per_cell:
            counts[c.cell] += 1
    kept = tuple((cell, counts[cell]) for cell in keep)
    return kept, len(ordered) - sum(counts.values())


def bound_user_hour(contributions: Iterable[Contribution], bounds: HourBounds,
                    age_band: str) -> Tuple[UserHour, Dropped]:
    """One user's contributions to one hour -> the bounded ``UserHour`` and what was dropped.

    All contributions must be of one user and one hourly window; ``age_band`` is
    that user's public band label (``age_band_of``).
    """
    ordered = sorted(contributions, key=lambda c: (c.ts, c.cell, c.kind))
    if not ordered:
        raise ValueError("bound_user_hour needs at least one contribution")
    first = ordered[0]
    presence = _first_cells(ordered, bounds.max_cells_per_hour)
    tweets = [c for c in ordered if c.kind == TWEET]
    touches = [c for c in ordered if c.kind == TOUCH]
    tweet_counts, tweets_dropped = _capped_counts(
        tweets, bounds.max_cells_per_hour, bounds.max_tweets_per_cell_hour)
    touch_counts, touches_dropped = _capped_counts(
        touches, bounds.max_cells_per_hour, bounds.max_touches_per_cell_hour)
    flow = None
    if bounds.flow_res is not None:
        flow = (h3.cell_to_parent(first.cell, bounds.flow_res),
                h3.cell_to_parent(ordered[-1].cell, bounds.flow_res))
    presence_dropped = sum(1 for c in ordered if c.cell not in presence)
    user_hour = UserHour(
        window_start=hour_start(first.ts),
        age_band=age_band,
        presence_cells=tuple(presence),
        tweet_counts=tweet_counts,
        touch_counts=touch_counts,
        flow=flow,
    )
    return user_hour, Dropped(presence_dropped, tweets_dropped, touches_dropped)


class DayUse(NamedTuple):
    """What a user has spent of one JST day's bounds so far (streaming state)."""
    hours: int = 0
    presence: int = 0
    tweets: int = 0
    touches: int = 0


class HourUse(NamedTuple):
    """What an hour would take from its day: enough for a later hour's decision."""
    window_start: float
    presence: int
    tweets: int
    touches: int


def hour_use(user_hour: UserHour) -> HourUse:
    return HourUse(user_hour.window_start, len(user_hour.presence_cells),
                   len(user_hour.tweet_counts), len(user_hour.touch_counts))


def spend_earlier(used: DayUse, earlier: HourUse, max_hours: int, max_cells_per_day: int) -> DayUse:
    """``spend_day``'s new use for an hour known only by its ``HourUse`` (same arithmetic)."""
    if used.hours >= max_hours:
        return used
    def spent(so_far, wanted):
        return so_far + min(wanted, max(0, max_cells_per_day - so_far))
    return DayUse(used.hours + 1, spent(used.presence, earlier.presence), spent(used.tweets, earlier.tweets),
                  spent(used.touches, earlier.touches))


def spend_day(user_hour: UserHour, used: DayUse, max_hours: int,
              max_cells_per_day: int) -> Tuple[Optional[UserHour], DayUse, Dropped]:
    """Fit one user-hour into what is left of the user's day; hours must come in time order.

    Returns the kept part (None when the day has no hour left), the new use and
    what was dropped (in contributions' units: cells for presence, counts for
    tweets and touches; a dropped hour drops all of them).
    """
    if used.hours >= max_hours:
        return None, used, Dropped(len(user_hour.presence_cells),
                                   sum(n for _, n in user_hour.tweet_counts),
                                   sum(n for _, n in user_hour.touch_counts))
    presence = user_hour.presence_cells[:max(0, max_cells_per_day - used.presence)]
    tweets = user_hour.tweet_counts[:max(0, max_cells_per_day - used.tweets)]
    touches = user_hour.touch_counts[:max(0, max_cells_per_day - used.touches)]
    kept = user_hour._replace(presence_cells=presence, tweet_counts=tweets, touch_counts=touches)
    new_use = DayUse(used.hours + 1, used.presence + len(presence), used.tweets + len(tweets),
                     used.touches + len(touches))
    dropped = Dropped(len(user_hour.presence_cells) - len(presence),
                      sum(n for _, n in user_hour.tweet_counts[len(tweets):]),
                      sum(n for _, n in user_hour.touch_counts[len(touches):]))
    return kept, new_use, dropped


def spend_days(user_hours: Iterable[UserHour], max_hours: int,
               max_cells_per_day: int) -> Tuple[List[UserHour], Dropped]:
    """Batch form of ``spend_day`` for one user: every hour, in time order, per JST day."""
    used: Dict[str, DayUse] = {}
    kept, lost = [], [0, 0, 0]
    for user_hour in sorted(user_hours, key=lambda h: h.window_start):
        day = day_of(user_hour.window_start)
        part, used[day], dropped = spend_day(user_hour, used.get(day, DayUse()), max_hours,
                                             max_cells_per_day)
        if part is not None:
            kept.append(part)
        lost = [a + b for a, b in zip(lost, dropped)]
    return kept, Dropped(*lost)


def age_metric(band: str) -> str:
    return f"footfall_age_{band}"


def flow_metric(destination: str) -> str:
    return f"flow_to_{destination}"


def increments(user_hour: UserHour, families: Iterable[str]) -> Iterable[Tuple[Tuple[str, str], int]]:
    """What one bounded user-hour adds to each (metric, cell) of the enabled families."""
    families = set(families)
    if FOOTFALL in families:
        for cell in user_hour.presence_cells:
            yield (FOOTFALL, cell), 1
    if FOOTFALL_BY_AGE in families:
        for cell in user_hour.presence_cells:
            yield (age_metric(user_hour.age_band), cell), 1
    if TWEETS in families:
        for cell, count in user_hour.tweet_counts:
            yield (TWEETS, cell), count
    if NFC_TOUCHES in families:
        for cell, count in user_hour.touch_counts:
            yield (NFC_TOUCHES, cell), count
    if FLOWS in families and user_hour.flow is not None:
        origin, destination = user_hour.flow
        yield (flow_metric(destination), origin), 1


def coarse_cells(public: Sequence[str], flow_res: int) -> Tuple[str, ...]:
    """The public coarse cells: parents of the public cells (public, so releasable)."""
    return tuple(sorted({h3.cell_to_parent(c, flow_res) for c in public}))


def public_partitions(family: str, public: Sequence[str], bands: Sequence[str],
                      flow_res: Optional[int]) -> List[Tuple[str, str]]:
    """Every (metric, cell) row one hourly release of ``family`` publishes, data or not."""
    if family == FOOTFALL or family == TWEETS or family == NFC_TOUCHES:
        return [(family, cell) for cell in public]
    if family == FOOTFALL_BY_AGE:
        return [(age_metric(b), cell) for b in (*bands, UNKNOWN_BAND) for cell in public]
    if family == FLOWS:
        coarse = coarse_cells(public, flow_res)
        return [(flow_metric(dst), src) for src in coarse for dst in coarse]
    raise ValueError(f"unknown metric family {family!r}; expected one of {METRIC_FAMILIES}")

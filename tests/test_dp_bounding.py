"""Contribution bounding: exactly the excess is dropped, chosen first in time."""
import h3
import pytest
from hypothesis import given, settings, strategies as st

from schemas.service_area import public_cells
from schemas.timefmt import parse_rfc3339
from core import dp_bounding as bnd

CELLS = public_cells(8)
A, B, C, D = CELLS[10], CELLS[20], CELLS[30], CELLS[40]
T = parse_rfc3339("2026-11-25T03:00:00Z")


def contribution(ts_offset, cell, kind=bnd.PING, user="u1"):
    return bnd.Contribution(user, T + ts_offset, cell, kind)


def test_keeps_the_first_cells_of_the_hour_and_drops_exactly_the_rest():
    bounds = bnd.HourBounds(max_cells_per_hour=2, max_tweets_per_cell_hour=2,
                            max_touches_per_cell_hour=1, flow_res=None)
    data = [
        contribution(50, C),                  # third distinct cell: over the limit
        contribution(10, A),
        contribution(20, B, bnd.TWEET),
        contribution(30, A, bnd.TWEET),
        contribution(31, A, bnd.TWEET),
        contribution(32, A, bnd.TWEET),       # third tweet in A: over T=2
        contribution(40, D, bnd.TWEET),       # third tweet cell: over C=2
        contribution(45, B, bnd.TOUCH),
        contribution(46, B, bnd.TOUCH),       # second touch in B: over T=1
    ]
    user_hour, dropped = bnd.bound_user_hour(data, bounds, "20-29")
    assert user_hour == bnd.UserHour(
        window_start=T, age_band="20-29",
        presence_cells=(A, B),
        tweet_counts=((B, 1), (A, 2)),
        touch_counts=((B, 1),),
        flow=None,
    )
    # presence: C (one ping) and D (one tweet) are outside the two kept cells
    assert dropped == bnd.Dropped(presence=2, tweets=2, touches=1)


def test_ties_in_time_break_on_the_cell_so_the_choice_is_deterministic():
    bounds = bnd.HourBounds(1, 1, 1, None)
    forward, _ = bnd.bound_user_hour([contribution(5, B), contribution(5, A)], bounds, "20-29")
    backward, _ = bnd.bound_user_hour([contribution(5, A), contribution(5, B)], bounds, "20-29")
    assert forward.presence_cells == backward.presence_cells == (min(A, B),)


def test_flow_is_first_and_last_coarse_cell_of_the_hour():
    far = CELLS[-1]
    user_hour, _ = bnd.bound_user_hour(
        [contribution(900, far), contribution(10, A), contribution(500, B)], bnd.HourBounds(1, 1, 1, 6),
        "20-29")
    assert user_hour.flow == (h3.cell_to_parent(A, 6), h3.cell_to_parent(far, 6))


def _hour(start, presence, tweets=(), touches=()):
    return bnd.UserHour(start, "20-29", tuple(presence), tuple(tweets), tuple(touches), None)


def test_a_day_keeps_its_first_hours_and_first_cells_and_drops_exactly_the_rest():
    day = parse_rfc3339("2026-11-25T15:00:00Z")  # JST midnight of 11-26
    hours = [
        _hour(day + 7200, [C], [(C, 2)]),             # third hour of 11-26: over max_hours=2
        _hour(day, [A, B], [(A, 1)], [(B, 1)]),
        _hour(day + 3600, [C, D], [(C, 2), (D, 1)]),  # presence over K=3: D dropped; tweet cells fit
        _hour(day - 3600, [A, B, C, D]),              # 11-25: its own day; D over K=3
    ]
    kept, dropped = bnd.spend_days(hours, max_hours=2, max_cells_per_day=3)
    assert kept == [
        _hour(day - 3600, [A, B, C]),
        _hour(day, [A, B], [(A, 1)], [(B, 1)]),
        _hour(day + 3600, [C], [(C, 2), (D, 1)]),
    ]
    # presence: D (11-25), D (hour 2), C (hour 3); tweets: the 2 of the third hour
    assert dropped == bnd.Dropped(presence=3, tweets=2, touches=0)


def test_streaming_state_continues_the_day_where_it_stopped():
    used = bnd.DayUse(hours=1, presence=2, tweets=0, touches=0)
    kept, used, dropped = bnd.spend_day(_hour(T, [A, B, C]), used, max_hours=24, max_cells_per_day=3)
    assert kept.presence_cells == (A,) and dropped.presence == 2
    assert used == bnd.DayUse(hours=2, presence=3, tweets=0, touches=0)


def test_increments_per_metric_family():
    user_hour = bnd.UserHour(T, "30-39", (A, B), ((A, 2),), ((B, 1),), ("c1", "c2"))
    got = sorted(bnd.increments(user_hour, bnd.METRIC_FAMILIES))
    assert got == sorted([
        (("footfall", A), 1), (("footfall", B), 1),
        (("footfall_age_30-39", A), 1), (("footfall_age_30-39", B), 1),
        (("tweets", A), 2), (("nfc_touches", B), 1), (("flow_to_c2", "c1"), 1),
    ])
    assert sorted(bnd.increments(user_hour, ["tweets"])) == [(("tweets", A), 2)]


def test_age_bands_outside_the_public_list_are_unknown():
    bands = ("20-29", "30-39")
    assert bnd.age_band_of("20-29", bands) == "20-29"
    assert bnd.age_band_of("25", bands) == bnd.UNKNOWN_BAND
    assert bnd.age_band_of(None, bands) == bnd.UNKNOWN_BAND


def test_public_partitions_enumerate_every_public_cell():
    bands = ("20-29", "30-39")
    assert len(bnd.public_partitions("footfall", CELLS, bands, None)) == 1030
    assert len(bnd.public_partitions("footfall_by_age", CELLS, bands, None)) == 3 * 1030
    coarse = bnd.coarse_cells(CELLS, 6)
    assert len(coarse) == 31
    assert len(bnd.public_partitions("flows", CELLS, bands, 6)) == 31 * 31
    with pytest.raises(ValueError, match="unknown metric family"):
        bnd.public_partitions("dwell", CELLS, bands, None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3599), st.sampled_from([A, B, C, D]),
                          st.sampled_from([bnd.PING, bnd.TWEET, bnd.TOUCH])), min_size=1, max_size=30),
       st.integers(1, 4), st.integers(1, 3))
def test_bounds_always_hold_and_everything_is_kept_or_counted(raw, max_cells, per_cell):
    data = [contribution(offset, cell, kind) for offset, cell, kind in raw]
    user_hour, dropped = bnd.bound_user_hour(data, bnd.HourBounds(max_cells, per_cell, per_cell, None), "20-29")
    assert len(user_hour.presence_cells) <= max_cells
    assert len(set(user_hour.presence_cells)) == len(user_hour.presence_cells)
    for counts, kind, lost in ((user_hour.tweet_counts, bnd.TWEET, dropped.tweets),
                               (user_hour.touch_counts, bnd.TOUCH, dropped.touches)):
        assert len(counts) <= max_cells and all(1 <= n <= per_cell for _, n in counts)
        assert sum(n for _, n in counts) + lost == sum(1 for c in data if c.kind == kind)
    assert dropped.presence == sum(1 for c in data if c.cell not in user_hour.presence_cells)
    # first in time: every kept cell was seen no later than any dropped one
    first_seen = {}
    for c in sorted(data, key=lambda c: (c.ts, c.cell)):
        first_seen.setdefault(c.cell, (c.ts, c.cell))
    kept = [first_seen[c] for c in user_hour.presence_cells]
    lost = [first_seen[c] for c in first_seen if c not in user_hour.presence_cells]
    assert not lost or max(kept) < min(lost)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 47), st.lists(st.sampled_from([A, B, C, D]), min_size=1, max_size=4,
                                                      unique=True)),
                min_size=1, max_size=40, unique_by=lambda t: t[0]),
       st.integers(1, 24), st.integers(1, 30))
def test_a_day_never_exceeds_its_hours_or_cells(raw, max_hours, max_cells_per_day):
    day = parse_rfc3339("2026-11-25T15:00:00Z")
    hours = [_hour(day + 3600 * h, cells) for h, cells in raw]
    kept, dropped = bnd.spend_days(hours, max_hours, max_cells_per_day)
    per_day = {}
    for h in kept:
        hours_used, cells_used = per_day.get(bnd.day_of(h.window_start), (0, 0))
        per_day[bnd.day_of(h.window_start)] = (hours_used + 1, cells_used + len(h.presence_cells))
    assert all(n <= max_hours and c <= max_cells_per_day for n, c in per_day.values())
    assert sum(len(h.presence_cells) for h in kept) + dropped.presence == sum(len(c) for _, c in raw)
    # first in time: within a day, a kept hour never follows a dropped one
    kept_starts = {h.window_start for h in kept}
    for d in {bnd.day_of(h.window_start) for h in hours}:
        flags = [h.window_start in kept_starts for h in sorted(hours, key=lambda h: h.window_start)
                 if bnd.day_of(h.window_start) == d]
        assert flags == sorted(flags, reverse=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([A, B, C, D]), min_size=1, max_size=4, unique=True),
       st.integers(0, 3), st.integers(0, 5), st.integers(0, 5), st.integers(1, 4), st.integers(1, 6))
def test_an_earlier_hour_known_by_its_use_spends_what_the_whole_hour_spends(cells, hours, presence, tweets,
                                                                           max_hours, max_cells):
    # the day-so-far windows carry earlier hours as HourUse only: the arithmetic must agree
    user_hour = _hour(T, cells, [(c, 1) for c in cells[:2]])
    used = bnd.DayUse(hours, presence, tweets, 0)
    _, expected, _ = bnd.spend_day(user_hour, used, max_hours, max_cells)
    assert bnd.spend_earlier(used, bnd.hour_use(user_hour), max_hours, max_cells) == expected

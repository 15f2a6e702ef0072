"""ReleaseDpStatistics end to end on small hand-made worlds (batch and TestStream)."""
import dataclasses
import json
import typing
import uuid

import apache_beam as beam
import h3
import pytest
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.metrics.metricbase import MetricName
from apache_beam.runners.worker import statesampler
from apache_beam.utils import counters as beam_counters
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

from schemas.records import ComplianceEvent, Ping, Statistic, TapReport, Tweet, User, arrow_schema
from core.alerts import AlertParams
from schemas.service_area import public_cells
from schemas.timefmt import format_rfc3339, parse_rfc3339
from core import dp_accounting as acct
from core.dp_noise import NoNoiseForTests, SecureGaussianNoise
from core import dp_bounding as bnd
from core.dp_stats import DpParams, release_window
from transforms.dp_stats import BoundUserHourFn, ReleaseDpStatistics, ToContributionsFn

T0 = parse_rfc3339("2026-11-25T01:00:00Z")  # 10:00 JST
# One cell per user-hour, so that the hand-made world shows the bound at work.
ONE_CELL = dict(max_cells_per_hour=1, max_cells_per_day=24)
CELLS = public_cells(8)
A, B = CELLS[100], CELLS[700]
OUTSIDE = (35.95, 139.30)  # Saitama hills, not in the 23 wards
ZERO = NoNoiseForTests(for_tests_only=True)


def hours(first, last):
    """A release schedule: hours T0+first .. T0+last (both included), as DpParams fields."""
    return dict(first_hour=format_rfc3339(T0 + first * 3600), last_hour=format_rfc3339(T0 + last * 3600))


_CAPTURED = {}


def at(cell, jitter=0.0):
    lat, lng = h3.cell_to_latlng(cell)
    return lat + jitter, lng


def ping(user, offset, cell, jitter=0.0):
    lat, lng = at(cell, jitter)
    return Ping(user, T0 + offset, lat, lng, 5.0, "gps")


def tweet(user, offset, cell, coarse=False, tweet_id="1"):
    lat, lng = at(cell)
    return Tweet(tweet_id, user, T0 + offset, "hi", "ja", [], lat, lng, coarse, None, None)


def tap(user, offset, cell):
    lat, lng = at(cell)
    return TapReport(f"tap-{user}-{offset}", user, "peer", "00" * 16, T0 + offset, lat, lng, "p", "q")


USERS = [
    User("1001", "k", False, False, "20-29"),
    User("1002", "k", True, False, "30-39"),
    User("1003", "k", False, False, None),
    User("9999", "k", False, True, "20-29"),   # opted out of statistics
]
WORLD = {
    "pings": [
        ping("1001", 10, A), ping("1001", 20, A, 1e-5), ping("1001", 30, B),   # B over C=1
        ping("1002", 40, A), ping("1003", 50, B),
        ping("1001", 3600 + 5, B),                                          # second hour
        ping("7777", 60, A),                                                # not in the registry
        Ping("1003", T0 + 70, OUTSIDE[0], OUTSIDE[1], None, None),          # outside the area
    ],
    "tweets": [
        tweet("1002", 45, A, tweet_id="t1"), tweet("1002", 46, A, tweet_id="t2"),
        tweet("1002", 47, A, tweet_id="t3"),                                # over T=2
        tweet("1003", 55, A, coarse=True, tweet_id="t4"),                   # only a place
    ],
    "taps": [tap("1003", 52, B)],
}
OPTED_OUT = {
    "pings": [ping("9999", s, c) for s in (1, 2, 3601) for c in (A, B)],
    "tweets": [tweet("9999", 3, A, tweet_id="t9")],
    "taps": [tap("9999", 4, A)],
}


def _typed(p, name, records, record_type):
    return (p | f"Create{name}" >> beam.Create(records).with_output_types(record_type)
            | f"Stamp{name}" >> beam.Map(lambda r: TimestampedValue(r, r.ts)).with_output_types(record_type))


def _append(element, run_id, name):
    # module-level, so the pickled step refers to this module's _CAPTURED (runners run in-process)
    _CAPTURED[run_id][name].append(element)


def _capture(run_id, outputs):
    _CAPTURED[run_id] = {"statistics": [], "ledger": []}
    for name, pcoll in outputs.items():
        pcoll | f"Capture{name}" >> beam.Map(_append, run_id, name)


def _counters(result):
    totals = {}  # one result per step: the same counter in three steps adds up
    for r in result.metrics().query(MetricsFilter().with_namespace("tapfollow"))["counters"]:
        totals[r.key.metric.name] = totals.get(r.key.metric.name, 0) + r.committed
    return totals


def run_batch(world, params, noise=ZERO, users=USERS):
    """``world`` may hold ``deletes`` (compliance messages): then the tweets pass the gates."""
    # The runner DirectRunner falls back to (it would first try to download Prism).
    p = TestPipeline(runner="FnApiRunner")
    inputs = {"pings": _typed(p, "Pings", world["pings"], Ping),
              "tweets": _typed(p, "Tweets", world["tweets"], Tweet),
              "taps": _typed(p, "Taps", world["taps"], TapReport),
              "users": p | "Users" >> beam.Create(users)}
    if "deletes" in world:
        inputs["deletes"] = _typed(p, "Deletes", world["deletes"], ComplianceEvent)
    run_id = uuid.uuid4().hex
    _capture(run_id, inputs | ReleaseDpStatistics(params, noise=noise,
                                                  compliance=AlertParams() if "deletes" in world else None))
    result = p.run()
    result.wait_until_finish()
    return _CAPTURED.pop(run_id), _counters(result)


def run_stream(events, params, noise=ZERO, compliance=False):
    """events: list of ('pings'|'tweets'|'taps'|'deletes', record) or ('watermark', t) in arrival
    order; ``compliance``: the tweets pass the gates of the 'deletes' (compliance messages)."""
    p = TestPipeline(runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True))
    # One untagged TestStream split by type: the direct runner loses lateness when a
    # tagged TestStream's outputs are flattened again.
    stream = TestStream().advance_watermark_to(T0 - 3600)
    for kind, item in events:
        if kind == "watermark":
            # the processing-time step gives the runner a round to fire the closed windows
            # before the next element arrives, as a real stream's gap would
            stream = stream.advance_watermark_to(item).advance_processing_time(1)
        else:
            stream = stream.add_elements([TimestampedValue(item, item.ts)])
    events_pc = p | "Stream" >> stream.advance_watermark_to_infinity()
    inputs = {name: events_pc | f"Only{name}" >> beam.Filter(
                  lambda r, t=record_type: isinstance(r, t)).with_output_types(record_type)
              for name, record_type in (("pings", Ping), ("tweets", Tweet), ("taps", TapReport))
              + ((("deletes", ComplianceEvent),) if compliance else ())}
    inputs["users"] = p | "Users" >> beam.Create(USERS)
    run_id = uuid.uuid4().hex
    _capture(run_id, inputs | ReleaseDpStatistics(params, noise=noise, compliance=AlertParams() if compliance else None))
    result = p.run()
    result.wait_until_finish()
    return _CAPTURED.pop(run_id), _counters(result)


def nonzero(statistics):
    return {(s.window_start, s.metric, s.h3_cell): s.value for s in statistics if s.value != 0}


def test_batch_release_counts_exactly_what_the_bounds_allow():
    params = DpParams(**ONE_CELL, **hours(0, 1))
    out, counters = run_batch(WORLD, params)
    assert nonzero(out["statistics"]) == {
        (T0, "footfall", A): 2.0,                  # 1001 (B dropped: C=1, A first), 1002
        (T0, "footfall", B): 1.0,                  # 1003 (ping and touch: one person)
        (T0, "footfall_age_20-29", A): 1.0,
        (T0, "footfall_age_30-39", A): 1.0,
        (T0, "footfall_age_unknown", B): 1.0,
        (T0, "tweets", A): 2.0,                    # third tweet over T=2
        (T0, "nfc_touches", B): 1.0,
        (T0 + 3600, "footfall", B): 1.0,
        (T0 + 3600, "footfall_age_20-29", B): 1.0,
    }
    # every public cell of every metric, both hours, data or not
    per_hour = 1030 * (1 + 8 + 1 + 1)
    assert len(out["statistics"]) == 2 * per_hour
    assert {(s.window_start, s.metric, s.h3_cell) for s in out["statistics"]} == {
        (t, m, c) for t in (T0, T0 + 3600)
        for m in ["footfall", "tweets", "nfc_touches"] + [
            f"footfall_age_{b}" for b in DpParams().bands() + ("unknown",)]
        for c in CELLS}
    assert counters.get("dp_opted_out_dropped", 0) == 0
    assert counters["dp_unknown_user_dropped"] == 1
    assert counters["dp_outside_area_dropped"] == 1
    assert counters["dp_unlocated_dropped"] == 1
    assert counters["dp_bounded_presence_dropped"] == 1
    assert counters["dp_bounded_tweets_dropped"] == 1
    assert counters["dp_statistics_released"] == 2 * per_hour
    ledger = out["ledger"]
    assert sorted((r["window_start"], r["metric"]) for r in ledger) == sorted(
        (acct.ledger_row(params.plan(), m, t, 0)["window_start"], m)
        for t in (T0, T0 + 3600) for m in ("footfall", "footfall_by_age", "tweets", "nfc_touches"))
    acct.check_ledger(ledger, 1.0, 1e-6)
    assert json.loads(json.dumps(ledger)) == ledger


def test_batch_spends_each_jst_day_of_a_user_in_time_order():
    """max_hours_per_day=2: of 1001's three hours on one JST day the last is dropped; the next
    JST day (from 15:00 UTC) starts afresh. Hours arrive out of order."""
    day2 = acct.day_end(T0) - T0 + 600                       # 10 min into the next JST day
    params = DpParams(max_hours_per_day=2, **STREAM_PARAMS, **hours(0, day2 // 3600))
    world = {"pings": [ping("1001", 2 * 3600 + 5, A), ping("1001", day2, B), ping("1001", 5, A),
                       ping("1001", 3600 + 5, B), ping("1002", 2 * 3600 + 9, B)],
             "tweets": [], "taps": []}
    out, counters = run_batch(world, params)
    hour2 = acct.hour_start(T0 + day2)
    assert nonzero(out["statistics"]) == {
        (T0, "footfall", A7): 1.0, (T0 + 3600, "footfall", B7): 1.0,
        (T0 + 2 * 3600, "footfall", B7): 1.0,               # 1002's only hour; 1001's third is dropped
        (hour2, "footfall", B7): 1.0}                        # a new day
    assert counters["dp_bounded_hours_dropped"] == 1
    assert counters["dp_bounded_presence_dropped"] == 1


def test_opted_out_users_change_nothing():
    with_opted_out = {k: WORLD[k] + OPTED_OUT[k] for k in WORLD}
    out_with, counters = run_batch(with_opted_out, DpParams(**hours(0, 1)))
    out_without, _ = run_batch(WORLD, DpParams(**hours(0, 1)), users=[u for u in USERS if not u.stats_opt_out])
    assert sorted(out_with["statistics"]) == sorted(out_without["statistics"])
    assert sorted(map(json.dumps, out_with["ledger"])) == sorted(map(json.dumps, out_without["ledger"]))
    assert counters["dp_opted_out_dropped"] == 6 + 1 + 1


def test_no_user_id_pseudonym_or_coordinate_reaches_the_output():
    # the schema: exactly these fields, none of them an identifier or a position
    assert list(typing.get_type_hints(Statistic)) == [
        "window_start", "window_end", "h3_cell", "h3_res", "metric", "value", "mechanism",
        "noise_scale", "ci95_halfwidth", "epsilon", "delta"]
    assert arrow_schema(Statistic).names == list(typing.get_type_hints(Statistic))
    # the values: real noise, and nothing of any input's identity or position
    out, _ = run_batch(WORLD, DpParams(**hours(0, 1)), noise=SecureGaussianNoise())
    secrets = {u.user_id for u in USERS} | {"7777", "peer"} | {
        r.tap_id for r in WORLD["taps"]} | {r.tweet_id for r in WORLD["tweets"]}
    coordinates = {v for k in WORLD for r in WORLD[k] for v in (r.lat, r.lng)}
    for stat in out["statistics"]:
        for value in stat:
            if isinstance(value, str):
                assert not any(s in value for s in secrets), stat
            elif isinstance(value, float):
                assert value not in coordinates, stat
        assert h3.is_valid_cell(stat.h3_cell)
        assert stat.mechanism == "gaussian" and stat.noise_scale > 0
    text = json.dumps(out["ledger"])
    assert not any(s in text for s in secrets)
    assert not any(repr(c) in text for c in coordinates)


def test_release_window_publishes_every_partition_and_clamps_only_below_the_threshold():
    params = DpParams(suppress_below=1.5, share_footfall_by_age=0, share_tweets=0, share_nfc_touches=0)
    stats, ledger = release_window(params, params.plan(), {("footfall", A): 5, ("footfall", B): 1},
                                   T0, ZERO)
    assert len(stats) == 1030 and len(ledger) == 1
    values = {s.h3_cell: s.value for s in stats}
    assert values[A] == 5.0 and values[B] == 0.0  # 1 < 1.5: published as 0
    assert ledger[0]["partitions_released"] == 1030
    assert ledger[0]["epsilon"] == pytest.approx(0.4 / 24)


# A streaming world on coarser cells (fewer rows, faster): two hours, events out of order.
STREAM_PARAMS = dict(h3_res=7, share_footfall_by_age=0, share_nfc_touches=0, **ONE_CELL)
A7, B7 = (h3.cell_to_parent(c, 7) for c in (A, B))
ON_TIME = [ping("1001", 10, A), ping("1002", 30, A), tweet("1002", 31, A), ping("1003", 20, B),
           ping("1001", 3600 + 10, B), ping("1003", 3600 + 3000, A), ping("1001", 3 * 3600, A)]
LATE = ping("1002", 50, B)  # hour 0, arriving after hour 0 was released


def _stream_events():
    first, second, third = ON_TIME[:4], ON_TIME[4:6], ON_TIME[6:]
    return ([("pings" if isinstance(r, Ping) else "tweets", r) for r in reversed(first)]
            + [("watermark", T0 + 3600)]      # hour 0 closes and is released
            + [("pings", LATE)]
            + [("pings", r) for r in second]
            + [("watermark", T0 + 2 * 3600)]
            + [("pings", r) for r in third])


@pytest.mark.parametrize("max_hours", [24, 1])
def test_streaming_releases_what_batch_releases_and_counts_late_data(max_hours):
    params = DpParams(max_hours_per_day=max_hours, **STREAM_PARAMS, **hours(0, 3))
    world = {"pings": [r for r in ON_TIME if isinstance(r, Ping)],
             "tweets": [r for r in ON_TIME if isinstance(r, Tweet)], "taps": []}
    batch, _ = run_batch(world, params)
    # (The direct runner keeps streaming counters of the first bundles only, so the late
    # counter is checked on the DoFn below; here: the late ping is not in any release.)
    stream, _ = run_stream(_stream_events(), params)
    key = lambda s: (s.window_start, s.metric, s.h3_cell)
    assert sorted(map(key, stream["statistics"])) == sorted(map(key, batch["statistics"]))
    assert sorted(stream["statistics"]) == sorted(batch["statistics"])  # zero noise: same values
    assert sorted(map(json.dumps, stream["ledger"])) == sorted(map(json.dumps, batch["ledger"]))
    expected = {(T0, "footfall", A7): 2.0, (T0, "footfall", B7): 1.0, (T0, "tweets", A7): 1.0}
    if max_hours == 24:
        expected.update({(T0 + 3600, "footfall", B7): 1.0, (T0 + 3600, "footfall", A7): 1.0,
                         (T0 + 3 * 3600, "footfall", A7): 1.0})
    # else: 1001 and 1003 used their one hour of the JST day in hour 0; hours 1 and 3 release nothing
    assert nonzero(stream["statistics"]) == expected


def test_late_panes_are_counted_and_never_released():
    fn = BoundUserHourFn(DpParams(**ONE_CELL).hour_bounds(), DpParams().bands())
    registry = {u.user_id: u for u in USERS}
    group = ("1001", [bnd.Contribution("1001", T0 + 5, A, bnd.PING), bnd.Contribution("1001", T0 + 6, B, bnd.PING)])
    container = MetricsContainer("BoundUserHour")
    sampler = statesampler.StateSampler("", beam_counters.CounterFactory())
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state("BoundUserHour", "process", metrics_container=container):
            late = list(fn.process(group, registry, pane=PaneInfo(False, False, PaneInfoTiming.LATE, 1, 1)))
            on_time = list(fn.process(group, registry,
                                      pane=PaneInfo(True, False, PaneInfoTiming.ON_TIME, 0, 0)))
    finally:
        statesampler.set_current_tracker(None)
    assert late == []
    assert [kv[1].presence_cells for kv in on_time] == [(A,)]
    count = lambda name: container.get_counter(MetricName("tapfollow", name)).get_cumulative()
    assert count("dp_late_dropped") == 2
    assert count("dp_contributions_used") == 2


# ---------------------------------------------------------------- which hours are released

def released_windows(out):
    return sorted({s.window_start for s in out["statistics"]})


def ledger_keys(out):
    return sorted((r["window_start"], r["metric"]) for r in out["ledger"])


EXTRA_PING = ping("1003", 2 * 3600 + 5, A)       # the only contribution of hour 2
FAR_FUTURE = Ping("1001", parse_rfc3339("2099-12-31T23:00:00Z"), *at(A), 5.0, "gps")
BEFORE = ping("1002", -3 * 3600, B)               # the hour before the schedule's first but two


def test_released_windows_are_exactly_the_schedule_with_ledger_rows_per_hour():
    """Schedule: hour -1 (no data) .. hour 2 (no data); hours 0 and 1 have data."""
    params = DpParams(**ONE_CELL, **hours(-1, 2))
    out, counters = run_batch(WORLD, params)
    scheduled = [T0 - 3600, T0, T0 + 3600, T0 + 7200]
    assert released_windows(out) == scheduled
    per_hour = 1030 * (1 + 8 + 1 + 1)
    assert len(out["statistics"]) == len(scheduled) * per_hour
    families = ("footfall", "footfall_by_age", "tweets", "nfc_touches")
    assert ledger_keys(out) == sorted((format_rfc3339(t), m) for t in scheduled for m in families)
    assert all(r["partitions_released"] == (8 if r["metric"] == "footfall_by_age" else 1) * 1030
               for r in out["ledger"])
    acct.check_ledger(out["ledger"], 1.0, 1e-6)      # each (metric, hour) once, within budget
    assert counters["dp_windows_released"] == 4
    assert counters.get("dp_outside_schedule_dropped", 0) == 0


def test_data_outside_the_schedule_is_dropped_counted_and_opens_nothing():
    params = DpParams(**ONE_CELL, **hours(1, 1))     # only hour 1: hour 0's data is outside
    world = dict(WORLD, pings=WORLD["pings"] + [FAR_FUTURE, BEFORE])
    out, counters = run_batch(world, params)
    assert released_windows(out) == [T0 + 3600]
    assert ledger_keys(out) == sorted((format_rfc3339(T0 + 3600), m)
                                      for m in ("footfall", "footfall_by_age", "tweets", "nfc_touches"))
    assert nonzero(out["statistics"]) == {(T0 + 3600, "footfall", B): 1.0,
                                          (T0 + 3600, "footfall_age_20-29", B): 1.0}
    hour0 = sum(1 for k in WORLD for r in WORLD[k] if r.ts < T0 + 3600)
    assert counters["dp_outside_schedule_dropped"] == hour0 + 2


@pytest.mark.parametrize("extra", [EXTRA_PING, FAR_FUTURE, BEFORE], ids=["empty-hour", "far-future", "before"])
def test_one_ping_changes_no_released_window_nor_ledger_batch(extra):
    params = DpParams(**ONE_CELL, **hours(0, 3))
    without, _ = run_batch(WORLD, params)
    with_ping, _ = run_batch(dict(WORLD, pings=WORLD["pings"] + [extra]), params)
    key = lambda s: (s.window_start, s.metric, s.h3_cell)  # noqa: E731
    assert sorted(map(key, with_ping["statistics"])) == sorted(map(key, without["statistics"]))
    assert released_windows(with_ping) == [T0, T0 + 3600, T0 + 7200, T0 + 3 * 3600]
    assert sorted(map(json.dumps, with_ping["ledger"])) == sorted(map(json.dumps, without["ledger"]))
    # the ping itself is counted where it belongs, and nowhere else
    changed = set(nonzero(with_ping["statistics"]).items()) ^ set(nonzero(without["statistics"]).items())
    if extra is EXTRA_PING:
        assert changed == {((T0 + 7200, "footfall", A), 1.0), ((T0 + 7200, "footfall_age_unknown", A), 1.0)}
    else:
        assert changed == set()


def _stream_of(records, watermarks):
    """('pings', r) in the given order, with watermark steps after the listed indexes."""
    events = []
    for i, r in enumerate(records):
        events.append(("pings" if isinstance(r, Ping) else "tweets", r))
        if i in watermarks:
            events.append(("watermark", watermarks[i]))
    return events


@pytest.mark.parametrize("extra", [EXTRA_PING, FAR_FUTURE], ids=["empty-hour", "far-future"])
def test_one_ping_changes_no_released_window_nor_ledger_streaming(extra):
    """TestStream: hours 0, 1 and 3 have data; hour 2 is empty (and released all the same)."""
    params = DpParams(**STREAM_PARAMS, **hours(0, 3))
    base = ON_TIME
    steps = {3: T0 + 3600, 5: T0 + 2 * 3600}
    without, _ = run_stream(_stream_of(base, steps), params)
    # the extra ping arrives just before hour 2 closes (far-future: anywhere)
    with_ping, _ = run_stream(_stream_of(base[:6] + [extra] + base[6:], steps), params)
    assert released_windows(without) == released_windows(with_ping) == [T0, T0 + 3600, T0 + 7200, T0 + 3 * 3600]
    key = lambda s: (s.window_start, s.metric, s.h3_cell)  # noqa: E731
    assert sorted(map(key, with_ping["statistics"])) == sorted(map(key, without["statistics"]))
    assert sorted(map(json.dumps, with_ping["ledger"])) == sorted(map(json.dumps, without["ledger"]))
    acct.check_ledger(with_ping["ledger"], 1.0, 1e-6)   # every hour released once
    changed = set(nonzero(with_ping["statistics"]).items()) ^ set(nonzero(without["statistics"]).items())
    assert changed == ({((T0 + 7200, "footfall", A7), 1.0)} if extra is EXTRA_PING else set())
    # and batch releases the same
    world = {"pings": [r for r in ON_TIME if isinstance(r, Ping)] + [extra],
             "tweets": [r for r in ON_TIME if isinstance(r, Tweet)], "taps": []}
    batch, _ = run_batch(world, params)
    assert sorted(batch["statistics"]) == sorted(with_ping["statistics"])
    assert sorted(map(json.dumps, batch["ledger"])) == sorted(map(json.dumps, with_ping["ledger"]))


def _run_fn(fn, records):
    container = MetricsContainer("Contributions")
    sampler = statesampler.StateSampler("", beam_counters.CounterFactory())
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state("Contributions", "process", metrics_container=container):
            fn.setup()
            out = [c for r in records for c in fn.process(r)]
    finally:
        statesampler.set_current_tracker(None)
    count = lambda name: container.get_counter(MetricName("tapfollow", name)).get_cumulative()  # noqa: E731
    return out, count


def test_streaming_drops_events_stamped_ahead_of_the_wall_clock():
    schedule = DpParams(**hours(0, 1000)).schedule()
    now = T0 + 600
    soon, later = ping("1001", 600 + 3599, A), ping("1002", 600 + 3601, A)
    stream_fn = ToContributionsFn(bnd.PING, 8, 250.0, schedule, max_future_s=3600)
    stream_fn._now = lambda: now
    kept, count = _run_fn(stream_fn, [soon, later])
    assert [c.user_id for c in kept] == ["1001"]
    assert count("dp_future_dropped") == 1 and count("dp_outside_schedule_dropped") == 0
    batch_fn = ToContributionsFn(bnd.PING, 8, 250.0, schedule)   # batch: the schedule is the bound
    batch_fn._now = lambda: now
    kept, count = _run_fn(batch_fn, [soon, later, FAR_FUTURE])
    assert [c.user_id for c in kept] == ["1001", "1002"]
    assert count("dp_future_dropped") == 0 and count("dp_outside_schedule_dropped") == 1


def test_a_release_without_a_schedule_is_refused():
    with pytest.raises(ValueError, match="no release schedule"):
        run_batch(WORLD, DpParams())


def test_a_live_run_drops_events_ahead_of_the_wall_clock_and_still_releases_the_schedule():
    import time
    first = acct.hour_start(time.time()) + 3 * 3600               # hours 3 and 4 from now: in the future
    params = DpParams(first_hour=format_rfc3339(first), last_hour=format_rfc3339(first + 3600))
    ahead = Ping("1001", first + 5, *at(A), 5.0, "gps")
    world = {"pings": [ahead], "tweets": [], "taps": []}
    outs = {}
    for live in (False, True):
        p = TestPipeline(runner="FnApiRunner")
        inputs = {"pings": _typed(p, "Pings", world["pings"], Ping), "tweets": _typed(p, "Tweets", [], Tweet),
                  "taps": _typed(p, "Taps", [], TapReport), "users": p | "Users" >> beam.Create(USERS)}
        run_id = uuid.uuid4().hex
        _capture(run_id, inputs | ReleaseDpStatistics(params, noise=ZERO, live=live))
        result = p.run()
        result.wait_until_finish()
        outs[live] = (_CAPTURED.pop(run_id), _counters(result))
    (replayed, _), (live_out, counters) = outs[False], outs[True]
    assert released_windows(replayed) == released_windows(live_out) == [first, first + 3600]
    assert nonzero(replayed["statistics"])[(first, "footfall", A)] == 1.0
    assert nonzero(live_out["statistics"]) == {}
    assert counters["dp_future_dropped"] == 1


# ---- what a user took back does not count (issue #14) ---------------------------------------

def _event(kind, offset, tweet_id=None, author_id=None, **fields):
    return ComplianceEvent(tweet_id, author_id, T0 + offset, kind, **fields)


KEPT, DELETED, SCRUBBED = tweet("1002", 31, A, tweet_id="101"), tweet("1002", 33, A, tweet_id="102"), \
    tweet("1003", 21, B, tweet_id="103")
TAKEN_BACK = [_event("delete", 100, "102", "1002"), _event("scrub_geo", 110, None, "1003", up_to_tweet_id="103")]
COMPLIANCE_WORLD = {"pings": [r for r in ON_TIME if isinstance(r, Ping)], "tweets": [KEPT, DELETED, SCRUBBED],
                    "taps": []}


def test_batch_statistics_leave_out_what_compliance_messages_took_back():
    params = DpParams(**STREAM_PARAMS, **hours(0, 3))
    gated, counters = run_batch(dict(COMPLIANCE_WORLD, deletes=TAKEN_BACK), params)
    taken_out, _ = run_batch(dict(COMPLIANCE_WORLD, tweets=[KEPT]), params)
    everything, _ = run_batch(COMPLIANCE_WORLD, params)
    assert sorted(gated["statistics"]) == sorted(taken_out["statistics"])
    assert nonzero(gated["statistics"])[(T0, "tweets", A7)] == 1.0          # the deleted one is gone
    assert nonzero(everything["statistics"])[(T0, "tweets", A7)] == 2.0
    assert (T0, "tweets", B7) not in nonzero(gated["statistics"])            # scrubbed: no place
    assert (T0, "tweets", B7) in nonzero(everything["statistics"])
    assert counters.get("dp_compliance_delete") == 1 and counters.get("dp_compliance_scrub_geo") == 1


def test_streaming_withdraws_a_tweet_taken_back_before_its_hour_is_released():
    params = DpParams(**STREAM_PARAMS, **hours(0, 3))
    taken_out, _ = run_batch(dict(COMPLIANCE_WORLD, tweets=[KEPT]), params)
    events = ([("pings", r) for r in COMPLIANCE_WORLD["pings"] if r.ts < T0 + 3600]
              + [("tweets", t) for t in (KEPT, DELETED, SCRUBBED)]
              + [("watermark", T0 + 60)]                 # the tweets are passed on (and counted) ...
              + [("deletes", m) for m in TAKEN_BACK]     # ... then taken back, before hour 0 is out
              + [("watermark", T0 + 3600)]
              + [("pings", r) for r in COMPLIANCE_WORLD["pings"] if r.ts >= T0 + 3600])
    stream, _ = run_stream(events, params, compliance=True)
    assert sorted(stream["statistics"]) == sorted(taken_out["statistics"])


def test_streaming_never_recalls_a_released_hour():
    """Taken back after its hour was released: that release stands (noised, already in the
    ledger); the withdrawal is only counted."""
    params = DpParams(**STREAM_PARAMS, **hours(0, 3))
    everything, _ = run_batch(COMPLIANCE_WORLD, params)
    late = [_event("delete", 3700, "102", "1002")]
    events = ([("pings", r) for r in COMPLIANCE_WORLD["pings"] if r.ts < T0 + 3600]
              + [("tweets", t) for t in (KEPT, DELETED, SCRUBBED)]
              + [("watermark", T0 + 3600 + 60)]
              + [("deletes", m) for m in late]
              + [("pings", r) for r in COMPLIANCE_WORLD["pings"] if r.ts >= T0 + 3600])
    stream, _ = run_stream(events, params, compliance=True)
    assert sorted(stream["statistics"]) == sorted(everything["statistics"])


def test_a_withdrawal_removes_its_tweet_from_the_user_hour_and_is_counted():
    from core.dp_stats import WITHDRAWN, WITHDRAWN_AFTER_RELEASE, WITHDRAWN_UNUSED, bound_user_hour_of
    params = DpParams(**ONE_CELL)
    user = USERS[1]
    ping_c = bnd.Contribution("1002", T0 + 10, A, bnd.PING)
    tweet_c = bnd.Contribution("1002", T0 + 20, B, bnd.TWEET, "102")
    gone = tweet_c._replace(withdrawn=True)
    hour, counts = bound_user_hour_of(user, [tweet_c, ping_c, gone], False, params.hour_bounds(), params.bands())
    assert (hour.presence_cells, hour.tweet_counts) == ((A,), ())
    assert dict(counts)[WITHDRAWN] == 1 and dict(counts)["dp_contributions_used"] == 1
    hour, counts = bound_user_hour_of(user, [gone], False, params.hour_bounds(), params.bands())
    assert hour is None and dict(counts) == {WITHDRAWN: 0, WITHDRAWN_UNUSED: 1}
    hour, counts = bound_user_hour_of(user, [gone, ping_c], True, params.hour_bounds(), params.bands())
    assert hour is None and dict(counts) == {WITHDRAWN_AFTER_RELEASE: 1, "dp_late_dropped": 1}

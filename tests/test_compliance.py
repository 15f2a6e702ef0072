"""core.compliance through the alert fan-out: each compliance message kind, before and after the
tweet it covers, on plain lists, Beam batch and Beam streaming (TestStream).

Every scenario is one concert tweet in its own part of Tokyo (its own happening key) by its own
author, with its own listener nearby: uncovered, the tweet alerts the listener and is on the
timeline. A scenario's messages either cover the tweet (then no alert and no timeline entry
stands: none is written when the message comes first, a retraction with the same ``alert_id`` /
a ``retracted`` entry follows when it comes after) or, for the controls, cover nothing.
"""
from __future__ import annotations

import apache_beam as beam
import h3
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from core import geo
from core.alerts import AlertParams, alert_id, fan_out_over, fan_out_outputs
from core.compliance import apply_retractions
from core.locations import report_from_ping, report_from_tweet
from core.ops import LocalOps
from core.processor import group_by_key, run_ordered
from schemas import service_area
from schemas.records import Alert, ComplianceEvent, Ping, TapReport, TimelineEntry, Tweet, User, Follow
from transforms.alerts import FanOutGeofencedAlerts

T0 = 1_764_000_000.0
PARAMS = AlertParams()
# 4 x 4 places ~3.3 km apart: distinct happening cells (res 7), listeners out of each other's radius
GRID = [(35.60 + 0.03 * (i // 4), 139.64 + 0.04 * (i % 4)) for i in range(16)]
BEFORE, AFTER = T0 + 30, T0 + 900   # the tweets are at T0 + 60 + 7 i


class Scenario:
    def __init__(self, i: int, author: str | None = None):
        self.i = i
        self.place = GRID[i]
        self.author = author or str(2000 + i)
        self.listener = str(5000 + i)
        self.tweet = Tweet(str(10_000 + i), self.author, T0 + 60 + 7 * i, f"ライブ最高 {i}", "ja", [],
                           self.place[0], self.place[1], False, None, None)

    @property
    def ping(self):
        return Ping(self.listener, T0, self.place[0] + 0.001, self.place[1], 5.0, "gps")


def event(kind, ts, tweet_id=None, author_id=None, **fields):
    return ComplianceEvent(tweet_id, author_id, ts, kind, **fields)


# kind -> (messages for a scenario's tweet at time `at`, whether they cover it)
CASES = {
    "delete": (lambda s, at: [event("delete", at, s.tweet.tweet_id, s.author)], True),
    "tweet_edit": (lambda s, at: [event("tweet_edit", at, str(90_000 + s.i), superseded=[s.tweet.tweet_id])], True),
    "withheld": (lambda s, at: [event("withheld", at, s.tweet.tweet_id, s.author, countries=["JP", "KR"])], True),
    "withheld_everywhere": (lambda s, at: [event("withheld", at, s.tweet.tweet_id, s.author, countries=["XX"])], True),
    "drop": (lambda s, at: [event("drop", at, s.tweet.tweet_id, s.author)], True),
    "scrub_geo": (lambda s, at: [event("scrub_geo", at, None, s.author, up_to_tweet_id=s.tweet.tweet_id)], True),
    "user_delete": (lambda s, at: [event("user_delete", at, None, s.author)], True),
    "user_protect": (lambda s, at: [event("user_protect", at, None, s.author)], True),
    "user_suspend": (lambda s, at: [event("user_suspend", at, None, s.author)], True),
    "user_withheld": (lambda s, at: [event("user_withheld", at, None, s.author, countries=["JP"])], True),
    # an undo at `at` restores only tweets created after it: the tweet (created before) stays covered
    "protect_undone_later": (lambda s, at: [event("user_protect", at - 20, None, s.author),
                                            event("user_unprotect", at + 5 if at > s.tweet.ts else s.tweet.ts + 5,
                                                  None, s.author)], True),
    # controls: these cover nothing
    "withheld_elsewhere": (lambda s, at: [event("withheld", at, s.tweet.tweet_id, s.author, countries=["DE"])], False),
    "undrop": (lambda s, at: [event("undrop", at, s.tweet.tweet_id, s.author)], False),
    "scrub_geo_older": (lambda s, at: [event("scrub_geo", at, None, s.author,
                                             up_to_tweet_id=str(int(s.tweet.tweet_id) - 1))], False),
}
# a protect undone before the tweet was created: the tweet is public
CONTROL_BEFORE_ONLY = {"protect_undone_before": (lambda s, at: [event("user_protect", at - 20, None, s.author),
                                                                event("user_unprotect", at, None, s.author)], False)}


def world(at: float):
    cases = dict(CASES, **(CONTROL_BEFORE_ONLY if at < T0 + 60 else {}))
    scenarios = {name: Scenario(i) for i, name in enumerate(sorted(cases))}
    messages = [m for name, s in scenarios.items() for m in cases[name][0](s, at)]
    covered = {name for name in scenarios if cases[name][1]}
    return scenarios, messages, covered


def inputs_of(tweets, messages, scenarios):
    pings = [s.ping for s in scenarios.values()]
    reports = [report_from_ping(p, PARAMS.max_accuracy_m) for p in pings] + [report_from_tweet(t) for t in tweets]
    users = [User(s.listener, "k", True, False, None) for s in scenarios.values()]
    return {"tweets": list(tweets), "deletes": list(messages), "reports": [r for r in reports if r],
            "follows": [], "users": users, "pings": pings}


def outputs(tweets, messages, scenarios, ops=None):
    inputs = inputs_of(tweets, messages, scenarios)
    if ops is None:
        out = fan_out_outputs(inputs["tweets"], messages, inputs["reports"], [], inputs["users"], PARAMS)
        return {"alerts": sorted(out["alerts"]), "timeline": sorted(out["timeline"])}
    out = fan_out_over(ops, {k: v for k, v in inputs.items() if k != "pings"}, PARAMS)
    return {"alerts": sorted(out["alerts"]), "timeline": sorted(out["timeline"])}


class StreamingLocalOps(LocalOps):
    """Streaming's semantics on plain lists: every key's messages run in event-time order through
    ``process`` (no bounded-input shortcut), so a message after an output retracts it."""

    def run_ordered(self, col, processor, stage_name=None, *, tick_s=1.0, allowed_lateness_s=0.0, step=""):
        out = []
        for key, msgs in sorted(group_by_key(col).items()):
            out.extend(run_ordered(processor, msgs)[1])
        return {"out": out, "late": []}


def expected(scenarios, covered):
    alerts, entries = [], []
    for name, s in scenarios.items():
        if name in covered:
            continue
        t = s.tweet
        key = f"concert|{h3.latlng_to_cell(t.lat, t.lng, PARAMS.happening_h3_res)}|{int(t.ts * 1000)}"
        distance = round(geo.distance_m(t.lat, t.lng, s.ping.lat, s.ping.lng), 1)
        alerts.append(Alert(alert_id(s.listener, key, t.tweet_id), s.listener, t.tweet_id, t.ts, distance,
                            "nearby:concert:concert"))
        entries.append(TimelineEntry(t.tweet_id, t.author_id, t.ts, t.text, t.lat, t.lng,
                                     h3.latlng_to_cell(t.lat, t.lng, PARAMS.timeline_h3_res), "concert", False))
    return {"alerts": sorted(alerts), "timeline": sorted(entries)}


def test_the_scenarios_are_in_the_service_area_and_apart():
    assert all(service_area.contains(*p) for p in GRID)
    cells = {h3.latlng_to_cell(*p, PARAMS.happening_h3_res) for p in GRID}
    assert len(cells) == len(GRID)


@pytest.mark.parametrize("at", [BEFORE, AFTER], ids=["message_first", "message_after"])
def test_batch_covers_exactly_what_each_kind_says(at):
    scenarios, messages, covered = world(at)
    tweets = [s.tweet for s in scenarios.values()]
    want = expected(scenarios, covered)
    assert len(want["alerts"]) == len(scenarios) - len(covered) > 0
    assert outputs(tweets, messages, scenarios) == want
    # the same as the world with the covered tweets taken out in advance, and no messages at all
    kept = [s.tweet for name, s in scenarios.items() if name not in covered]
    assert outputs(kept, [], scenarios) == want


@pytest.mark.parametrize("at", [BEFORE, AFTER], ids=["message_first", "message_after"])
def test_streaming_semantics_suppress_or_retract_with_the_same_alert_id(at):
    scenarios, messages, covered = world(at)
    tweets = [s.tweet for s in scenarios.values()]
    got = outputs(tweets, messages, scenarios, StreamingLocalOps())
    check_streamed(got["alerts"], got["timeline"], scenarios, covered, at)


def check_streamed(alerts, timeline, scenarios, covered, at):
    want = expected(scenarios, covered)
    assert sorted(apply_retractions(alerts)) == want["alerts"]
    assert sorted(apply_retractions(timeline)) == want["timeline"]
    covered_ids = {scenarios[name].tweet.tweet_id for name in covered}
    about_covered = sorted(a for a in alerts if a.tweet_id in covered_ids)
    entries_covered = sorted(e for e in timeline if e.tweet_id in covered_ids)
    if at < T0 + 60:
        # the message came first: nothing about a covered tweet is ever written
        assert about_covered == [] and entries_covered == []
        return
    # the message came after: each alert once, then its retraction (same alert_id) at the message's time
    written = [a for a in about_covered if not a.reason.startswith("retract:")]
    assert len(written) == len(covered)
    retractions = sorted(a for a in about_covered if a.reason.startswith("retract:"))
    name_of = {s.tweet.tweet_id: name for name, s in scenarios.items()}
    first_message = {name: min(m.ts for m in CASES[name][0](scenarios[name], at)) for name in covered}
    assert retractions == sorted(a._replace(ts=first_message[name_of[a.tweet_id]], reason="retract:" + a.reason)
                                 for a in written)
    assert sorted(entries_covered) == sorted(
        [e for e in entries_covered if not e.retracted] + [e._replace(retracted=True) for e in entries_covered
                                                            if not e.retracted])
    assert len(entries_covered) == 2 * len(covered)


# ---- on Beam: batch, and streaming from a TestStream -----------------------------------------

def beam_inputs(p, tweets, messages, scenarios):
    data = inputs_of(tweets, messages, scenarios)

    def create(label, items, record_type):
        return p | label >> beam.Create([TimestampedValue(x, x.ts) for x in items]).with_output_types(record_type)
    return {"tweets": create("Tweets", data["tweets"], Tweet), "deletes": create("Deletes", messages, ComplianceEvent),
            "pings": create("Pings", data["pings"], Ping), "taps": create("Taps", [], TapReport),
            "follows": create("Follows", [], Follow), "users": p | "Users" >> beam.Create(data["users"])}


@pytest.mark.parametrize("at", [BEFORE, AFTER], ids=["message_first", "message_after"])
def test_beam_batch(at):
    scenarios, messages, covered = world(at)
    tweets = [s.tweet for s in scenarios.values()]
    want = expected(scenarios, covered)
    with TestPipeline() as p:
        out = beam_inputs(p, tweets, messages, scenarios) | FanOutGeofencedAlerts(PARAMS)
        assert_that(out["alerts"], equal_to(want["alerts"]), label="Alerts")
        assert_that(out["timeline"], equal_to(want["timeline"]), label="Timeline")
        assert_that(out["dead_letters"], equal_to([]), label="NoDeadLetters")


@pytest.mark.parametrize("at", [BEFORE, AFTER], ids=["message_first", "message_after"])
def test_beam_streaming(at):
    """The messages are delivered first (message_first: before the tweets they cover, in processing
    order too), or once the watermark has passed the tweets and their alerts were written."""
    scenarios, messages, covered = world(at)
    tweets = [s.tweet for s in scenarios.values()]
    pings = [s.ping for s in scenarios.values()]
    stream = TestStream()
    if at < T0 + 60:
        stream.add_elements([TimestampedValue(m, m.ts) for m in messages])
    stream.add_elements([TimestampedValue(x, x.ts) for x in pings])
    stream.advance_watermark_to(T0 + 1)
    stream.add_elements([TimestampedValue(t, t.ts) for t in reversed(tweets)])
    stream.advance_watermark_to(T0 + 400)
    if at > T0 + 60:
        stream.add_elements([TimestampedValue(m, m.ts) for m in messages])
    stream.advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(runner="BundleBasedDirectRunner", options=options) as p:
        events = p | "Events" >> stream
        inputs = {name: events | f"Only{name}" >> beam.Filter(lambda e, t=t: isinstance(e, t))
                  for name, t in (("tweets", Tweet), ("deletes", ComplianceEvent), ("pings", Ping),
                                  ("taps", TapReport), ("follows", Follow))}
        inputs["users"] = p | "Users" >> beam.Create([User(s.listener, "k", True, False, None)
                                                      for s in scenarios.values()])
        out = inputs | FanOutGeofencedAlerts(PARAMS)
        both = ((out["alerts"] | "TagAlerts" >> beam.Map(lambda a: ("alert", a)),
                 out["timeline"] | "TagEntries" >> beam.Map(lambda e: ("entry", e))) | "Both" >> beam.Flatten())

        def check(rows):
            check_streamed([r for tag, r in rows if tag == "alert"], [r for tag, r in rows if tag == "entry"],
                           scenarios, covered, at)
        assert_that(both, check, label="CheckOutputs")
        assert_that(out["dead_letters"], equal_to([]), label="NoDeadLetters")


# ---- the undo rule, on plain lists ----------------------------------------------------------

def test_an_undo_restores_only_tweets_created_after_it():
    a, b = Scenario(0, author="7"), Scenario(1, author="7")
    b.tweet = b.tweet._replace(ts=T0 + 1500)
    scenarios = {"a": a, "b": b}
    messages = [event("user_suspend", T0 + 100, None, "7"), event("user_unsuspend", T0 + 1000, None, "7")]
    got = outputs([a.tweet, b.tweet], messages, scenarios)
    assert [x.tweet_id for x in got["alerts"]] == [b.tweet.tweet_id]
    assert [x.tweet_id for x in got["timeline"]] == [b.tweet.tweet_id]


def test_another_service_country_is_honoured():
    s = Scenario(0)
    de = AlertParams(service_country="DE")
    inputs = inputs_of([s.tweet], [event("withheld", BEFORE, s.tweet.tweet_id, s.author, countries=["JP"])], {"s": s})
    got = fan_out_outputs(inputs["tweets"], inputs["deletes"], inputs["reports"], [], inputs["users"], de)
    assert [x.tweet_id for x in got["alerts"]] == [s.tweet.tweet_id]
    with pytest.raises(ValueError, match="two-letter upper-case country code"):
        AlertParams(service_country="jpn")


def test_every_message_is_counted_per_kind():
    scenarios, messages, _covered = world(AFTER)
    ops = LocalOps()
    inputs = inputs_of([s.tweet for s in scenarios.values()], messages, scenarios)
    fan_out_over(ops, {k: v for k, v in inputs.items() if k != "pings"}, PARAMS)
    kinds = {}
    for m in messages:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    assert {k: ops.counters[f"compliance_{k}"] for k in kinds} == kinds
    assert ops.counters["compliance_withheld_elsewhere"] == 1

"""core.compliance through the alert fan-out: each compliance message kind, before and after the
tweet it covers, on plain lists, Beam batch and Beam streaming (TestStream).

The worlds are ``tests/compliance_scenarios.py``'s. A covered tweet's alert and timeline entry
never stand: none is written when the message comes first, a retraction with the same
``alert_id`` / a ``retracted`` entry follows when it comes after; the controls cover nothing.
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

from core.alerts import AlertParams, fan_out_over, fan_out_outputs
from core.ops import LocalOps
from schemas import service_area
from schemas.records import ComplianceEvent, Follow, Ping, TapReport, Tweet, User
from tests.compliance_scenarios import (AFTER, BEFORE, GRID, PARAMS, T0, Scenario, StreamingLocalOps,
                                        check_streamed, event, expected, inputs_of, outputs, world)
from tests.test_alerts import streaming_fan_out
from transforms.alerts import FanOutGeofencedAlerts

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
        out = streaming_fan_out(p, stream, [User(s.listener, "k", True, False, None) for s in scenarios.values()],
                                PARAMS)
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

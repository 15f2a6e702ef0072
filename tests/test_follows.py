"""ResolveMutualFollows on small worlds, in batch and in streaming (TestStream).

The expected outputs come from hand-made worlds and from ``resolve_reports``,
the pure rule set (tested in tests/test_pairing.py); these tests check that the
Beam wiring gives the same answer whatever the runner, the arrival order and
the watermark do.
"""
from __future__ import annotations

import json
import random

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from schemas.records import Follow, TapReport, User
from schemas.touch import follow_for_touch
from tests.test_pairing import A, B, C, D, PUBKEYS, SKEW, T0, crowd, report, signed, touch
from core.follows import FollowParams, dead_letter, resolve_reports
from transforms.follows import ResolveMutualFollows

PARAMS = FollowParams(max_clock_skew_s=SKEW, pending_expiry_s=600.0, replay_memory_s=3600.0)


def users_of(pubkeys):
    return [User(uid, key, True, False, None) for uid, key in sorted(pubkeys.items())]


def expected_of(reports, pubkeys=PUBKEYS):
    """(follows, dead letters) as the pure rule set decides them."""
    res = resolve_reports(reports, pubkeys, max_clock_skew_s=PARAMS.max_clock_skew_s,
                          pending_expiry_s=PARAMS.pending_expiry_s)
    return res.follows, [dead_letter(r) for r in res.rejections]


def resolve_in_beam(p, taps, pubkeys=PUBKEYS, params=PARAMS):
    users = p | "Users" >> beam.Create(users_of(pubkeys))
    return {"taps": taps, "users": users} | "ResolveMutualFollows" >> ResolveMutualFollows(params)


def batch_pipeline(reports, pubkeys=PUBKEYS):
    p = TestPipeline()
    taps = (p | "Taps" >> beam.Create(reports)
            | "StampTs" >> beam.Map(lambda r: TimestampedValue(r, r.ts)).with_output_types(TapReport))
    return p, resolve_in_beam(p, taps, pubkeys)


def streaming_pipeline(stream):
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(runner="BundleBasedDirectRunner", options=options)
    taps = p | "Taps" >> stream
    return p, resolve_in_beam(p, taps)


def small_world():
    """Every kind of report once: genuine, one-sided, forged, duplicate, replayed, repeat, skewed, self, unknown."""
    ab = touch(A, B, T0, 1, dx=0.3, dy=-0.4)
    cd = touch(C, D, T0 + 2, 2, dx=4.0, dy=-2.0)
    ab_again = touch(B, A, T0 + 1800, 3)              # a repeat touch of an already-followed pair
    lonely, _ = touch(A, C, T0 + 5, 4)                # C's phone never reports
    forged = report("forged", D, A, ab[0].nonce, T0, proof=ab[0].proof)   # D claims A's touch
    skewed = touch(B, C, T0 + 20, 5, dx=-6, dy=6)     # each fine, 12 s apart: no follow
    replay = signed(ab[1]._replace(tap_id="replayed-ab"))   # B's phone re-files its touch
    self_tap = report("self", D, D, ab[0].nonce, T0)
    ghost = TapReport("ghost", "999", A, ab[0].nonce, T0, 52.5, 13.4, "x", "y")
    reports = [*ab, *cd, *ab_again, lonely, forged, *skewed, replay, self_tap, ghost, ab[0], cd[1]]
    return reports


def test_small_world_in_batch_gives_exact_follows_and_dead_letters():
    reports = small_world()
    follows, dead = expected_of(reports)
    ab, cd = reports[0:2], reports[2:4]
    # hand-checked: exactly the first A-B touch and the C-D touch
    assert follows == sorted([follow_for_touch(*ab), follow_for_touch(*cd)])
    assert sorted(json.loads(d.raw)["tap_id"] for d in dead) == sorted(
        ["4-1001", "forged", "5-1002", "5-1003", "replayed-ab", "self", "ghost", "1-1001", "2-1004"])
    assert {d.source for d in dead} == {"taps"}
    p, out = batch_pipeline(reports)
    assert_that(out["follows"], equal_to(follows), label="Follows")
    assert_that(out["dead_letters"], equal_to(dead), label="DeadLetters")
    p.run().wait_until_finish()


def test_streaming_shuffled_out_of_order_gives_the_batch_result():
    reports = small_world()
    follows, dead = expected_of(reports)
    rng = random.Random(4)
    shuffled = list(reports)
    rng.shuffle(shuffled)
    stream = TestStream().advance_watermark_to(T0 - 60)
    # three deliveries far apart in processing time, each out of order, the watermark moving between them
    # (never past a touch's expiry before both of its reports are in)
    for chunk, watermark in ((shuffled[:6], T0 + 1), (shuffled[6:12], T0 + 30), (shuffled[12:], T0 + 100)):
        stream = stream.add_elements([TimestampedValue(r, r.ts) for r in chunk]).advance_watermark_to(watermark)
    stream = stream.advance_watermark_to(T0 + 3000).advance_watermark_to_infinity()
    p, out = streaming_pipeline(stream)
    assert_that(out["follows"], equal_to(follows), label="Follows")
    # A replay with the same content as the genuine report is interchangeable with it: whichever
    # arrives first is used. The same touch results, the same reasons, the same count.
    assert_that(out["dead_letters"] | "Errors" >> beam.Map(lambda d: d.error),
                equal_to([d.error for d in dead]), label="Errors")
    assert_that(out["dead_letters"] | "NotReplays" >> beam.Filter(lambda d: not d.error.startswith("replayed")),
                equal_to([d for d in dead if not d.error.startswith("replayed")]), label="DeadLetters")
    p.run().wait_until_finish()


def test_streaming_partner_after_expiry_does_not_match():
    x, y = touch(A, B, T0, 1)
    stream = (TestStream().advance_watermark_to(T0 - 60)
              .add_elements([TimestampedValue(x, x.ts)])
              .advance_watermark_to(T0 + PARAMS.pending_expiry_s + 5)     # x expires here
              .add_elements([TimestampedValue(y, y.ts)])                  # late partner
              .advance_watermark_to_infinity())
    p, out = streaming_pipeline(stream)
    assert_that(out["follows"], equal_to([]), label="Follows")
    assert_that(out["dead_letters"] | beam.Map(lambda d: (json.loads(d.raw)["tap_id"], d.error.split(":")[0])),
                equal_to([(x.tap_id, "unmatched"), (y.tap_id, "unmatched")]), label="DeadLetters")
    assert_that(out["dead_letters"] | "Errors" >> beam.Map(lambda d: d.error),
                equal_to(["unmatched: no partner report within pending_expiry_s=600 of the touch time",
                          "unmatched: arrived after its touch expired (pending_expiry_s=600 after the nonce's "
                          "touch time)"]), label="Reasons")
    p.run().wait_until_finish()


def test_streaming_end_of_input_still_delivers_every_outcome():
    """The watermark jumps to the end at once: the unmatched report is still dead-lettered, on time."""
    x, y = touch(A, B, T0, 1)
    lonely, _ = touch(A, C, T0 + 5, 2)
    stream = (TestStream().advance_watermark_to(T0 - 60)
              .add_elements([TimestampedValue(r, r.ts) for r in (x, lonely, y)])
              .advance_watermark_to_infinity())
    p, out = streaming_pipeline(stream)
    assert_that(out["follows"], equal_to([follow_for_touch(x, y)]), label="Follows")
    assert_that(out["dead_letters"] | beam.Map(lambda d: (json.loads(d.raw)["tap_id"], d.error.split(":")[0])),
                equal_to([(lonely.tap_id, "unmatched")]), label="DeadLetters")
    p.run().wait_until_finish()


def test_streaming_report_left_waiting_by_an_early_pane_still_expires():
    """x and a forgery fire an early pane; nothing else comes: the (empty) final pane expires x."""
    x, y = touch(A, B, T0, 1)
    forged = signed(x._replace(tap_id="forged", proof=y.proof))
    stream = (TestStream().advance_watermark_to(T0 - 60)
              .add_elements([TimestampedValue(forged, forged.ts), TimestampedValue(x, x.ts)])
              .advance_watermark_to(T0 + 30)
              .advance_watermark_to(T0 + 2000)
              .advance_watermark_to_infinity())
    p, out = streaming_pipeline(stream)
    assert_that(out["follows"], equal_to([]), label="Follows")
    assert_that(out["dead_letters"] | beam.Map(lambda d: (json.loads(d.raw)["tap_id"], d.error.split(":")[0])),
                equal_to([("forged", "bad proof"), (x.tap_id, "unmatched")]), label="DeadLetters")
    p.run().wait_until_finish()


def test_streaming_early_pane_without_a_pair_keeps_the_report_waiting():
    """x and its redelivery fire an early pane; y comes later, before the deadline: still a follow."""
    x, y = touch(A, B, T0, 1)
    stream = (TestStream().advance_watermark_to(T0 - 60)
              .add_elements([TimestampedValue(x, x.ts), TimestampedValue(x, x.ts)])
              .advance_watermark_to(T0 + 5)
              .add_elements([TimestampedValue(y, y.ts)])
              .advance_watermark_to_infinity())
    p, out = streaming_pipeline(stream)
    assert_that(out["follows"], equal_to([follow_for_touch(x, y)]), label="Follows")
    assert_that(out["dead_letters"] | beam.Map(lambda d: (json.loads(d.raw)["tap_id"], d.error.split(":")[0])),
                equal_to([(x.tap_id, "duplicate")]), label="DeadLetters")
    p.run().wait_until_finish()


def test_streaming_late_partner_before_expiry_still_matches():
    x, y = touch(A, B, T0, 1)
    stream = (TestStream().advance_watermark_to(T0 - 60)
              .add_elements([TimestampedValue(x, x.ts)])
              .advance_watermark_to(T0 + 300)                  # past the pairing time: y is late, not expired
              .add_elements([TimestampedValue(y, y.ts)])
              .advance_watermark_to_infinity())
    p, out = streaming_pipeline(stream)
    assert_that(out["follows"], equal_to([follow_for_touch(x, y)]), label="Follows")
    assert_that(out["dead_letters"], equal_to([]), label="DeadLetters")
    p.run().wait_until_finish()


def test_streaming_replay_after_the_follow_creates_nothing():
    x, y = touch(A, B, T0, 1)
    replays = [signed(r._replace(tap_id=r.tap_id + "-re")) for r in (x, y)]
    stream = (TestStream().advance_watermark_to(T0 - 60)
              .add_elements([TimestampedValue(y, y.ts), TimestampedValue(x, x.ts)])
              .advance_watermark_to(T0 + 2000)                           # long confirmed and expired
              .add_elements([TimestampedValue(r, r.ts) for r in replays + [x]])   # replays + a redelivery
              .advance_watermark_to(T0 + 600 + 3600 + 100)               # past the replay memory
              .add_elements([TimestampedValue(r, r.ts) for r in replays])  # dropped as too late
              .advance_watermark_to_infinity())
    p, out = streaming_pipeline(stream)
    assert_that(out["follows"], equal_to([follow_for_touch(x, y)]), label="Follows")
    assert_that(out["dead_letters"] | beam.Map(lambda d: (json.loads(d.raw)["tap_id"], d.error.split(":")[0])),
                equal_to([(x.tap_id + "-re", "replayed"), (y.tap_id + "-re", "replayed"),
                          (x.tap_id, "duplicate")]), label="DeadLetters")
    p.run().wait_until_finish()


def test_streaming_repeat_touch_of_a_followed_pair_is_not_a_second_edge():
    first, again = touch(A, B, T0, 1), touch(B, A, T0 + 900, 2)
    stream = (TestStream().advance_watermark_to(T0 - 60)
              .add_elements([TimestampedValue(r, r.ts) for r in first])
              .advance_watermark_to(T0 + 800)
              .add_elements([TimestampedValue(r, r.ts) for r in again])
              .advance_watermark_to_infinity())
    p, out = streaming_pipeline(stream)
    assert_that(out["follows"], equal_to([follow_for_touch(*first)]), label="Follows")
    assert_that(out["dead_letters"], equal_to([]), label="DeadLetters")
    p.run().wait_until_finish()


def counter(result, name):
    found = result.metrics().query(beam.metrics.MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in found)


def test_repeat_touches_are_counted_not_emitted():
    first, again, third = touch(A, B, T0, 1), touch(B, A, T0 + 900, 2), touch(A, B, T0 + 86400, 3)
    p, out = batch_pipeline([*third, *again, *first])
    assert_that(out["follows"], equal_to([follow_for_touch(*first)]), label="Follows")
    assert_that(out["dead_letters"], equal_to([]), label="DeadLetters")
    result = p.run()
    result.wait_until_finish()
    assert (counter(result, "touches_confirmed"), counter(result, "touches_repeat"),
            counter(result, "follows_emitted")) == (3, 2, 1)


def test_crowd_of_500_pairs_in_one_second_gives_exactly_the_true_follows():
    reports, keys, truth = crowd(500)
    random.Random(2).shuffle(reports)
    p, out = batch_pipeline(reports, keys)
    assert_that(out["follows"], equal_to(truth), label="Follows")
    assert_that(out["dead_letters"], equal_to([]), label="DeadLetters")
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "follows_emitted") == 500 and counter(result, "taps_read") == 1000


def test_dead_letter_keeps_the_report_as_received():
    x, _ = touch(A, B, T0, 1)
    (letter,) = expected_of([x])[1]
    assert letter.source == "taps"
    assert json.loads(letter.raw) == {**x._asdict(), "ts": "2023-11-14T22:13:20.000Z"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_clock_skew_s=0), "follows_max_clock_skew_s=0: must be > 0"),
    (dict(max_clock_skew_s=30, pending_expiry_s=20), "follows_pending_expiry_s=20: must be >= follows_max_clock_skew_s=30"),
    (dict(replay_memory_s=-1), "follows_replay_memory_s=-1: must be >= 0"),
    (dict(pending_expiry_s=float("inf")), "follows_pending_expiry_s: expected a finite number"),
    (dict(max_clock_skew_s="10"), "follows_max_clock_skew_s: expected a finite number"),
    (dict(max_future_s=-1), "follows_max_future_s=-1: must be >= 0"),
    (dict(max_accuracy_m=-5), "follows_max_accuracy_m=-5: must be >= 0"),
    (dict(max_pair_distance_m=float("nan")), "follows_max_pair_distance_m: expected a finite number"),
])
def test_params_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        FollowParams(**kwargs)


def test_params_fields_are_simple_types():
    for name, value in FollowParams().__dict__.items():
        assert type(value) in (float, int, str, bool), name


# ---- the generator's world: follows/ must equal truth/ ------------------------------------

@pytest.fixture(scope="module")
def generated_world(tmp_path_factory):
    from schemas.parse import parse_line
    from schemas.timefmt import parse_rfc3339
    from synthetic.world import write_world
    out = str(tmp_path_factory.mktemp("world"))
    write_world(out, users=400, hours=12, seed=11)
    with open(f"{out}/users.jsonl", encoding="utf-8") as fh:
        users = [parse_line("users", line) for line in fh]
    with open(f"{out}/taps.jsonl", encoding="utf-8") as fh:
        taps = [parse_line("taps", line) for line in fh]
    with open(f"{out}/truth/follows.jsonl", encoding="utf-8") as fh:
        truth = [json.loads(line) for line in fh]
    truth = [Follow(**{**f, "established_at": parse_rfc3339(f["established_at"])}) for f in truth]
    assert len(truth) > 20 and len(taps) > 2 * len(truth)   # a world worth testing: repeats included
    return {u.user_id: u.pubkey for u in users}, taps, truth


def test_generated_world_in_batch_equals_truth(generated_world):
    pubkeys, taps, truth = generated_world
    p, out = batch_pipeline(taps, pubkeys)
    assert_that(out["follows"], equal_to(truth), label="Follows")
    assert_that(out["dead_letters"], equal_to([]), label="DeadLetters")
    p.run().wait_until_finish()


def test_generated_world_in_streaming_shuffled_equals_truth(generated_world):
    pubkeys, taps, truth = generated_world
    rng = random.Random(5)
    # delivery order: event time plus up to the allowed skew of jitter, so reports overtake each other;
    # the watermark trails the newest delivered report by the skew, so some partners arrive late
    order = sorted(taps, key=lambda r: r.ts + rng.uniform(0, SKEW))
    stream, watermark = TestStream(), min(r.ts for r in taps) - 60
    stream = stream.advance_watermark_to(watermark)
    for i in range(0, len(order), 25):
        chunk = order[i:i + 25]
        stream = stream.add_elements([TimestampedValue(r, r.ts) for r in chunk])
        watermark = max(watermark, max(r.ts for r in chunk) - SKEW)
        stream = stream.advance_watermark_to(watermark)
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(runner="BundleBasedDirectRunner", options=options)
    out = resolve_in_beam(p, p | "Taps" >> stream, pubkeys)
    assert_that(out["follows"], equal_to(truth), label="Follows")
    assert_that(out["dead_letters"], equal_to([]), label="DeadLetters")
    p.run().wait_until_finish()


def test_a_pairs_later_touch_confirmed_first_does_not_become_its_edge():
    """Parallel runners confirm touches in any order (Prism did, on a 600-user world, where two
    pairs got their later touch as the edge): the earlier touch of a pair must still be its
    follow, as in batch. Here the later touch's two reports arrive, and fire its early pane,
    before the earlier touch's reports."""
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms.window import TimestampedValue
    from schemas.touch import follow_for_touch
    from tests.test_pairing import A, B, T0, touch

    first, later = touch(A, B, T0, 1), touch(B, A, T0 + 300, 2)
    stream = (TestStream().advance_watermark_to(T0 - 60)
              .add_elements([TimestampedValue(r, r.ts) for r in later])
              .add_elements([TimestampedValue(r, r.ts) for r in first])
              .advance_watermark_to_infinity())
    p, out = streaming_pipeline(stream)
    assert_that(out["follows"], equal_to([follow_for_touch(*first)]), label="Follows")
    p.run().wait_until_finish()


# ---- issue #10: the trust model's knobs reach the Beam steps -------------------------------

def _trust_reports():
    from schemas.timefmt import parse_rfc3339
    from tests.test_pairing import nonce_at
    far = nonce_at(T0, 21)
    apart = [report("far-x", A, B, far, T0, where=(35.7295, 139.7109)),
             report("far-y", B, A, far, T0, where=(35.6450, 139.7100))]       # 9.4 km apart
    future = touch(C, D, parse_rfc3339("2099-01-01T00:00:00Z"), 22)
    unsigned = touch(A, C, T0 + 60, 23)[0]._replace(report_sig=None)
    return apart, list(future), unsigned


def test_beam_refuses_far_apart_future_and_unsigned_reports():
    apart, future, unsigned = _trust_reports()
    p, out = batch_pipeline(apart + future + [unsigned])
    assert_that(out["follows"], equal_to([]), label="Follows")
    assert_that(out["dead_letters"] | beam.Map(lambda d: (json.loads(d.raw)["tap_id"], d.error.split(":")[0])),
                equal_to(sorted([("far-x", "too far apart"), ("far-y", "too far apart"),
                                 (future[0].tap_id, "future touch"), (future[1].tap_id, "future touch"),
                                 (unsigned.tap_id, "unsigned report")])), label="DeadLetters")
    p.run().wait_until_finish()


def test_beam_uses_the_configured_distance_and_future_bounds():
    apart, _future, _unsigned = _trust_reports()
    params = FollowParams(max_clock_skew_s=SKEW, pending_expiry_s=600.0, replay_memory_s=3600.0,
                          max_pair_distance_m=20_000.0)
    p = TestPipeline()
    taps = (p | "Taps" >> beam.Create(apart)
            | "StampTs" >> beam.Map(lambda r: TimestampedValue(r, r.ts)).with_output_types(TapReport))
    out = resolve_in_beam(p, taps, params=params)
    assert_that(out["follows"], equal_to([follow_for_touch(*apart)]), label="Follows")
    p.run().wait_until_finish()

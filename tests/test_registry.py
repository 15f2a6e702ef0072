"""Registry duplicates merge the most private way; tweets count once; unknown users' pings are dead letters."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.window import TimestampedValue
from hypothesis import given, strategies as st

from schemas.proofs import new_keypair
from schemas.records import Ping, Tweet, User
from core.registry import merge_user_copies
from transforms.registry import DedupeTweets, KeepRegisteredPings, MergeRegistry

KEY_A = new_keypair(bytes(32))[1]
KEY_B = new_keypair(bytes([1]) * 32)[1]
U = User("7", KEY_A, True, False, "20-29")


def test_copies_that_agree_merge_to_the_same_record():
    assert merge_user_copies([U, U]) == (U, [])


def test_disagreeing_copies_are_read_the_most_private_way():
    merged, differences = merge_user_copies([
        User("7", KEY_A, True, True, "20-29"),
        User("7", KEY_B, False, False, "30-39"),
    ])
    assert merged == User("7", "", False, True, None)
    assert differences == ["stats_opt_out differs: kept opted out", "alerts_opt_in differs: kept not opted in",
                           "pubkey differs: no usable key, taps of this user are refused",
                           "age_band differs: kept none"]


users = st.builds(User, st.just("7"), st.sampled_from([KEY_A, KEY_B]), st.booleans(), st.booleans(),
                  st.sampled_from([None, "20-29", "30-39"]))


@given(st.lists(users, min_size=1, max_size=5))
def test_merge_is_order_free_and_never_less_private_than_any_copy(copies):
    merged, _ = merge_user_copies(copies)
    assert merge_user_copies(list(reversed(copies)))[0] == merged
    assert merged.stats_opt_out == any(u.stats_opt_out for u in copies)
    assert merged.alerts_opt_in == all(u.alerts_opt_in for u in copies)
    assert merged.pubkey in ({copies[0].pubkey} if len({u.pubkey for u in copies}) == 1 else {""})


def test_merge_registry_dead_letters_every_extra_copy():
    opted_out = User("7", KEY_A, True, True, "20-29")
    pairs = [(opted_out, "raw-1"), (U, "raw-2"), (User("8", KEY_B, True, False, None), "raw-3")]
    with TestPipeline() as p:
        out = p | beam.Create(pairs) | MergeRegistry("users.jsonl")
        assert_that(out["users"], equal_to([opted_out, User("8", KEY_B, True, False, None)]), label="users")
        assert_that(out["dead_letters"] | beam.Map(lambda d: (d.source, d.error, d.raw)), equal_to([(
            "users.jsonl",
            "duplicate user_id 7: 2 copies in the registry, merged into one record read the most private way "
            "(stats_opt_out differs: kept opted out); this copy is not used on its own",
            "raw-2")]), label="dead")


def _tweet(tweet_id, ts=1795132800.0, text="x"):
    return Tweet(tweet_id, "1", ts, text, None, [], None, None, False, None, None)


def test_a_repeated_tweet_id_is_used_once_and_dead_lettered_after():
    pairs = [(_tweet("5"), "a"), (_tweet("6"), "b"), (_tweet("5"), "a")]
    with TestPipeline() as p:
        out = p | beam.Create(pairs) | DedupeTweets("tweets.jsonl", 3600.0)
        assert_that(out["tweets"] | beam.Map(lambda t: t.tweet_id), equal_to(["5", "6"]), label="tweets")
        assert_that(out["dead_letters"] | beam.Map(lambda d: (d.error, d.raw)), equal_to([(
            "duplicate tweet id 5: already received, the first copy is the one used", "a")]), label="dead")


def test_streaming_dedupe_forgets_an_id_after_its_horizon():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    t0 = 1795132800.0
    stream = (TestStream()
              .add_elements([TimestampedValue((_tweet("5", t0), "first"), t0)])
              .add_elements([TimestampedValue((_tweet("5", t0), "again"), t0)])
              .advance_watermark_to(t0 + 100)
              .add_elements([TimestampedValue((_tweet("5", t0 + 90), "within"), t0 + 90)])
              .advance_watermark_to(t0 + 1000)  # the id's state is cleared at t0 + 600
              .add_elements([TimestampedValue((_tweet("5", t0 + 1001), "much later"), t0 + 1001)])
              .advance_watermark_to_infinity())
    with TestPipeline(options=options) as p:
        out = p | stream | DedupeTweets("tweets", 600.0)
        assert_that(out["tweets"] | beam.Map(lambda t: t.ts), equal_to([t0, t0 + 1001]), label="tweets")
        assert_that(out["dead_letters"] | beam.Map(lambda d: d.raw), equal_to(["again", "within"]), label="dead")


def test_pings_of_unregistered_users_are_dead_letters_with_their_raw_line():
    ping = lambda user: Ping(user, 1795132800.0, 35.6, 139.7, 10.0, "gps")  # noqa: E731
    with TestPipeline() as p:
        users = p | "Users" >> beam.Create([U])
        pings = p | "Pings" >> beam.Create([(ping("7"), "p7"), (ping("9"), "p9")])
        out = {"pings": pings, "users": users} | KeepRegisteredPings("pings.jsonl")
        assert_that(out["pings"], equal_to([ping("7")]), label="pings")
        assert_that(out["dead_letters"] | beam.Map(lambda d: (d.source, d.error, d.raw)), equal_to([(
            "pings.jsonl", "user_id 9 is not in the user registry: the ping places no one", "p9")]), label="dead")

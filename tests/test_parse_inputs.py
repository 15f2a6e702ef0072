"""ParseInputs and the file sources: every line ends in exactly one place."""
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings, strategies as st

from pipelines import sources
from schemas.proofs import new_keypair
from schemas.records import DeadLetter, Ping, User
from core.inputs import classify
from transforms.parse_inputs import ParseInputs

ORIGINS = {"users": "users.jsonl", "pings": "pings.jsonl", "taps": "taps.jsonl", "tweets": "tweets.jsonl"}
GOOD_PING = {"user_id": "7", "ts": "2026-11-20T00:00:00Z", "lat": 35.6, "lng": 139.7}
BAD_LINES = {
    "{not json": "malformed JSON",
    "": "empty line",
    json.dumps(dict(GOOD_PING, lat=91)): "lat: 91.0 out of range [-90, 90]",
    json.dumps(dict(GOOD_PING, lat="35.6")): "lat: expected a number, got str",
    '{"user_id": "7", "ts": "2026-11-20T00:00:00Z", "lat": NaN, "lng": 1}': "lat: nan is not finite",
    json.dumps({"user_id": "7", "lat": 1, "lng": 1}): "missing required field 'ts'",
    "[1, 2]": "expected a JSON object, got list",
    "x" * (10 * 1024 * 1024): "exceeds the 1048576-byte limit",
}


def test_classify_sends_each_bad_line_to_dead_letters_with_its_reason():
    for line, reason in BAD_LINES.items():
        tag, value = classify("pings", "pings.jsonl", line.encode())
        assert tag == "dead_letters"
        assert value.source == "pings.jsonl"
        assert reason in value.error, (line[:40], value.error)
        assert len(value.raw) <= 64 * 1024 + 40  # a huge line is kept truncated, not whole


def test_classify_good_ping_is_typed_with_utc_epoch():
    tag, value = classify("pings", "pings.jsonl", json.dumps(GOOD_PING).encode())
    assert tag == "pings"
    assert value == Ping(user_id="7", ts=1795132800.0, lat=35.6, lng=139.7, accuracy_m=None, source=None)


PUBKEY = new_keypair(bytes(32))[1]


def test_parse_inputs_routes_every_line_exactly_once():
    user = {"user_id": "7", "pubkey": PUBKEY, "alerts_opt_in": True, "stats_opt_out": False}
    raw = [("users", json.dumps(user).encode()), ("pings", json.dumps(GOOD_PING).encode())]
    raw += [("pings", line.encode()) for line in BAD_LINES]
    raw += [("tweets", b'{"limit": {"track": 3}}'), ("gossip", b"{}")]
    with TestPipeline() as p:
        out = p | beam.Create(raw) | ParseInputs(ORIGINS)
        assert_that(out["users"], equal_to([User("7", PUBKEY, True, False, None)]), label="users")
        assert_that(out["pings"] | beam.Map(lambda r: r.user_id), equal_to(["7"]), label="pings")
        assert_that(out["taps"], equal_to([]), label="taps")
        assert_that(out["dead_letters"] | beam.Map(lambda d: d.source),
                    equal_to(["pings.jsonl"] * len(BAD_LINES) + ["tweets.jsonl", "gossip"]), label="dead")


def test_parsed_events_carry_their_event_time():
    with TestPipeline() as p:
        out = p | beam.Create([("pings", json.dumps(GOOD_PING).encode())]) | ParseInputs(ORIGINS)
        stamped = out["pings"] | beam.Map(lambda r, t=beam.DoFn.TimestampParam: float(t))
        assert_that(stamped, equal_to([1795132800.0]))


@settings(max_examples=200, deadline=None)
@given(times=st.lists(st.floats(0, 10_000, allow_nan=False), max_size=300),
       disorder=st.floats(0, 120), seed=st.integers(0, 2**16))
def test_replay_schedule_delivers_everything_and_nothing_late(times, disorder, seed):
    events = [(t, i) for i, t in enumerate(times)]
    delivered, watermark = [], float("-inf")
    for step, value in sources.replay_schedule(events, disorder, seed, step_s=30.0):
        if step == "elements":
            for tv in value:
                assert float(tv.timestamp) >= watermark - 1e-3  # never behind the watermark
                delivered.append(tv.value)
        else:
            assert value >= watermark
            watermark = value
    assert sorted(delivered) == list(range(len(times)))


def test_replay_schedule_shuffles_within_the_disorder_bound():
    events = [(float(t), t) for t in range(1000)]
    order = [tv.value for step, batch in sources.replay_schedule(events, 30.0, 1) if step == "elements"
             for tv in batch]
    assert order != sorted(order)
    assert all(abs(order[i] - i) <= 31 for i in range(len(order)))


def test_input_files_names_what_is_missing(tmp_path):
    for kind in ("users", "pings", "tweets"):
        (tmp_path / f"{kind}.jsonl").write_text("")
    with pytest.raises(ValueError, match="missing taps.jsonl"):
        sources.input_files(str(tmp_path))
    (tmp_path / "taps.jsonl.gz").write_bytes(b"")
    assert sources.input_files(str(tmp_path))["taps"] == [str(tmp_path / "taps.jsonl.gz")]

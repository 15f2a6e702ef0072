"""Tests of the synthetic world generator (synthetic/*, pipelines/generate.py).

One tiny world (40 users x 3 hours) is generated once per module and checked
against the contract and against its own truth: every line parses, every true
follow is backed by exactly two valid signed reports, every position is in the
service area, both firehose formats and their quirks occur, deletes and
retweets point at real tweets, and every happening has its opening burst.
"""
from __future__ import annotations

import base64
import calendar
import collections
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings, strategies as st

from schemas import proofs
from schemas.errors import InvalidRecord
from schemas.parse import parse_line
from schemas.records import Follow, TapReport, to_json_dict
from schemas.service_area import contains
from schemas.timefmt import format_rfc3339, parse_rfc3339, parse_twitter_v1
from schemas.touch import follow_for_touch
from schemas.compliance import KINDS as COMPLIANCE_KINDS
from schemas.tweets import normalize_hashtag
from synthetic import adversary, clock, geo, twitter
from synthetic.world import INPUT_FILES, TRUTH_FILES, write_world
from core import pairing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(users=40, hours=3, seed=42)


def _read(world, name):
    with open(os.path.join(world, name), encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh]


def _jsonl(world, name):
    return [json.loads(line) for line in _read(world, name)]


def _digest(world):
    out = {}
    for name in INPUT_FILES + TRUTH_FILES + ("truth/manifest.json",):
        with open(os.path.join(world, name), "rb") as fh:
            out[name] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("world"))
    counts = write_world(out, **TINY)
    return out, counts


@pytest.fixture(scope="module")
def tweets(world):
    return _jsonl(world[0], "tweets.jsonl")


def _v1_statuses(tweets):
    return [t for t in tweets if "id_str" in t]


def _v2_objects(tweets):
    return [t for t in tweets if "data" in t and "id" in t["data"]]


def _compliance(tweets):
    """The compliance messages: v1.1's top-level ones and v2's ``{"data": {"<event>": …}}``."""
    return [t for t in tweets if "id_str" not in t and not ("data" in t and "id" in t["data"])]


def _compliance_ms(t) -> int:
    body = next(iter(t["data"].values())) if "data" in t else next(iter(t.values()))
    return int(body["timestamp_ms"]) if "timestamp_ms" in body else int(parse_rfc3339(body["event_at"]) * 1000)


def _delete_notices(tweets):
    """(tweet id, author id, millis) of every delete notice, v1.1 and v2 forms."""
    out = []
    for t in tweets:
        if "delete" in t:
            out.append((t["delete"]["status"]["id_str"], t["delete"]["status"]["user_id_str"],
                        int(t["delete"]["timestamp_ms"])))
        elif "delete" in t.get("data", {}):
            tweet = t["data"]["delete"]["tweet"]
            out.append((tweet["id"], tweet["author_id"], _compliance_ms(t)))
    return out


def _all_originals(tweets):
    """tweet id -> (author id, unix seconds) of every tweet object, nested originals included."""
    out = {}
    for t in tweets:
        if "id_str" in t:
            out[t["id_str"]] = (t["user"]["id_str"], parse_twitter_v1(t["created_at"]))
        elif "data" in t and "id" in t["data"]:
            out[t["data"]["id"]] = (t["data"]["author_id"], parse_rfc3339(t["data"]["created_at"]))
    return out


# ---- determinism and bookkeeping ----------------------------------------------------------

def test_same_arguments_give_byte_identical_files_and_another_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    write_world(str(again), **TINY)
    write_world(str(other), **{**TINY, "seed": 43})
    first = _digest(world[0])
    assert _digest(str(again)) == first
    differing = {name for name, digest in _digest(str(other)).items() if digest != first[name]}
    assert set(INPUT_FILES) <= differing


def test_manifest_and_returned_counts_match_the_files(world):
    out, counts = world
    manifest = json.loads(open(os.path.join(out, "truth", "manifest.json"), encoding="utf-8").read())
    assert manifest["seed"] == 42
    assert manifest["params"] == {"users": 40, "hours": 3, "seed": 42, "start": "2026-11-19T15:00:00.000Z"}
    for name in INPUT_FILES + TRUTH_FILES:
        assert counts[name] == manifest["counts"][name] == len(_read(out, name)), name
    assert counts["users.jsonl"] == 40


# ---- every line is valid input --------------------------------------------------------------

@pytest.mark.parametrize("source", ["users", "pings", "taps"])
def test_every_line_parses(world, source):
    lines = _read(world[0], f"{source}.jsonl")
    assert lines
    for line in lines:
        parse_line(source, line)  # raises InvalidRecord on any invalid line


def test_every_tweet_line_parses(world):
    kinds = collections.Counter()
    for line in _read(world[0], "tweets.jsonl"):
        record = parse_line("tweets", line)
        kinds[getattr(record, "kind", type(record).__name__)] += 1
    # tweets, and every compliance message kind (synthetic.compliance guarantees one of each)
    assert kinds["Tweet"] > 0 and set(kinds) - {"Tweet"} == set(COMPLIANCE_KINDS)


def test_parsed_tweets_keep_location_hashtags_and_retweet_links(world, tweets):
    parsed = [parse_line("tweets", line) for line in _read(world[0], "tweets.jsonl")]
    by_id = {t.tweet_id: t for t in parsed if type(t).__name__ == "Tweet"}
    happenings = _jsonl(world[0], "truth/happenings.jsonl")
    for h in happenings:
        tagged = [by_id[i] for i in h["event_tweet_ids"] if i in by_id and h["hashtag"] in by_id[i].hashtags]
        assert len(tagged) >= 3, h["happening_id"]
    assert any(t.coarse for t in by_id.values())
    assert any(t.lat is not None and not t.coarse for t in by_id.values())
    assert any(t.lat is None for t in by_id.values())
    for t in by_id.values():
        if t.retweet_of is not None:
            assert t.retweet_of in by_id
            assert by_id[t.retweet_of].text in t.text or t.text == by_id[t.retweet_of].text


def test_users_are_unique_with_valid_keys_and_plausible_flags(world):
    users = _jsonl(world[0], "users.jsonl")
    assert len({u["user_id"] for u in users}) == len(users)
    for u in users:
        assert len(base64.b64decode(u["pubkey"])) == 32
    assert sum(u["alerts_opt_in"] for u in users) > len(users) * 0.6
    assert sum(u["stats_opt_out"] for u in users) < len(users) * 0.2
    assert sum("age_band" in u for u in users) > len(users) * 0.6


# ---- taps and the true follows --------------------------------------------------------------

def test_every_true_follow_has_exactly_two_matching_signed_reports(world):
    out = world[0]
    pubkeys = {u["user_id"]: u["pubkey"] for u in _jsonl(out, "users.jsonl")}
    reports = [parse_line("taps", line) for line in _read(out, "taps.jsonl")]
    by_nonce = collections.defaultdict(list)
    for r in reports:
        by_nonce[r.nonce].append(r)
    follows = _jsonl(out, "truth/follows.jsonl")
    assert follows
    assert follows == sorted(follows, key=lambda f: (f["user_a"], f["user_b"], f["nonce"]))
    for f in follows:
        pair = by_nonce[f["nonce"]]
        assert len(pair) == 2
        x, y = pair
        assert {x.user_id, y.user_id} == {f["user_a"], f["user_b"]} and f["user_a"] < f["user_b"]
        assert x.peer_user_id == y.user_id and y.peer_user_id == x.user_id
        for r in pair:
            assert proofs.verify_claim(pubkeys[r.user_id], r.proof, r.user_id, r.peer_user_id, r.nonce)
            assert proofs.verify_claim(pubkeys[r.peer_user_id], r.peer_proof, r.user_id, r.peer_user_id, r.nonce)
        assert x.proof == y.peer_proof and y.proof == x.peer_proof
        assert to_json_dict(follow_for_touch(x, y)) == f


def test_taps_are_genuine_pairs_and_each_pair_is_followed_once_at_its_first_touch(world):
    out = world[0]
    reports = [parse_line("taps", line) for line in _read(out, "taps.jsonl")]
    pubkeys = {u["user_id"]: u["pubkey"] for u in _jsonl(out, "users.jsonl")}
    assert len({r.tap_id for r in reports}) == len(reports)
    by_nonce = collections.defaultdict(list)
    for r in reports:
        by_nonce[r.nonce].append(r)
    touches_per_pair = collections.defaultdict(list)
    for nonce, pair in by_nonce.items():
        assert len(pair) == 2, "every touch is reported by both phones"
        x, y = pair
        t = proofs.nonce_time(nonce)
        assert abs(x.ts - y.ts) <= 10.0 and abs(x.ts - t) <= 10.0 and abs(y.ts - t) <= 10.0
        assert geo.distance_m(x.lat, x.lng, y.lat, y.lng) < 10.0
        assert (x.lat, x.lng) != (y.lat, y.lng)
        for r in pair:  # each phone signed its whole report, with an accuracy the pipeline accepts
            assert 3 <= r.accuracy_m <= 27
            assert proofs.verify_report_signature(pubkeys[r.user_id], r.report_sig, r)
        touches_per_pair[tuple(sorted((x.user_id, y.user_id)))].append(nonce)
    follows = {(f["user_a"], f["user_b"]): f for f in _jsonl(out, "truth/follows.jsonl")}
    assert set(follows) == set(touches_per_pair)
    for pair, nonces in touches_per_pair.items():
        first = min(nonces, key=proofs.nonce_time)
        assert follows[pair]["nonce"] == first
        assert parse_rfc3339(follows[pair]["established_at"]) == proofs.nonce_time(first)
    assert any(len(n) >= 2 for n in touches_per_pair.values()), "some friends touch twice"


# ---- positions ----------------------------------------------------------------------------

def test_every_position_is_inside_the_service_area(world, tweets):
    out = world[0]
    points = []
    points += [(p["lat"], p["lng"]) for p in _jsonl(out, "pings.jsonl")]
    points += [(t["lat"], t["lng"]) for t in _jsonl(out, "taps.jsonl")]
    points += [(h["lat"], h["lng"]) for h in _jsonl(out, "truth/happenings.jsonl")]
    boxes = []
    for t in _v1_statuses(tweets):
        for status in (t, t.get("retweeted_status")):
            if status and status["coordinates"]:
                lng, lat = status["coordinates"]["coordinates"]
                assert status["geo"]["coordinates"] == [lat, lng]
                points.append((lat, lng))
            if status and status["place"]:
                ring = status["place"]["bounding_box"]["coordinates"][0]
                boxes.append((ring[0][0], ring[0][1], ring[2][0], ring[2][1]))
    for t in _v2_objects(tweets):
        for data in [t["data"]] + t["includes"].get("tweets", []):
            if "coordinates" in data.get("geo", {}):
                lng, lat = data["geo"]["coordinates"]["coordinates"]
                points.append((lat, lng))
        boxes += [tuple(p["geo"]["bbox"]) for p in t["includes"].get("places", [])]
    assert boxes
    for west, south, east, north in boxes:
        assert west < east and south < north
        points += [(south, west), (north, east), ((south + north) / 2, (west + east) / 2)]
    outside = [p for p in points if not contains(*p)]
    assert not outside


def test_attendees_pings_put_them_at_the_venue_during_the_happening(world):
    out = world[0]
    happenings = {h["happening_id"]: h for h in _jsonl(out, "truth/happenings.jsonl")}
    pings = collections.defaultdict(list)
    for p in _jsonl(out, "pings.jsonl"):
        pings[p["user_id"]].append(p)
    attendance = _jsonl(out, "truth/attendance.jsonl")
    assert attendance
    for a in attendance:
        h = happenings[a["happening_id"]]
        lo, hi = parse_rfc3339(a["arrive"]), parse_rfc3339(a["leave"])
        assert lo <= hi
        during = [p for p in pings[a["user_id"]] if lo <= parse_rfc3339(p["ts"]) <= hi]
        if hi - lo >= 15 * 60:
            # Pinged every 3-6 minutes while there, mostly with metre-level fixes.
            assert len(during) >= (hi - lo) / 360.0 - 1
            precise = [p for p in during if p["source"] != "cell"]
            assert all(geo.distance_m(p["lat"], p["lng"], h["lat"], h["lng"]) <= h["radius_m"] + 3 * p["accuracy_m"]
                       for p in precise)


def test_pings_are_in_time_order_with_the_documented_sources_and_accuracies(world):
    pings = _jsonl(world[0], "pings.jsonl")
    times = [p["ts"] for p in pings]
    assert times == sorted(times)
    ranges = {"gps": (5, 30), "wifi": (30, 80), "cell": (300, 2000)}
    for p in pings:
        lo, hi = ranges[p["source"]]
        assert lo <= p["accuracy_m"] <= hi
    assert set(p["source"] for p in pings) == set(ranges)
    per_user = collections.Counter(p["user_id"] for p in pings)
    # 3 hours at one ping per 10-20 minutes (more at happenings).
    assert min(per_user.values()) >= 8 and len(per_user) == 40


# ---- the firehose -------------------------------------------------------------------------

def test_both_api_versions_and_their_quirks_are_present(tweets):
    v1, v2, compliance = _v1_statuses(tweets), _v2_objects(tweets), _compliance(tweets)
    assert v1 and v2 and compliance
    assert len(v1) + len(v2) + len(compliance) == len(tweets)
    # compliance messages in both forms: v1.1 top-level and v2 events
    assert any("data" in t for t in compliance) and any("data" not in t for t in compliance)
    assert any(t["coordinates"] for t in v1)
    assert any(t["place"] and not t["coordinates"] for t in v1), "v1.1 place-only tweet"
    assert any(not t["place"] and not t["coordinates"] and "retweeted_status" not in t for t in v1)
    assert any(t.get("truncated") and "extended_tweet" in t for t in v1)
    assert any("retweeted_status" in t for t in v1)
    assert any("coordinates" in t["data"].get("geo", {}) for t in v2)
    assert any(set(t["data"].get("geo", {})) == {"place_id"} for t in v2), "v2 place-only tweet"
    assert any("referenced_tweets" in t["data"] for t in v2)
    assert any("note_tweet" in t["data"] for t in v2) or any("note_tweet" in i for t in v2 for i in t["includes"].get("tweets", []))
    for t in v2:
        place_id = t["data"].get("geo", {}).get("place_id")
        if place_id:
            assert place_id in {p["id"] for p in t["includes"]["places"]}


def test_ids_are_snowflakes_consistent_with_created_at(tweets):
    for t in _v1_statuses(tweets):
        millis = twitter.snowflake_millis(int(t["id_str"]))
        assert t["id"] == int(t["id_str"])
        assert int(t["timestamp_ms"]) == millis
        assert calendar.timegm(time.strptime(t["created_at"], "%a %b %d %H:%M:%S +0000 %Y")) == millis // 1000
    for t in _v2_objects(tweets):
        millis = twitter.snowflake_millis(int(t["data"]["id"]))
        assert parse_rfc3339(t["data"]["created_at"]) == millis // 1000
    ids = [t["id_str"] for t in _v1_statuses(tweets)] + [t["data"]["id"] for t in _v2_objects(tweets)]
    assert len(set(ids)) == len(ids)


def test_tweets_are_in_time_order(tweets):
    compliance = _compliance(tweets)
    def millis(t):
        if t in compliance:
            return _compliance_ms(t)
        return twitter.snowflake_millis(int(t["id_str"] if "id_str" in t else t["data"]["id"]))
    order = [millis(t) for t in tweets]
    assert order == sorted(order)


def test_deletes_reference_earlier_tweets_and_match_the_truth(world, tweets):
    originals = _all_originals(tweets)
    notices = _delete_notices(tweets)
    truth = _jsonl(world[0], "truth/deleted.jsonl")
    assert [(tweet_id, author) for tweet_id, author, _ms in notices] == \
        [(d["tweet_id"], d["author_id"]) for d in sorted(truth, key=lambda d: d["deleted_at"])]
    event_ids = {i for h in _jsonl(world[0], "truth/happenings.jsonl") for i in h["event_tweet_ids"]}
    for tweet_id, author_id, ms in notices:
        assert tweet_id in originals
        author, created = originals[tweet_id]
        assert author == author_id
        assert created < ms / 1000.0 <= created + 3600
    assert any(tweet_id in event_ids for tweet_id, _a, _ms in notices), "some deleted tweets are event tweets"


def test_retweets_reference_earlier_undeleted_tweets(world, tweets):
    originals = _all_originals(tweets)
    top_level = {t["id_str"] for t in _v1_statuses(tweets)} | {t["data"]["id"] for t in _v2_objects(tweets)}
    deleted = {d["tweet_id"] for d in _jsonl(world[0], "truth/deleted.jsonl")}
    retweets = []
    for t in _v1_statuses(tweets):
        if "retweeted_status" in t:
            retweets.append((t["id_str"], t["retweeted_status"]["id_str"], t["coordinates"]))
            assert t["text"].startswith("RT @" + t["retweeted_status"]["user"]["screen_name"])
    for t in _v2_objects(tweets):
        for ref in t["data"].get("referenced_tweets", []):
            assert ref["type"] == "retweeted"
            assert ref["id"] in {i["id"] for i in t["includes"]["tweets"]}
            retweets.append((t["data"]["id"], ref["id"], t["data"].get("geo")))
    assert retweets
    for rt_id, orig_id, location in retweets:
        assert orig_id in top_level, "the original was itself in the firehose"
        assert orig_id not in deleted
        assert originals[orig_id][1] < originals[rt_id][1]
        assert location is None


def test_every_happening_has_an_opening_burst_from_three_people_at_the_venue(world, tweets):
    out = world[0]
    by_id = {}
    for t in _v1_statuses(tweets):
        coords = t["coordinates"]["coordinates"] if t["coordinates"] else None
        tags = [h["text"] for h in t.get("extended_tweet", t)["entities"]["hashtags"]]
        by_id[t["id_str"]] = (t["user"]["id_str"], twitter.snowflake_millis(int(t["id_str"])) / 1000, coords, tags)
    for t in _v2_objects(tweets):
        d = t["data"]
        coords = d.get("geo", {}).get("coordinates", {}).get("coordinates")
        tags = [h["tag"] for h in d.get("note_tweet", d).get("entities", {}).get("hashtags", [])]
        by_id[d["id"]] = (d["author_id"], twitter.snowflake_millis(int(d["id"])) / 1000, coords, tags)
    deleted = {d["tweet_id"] for d in _jsonl(out, "truth/deleted.jsonl")}
    happenings = _jsonl(out, "truth/happenings.jsonl")
    assert {h["kind"] for h in happenings} == {"concert", "sale", "festival", "incident"}
    assert len({h["hashtag"] for h in happenings}) == len(happenings)
    assert all(normalize_hashtag(h["hashtag"]) == h["hashtag"] for h in happenings)
    attendance = collections.defaultdict(set)
    for a in _jsonl(out, "truth/attendance.jsonl"):
        attendance[a["happening_id"]].add(a["user_id"])
    for h in happenings:
        assert len(set(h["event_tweet_ids"])) == len(h["event_tweet_ids"]) and h["event_tweet_ids"]
        start = parse_rfc3339(h["start"])
        near = [by_id[i] for i in h["event_tweet_ids"]
                if i not in deleted and by_id[i][2] is not None and h["hashtag"] in by_id[i][3]
                and geo.distance_m(by_id[i][2][1], by_id[i][2][0], h["lat"], h["lng"]) <= h["radius_m"]
                and start <= by_id[i][1] <= start + 20 * 60]
        # Other accounts tweet about it too; the burst comes from three users who are there.
        near = sorted((t, author) for author, t, _, _ in near if author in attendance[h["happening_id"]])
        burst = max(len({a for t2, a in near if t <= t2 <= t + 15 * 60}) for t, _ in near)
        assert burst >= 3, h["happening_id"]


# ---- formatting helpers -------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1_200_000_000_000, max_value=4_000_000_000_000))
def test_fast_time_formatters_equal_the_reference_ones(millis):
    assert clock.rfc3339_ms(millis) == format_rfc3339(millis / 1000.0)
    seconds = millis // 1000
    assert parse_twitter_v1(clock.twitter_v1(seconds)) == seconds
    assert clock.twitter_v1(seconds) == time.strftime("%a %b %d %H:%M:%S +0000 %Y", time.gmtime(seconds))
    assert parse_rfc3339(clock.twitter_v2(seconds)) == seconds


def test_snowflakes_are_unique_within_a_millisecond_and_carry_its_time():
    minter = twitter.SnowflakeMinter()
    ids = [minter.mint(1_795_000_000_123) for _ in range(5)]
    assert len(set(ids)) == 5 and ids == sorted(ids)
    assert {twitter.snowflake_millis(i) for i in ids} == {1_795_000_000_123}
    assert ids[0] == (1_795_000_000_123 - 1288834974657) << 22


def test_long_v1_text_is_truncated_with_the_rest_in_extended_tweet():
    author = twitter.Author("12345", "taro", "太郎", 1, 1)
    text = "あ" * 150 + " #最後のタグ"
    spec = twitter.TweetSpec(twitter.SnowflakeMinter().mint(1_795_000_000_000), 1_795_000_000_000, author,
                             text, "ja", ("最後のタグ",), None, None, None, "v1", 0)
    status = json.loads(twitter.render(spec))
    assert status["truncated"] is True and len(status["text"]) <= 140
    assert status["entities"]["hashtags"] == []  # the tag is past the cut
    assert status["extended_tweet"]["full_text"] == text
    assert status["extended_tweet"]["entities"]["hashtags"] == [{"text": "最後のタグ", "indices": [151, 157]}]
    v2 = json.loads(twitter.render(spec._replace(api="v2")))
    assert v2["data"]["note_tweet"]["text"] == text and len(v2["data"]["text"]) <= 140
    assert v2["data"]["note_tweet"]["entities"]["hashtags"] == [{"start": 151, "end": 157, "tag": "最後のタグ"}]


def test_scatter_and_bboxes_stay_inside_the_service_area():
    import random
    rng = random.Random(1)
    haneda = (35.5494, 139.7798)  # near the polygon's edge
    for _ in range(500):
        assert contains(*geo.scatter(rng, *haneda, 3000.0))
    west, south, east, north = geo.bbox_inside(*haneda, 5000.0)
    assert all(contains(a, b) for a, b in ((south, west), (north, east), (south, east), (north, west)))


# ---- the command line ---------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipelines.generate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, reason", [
    (["--users", "1"], "--users must be an integer >= 2"),
    (["--hours", "0"], "--hours must be > 0"),
    (["--hours", "-3"], "--hours must be > 0"),
    (["--users", "many"], "invalid int value"),
    (["--start", "yesterday"], "is not an RFC 3339 timestamp"),
])
def test_cli_rejects_bad_arguments_with_one_line(tmp_path, args, reason):
    result = _cli("--output", str(tmp_path / "w"), *args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and "apitools" not in line]
    assert len(lines) == 1 and reason in lines[0], result.stderr


def test_cli_rejects_an_unwritable_output(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = _cli("--output", str(blocker / "world"), "--users", "5", "--hours", "1")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and "apitools" not in line]
    assert len(lines) == 1 and "cannot write" in lines[0], result.stderr


def test_cli_writes_the_same_world_as_the_library(world, tmp_path):
    result = _cli("--output", str(tmp_path / "w"), "--users", "40", "--hours", "3", "--seed", "42", "--quiet")
    assert result.returncode == 0, result.stderr
    assert _digest(str(tmp_path / "w")) == _digest(world[0])


# ---- any small world keeps the invariants ---------------------------------------------------

@settings(max_examples=8, deadline=None)
@given(users=st.integers(min_value=2, max_value=12),
       hours=st.sampled_from([0.1, 0.5, 1, 2.5]),
       seed=st.integers(min_value=0, max_value=2**31),
       start=st.sampled_from(["2026-11-20T00:00:00+09:00", "2026-07-04T12:30:00Z", "2027-01-01T08:00:00+09:00"]))
def test_any_small_world_is_valid_and_consistent_with_its_truth(tmp_path_factory, users, hours, seed, start):
    out = str(tmp_path_factory.mktemp("small"))
    counts = write_world(out, users=users, hours=hours, seed=seed, start=start)
    t0 = parse_rfc3339(start)
    user_ids = {parse_line("users", line).user_id for line in _read(out, "users.jsonl")}
    assert len(user_ids) == users == counts["users.jsonl"]
    for line in _read(out, "pings.jsonl"):
        ping = parse_line("pings", line)
        assert ping.user_id in user_ids and t0 <= ping.ts < t0 + hours * 3600 and contains(ping.lat, ping.lng)
    reports = [parse_line("taps", line) for line in _read(out, "taps.jsonl")]
    by_nonce = collections.defaultdict(list)
    for r in reports:
        assert contains(r.lat, r.lng)
        by_nonce[r.nonce].append(r)
    assert all(len(pair) == 2 for pair in by_nonce.values())
    follows = [Follow(**{**f, "established_at": parse_rfc3339(f["established_at"])})
               for f in _jsonl(out, "truth/follows.jsonl")]
    assert {(f.user_a, f.user_b) for f in follows} == {tuple(sorted((p[0].user_id, p[1].user_id)))
                                                     for p in by_nonce.values()}
    for f in follows:
        assert f == follow_for_touch(*by_nonce[f.nonce])
    for line in _read(out, "tweets.jsonl"):
        parse_line("tweets", line)
    for h in _jsonl(out, "truth/happenings.jsonl"):
        assert t0 <= parse_rfc3339(h["start"]) < parse_rfc3339(h["end"]) <= t0 + hours * 3600



# ---- the adversarial world ------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hostile"))
    write_world(out, **TINY, adversarial=True)
    return out


def test_an_adversarial_world_is_the_clean_world_plus_labelled_additions(world, hostile_world):
    clean = world[0]
    for name in ("truth/follows.jsonl", "truth/happenings.jsonl", "truth/attendance.jsonl", "truth/deleted.jsonl"):
        assert _read(hostile_world, name) == _read(clean, name), name
    invalid = _jsonl(hostile_world, "truth/invalid_lines.jsonl")
    attacks = _jsonl(hostile_world, "truth/tap_attacks.jsonl")
    for source in ("users", "pings", "taps", "tweets"):
        lines = _read(hostile_world, f"{source}.jsonl")
        bad_numbers = {i["line"] for i in invalid if i["file"] == f"{source}.jsonl"}
        kept = [line for n, line in enumerate(lines, 1) if n not in bad_numbers]
        clean_lines = _read(clean, f"{source}.jsonl")
        if source == "taps":
            duplicates = sum(a["kind"] == "duplicate" for a in attacks)
            assert len(kept) == len(clean_lines) + len(attacks)
            assert set(clean_lines) <= set(kept)
            assert len(kept) - len(set(kept)) == duplicates
        else:
            assert kept == clean_lines, source
        for n in bad_numbers:
            with pytest.raises(InvalidRecord):
                parse_line(source, lines[n - 1])
    assert {i["kind"] for i in invalid} >= {"truncated_json", "lat_out_of_range", "limit_notice", "bad_nonce"}


def test_no_tap_attack_could_confirm_a_follow(hostile_world):
    out = hostile_world
    invalid = collections.defaultdict(set)
    for i in _jsonl(out, "truth/invalid_lines.jsonl"):
        invalid[i["file"]].add(i["line"])
    users = [parse_line("users", line) for n, line in enumerate(_read(out, "users.jsonl"), 1)
             if n not in invalid["users.jsonl"]]
    pubkeys = {u.user_id: u.pubkey for u in users}
    reports = [parse_line("taps", line) for n, line in enumerate(_read(out, "taps.jsonl"), 1)
               if n not in invalid["taps.jsonl"]]
    attacks = _jsonl(out, "truth/tap_attacks.jsonl")
    assert {a["kind"] for a in attacks} == set(adversary.TAP_ATTACKS)
    attack_ids = collections.Counter(a["tap_id"] for a in attacks)
    genuine_by_nonce = collections.defaultdict(list)
    added_ids = {a["tap_id"] for a in attacks if a["kind"] != "duplicate"}  # a duplicate's first copy is genuine
    for tap_id, r in {r.tap_id: r for r in reports}.items():
        if tap_id not in added_ids:
            genuine_by_nonce[r.nonce].append(r)
    confirmed = {nonce for nonce, pair in genuine_by_nonce.items() if len(pair) == 2}
    follows_by_nonce = {f["nonce"]: f for f in _jsonl(out, "truth/follows.jsonl")}
    by_id = collections.defaultdict(list)
    for r in reports:
        by_id[r.tap_id].append(r)

    def valid(r):
        return (r.user_id != r.peer_user_id and r.user_id in pubkeys and r.peer_user_id in pubkeys
                and abs(r.ts - proofs.nonce_time(r.nonce)) <= 10.0
                and r.accuracy_m is not None and r.accuracy_m <= 100
                and proofs.nonce_time(r.nonce) <= time.time() + 300
                and contains(*proofs.signed_lat_lng(r))
                and proofs.verify_report_signature(pubkeys[r.user_id], r.report_sig, r)
                and proofs.verify_claim(pubkeys[r.user_id], r.proof, r.user_id, r.peer_user_id, r.nonce)
                and proofs.verify_claim(pubkeys[r.peer_user_id], r.peer_proof, r.user_id, r.peer_user_id, r.nonce))

    for a in attacks:
        r = by_id[a["tap_id"]][-1]
        kind = a["kind"]
        if kind == "duplicate":
            # The same report twice: one copy is genuine, the other must be ignored.
            assert len(by_id[a["tap_id"]]) == 2 and r.nonce in confirmed
        elif kind == "replay":
            # Valid on its own, but its touch was already confirmed by the genuine pair.
            assert valid(r) and r.nonce in confirmed and len(by_id[a["tap_id"]]) == 1
        elif kind == "one_sided":
            assert valid(r) and r.nonce not in genuine_by_nonce
            assert sum(x.nonce == r.nonce for x in reports) == 1
        elif kind == "far_apart":
            # Each report is valid on its own; the pair is 10 km apart, far beyond 50 m + accuracies.
            x, y = [x for x in reports if x.nonce == r.nonce]
            assert valid(x) and valid(y) and r.nonce not in genuine_by_nonce
            assert pairing.pair_distance(x, y)[0] > 9000
        else:
            assert not valid(r), kind
    # Every pair the truth follows still has its two genuine reports, untouched by the attacks.
    for nonce, f in follows_by_nonce.items():
        assert nonce in confirmed and to_json_dict(follow_for_touch(*genuine_by_nonce[nonce])) == f


def test_a_compressed_world_holds_the_same_lines_deterministically(world, tmp_path):
    import gzip
    out = str(tmp_path / "gz")
    counts = write_world(out, **TINY, compress=True)
    for name in INPUT_FILES:
        with gzip.open(os.path.join(out, name + ".gz"), "rt", encoding="utf-8") as fh:
            assert fh.read().splitlines() == _read(world[0], name), name
        assert counts[name + ".gz"] == len(_read(world[0], name))
        assert not os.path.exists(os.path.join(out, name))
    first = {name: open(os.path.join(out, name + ".gz"), "rb").read() for name in INPUT_FILES}
    write_world(out, **TINY, compress=True)
    assert {name: open(os.path.join(out, name + ".gz"), "rb").read() for name in INPUT_FILES} == first
    # Rewriting uncompressed into the same directory leaves no stale .gz twin for a reader to double-count.
    write_world(out, **TINY)
    assert not any(f.endswith(".gz") for f in os.listdir(out))


# ---- one tweet, two wire formats, one parsed record ----------------------------------------

_WORDS = st.sampled_from(["ライブ", "最高", "tokyo", "今日は", "sale", "渋谷で", "楽しい", "fun", "。", "！"])


@st.composite
def _tweet_specs(draw):
    tags = draw(st.lists(st.sampled_from(["渋谷ライブ", "Concert", "セール", "祭り", "tokyo"]), max_size=3, unique=True))
    words = draw(st.lists(_WORDS, min_size=1, max_size=80))
    for tag in tags:  # hashtags anywhere, possibly past the 140-character cut
        words.insert(draw(st.integers(0, len(words))), f"#{tag}")
    text = " ".join(words)
    millis = draw(st.integers(1_700_000_000_000, 1_900_000_000_000))
    author = twitter.Author(str(draw(st.integers(10**7, 2**62))), "taro", "山田 太郎", 1, 2)
    located = draw(st.sampled_from(["exact", "place", "none"]))
    place = twitter.Place("0123456789abcdef", "渋谷区", "Shibuya-ku, Tokyo", "city",
                          geo.bbox_inside(35.664, 139.698, 2000.0)) if located != "none" else None
    coords = (round(draw(st.floats(35.6, 35.7)), 6), round(draw(st.floats(139.6, 139.8)), 6)) \
        if located == "exact" else None
    minter = twitter.SnowflakeMinter()
    spec = twitter.TweetSpec(minter.mint(millis), millis, author, text, "ja", tuple(tags), coords, place, None,
                             "v1", draw(st.integers(0, 2)))
    if draw(st.booleans()):
        rter = twitter.Author(str(draw(st.integers(10**7, 2**62))), "hana", "花子", 1, 2)
        spec = twitter.TweetSpec(minter.mint(millis + 1000), millis + 1000, rter, f"RT @taro: {text}", "ja",
                                 tuple(tags), None, None, spec, "v1", 0)
    return spec


@settings(max_examples=150, deadline=None)
@given(_tweet_specs())
def test_v1_and_v2_renderings_of_a_tweet_parse_to_the_same_record(spec):
    v1 = parse_line("tweets", twitter.render(spec))
    v2 = parse_line("tweets", twitter.render(spec._replace(api="v2")))
    assert v1 == v2
    original = spec.retweet_of or spec
    assert v1.tweet_id == str(spec.tweet_id) and v1.author_id == spec.author.user_id
    assert v1.ts == spec.millis // 1000
    assert v1.text == original.text
    in_text_order = sorted(original.hashtags, key=lambda t: original.text.index("#" + t))
    assert v1.hashtags == [normalize_hashtag(t) for t in in_text_order]
    assert v1.retweet_of == (str(spec.retweet_of.tweet_id) if spec.retweet_of else None)
    if spec.coords is not None:
        assert (v1.lat, v1.lng, v1.coarse) == (spec.coords[0], spec.coords[1], False)
    elif spec.place is not None:
        west, south, east, north = spec.place.bbox
        assert v1.coarse and v1.lat == pytest.approx((south + north) / 2) and v1.lng == pytest.approx((west + east) / 2)
    else:
        assert v1.lat is None and v1.lng is None

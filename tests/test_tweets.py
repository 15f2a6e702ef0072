"""Tests of the firehose parser (schemas.tweets): v1.1, v2 and delete notices.

Run: .venv/bin/pytest tests/test_tweets.py -q
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import InvalidRecord
from schemas.parse import parse_line
from schemas.records import Tweet, TweetDelete
from schemas.tweets import normalize_hashtag, parse_tweet, snowflake_time

TWEET_ID = "1050118621198921728"
AUTHOR_ID = "6253282"
ORIGINAL_ID = "1050118000000000000"
ORIGINAL_AUTHOR_ID = "783214"
PLACE_ID = "01a9a39529b27f36"
CREATED_V1 = "Wed Oct 10 20:19:24 +0000 2018"
CREATED_V2 = "2018-10-10T20:19:24.000Z"
CREATED_TS = dt.datetime(2018, 10, 10, 20, 19, 24, tzinfo=dt.timezone.utc).timestamp()
# Tokyo-ish box whose edges and centre are exact binary fractions.
BOX_RING = [[[139.5, 35.5], [139.5, 36.0], [140.0, 36.0], [140.0, 35.5]]]
BOX_V2 = [139.5, 35.5, 140.0, 36.0]


def tweet(**fields) -> Tweet:
    """The expected record: the common defaults overridden by ``fields``."""
    base = dict(tweet_id=TWEET_ID, author_id=AUTHOR_ID, ts=CREATED_TS, text="Hello #World",
                lang="en", hashtags=["world"], lat=None, lng=None, coarse=False,
                place_id=None, retweet_of=None)
    base.update(fields)
    return Tweet(**base)


def v1(**overrides) -> dict:
    """A v1.1 status as the streaming API sends it, with fields overridden."""
    status = {
        "created_at": CREATED_V1, "id": int(TWEET_ID), "id_str": TWEET_ID,
        "text": "Hello #World", "truncated": False,
        "entities": {"hashtags": [{"text": "World", "indices": [6, 12]}], "urls": [],
                     "user_mentions": [], "symbols": []},
        "user": {"id": int(AUTHOR_ID), "id_str": AUTHOR_ID, "screen_name": "TwitterDev"},
        "geo": None, "coordinates": None, "place": None,
        "lang": "en", "timestamp_ms": "1539202764000",
    }
    status.update(overrides)
    return status


def v2(data=None, includes=None) -> dict:
    """A v2 stream message, with ``data`` fields overridden and ``includes`` given."""
    body = {"id": TWEET_ID, "author_id": AUTHOR_ID, "created_at": CREATED_V2,
            "text": "Hello #World", "lang": "en",
            "entities": {"hashtags": [{"start": 6, "end": 12, "tag": "World"}]}}
    body.update(data or {})
    message = {"data": body}
    if includes is not None:
        message["includes"] = includes
    return message


def v1_place(bbox=BOX_RING) -> dict:
    return {"id": PLACE_ID, "place_type": "city", "name": "Tokyo", "full_name": "Tokyo, Japan",
            "country_code": "JP",
            "bounding_box": None if bbox is None else {"type": "Polygon", "coordinates": bbox}}


def v2_place(bbox=BOX_V2) -> dict:
    return {"id": PLACE_ID, "full_name": "Tokyo, Japan",
            "geo": {"type": "Feature", "bbox": bbox, "properties": {}}}


def rejected(obj) -> str:
    with pytest.raises(InvalidRecord) as info:
        parse_tweet(obj)
    return str(info.value)


# ---- v1.1 location ------------------------------------------------------------------

def test_v1_coordinates_are_lng_lat():
    # The contract's check: GeoJSON [lng, lat] = [139.7, 35.6] is lat 35.6, lng 139.7.
    record = parse_tweet(v1(coordinates={"type": "Point", "coordinates": [139.7, 35.6]}))
    assert record == tweet(lat=35.6, lng=139.7)


def test_v1_geo_is_lat_lng_and_used_only_without_coordinates():
    assert parse_tweet(v1(geo={"type": "Point", "coordinates": [35.6, 139.7]})) == tweet(lat=35.6, lng=139.7)


def test_v1_coordinates_and_geo_agreeing_give_the_point_and_place_id():
    record = parse_tweet(v1(coordinates={"type": "Point", "coordinates": [139.7, 35.6]},
                            geo={"type": "Point", "coordinates": [35.6000004, 139.7]},
                            place=v1_place()))
    assert record == tweet(lat=35.6, lng=139.7, place_id=PLACE_ID)


def test_v1_coordinates_and_geo_disagreeing_are_rejected():
    # A producer that wrote geo in GeoJSON order: the two no longer describe one point.
    reason = rejected(v1(coordinates={"type": "Point", "coordinates": [13.4, 52.5]},
                         geo={"type": "Point", "coordinates": [13.4, 52.5]}))
    assert reason == ("inconsistent location: coordinates [lng, lat] = [13.4, 52.5] but "
                      "geo [lat, lng] = [13.4, 52.5]")
    # just beyond the tolerance is already two points
    reason = rejected(v1(coordinates={"type": "Point", "coordinates": [13.4, 52.5]},
                         geo={"type": "Point", "coordinates": [52.500002, 13.4]}))
    assert reason.startswith("inconsistent location")


def test_v1_place_only_is_located_at_box_centre_and_coarse():
    assert parse_tweet(v1(place=v1_place())) == tweet(lat=35.75, lng=139.75, coarse=True, place_id=PLACE_ID)


def test_v1_place_without_bounding_box_keeps_place_id_only():
    assert parse_tweet(v1(place=v1_place(bbox=None))) == tweet(place_id=PLACE_ID)


def test_no_location():
    assert parse_tweet(v1()) == tweet()
    assert parse_tweet(v2()) == tweet()


def test_place_box_across_antimeridian_is_centred_near_180():
    # Fiji-like box from 177°E eastwards to 178°W: its centre is 179.5°E, not 0.5°W.
    ring = [[[177.0, -19.0], [177.0, -16.0], [-178.0, -16.0], [-178.0, -19.0]]]
    expected = tweet(lat=-17.5, lng=179.5, coarse=True, place_id=PLACE_ID)
    assert parse_tweet(v1(place=v1_place(ring))) == expected
    assert parse_tweet(v2({"geo": {"place_id": PLACE_ID}},
                          {"places": [v2_place([177.0, -19.0, -178.0, -16.0])]})) == expected


@pytest.mark.parametrize("coordinates, reason", [
    ([139.7, 91.0], "coordinates.lat: 91.0 out of range [-90, 90]"),
    ([181.0, 35.6], "coordinates.lng: 181.0 out of range [-180, 180]"),
    ([139.7, math.nan], "coordinates.lat: nan is not finite"),
    ([math.inf, 35.6], "coordinates.lng: inf is not finite"),
    (["139.7", 35.6], "coordinates.lng: expected a number, got str"),
    ([139.7, True], "coordinates.lat: expected a number, got bool"),
    ([139.7], "coordinates.coordinates: expected [lng, lat], got [139.7]"),
    ([139.7, 35.6, 10.0], "coordinates.coordinates: expected [lng, lat], got [139.7, 35.6, 10.0]"),
    ("139.7,35.6", "coordinates.coordinates: expected [lng, lat], got '139.7,35.6'"),
])
def test_v1_bad_coordinates_are_rejected(coordinates, reason):
    assert rejected(v1(coordinates={"type": "Point", "coordinates": coordinates})) == reason


@pytest.mark.parametrize("field, value, reason", [
    ("coordinates", {"type": "Polygon", "coordinates": [1.0, 2.0]}, "coordinates.type: expected 'Point', got 'Polygon'"),
    ("coordinates", [139.7, 35.6], "coordinates: expected an object, got list"),
    ("geo", {"type": "Point", "coordinates": [91.0, 139.7]}, "geo.lat: 91.0 out of range [-90, 90]"),
    ("place", "Tokyo", "place: expected an object, got str"),
    ("place", {"name": "Tokyo"}, "missing required field 'place.id'"),
    ("place", {"id": PLACE_ID, "bounding_box": {"type": "Point", "coordinates": [1, 2]}},
     "place.bounding_box.type: expected 'Polygon', got 'Point'"),
    ("place", {"id": PLACE_ID, "bounding_box": {"type": "Polygon", "coordinates": []}},
     "place.bounding_box.coordinates: expected [[[lng, lat], ...]], got []"),
    ("place", {"id": PLACE_ID, "bounding_box": {"type": "Polygon", "coordinates": [[[139.5, 95.0]]]}},
     "place.bounding_box.coordinates[0][0].lat: 95.0 out of range [-90, 90]"),
    ("place", {"id": PLACE_ID, "bounding_box": {"type": "Polygon", "coordinates": [[[139.5, 35.0], [1]]]}},
     "place.bounding_box.coordinates[0][1]: expected [lng, lat], got [1]"),
])
def test_v1_bad_location_objects_are_rejected(field, value, reason):
    assert rejected(v1(**{field: value})) == reason


# ---- v1.1 text, hashtags, retweets, ids, time --------------------------------------

LONG_TEXT = ("A long tweet about the street festival in Shibuya tonight: food stalls, "
             "taiko drums, a parade at nine, and everyone is welcome to come along and "
             "join in the fun until late #Shibuya #Matsuri")


def test_v1_extended_tweet_full_text_and_its_entities_win():
    status = v1(text=LONG_TEXT[:137] + "…", truncated=True,
                entities={"hashtags": [{"text": "Shibuya", "indices": [0, 8]}]},  # of the cut text
                extended_tweet={"full_text": LONG_TEXT, "display_text_range": [0, len(LONG_TEXT)],
                                "entities": {"hashtags": [{"text": "Shibuya", "indices": [0, 0]},
                                                          {"text": "Matsuri", "indices": [0, 0]}]}})
    assert parse_tweet(status) == tweet(text=LONG_TEXT, hashtags=["shibuya", "matsuri"])


def test_v1_extended_tweet_without_entities_falls_back_to_top_level_entities():
    status = v1(truncated=True, extended_tweet={"full_text": "Hello #World and more"})
    assert parse_tweet(status) == tweet(text="Hello #World and more")


def test_v1_rest_full_text_is_used():
    status = v1(full_text="Hello #World")
    del status["text"]
    assert parse_tweet(status) == tweet()


def test_v1_retweet_takes_text_and_hashtags_from_the_original():
    original = v1(id=int(ORIGINAL_ID), id_str=ORIGINAL_ID, text=LONG_TEXT,
                  user={"id_str": ORIGINAL_AUTHOR_ID},
                  entities={"hashtags": [{"text": "Shibuya"}, {"text": "Matsuri"}]})
    status = v1(text="RT @orig: " + LONG_TEXT[:120] + "…",
                entities={"hashtags": []}, retweeted_status=original)
    assert parse_tweet(status) == tweet(text=LONG_TEXT, hashtags=["shibuya", "matsuri"],
                                        retweet_of=ORIGINAL_ID)


def test_hashtags_are_case_folded_nfkc_in_order_with_duplicates_kept():
    tags = ["Tokyo", "ＴＯＫＹＯ", "東京", "ｶﾀｶﾅ", "#Straße", "ÉTÉ"]
    record = parse_tweet(v1(entities={"hashtags": [{"text": t} for t in tags]}))
    assert record.hashtags == ["tokyo", "tokyo", "東京", "カタカナ", "strasse", "été"]
    record2 = parse_tweet(v2({"entities": {"hashtags": [{"tag": t} for t in tags]}}))
    assert record2 == record


def test_normalize_hashtag_matches_full_width_and_half_width_forms():
    assert normalize_hashtag("＃ＡＢＣ") == normalize_hashtag("abc") == "abc"
    assert normalize_hashtag("ｼﾌﾞﾔ") == normalize_hashtag("シブヤ")


@pytest.mark.parametrize("hashtags, reason", [
    ("World", "entities.hashtags: expected a list, got str"),
    ([{"text": 7}], "entities.hashtags[0].text: expected a string, got int"),
    (["World"], "entities.hashtags[0]: expected an object, got str"),
    ([{"text": "#"}], "entities.hashtags[0].text: empty hashtag '#'"),
    ([{"text": "ok"}, {"text": "\ud800"}], "entities.hashtags[1].text: contains an unpaired UTF-16 surrogate"),
])
def test_v1_bad_hashtags_are_rejected(hashtags, reason):
    assert rejected(v1(entities={"hashtags": hashtags})) == reason


def test_v1_numeric_ids_only_when_exact_integers():
    status = v1(user={"id": int(AUTHOR_ID)})
    del status["id_str"]
    assert parse_tweet(status) == tweet()
    status["id"] = float(TWEET_ID)
    assert rejected(status) == (
        "id: 1.0501186211989217e+18 is a float; ids lose precision as floats, send the id as a string")
    status["id"] = True
    assert rejected(status) == "id: expected an id, got bool"
    status["id"] = -5
    assert rejected(status) == "id: integer outside the 64-bit id range"


@pytest.mark.parametrize("overrides, reason", [
    ({"id_str": None, "id": None}, "missing required field 'id_str'"),
    ({"id_str": "12a"}, "id_str: '12a' is not a Twitter id_str (decimal digits)"),
    ({"id_str": "١٢٣"}, "id_str: '١٢٣' is not a Twitter id_str (decimal digits)"),
    ({"user": None}, "missing required field 'user'"),
    ({"user": {"screen_name": "x"}}, "missing required field 'user.id_str'"),
    ({"user": "6253282"}, "user: expected an object, got str"),
    ({"created_at": None}, "missing required field 'created_at'"),
    ({"created_at": "2018-10-10T20:19:24Z"},
     "created_at: '2018-10-10T20:19:24Z' is not a v1.1 date like 'Wed Oct 10 20:19:24 +0000 2018'"),
    ({"created_at": 1539202764}, "created_at: expected a string, got int"),
    ({"text": None}, "missing required field 'text'"),
    ({"text": 42}, "text: expected a string, got int"),
    ({"text": "bad \udfff"}, "text: contains an unpaired UTF-16 surrogate"),
    ({"lang": 3}, "lang: expected a string, got int"),
    ({"retweeted_status": "1050118000000000000"}, "retweeted_status: expected an object, got str"),
    ({"retweeted_status": {"text": "x"}}, "missing required field 'retweeted_status.id_str'"),
    ({"extended_tweet": {"entities": {}}}, "missing required field 'extended_tweet.full_text'"),
])
def test_v1_bad_fields_are_rejected(overrides, reason):
    assert rejected(v1(**overrides)) == reason


def test_v1_time_offset_is_converted_to_utc():
    assert parse_tweet(v1(created_at="Thu Oct 11 05:19:24 +0900 2018")).ts == CREATED_TS


def test_lang_is_optional():
    assert parse_tweet(v1(lang=None)) == tweet(lang=None)


# ---- v2 ----------------------------------------------------------------------------

def test_v2_point_is_lng_lat():
    message = v2({"geo": {"coordinates": {"type": "Point", "coordinates": [139.7, 35.6]}}})
    assert parse_tweet(message) == tweet(lat=35.6, lng=139.7)


def test_v2_place_only_is_located_at_bbox_centre_and_coarse():
    message = v2({"geo": {"place_id": PLACE_ID}},
                 {"places": [{"id": "other", "geo": {"bbox": [0.0, 0.0, 1.0, 1.0]}}, v2_place()]})
    assert parse_tweet(message) == tweet(lat=35.75, lng=139.75, coarse=True, place_id=PLACE_ID)


def test_v2_place_missing_from_includes_keeps_place_id_only():
    assert parse_tweet(v2({"geo": {"place_id": PLACE_ID}})) == tweet(place_id=PLACE_ID)
    assert parse_tweet(v2({"geo": {"place_id": PLACE_ID}}, {"places": [{"id": PLACE_ID}]})) == tweet(place_id=PLACE_ID)


def test_v2_note_tweet_text_and_entities_win():
    message = v2({"text": LONG_TEXT[:280], "note_tweet": {
        "text": LONG_TEXT, "entities": {"hashtags": [{"tag": "Shibuya"}, {"tag": "Matsuri"}]}}})
    assert parse_tweet(message) == tweet(text=LONG_TEXT, hashtags=["shibuya", "matsuri"])


def test_v2_retweet_without_the_original_keeps_its_own_text():
    message = v2({"text": "RT @orig: Hello #World",
                  "referenced_tweets": [{"type": "quoted", "id": "7"}, {"type": "retweeted", "id": ORIGINAL_ID}]})
    assert parse_tweet(message) == tweet(text="RT @orig: Hello #World", retweet_of=ORIGINAL_ID)


def test_v2_quote_or_reply_is_not_a_retweet():
    message = v2({"referenced_tweets": [{"type": "quoted", "id": ORIGINAL_ID}, {"type": "replied_to", "id": "5"}]})
    assert parse_tweet(message) == tweet()


@pytest.mark.parametrize("data, includes, reason", [
    ({"id": None}, None, "missing required field 'data.id'"),
    ({"id": 1.05e18}, None, "data.id: 1.05e+18 is a float; ids lose precision as floats, send the id as a string"),
    ({"author_id": None}, None, "missing required field 'data.author_id'"),
    ({"created_at": None}, None, "missing required field 'data.created_at'"),
    ({"created_at": CREATED_V1}, None, f"data.created_at: {CREATED_V1!r} is not an RFC 3339 timestamp"),
    ({"created_at": "2018-10-10T20:19:24"}, None,
     "data.created_at: '2018-10-10T20:19:24' has no UTC offset (RFC 3339 requires one)"),
    ({"text": None}, None, "missing required field 'data.text'"),
    ({"note_tweet": {"entities": {}}}, None, "missing required field 'data.note_tweet.text'"),
    ({"entities": {"hashtags": [{"text": "World"}]}}, None, "data.entities.hashtags[0].tag: expected a string, got NoneType"),
    ({"geo": {"coordinates": {"type": "Point", "coordinates": [35.6, 239.7]}}}, None,
     "data.geo.coordinates.lat: 239.7 out of range [-90, 90]"),  # [lat, lng] given in GeoJSON's place
    ({"geo": {"place_id": 5}}, None, "data.geo.place_id: expected a string, got int"),
    ({"geo": {"place_id": PLACE_ID}}, {"places": [v2_place([139.5, 36.0, 140.0, 35.5])]},
     "includes.places[0].geo.bbox: south 36.0 is north of north 35.5"),
    ({"geo": {"place_id": PLACE_ID}}, {"places": [v2_place([139.5, 35.5, 140.0])]},
     "includes.places[0].geo.bbox: expected [west, south, east, north], got [139.5, 35.5, 140.0]"),
    ({"geo": {"place_id": PLACE_ID}}, {"places": [v2_place([139.5, 35.5, 240.0, 36.0])]},
     "includes.places[0].geo.bbox[north/east].lng: 240.0 out of range [-180, 180]"),
    ({"geo": {"place_id": PLACE_ID}}, {"places": {"id": PLACE_ID}}, "includes.places: expected a list, got dict"),
    ({"geo": {"place_id": PLACE_ID}}, {"places": ["x"]}, "includes.places[0]: expected an object, got str"),
    ({"referenced_tweets": {"type": "retweeted"}}, None, "data.referenced_tweets: expected a list, got dict"),
    ({"referenced_tweets": [{"type": "retweeted"}]}, None, "missing required field 'data.referenced_tweets[0].id'"),
    ({}, "everything", "includes: expected an object, got str"),
])
def test_v2_bad_fields_are_rejected(data, includes, reason):
    assert rejected(v2(data, includes)) == reason


def test_v2_data_list_is_a_lookup_response_not_a_stream_message():
    assert rejected({"data": [v2()["data"]]}) == "data: a list of tweets (a lookup response), not one stream message"


# ---- the same tweet in both formats gives equal records ------------------------------

def original_v1() -> dict:
    return v1(id=int(ORIGINAL_ID), id_str=ORIGINAL_ID, text=LONG_TEXT[:137] + "…", truncated=True,
              user={"id": int(ORIGINAL_AUTHOR_ID), "id_str": ORIGINAL_AUTHOR_ID},
              entities={"hashtags": [{"text": "Shibuya", "indices": [0, 0]}]},
              extended_tweet={"full_text": LONG_TEXT, "entities": {
                  "hashtags": [{"text": "Shibuya", "indices": [0, 0]}, {"text": "Matsuri", "indices": [0, 0]}]}})


def original_v2() -> dict:
    return {"id": ORIGINAL_ID, "author_id": ORIGINAL_AUTHOR_ID, "created_at": CREATED_V2,
            "text": LONG_TEXT, "entities": {"hashtags": [{"tag": "Shibuya"}, {"tag": "Matsuri"}]}}


SAME_TWEET = {
    "point-geotagged": (
        v1(coordinates={"type": "Point", "coordinates": [139.7, 35.6]},
           geo={"type": "Point", "coordinates": [35.6, 139.7]}, place=v1_place()),
        v2({"geo": {"coordinates": {"type": "Point", "coordinates": [139.7, 35.6]}, "place_id": PLACE_ID}},
           {"places": [v2_place()]}),
        tweet(lat=35.6, lng=139.7, place_id=PLACE_ID),
    ),
    "place-only": (
        v1(place=v1_place()),
        v2({"geo": {"place_id": PLACE_ID}}, {"places": [v2_place()]}),
        tweet(lat=35.75, lng=139.75, coarse=True, place_id=PLACE_ID),
    ),
    "long-text": (
        original_v1() | {"id": int(TWEET_ID), "id_str": TWEET_ID, "user": {"id_str": AUTHOR_ID}},
        v2({"text": LONG_TEXT[:137] + "…", "entities": {"hashtags": [{"tag": "Shibuya"}]},
            "note_tweet": {"text": LONG_TEXT, "entities": {"hashtags": [{"tag": "Shibuya"}, {"tag": "Matsuri"}]}}}),
        tweet(text=LONG_TEXT, hashtags=["shibuya", "matsuri"]),
    ),
    "retweet": (
        v1(text="RT @orig: " + LONG_TEXT[:120] + "…", entities={"hashtags": [{"text": "Shibuya"}]},
           retweeted_status=original_v1()),
        v2({"text": "RT @orig: " + LONG_TEXT[:120] + "…", "entities": {"hashtags": [{"tag": "Shibuya"}]},
            "referenced_tweets": [{"type": "retweeted", "id": ORIGINAL_ID}]},
           {"tweets": [original_v2()], "users": [{"id": ORIGINAL_AUTHOR_ID, "username": "orig"}]}),
        tweet(text=LONG_TEXT, hashtags=["shibuya", "matsuri"], retweet_of=ORIGINAL_ID),
    ),
    "no-location": (v1(), v2(), tweet()),
}


@pytest.mark.parametrize("case", sorted(SAME_TWEET))
def test_same_tweet_as_v1_and_v2_gives_equal_records(case):
    status, message, expected = SAME_TWEET[case]
    assert parse_tweet(status) == expected
    assert parse_tweet(message) == expected
    # and through the line parser, as the pipeline calls it
    assert parse_line("tweets", json.dumps(status)) == parse_line("tweets", json.dumps(message)) == expected


# ---- deletes and other firehose messages ---------------------------------------------

def test_delete_with_timestamp_ms():
    notice = {"delete": {"status": {"id": int(TWEET_ID), "id_str": TWEET_ID,
                                    "user_id": int(AUTHOR_ID), "user_id_str": AUTHOR_ID},
                         "timestamp_ms": "1539202800123"}}
    assert parse_tweet(notice) == TweetDelete(tweet_id=TWEET_ID, author_id=AUTHOR_ID, ts=1539202800.123)


def test_delete_without_timestamp_uses_the_snowflake_time():
    notice = {"delete": {"status": {"id": int(TWEET_ID), "user_id": int(AUTHOR_ID)}}}
    assert parse_tweet(notice) == TweetDelete(tweet_id=TWEET_ID, author_id=AUTHOR_ID, ts=1539202764.211)
    assert snowflake_time(TWEET_ID) == 1539202764.211


@pytest.mark.parametrize("notice, reason", [
    ({"delete": "1050118621198921728"}, "delete: expected an object, got str"),
    ({"delete": {"timestamp_ms": "1539202800123"}}, "missing required field 'delete.status'"),
    ({"delete": {"direct_message": {"id": 1}}}, "unsupported firehose message 'delete.direct_message'"),
    ({"delete": {"status": {"id_str": TWEET_ID}}}, "missing required field 'delete.status.user_id_str'"),
    ({"delete": {"status": {"user_id_str": AUTHOR_ID}}}, "missing required field 'delete.status.id_str'"),
    ({"delete": {"status": {"id_str": TWEET_ID, "user_id_str": AUTHOR_ID}, "timestamp_ms": "soon"}},
     "delete.timestamp_ms: expected epoch milliseconds as digits, got 'soon'"),
    ({"delete": {"status": {"id_str": TWEET_ID, "user_id_str": AUTHOR_ID}, "timestamp_ms": 1.5e12}},
     "delete.timestamp_ms: expected epoch milliseconds as digits, got 1500000000000.0"),
    ({"delete": {"status": {"id_str": TWEET_ID, "user_id_str": AUTHOR_ID}, "timestamp_ms": "1000"}},
     "delete.timestamp_ms: 1970-01-01T00:00:01.000Z is outside 2006..2100"),
])
def test_bad_delete_notices_are_rejected(notice, reason):
    assert rejected(notice) == reason


def test_delete_with_integer_timestamp_ms():
    notice = {"delete": {"status": {"id_str": TWEET_ID, "user_id_str": AUTHOR_ID}, "timestamp_ms": 1539202800123}}
    assert parse_tweet(notice).ts == 1539202800.123


@pytest.mark.parametrize("message, name", [
    ({"limit": {"track": 1234, "timestamp_ms": "1539202800123"}}, "limit"),
    ({"disconnect": {"code": 4, "stream_name": "x", "reason": "y"}}, "disconnect"),
    ({"warning": {"code": "FALLING_BEHIND", "percent_full": 60}}, "warning"),
    ({"errors": [{"title": "operational-disconnect"}]}, "errors"),
    ({"event": "favorite", "created_at": CREATED_V1, "source": {}, "target": {}}, "event"),
])
def test_other_firehose_messages_are_named(message, name):
    # the compliance messages are read (tests/test_compliance_parse.py); these are not
    assert rejected(message) == f"unsupported firehose message {name!r}"


def test_unrecognised_objects_are_rejected():
    assert rejected({}) == ("unrecognised firehose object (keys: none): neither a v1.1 status, "
                            "a v2 {data, includes} object nor a delete notice")
    assert rejected({"foo": 1, "bar": 2}).startswith("unrecognised firehose object (keys: 'foo', 'bar')")
    assert rejected([v1()]) == "expected a JSON object, got list"


def test_nan_literal_in_a_tweet_line_is_rejected():
    line = json.dumps(v1()).replace('"coordinates": null', '"coordinates": {"type": "Point", "coordinates": [NaN, 35.6]}')
    with pytest.raises(InvalidRecord, match=r"^coordinates.lng: nan is not finite$"):
        parse_line("tweets", line)


# ---- properties -----------------------------------------------------------------------

lats = st.floats(min_value=-90.0, max_value=90.0, allow_nan=False)
lngs = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)


@given(lat=lats, lng=lngs)
def test_point_round_trips_and_v1_equals_v2(lat, lng):
    status = v1(coordinates={"type": "Point", "coordinates": [lng, lat]},
                geo={"type": "Point", "coordinates": [lat, lng]})
    message = v2({"geo": {"coordinates": {"type": "Point", "coordinates": [lng, lat]}}})
    # through JSON text, as the firehose delivers it
    from_v1 = parse_line("tweets", json.dumps(status))
    from_v2 = parse_line("tweets", json.dumps(message))
    assert from_v1 == from_v2 == tweet(lat=lat, lng=lng)


@given(lat_a=lats, lat_b=lats, lng_a=lngs, lng_b=lngs)
def test_place_box_centre_is_the_same_in_v1_and_v2_and_inside_the_box(lat_a, lat_b, lng_a, lng_b):
    south, north = min(lat_a, lat_b), max(lat_a, lat_b)
    west, east = lng_a, lng_b
    ring = [[[west, south], [west, north], [east, north], [east, south], [west, south]]]
    from_v1 = parse_tweet(v1(place=v1_place(ring)))
    from_v2 = parse_tweet(v2({"geo": {"place_id": PLACE_ID}}, {"places": [v2_place([west, south, east, north])]}))
    assert from_v1 == from_v2
    assert from_v1.coarse and from_v1.place_id == PLACE_ID
    assert south <= from_v1.lat <= north
    assert -180.0 <= from_v1.lng <= 180.0
    # the centre lies on the shorter arc between the two edges
    def arc(a, b):
        return abs((a - b + 180.0) % 360.0 - 180.0)
    width = arc(west, east)
    assert arc(from_v1.lng, west) <= width / 2 + 1e-9 and arc(from_v1.lng, east) <= width / 2 + 1e-9


json_leaves = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
               | st.floats() | st.text(max_size=20))
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
TEMPLATES = [SAME_TWEET[case][i] for case in sorted(SAME_TWEET) for i in (0, 1)] + [
    {"delete": {"status": {"id_str": TWEET_ID, "user_id_str": AUTHOR_ID}, "timestamp_ms": "1539202800123"}},
    {"limit": {"track": 5}},
]


def paths(value, prefix=()):
    """Every path to a value inside a JSON tree."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, prefix + (index,))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(template=st.sampled_from(TEMPLATES), data=st.data())
def test_mutated_tweets_give_a_record_or_invalid_record(template, data):
    """Replace any one value of a valid message by junk: never anything but InvalidRecord."""
    message = copy.deepcopy(template)
    path = data.draw(st.sampled_from(list(paths(message))[1:]))
    junk = data.draw(json_values)
    parent = message
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = junk
    try:
        record = parse_tweet(message)
    except InvalidRecord as exc:
        assert str(exc)
    else:
        assert isinstance(record, (Tweet, TweetDelete))


@given(json_values)
def test_junk_gives_invalid_record_or_a_record(junk):
    try:
        parse_line("tweets", json.dumps(junk))
    except InvalidRecord as exc:
        assert str(exc)


@given(st.dictionaries(st.sampled_from(["data", "delete", "includes", "id_str", "user", "created_at",
                                        "coordinates", "geo", "place", "limit", "text"]),
                       json_values, max_size=6))
def test_junk_with_firehose_keys_gives_invalid_record_or_a_record(junk):
    try:
        record = parse_tweet(junk)
    except InvalidRecord as exc:
        assert str(exc)
    else:
        assert isinstance(record, (Tweet, TweetDelete))

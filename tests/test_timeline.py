"""core.timeline: which tweets make the local timeline, their cell and happening kind (plain lists)."""
from __future__ import annotations

import h3

from core.alerts import AlertParams, fan_out_outputs
from core.compliance import Shown
from core.processor import run_ordered
from core.timeline import JoinHappening, TimelineTweet
from schemas.records import TimelineEntry, Tweet, arrow_schema, to_json_dict

T0 = 1_764_000_000.0
SHIBUYA = (35.6595, 139.7005)
YOKOHAMA = (35.4437, 139.6380)   # outside the 23 wards


def tweet(tid, at, text="今日は静か", point=SHIBUYA, coarse=False, rt=None, author="1", hashtags=()):
    return Tweet(tid, author, at, text, "ja", list(hashtags), point[0] if point else None,
                 point[1] if point else None, coarse, None, rt)


def timeline(tweets, params=AlertParams()):
    return fan_out_outputs(tweets, [], [], [], [], params)["timeline"]


def test_only_precise_original_tweets_in_the_service_area_are_on_it():
    tweets = [tweet("100", T0 + 1), tweet("101", T0 + 2, coarse=True), tweet("102", T0 + 3, point=None),
              tweet("103", T0 + 4, rt="100"), tweet("104", T0 + 5, point=YOKOHAMA)]
    got = timeline(tweets)
    assert got == [TimelineEntry("100", "1", T0 + 1, "今日は静か", SHIBUYA[0], SHIBUYA[1],
                                 h3.latlng_to_cell(*SHIBUYA, 8), None, False)]


def test_a_happening_tweet_carries_its_kind_and_the_cell_follows_the_statistics_resolution():
    tweets = [tweet("200", T0 + 10, "渋谷で路上ライブ！"), tweet("201", T0 + 20, "駅前で火事", author="2")]
    got = timeline(tweets, AlertParams(timeline_h3_res=7))
    assert [(e.tweet_id, e.happening, e.h3_cell) for e in got] == [
        ("200", "concert", h3.latlng_to_cell(*SHIBUYA, 7)), ("201", "incident", h3.latlng_to_cell(*SHIBUYA, 7))]


def test_a_tweet_delivered_twice_has_one_entry_and_a_burst_is_a_happening():
    tags = ("渋谷祭",)
    tweets = [tweet(str(300 + i), T0 + 30 + i, f"みんな来てる {i}", author=str(i), hashtags=tags) for i in range(3)]
    got = timeline(tweets + [tweets[-1]])
    assert [(e.tweet_id, e.happening) for e in got] == [("300", None), ("301", None), ("302", "burst")]


def test_the_join_takes_the_first_happening_kind_and_forgets_the_tweet_after_it():
    from core.happenings import Happening
    t = tweet("400", T0)
    h = [Happening("400", "1", T0, t.lat, t.lng, kind, "x", "k", 500.0) for kind in ("sale", "burst")]
    join = JoinHappening(8)
    state, out = run_ordered(join, [TimelineTweet(t)] + h)
    assert [s.record.happening for s in out] == ["burst"] and isinstance(out[0], Shown)
    assert join.expire(state, T0 + 1) is None and join.gc_time(state) == T0 + 1e-3


def test_the_record_keeps_the_portals_field_names_and_types():
    assert list(TimelineEntry._fields) == ["tweet_id", "author_id", "ts", "text", "lat", "lng", "h3_cell",
                                           "happening", "retracted"]
    schema = arrow_schema(TimelineEntry)
    assert str(schema.field("ts").type) == "timestamp[ms, tz=UTC]" and schema.field("happening").nullable
    entry = TimelineEntry("1", "2", T0, "t", 35.0, 139.0, "88", None, True)
    assert to_json_dict(entry)["ts"] == "2025-11-24T16:00:00.000Z" and to_json_dict(entry)["retracted"] is True

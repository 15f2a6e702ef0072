"""core.happenings: the rule set, copies collapsing into originals, local bursts."""
import json
import random

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import Tweet
from core.alerts import AlertParams
from core.processor import run_keyed
from core.happenings import (
    DEFAULT_RULES, BurstCandidate, CollapseCopies, DetectBursts, Happening, Rule, RuleSet, SessionKeys,
    burst_messages, find_happenings, is_precise, normalise_text, session_group, text_fingerprint)

T0 = 1_764_000_000.0
SHIBUYA = (35.6595, 139.7005)


def tweet(tid, author="1", ts=T0, text="", hashtags=(), lat=SHIBUYA[0], lng=SHIBUYA[1], coarse=False, rt=None):
    return Tweet(tid, author, ts, text, "ja", list(hashtags), lat, lng, coarse, None, rt)


@pytest.mark.parametrize("text,hashtags,expected", [
    ("隅田川の花火がきれい", [], "fireworks"),
    ("Fireworks over the river!", [], "fireworks"),
    ("ＦＩＲＥＷＯＲＫＳ tonight", [], "fireworks"),          # full-width folds to ASCII
    ("nothing special", ["hanabi"], "fireworks"),
    ("渋谷で路上ライブやってる", [], "concert"),
    ("big SALE at the station", [], "sale"),
    ("wholesale prices", [], None),                           # word boundary for English
    ("saleable goods", [], None),
    ("駅前で火事、煙がすごい", [], "incident"),
    ("fire alarm and a festival", [], "incident"),           # first rule in list order wins
    ("お祭りの屋台", [], "festival"),
    ("ランチ美味しい", ["lunch"], None),
])
def test_default_rules(text, hashtags, expected):
    rule = RuleSet().match(text, hashtags)
    assert (rule.name if rule else None) == expected


def test_rules_from_json_file(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"name": "ramen", "kind": "sale", "keywords": ["ラーメン"], "hashtags": ["ramen"]}]),
                    encoding="utf-8")
    rules = RuleSet.from_json_file(str(path))
    assert rules.match("新しいラーメン屋", []).name == "ramen"
    assert rules.match("花火", []) is None
    params = AlertParams(rules_path=str(path))
    assert params.rule_set().match("", ["RAMEN"]).kind == "sale"


def test_bad_rules_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        Rule("x", "party", keywords=("x",))
    with pytest.raises(ValueError, match="keyword or hashtag"):
        Rule("x", "sale")
    with pytest.raises(ValueError, match="unique"):
        RuleSet([Rule("x", "sale", ("a",)), Rule("x", "sale", ("b",))])
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="rules_path"):
        AlertParams(rules_path=str(bad))


def test_normalise_text_removes_what_copies_change():
    original = "渋谷で路上ライブ！ https://t.co/abc #ライブ"
    assert normalise_text("RT @someone: " + original) == normalise_text(original)
    assert normalise_text("@friend 渋谷で路上ライブ!!  https://t.co/xyz #ライブ") == normalise_text(original)
    assert normalise_text("ＬＩＶＥ") == normalise_text("live")
    assert text_fingerprint("https://t.co/x @a") is None
    assert text_fingerprint("live") != text_fingerprint("life")


def test_precise_means_coordinates_and_not_a_place_centre():
    assert is_precise(tweet("1"))
    assert not is_precise(tweet("1", coarse=True))
    assert not is_precise(tweet("1", lat=None, lng=None))


def test_copies_collapse_into_the_earliest_within_the_window():
    proc = CollapseCopies(window_s=3600)
    tweets = [tweet("3", ts=T0 + 10), tweet("1", ts=T0), tweet("2", ts=T0 + 3600), tweet("4", ts=T0 + 3601),
              tweet("1", ts=T0)]  # a duplicate delivery of tweet 1
    originals = run_keyed(proc, [("k", t) for t in tweets])
    assert [t.tweet_id for t in originals] == ["1", "4"]
    assert proc.expire((T0, "1"), T0 + 3601) is None
    assert proc.expire((T0, "1"), T0 + 3600) == (T0, "1")


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_collapse_ignores_delivery_order(rnd):
    tweets = [tweet(str(i), ts=T0 + rnd.choice([0, 100, 1800, 4000, 9000])) for i in range(8)]
    shuffled = tweets[:]
    rnd.shuffle(shuffled)
    proc = CollapseCopies(window_s=3600)
    assert run_keyed(proc, [("k", t) for t in shuffled]) == run_keyed(proc, [("k", t) for t in tweets])


def burst_run(tweets, min_authors=3, window_s=600, res=8):
    msgs = [kv for t in tweets for kv in burst_messages(t, res, as_candidate=True)]
    return sorted((c.tweet.tweet_id, c.hashtag) for c in run_keyed(DetectBursts(min_authors, window_s), msgs))


def test_burst_needs_enough_distinct_authors_within_the_window():
    tweets = [tweet("1", "a", T0, hashtags=["Flashmob"]), tweet("2", "b", T0 + 60, hashtags=["flashmob"]),
              tweet("3", "c", T0 + 120, hashtags=["flashmob"]), tweet("4", "d", T0 + 700, hashtags=["flashmob"])]
    # tweet 3 is the third author within 600 s; at tweet 4 the window [100, 700] holds only c and d
    assert burst_run(tweets) == [("3", "flashmob")]
    assert burst_run(tweets, min_authors=4) == []
    assert burst_run(tweets, window_s=10_000) == [("3", "flashmob"), ("4", "flashmob")]


def test_one_author_repeating_is_not_a_burst():
    tweets = [tweet(str(i), "a", T0 + i, hashtags=["spam"]) for i in range(10)]
    assert burst_run(tweets) == []


def test_burst_counts_neighbouring_cells_but_not_far_ones():
    cell = h3.latlng_to_cell(*SHIBUYA, 8)
    neighbour = [c for c in h3.grid_ring(cell, 1)][0]
    far = [c for c in h3.grid_ring(cell, 3)][0]
    at = lambda c: h3.cell_to_latlng(c)  # noqa: E731
    near = [tweet("1", "a", T0, hashtags=["x"]), tweet("2", "b", T0 + 1, hashtags=["x"], lat=at(neighbour)[0],
                                                        lng=at(neighbour)[1]),
            tweet("3", "c", T0 + 2, hashtags=["x"])]
    assert ("3", "x") in burst_run(near)
    away = near[:1] + [near[1]._replace(lat=at(far)[0], lng=at(far)[1])] + near[2:]
    assert ("3", "x") not in burst_run(away)


def happening(tid, ts, kind="festival", label="fireworks", point=SHIBUYA):
    return Happening(tid, "1", ts, point[0], point[1], kind, label, "", 800.0)


def test_happening_key_is_class_coarse_cell_and_session_start():
    proc = SessionKeys(h3_res=7, gap_s=3600)
    hs = [happening("1", T0), happening("2", T0 + 3000, label="festival"), happening("3", T0 + 6600),
          happening("4", T0 + 10201)]
    keyed = run_keyed(proc, [(session_group(h, 7), h) for h in reversed(hs)])
    cell = h3.latlng_to_cell(*SHIBUYA, 7)
    start = f"festival|{cell}|{int(T0 * 1000)}"
    # fireworks and festival rules share the kind; 3 is 3600 s after 2 (same session); 4 is 3601 s after 3
    assert [(h.tweet_id, h.key) for h in keyed] == [
        ("1", start), ("2", start), ("3", start), ("4", f"festival|{cell}|{int((T0 + 10201) * 1000)}")]
    burst = happening("5", T0, kind="burst", label="#pop")
    assert session_group(burst, 7) == f"#pop|{cell}"
    assert proc.expire((T0, T0), T0 + 3600.5) is None and proc.expire((T0, T0), T0 + 3600) == (T0, T0)


def test_not_now_markers_keep_mere_mentions_out():
    rules = RuleSet()
    for text in ("来週のライブ楽しみ #ライブ", "昨日のセール行けばよかった", "今年の祭りはいつかな #祭り",
                 "Can't wait for the concert next month #concert", "Missed the sale again"):
        assert rules.match(text, []) is None, text
    assert rules.match("ライブ楽しみ！", []).name == "concert"


def test_find_happenings_applies_every_filter():
    params = AlertParams()
    tweets = [
        tweet("1", "a", T0, "花火きれい"),                              # rule
        tweet("2", "b", T0 + 5, "RT @a: 花火きれい", rt="1"),             # retweet: collapses
        tweet("3", "c", T0 + 6, "花火きれい https://t.co/q"),             # copy: collapses
        tweet("4", "d", T0 + 7, "花火きれい", coarse=True),              # place only: never
        tweet("5", "e", T0 + 8, "ランチ"),                               # not a happening
        tweet("6", "f", T0 + 9, "a", hashtags=["pop"]), tweet("7", "g", T0 + 10, "b", hashtags=["pop"]),
        tweet("8", "h", T0 + 11, "c", hashtags=["pop"]),                # burst at the third author
    ]
    found = find_happenings(tweets, params)
    assert sorted((h.tweet_id, h.kind, h.label, h.radius_m) for h in found) == [
        ("1", "festival", "fireworks", params.radius_festival_m),
        ("8", "burst", "#pop", params.burst_radius_m)]
    shuffled = tweets[:]
    random.Random(3).shuffle(shuffled)
    assert sorted(find_happenings(shuffled, params)) == sorted(found)


def test_default_rules_cover_every_kind_in_both_languages():
    kinds = {r.kind for r in DEFAULT_RULES}
    assert kinds == {"concert", "sale", "festival", "incident"}
    for rule in DEFAULT_RULES:
        assert any(not k.isascii() for k in rule.keywords) and any(k.isascii() for k in rule.keywords)


def test_burst_candidate_records_its_tweet():
    t = tweet("9", hashtags=["a", "A", "b"])
    msgs = list(burst_messages(t, 8, as_candidate=True))
    candidates = [m for _k, m in msgs if isinstance(m, BurstCandidate)]
    assert [c.hashtag for c in candidates] == ["a", "b"]  # each tag once
    assert len(msgs) == 2 * 7 + 2


def test_a_mere_mention_is_neither_burst_candidate_nor_evidence():
    tags = ["flashmob"]
    tweets = [tweet("1", "a", T0, "すごい", hashtags=tags), tweet("2", "b", T0 + 1, "最高", hashtags=tags),
              tweet("3", "c", T0 + 2, "来週のも楽しみ", hashtags=tags)]
    assert find_happenings(tweets, AlertParams()) == []
    tweets[2] = tweets[2]._replace(text="来た！")
    assert [h.tweet_id for h in find_happenings(tweets, AlertParams())] == ["3"]

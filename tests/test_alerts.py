"""core.alerts and transforms.alerts: every fan-out rule on hand-made worlds, a brute-force oracle, and
batch == streaming (shuffled, out-of-order, late deletes) through FanOutGeofencedAlerts."""
import copy
import hashlib
import math
import random

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import Alert, Follow, Ping, TapReport, Tweet, TweetDelete, User
from core.alerts import AlertParams, CellIndex, DecideForUser, alert_id, apply_retractions, fan_out
from core.happenings import find_happenings
from transforms.alerts import FanOutGeofencedAlerts
from core.locations import LocationReport, report_from_ping, report_from_tap, report_from_tweet

T0 = 1_764_000_000.0          # 2025-11-24T16:00:00Z, on an hour boundary
assert T0 % 3600 == 0
HERE = (35.6595, 139.7005)    # Shibuya crossing
EARTH_R = 6371008.8


# ---- an oracle's own geometry (independent of core.geo) --------------------------

def sphere_distance(a, b):
    """Spherical law of cosines in a numerically careful form (Vincenty's special case)."""
    p1, l1, p2, l2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    dl = l2 - l1
    num = math.hypot(math.cos(p2) * math.sin(dl), math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl))
    den = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return EARTH_R * math.atan2(num, den)


def north_of(point, metres):
    return (point[0] + math.degrees(metres / EARTH_R), point[1])


def east_of(point, metres):
    """Along the great circle heading east (not the parallel)."""
    p1, l1, d = math.radians(point[0]), math.radians(point[1]), metres / EARTH_R
    p2 = math.asin(math.sin(p1) * math.cos(d))
    l2 = l1 + math.atan2(math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    return (math.degrees(p2), math.degrees(l2))


# ---- hand-made worlds ---------------------------------------------------------------------

def user(uid, opt_in=True):
    return User(uid, "k", opt_in, False, None)


def ping(uid, at, point, acc=5.0, source="gps"):
    return Ping(uid, at, point[0], point[1], acc, source)


def tweet(tid, author, at, text="渋谷で路上ライブ！", point=HERE, hashtags=(), coarse=False, rt=None):
    lat, lng = (point if point else (None, None))
    return Tweet(tid, author, at, text, "ja", list(hashtags), lat, lng, coarse, None, rt)


class World:
    def __init__(self, params=None):
        self.params = params or AlertParams()
        self.users, self.pings, self.taps, self.tweets, self.deletes, self.follows = [], [], [], [], [], []

    def reports(self):
        rs = [report_from_ping(p, self.params.max_accuracy_m) for p in self.pings]
        rs += [report_from_tweet(t) for t in self.tweets] + [report_from_tap(t) for t in self.taps]
        return [r for r in rs if r is not None]

    def alerts(self):
        return fan_out(self.tweets, self.deletes, self.reports(), self.follows, self.users, self.params)


def audience(alerts):
    return sorted((a.user_id, a.tweet_id, a.reason) for a in alerts)


def test_alert_record_and_id():
    w = World()
    w.users = [user("1"), user("2")]
    w.pings = [ping("2", T0, north_of(HERE, 100))]
    w.tweets = [tweet("900", "1", T0 + 60)]
    (a,) = w.alerts()
    (h,) = find_happenings(w.tweets, w.params)
    assert a == Alert(hashlib.sha256(f"2|{h.key}|900".encode()).hexdigest()[:32], "2", "900", T0 + 60, 100.0,
                      "nearby:concert:concert")
    assert a.alert_id == alert_id("2", h.key, "900")
    assert h.key.startswith("concert|") and h.key.endswith(f"|{int((T0 + 60) * 1000)}")


def test_the_exact_sphere_distance_decides_the_radius():
    w = World()
    w.users = [user("1")] + [user(str(i)) for i in range(10, 16)]
    r = w.params.radius_concert_m
    # east: a longitude degree is cos(lat) shorter, so an equal-degrees shortcut would miss "12"
    for uid, point in (("10", north_of(HERE, r - 0.5)), ("11", north_of(HERE, r + 0.5)),
                       ("12", east_of(HERE, r - 0.5)), ("13", east_of(HERE, r + 0.5)),
                       ("14", east_of(north_of(HERE, 300), 400.5)), ("15", HERE)):
        w.pings.append(ping(uid, T0, point))
    w.tweets = [tweet("900", "1", T0 + 1)]
    alerts = sorted(w.alerts(), key=lambda a: a.user_id)
    assert [a.user_id for a in alerts] == ["10", "12", "15"]
    assert [a.distance_m for a in alerts] == [r - 0.5, r - 0.5, 0.0]


def test_each_kind_has_its_radius():
    w = World(AlertParams(radius_incident_m=1000.0, radius_sale_m=300.0))
    w.users = [user("1"), user("2")]
    w.pings = [ping("2", T0, north_of(HERE, 900))]
    w.tweets = [tweet("900", "1", T0 + 10, "駅前で火事"), tweet("901", "1", T0 + 20, "タイムセール中")]
    assert audience(w.alerts()) == [("2", "900", "nearby:incident:incident")]


def test_current_location_is_the_latest_fresh_report_before_the_tweet():
    w = World()
    w.users = [user("1")] + [user(str(i)) for i in range(10, 15)]
    near, far = north_of(HERE, 100), north_of(HERE, 5000)
    w.pings = [
        ping("10", T0 - 1800, near),                                     # exactly stale_s old: still placed
        ping("11", T0 - 1800.5, near),                                   # older: stale
        ping("12", T0 - 600, near), ping("12", T0 - 60, far),            # moved away before the tweet
        ping("13", T0 - 600, far), ping("13", T0 + 60, near),            # arrives after the tweet: not yet here
        ping("14", T0 - 60, far), ping("14", T0, near),                  # a report at the tweet's instant counts
    ]
    w.tweets = [tweet("900", "1", T0)]
    assert [a.user_id for a in w.alerts()] == ["10", "14"]


def test_inaccurate_reports_never_place_a_user():
    w = World()
    w.users = [user("1"), user("2"), user("3"), user("4")]
    w.pings = [ping("2", T0, HERE, acc=w.params.max_accuracy_m + 1), ping("3", T0, HERE, acc=None, source="cell")]
    w.tweets = [tweet("900", "1", T0 + 1), tweet("5", "4", T0, "x", point=HERE, coarse=True)]  # place-only
    assert w.alerts() == []


def test_own_precise_tweets_and_taps_place_users():
    w = World()
    w.users = [user("1"), user("2"), user("3")]
    w.tweets = [tweet("5", "2", T0, "ランチ", point=north_of(HERE, 50)), tweet("900", "1", T0 + 1)]
    w.taps = [TapReport("t", "3", "9", "0" * 32, T0, *north_of(HERE, 60), "p", "q")]
    assert [a.user_id for a in w.alerts()] == ["2", "3"]


def test_friends_reach_further_and_are_told_so():
    w = World()
    w.users = [user(u) for u in ("1", "2", "3", "4", "5", "6")]
    w.pings = [ping("2", T0, north_of(HERE, 1500)), ping("3", T0, north_of(HERE, 1500)),
               ping("4", T0, north_of(HERE, 100)), ping("5", T0, north_of(HERE, 2100)),
               ping("6", T0, north_of(HERE, 1500))]
    w.follows = [Follow("1", "2", T0 - 1000, "a" * 32, "c"), Follow("1", "4", T0 - 1000, "b" * 32, "c"),
                 Follow("1", "5", T0 - 1000, "c" * 32, "c"),
                 Follow("1", "6", T0 + 100, "d" * 32, "c")]  # established after the tweet
    w.tweets = [tweet("900", "1", T0 + 10)]
    assert audience(w.alerts()) == [("2", "900", "friend:concert:concert"), ("4", "900", "friend:concert:concert")]


def test_a_follow_counts_once_the_follow_step_can_have_confirmed_it():
    w = World()
    w.users = [user("1"), user("2")]
    w.pings = [ping("2", T0, north_of(HERE, 1500))]
    w.follows = [Follow("1", "2", T0 - w.params.follow_known_after_s, "a" * 32, "c")]
    w.tweets = [tweet("900", "1", T0)]
    assert [a.reason for a in w.alerts()] == ["friend:concert:concert"]
    w.follows = [w.follows[0]._replace(established_at=T0 - w.params.follow_known_after_s + 0.001)]
    assert w.alerts() == []


def test_one_alert_per_user_per_happening():
    w = World()
    w.users = [user("1", opt_in=False), user("2", opt_in=False), user("3")]
    w.pings = [ping("3", T0, north_of(HERE, 100)), ping("3", T0 + 1700, north_of(HERE, 100))]
    w.tweets = [tweet("900", "1", T0 + 60), tweet("901", "2", T0 + 120, "ライブ最高"),
                tweet("902", "1", T0 + 3000, "アンコール！ライブ"),            # same session (gap < 1 h)
                tweet("903", "2", T0 + 200, "駅前で火事")]                       # another happening
    assert audience(w.alerts()) == [("3", "900", "nearby:concert:concert"), ("3", "903", "nearby:incident:incident")]


def test_a_quiet_spell_ends_a_happening():
    w = World(AlertParams(happening_gap_s=600))
    w.users = [user("1"), user("3")]
    w.pings = [ping("3", T0, north_of(HERE, 100)), ping("3", T0 + 1000, north_of(HERE, 100))]
    w.tweets = [tweet("900", "1", T0 + 60), tweet("901", "1", T0 + 1200, "またライブ")]
    assert [a.tweet_id for a in w.alerts()] == ["900", "901"]
    w.params = AlertParams(happening_gap_s=3600)
    assert [a.tweet_id for a in w.alerts()] == ["900"]


def test_hourly_cap_keeps_the_first_alerts_in_event_time():
    w = World(AlertParams(max_alerts_per_user_per_hour=2, happening_gap_s=600))
    w.users = [user("1"), user("2")]
    w.pings = [ping("2", T0, HERE), ping("2", T0 + 1500, HERE), ping("2", T0 + 3000, HERE)]
    # four different happenings (four kinds) in one clock hour, one in the next
    w.tweets = [tweet("904", "1", T0 + 40, "タイムセール"), tweet("903", "1", T0 + 30, "花火"),
                tweet("902", "1", T0 + 20, "駅前で火事"), tweet("901", "1", T0 + 10, "ライブ"),
                tweet("905", "1", T0 + 3600 + 10, "また火事")]
    assert [a.tweet_id for a in w.alerts()] == ["901", "902", "905"]


def test_never_alert_the_author_opt_outs_or_unknown_users():
    w = World()
    w.users = [user("1"), user("2", opt_in=False)]
    w.pings = [ping("1", T0, HERE), ping("2", T0, HERE), ping("3", T0, HERE)]   # 3 is not in the registry
    w.tweets = [tweet("900", "1", T0 + 1)]
    assert w.alerts() == []
    w.users.append(user("3"))
    assert [a.user_id for a in w.alerts()] == ["3"]


def test_retweets_and_copies_collapse_into_the_original():
    w = World()
    w.users = [user(u) for u in ("1", "2", "3", "4", "5")]
    far = north_of(HERE, 3000)
    w.pings = [ping("4", T0, far), ping("5", T0, HERE)]
    w.tweets = [tweet("900", "1", T0 + 1, "渋谷で路上ライブ！"),
                # a retweet's text can differ (truncation, extended text): collapsed as a retweet all the same
                tweet("901", "2", T0 + 2, "RT @a: 渋谷で路上ライブ！ すごい人", point=far, rt="900"),
                tweet("902", "3", T0 + 3, "渋谷で路上ライブ! https://t.co/x", point=far)]
    assert audience(w.alerts()) == [("5", "900", "nearby:concert:concert")]


def test_a_tweet_without_a_precise_location_alerts_no_one():
    w = World()
    w.users = [user("1"), user("2")]
    w.pings = [ping("2", T0, HERE)]
    w.tweets = [tweet("900", "1", T0 + 1, coarse=True), tweet("901", "1", T0 + 2, "ライブ", point=None)]
    assert w.alerts() == []


def test_deleted_tweets_never_alert_in_batch():
    w = World()
    w.users = [user("1"), user("2"), user("3")]
    w.pings = [ping("2", T0, HERE), ping("3", T0, north_of(HERE, 2000))]
    w.tweets = [tweet("900", "1", T0 + 1), tweet("901", "1", T0 + 5, "駅前で火事")]
    w.deletes = [TweetDelete("900", "1", T0 + 600)]
    assert audience(w.alerts()) == [("2", "901", "nearby:incident:incident")]


def test_a_deleted_tweet_keeps_its_happening_slot():
    """Streaming already showed it (then retracted it); batch agrees: no second alert for the happening."""
    w = World()
    w.users = [user("1"), user("2")]
    w.pings = [ping("2", T0, HERE)]
    w.tweets = [tweet("900", "1", T0 + 1), tweet("901", "1", T0 + 5, "ライブまだ続いてる")]
    w.deletes = [TweetDelete("900", "1", T0 + 600)]
    assert w.alerts() == []


def test_params_are_validated_with_what_to_change():
    for kwargs, message in (({"burst_radius_m": 0}, "radius_m must be a positive"),
                            ({"friend_radius_m": 1e6}, "friend_radius_m = 1000000.0 m is not local"),
                            ({"location_stale_s": float("nan")}, "location_stale_s must be a positive"),
                            ({"max_alerts_per_user_per_hour": 0}, "max_alerts_per_user_per_hour must be an integer >= 1"),
                            ({"burst_min_authors": 1}, "burst_min_authors must be an integer >= 2"),
                            ({"index_h3_res": 16}, "index_h3_res must be an H3 resolution"),
                            ({"rules_path": "/nonexistent.json"}, "rules_path")):
        with pytest.raises(ValueError, match=message):
            AlertParams(**kwargs)
    assert AlertParams().location_stale_s == 1800 and AlertParams().burst_radius_m == 500
    assert AlertParams().friend_radius_m == 2000


def test_stateful_steps_leave_nothing_behind():
    params = AlertParams()
    cells = CellIndex(params.location_stale_s)
    state = {"1": LocationReport("1", T0, *HERE, "ping")}
    assert cells.expire(state, cells.gc_time(state)) is None
    users = DecideForUser(params)
    state = users.initial_state()
    state["latest"] = LocationReport("1", T0, *HERE, "ping")
    state["keys"]["k"] = T0
    state["hours"][int(T0 // 3600)] = 1
    assert users.expire(state, users.gc_time(state)) is None


# ---- the brute-force oracle ------------------------------------------------------------------

def oracle(w: World, gone=None):
    """Every user x every happening tweet, exact distance and the rules, written out plainly.
    ``gone``: the tweets never to alert (a generated world's truth), else the deleted ones."""
    p = w.params
    happenings = sorted(find_happenings(w.tweets, p), key=lambda h: (h.ts, h.tweet_id, h.key))
    opted = {u.user_id for u in w.users if u.alerts_opt_in}
    reports = w.reports()
    deleted = {d.tweet_id for d in w.deletes if d.kind == "delete"} if gone is None else gone
    told_key, told_tweet, per_hour, out = {}, set(), {}, []
    for h in happenings:
        for uid in sorted(opted):
            if uid == h.author_id or (uid, h.tweet_id) in told_tweet:
                continue
            before = [r for r in reports if r.user_id == uid and r.ts <= h.ts]
            if not before:
                continue
            last = max(before, key=lambda r: (r.ts, r.source, r.lat, r.lng))
            if h.ts - last.ts > p.location_stale_s:
                continue
            friend = any({f.user_a, f.user_b} == {uid, h.author_id} and f.established_at + p.follow_known_after_s <= h.ts
                         for f in w.follows)
            distance = sphere_distance((h.lat, h.lng), (last.lat, last.lng))
            radius = max(p.friend_radius_m, h.radius_m) if friend else h.radius_m
            if distance > radius:
                continue
            if (uid, h.key) in told_key and h.ts - told_key[uid, h.key] < p.happening_memory_s:
                continue
            hour = (uid, int(h.ts // 3600))
            if per_hour.get(hour, 0) >= p.max_alerts_per_user_per_hour:
                continue
            per_hour[hour] = per_hour.get(hour, 0) + 1
            told_key[uid, h.key] = h.ts
            told_tweet.add((uid, h.tweet_id))
            if h.tweet_id not in deleted:
                out.append((uid, h.tweet_id, f"{'friend' if friend else 'nearby'}:{h.kind}:{h.label}",
                            round(distance, 1)))
    return sorted(out)


def random_world(rnd: random.Random, n_users=25, n_tweets=14, params=None):
    w = World(params or AlertParams(max_alerts_per_user_per_hour=2))
    ids = [str(100 + i) for i in range(n_users)]
    w.users = [user(u, opt_in=rnd.random() < 0.8) for u in ids]

    def spot(spread):
        return (HERE[0] + rnd.uniform(-spread, spread), HERE[1] + rnd.uniform(-spread, spread))
    for u in ids:
        for _ in range(rnd.randint(0, 3)):
            w.pings.append(ping(u, T0 + rnd.uniform(-2400, 3600), spot(0.02), acc=rnd.choice([5.0, 30.0, 500.0])))
    texts = ["ライブ", "駅前で火事", "花火きれい", "タイムセール", "ランチ", "Missed the sale", "お祭り"]
    for i in range(n_tweets):
        t = tweet(str(9000 + i), rnd.choice(ids), T0 + rnd.uniform(0, 3600), rnd.choice(texts),
                  point=spot(0.01), hashtags=rnd.choice([(), ("flash",)]), coarse=rnd.random() < 0.1)
        w.tweets.append(t)
        if rnd.random() < 0.15:
            w.deletes.append(TweetDelete(t.tweet_id, t.author_id, t.ts + rnd.uniform(1, 900)))
    for _ in range(8):
        a, b = sorted(rnd.sample(ids, 2))
        w.follows.append(Follow(a, b, T0 + rnd.uniform(-1800, 3000), "%032x" % rnd.getrandbits(128), "c"))
    return w


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False))
def test_fan_out_equals_the_brute_force_oracle(rnd):
    w = random_world(rnd)
    got = sorted((a.user_id, a.tweet_id, a.reason, a.distance_m) for a in w.alerts())
    assert got == oracle(w)


def test_the_oracle_is_not_vacuous():
    worlds = [random_world(random.Random(seed)) for seed in range(40)]
    results = [oracle(w) for w in worlds]
    assert sum(len(r) for r in results) > 40
    assert any(reason.startswith("friend") for r in results for _u, _t, reason, _d in r)


# ---- Beam: batch, and streaming with shuffled out-of-order delivery -----------------------

def hand_world():
    w = World(AlertParams(max_alerts_per_user_per_hour=3))
    w.users = [user(u) for u in ("1", "2", "3", "4", "5")] + [user("6", opt_in=False)]
    w.pings = [ping("2", T0, north_of(HERE, 100)), ping("3", T0, north_of(HERE, 1500)),
               ping("4", T0 + 30, north_of(HERE, 50)), ping("5", T0 - 100, north_of(HERE, 400)),
               ping("5", T0 + 200, north_of(HERE, 8000)), ping("6", T0, HERE)]
    w.follows = [Follow("1", "3", T0 - 1000, "a" * 32, "c")]
    w.tweets = [tweet("900", "1", T0 + 60), tweet("901", "4", T0 + 90, "駅前で火事"),
                tweet("902", "2", T0 + 300, "タイムセール", point=north_of(HERE, 8000)),
                tweet("903", "1", T0 + 100, "RT ライブ", rt="900")]
    w.deletes = [TweetDelete("901", "4", T0 + 900)]
    return w


HAND_BATCH = [("2", "900", "nearby:concert:concert"), ("3", "900", "friend:concert:concert"),
              ("4", "900", "nearby:concert:concert"), ("5", "900", "nearby:concert:concert"),
              ("5", "902", "nearby:sale:sale")]


def beam_inputs(p, w: World):
    def create(label, items, record_type):
        return p | label >> beam.Create([TimestampedValue(x, x.established_at if isinstance(x, Follow) else x.ts)
                                         for x in items]).with_output_types(record_type)
    return {"tweets": create("Tweets", w.tweets, Tweet), "deletes": create("Deletes", w.deletes, TweetDelete),
            "pings": create("Pings", w.pings, Ping), "taps": create("Taps", w.taps, TapReport),
            "follows": create("Follows", w.follows, Follow), "users": p | "Users" >> beam.Create(w.users)}


def test_hand_world_pure():
    assert audience(hand_world().alerts()) == sorted(HAND_BATCH)


def test_beam_batch_equals_the_pure_fan_out():
    w = hand_world()
    expected = w.alerts()
    with TestPipeline() as p:
        out = beam_inputs(p, w) | FanOutGeofencedAlerts(w.params)
        assert_that(out["alerts"], equal_to(expected), label="Alerts")
        assert_that(out["dead_letters"], equal_to([]), label="NoDeadLetters")


def streamed(w: World, seed: int, deliver_late=()):
    """TestStream of every event shuffled within watermark steps; deliver_late: events after the end."""
    events = [e for e in w.tweets + w.deletes + w.pings + w.taps + w.follows if e not in deliver_late]
    rnd = random.Random(seed)
    rnd.shuffle(events)
    when = lambda e: e.established_at if isinstance(e, Follow) else e.ts  # noqa: E731
    stream = TestStream()
    steps = sorted({T0 - 200, T0 + 50, T0 + 95, T0 + 250, T0 + 1000})
    low = -math.inf
    for step in steps:
        batch = [e for e in events if low <= when(e) < step]
        rnd.shuffle(batch)
        if batch:
            stream.add_elements([TimestampedValue(e, when(e)) for e in batch])
        stream.advance_watermark_to(step)
        low = step
    rest = [e for e in events if when(e) >= low]
    if rest:
        stream.add_elements([TimestampedValue(e, when(e)) for e in rest])
    if deliver_late:
        stream.advance_watermark_to(steps[-1] + 60)   # within allowed lateness: a dead letter, not dropped
        stream.add_elements([TimestampedValue(e, when(e)) for e in deliver_late])
    stream.advance_watermark_to_infinity()
    return stream


def streaming_fan_out(p, stream, users, params):
    """FanOutGeofencedAlerts on one TestStream of every event kind (split by type) and the users."""
    events = p | "Events" >> stream
    inputs = {name: events | f"Only{name}" >> beam.Filter(lambda e, t=t: isinstance(e, t))
              for name, t in (("tweets", Tweet), ("deletes", TweetDelete), ("pings", Ping),
                              ("taps", TapReport), ("follows", Follow))}
    inputs["users"] = p | "Users" >> beam.Create(users)
    return inputs | FanOutGeofencedAlerts(params)


def run_streaming(w: World, stream, check_alerts, check_dead):
    """Run FanOutGeofencedAlerts on the stream; the checks get the whole output lists."""
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(runner="BundleBasedDirectRunner", options=options) as p:
        out = streaming_fan_out(p, stream, w.users, w.params)
        assert_that(out["alerts"], check_alerts, label="CheckAlerts")
        assert_that(out["dead_letters"], check_dead, label="CheckDeadLetters")


def streaming_matches_batch(batch, retracted_tweet=None, retracted_at=None):
    def check(alerts):
        assert sorted(apply_retractions(alerts)) == sorted(batch)
        if retracted_tweet is not None:
            # the deletion came after the alerts were written: each one is retracted, same alert_id
            written = sorted(a for a in alerts if a.tweet_id == retracted_tweet and not a.reason.startswith("retract:"))
            retractions = sorted(a for a in alerts if a.reason.startswith("retract:"))
            assert written and retractions == sorted(
                a._replace(ts=retracted_at, reason="retract:" + a.reason) for a in written)
    return check


def test_streaming_out_of_order_equals_batch_and_retracts_late_deletes():
    w = hand_world()
    batch = w.alerts()
    assert audience(batch) == sorted(HAND_BATCH)
    run_streaming(w, streamed(w, seed=11), streaming_matches_batch(batch, "901", T0 + 900), equal_to([]))


def test_streaming_reports_data_behind_the_watermark_as_dead_letters():
    w = hand_world()
    batch = w.alerts()
    late_ping = ping("2", T0 + 40, north_of(HERE, 9000))   # arrives after the watermark passed T0 + 1000
    w.pings.append(late_ping)

    def check_dead(dead):
        assert dead and all(d.source.startswith("alerts:") and d.error.startswith("late:") for d in dead)
        assert any('"user_id": "2"' in d.raw for d in dead)
    run_streaming(w, streamed(w, seed=3, deliver_late=(late_ping,)), streaming_matches_batch(batch), check_dead)


# ---- the generator's world -----------------------------------------------------------------

def load_world(directory, params=None):
    """Parse a generated world's input files (lines the parser rejects are the parse step's dead letters)."""
    import json
    import os
    from schemas.errors import InvalidRecord
    from schemas.parse import parse_line
    from schemas.timefmt import parse_rfc3339

    def records(kind):
        out = []
        with open(os.path.join(directory, f"{kind}.jsonl"), encoding="utf-8") as handle:
            for line in handle:
                try:
                    out.append(parse_line(kind, line))
                except InvalidRecord:
                    pass
        return out
    w = World(params)
    w.users, w.pings, w.taps = records("users"), records("pings"), records("taps")
    firehose = records("tweets")
    w.tweets = [t for t in firehose if isinstance(t, Tweet)]
    w.deletes = [d for d in firehose if isinstance(d, TweetDelete)]
    with open(os.path.join(directory, "truth", "follows.jsonl"), encoding="utf-8") as handle:
        w.follows = [Follow(**{**f, "established_at": parse_rfc3339(f["established_at"])})
                     for f in map(json.loads, handle)]
    with open(os.path.join(directory, "truth", "happenings.jsonl"), encoding="utf-8") as handle:
        truth = [json.loads(line) for line in handle]
    deleted = set()   # every tweet a compliance message withdrew (synthetic.compliance): never alerted
    for name in ("deleted.jsonl", "withdrawn.jsonl"):
        with open(os.path.join(directory, "truth", name), encoding="utf-8") as handle:
            deleted |= {json.loads(line)["tweet_id"] for line in handle}
    return w, truth, deleted


@pytest.fixture(scope="module")
def generated_world(tmp_path_factory):
    world = pytest.importorskip("synthetic.world")
    directory = tmp_path_factory.mktemp("world")
    world.write_world(str(directory), users=40, hours=4, seed=3)
    return load_world(str(directory))


def test_generated_world_alerts_exactly_whom_truth_and_rules_say(generated_world):
    w, truth, deleted = generated_world
    got = sorted((a.user_id, a.tweet_id, a.reason, a.distance_m) for a in w.alerts())
    expected = oracle(w, deleted)
    assert got == expected                       # no false positives, no false negatives
    # the world decides friend alerts (this seed's are all on tweets a compliance message withdrew)
    assert len(got) >= 20 and any(r.startswith("friend:") for _u, _t, r, _d in oracle(w, set()))
    happening_of = {tid: h["happening_id"] for h in truth for tid in h["event_tweet_ids"]}
    # every alert is about a true happening, never about a deleted tweet
    assert all(tid in happening_of and tid not in deleted for _u, tid, _r, _d in got)
    # per true happening, the alerted users are the oracle's
    per_happening = lambda rows: {(happening_of[t], u) for u, t, _r, _d in rows}  # noqa: E731
    assert per_happening(got) == per_happening(expected)
    assert {h for h, _u in per_happening(got)} == {h["happening_id"] for h in truth}


def test_generated_world_in_beam_batch(generated_world):
    w, _truth, _deleted = generated_world
    expected = w.alerts()
    with TestPipeline() as p:
        out = beam_inputs(p, w) | FanOutGeofencedAlerts(w.params)
        assert_that(out["alerts"], equal_to(expected), label="Alerts")


def test_generated_world_streamed_out_of_order_equals_batch(generated_world):
    w = copy.copy(generated_world[0])
    # coarse ticks: the same decisions, and a GC that fired inside a tick would show here
    w.params = AlertParams(stream_tick_s=600.0)
    batch = w.alerts()
    assert batch == generated_world[0].alerts()
    events = w.tweets + w.deletes + w.pings + w.taps + w.follows

    def when(e):
        # a follow leaves the follow step at its touch's deadline (pending expiry, rounded up)
        return math.ceil(e.established_at + 600.0) if isinstance(e, Follow) else e.ts
    rnd = random.Random(5)
    stream = TestStream()
    start, end = min(map(when, events)), max(map(when, events))
    step = 3600.0
    mark = start
    while mark <= end:
        # each hour's events arrive shuffled, then the watermark passes them
        batch_events = [e for e in events if mark <= when(e) < mark + step]
        rnd.shuffle(batch_events)
        if batch_events:
            stream.add_elements([TimestampedValue(e, when(e)) for e in batch_events])
        mark += step
        stream.advance_watermark_to(mark)
    stream.advance_watermark_to_infinity()
    run_streaming(w, stream, streaming_matches_batch(batch), equal_to([]))


def test_params_are_simple_typed_for_the_command_line():
    import dataclasses
    import typing
    hints = typing.get_type_hints(AlertParams)
    for field in dataclasses.fields(AlertParams):
        assert hints[field.name] in (int, float, str, bool), field.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        AlertParams().burst_radius_m = 1.0

"""Driver: core.alerts.fan_out_over on FlinkOps (a local MiniCluster) vs core.alerts.fan_out.

Usage: alerts_fanout.py MODE...  (batch, streaming). The hand-made world of
tests/test_alerts.py's ``hand_world`` (rebuilt here: that module needs Beam 2.77): a
concert tweet with pings near it, a friend by a follow, an opted-out user, a retweet,
and a fire whose tweet is deleted after its alerts. Prints one JSON object
{mode: {'got': alerts as dicts, 'want': fan_out's, 'dead': dead letters}}.
"""
from __future__ import annotations

import math
import random
import sys

from core.alerts import AlertParams, fan_out, fan_out_over
from core.locations import report_from_ping, report_from_tweet
from flink_job.ops import FlinkOps
from schemas.records import Follow, Ping, Tweet, TweetDelete, User
from tests.flink.drivers import collect, environment, event_stream, reply

T0 = 1_764_000_000.0
HERE = (35.6595, 139.7005)
EARTH_R = 6371008.8


def north_of(point, metres):
    return (point[0] + math.degrees(metres / EARTH_R), point[1])


def ping(uid, at, point):
    return Ping(uid, at, point[0], point[1], 5.0, "gps")


def tweet(tid, author, at, text="渋谷で路上ライブ！", point=HERE, rt=None):
    return Tweet(tid, author, at, text, "ja", [], point[0], point[1], False, None, rt)


def hand_world():
    params = AlertParams(max_alerts_per_user_per_hour=3)
    users = [User(u, "k", True, False, None) for u in ("1", "2", "3", "4", "5")] + [User("6", "k", False, False, None)]
    pings = [ping("2", T0, north_of(HERE, 100)), ping("3", T0, north_of(HERE, 1500)),
             ping("4", T0 + 30, north_of(HERE, 50)), ping("5", T0 - 100, north_of(HERE, 400)),
             ping("5", T0 + 200, north_of(HERE, 8000)), ping("6", T0, HERE)]
    follows = [Follow("1", "3", T0 - 1000, "a" * 32, "c")]
    tweets = [tweet("900", "1", T0 + 60), tweet("901", "4", T0 + 90, "駅前で火事"),
              tweet("902", "2", T0 + 300, "タイムセール", point=north_of(HERE, 8000)),
              tweet("903", "1", T0 + 100, "RT ライブ", rt="900")]
    deletes = [TweetDelete("901", "4", T0 + 900)]
    return params, users, pings, follows, tweets, deletes


def reports(params, pings, tweets):
    found = [report_from_ping(p, params.max_accuracy_m) for p in pings] + [report_from_tweet(t) for t in tweets]
    return [r for r in found if r is not None]


def when(event) -> float:
    return event.established_at if isinstance(event, Follow) else event.ts


def run(mode: str) -> dict:
    params, users, pings, follows, tweets, deletes = hand_world()
    want = fan_out(tweets, deletes, reports(params, pings, tweets), follows, users, params)
    batch = mode == "batch"
    env = environment(batch=batch, paced=not batch)
    if batch:
        def source(items):
            return env.from_collection(list(items))
        inputs = {"tweets": source(tweets), "deletes": source(deletes), "follows": source(follows),
                  "users": source(users), "reports": source(reports(params, pings, tweets))}
    else:
        # one event-time stream, shuffled within 250 s; the watermark allows 300 s
        rnd = random.Random(5)
        events = sorted(tweets + deletes + pings + follows, key=lambda e: when(e) + rnd.uniform(0.0, 250.0))
        stream = event_stream(env, events, when, out_of_orderness_s=300.0, pace_s=0.02)
        only = {name: stream.filter(lambda e, t=t: isinstance(e, t)).name(f"Only{name}")
                for name, t in (("tweets", Tweet), ("deletes", TweetDelete), ("pings", Ping), ("follows", Follow))}
        inputs = {"tweets": only["tweets"], "deletes": only["deletes"], "follows": only["follows"],
                  "users": env.from_collection(users),
                  "reports": only["tweets"].union(only["pings"]).flat_map(
                      lambda e: [r for r in reports(params, *(([e], []) if isinstance(e, Ping) else ([], [e])))])}
    ops = FlinkOps(env, bounded=batch, uid_prefix="FanOut")
    out = fan_out_over(ops, inputs, params)
    tagged = out["alerts"].map(lambda a: ("alert", a)).union(out["dead_letters"].map(lambda d: ("dead", d)))
    got = collect(tagged)
    return {"got": sorted((a._asdict() for kind, a in got if kind == "alert"), key=lambda a: (a["ts"], a["alert_id"], a["reason"])),
            "want": [a._asdict() for a in want],
            "dead": [d._asdict() for kind, d in got if kind == "dead"],
            "out_of_order": 0 if batch else sum(1 for x, y in zip(events, events[1:]) if when(y) < when(x))}


if __name__ == "__main__":
    reply({mode: run(mode) for mode in sys.argv[1:]})

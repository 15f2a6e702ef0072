"""The scenario worlds of the compliance tests (tests/test_compliance*.py, tests/flink's
compliance driver): no Beam here, so the PyFlink venv imports it too.

Every scenario is one concert tweet in its own part of Tokyo (its own happening key) by its own
author, with its own listener nearby: uncovered, the tweet alerts the listener and is on the
timeline. A scenario's messages either cover the tweet or, for the controls, cover nothing.
"""
from __future__ import annotations

import h3

from core import geo
from core.alerts import AlertParams, alert_id, fan_out_over, fan_out_outputs
from core.compliance import apply_retractions
from core.locations import report_from_ping, report_from_tweet
from core.ops import LocalOps
from core.processor import group_by_key, run_ordered
from schemas.records import Alert, ComplianceEvent, Ping, TimelineEntry, Tweet, User

T0 = 1_764_000_000.0
PARAMS = AlertParams()
# 4 x 4 places ~3.3 km apart: distinct happening cells (res 7), listeners out of each other's radius
GRID = [(35.60 + 0.03 * (i // 4), 139.64 + 0.04 * (i % 4)) for i in range(16)]
BEFORE, AFTER = T0 + 30, T0 + 900   # the tweets are at T0 + 60 + 7 i


class Scenario:
    def __init__(self, i: int, author: str | None = None):
        self.i = i
        self.place = GRID[i]
        self.author = author or str(2000 + i)
        self.listener = str(5000 + i)
        self.tweet = Tweet(str(10_000 + i), self.author, T0 + 60 + 7 * i, f"ライブ最高 {i}", "ja", [],
                           self.place[0], self.place[1], False, None, None)

    @property
    def ping(self):
        return Ping(self.listener, T0, self.place[0] + 0.001, self.place[1], 5.0, "gps")


def event(kind, ts, tweet_id=None, author_id=None, **fields):
    return ComplianceEvent(tweet_id, author_id, ts, kind, **fields)


# kind -> (messages for a scenario's tweet at time `at`, whether they cover it)
CASES = {
    "delete": (lambda s, at: [event("delete", at, s.tweet.tweet_id, s.author)], True),
    "tweet_edit": (lambda s, at: [event("tweet_edit", at, str(90_000 + s.i), superseded=[s.tweet.tweet_id])], True),
    "withheld": (lambda s, at: [event("withheld", at, s.tweet.tweet_id, s.author, countries=["JP", "KR"])], True),
    "withheld_everywhere": (lambda s, at: [event("withheld", at, s.tweet.tweet_id, s.author, countries=["XX"])], True),
    "drop": (lambda s, at: [event("drop", at, s.tweet.tweet_id, s.author)], True),
    "scrub_geo": (lambda s, at: [event("scrub_geo", at, None, s.author, up_to_tweet_id=s.tweet.tweet_id)], True),
    "user_delete": (lambda s, at: [event("user_delete", at, None, s.author)], True),
    "user_protect": (lambda s, at: [event("user_protect", at, None, s.author)], True),
    "user_suspend": (lambda s, at: [event("user_suspend", at, None, s.author)], True),
    "user_withheld": (lambda s, at: [event("user_withheld", at, None, s.author, countries=["JP"])], True),
    # an undo at `at` restores only tweets created after it: the tweet (created before) stays covered
    "protect_undone_later": (lambda s, at: [event("user_protect", at - 20, None, s.author),
                                            event("user_unprotect", at + 5 if at > s.tweet.ts else s.tweet.ts + 5,
                                                  None, s.author)], True),
    # controls: these cover nothing
    "withheld_elsewhere": (lambda s, at: [event("withheld", at, s.tweet.tweet_id, s.author, countries=["DE"])], False),
    "undrop": (lambda s, at: [event("undrop", at, s.tweet.tweet_id, s.author)], False),
    "scrub_geo_older": (lambda s, at: [event("scrub_geo", at, None, s.author,
                                             up_to_tweet_id=str(int(s.tweet.tweet_id) - 1))], False),
}
# a protect undone before the tweet was created: the tweet is public
CONTROL_BEFORE_ONLY = {"protect_undone_before": (lambda s, at: [event("user_protect", at - 20, None, s.author),
                                                                event("user_unprotect", at, None, s.author)], False)}


def world(at: float):
    cases = dict(CASES, **(CONTROL_BEFORE_ONLY if at < T0 + 60 else {}))
    scenarios = {name: Scenario(i) for i, name in enumerate(sorted(cases))}
    messages = [m for name, s in scenarios.items() for m in cases[name][0](s, at)]
    covered = {name for name in scenarios if cases[name][1]}
    return scenarios, messages, covered


def inputs_of(tweets, messages, scenarios):
    pings = [s.ping for s in scenarios.values()]
    reports = [report_from_ping(p, PARAMS.max_accuracy_m) for p in pings] + [report_from_tweet(t) for t in tweets]
    users = [User(s.listener, "k", True, False, None) for s in scenarios.values()]
    return {"tweets": list(tweets), "deletes": list(messages), "reports": [r for r in reports if r],
            "follows": [], "users": users, "pings": pings}


def outputs(tweets, messages, scenarios, ops=None):
    inputs = inputs_of(tweets, messages, scenarios)
    if ops is None:
        out = fan_out_outputs(inputs["tweets"], messages, inputs["reports"], [], inputs["users"], PARAMS)
        return {"alerts": sorted(out["alerts"]), "timeline": sorted(out["timeline"])}
    out = fan_out_over(ops, {k: v for k, v in inputs.items() if k != "pings"}, PARAMS)
    return {"alerts": sorted(out["alerts"]), "timeline": sorted(out["timeline"])}


class StreamingLocalOps(LocalOps):
    """Streaming's semantics on plain lists: every key's messages run in event-time order through
    ``process`` (no bounded-input shortcut), so a message after an output retracts it."""

    def run_ordered(self, col, processor, stage_name=None, *, tick_s=1.0, allowed_lateness_s=0.0, step=""):
        out = []
        for key, msgs in sorted(group_by_key(col).items()):
            out.extend(run_ordered(processor, msgs)[1])
        return {"out": out, "late": []}


def expected(scenarios, covered):
    alerts, entries = [], []
    for name, s in scenarios.items():
        if name in covered:
            continue
        t = s.tweet
        key = f"concert|{h3.latlng_to_cell(t.lat, t.lng, PARAMS.happening_h3_res)}|{int(t.ts * 1000)}"
        distance = round(geo.distance_m(t.lat, t.lng, s.ping.lat, s.ping.lng), 1)
        alerts.append(Alert(alert_id(s.listener, key, t.tweet_id), s.listener, t.tweet_id, t.ts, distance,
                            "nearby:concert:concert"))
        entries.append(TimelineEntry(t.tweet_id, t.author_id, t.ts, t.text, t.lat, t.lng,
                                     h3.latlng_to_cell(t.lat, t.lng, PARAMS.timeline_h3_res), "concert", False))
    return {"alerts": sorted(alerts), "timeline": sorted(entries)}


def check_streamed(alerts, timeline, scenarios, covered, at):
    want = expected(scenarios, covered)
    assert sorted(apply_retractions(alerts)) == want["alerts"]
    assert sorted(apply_retractions(timeline)) == want["timeline"]
    covered_ids = {scenarios[name].tweet.tweet_id for name in covered}
    about_covered = sorted(a for a in alerts if a.tweet_id in covered_ids)
    entries_covered = sorted(e for e in timeline if e.tweet_id in covered_ids)
    if at < T0 + 60:
        # the message came first: nothing about a covered tweet is ever written
        assert about_covered == [] and entries_covered == []
        return
    # the message came after: each alert once, then its retraction (same alert_id) at the message's time
    written = [a for a in about_covered if not a.reason.startswith("retract:")]
    assert len(written) == len(covered)
    retractions = sorted(a for a in about_covered if a.reason.startswith("retract:"))
    name_of = {s.tweet.tweet_id: name for name, s in scenarios.items()}
    first_message = {name: min(m.ts for m in CASES[name][0](scenarios[name], at)) for name in covered}
    assert retractions == sorted(a._replace(ts=first_message[name_of[a.tweet_id]], reason="retract:" + a.reason)
                                 for a in written)
    assert sorted(entries_covered) == sorted(
        [e for e in entries_covered if not e.retracted] + [e._replace(retracted=True) for e in entries_covered
                                                            if not e.retracted])
    assert len(entries_covered) == 2 * len(covered)

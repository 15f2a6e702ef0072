"""Property: for random interleavings of tweets and compliance messages, the outputs equal those of
the same world with what each message covers taken out in advance (and no messages at all).

Worlds are the scenarios of ``tests/compliance_scenarios.py`` (each tweet its own happening, listener
and place, so tweets do not interact), with authors shared between scenarios so user events
cover several tweets, and random messages of every kind at random event times, before or after
the tweets. What a message covers is computed here by an oracle written from the rules as
intervals (``core.compliance`` keeps running state instead). Checked in batch and with
streaming's semantics (every key's messages processed in event-time order, retractions applied).
"""
from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from core.compliance import apply_retractions
from schemas.compliance import USER_KINDS
from schemas.records import ComplianceEvent
from tests.compliance_scenarios import T0, Scenario, StreamingLocalOps, outputs

AUTHORS = ("201", "202", "203")
STATE_OF = {"user_protect": ("protect", True), "user_unprotect": ("protect", False),
            "user_suspend": ("suspend", True), "user_unsuspend": ("suspend", False),
            "user_delete": ("delete", True), "user_undelete": ("delete", False)}
COUNTRY_LISTS = (["JP"], ["DE"], ["XX"], ["DE", "JP"], [])
KINDS = ("delete", "tweet_edit", "withheld", "drop", "undrop") + USER_KINDS


def hidden_by_intervals(tweet, events) -> bool:
    """The user-state rule as intervals: a state from a start to the next end (an end with no
    start before it: from the beginning); a tweet is hidden by an interval ending after it."""
    for family in ("protect", "suspend", "delete", "withheld"):
        intervals, start = [], None
        for e in sorted(events, key=lambda e: e.ts):
            if e.kind == "user_withheld":
                fam, starts = "withheld", "JP" in e.countries or "XX" in e.countries
            elif e.kind in STATE_OF:
                fam, starts = STATE_OF[e.kind]
            else:
                continue
            if fam != family:
                continue
            if starts and start is None:
                start = e.ts
            elif not starts:
                intervals.append((-math.inf if start is None else start, e.ts))
                start = None
        if start is not None:
            intervals.append((start, math.inf))
        if any(end > tweet.ts for _start, end in intervals):
            return True
    return False


def covered(tweet, messages) -> bool:
    mine = [m for m in messages if m.author_id == tweet.author_id]
    for m in messages:
        if m.kind in ("delete", "drop") and m.tweet_id == tweet.tweet_id:
            return True
        if m.kind == "withheld" and m.tweet_id == tweet.tweet_id and ({"JP", "XX"} & set(m.countries)):
            return True
        if m.kind == "tweet_edit" and tweet.tweet_id in m.superseded:
            return True
    if any(m.kind == "scrub_geo" and int(m.up_to_tweet_id) >= int(tweet.tweet_id) for m in mine):
        return True
    return hidden_by_intervals(tweet, mine)


@st.composite
def worlds(draw):
    n = draw(st.integers(1, 8))
    scenarios = {f"s{i}": Scenario(i, author=draw(st.sampled_from(AUTHORS))) for i in range(n)}
    tweets = [s.tweet for s in scenarios.values()]
    times = draw(st.lists(st.integers(-50, 1200), min_size=0, max_size=10, unique=True))
    messages = []
    for offset in times:
        kind = draw(st.sampled_from(KINDS))
        target = tweets[draw(st.integers(0, n - 1))]
        ts = T0 + offset
        if kind in USER_KINDS:
            author = draw(st.sampled_from(AUTHORS))
            if kind == "scrub_geo":
                messages.append(ComplianceEvent(None, author, ts, kind,
                                                up_to_tweet_id=str(int(target.tweet_id) + draw(st.integers(-1, 1)))))
            else:
                countries = draw(st.sampled_from(COUNTRY_LISTS)) if kind == "user_withheld" else []
                messages.append(ComplianceEvent(None, author, ts, kind, countries=countries))
        elif kind == "tweet_edit":
            messages.append(ComplianceEvent(str(90_000 + offset), None, ts, kind, superseded=[target.tweet_id]))
        else:
            countries = draw(st.sampled_from(COUNTRY_LISTS)) if kind == "withheld" else []
            messages.append(ComplianceEvent(target.tweet_id, target.author_id, ts, kind, countries=countries))
    return scenarios, tweets, messages


@settings(max_examples=80, deadline=None)
@given(worlds())
def test_outputs_equal_the_world_with_covered_tweets_taken_out(world):
    scenarios, tweets, messages = world
    kept = [t for t in tweets if not covered(t, messages)]
    want = outputs(kept, [], scenarios)
    assert outputs(tweets, messages, scenarios) == want
    streamed = outputs(tweets, messages, scenarios, StreamingLocalOps())
    assert sorted(apply_retractions(streamed["alerts"])) == want["alerts"]
    assert sorted(apply_retractions(streamed["timeline"])) == want["timeline"]
    # nothing about a tweet that stays is ever taken back
    kept_ids = {t.tweet_id for t in kept}
    assert all(not a.reason.startswith("retract:") for a in streamed["alerts"] if a.tweet_id in kept_ids)
    assert all(not e.retracted for e in streamed["timeline"] if e.tweet_id in kept_ids)

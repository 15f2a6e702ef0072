"""The local timeline: one entry per public, precisely geotagged tweet in the service area.

Engine-neutral (see ``core``): :func:`timeline_over` is wired by ``core.alerts.fan_out_over``
beside the alerts, and its entries pass the same compliance gates (``core.compliance``)
before the ``timeline/`` sink, so deletes, edits, withholding in the service's country,
scrubbed locations and protected, suspended or deleted users apply to it exactly as to
alerts. The portal's "near you" page (issue #15) reads it.

Which tweets: originals (not retweets: a retweet's text is its original's, which has an
entry of its own) with a *precise* location (an exact point; a place's bounding-box
centre is not a place in a cell, so place-only tweets are left out), inside the service
area (``schemas.service_area``). ``h3_cell`` is the tweet's cell at the statistics'
resolution (``AlertParams.timeline_h3_res``, which ``core.config`` sets to
``DpParams.h3_res``). ``happening`` is the tweet's happening kind (``core.happenings``) when
it is one -- the first in (kind, label) order when several, e.g. two bursting hashtags --
else null. Each entry is decided at its tweet's event time, with the happenings found for
it at that same time (:class:`JoinHappening`, keyed by tweet id, sorts happenings first).
"""
from __future__ import annotations

from typing import NamedTuple

import h3

from core.compliance import Shown
from core.happenings import Happening, is_precise
from core.processor import Processor
from schemas import service_area
from schemas.records import TimelineEntry, Tweet


class TimelineTweet(NamedTuple):
    tweet: Tweet


def timeline_candidate(tweet: Tweet) -> bool:
    return tweet.retweet_of is None and is_precise(tweet) and service_area.contains(tweet.lat, tweet.lng)


def timeline_entry(tweet: Tweet, h3_res: int, happening) -> TimelineEntry:
    return TimelineEntry(tweet.tweet_id, tweet.author_id, tweet.ts, tweet.text, tweet.lat, tweet.lng,
                         h3.latlng_to_cell(tweet.lat, tweet.lng, h3_res), happening, False)


class JoinHappening(Processor):
    """Keyed by tweet id: the tweet's timeline entry, with its happening kind if it is one."""
    name = "timeline"

    def __init__(self, h3_res: int):
        self.h3_res = h3_res

    @staticmethod
    def sort_key(msg):
        if isinstance(msg, Happening):
            return (msg.ts, 0, msg.kind, msg.label)
        return (msg.tweet.ts, 1, "", "")

    def initial_state(self):
        return {"ts": None, "happening": None, "done": False}

    def process(self, state, msg):
        if isinstance(msg, Happening):
            state["ts"] = msg.ts
            state["happening"] = state["happening"] or msg.kind
            return state, []
        state["ts"] = msg.tweet.ts
        if state["done"]:  # the same tweet delivered twice
            return state, []
        state["done"] = True
        entry = timeline_entry(msg.tweet, self.h3_res, state["happening"])
        return state, [Shown(entry, entry.author_id)]

    def expire(self, state, now):
        # a tweet's happenings carry the tweet's own time: nothing can come for it later
        return None if state["ts"] is None or now > state["ts"] else state

    def gc_time(self, state):
        return None if state["ts"] is None else state["ts"] + 1e-3


def timeline_over(ops, tweets, happenings, params, ordered):
    """tweets, happenings -> {'out': ``Shown`` timeline entries at their tweet's time, 'late': DeadLetter}."""
    msgs = ops.flatten([
        ops.flat_map(tweets, lambda t: [(t.tweet_id, TimelineTweet(t))] if timeline_candidate(t) else [],
                     "TimelineTweets"),
        ops.map(happenings, lambda h: (h.tweet_id, h), "KeyHappeningsByTweet"),
    ], "TimelineMessages")
    # msgs : (tweet id, TimelineTweet | Happening)
    return ordered(msgs, JoinHappening(params.timeline_h3_res), "JoinHappenings")

"""The firehose's compliance messages of a synthetic world, and what they withdraw.

Called by ``World.build_tweets`` once the tweets exist, with its own random stream
(``World.rng("compliance")``), so every other line of the world is as before. Rates are
per original tweet or per account-day, of the order Twitter's compliance firehose shows
(edits and withholdings are rare; a few accounts a thousand go private, are suspended or
deleted each day): :data:`TWEET_RATES`, :data:`USER_RATES_PER_DAY`. A world of a few
hours would then see almost none, so every world also gets at least one message of each
kind, aimed at a precise event tweet (one that alerts and is on the timeline), so the
pipeline's honouring of each kind shows in its outputs.

What each message withdraws (``truth/withdrawn.jsonl``: ``tweet_id``, ``author_id``,
``kind``, ``at``) is written here from the plan, independently of ``core.compliance``:
the tweet of a ``delete`` (the delete notices keep ``truth/deleted.jsonl``), ``drop``,
``withheld`` in JP and the original of a ``tweet_edit``; the user's tweets up to the id
of a ``scrub_geo``; and every tweet a protected, suspended, deleted or JP-withheld user
created before the state's end (the whole world when it does not end). Withholding in
another country and ``undrop`` withdraw nothing.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from synthetic import twitter

MINUTE = 60.0
SERVICE_COUNTRY = "JP"
# per original tweet
TWEET_RATES = {"tweet_edit": 0.004, "withheld": 0.001, "drop": 0.0005}
# per account and day
USER_RATES_PER_DAY = {"scrub_geo": 0.0005, "user_protect": 0.001, "user_suspend": 0.0005,
                      "user_delete": 0.0005, "user_withheld": 0.0002}
UNDO = {"user_protect": "user_unprotect", "user_suspend": "user_unsuspend", "user_delete": "user_undelete"}
UNDO_SHARE = 0.5
JP_SHARE = 0.4    # of withholdings, those in the service's country


class Withdrawn(NamedTuple):
    tweet_id: int
    author_id: str
    kind: str
    millis: int


class Plan(NamedTuple):
    lines: list        # (millis, order key, line): compliance messages and edited versions
    edits: list        # TweetSpec: the new versions of edited tweets
    withdrawn: list    # Withdrawn, one per tweet (its first covering message)


def plan_compliance(world, rng, originals: list, deleted_ids: set, targets: list) -> Plan:
    """The compliance messages of ``world``. ``originals``: every original tweet's spec;
    ``targets``: precise event tweets (not deleted) the guaranteed messages aim at."""
    t1_ms = int(world.t1 * 1000)
    lines, edits, withdrawn = [], [], {}
    by_author: dict[str, list] = {}
    for spec in originals:
        by_author.setdefault(spec.author.user_id, []).append(spec)
    pool = [s for s in originals if s.tweet_id not in deleted_ids]
    aimed = sorted(targets, key=lambda s: s.tweet_id)
    rng.shuffle(aimed)

    def withdraw(spec, kind, ms):
        if spec.tweet_id not in withdrawn and spec.tweet_id not in deleted_ids:
            withdrawn[spec.tweet_id] = Withdrawn(spec.tweet_id, spec.author.user_id, kind, ms)

    def emit(ms, line):
        if ms < t1_ms:
            lines.append((ms, 1 << 64, line))
            return True
        return False

    def later(spec, low_min, high_min):
        return spec.millis + int(rng.uniform(low_min, high_min) * MINUTE * 1000)

    # ---- tweet events: the sampled ones, then one aimed at an event tweet per kind
    chosen = {kind: [s for s in pool if rng.random() < rate] for kind, rate in TWEET_RATES.items()}
    guaranteed = set()   # the aimed messages: each undoable one is undone too, so every kind occurs
    for kind in TWEET_RATES:
        if aimed and not any(s.coords is not None for s in chosen[kind]):
            chosen[kind].append(aimed.pop())
            guaranteed.add(chosen[kind][-1].tweet_id)
    taken = set()
    for kind in TWEET_RATES:
        for spec in sorted(chosen[kind], key=lambda s: s.tweet_id):
            if spec.tweet_id in taken:
                continue
            taken.add(spec.tweet_id)
            ms = later(spec, 1, 20)
            ids = (spec.tweet_id, spec.author.user_id)
            if kind == "tweet_edit":
                t = ms / 1000.0
                if ms >= t1_ms:
                    continue
                edit = world._spec(rng, t, _person_of(world, spec), _edited(spec.text), spec.hashtags,
                                   spec.coords, spec.place)
                edits.append(edit)
                lines.append((edit.millis, edit.tweet_id, twitter.render(edit)))
                emit(edit.millis, twitter.render_v2_event(
                    "tweet_edit", edit.millis, tweet=(edit.tweet_id, None), initial_tweet_id=str(spec.tweet_id),
                    edit_tweet_ids=[str(spec.tweet_id), str(edit.tweet_id)]))
                withdraw(spec, kind, edit.millis)
            elif kind == "withheld":
                here = rng.random() < JP_SHARE or not any(w.kind == "withheld" for w in withdrawn.values())
                countries = [SERVICE_COUNTRY, "KR"] if here else ["DE"]
                line = (twitter.render_v1_status_withheld(spec.tweet_id, spec.author.user_id, countries, ms)
                        if spec.api == "v1" else
                        twitter.render_v2_event("withheld", ms, tweet=ids, withheld_in_countries=countries))
                if emit(ms, line) and here:
                    withdraw(spec, kind, ms)
            else:  # drop, sometimes undone: the undo restores nothing created before it
                if emit(ms, twitter.render_v2_event("drop", ms, tweet=ids)):
                    withdraw(spec, kind, ms)
                    if rng.random() < UNDO_SHARE or spec.tweet_id in guaranteed:
                        undo_ms = ms + int(rng.uniform(5, 60) * MINUTE * 1000)
                        emit(undo_ms, twitter.render_v2_event("undrop", undo_ms, tweet=ids))

    # ---- user events: sampled per account-day, then one per kind on an aimed tweet's author
    days = (world.t1 - world.t0) / 86400.0
    authors = sorted(by_author)
    users_hit: set = set()
    for kind, rate in USER_RATES_PER_DAY.items():
        picked = [a for a in authors if rng.random() < rate * days and a not in users_hit]
        if not picked:
            while aimed and aimed[-1].author.user_id in users_hit:
                aimed.pop()
            if aimed:
                picked = [aimed.pop().author.user_id]
                guaranteed.add(picked[0])
        for user_id in picked:
            users_hit.add(user_id)
            tweets = sorted(by_author[user_id] + [e for e in edits if e.author.user_id == user_id],
                            key=lambda s: s.tweet_id)
            precise = [s for s in tweets if s.coords is not None] or tweets
            anchor = precise[rng.randrange(len(precise))]
            start = later(anchor, 2, 30) if kind == "scrub_geo" else later(anchor, -30, 5)
            start = max(start, int(world.t0 * 1000))
            if kind == "scrub_geo":
                if anchor.api == "v1":
                    line = twitter.render_v1_scrub_geo(user_id, anchor.tweet_id, start)
                else:
                    line = twitter.render_v2_event("scrub_geo", start, user_id=user_id,
                                                   up_to_tweet_id=str(anchor.tweet_id))
                if emit(start, line):
                    for spec in tweets:
                        if spec.tweet_id <= anchor.tweet_id:
                            withdraw(spec, kind, start)
                continue
            if kind == "user_withheld":
                here = rng.random() < JP_SHARE or len(picked) == 1
                countries = [SERVICE_COUNTRY] if here else ["DE", "FR"]
                line = (twitter.render_v1_user_withheld(user_id, countries, start) if anchor.api == "v1" else
                        twitter.render_v2_event("user_withheld", start, user_id=user_id,
                                                withheld_in_countries=countries))
                end = math.inf if here else -math.inf
            else:
                line = twitter.render_v2_event(kind, start, user_id=user_id)
                end = math.inf
                if rng.random() < UNDO_SHARE or user_id in guaranteed:
                    end_ms = start + int(rng.uniform(20, 120) * MINUTE * 1000)
                    if emit(end_ms, twitter.render_v2_event(UNDO[kind], end_ms, user_id=user_id)):
                        end = end_ms
            if emit(start, line):
                for spec in tweets:
                    if spec.millis < end:
                        withdraw(spec, kind, start)
    return Plan(lines, edits, sorted(withdrawn.values()))


def _edited(text: str) -> str:
    return f"{text} (edited)" if text.isascii() else f"{text}（追記）"


def _person_of(world, spec):
    return world._accounts[spec.author.user_id]

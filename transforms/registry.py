"""One record per user and per tweet, upstream of every step that uses them.

* :class:`MergeRegistry`: ``users.jsonl`` may hold a ``user_id`` more than once. The
  user keeps one merged record, read the most private way wherever the copies
  disagree (:func:`merge_user_copies`): opted out of statistics if any copy is,
  opted in to alerts only if every copy is, no usable key (``pubkey`` "") unless
  every copy has the same one, no age band unless all agree. Every copy beyond
  the first is a dead letter naming the duplicate and what was merged. Follows,
  alerts and DP statistics all read the merged registry.
* :class:`DedupeTweets`: a tweet id delivered more than once (the firehose
  repeats itself; one tweet may come as v1.1 and as v2) is used once, by alerts
  and statistics alike; every later copy is a dead letter. In streaming the
  "seen" mark of an id is kept until the watermark is ``horizon_s`` past the
  tweet's time (bounded state); the launcher sets ``horizon_s`` beyond every
  step's lateness bound, so a copy arriving after that is late data no step
  uses.
* :class:`KeepRegisteredPings`: a ping of a user who is not in the registry
  places no one and counts for nothing: a dead letter, not a silent drop.
"""
from __future__ import annotations

import typing
from typing import Iterable

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from schemas.records import DeadLetter, Ping, Tweet, User

_NS = "tapfollow"


def merge_user_copies(copies: Iterable[User]) -> tuple[User, list[str]]:
    """(the merged user, what disagreed) for all copies of one user_id (order-free)."""
    copies = sorted(copies, key=lambda u: (u.pubkey, u.alerts_opt_in, u.stats_opt_out, u.age_band or ""))
    first = copies[0]
    keys = {u.pubkey for u in copies}
    bands = {u.age_band for u in copies}
    merged = User(
        user_id=first.user_id,
        pubkey=first.pubkey if len(keys) == 1 else "",
        alerts_opt_in=all(u.alerts_opt_in for u in copies),
        stats_opt_out=any(u.stats_opt_out for u in copies),
        age_band=first.age_band if len(bands) == 1 else None,
    )
    differences = []
    if len({u.stats_opt_out for u in copies}) > 1:
        differences.append("stats_opt_out differs: kept opted out")
    if len({u.alerts_opt_in for u in copies}) > 1:
        differences.append("alerts_opt_in differs: kept not opted in")
    if len(keys) > 1:
        differences.append("pubkey differs: no usable key, taps of this user are refused")
    if len(bands) > 1:
        differences.append("age_band differs: kept none")
    return merged, differences


def merge_registry(pairs: Iterable[tuple[User, str]], origin: str):
    """Yield merged users and, tagged ``dead_letters``, each extra copy with its reason."""
    by_id: dict[str, list[tuple[User, str]]] = {}
    for user, raw in pairs:
        by_id.setdefault(user.user_id, []).append((user, raw))
    for user_id in sorted(by_id):
        copies = sorted(by_id[user_id], key=lambda pair: pair[1])
        if len(copies) == 1:
            yield copies[0][0]
            continue
        merged, differences = merge_user_copies(user for user, _ in copies)
        yield merged
        detail = "; ".join(differences) if differences else "the copies agree"
        for _user, raw in copies[1:]:
            yield beam.pvalue.TaggedOutput("dead_letters", DeadLetter(
                source=origin,
                error=f"duplicate user_id {user_id}: {len(copies)} copies in the registry, merged into one "
                      f"record read the most private way ({detail}); this copy is not used on its own",
                raw=raw))


class MergeRegistry(beam.PTransform):
    """``PCollection[(User, raw)]`` -> ``{'users': merged User, 'dead_letters': DeadLetter}``.

    The registry is a bounded snapshot: it is merged in one place (a side input
    of a single impulse), so the merged records keep the registry's timestamp.
    """

    def __init__(self, origin: str):
        super().__init__()
        self._origin = origin

    def expand(self, pairs):
        origin = self._origin
        out = (pairs.pipeline
               | "Impulse" >> beam.Create([None])
               | "Merge" >> beam.FlatMap(lambda _, rows: merge_registry(rows, origin),
                                         beam.pvalue.AsList(pairs)).with_outputs("dead_letters", main="users"))
        return {
            "users": out["users"] | "AsUser" >> beam.Map(lambda u: u).with_output_types(User),
            "dead_letters": out["dead_letters"] | "AsDeadLetter" >> beam.Map(lambda d: d).with_output_types(DeadLetter),
        }


class _FirstCopyFn(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
    EXPIRE = TimerSpec("expire", TimeDomain.WATERMARK)

    def __init__(self, origin: str, horizon_s: float):
        self._origin, self._horizon_s = origin, horizon_s

    def setup(self):
        self._duplicates = Metrics.counter(_NS, "duplicates.tweets")

    def process(self, element, seen=beam.DoFn.StateParam(SEEN), expire=beam.DoFn.TimerParam(EXPIRE)):
        tweet_id, (tweet, raw) = element
        if seen.read():
            self._duplicates.inc()
            yield beam.pvalue.TaggedOutput("dead_letters", DeadLetter(
                source=self._origin,
                error=f"duplicate tweet id {tweet_id}: already received, the first copy is the one used",
                raw=raw))
            return
        seen.write(True)
        expire.set(tweet.ts + self._horizon_s)
        yield tweet

    @on_timer(EXPIRE)
    def forget(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


class DedupeTweets(beam.PTransform):
    """``PCollection[(Tweet, raw)]`` -> ``{'tweets': Tweet (each id once), 'dead_letters'}``."""

    def __init__(self, origin: str, horizon_s: float):
        super().__init__()
        self._origin, self._horizon_s = origin, horizon_s

    def expand(self, pairs):
        out = (pairs
               | "ById" >> beam.Map(lambda pair: (pair[0].tweet_id, pair)).with_output_types(
                   typing.Tuple[str, typing.Tuple[Tweet, str]])
               | "FirstCopy" >> beam.ParDo(_FirstCopyFn(self._origin, self._horizon_s)).with_outputs(
                   "dead_letters", main="tweets"))
        return {
            "tweets": out["tweets"] | "AsTweet" >> beam.Map(lambda t: t).with_output_types(Tweet),
            "dead_letters": out["dead_letters"] | "AsDeadLetter" >> beam.Map(lambda d: d).with_output_types(DeadLetter),
        }


class _KnownUserFn(beam.DoFn):
    def __init__(self, origin: str):
        self._origin = origin

    def setup(self):
        self._unknown = Metrics.counter(_NS, "rejected.pings_unknown_user")

    def process(self, pair, registered):
        ping, raw = pair
        if ping.user_id in registered:
            yield ping
            return
        self._unknown.inc()
        yield beam.pvalue.TaggedOutput("dead_letters", DeadLetter(
            source=self._origin,
            error=f"user_id {ping.user_id} is not in the user registry: the ping places no one",
            raw=raw))


class KeepRegisteredPings(beam.PTransform):
    """``{'pings': (Ping, raw), 'users'}`` -> ``{'pings': registered users' pings, 'dead_letters'}``."""

    def __init__(self, origin: str):
        super().__init__()
        self._origin = origin

    def expand(self, inputs):
        registered = beam.pvalue.AsDict(inputs["users"] | "UserIds" >> beam.Map(lambda u: (u.user_id, True)))
        out = inputs["pings"] | "KnownUser" >> beam.ParDo(_KnownUserFn(self._origin), registered).with_outputs(
            "dead_letters", main="pings")
        return {
            "pings": out["pings"] | "AsPing" >> beam.Map(lambda p: p).with_output_types(Ping),
            "dead_letters": out["dead_letters"] | "AsDeadLetter" >> beam.Map(lambda d: d).with_output_types(DeadLetter),
        }

"""One record per user and per tweet, upstream of every step that uses them: the rules, engine-neutral.

* :func:`merge_registry`: ``users.jsonl`` may hold a ``user_id`` more than once. The
  user keeps one merged record, read the most private way wherever the copies
  disagree (:func:`merge_user_copies`): opted out of statistics if any copy is,
  opted in to alerts only if every copy is, no usable key (``pubkey`` "") unless
  every copy has the same one, no age band unless all agree. Every copy beyond
  the first is a dead letter naming the duplicate and what was merged.
* :class:`FirstCopy`: a tweet id delivered more than once (the firehose repeats
  itself; one tweet may come as v1.1 and as v2) is used once; every later copy is
  a dead letter. The "seen" mark of an id is kept until ``horizon_s`` past the
  tweet's time (bounded state).
* :func:`registered_ping`: a ping of a user who is not in the registry places no
  one and counts for nothing: a dead letter, not a silent drop.

``transforms.registry`` hosts these in Beam (``MergeRegistry``, ``DedupeTweets``,
``KeepRegisteredPings``).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Optional, Tuple, Union

from core.conventions import dead_letter
from core.processor import Processor
from schemas.records import DeadLetter, Ping, Tweet, User

# Counter names.
DUPLICATE_TWEETS = "duplicates.tweets"
PINGS_UNKNOWN_USER = "rejected.pings_unknown_user"


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


def merge_registry(pairs: Iterable[tuple[User, str]], origin: str) -> Iterator[Union[User, DeadLetter]]:
    """Merged users (by user_id) and, after each, a ``DeadLetter`` per extra copy with its reason."""
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
            yield dead_letter(
                origin,
                f"duplicate user_id {user_id}: {len(copies)} copies in the registry, merged into one "
                f"record read the most private way ({detail}); this copy is not used on its own",
                raw)


class FirstCopy(Processor):
    """Keyed by tweet id: the first ``(Tweet, raw)`` is used, every later copy is a dead letter.

    State: the event time until which the id is remembered (None: not seen yet).
    A host hands copies over in arrival order, so "first" is the first delivered.
    """
    name = "first_copy"

    def __init__(self, origin: str, horizon_s: float):
        self.origin, self.horizon_s = origin, horizon_s

    @staticmethod
    def sort_key(msg: Tuple[Tweet, str]):
        tweet, raw = msg
        return (tweet.ts, raw)

    def process(self, forget_at: Optional[float], msg: Tuple[Tweet, str]):
        tweet, raw = msg
        if forget_at is not None:
            return forget_at, [dead_letter(
                self.origin,
                f"duplicate tweet id {tweet.tweet_id}: already received, the first copy is the one used", raw)]
        return tweet.ts + self.horizon_s, [tweet]

    def expire(self, forget_at: Optional[float], now: float):
        return None if forget_at is None or now >= forget_at else forget_at

    def gc_time(self, forget_at: Optional[float]) -> Optional[float]:
        return forget_at


def registered_ping(ping: Ping, raw: str, registered: Mapping[str, object], origin: str) -> Union[Ping, DeadLetter]:
    """The ping, or its dead letter when its user is not in the registry."""
    if ping.user_id in registered:
        return ping
    return dead_letter(origin, f"user_id {ping.user_id} is not in the user registry: the ping places no one", raw)

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

* Settings changes (``schemas.records.RegistryChange``): the registry is a changing
  input. A subscriber's change (alerts on/off, leave the statistics) comes from the
  portal as a ``users`` record with ``updated_at``, signed by the portal's key; one whose
  signature does not verify against ``--registry_portal_pubkey`` (or with no portal key
  configured) is a dead letter, as is one for a user the registry does not hold. Per
  user, the verified change with the latest ``updated_at`` sets the two settings; the
  key and age band stay the registry's own (:func:`effective_user`). A user's state is a
  :class:`RegistryEntry`.
* :class:`CurrentRegistry`: the same rules over a stream (keyed by user id, in arrival
  order, seeded with the launch snapshot's entries): each record that changes what a
  user's effective record is emits the new one, so a running job takes a settings
  change without a restart. Batch runs use the latest state (:func:`merge_registry`).

``transforms.registry`` hosts these in Beam (``MergeRegistry``, ``DedupeTweets``,
``KeepRegisteredPings``, ``FollowRegistry``); ``flink_job`` in Flink.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator, Mapping, NamedTuple, Optional, Tuple, Union

from core.conventions import dead_letter
from core.processor import Processor
from schemas.records import DeadLetter, Ping, RegistryChange, Tweet, User
from schemas.signin import verify_signed_change

# Counter names.
DUPLICATE_TWEETS = "duplicates.tweets"
PINGS_UNKNOWN_USER = "rejected.pings_unknown_user"
CHANGES_APPLIED = "registry.changes_applied"
CHANGES_SUPERSEDED = "registry.changes_superseded"
CHANGES_REJECTED = "registry.changes_rejected"
USERS_ADDED = "registry.users_added_live"


class RegistryEntry(NamedTuple):
    """One user's registry state: the registry's own records merged the most private way
    (``base``; None until one arrives) and the latest verified settings change."""
    user_id: str
    base: Optional[User] = None
    changed_at: float = -math.inf        # the applied change's updated_at
    change: Optional[User] = None
    change_raw: str = ""                 # its line (the tie-break between equal times)


def effective_user(entry: Optional[RegistryEntry]) -> Optional[User]:
    """The record every step uses: the registry's, with the latest change's two settings."""
    if entry is None or entry.base is None:
        return None
    if entry.change is None:
        return entry.base
    return entry.base._replace(alerts_opt_in=entry.change.alerts_opt_in, stats_opt_out=entry.change.stats_opt_out)


def change_problem(change: RegistryChange, portal_pubkey: Optional[str]) -> Optional[str]:
    """None when the portal signed this change, else why it is not used."""
    if not portal_pubkey:
        return (f"settings change for user {change.user.user_id}: no --registry_portal_pubkey is configured, "
                "so the portal's signature cannot be checked and the change is not used")
    if not verify_signed_change(portal_pubkey, change.signed, change.portal_sig):
        return (f"settings change for user {change.user.user_id}: portal_sig does not verify against the "
                "portal's key (forged or altered), the change is not used")
    return None


def unknown_user_change(change: RegistryChange) -> str:
    return (f"settings change for user {change.user.user_id}, who is not in the user registry: "
            "the change is not used")


def with_change(entry: RegistryEntry, change: RegistryChange, raw: str) -> tuple[RegistryEntry, bool]:
    """(entry, whether the change is now the one in force): the latest updated_at wins."""
    if (change.ts, raw) > (entry.changed_at, entry.change_raw):
        return entry._replace(changed_at=change.ts, change=change.user, change_raw=raw), True
    return entry, False


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


def merge_registry(pairs: Iterable[tuple[Union[User, RegistryChange], str]], origin: str,
                   portal_pubkey: Optional[str] = None,
                   entries: bool = False) -> Iterator[Union[User, RegistryEntry, DeadLetter]]:
    """Each user's record in force (the latest state: copies merged, the latest verified
    change applied) and, after it, a ``DeadLetter`` per extra copy and per change not used.
    ``entries``: yield each user's :class:`RegistryEntry` instead of the effective ``User``."""
    by_id: dict[str, list[tuple[User, str]]] = {}
    changes: dict[str, list[tuple[RegistryChange, str]]] = {}
    for record, raw in pairs:
        if isinstance(record, RegistryChange):
            changes.setdefault(record.user.user_id, []).append((record, raw))
        else:
            by_id.setdefault(record.user_id, []).append((record, raw))
    for user_id in sorted(set(by_id) | set(changes)):
        copies = sorted(by_id.get(user_id, []), key=lambda pair: pair[1])
        dead = []
        entry = RegistryEntry(user_id)
        if len(copies) == 1:
            entry = entry._replace(base=copies[0][0])
        elif copies:
            merged, differences = merge_user_copies(user for user, _ in copies)
            entry = entry._replace(base=merged)
            detail = "; ".join(differences) if differences else "the copies agree"
            dead += [dead_letter(
                origin,
                f"duplicate user_id {user_id}: {len(copies)} copies in the registry, merged into one "
                f"record read the most private way ({detail}); this copy is not used on its own",
                raw) for _user, raw in copies[1:]]
        for change, raw in sorted(changes.get(user_id, []), key=lambda pair: pair[1]):
            problem = change_problem(change, portal_pubkey) or (None if copies else unknown_user_change(change))
            if problem is not None:
                dead.append(dead_letter(origin, problem, raw))
            else:
                entry, _ = with_change(entry, change, raw)
        if entry.base is not None:
            yield entry if entries else effective_user(entry)
        yield from dead


class CurrentRegistry(Processor):
    """Keyed by user id: the registry's rules over a stream, in arrival order.

    State: the user's :class:`RegistryEntry` (a host seeds it from the launch snapshot's
    entry). A message is ``(User | RegistryChange, raw line)``; the outputs are the user's
    new effective ``User`` whenever it changes, and dead letters (an unverified change, a
    change for an unknown user, a copy that disagrees). A copy equal to the record in force
    is a re-delivery (a topic read again from a little before the snapshot), not a dead letter.
    """
    name = "registry"

    def __init__(self, origin: str, portal_pubkey: Optional[str]):
        self.origin, self.portal_pubkey = origin, portal_pubkey

    @staticmethod
    def sort_key(msg):
        # configuration, no event time: the snapshot's entries first, then registry rows, then changes
        if isinstance(msg, RegistryEntry):
            return (-math.inf, 0, "")
        return (-math.inf, 2 if isinstance(msg[0], RegistryChange) else 1, msg[1])

    def immediate(self, msg) -> bool:
        return True

    def process(self, entry: Optional[RegistryEntry], msg):
        before = effective_user(entry)
        if isinstance(msg, RegistryEntry):       # the launch snapshot's entry: where the key starts
            entry = msg if entry is None else entry
            after = effective_user(entry)
            return entry, ([after] if after != before else [])
        record, raw = msg
        if isinstance(record, RegistryChange):
            entry = entry or RegistryEntry(record.user.user_id)
            problem = change_problem(record, self.portal_pubkey) or (
                None if entry.base is not None else unknown_user_change(record))
            if problem is not None:
                return entry, [dead_letter(self.origin, problem, raw)]
            entry, _ = with_change(entry, record, raw)
        else:
            entry = entry or RegistryEntry(record.user_id)
            if entry.base is None or entry.base == record:
                entry = entry._replace(base=record)
            else:
                merged, differences = merge_user_copies([entry.base, record])
                entry = entry._replace(base=merged)
                return entry, [out for out in (effective_user(entry),) if out != before] + [dead_letter(
                    self.origin,
                    f"duplicate user_id {record.user_id}: a second registry record that disagrees, merged "
                    f"the most private way ({'; '.join(differences)}); this copy is not used on its own", raw)]
        after = effective_user(entry)
        return entry, ([after] if after != before else [])


def user_id_of(record: Union[User, RegistryChange]) -> str:
    return record.user.user_id if isinstance(record, RegistryChange) else record.user_id


def _split_registry(counters):
    def split(out):
        if isinstance(out, DeadLetter):
            counters["rejected"].inc()
            yield "dead_letters", out
        else:
            counters["users"].inc()
            yield "users", out
    return split


def registry_over(ops, seeds, records, origin: str, portal_pubkey: Optional[str], *,
                  tick_s: float, allowed_lateness_s: float) -> dict:
    """The registry as a changing input, on any engine (``core.ops``).

    ``seeds``: the launch snapshot's :class:`RegistryEntry` per user (``merge_registry(...,
    entries=True)``); ``records``: ``(User | RegistryChange, raw)`` read while the job runs.
    -> ``{'users': User, 'dead_letters': DeadLetter}``: every user's effective record from
    the snapshot, then a new one each time a record changes it (a settings change, a new
    subscriber), in event-time ticks like every keyed step (:class:`CurrentRegistry`)."""
    counters = {"users": ops.counter("registry_users_emitted"), "rejected": ops.counter("registry_rejected_live")}
    messages = ops.flatten([
        ops.map(seeds, lambda entry: (entry.user_id, entry), "KeySnapshot"),
        ops.map(records, lambda pair: (user_id_of(pair[0]), pair), "KeyLiveRecords"),
    ], "RegistryMessages")
    folded = ops.run_ordered(messages, CurrentRegistry(origin, portal_pubkey), "CurrentRegistry",
                             tick_s=tick_s, allowed_lateness_s=allowed_lateness_s, step="registry")
    split = ops.tagged(folded["out"], _split_registry(counters), ("users", "dead_letters"), "SplitRegistry")
    users = ops.map(split["users"], lambda user: user, "AsUsers", output_type=User)
    return {"users": users, "dead_letters": ops.flatten([split["dead_letters"], folded["late"]], "RegistryDeadLetters")}


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

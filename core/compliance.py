"""What the firehose's compliance messages take back: the two gates every output passes.

Engine-neutral (see ``core``). Every output about a tweet -- an ``Alert`` about it, its
``TimelineEntry`` -- passes two ordered processors (``core.processor``) before a sink,
wired once by :func:`apply_compliance_over` (called by ``core.alerts.fan_out_over``):

1. :class:`ApplyUserCompliance`, keyed by the tweet's author: ``scrub_geo`` and the user
   events (``user_protect``/``user_suspend``/``user_delete``/``user_withheld`` and their
   reversals).
2. :class:`ApplyTweetCompliance`, keyed by tweet id: ``delete``, ``withheld``, ``drop``,
   and ``tweet_edit`` (each superseded version).

**What a message covers** (a covered tweet is never alerted or shown):

- ``delete``, ``drop``: that tweet. ``tweet_edit``: every earlier version (the latest
  counts: it arrives as a tweet of its own). ``withheld``: that tweet, when
  ``withheld_in_countries`` names the service's country (``AlertParams.service_country``,
  ``--service_country``, default ``JP``) or ``XX`` (everywhere); otherwise it is counted
  (``compliance_withheld_elsewhere``) and changes nothing.
- ``scrub_geo``: the user's tweets with id <= ``up_to_tweet_id`` (snowflake ids grow
  with time) lose their location, so no output about them stands: no happening
  alert, no timeline entry.
- ``user_protect``/``user_suspend``/``user_delete``/``user_withheld`` (here): every tweet
  of the user, for as long as the state lasts. The reversal (``user_unprotect``,
  ``user_unsuspend``, ``user_undelete``, a ``user_withheld`` not naming the country) at
  time *e* restores use of the user's tweets created after *e* only: a tweet created
  before *e* stays covered. So a tweet is covered by a user state iff the state is in
  force now or the tweet was created before the state's latest end. A protected
  account's tweets are not used at all (not even for friends' alerts): the conservative
  reading of "never reach anyone who does not follow them".
- ``undrop``: counted, changes nothing -- the dropped tweet was created before the undo,
  and an undo restores only what is created after it.

**Batch and streaming agree** (after applying the retractions), as for deletes before:
bounded input knows every message, so a covered tweet's outputs are never written
(``run_batch_timed``). Unbounded input decides in event-time order: an output whose tweet
is already covered is suppressed; a message arriving later (up to
``AlertParams.retract_horizon_s`` after the output) writes a **retraction** of every
output it now covers: an ``Alert`` with the same ``alert_id`` and ``reason`` =
``retract:<reason>`` at the message's time, or the ``TimelineEntry`` again with
``retracted: true``. Coverage only grows with more messages (an undo never uncovers a
tweet created before it), so a retraction is never itself undone.

What a covered tweet still did upstream stays done, as for deletes: it counted as burst
evidence, was the original its copies collapsed into, and took its user's happening and
hourly slot. The property tests (``tests/test_compliance_property.py``) hold outputs to the
world with the covered tweets taken out in advance where tweets do not interact.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

from core.processor import Processor
from schemas.compliance import USER_KINDS, withheld_here
from schemas.records import Alert, ComplianceEvent, TimelineEntry, Tweet

RETRACT_PREFIX = "retract:"

# user event -> (state family, True: starts the state / False: ends it); user_withheld is decided by country
USER_STATES = {
    "user_protect": ("protect", True), "user_unprotect": ("protect", False),
    "user_suspend": ("suspend", True), "user_unsuspend": ("suspend", False),
    "user_delete": ("delete", True), "user_undelete": ("delete", False),
}
HIDING_TWEET_KINDS = ("delete", "drop", "withheld", "tweet_edit")


class Shown(NamedTuple):
    """An output about one tweet (``Alert`` or ``TimelineEntry``) on its way to a sink."""
    record: object
    author_id: str

    @property
    def ts(self) -> float:
        return self.record.ts


class UsedTweet(NamedTuple):
    """A tweet about to count in the marketing statistics: the third kind of output the gates
    pass (:func:`screen_for_statistics`). ``retracted``: taken back after it was passed on."""
    tweet: Tweet
    retracted: bool = False

    @property
    def tweet_id(self) -> str:
        return self.tweet.tweet_id

    @property
    def ts(self) -> float:
        return self.tweet.ts


class FactMsg(NamedTuple):
    """A compliance message, at the key it acts on."""
    event: ComplianceEvent


class TakenMsg(NamedTuple):
    """An output the user gate took back at ``ts``; the tweet gate retracts it if it wrote it."""
    record: object
    ts: float


class DeleteMsg(NamedTuple):
    """The tweet keyed is taken back (delete, drop, withheld here, superseded by an edit)."""
    delete: ComplianceEvent


class AlertMsg(NamedTuple):
    """An output about the tweet keyed (``Alert`` or ``TimelineEntry``)."""
    alert: object


def record_key(record) -> str:
    """The identity of an output: its ``alert_id``, its timeline entry's tweet, or its used tweet."""
    if isinstance(record, Alert):
        return record.alert_id
    return f"{'stats' if isinstance(record, UsedTweet) else 'timeline'}|{record.tweet_id}"


def retraction(record, ts: float):
    """The row that takes ``record`` back: an alert's retraction at ``ts``, or the entry (the
    used tweet) retracted, still at its tweet's time."""
    if isinstance(record, (TimelineEntry, UsedTweet)):
        return record._replace(retracted=True)
    return record._replace(ts=ts, reason=RETRACT_PREFIX + record.reason)


def is_retraction(record) -> bool:
    if isinstance(record, (TimelineEntry, UsedTweet)):
        return record.retracted
    return record.reason.startswith(RETRACT_PREFIX)


def apply_retractions(records):
    """What a consumer keeps: every output (alerts or timeline entries) never taken back."""
    records = list(records)
    taken = {record_key(r) for r in records if is_retraction(r)}
    return [r for r in records if not is_retraction(r) and record_key(r) not in taken]


def _fact_sort_key(event: ComplianceEvent):
    return (event.ts, 0, event.kind, event.tweet_id or "", event.up_to_tweet_id or "", ",".join(event.countries))


# ---- the user gate: keyed by author ------------------------------------------------------

class ApplyUserCompliance(Processor):
    """Keyed by a user: their scrub_geo and user-state messages, and the outputs about their tweets.

    State: ``states`` {family: [in force since (or None), latest end (or None)]},
    ``scrub`` (the highest scrubbed tweet id), ``written`` {record key: record} within
    the horizon, ``last`` (the latest message's time).
    """
    name = "user_compliance"

    def __init__(self, horizon_s: float, country: str):
        self.horizon_s, self.country = horizon_s, country

    @staticmethod
    def sort_key(msg):
        if isinstance(msg, FactMsg):
            return _fact_sort_key(msg.event)
        return (msg.ts, 1, record_key(msg.record), "", "", "")

    def initial_state(self):
        return {"states": {}, "scrub": None, "written": {}, "last": -math.inf}

    def covers(self, state, record) -> bool:
        if state["scrub"] is not None and int(record.tweet_id) <= state["scrub"]:
            return True
        return any(since is not None or (end is not None and record.ts < end)
                   for since, end in state["states"].values())

    def learn(self, state, event: ComplianceEvent) -> None:
        state["last"] = max(state["last"], event.ts)
        if event.kind == "scrub_geo":
            state["scrub"] = max(state["scrub"] or 0, int(event.up_to_tweet_id))
            return
        if event.kind == "user_withheld":
            family, starts = "withheld", withheld_here(event.countries, self.country)
        else:
            family, starts = USER_STATES[event.kind]
        since_end = state["states"].setdefault(family, [None, None])
        if starts:
            since_end[0] = event.ts if since_end[0] is None else since_end[0]
        else:
            since_end[0] = None
            since_end[1] = event.ts if since_end[1] is None else max(since_end[1], event.ts)

    def process(self, state, msg):
        if isinstance(msg, FactMsg):
            self.learn(state, msg.event)
            taken = [key for key, record in state["written"].items() if self.covers(state, record)]
            return state, [("taken", TakenMsg(state["written"].pop(key), msg.event.ts)) for key in taken]
        if self.covers(state, msg.record):
            return state, [("suppressed", msg.record)]
        state["written"][record_key(msg.record)] = msg.record
        return state, [("shown", msg.record)]

    def run_batch_timed(self, messages):
        """Bounded input: every message is known, so a covered tweet's outputs are never written."""
        state = self.initial_state()
        for msg in sorted((m for m in messages if isinstance(m, FactMsg)), key=self.sort_key):
            self.learn(state, msg.event)
        shown = sorted((m for m in messages if isinstance(m, Shown)), key=self.sort_key)
        return [(m.ts, ("suppressed" if self.covers(state, m.record) else "shown", m.record)) for m in shown]

    def expire(self, state, now):
        state["written"] = {k: r for k, r in state["written"].items() if now - r.ts < self.horizon_s}
        in_force = any(since is not None for since, _end in state["states"].values())
        if not in_force and not state["written"] and now - state["last"] >= self.horizon_s:
            return None
        return state

    def gc_time(self, state):
        times = [r.ts + self.horizon_s for r in state["written"].values()]
        if not any(since is not None for since, _end in state["states"].values()):
            times.append(state["last"] + self.horizon_s)
        times = [t for t in times if math.isfinite(t)]
        return min(times) if times else None


# ---- the tweet gate: keyed by tweet id -----------------------------------------------------

class ApplyTweetCompliance(Processor):
    """Keyed by tweet id: drops a taken-back tweet's outputs, or retracts them once written.

    Also retracts what the user gate took back (``TakenMsg``) if this gate wrote it.
    """
    name = "deletes"

    def __init__(self, horizon_s: float):
        self.horizon_s = horizon_s

    @staticmethod
    def sort_key(msg):
        if isinstance(msg, DeleteMsg):
            return (msg.delete.ts, 0, "")
        if isinstance(msg, TakenMsg):
            return (msg.ts, 2, record_key(msg.record))
        return (msg.alert.ts, 1, record_key(msg.alert))

    def initial_state(self):
        return {"deleted": None, "written": []}

    def process(self, state, msg):
        if isinstance(msg, DeleteMsg):
            if state["deleted"] is not None:
                return state, []
            state["deleted"] = msg.delete.ts
            retractions = [retraction(r, msg.delete.ts) for r in state["written"]]
            state["written"] = []
            return state, [("retracted", r) for r in retractions]
        if isinstance(msg, TakenMsg):
            key = record_key(msg.record)
            kept = [r for r in state["written"] if record_key(r) != key]
            if len(kept) == len(state["written"]):
                return state, []   # suppressed or retracted here already
            state["written"] = kept
            return state, [("retracted", retraction(msg.record, msg.ts))]
        if state["deleted"] is not None:
            return state, [("suppressed", msg.alert)]
        state["written"].append(msg.alert)
        return state, [("alert", msg.alert)]

    def run_batch_timed(self, messages):
        """Bounded input: every message is known, so a taken-back tweet's outputs are never written."""
        taken = {record_key(m.record) for m in messages if isinstance(m, TakenMsg)}
        deleted = any(isinstance(m, DeleteMsg) for m in messages)
        outputs = sorted((m for m in messages if isinstance(m, AlertMsg)), key=self.sort_key)
        return [(m.alert.ts, ("suppressed" if deleted or record_key(m.alert) in taken else "alert", m.alert))
                for m in outputs]

    def expire(self, state, now):
        last = max([r.ts for r in state["written"]] + [state["deleted"] or -math.inf])
        return None if now - last >= self.horizon_s else state

    def gc_time(self, state):
        return max([r.ts for r in state["written"]] + [state["deleted"] or -math.inf]) + self.horizon_s


# ---- routing the messages, and the one wiring of both gates ---------------------------------

def fact_messages(event: ComplianceEvent, country: str, counters: dict):
    """('user' | 'tweet', (key, message)) for one compliance message, counting it per kind."""
    counters[event.kind].inc()
    if event.kind in USER_KINDS:
        yield "user", (event.author_id, FactMsg(event))
    elif event.kind == "tweet_edit":
        for old in event.superseded:
            yield "tweet", (old, DeleteMsg(event._replace(tweet_id=old)))
    elif event.kind == "withheld" and not withheld_here(event.countries, country):
        counters["withheld_elsewhere"].inc()
    elif event.kind in HIDING_TWEET_KINDS:
        yield "tweet", (event.tweet_id, DeleteMsg(event))
    # undrop: counted above; it restores nothing created before it (module docstring)


def apply_compliance_over(ops, shown, events, params, ordered, counted: str = "compliance") -> dict:
    """shown: ``Shown`` outputs (any engine's collection), events: ``ComplianceEvent`` ->
    {'outputs': (tag, record) with tag alert|retracted|suppressed, 'late': DeadLetter}.

    ``ordered(col, processor, stage_name)`` is the caller's ``ops.run_ordered`` with its
    tick and lateness; ``params`` a ``core.alerts.AlertParams``. ``counted``: the prefix of
    the counters of each message kind and of what the user gate took (a second gate over
    the same messages counts under its own, so the run summary counts each message once)."""
    kinds = sorted(set(USER_KINDS) | {"delete", "tweet_edit", "withheld", "drop", "undrop", "withheld_elsewhere"})
    counters = {kind: ops.counter(f"{counted}_{kind}") for kind in kinds}
    user_counters = {tag: ops.counter(f"{counted}_outputs_{tag}") for tag in ("taken", "suppressed")}
    country = params.service_country
    facts = ops.tagged(events, lambda e: fact_messages(e, country, counters), ("user", "tweet"), "RouteCompliance")
    # facts['user'] : (author id, FactMsg);  facts['tweet'] : (tweet id, DeleteMsg)
    user_msgs = ops.flatten([
        ops.map(shown, lambda s: (s.author_id, s), "KeyOutputsByAuthor"), facts["user"]], "UserComplianceMessages")
    by_user = ordered(user_msgs, ApplyUserCompliance(params.retract_horizon_s, country), "ApplyUserCompliance")

    def to_tweet_gate(tagged):
        tag, value = tagged
        if tag == "shown":
            yield value.tweet_id, AlertMsg(value)
            return
        user_counters[tag].inc()
        if tag == "taken":
            yield value.record.tweet_id, value

    tweet_msgs = ops.flatten([
        ops.flat_map(by_user["out"], to_tweet_gate, "KeyOutputsByTweet"), facts["tweet"]], "TweetComplianceMessages")
    by_tweet = ordered(tweet_msgs, ApplyTweetCompliance(params.retract_horizon_s), "ApplyTweetCompliance")
    late = ops.flatten([by_user["late"], by_tweet["late"]], "LateComplianceMessages")
    return {"outputs": by_tweet["out"], "late": late}


STATS_TWEETS_TAKEN_BACK = "dp_tweets_taken_back"   # covered before they counted: never used


def screen_for_statistics(ops, tweets, events, params) -> dict:
    """The marketing statistics' tweets through both gates: {'tweets': Tweet | UsedTweet, 'late':
    DeadLetter}. A tweet a message covers is never used (batch: never passed on; streaming: not
    passed on once covered); one covered after it was passed on comes again as its retraction,
    a ``UsedTweet`` with ``retracted`` set, for the statistics to withdraw from its hour if that
    hour is not released yet (``core.dp_bounding.without_withdrawn``). Scrubbed locations,
    deletes, withheld tweets and protected, suspended or deleted users alike.

    The same messages and rules as the alert fan-out's gate (:func:`apply_compliance_over`),
    counted under ``dp_compliance_*``, ordered with its ticks and lateness under the step name
    ``dp``; ``late`` repeats what that gate dead-letters."""
    def ordered(col, processor, stage_name):
        return ops.run_ordered(col, processor, stage_name, tick_s=params.stream_tick_s,
                               allowed_lateness_s=params.allowed_lateness_s, step="dp")
    shown = ops.map(tweets, lambda t: Shown(UsedTweet(t), t.author_id), "UsedTweets")
    gated = apply_compliance_over(ops, shown, events, params, ordered, counted="dp_compliance")
    taken_back = ops.counter(STATS_TWEETS_TAKEN_BACK)

    def passed(tagged):
        tag, used = tagged
        if tag == "alert":
            yield used.tweet
        elif tag == "retracted":
            yield used        # counted where it meets its hour (core.dp_stats.bound_user_hour_of)
        else:
            taken_back.inc()
    return {"tweets": ops.flat_map(gated["outputs"], passed, "StatisticsTweets"), "late": gated["late"]}


def check_country(code: Optional[str]) -> None:
    """ValueError unless ``code`` is an upper-case ISO 3166-1 alpha-2 code (the service's country)."""
    if not (isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha() and code.isupper()):
        raise ValueError(f"service_country must be a two-letter upper-case country code like JP, got {code!r}")

r"""FanOutGeofencedAlerts: tweets about local happenings -> alerts to the opted-in users near them.

The rules (each has a test in ``tests/test_alerts.py``):

- A tweet alerts only if it is a happening (``transforms.happenings``: rule
  set or local burst; precise location; original, not a retweet or copy).
- User U is alerted about happening tweet T (time t, author A) when U opted in
  to alerts, U != A, U's current location at t (``transforms.locations``:
  latest accepted report at or before t, not older than ``location_stale_s``)
  lies within the radius of T's kind (``radius_<kind>_m``) by exact spherical
  distance -- or within ``max(friend_radius_m, that radius)`` when U and A
  have a mutual follow established at least ``follow_known_after_s`` before t
  (then ``reason`` starts with ``friend:``, else ``nearby:``). The delay is
  how long the follow step takes, in event time, to confirm a touch (its
  pending expiry, ``FollowParams.pending_expiry_s`` = 600 s, rounded up):
  a streaming run cannot know a follow earlier, and batch applies the same
  rule so that both agree.
- One alert per user per happening key (see ``transforms.happenings``) within
  ``happening_memory_s``, and per tweet; at most
  ``max_alerts_per_user_per_hour`` alerts per user per clock hour of event
  time. Both count in event-time order of the tweets (ties by tweet id), and
  the friend alert of a tweet wins over its nearby alert.
- ``alert_id`` = first 32 hex digits of sha256(``user_id|happening key|tweet_id``).
  ``reason`` = ``nearby|friend:<kind>:<rule name or #hashtag>``; ``ts`` = the
  tweet's time; ``distance_m`` rounded to 0.1 m.

**Deleted tweets.** A deleted tweet never alerts. In batch (bounded input) the
deletions are all known, so a deleted tweet's alerts are never written. In
streaming an alert is written when the watermark passes the tweet's time; a
deletion arriving later (up to ``retract_horizon_s`` after the alert) writes,
for each alert already written, a **retraction**: an ``Alert`` with the same
``alert_id``, ``user_id``, ``tweet_id`` and ``distance_m``, ``ts`` = the
deletion's time and ``reason`` = ``retract:`` + the original reason. A consumer
keyed on ``alert_id`` withdraws (or never shows) the alert; applying the
retractions to a streaming run's output gives exactly the batch run's output.
An alert to a deleted tweet still took its user's happening and hourly slot
(a streaming consumer has already shown it; batch mirrors that so both agree).

**Batch and streaming agree** because every stateful step is an *ordered
processor* (plain Python, below): per key, it sees its messages in a total
event-time order. Bounded input: GroupByKey, sort, run. Unbounded input: per
key, messages are grouped into ``stream_tick_s`` event-time ticks by a
GroupByKey that fires once the watermark has passed the tick, and a stateful
DoFn runs the ticks in order with the key's state (see :class:`OrderedByKey`;
a GroupByKey rather than event-time timers, because it holds the watermark for
the steps downstream on every runner, DirectRunner included). So shuffled,
out-of-order delivery gives the same result, each decision taken about one
tick after the watermark passes the tweet. A message behind what its key has
already decided (up to ``allowed_lateness_s`` behind the watermark) is not
reordered but written to ``dead_letters`` (source ``alerts:<step>``) and
counted (``alerts_late_<step>``); bound out-of-orderness with the source's
watermark.

**Cost** grows with reports + happenings x cells per disc + candidates, not
users x tweets: accepted location reports are keyed by their H3 cell at
``index_h3_res``, each happening by the cells that cover its disc
(``transforms.geo.cells_covering_disc``), friends by the author's follow list.
The pure :func:`fan_out` runs the same processors without Beam (tests,
benchmark: ``python -m benchmarks.bench_alerts``).

The steps (each labelled, each an :class:`OrderedByKey` over a processor)::

    tweets -> Triage -> CollapseCopies[text] -> DetectBursts[tag|cell] -> SessionKeys[class|cell]
                                                               \-> happenings
    happenings -> cover cells -+
    reports ------> cell ------+-> NearbyCandidates[cell] -------+
    happenings -> author ------+-> FriendCandidates[user] -------+-> DecidePerUser[user]
    follows ---> both users ---+     users, reports -> user -----+         |
                                           deletes -> tweet id -> ApplyDeletes[tweet] -> alerts

Counters (namespace ``tapfollow``): ``alerts_tweet_<verdict>``,
``alerts_tweet_copy_collapsed``, ``alerts_location_ping_inaccurate``,
``alerts_location_tweet_not_precise``, ``alerts_decided``,
``alerts_capped_per_hour``, ``alerts_emitted``, ``alerts_retracted``,
``alerts_suppressed_deleted``, ``alerts_late_<step>``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import typing
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Optional

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from schemas.records import Alert, DeadLetter, Follow, Tweet, TweetDelete, User
from transforms import geo
from transforms.happenings import (
    DEFAULT_RULES, BurstCandidate, CollapseCopies, DetectBursts, Happening, RuleSet, SessionKeys,
    burst_messages, is_precise, session_group, text_fingerprint)
from core.locations import LocationReport, newer
from transforms.locations import ExtractLocationReports

NS = "tapfollow"
RETRACT_PREFIX = "retract:"


@dataclass(frozen=True)
class AlertParams:
    location_stale_s: float = 1800.0          # a location older than this places nobody
    max_accuracy_m: float = 100.0             # pings less accurate than this place nobody
    radius_m: float = 500.0                   # bursts (hashtag happenings)
    radius_concert_m: float = 500.0
    radius_sale_m: float = 300.0
    radius_festival_m: float = 800.0
    radius_incident_m: float = 1000.0
    friend_radius_m: float = 2000.0           # mutual follows of the author reach this far
    follow_known_after_s: float = 610.0       # a follow counts this long after the touch (> follows' expiry)
    max_alerts_per_user_per_hour: int = 3
    burst_min_authors: int = 3
    burst_window_s: float = 600.0
    burst_h3_res: int = 8                     # "nearby" for bursts: same or neighbouring cell
    happening_h3_res: int = 7                 # coarse cell of the happening key (~5 km²)
    happening_gap_s: float = 3600.0           # a quieter spell than this ends a happening
    happening_memory_s: float = 86400.0       # a user is told about one happening once in this time
    near_dup_window_s: float = 3600.0         # copies within this of the original collapse
    index_h3_res: int = 9                     # cells keying users and happening discs
    retract_horizon_s: float = 7 * 86400.0    # streaming: how long an alert can be retracted
    stream_tick_s: float = 1.0                # streaming: event-time granularity of decisions
    allowed_lateness_s: float = 3600.0        # streaming: data this far behind the watermark -> dead letters
    rules_path: str = ""                      # JSON rule set; empty = transforms.happenings.DEFAULT_RULES

    def __post_init__(self):
        for name in ("location_stale_s", "max_accuracy_m", "radius_m", "radius_concert_m", "radius_sale_m",
                     "radius_festival_m", "radius_incident_m", "friend_radius_m", "burst_window_s",
                     "near_dup_window_s", "retract_horizon_s", "happening_gap_s", "happening_memory_s",
                     "stream_tick_s", "allowed_lateness_s", "follow_known_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of {'metres' if name.endswith('_m') else 'seconds'}, got {value!r}")
        for name in ("radius_m", "radius_concert_m", "radius_sale_m", "radius_festival_m",
                     "radius_incident_m", "friend_radius_m"):
            if getattr(self, name) > 50_000:
                raise ValueError(f"{name} = {getattr(self, name)} m is not local; set it to at most 50000")
        for name, low in (("max_alerts_per_user_per_hour", 1), ("burst_min_authors", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("burst_h3_res", "happening_h3_res", "index_h3_res"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 15:
                raise ValueError(f"{name} must be an H3 resolution 0..15, got {value!r}")
        if self.rules_path:
            try:
                RuleSet.from_json_file(self.rules_path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"rules_path {self.rules_path!r} is not a usable rule file: {exc}") from None

    def radius_for(self, kind: str) -> float:
        return self.radius_m if kind == "burst" else getattr(self, f"radius_{kind}_m")

    def rule_set(self) -> RuleSet:
        return RuleSet.from_json_file(self.rules_path) if self.rules_path else RuleSet(DEFAULT_RULES)


def alert_id(user_id: str, key: str, tweet_id: str) -> str:
    return hashlib.sha256(f"{user_id}|{key}|{tweet_id}".encode("utf-8")).hexdigest()[:32]


def is_retraction(alert: Alert) -> bool:
    return alert.reason.startswith(RETRACT_PREFIX)


def apply_retractions(alerts: Iterable[Alert]) -> list[Alert]:
    """What a consumer keeps: every alert whose alert_id was never retracted."""
    alerts = list(alerts)
    retracted = {a.alert_id for a in alerts if is_retraction(a)}
    return [a for a in alerts if not is_retraction(a) and a.alert_id not in retracted]


# ---- the ordered-processor runtime ----------------------------------------------------
#
# A processor is a plain object with name, sort_key(msg) (first item: the event time
# at which the message is due), initial_state(), process(state, msg) -> (state, outputs),
# expire(state, now) -> state or None, and gc_time(state) -> when expire may free it.

def run_ordered(processor, messages, state=None):
    """Run one key's messages through processor in its event-time order (no Beam)."""
    state, timed = run_ordered_timed(processor, messages, state)
    return state, [out for _due, out in timed]


def run_ordered_timed(processor, messages, state=None):
    """Like run_ordered, each output paired with the event time of the message that made it."""
    state = processor.initial_state() if state is None else state
    outputs = []
    for msg in sorted(messages, key=processor.sort_key):
        state, out = processor.process(state, msg)
        due = processor.sort_key(msg)[0]
        outputs.extend((due, o) for o in out)
    return state, outputs


def run_keyed(processor, keyed_messages):
    """[(key, msg)] -> all outputs, each key run separately (the batch semantics)."""
    by_key = defaultdict(list)
    for key, msg in keyed_messages:
        by_key[key].append(msg)
    outputs = []
    for key in sorted(by_key):
        outputs.extend(processor.run_batch(by_key[key]) if hasattr(processor, "run_batch")
                       else run_ordered(processor, by_key[key])[1])
    return outputs


def _to_json(value) -> str:
    def plain(v):
        if hasattr(v, "_asdict"):
            return {k: plain(x) for k, x in v._asdict().items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    try:
        return json.dumps(plain(value), ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _seconds(timestamp) -> float:
    return timestamp.micros / 1e6


class _StampAtDue(beam.DoFn):
    """Element timestamp := max(due, timestamp): forward only, so nothing becomes late."""

    def __init__(self, processor):
        self._processor = processor

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        due = self._processor.sort_key(element[1])[0]
        if due > _seconds(timestamp):
            yield TimestampedValue(element, due)
        else:
            yield element


class _RunTickGroups(beam.DoFn):
    """Runs the processor over each key's tick groups, carrying its state across ticks.

    Every message of a tick group is due within that tick, and the group is
    emitted only when the watermark has passed the tick, so the groups reach
    here in event-time order; a message due before what the key has already
    decided (a late pane) is a dead letter. A GC timer frees the key's state
    once ``processor.expire`` says nothing in it can matter any more.
    """
    LATE = "late"
    STATE = ReadModifyWriteStateSpec("state", PickleCoder())
    DONE_UNTIL = ReadModifyWriteStateSpec("done_until", PickleCoder())
    GC = TimerSpec("gc", TimeDomain.WATERMARK)

    def __init__(self, processor, tick_s: float, lateness_s: float):
        self._processor = processor
        self._tick_s = tick_s
        self._lateness_s = lateness_s
        self._late = Metrics.counter(NS, f"alerts_late_{processor.name}")

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                state=beam.DoFn.StateParam(STATE), done_until=beam.DoFn.StateParam(DONE_UNTIL),
                gc=beam.DoFn.TimerParam(GC)):
        _key, messages = element
        processor = self._processor
        current = state.read()
        if current is None:
            current = processor.initial_state()
        done = done_until.read()
        on_time = []
        for msg in messages:
            immediate = getattr(processor, "immediate", None) and processor.immediate(msg)
            if done is not None and not immediate and processor.sort_key(msg)[0] < done:
                self._late.inc()
                yield beam.pvalue.TaggedOutput(self.LATE, DeadLetter(
                    source=f"alerts:{processor.name}",
                    error=f"late: event time {processor.sort_key(msg)[0]:.3f} is behind {done:.3f}, up to which "
                          f"this key was already decided; raise the source's watermark delay",
                    raw=_to_json(msg)))
            else:
                on_time.append(msg)
        current, outputs = run_ordered(processor, on_time, current)
        yield from outputs
        tick_end = _seconds(timestamp)
        done_until.write(tick_end if done is None else max(done, tick_end))
        current = processor.expire(current, tick_end)
        if current is None:
            state.clear()
            # keep done_until while late data could still come, then forget the key
            gc.set(self._on_tick(tick_end + self._lateness_s))
            return
        state.write(current)
        when = processor.gc_time(current)
        if when is not None:
            gc.set(self._on_tick(max(when, tick_end)))

    @on_timer(GC)
    def on_gc(self, fired=beam.DoFn.TimestampParam, state=beam.DoFn.StateParam(STATE),
              done_until=beam.DoFn.StateParam(DONE_UNTIL), gc=beam.DoFn.TimerParam(GC)):
        now = _seconds(fired)
        current = state.read()
        if current is not None:
            current = self._processor.expire(current, now)
        if current is None:
            state.clear()
            done = done_until.read()
            if done is None or now >= done + self._lateness_s:
                done_until.clear()  # nothing of this key outlives the stream
            else:
                gc.set(self._on_tick(done + self._lateness_s))
            return
        state.write(current)
        when = self._processor.gc_time(current)
        if when is not None:
            gc.set(self._on_tick(max(when, now + 1e-3)))

    def _on_tick(self, seconds: float) -> Timestamp:
        """The first tick boundary at or after ``seconds`` (ticks start at multiples of tick_s)."""
        return Timestamp.of(math.ceil(seconds / self._tick_s) * self._tick_s)


class OrderedByKey(beam.PTransform):
    """(key, msg) -> processor outputs, each key in event-time order; batch or streaming.

    Returns {'out': outputs, 'late': DeadLetter}. Bounded input: GroupByKey in the
    global window, sort, run. Unbounded input: messages are grouped per key into
    ``tick_s`` event-time ticks (a GroupByKey fires each tick once the watermark
    has passed it, and holds the watermark downstream until it has, so a chain of
    these steps stays in order), then run tick after tick with the key's state.
    Messages up to ``allowed_lateness_s`` behind the watermark come out as dead
    letters; later ones Beam drops with their expired tick.
    """

    def __init__(self, processor, bounded: Optional[bool] = None, tick_s: float = 1.0,
                 allowed_lateness_s: float = 3600.0):
        super().__init__()
        self._processor = processor
        self._bounded = bounded
        self._tick_s = tick_s
        self._allowed_lateness_s = allowed_lateness_s

    def expand(self, keyed):
        processor = self._processor
        bounded = keyed.is_bounded if self._bounded is None else self._bounded
        if bounded:
            def run_group(kv):
                _key, messages = kv
                messages = list(messages)
                if hasattr(processor, "run_batch"):
                    timed = [(out[1].ts, out) for out in processor.run_batch(messages)]
                else:
                    timed = run_ordered_timed(processor, messages)[1]
                for due, out in timed:
                    yield TimestampedValue(out, due)
            out = (keyed
                   | "GroupByKey" >> beam.GroupByKey()
                   | "RunInEventTimeOrder" >> beam.FlatMap(run_group))
            late = keyed.pipeline | "NoLateData" >> beam.Create([]).with_output_types(DeadLetter)
            return {"out": out, "late": late}
        results = (
            keyed
            | "StampAtDue" >> beam.ParDo(_StampAtDue(processor)).with_output_types(typing.Tuple[str, typing.Any])
            | "IntoTicks" >> beam.WindowInto(
                window.FixedWindows(self._tick_s),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
                allowed_lateness=Duration(seconds=self._allowed_lateness_s))
            | "GroupTicks" >> beam.GroupByKey()
            | "BackToGlobal" >> beam.WindowInto(window.GlobalWindows())
            # str keys: a deterministic key coder, as state and timers require
            | "RunInEventTimeOrder" >> beam.ParDo(_RunTickGroups(processor, self._tick_s, self._allowed_lateness_s)).with_input_types(
                typing.Tuple[str, typing.Iterable[typing.Any]]).with_outputs(_RunTickGroups.LATE, main="out"))
        return {"out": results.out, "late": results[_RunTickGroups.LATE]}


def _ordered(processor, bounded: Optional[bool], params: "AlertParams") -> OrderedByKey:
    return OrderedByKey(processor, bounded, params.stream_tick_s, params.allowed_lateness_s)


# ---- messages and processors of the fan-out -------------------------------------------

class UserInfo(NamedTuple):
    user_id: str
    alerts_opt_in: bool


class ReportMsg(NamedTuple):
    report: LocationReport


class HappeningMsg(NamedTuple):
    happening: Happening


class CandidateMsg(NamedTuple):
    """Ask the user's processor whether happening h alerts them (friend: via the friend radius)."""
    happening: Happening
    friend: bool


class FollowEdge(NamedTuple):
    """user and friend have a mutual follow since established_at; it counts from known_at on."""
    user_id: str
    friend_id: str
    established_at: float
    known_at: float


class DeleteMsg(NamedTuple):
    delete: TweetDelete


class AlertMsg(NamedTuple):
    alert: Alert


class CellIndex:
    """Keyed by an index cell: who was last seen here, asked by each happening covering it.

    A candidate is a user whose latest report *in this cell* is fresh and within
    the happening's radius; the user's own processor then checks it against the
    user's latest report anywhere (which, if it qualifies, lies in a covering
    cell and so produced a candidate: no false negatives).
    """
    name = "cells"

    def __init__(self, stale_s: float):
        self.stale_s = stale_s

    @staticmethod
    def sort_key(msg):
        if isinstance(msg, ReportMsg):
            r = msg.report
            return (r.ts, 0, r.user_id, r.source, r.lat, r.lng)
        h = msg.happening
        return (h.ts, 1, h.tweet_id, h.key, "", 0.0)

    def initial_state(self):
        return {}

    def process(self, state, msg):
        if isinstance(msg, ReportMsg):
            r = msg.report
            if newer(r, state.get(r.user_id)):
                state[r.user_id] = r
            return state, []
        h = msg.happening
        out = []
        for user_id in sorted(state):
            r = state[user_id]
            if h.ts - r.ts > self.stale_s:
                del state[user_id]
                continue
            # the author is excluded where every rule is applied: DecideForUser
            if geo.distance_m(h.lat, h.lng, r.lat, r.lng) <= h.radius_m:
                out.append((user_id, CandidateMsg(h, False)))
        return state, out

    def expire(self, state, now):
        for user_id in [u for u, r in state.items() if now - r.ts > self.stale_s]:
            del state[user_id]
        return state or None

    def gc_time(self, state):
        return min(r.ts for r in state.values()) + self.stale_s + 1e-3 if state else None


class FriendsOf:
    """Keyed by a user: their mutual follows, asked by each happening they author."""
    name = "friends"

    @staticmethod
    def sort_key(msg):
        if isinstance(msg, FollowEdge):
            return (msg.known_at, 0, msg.friend_id, msg.established_at)
        h = msg.happening
        return (h.ts, 1, h.tweet_id, h.key)

    def initial_state(self):
        return {}

    def process(self, state, msg):
        if isinstance(msg, FollowEdge):
            # the earliest touch of the pair counts (a re-touch changes nothing)
            if msg.friend_id not in state or msg.known_at < state[msg.friend_id]:
                state[msg.friend_id] = msg.known_at
            return state, []
        h = msg.happening
        return state, [(friend, CandidateMsg(h, True))
                       for friend, known in sorted(state.items()) if known <= h.ts]

    def expire(self, state, now):
        return state or None  # a follow lasts: kept for as long as its users exist

    def gc_time(self, state):
        return None


class DecideForUser:
    """Keyed by a user: their registry entry, latest report, and alerts so far.

    Decides each candidate at its tweet's time from the user's location as of
    that time; enforces opt-in, not-the-author, one alert per happening key and
    per tweet, and the hourly cap.
    """
    name = "users"

    def __init__(self, params: AlertParams):
        self.stale_s = params.location_stale_s
        self.friend_radius_m = params.friend_radius_m
        self.cap = params.max_alerts_per_user_per_hour
        self.memory_s = params.happening_memory_s

    @staticmethod
    def immediate(msg):
        return isinstance(msg, UserInfo)

    @staticmethod
    def sort_key(msg):
        if isinstance(msg, UserInfo):
            return (-math.inf, 0, "", 0)
        if isinstance(msg, ReportMsg):
            r = msg.report
            return (r.ts, 1, r.source, r.lat, r.lng)
        h = msg.happening
        # friend before nearby, so a tweet's friend alert wins
        return (h.ts, 2, h.tweet_id, h.key, 0 if msg.friend else 1)

    def initial_state(self):
        return {"opt_in": None, "latest": None, "keys": {}, "tweets": {}, "hours": {}}

    def process(self, state, msg):
        if isinstance(msg, UserInfo):
            state["opt_in"] = msg.alerts_opt_in
            return state, []
        if isinstance(msg, ReportMsg):
            if newer(msg.report, state["latest"]):
                state["latest"] = msg.report
            return state, []
        h, friend = msg.happening, msg.friend
        here = state["latest"]
        if not state["opt_in"] or here is None or h.ts - here.ts > self.stale_s or here.user_id == h.author_id:
            return state, []
        told = state["keys"].get(h.key)
        if h.tweet_id in state["tweets"] or (told is not None and h.ts - told < self.memory_s):
            return state, []
        radius = max(self.friend_radius_m, h.radius_m) if friend else h.radius_m
        distance = geo.distance_m(h.lat, h.lng, here.lat, here.lng)
        if distance > radius:
            return state, []
        hour = int(h.ts // 3600)
        if state["hours"].get(hour, 0) >= self.cap:
            return state, [("capped", h)]
        state["hours"][hour] = state["hours"].get(hour, 0) + 1
        state["keys"][h.key] = h.ts
        state["tweets"][h.tweet_id] = h.ts
        reason = f"{'friend' if friend else 'nearby'}:{h.kind}:{h.label}"
        return state, [("alert", Alert(alert_id(here.user_id, h.key, h.tweet_id), here.user_id, h.tweet_id,
                                      h.ts, round(distance, 1), reason))]

    def run_batch(self, messages):
        """Bounded input: a user no happening asked about has nothing to decide (most users)."""
        if not any(isinstance(m, CandidateMsg) for m in messages):
            return []
        return run_ordered(self, messages)[1]

    def expire(self, state, now):
        if state["latest"] is not None and now - state["latest"].ts > self.stale_s:
            state["latest"] = None
        # forgotten keys may alert again (happening_memory_s); past tweets and hours cannot recur
        state["keys"] = {k: ts for k, ts in state["keys"].items() if ts > now - self.memory_s}
        state["tweets"] = {t: ts for t, ts in state["tweets"].items() if ts >= now}
        state["hours"] = {h: n for h, n in state["hours"].items() if (h + 1) * 3600 > now}
        if state["opt_in"] is None and state["latest"] is None and not state["keys"] and not state["hours"]:
            return None
        return state

    def gc_time(self, state):
        times = [ts + self.memory_s for ts in state["keys"].values()]
        times += [(h + 1) * 3600 for h in state["hours"]]
        if state["latest"] is not None:
            times.append(state["latest"].ts + self.stale_s + 1e-3)
        return max(times) if times else None


class ApplyDeletes:
    """Keyed by tweet id: drops a deleted tweet's alerts, or retracts them once written."""
    name = "deletes"

    def __init__(self, horizon_s: float):
        self.horizon_s = horizon_s

    @staticmethod
    def sort_key(msg):
        if isinstance(msg, DeleteMsg):
            return (msg.delete.ts, 0, "")
        return (msg.alert.ts, 1, msg.alert.alert_id)

    def initial_state(self):
        return {"deleted": None, "written": []}

    def process(self, state, msg):
        if isinstance(msg, DeleteMsg):
            if state["deleted"] is not None:
                return state, []
            state["deleted"] = msg.delete.ts
            retractions = [a._replace(ts=msg.delete.ts, reason=RETRACT_PREFIX + a.reason) for a in state["written"]]
            state["written"] = []
            return state, [("retracted", a) for a in retractions]
        if state["deleted"] is not None:
            return state, [("suppressed", msg.alert)]
        state["written"].append(msg.alert)
        return state, [("alert", msg.alert)]

    def run_batch(self, messages):
        """Bounded input: every deletion is known, so a deleted tweet alerts no one at all."""
        alerts = sorted((m.alert for m in messages if isinstance(m, AlertMsg)), key=lambda a: (a.ts, a.alert_id))
        if any(isinstance(m, DeleteMsg) for m in messages):
            return [("suppressed", a) for a in alerts]
        return [("alert", a) for a in alerts]

    def expire(self, state, now):
        last = max([a.ts for a in state["written"]] + [state["deleted"] or -math.inf])
        return None if now - last >= self.horizon_s else state

    def gc_time(self, state):
        return max([a.ts for a in state["written"]] + [state["deleted"] or -math.inf]) + self.horizon_s


# ---- pure message builders shared by the Beam wiring and fan_out ----------------------

def report_cell_message(report: LocationReport, index_res: int):
    return geo.cell_of(report.lat, report.lng, index_res), ReportMsg(report)


def happening_cell_messages(h: Happening, index_res: int):
    return [(cell, HappeningMsg(h)) for cell in sorted(geo.cells_covering_disc(h.lat, h.lng, h.radius_m, index_res))]


def follow_edges(follow: Follow, known_after_s: float):
    known = follow.established_at + known_after_s
    return [(follow.user_a, FollowEdge(follow.user_a, follow.user_b, follow.established_at, known)),
            (follow.user_b, FollowEdge(follow.user_b, follow.user_a, follow.established_at, known))]


class TweetTriage(NamedTuple):
    """What the rule set says about one tweet before copies and bursts are considered."""
    verdict: str                 # retweet | not_precise | not_happening | candidate
    rule_kind: Optional[str]
    rule_label: Optional[str]


def triage(tweet: Tweet, rules: RuleSet) -> TweetTriage:
    if tweet.retweet_of is not None:
        return TweetTriage("retweet", None, None)
    if not is_precise(tweet):
        return TweetTriage("not_precise", None, None)
    if rules.is_not_now(tweet.text):
        return TweetTriage("not_happening", None, None)
    rule = rules.match(tweet.text, tweet.hashtags)
    if rule is None and not tweet.hashtags:
        return TweetTriage("not_happening", None, None)
    return TweetTriage("candidate", rule.kind if rule else None, rule.name if rule else None)


def rule_happening(tweet: Tweet, kind: str, label: str, params: AlertParams) -> Happening:
    return Happening(tweet.tweet_id, tweet.author_id, tweet.ts, tweet.lat, tweet.lng, kind, label, "",
                     params.radius_for(kind))


def burst_happening(candidate: BurstCandidate, params: AlertParams) -> Happening:
    return rule_happening(candidate.tweet, "burst", f"#{candidate.hashtag}", params)


def collapse_key(tweet: Tweet) -> str:
    """The near-duplicate class; a tweet with no comparable text is its own class."""
    return text_fingerprint(tweet.text) or f"tweet:{tweet.tweet_id}"


# ---- the pure fan-out (batch semantics), for tests and the benchmark ------------------

def find_happenings(tweets: Iterable[Tweet], params: AlertParams) -> list[Happening]:
    rules = params.rule_set()
    verdicts = {}
    candidates = []
    for tweet in tweets:
        t = triage(tweet, rules)
        if t.verdict == "candidate":
            verdicts[tweet.tweet_id] = t
            candidates.append((collapse_key(tweet), tweet))
    originals = run_keyed(CollapseCopies(params.near_dup_window_s), candidates)
    happenings, burst_input = [], []
    for tweet in originals:
        t = verdicts[tweet.tweet_id]
        if t.rule_kind is not None:
            happenings.append(rule_happening(tweet, t.rule_kind, t.rule_label, params))
        burst_input.extend(burst_messages(tweet, params.burst_h3_res, as_candidate=t.rule_kind is None))
    bursting = run_keyed(DetectBursts(params.burst_min_authors, params.burst_window_s), burst_input)
    happenings.extend(burst_happening(c, params) for c in bursting)
    return run_keyed(SessionKeys(params.happening_h3_res, params.happening_gap_s),
                     [(session_group(h, params.happening_h3_res), h) for h in happenings])


def fan_out(tweets: Iterable[Tweet], deletes: Iterable[TweetDelete], reports: Iterable[LocationReport],
            follows: Iterable[Follow], users: Iterable[User], params: AlertParams) -> list[Alert]:
    """Every alert of a bounded input, sorted by (ts, alert_id)."""
    tweets = list(tweets)
    reports = list(reports)
    happenings = find_happenings(tweets, params)
    res = params.index_h3_res
    cell_msgs = [report_cell_message(r, res) for r in reports]
    for h in happenings:
        cell_msgs.extend(happening_cell_messages(h, res))
    candidates = run_keyed(CellIndex(params.location_stale_s), cell_msgs)
    friend_msgs = [edge for follow in follows for edge in follow_edges(follow, params.follow_known_after_s)]
    friend_msgs += [(h.author_id, HappeningMsg(h)) for h in happenings]
    candidates += run_keyed(FriendsOf(), friend_msgs)
    user_msgs = [(u.user_id, UserInfo(u.user_id, u.alerts_opt_in)) for u in users]
    user_msgs += [(r.user_id, ReportMsg(r)) for r in reports]
    user_msgs += candidates
    decided = run_keyed(DecideForUser(params), user_msgs)
    alerts = [a for tag, a in decided if tag == "alert"]
    delete_msgs = [(a.tweet_id, AlertMsg(a)) for a in alerts] + [(d.tweet_id, DeleteMsg(d)) for d in deletes]
    kept = [a for tag, a in run_keyed(ApplyDeletes(params.retract_horizon_s), delete_msgs) if tag == "alert"]
    return sorted(kept, key=lambda a: (a.ts, a.alert_id))


# ---- Beam wiring -----------------------------------------------------------------------

def _counting_split(tag_counters: dict):
    """(tag, value) -> value for tag 'alert'/'retracted', counting every tag."""
    counters = {tag: Metrics.counter(NS, name) for tag, name in tag_counters.items()}

    def split(tagged):
        tag, value = tagged
        counters[tag].inc()
        if tag in ("alert", "retracted"):
            yield value
    return split


class FindHappenings(beam.PTransform):
    """tweets -> PCollection[Happening] (rule set, copies collapsed, bursts) + late dead letters."""

    def __init__(self, params: AlertParams, bounded: Optional[bool] = None):
        super().__init__()
        self._params = params
        self._bounded = bounded

    def expand(self, tweets):
        params = self._params
        counters = {v: Metrics.counter(NS, f"alerts_tweet_{v}")
                    for v in ("retweet", "not_precise", "not_happening", "candidate")}

        def triaged(tweet):
            verdict = triage(tweet, _rule_set(params.rules_path))
            counters[verdict.verdict].inc()
            if verdict.verdict == "candidate":
                yield collapse_key(tweet), (tweet, verdict)

        def route(original):
            tweet, verdict = original
            if verdict.rule_kind is not None:
                yield beam.pvalue.TaggedOutput("rule", rule_happening(tweet, verdict.rule_kind, verdict.rule_label, params))
            for kv in burst_messages(tweet, params.burst_h3_res, as_candidate=verdict.rule_kind is None):
                yield beam.pvalue.TaggedOutput("burst", kv)

        candidates = tweets | "Triage" >> beam.FlatMap(triaged)
        collapsed = candidates | "CollapseCopies" >> _ordered(
            _CollapseTriaged(params.near_dup_window_s), self._bounded, params)
        routed = collapsed["out"] | "Route" >> beam.FlatMap(route).with_outputs("rule", "burst")
        bursts = routed.burst | "DetectBursts" >> _ordered(
            DetectBursts(params.burst_min_authors, params.burst_window_s), self._bounded, params)
        burst_happenings = bursts["out"] | "BurstHappenings" >> beam.Map(burst_happening, params)
        unkeyed = (routed.rule, burst_happenings) | "AllHappenings" >> beam.Flatten()
        keyed = (unkeyed | "BySessionGroup" >> beam.Map(lambda h: (session_group(h, params.happening_h3_res), h))
                 | "SessionKeys" >> _ordered(SessionKeys(params.happening_h3_res, params.happening_gap_s),
                                             self._bounded, params))
        happenings = keyed["out"]
        late = (collapsed["late"], bursts["late"], keyed["late"]) | "LateTweets" >> beam.Flatten()
        return {"happenings": happenings, "late": late}


@functools.lru_cache(maxsize=8)
def _rule_set(path: str) -> RuleSet:
    """The compiled rule set, once per worker process (not once per tweet)."""
    return RuleSet.from_json_file(path) if path else RuleSet(DEFAULT_RULES)


class _CollapseTriaged(CollapseCopies):
    """CollapseCopies over (tweet, triage) pairs, so the verdict travels with the tweet."""

    @staticmethod
    def sort_key(msg):
        return CollapseCopies.sort_key(msg[0])

    def process(self, state, msg):
        state, out = CollapseCopies.process(self, state, msg[0])
        if not out:
            _COPIES.inc()
        return state, [msg] if out else []


_COPIES = Metrics.counter(NS, "alerts_tweet_copy_collapsed")


class FanOutGeofencedAlerts(beam.PTransform):
    """{'tweets','deletes','pings','taps','follows','users'} -> {'alerts','dead_letters'}.

    Batch or streaming is read from the inputs (any unbounded input: streaming),
    unless ``bounded`` is given.
    """

    def __init__(self, params: AlertParams = AlertParams(), bounded: Optional[bool] = None):
        super().__init__()
        self._params = params
        self._bounded = bounded

    def expand(self, inputs):
        params = self._params
        bounded = self._bounded
        if bounded is None:
            bounded = all(inputs[name].is_bounded for name in ("tweets", "deletes", "pings", "taps", "follows"))
        res = params.index_h3_res

        reports = inputs | "LocationReports" >> ExtractLocationReports(params.max_accuracy_m)
        found = inputs["tweets"] | "FindHappenings" >> FindHappenings(params, bounded)
        happenings = found["happenings"]
        # happenings : Happening, at the tweet's event time

        cell_msgs = (
            (reports | "KeyReportsByCell" >> beam.Map(report_cell_message, res),
             happenings | "KeyHappeningsByDisc" >> beam.FlatMap(happening_cell_messages, res))
            | "CellMessages" >> beam.Flatten())
        near = cell_msgs | "NearbyCandidates" >> _ordered(CellIndex(params.location_stale_s), bounded, params)
        # near["out"] : (user_id, CandidateMsg)

        friend_msgs = (
            (inputs["follows"] | "FollowEdges" >> beam.FlatMap(follow_edges, params.follow_known_after_s),
             happenings | "KeyHappeningsByAuthor" >> beam.Map(lambda h: (h.author_id, HappeningMsg(h))))
            | "FriendMessages" >> beam.Flatten())
        friends = friend_msgs | "FriendCandidates" >> _ordered(FriendsOf(), bounded, params)

        user_msgs = (
            (inputs["users"] | "UserInfo" >> beam.Map(lambda u: (u.user_id, UserInfo(u.user_id, u.alerts_opt_in))),
             reports | "KeyReportsByUser" >> beam.Map(lambda r: (r.user_id, ReportMsg(r))),
             near["out"], friends["out"])
            | "UserMessages" >> beam.Flatten())
        decided = user_msgs | "DecidePerUser" >> _ordered(DecideForUser(params), bounded, params)
        alerts = decided["out"] | "CountDecisions" >> beam.FlatMap(_counting_split(
            {"alert": "alerts_decided", "capped": "alerts_capped_per_hour"})).with_output_types(Alert)

        delete_msgs = (
            (alerts | "KeyAlertsByTweet" >> beam.Map(lambda a: (a.tweet_id, AlertMsg(a))),
             inputs["deletes"] | "KeyDeletesByTweet" >> beam.Map(lambda d: (d.tweet_id, DeleteMsg(d))))
            | "DeleteMessages" >> beam.Flatten())
        final = delete_msgs | "ApplyDeletes" >> _ordered(ApplyDeletes(params.retract_horizon_s), bounded, params)
        out = final["out"] | "CountEmitted" >> beam.FlatMap(_counting_split(
            {"alert": "alerts_emitted", "retracted": "alerts_retracted", "suppressed": "alerts_suppressed_deleted"}
        )).with_output_types(Alert)
        dead = ((found["late"], near["late"], friends["late"], decided["late"], final["late"])
                | "LateMessages" >> beam.Flatten())
        return {"alerts": out, "dead_letters": dead}


for _record in (UserInfo, FollowEdge):
    beam.coders.registry.register_coder(_record, beam.coders.RowCoder)

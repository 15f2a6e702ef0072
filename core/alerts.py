r"""The alert fan-out: tweets about local happenings -> alerts to the opted-in users near them.

Engine-neutral (see ``core``): the parameters, the messages, the ordered
processors and the one wiring of the fan-out, :func:`fan_out_over`, written over
``core.ops``. ``transforms.alerts.FanOutGeofencedAlerts`` hosts it on Beam
(``BeamOps``); :func:`fan_out` on plain lists (``LocalOps``: tests, benchmark).

The rules (each has a test in ``tests/test_alerts.py``):

- A tweet alerts only if it is a happening (``core.happenings``: rule
  set or local burst; precise location; original, not a retweet or copy).
- User U is alerted about happening tweet T (time t, author A) when U opted in
  to alerts, U != A, U's current location at t (``core.locations``:
  latest accepted report at or before t, not older than ``location_stale_s``)
  lies within the radius of T's kind (``radius_<kind>_m``) by exact spherical
  distance -- or within ``max(friend_radius_m, that radius)`` when U and A
  have a mutual follow established at least ``follow_known_after_s`` before t
  (then ``reason`` starts with ``friend:``, else ``nearby:``). The delay is
  how long the follow step takes, in event time, to confirm a touch (its
  pending expiry, ``FollowParams.pending_expiry_s`` = 600 s, rounded up):
  a streaming run cannot know a follow earlier, and batch applies the same
  rule so that both agree.
- One alert per user per happening key (see ``core.happenings``) within
  ``happening_memory_s``, and per tweet; at most
  ``max_alerts_per_user_per_hour`` alerts per user per clock hour of event
  time. Both count in event-time order of the tweets (ties by tweet id), and
  the friend alert of a tweet wins over its nearby alert.
- ``alert_id`` = first 32 hex digits of sha256(``user_id|happening key|tweet_id``).
  ``reason`` = ``nearby|friend:<kind>:<rule name or #hashtag>``; ``ts`` = the
  tweet's time; ``distance_m`` rounded to 0.1 m.

**Compliance: deleted, edited, withheld, scrubbed tweets; protected, suspended,
deleted users.** A tweet a compliance message covers never alerts
(``core.compliance``: what each message covers, and the two gates every alert and
timeline entry passes). In batch (bounded input) the messages are all known, so such a
tweet's alerts are never written. In streaming an alert is written when the watermark
passes the tweet's time; a message arriving later (up to ``retract_horizon_s`` after
the alert) writes, for each alert already written, a **retraction**: an ``Alert`` with
the same ``alert_id``, ``user_id``, ``tweet_id`` and ``distance_m``, ``ts`` = the
message's time and ``reason`` = ``retract:`` + the original reason. A consumer keyed on
``alert_id`` withdraws (or never shows) the alert; applying the retractions to a
streaming run's output gives exactly the batch run's output. An alert to a covered
tweet still took its user's happening and hourly slot (a streaming consumer has already
shown it; batch mirrors that so both agree).

**The local timeline** (``core.timeline``) is found beside the alerts from the same
tweets and happenings and passes the same gates: ``fan_out_over`` returns it as
``timeline``.

**Batch and streaming agree** because every stateful step is an *ordered
processor* (``core.processor``, below): per key, it sees its messages in a total
event-time order. Bounded input: GroupByKey, sort, run. Unbounded input: per
key, messages are grouped into ``stream_tick_s`` event-time ticks by a
GroupByKey that fires once the watermark has passed the tick, and a stateful
DoFn runs the ticks in order with the key's state (see ``transforms.ordered.OrderedByKey``;
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
(``core.geo.cells_covering_disc``), friends by the author's follow list.
The pure :func:`fan_out` runs the same wiring without an engine (tests,
benchmark: ``python -m benchmarks.bench_alerts``).

The steps (each labelled, each ordered step a processor run by ``Ops.run_ordered``)::

    tweets -> Triage -> CollapseCopies[text] -> DetectBursts[tag|cell] -> SessionKeys[class|cell]
                                                               \-> happenings
    happenings -> cover cells -+
    reports ------> cell ------+-> NearbyCandidates[cell] -------+
    happenings -> author ------+-> FriendCandidates[user] -------+-> DecidePerUser[user]
    follows ---> both users ---+     users, reports -> user -----+         |
    tweets, happenings -> JoinHappenings[tweet] -> timeline entries --+    |
    compliance -> ApplyUserCompliance[author] <- alerts, entries -----+----+
               -> ApplyTweetCompliance[tweet] -> alerts, timeline

Counters (namespace ``tapfollow``): ``alerts_tweet_<verdict>``,
``alerts_tweet_copy_collapsed``, ``alerts_location_ping_inaccurate``,
``alerts_location_tweet_not_precise``, ``alerts_decided``,
``alerts_capped_per_hour``, ``alerts_emitted``, ``alerts_retracted``,
``alerts_suppressed_deleted`` (by any compliance message), ``timeline_emitted``,
``timeline_retracted``, ``timeline_suppressed``, ``compliance_<kind>`` (each message
used, per kind), ``compliance_withheld_elsewhere``, ``compliance_outputs_taken`` /
``_suppressed`` (by the user gate), ``alerts_late_<step>``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from core import geo
from core.compliance import (RETRACT_PREFIX, AlertMsg, ApplyTweetCompliance, DeleteMsg, Shown,  # noqa: F401
                             apply_compliance_over, apply_retractions, check_country, is_retraction)
from core.happenings import Happening, RuleSet, find_happenings_over, rule_set
from core.locations import LocationReport, newer
from core.ops import LocalOps, Ops
from core.processor import Processor, run_ordered_timed
from core.timeline import timeline_over
from schemas.records import Alert, ComplianceEvent, Follow, TimelineEntry, Tweet, User

# The tweet gate's old name (it took back deleted tweets only): the Flink host's tests use it.
ApplyDeletes = ApplyTweetCompliance


@dataclass(frozen=True)
class AlertParams:
    location_stale_s: float = 1800.0          # a location older than this places nobody
    max_accuracy_m: float = 100.0             # pings less accurate than this place nobody
    burst_radius_m: float = 500.0             # bursts (hashtag happenings); the other kinds have their own
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
    rules_path: str = ""                      # JSON rule set; empty = core.happenings.DEFAULT_RULES
    service_country: str = "JP"               # tweets/users withheld here are never alerted or shown
    timeline_h3_res: int = 8                  # cell of a timeline entry (core.config: = DpParams.h3_res)

    def __post_init__(self):
        for name in ("location_stale_s", "max_accuracy_m", "burst_radius_m", "radius_concert_m", "radius_sale_m",
                     "radius_festival_m", "radius_incident_m", "friend_radius_m", "burst_window_s",
                     "near_dup_window_s", "retract_horizon_s", "happening_gap_s", "happening_memory_s",
                     "stream_tick_s", "allowed_lateness_s", "follow_known_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of {'metres' if name.endswith('_m') else 'seconds'}, got {value!r}")
        for name in ("burst_radius_m", "radius_concert_m", "radius_sale_m", "radius_festival_m",
                     "radius_incident_m", "friend_radius_m"):
            if getattr(self, name) > 50_000:
                raise ValueError(f"{name} = {getattr(self, name)} m is not local; set it to at most 50000")
        for name, low in (("max_alerts_per_user_per_hour", 1), ("burst_min_authors", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        check_country(self.service_country)
        for name in ("burst_h3_res", "happening_h3_res", "index_h3_res", "timeline_h3_res"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 15:
                raise ValueError(f"{name} must be an H3 resolution 0..15, got {value!r}")
        if self.rules_path:
            try:
                RuleSet.from_json_file(self.rules_path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"rules_path {self.rules_path!r} is not a usable rule file: {exc}") from None

    def radius_for(self, kind: str) -> float:
        return self.burst_radius_m if kind == "burst" else getattr(self, f"radius_{kind}_m")

    def rule_set(self) -> RuleSet:
        return rule_set(self.rules_path)


def alert_id(user_id: str, key: str, tweet_id: str) -> str:
    return hashlib.sha256(f"{user_id}|{key}|{tweet_id}".encode("utf-8")).hexdigest()[:32]


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


class CellIndex(Processor):
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


class FriendsOf(Processor):
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


class DecideForUser(Processor):
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
        alert = Alert(alert_id(here.user_id, h.key, h.tweet_id), here.user_id, h.tweet_id, h.ts,
                      round(distance, 1), reason)
        return state, [("alert", Shown(alert, h.author_id))]

    def run_batch_timed(self, messages):
        """Bounded input: a user no happening asked about has nothing to decide (most users)."""
        if not any(isinstance(m, CandidateMsg) for m in messages):
            return []
        # each output at its tweet's time (an Alert's or a capped Happening's ts)
        return [(out[1].ts, out) for _due, out in run_ordered_timed(self, messages)[1]]

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


# ---- pure message builders of the fan-out ----------------------

def report_cell_message(report: LocationReport, index_res: int):
    return geo.cell_of(report.lat, report.lng, index_res), ReportMsg(report)


def happening_cell_messages(h: Happening, index_res: int):
    return [(cell, HappeningMsg(h)) for cell in sorted(geo.cells_covering_disc(h.lat, h.lng, h.radius_m, index_res))]


def follow_edges(follow: Follow, known_after_s: float):
    known = follow.established_at + known_after_s
    return [(follow.user_a, FollowEdge(follow.user_a, follow.user_b, follow.established_at, known)),
            (follow.user_b, FollowEdge(follow.user_b, follow.user_a, follow.established_at, known))]



def _counting_split(ops: Ops, tag_counters: dict):
    """(tag, value) -> value for tag 'alert'/'retracted', counting every tag."""
    counters = {tag: ops.counter(name) for tag, name in tag_counters.items()}

    def split(tagged):
        tag, value = tagged
        counters[tag].inc()
        if tag in ("alert", "retracted"):
            yield value
    return split


# ---- the one wiring of the fan-out ------------------------------------------------------

def fan_out_over(ops: Ops, inputs: dict, params: AlertParams) -> dict:
    """{'tweets','deletes','reports','follows','users'} -> {'alerts','timeline','dead_letters'}, on any engine.

    ``reports`` are the accepted location reports (``core.locations``); ``deletes`` every
    compliance message (``ComplianceEvent``: the input kept its first kind's name).
    """
    res = params.index_h3_res

    def ordered(col, processor, stage_name):
        return ops.run_ordered(col, processor, stage_name, tick_s=params.stream_tick_s,
                               allowed_lateness_s=params.allowed_lateness_s,
                               step="alerts")

    reports = inputs["reports"]
    found = ops.nested("FindHappenings", lambda o, tweets: find_happenings_over(o, tweets, params), inputs["tweets"])
    happenings = found["happenings"]
    # happenings : Happening, at the tweet's event time

    cell_msgs = ops.flatten([
        ops.map(reports, lambda r: report_cell_message(r, res), "KeyReportsByCell"),
        ops.flat_map(happenings, lambda h: happening_cell_messages(h, res), "KeyHappeningsByDisc"),
    ], "CellMessages")
    near = ordered(cell_msgs, CellIndex(params.location_stale_s), "NearbyCandidates")
    # near['out'] : (user_id, CandidateMsg)

    friend_msgs = ops.flatten([
        ops.flat_map(inputs["follows"], lambda f: follow_edges(f, params.follow_known_after_s), "FollowEdges"),
        ops.map(happenings, lambda h: (h.author_id, HappeningMsg(h)), "KeyHappeningsByAuthor"),
    ], "FriendMessages")
    friends = ordered(friend_msgs, FriendsOf(), "FriendCandidates")

    user_msgs = ops.flatten([
        ops.map(inputs["users"], lambda u: (u.user_id, UserInfo(u.user_id, u.alerts_opt_in)), "UserInfo"),
        ops.map(reports, lambda r: (r.user_id, ReportMsg(r)), "KeyReportsByUser"),
        near["out"], friends["out"],
    ], "UserMessages")
    decided = ordered(user_msgs, DecideForUser(params), "DecidePerUser")
    alerts = ops.flat_map(decided["out"], _counting_split(
        ops, {"alert": "alerts_decided", "capped": "alerts_capped_per_hour"}), "CountDecisions")
    # alerts : Shown(Alert, author id), at the tweet's event time
    timeline = timeline_over(ops, inputs["tweets"], happenings, params, ordered)
    # timeline['out'] : Shown(TimelineEntry, author id), at the tweet's event time

    shown = ops.flatten([alerts, timeline["out"]], "AllOutputs")
    gated = apply_compliance_over(ops, shown, inputs["deletes"], params, ordered)
    # gated['outputs'] : (alert | retracted | suppressed, Alert | TimelineEntry)
    split = ops.tagged(gated["outputs"], _split_outputs(ops), ("alerts", "timeline"), "CountEmitted")
    out = ops.map(split["alerts"], _identity, "AsAlerts", output_type=Alert)
    entries = ops.map(split["timeline"], _identity, "AsTimelineEntries", output_type=TimelineEntry)
    dead = ops.flatten([found["late"], near["late"], friends["late"], decided["late"], timeline["late"],
                        gated["late"]], "LateMessages")
    return {"alerts": out, "timeline": entries, "dead_letters": dead}


def _split_outputs(ops: Ops):
    """(tag, record) -> ('alerts' | 'timeline', record) for each one written (alert, retracted),
    counting every tag: alerts_emitted/_retracted/_suppressed_deleted, timeline_emitted/..."""
    names = {"alert": "emitted", "retracted": "retracted", "suppressed": "suppressed"}
    counters = {(prefix, tag): ops.counter(f"{prefix}_{name}")
                for prefix in ("alerts", "timeline") for tag, name in names.items()}
    counters["alerts", "suppressed"] = ops.counter("alerts_suppressed_deleted")   # its name before #14

    def split(tagged):
        tag, record = tagged
        prefix = "alerts" if isinstance(record, Alert) else "timeline"
        counters[prefix, tag].inc()
        if tag != "suppressed":
            yield prefix, record
    return split


def _identity(value):
    return value


def fan_out_outputs(tweets: Iterable[Tweet], deletes: Iterable[ComplianceEvent],
                    reports: Iterable[LocationReport], follows: Iterable[Follow], users: Iterable[User],
                    params: AlertParams) -> dict:
    """{'alerts', 'timeline'} of a bounded input (plain lists, no engine), each sorted."""
    inputs = {"tweets": list(tweets), "deletes": list(deletes), "reports": list(reports),
              "follows": list(follows), "users": list(users)}
    out = fan_out_over(LocalOps(), inputs, params)
    return {"alerts": sorted(out["alerts"], key=lambda a: (a.ts, a.alert_id)),
            "timeline": sorted(out["timeline"], key=lambda e: (e.ts, e.tweet_id, e.retracted))}


def fan_out(tweets: Iterable[Tweet], deletes: Iterable[ComplianceEvent], reports: Iterable[LocationReport],
            follows: Iterable[Follow], users: Iterable[User], params: AlertParams) -> list[Alert]:
    """Every alert of a bounded input (plain lists, no engine), sorted by (ts, alert_id)."""
    return fan_out_outputs(tweets, deletes, reports, follows, users, params)["alerts"]

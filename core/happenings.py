"""Which tweets are about a local happening: the rule set, bursts, and collapsing copies.

Engine-neutral (see ``core``): the rules, the processors, and the one wiring of
happening-finding, :func:`find_happenings_over`, written over ``core.ops`` so that
``transforms.alerts.FanOutGeofencedAlerts`` (Beam) and :func:`find_happenings`
(plain lists) run the same steps::

    tweets -> Triage -> CollapseCopies[text] -> Route -+-> rule happenings --------------+
                                                       +-> DetectBursts[tag|cell] -------+-> SessionKeys[class|cell]

A tweet can start a happening only if it is *precise* (``lat``/``lng`` present
and not ``coarse``) and *original* (not a retweet; not a near-duplicate of an
earlier tweet). It then becomes a happening in one of two ways:

1. **Rule set** (:data:`DEFAULT_RULES`, or a JSON file given by
   ``AlertParams.rules_path``: a list of ``{"name", "kind", "keywords",
   "hashtags"}`` objects). Text and hashtags are NFKC-normalised and
   case-folded. A hashtag rule matches a hashtag exactly; a keyword matches as
   a substring when it contains any non-ASCII character (Japanese has no word
   spaces) and on word boundaries otherwise (so ``sale`` does not match
   ``wholesale``). The first matching rule in list order wins, and its
   ``kind`` (concert, sale, festival, incident) picks the radius.
2. **Local burst** (kind ``burst``): for a tweet T and one of its hashtags h,
   at least ``burst_min_authors`` distinct authors (T's own included) posted
   precise original tweets carrying h within ``burst_window_s`` before T
   (inclusive) from T's H3 cell or a neighbouring cell at ``burst_h3_res``.
   The rule looks back only, so it can be decided at T's event time.

Tweets that only *mention* such words are not happenings: a tweet containing
any "not now" marker (:data:`DEFAULT_NOT_NOW`: 来週, 昨日, next month, missed,
...; JSON form ``{"rules": [...], "not_now": [...]}``) matches no rule and is
neither a burst candidate nor burst evidence.

**Happening key** (the unit "one alert per user per happening" counts): tweets
of one *class* (the rule's kind, e.g. ``festival`` for both the festival and
the fireworks rule; ``#<hashtag>`` for a burst) in one H3 cell at
``happening_h3_res`` form a session while each follows the previous one by at
most ``happening_gap_s``; the key is ``<class>|<cell>|<session start, epoch
ms>`` (:class:`SessionKeys`, decided in event-time order). A happening
straddling a coarse cell border counts as two.

**Near-duplicates**: two tweets are copies when their text is equal after
:func:`normalise_text` (NFKC, case-fold, ``RT @user:`` prefix, URLs and
@mentions removed, punctuation and spacing collapsed). Within
``near_dup_window_s`` of the earliest one (by ``(ts, tweet_id)``), later copies
collapse into it and never alert; retweets always collapse into their original.
A deleted tweet still counts as burst evidence and still is the original its
copies collapse into (a deletion withdraws the tweet's own alerts, nothing else).
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections import deque
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Optional, Sequence

import h3

from core.ops import LocalOps, Ops
from core.processor import Processor
from schemas.records import Tweet

# ``params`` below is a ``core.alerts.AlertParams`` (named, not imported: core.alerts imports this module).

KINDS = ("concert", "sale", "festival", "incident", "burst")


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    keywords: tuple[str, ...] = ()
    hashtags: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS or self.kind == "burst":
            raise ValueError(f"rule {self.name!r}: kind {self.kind!r} must be one of concert, sale, festival, incident")
        if not self.name or "|" in self.name:
            raise ValueError(f"rule name {self.name!r} must be non-empty and contain no '|'")
        if not self.keywords and not self.hashtags:
            raise ValueError(f"rule {self.name!r}: give at least one keyword or hashtag")


# The built-in rule set: Japanese and English, the vocabulary Tokyo tweets use.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("incident", "incident",
         keywords=("火事", "火災", "事故", "地震", "避難", "通行止め", "救急車", "消防車",
                   # bare "fire" is too often a verb; the phrases are not
                   "fire alarm", "fire at", "fire near", "been a fire", "been an fire", "accident", "evacuation", "road closed", "road closure", "earthquake",
                   "ambulance"),
         hashtags=("火事", "事故", "地震", "accident", "evacuation")),
    Rule("fireworks", "festival", keywords=("花火", "fireworks"), hashtags=("花火", "花火大会", "hanabi", "fireworks")),
    Rule("festival", "festival",
         keywords=("祭り", "まつり", "縁日", "屋台", "フェス", "festival", "matsuri", "street fair", "street food"),
         hashtags=("祭り", "まつり", "フェス", "festival", "matsuri")),
    Rule("concert", "concert",
         keywords=("ライブ", "コンサート", "路上ライブ", "公演", "アンコール", "live music", "live show", "concert",
                   "gig", "encore", "busking"),
         hashtags=("ライブ", "コンサート", "路上ライブ", "concert", "livemusic", "gig")),
    Rule("sale", "sale",
         keywords=("セール", "タイムセール", "特売", "福袋", "半額", "値引き", "sale", "discount", "bargain",
                   "clearance", "half price", "popup", "pop-up"),
         hashtags=("セール", "タイムセール", "半額", "sale", "popup", "flashsale")),
)


def fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


# Words that put a happening in another time or place than here and now.
DEFAULT_NOT_NOW: tuple[str, ...] = (
    "来週", "来月", "明日", "昨日", "去年", "今年の", "いつかな", "ニュースで", "行けばよかった", "動画",
    "next week", "next month", "tomorrow", "yesterday", "last year", "missed", "can't wait", "videos",
    "at home",
)


class RuleSet:
    """Compiled rules: :meth:`match` gives the first rule a tweet satisfies."""

    def __init__(self, rules: Sequence[Rule] = DEFAULT_RULES, not_now: Sequence[str] = DEFAULT_NOT_NOW):
        self.rules = tuple(rules)
        self.not_now = tuple(fold(m) for m in not_now)
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique, got {names}")
        self._compiled = []
        for rule in self.rules:
            ascii_words = [fold(k) for k in rule.keywords if fold(k).isascii()]
            pattern = (re.compile(r"(?<!\w)(?:" + "|".join(re.escape(k) for k in ascii_words) + r")(?!\w)")
                       if ascii_words else None)
            substrings = tuple(fold(k) for k in rule.keywords if not fold(k).isascii())
            self._compiled.append((rule, pattern, substrings, frozenset(fold(h) for h in rule.hashtags)))

    def is_not_now(self, text: str) -> bool:
        """The tweet places its subject in another time or place (see DEFAULT_NOT_NOW)."""
        folded = fold(text)
        return any(marker in folded for marker in self.not_now)

    def match(self, text: str, hashtags: Iterable[str]) -> Optional[Rule]:
        folded = fold(text)
        if any(marker in folded for marker in self.not_now):
            return None
        tags = {fold(h) for h in hashtags}
        for rule, pattern, substrings, rule_tags in self._compiled:
            if tags & rule_tags or any(s in folded for s in substrings) or (pattern and pattern.search(folded)):
                return rule
        return None

    @classmethod
    def from_json_file(cls, path: str) -> "RuleSet":
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        not_now = DEFAULT_NOT_NOW
        if isinstance(raw, dict):
            not_now = tuple(raw.get("not_now", DEFAULT_NOT_NOW))
            raw = raw.get("rules")
        if not isinstance(raw, list):
            raise ValueError(f"{path}: expected a JSON list of rules or {{'rules': [...], 'not_now': [...]}}")
        return cls([Rule(name=r["name"], kind=r["kind"], keywords=tuple(r.get("keywords", ())),
                         hashtags=tuple(r.get("hashtags", ()))) for r in raw], not_now)


_RT_PREFIX = re.compile(r"^rt @\w+:\s*")
_URL = re.compile(r"https?://\S+")
_MENTION = re.compile(r"@\w+")
_NON_WORD = re.compile(r"[\W_]+")


def normalise_text(text: str) -> str:
    """The text two copies share: folded, without RT prefix, URLs, mentions, punctuation."""
    folded = fold(text).strip()
    folded = _RT_PREFIX.sub("", folded)
    folded = _URL.sub(" ", folded)
    folded = _MENTION.sub(" ", folded)
    return " ".join(_NON_WORD.sub(" ", folded).split())


def text_fingerprint(text: str) -> Optional[str]:
    """Key of the near-duplicate class; None when nothing is left to compare."""
    norm = normalise_text(text)
    if not norm:
        return None
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()[:24]


def is_precise(tweet: Tweet) -> bool:
    return tweet.lat is not None and tweet.lng is not None and not tweet.coarse


class Happening(NamedTuple):
    """A tweet that alerts: where, when, what kind, and the key alerts dedupe on."""
    tweet_id: str
    author_id: str
    ts: float
    lat: float
    lng: float
    kind: str          # concert | sale | festival | incident | burst
    label: str         # rule name, or '#<hashtag>' for a burst
    key: str           # class|cell|session start ms (see module docstring); '' until SessionKeys
    radius_m: float    # the nearby radius for this kind


def happening_class(h: Happening) -> str:
    return h.label if h.kind == "burst" else h.kind


def session_group(h: Happening, h3_res: int) -> str:
    """The key SessionKeys runs under: class and coarse cell."""
    return f"{happening_class(h)}|{h3.latlng_to_cell(h.lat, h.lng, h3_res)}"


class SessionKeys(Processor):
    """Ordered processor keyed by session_group: gives each happening tweet its happening key.

    State: (session start, last tweet time). A tweet more than ``gap_s`` after
    the previous one of its group starts a new session.
    """
    name = "sessions"

    def __init__(self, h3_res: int, gap_s: float):
        self.h3_res, self.gap_s = h3_res, gap_s

    @staticmethod
    def sort_key(h: Happening):
        return (h.ts, 0, h.tweet_id, h.label)

    def initial_state(self):
        return None

    def process(self, state, h: Happening):
        if state is None or h.ts - state[1] > self.gap_s:
            state = (h.ts, h.ts)
        else:
            state = (state[0], h.ts)
        key = f"{session_group(h, self.h3_res)}|{int(round(state[0] * 1000))}"
        return state, [h._replace(key=key)]

    def expire(self, state, now: float):
        return None if state is None or now - state[1] > self.gap_s else state

    def gc_time(self, state):
        return state[1] + self.gap_s + 1e-3


# ---- near-duplicate collapsing: one processor per fingerprint --------------------------

class CollapseCopies(Processor):
    """Ordered processor keyed by text fingerprint: passes originals, drops copies.

    State: (ts, tweet_id) of the current original. A tweet more than ``window_s``
    after it becomes the new original of its fingerprint.
    """
    name = "collapse"

    def __init__(self, window_s: float):
        self.window_s = window_s

    @staticmethod
    def sort_key(tweet: Tweet):
        return (tweet.ts, 0, tweet.tweet_id)

    def initial_state(self):
        return None

    def process(self, state, tweet: Tweet):
        """-> (new state, outputs): [tweet] for an original, [] for a copy."""
        if state is not None and tweet.ts - state[0] <= self.window_s and tweet.tweet_id != state[1]:
            return state, []
        if state is not None and tweet.tweet_id == state[1]:
            return state, []  # the same tweet delivered twice (v1.1 and v2 of one status)
        return (tweet.ts, tweet.tweet_id), [tweet]

    def expire(self, state, now: float):
        return None if state is None or now - state[0] > self.window_s else state

    def gc_time(self, state):
        return state[0] + self.window_s + 1e-3


# ---- burst detection: one processor per (hashtag, cell at burst res) ------------------

class BurstEvidence(NamedTuple):
    """A precise original tweet carrying ``hashtag``, sent to its cell and each neighbour."""
    ts: float
    author_id: str
    tweet_id: str


class BurstCandidate(NamedTuple):
    """A tweet asking whether its ``hashtag`` is bursting around its own cell."""
    ts: float
    tweet: Tweet
    hashtag: str


def burst_key(hashtag: str, cell: str) -> str:
    return f"{hashtag}|{cell}"


def burst_messages(tweet: Tweet, res: int, as_candidate: bool):
    """(key, message) pairs for one precise original tweet: evidence, then candidacy."""
    own = h3.latlng_to_cell(tweet.lat, tweet.lng, res)
    cells = h3.grid_disk(own, 1)
    for tag in dict.fromkeys(fold(h) for h in tweet.hashtags):  # each tag once, in order
        if not tag or "|" in tag:
            continue
        for cell in cells:
            yield burst_key(tag, cell), BurstEvidence(tweet.ts, tweet.author_id, tweet.tweet_id)
        if as_candidate:
            yield burst_key(tag, own), BurstCandidate(tweet.ts, tweet, tag)


class DetectBursts(Processor):
    """Ordered processor: a candidate bursts when enough distinct authors used its tag nearby.

    State: deque of evidence (ts, author, tweet id) within ``window_s`` of now;
    evidence sorts before candidates at the same instant so a tweet counts itself.
    """
    name = "burst"

    def __init__(self, min_authors: int, window_s: float):
        self.min_authors, self.window_s = min_authors, window_s

    @staticmethod
    def sort_key(msg):
        if isinstance(msg, BurstEvidence):
            return (msg.ts, 0, msg.tweet_id)
        return (msg.ts, 1, msg.tweet.tweet_id)

    def initial_state(self):
        return deque()

    def process(self, state, msg):
        while state and state[0][0] < msg.ts - self.window_s:
            state.popleft()
        if isinstance(msg, BurstEvidence):
            state.append((msg.ts, msg.author_id, msg.tweet_id))
            return state, []
        authors = {author for _ts, author, _tid in state}
        return state, ([msg] if len(authors) >= self.min_authors else [])

    def expire(self, state, now: float):
        while state and state[0][0] < now - self.window_s:
            state.popleft()
        return state if state else None

    def gc_time(self, state):
        return state[-1][0] + self.window_s + 1e-3


# ---- triage: what the rule set says about one tweet -----------------------------------

class TweetTriage(NamedTuple):
    """What the rule set says about one tweet before copies and bursts are considered."""
    verdict: str                 # retweet | not_precise | not_happening | candidate
    rule_kind: Optional[str]
    rule_label: Optional[str]


VERDICTS = ("retweet", "not_precise", "not_happening", "candidate")


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


@functools.lru_cache(maxsize=8)
def rule_set(path: str) -> RuleSet:
    """The compiled rule set of ``AlertParams.rules_path``, once per worker process (not once per tweet)."""
    return RuleSet.from_json_file(path) if path else RuleSet(DEFAULT_RULES)


def rule_happening(tweet: Tweet, kind: str, label: str, params: "AlertParams") -> Happening:
    return Happening(tweet.tweet_id, tweet.author_id, tweet.ts, tweet.lat, tweet.lng, kind, label, "",
                     params.radius_for(kind))


def burst_happening(candidate: BurstCandidate, params: "AlertParams") -> Happening:
    return rule_happening(candidate.tweet, "burst", f"#{candidate.hashtag}", params)


def collapse_key(tweet: Tweet) -> str:
    """The near-duplicate class; a tweet with no comparable text is its own class."""
    return text_fingerprint(tweet.text) or f"tweet:{tweet.tweet_id}"


class CollapseTriaged(CollapseCopies):
    """CollapseCopies over (tweet, triage) pairs, so the verdict travels with the tweet.

    -> ("original", pair) or ("copy", pair): the copies are counted by the next
    step (a processor counts nothing itself, so every engine hosts it alike).
    """

    @staticmethod
    def sort_key(msg):
        return CollapseCopies.sort_key(msg[0])

    def process(self, state, msg):
        state, out = CollapseCopies.process(self, state, msg[0])
        return state, [("original" if out else "copy", msg)]


# ---- the one wiring of happening-finding ------------------------------------------------

def find_happenings_over(ops: Ops, tweets, params: "AlertParams") -> dict:
    """tweets -> {'happenings': Happening at the tweet's event time, 'late': DeadLetter}, on any engine."""
    verdict_counters = {v: ops.counter(f"alerts_tweet_{v}") for v in VERDICTS}
    copies = ops.counter("alerts_tweet_copy_collapsed")

    def ordered(col, processor, stage_name):
        return ops.run_ordered(col, processor, stage_name, tick_s=params.stream_tick_s,
                               allowed_lateness_s=params.allowed_lateness_s,
                               step="alerts")

    def triaged(tweet):
        verdict = triage(tweet, rule_set(params.rules_path))
        verdict_counters[verdict.verdict].inc()
        if verdict.verdict == "candidate":
            yield collapse_key(tweet), (tweet, verdict)

    def route(collapsed):
        kind, (tweet, verdict) = collapsed
        if kind == "copy":
            copies.inc()
            return
        if verdict.rule_kind is not None:
            yield "rule", rule_happening(tweet, verdict.rule_kind, verdict.rule_label, params)
        for kv in burst_messages(tweet, params.burst_h3_res, as_candidate=verdict.rule_kind is None):
            yield "burst", kv

    candidates = ops.flat_map(tweets, triaged, "Triage")
    # candidates : (text fingerprint, (Tweet, TweetTriage))
    collapsed = ordered(candidates, CollapseTriaged(params.near_dup_window_s), "CollapseCopies")
    routed = ops.tagged(collapsed["out"], route, ("rule", "burst"), "Route")
    # routed['rule'] : Happening;  routed['burst'] : (hashtag|cell, BurstEvidence | BurstCandidate)
    bursts = ordered(routed["burst"], DetectBursts(params.burst_min_authors, params.burst_window_s), "DetectBursts")
    burst_happenings = ops.map(bursts["out"], lambda c: burst_happening(c, params), "BurstHappenings")
    unkeyed = ops.flatten([routed["rule"], burst_happenings], "AllHappenings")
    by_group = ops.map(unkeyed, lambda h: (session_group(h, params.happening_h3_res), h), "BySessionGroup")
    keyed = ordered(by_group, SessionKeys(params.happening_h3_res, params.happening_gap_s), "SessionKeys")
    late = ops.flatten([collapsed["late"], bursts["late"], keyed["late"]], "LateTweets")
    return {"happenings": keyed["out"], "late": late}


def find_happenings(tweets: Iterable[Tweet], params: "AlertParams") -> list[Happening]:
    """Every happening of a bounded input (plain lists, no engine)."""
    return find_happenings_over(LocalOps(), list(tweets), params)["happenings"]

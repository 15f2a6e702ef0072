"""The follow step, engine-neutral: its parameters, its two stateful processors, and the step on a list.

The rules are ``core.pairing``'s; this module says how they are composed into
one step that any engine hosts the same way (``transforms.follows`` in Beam,
a ``KeyedProcessFunction`` in Flink next, :func:`resolve_reports` on a plain
list: the reference the tests and the benchmark compare against)::

    TapReport --check_tap (stateless, users' keys)--> CheckedTap | Rejection
    (nonce, TouchPane)  --JudgeTouch (NonceState)-->  Follow | Rejection
    (user pair, PairTouches) --KeepFirstFollow (the edge)--> Follow | RepeatedTouch

A pane is what an engine has of one nonce at once: every report of the touch
(bounded input: one ``final`` pane), or what arrived since the last pane
(unbounded: early panes, then the ``final`` one when the watermark passes the
touch's deadline, then one per late report). The rules decide a pane as a whole
(their choice of a confirming pair is independent of arrival order within it),
so a host must hand the processor the same panes to get the same outputs.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from core import conventions, pairing
from core.pairing import EMPTY_MEMORY, CheckedTap, NonceMemory, Rejection
from core.processor import Processor
from schemas.proofs import nonce_time
from schemas.records import DeadLetter, Follow, TapReport

SOURCE = "taps"   # the dead letters' source
# Width of the deadline windows. Each nonce is its own key, so this only rounds
# a touch's deadline up to the next whole second.
DEADLINE_GRANULE_S = 1.0

# Counter names of the step beyond the rejection kinds of ``core.pairing``.
TAPS_READ = "taps_read"
TOUCHES_CONFIRMED = "touches_confirmed"
FOLLOWS_EMITTED = "follows_emitted"
TOUCHES_REPEAT = "touches_repeat"


@dataclass(frozen=True)
class FollowParams:
    """Knobs of mutual-follow resolution (each becomes ``--follows_<field>`` on the command line)."""
    max_clock_skew_s: float = 10.0     # max |ts - nonce time| per report and |ts_A - ts_B| per pair
    pending_expiry_s: float = 600.0    # event time after the touch that a report waits for its partner
    replay_memory_s: float = 86400.0   # event time after the expiry that a nonce is still remembered
    # How far a touch time may lie ahead of the run's clock. The run's clock is the worker's
    # wall clock, in batch and streaming alike: no genuine touch happens in the future, so a
    # far-future touch time (2099) is refused rather than becoming a follow's established_at.
    max_future_s: float = pairing.DEFAULT_MAX_FUTURE_S
    max_accuracy_m: float = pairing.DEFAULT_MAX_ACCURACY_M      # a report's signed accuracy may be at most this
    max_pair_distance_m: float = pairing.DEFAULT_MAX_PAIR_DISTANCE_M  # the two signed positions' distance,
    #                                                              beyond both accuracies, may be at most this

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"follows_{f.name}: expected a finite number of seconds, got {value!r}")
        if self.max_clock_skew_s <= 0:
            raise ValueError(f"follows_max_clock_skew_s={self.max_clock_skew_s}: must be > 0 "
                             "(phone clocks are never exactly equal; 10 s is the default)")
        if self.pending_expiry_s < self.max_clock_skew_s:
            raise ValueError(f"follows_pending_expiry_s={self.pending_expiry_s}: must be >= "
                             f"follows_max_clock_skew_s={self.max_clock_skew_s}, or an honest partner "
                             "whose clock lags could expire before its report is even due")
        for name in ("max_future_s", "max_accuracy_m", "max_pair_distance_m"):
            if getattr(self, name) < 0:
                raise ValueError(f"follows_{name}={getattr(self, name)}: must be >= 0")
        if self.replay_memory_s < 0:
            raise ValueError(f"follows_replay_memory_s={self.replay_memory_s}: must be >= 0 "
                             "(0 forgets a nonce as soon as its touch expires)")


def dead_letter(rejection: Rejection) -> DeadLetter:
    return conventions.dead_letter(SOURCE, rejection.reason, rejection.report)


def touch_deadline(nonce: str, params: FollowParams) -> float:
    """When a touch is decided: its signed time plus the pending expiry.

    Every report that can ever be accepted for a nonce (the genuine pair, a replay
    "a day later", a third phone) has the same deadline, because its ``ts`` must lie
    within the skew of the nonce's time whatever ``ts`` it claims.
    """
    return nonce_time(nonce) + params.pending_expiry_s


def deadline_granule(deadline: float) -> Tuple[float, float]:
    """[start, end) of the whole second a deadline is decided in (streaming) and stamped with (both)."""
    start = math.floor(deadline / DEADLINE_GRANULE_S) * DEADLINE_GRANULE_S
    return start, start + DEADLINE_GRANULE_S


def pair_key(follow: Follow) -> str:
    """The user pair as a key: a JSON pair is an unambiguous, deterministically encoded string."""
    return json.dumps([follow.user_a, follow.user_b])


# ---- 1. one report, stateless -------------------------------------------------------------

class TapChecker:
    """``check_report`` with the step's parameters and a key-validity cache kept across reports."""

    def __init__(self, params: FollowParams):
        self._params = params
        self._keys_ok: Dict[str, Optional[str]] = {}

    def check(self, report: TapReport, pubkeys: Mapping[str, str], now: Optional[float] = None):
        """A ``CheckedTap`` or a ``Rejection``; ``now`` is the run's clock (FollowParams.max_future_s)."""
        p = self._params
        return pairing.check_report(report, pubkeys, p.max_clock_skew_s, self._keys_ok,
                                    now=time.time() if now is None else now,
                                    max_future_s=p.max_future_s, max_accuracy_m=p.max_accuracy_m)


# ---- 2. all reports of one nonce: the judge -----------------------------------------------

class TouchPane(NamedTuple):
    """What a host has of one nonce at once; ``final``: the watermark passed the touch's deadline."""
    nonce: str
    taps: Tuple[CheckedTap, ...]
    final: bool


class NonceState(NamedTuple):
    """The judge's state of one nonce: its memory, and when nothing about it matters any more."""
    memory: NonceMemory = EMPTY_MEMORY
    forget_at: Optional[float] = None    # deadline + replay_memory_s, once the nonce was seen


class JudgeTouch(Processor):
    """Keyed by nonce: judge each pane against the nonce's memory -> ``Follow`` and ``Rejection`` outputs.

    A final pane also expires the touch: whatever still waits becomes unmatched
    and leaves the memory, which keeps only the ids seen and the outcome until
    ``replay_memory_s`` after the deadline (later reports of it are late data).
    """
    name = "judge_touch"

    def __init__(self, params: FollowParams):
        self._params = params
        self._key_cache: dict = {}   # decoded public keys, shared by every pane this worker judges

    def sort_key(self, pane: TouchPane):
        # every pane of a nonce is due at its deadline; a stable sort keeps the panes' order
        return (touch_deadline(pane.nonce, self._params), int(pane.final))

    def initial_state(self) -> NonceState:
        return NonceState()

    def process(self, state: NonceState, pane: TouchPane):
        p = self._params
        verdict = pairing.judge_touch(state.memory, pane.taps, max_clock_skew_s=p.max_clock_skew_s,
                                      pending_expiry_s=p.pending_expiry_s,
                                      verifier=pairing.Verifier(self._key_cache),
                                      max_pair_distance_m=p.max_pair_distance_m)
        memory, rejections = verdict.memory, verdict.rejections
        if pane.final:
            expired = pairing.expire_touch(memory, max_clock_skew_s=p.max_clock_skew_s,
                                           pending_expiry_s=p.pending_expiry_s,
                                           max_pair_distance_m=p.max_pair_distance_m)
            memory, rejections = expired.memory, rejections + expired.rejections
        forget_at = state.forget_at
        if forget_at is None:
            forget_at = touch_deadline(pane.nonce, p) + p.replay_memory_s
        return NonceState(memory, forget_at), list(verdict.follows) + list(rejections)

    def expire(self, state: NonceState, now: float):
        return None if state.forget_at is not None and now >= state.forget_at else state

    def gc_time(self, state: NonceState) -> Optional[float]:
        return state.forget_at


# ---- 3. all confirmed touches of one user pair: the follow graph --------------------------

class PairTouches(NamedTuple):
    """Confirmed touches of one user pair that reach the follow graph together."""
    follows: Tuple[Follow, ...]


class RepeatedTouch(NamedTuple):
    """A confirmed touch of an already-followed pair: counted, never a second edge."""
    follow: Follow


class KeepFirstFollow(Processor):
    """Keyed by user pair: the earliest touch of the pair's first group is its edge, for ever.

    Outputs: the new edge (``Follow``) once, and a ``RepeatedTouch`` per other touch. Hosts tell
    them apart by the marker: an engine's coder may hand back a Follow as its own row type.
    A group is all of the pair's touches in bounded input (so "first" is exactly
    the earliest); in unbounded input, the touches of one deadline window, which
    reach the graph in event-time order (see ``transforms.follows``).
    """
    name = "first_follow"

    def sort_key(self, group: PairTouches):
        return (min((f.established_at for f in group.follows), default=0.0),)

    def process(self, edge: Optional[Follow], group: PairTouches):
        edge, emitted, repeats = pairing.keep_first_follow(edge, group.follows)
        return edge, ([emitted] if emitted is not None else []) + [RepeatedTouch(f) for f in repeats]


# ---- the whole step on a list ---------------------------------------------------------------

class Resolution(NamedTuple):
    follows: List[Follow]        # one per followed pair, sorted
    rejections: List[Rejection]  # sorted by (tap_id, kind, reason)
    repeats: List[Follow]        # confirmed touches of an already-followed pair, sorted


def rejection_order(rejection: Rejection):
    return (rejection.report.tap_id, rejection.kind, rejection.reason, rejection.report)


def resolve_reports(reports: Iterable[TapReport], pubkeys: Mapping[str, str], *,
                    max_clock_skew_s: float = 10.0, pending_expiry_s: float = 600.0,
                    max_future_s: float = pairing.DEFAULT_MAX_FUTURE_S,
                    max_accuracy_m: float = pairing.DEFAULT_MAX_ACCURACY_M,
                    max_pair_distance_m: float = pairing.DEFAULT_MAX_PAIR_DISTANCE_M,
                    now: Optional[float] = None) -> Resolution:
    """All reports at once, as a bounded input is resolved: follows, rejections and repeats."""
    params = FollowParams(max_clock_skew_s=max_clock_skew_s, pending_expiry_s=pending_expiry_s,
                          max_future_s=max_future_s, max_accuracy_m=max_accuracy_m,
                          max_pair_distance_m=max_pair_distance_m)
    checker = TapChecker(params)
    now = time.time() if now is None else now
    rejections: List[Rejection] = []
    by_nonce: Dict[str, List[CheckedTap]] = {}
    for report in reports:
        checked = checker.check(report, pubkeys, now)
        if isinstance(checked, Rejection):
            rejections.append(checked)
        else:
            by_nonce.setdefault(report.nonce, []).append(checked)
    judge = JudgeTouch(params)
    by_pair: Dict[str, List[Follow]] = {}
    for nonce, taps in by_nonce.items():
        # bounded: one final pane holds every report of the touch
        _, outputs = judge.process(judge.initial_state(), TouchPane(nonce, tuple(taps), True))
        for out in outputs:
            if isinstance(out, Rejection):
                rejections.append(out)
            else:
                by_pair.setdefault(pair_key(out), []).append(out)
    graph = KeepFirstFollow()
    follows, repeats = [], []
    for touches in by_pair.values():
        _, outputs = graph.process(graph.initial_state(), PairTouches(tuple(touches)))
        follows.extend(o for o in outputs if not isinstance(o, RepeatedTouch))
        repeats.extend(o.follow for o in outputs if isinstance(o, RepeatedTouch))
    return Resolution(sorted(follows), sorted(rejections, key=rejection_order), sorted(repeats))

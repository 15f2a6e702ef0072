"""ResolveMutualFollows: tap reports in, mutual follows and dead letters out.

The rules live in ``transforms.pairing`` (pure, tested without a runner); this
module is the Beam wiring, the same for batch and streaming::

    {'taps': PCollection[TapReport], 'users': PCollection[User]}
        | 'ResolveMutualFollows' >> ResolveMutualFollows(FollowParams())
    -> {'follows': PCollection[Follow], 'dead_letters': PCollection[DeadLetter]}

Design, and why it is fast
--------------------------
The obvious design, a stateful DoFn keyed by nonce that reads and writes state
and verifies two signatures for every report, ran at under 5,000 reports/s on
the DirectRunner (``benchmarks/bench_follows.py`` measures both side by side).
Here instead:

1. ``CheckTapReports`` (stateless, users as an ``AsDict`` side input): unknown
   users, self-taps and reports whose ``ts`` is off the touch time signed into
   the nonce by more than ``max_clock_skew_s`` are dead-lettered without any
   crypto. A surviving report is keyed by its nonce and re-stamped to the
   touch's *pairing time* ``nonce_time + max_clock_skew_s``: no honest report of
   that touch carries a later ``ts``, and moving a timestamp forward never
   makes an element late.
2. ``GroupReportsByNonce``: a ``GroupByKey`` in 1-second fixed windows over the
   pairing time. Both reports of a touch (and any replay of its nonce, whatever
   ``ts`` it claims, since that ``ts`` must lie within the skew of the nonce's
   time) land in the same key and window. The on-time pane fires as soon as the
   watermark passes the pairing time: the pairing itself costs one shuffle, no
   state access per report.
3. ``JudgeTouches`` (stateful, keyed by nonce, one call per *pane*, i.e. per
   touch, not per report): verifies each distinct signature once (a genuine
   pair shares its two signatures, so one Ed25519 check per report instead of
   two), confirms the pair, and keeps a small ``NonceMemory`` so that later
   panes (late data) are judged against what was already decided: a nonce
   confirms at most one follow, a partner arriving after the pending expiry
   does not match. An event-time timer at ``nonce_time + pending_expiry_s`` is
   set only for touches still missing a partner; it dead-letters the waiting
   reports as unmatched and clears them.
4. ``KeepFirstFollowPerPair`` (stateful, keyed by user pair, global window):
   an already-followed pair tapping again is a repeat touch, counted, never a
   second edge. Candidates wait for the watermark to pass their own timestamp
   so that the earliest touch wins regardless of arrival order. Its state is
   the follow graph itself: one entry per followed pair, kept for good.

Event time, lateness and bounded memory
---------------------------------------
Every report accepted in step 1 has ``|ts - nonce_time| <= max_clock_skew_s``,
so every report that could ever be accepted for a nonce -- the genuine ones, a
replay "a day later", a third phone -- carries event time within the skew of
that nonce's time and lands in the same window. The nonce's memory therefore
only needs to last, in event time, until no report for it can still arrive:
the windows' allowed lateness is ``pending_expiry_s + replay_memory_s`` past the
pairing time, after which the runner garbage-collects the per-(nonce, window)
state. A report that arrives later than that is behind the watermark by more
than the allowed lateness and is dropped by the ``GroupByKey`` (Beam's
late-data rule; Flink counts it in ``droppedDueToLateness``): it can never
create a follow, but it is not dead-lettered -- raise ``replay_memory_s`` to
account for later replays. In batch nothing is late and every report ends as a
follow, a repeat touch or a dead letter.

Follows carry as element timestamp the event time at which they became
certain (the pairing time's window end), not the touch time
(``established_at``); in streaming a follow is emitted once the watermark
passes ``nonce_time + max_clock_skew_s`` (rounded up to the second).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Iterable, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration

from schemas.proofs import nonce_time
from schemas.records import DeadLetter, Follow, TapReport, User, to_json_dict
from transforms import pairing
from transforms.pairing import EMPTY_MEMORY, CheckedTap, Rejection

beam.coders.registry.register_coder(CheckedTap, beam.coders.RowCoder)

NAMESPACE = "tapfollow"
SOURCE = "taps"
DEAD = "dead_letters"
# Width of the pairing windows. Each nonce is its own key, so this only rounds
# the moment a touch is decided up to the next whole second.
PAIRING_GRANULE_S = 1.0


@dataclass(frozen=True)
class FollowParams:
    """Knobs of mutual-follow resolution (each becomes ``--follows_<field>`` on the command line)."""
    max_clock_skew_s: float = 10.0     # max |ts - nonce time| per report and |ts_A - ts_B| per pair
    pending_expiry_s: float = 600.0    # event time after the touch that a report waits for its partner
    replay_memory_s: float = 86400.0   # event time after the expiry that a nonce is still remembered

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
        if self.replay_memory_s < 0:
            raise ValueError(f"follows_replay_memory_s={self.replay_memory_s}: must be >= 0 "
                             "(0 forgets a nonce as soon as its touch expires)")

    @property
    def allowed_lateness_s(self) -> float:
        return self.pending_expiry_s + self.replay_memory_s


def dead_letter(rejection: Rejection) -> DeadLetter:
    raw = json.dumps(to_json_dict(rejection.report), separators=(",", ":"), ensure_ascii=False)
    return DeadLetter(source=SOURCE, error=rejection.reason, raw=raw)


class _Counters:
    """``Metrics.counter`` objects by name, made on first use (kinds come from ``transforms.pairing``)."""

    def __init__(self):
        self._counters = {}

    def inc(self, name: str, n: int = 1):
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter(NAMESPACE, name)
        counter.inc(n)


def _reject(counters: _Counters, rejections):
    for rejection in rejections:
        counters.inc(rejection.kind)
        yield beam.pvalue.TaggedOutput(DEAD, dead_letter(rejection))


class _CheckTapReportsFn(beam.DoFn):
    """Key-free checks; survivors keyed by nonce and stamped at the touch's pairing time."""

    def __init__(self, params: FollowParams):
        self._skew = params.max_clock_skew_s

    def setup(self):
        self._counters = _Counters()
        self._keys_ok = {}

    def process(self, report: TapReport, pubkeys):
        self._counters.inc("taps_read")
        checked = pairing.check_report(report, pubkeys, self._skew, self._keys_ok)
        if isinstance(checked, Rejection):
            yield from _reject(self._counters, [checked])
            return
        pairing_time = nonce_time(report.nonce) + self._skew
        yield window.TimestampedValue((report.nonce, checked), pairing_time)


class _JudgeTouchesFn(beam.DoFn):
    """One call per (nonce, pane): confirm, replay-reject, or hold the reports until their expiry."""
    MEMORY = ReadModifyWriteStateSpec("nonce_memory", PickleCoder())
    EXPIRY = TimerSpec("pending_expiry", beam.TimeDomain.WATERMARK)

    def __init__(self, params: FollowParams):
        self._skew = params.max_clock_skew_s
        self._expiry = params.pending_expiry_s

    def setup(self):
        self._counters = _Counters()
        self._key_cache = {}

    def process(self, element, memory=beam.DoFn.StateParam(MEMORY), expiry=beam.DoFn.TimerParam(EXPIRY)):
        _nonce, taps = element
        verdict = pairing.judge_touch(memory.read() or EMPTY_MEMORY, taps, max_clock_skew_s=self._skew,
                                      pending_expiry_s=self._expiry,
                                      verifier=pairing.Verifier(self._key_cache))
        memory.write(verdict.memory)
        if verdict.expire_at is not None:
            expiry.set(verdict.expire_at)
        for follow in verdict.follows:
            self._counters.inc("touches_confirmed")
            # a JSON pair is an unambiguous, deterministically encoded string key
            yield json.dumps([follow.user_a, follow.user_b]), follow
        yield from _reject(self._counters, verdict.rejections)

    @on_timer(EXPIRY)
    def on_expiry(self, memory=beam.DoFn.StateParam(MEMORY)):
        verdict = pairing.expire_touch(memory.read() or EMPTY_MEMORY, max_clock_skew_s=self._skew,
                                       pending_expiry_s=self._expiry)
        memory.write(verdict.memory)   # ids and outcome only: the waiting reports are gone
        yield from _reject(self._counters, verdict.rejections)


class _KeepFirstFollowPerPairFn(beam.DoFn):
    """One edge per user pair, ever: the earliest confirmed touch; later ones are repeat touches."""
    EDGE = ReadModifyWriteStateSpec("edge", PickleCoder())
    CANDIDATES = BagStateSpec("candidates", PickleCoder())
    DECIDE = TimerSpec("decide", beam.TimeDomain.WATERMARK)

    def setup(self):
        self._counters = _Counters()

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                candidates=beam.DoFn.StateParam(CANDIDATES), decide=beam.DoFn.TimerParam(DECIDE)):
        _pair, follow = element
        candidates.add(follow)
        # Decide once the watermark says every touch confirmed up to now has arrived.
        decide.set(timestamp)

    @on_timer(DECIDE)
    def on_decide(self, edge=beam.DoFn.StateParam(EDGE), candidates=beam.DoFn.StateParam(CANDIDATES)):
        current, emitted, repeats = pairing.keep_first_follow(edge.read(), candidates.read())
        candidates.clear()
        if emitted is not None:
            edge.write(current)
            self._counters.inc("follows_emitted")
            yield emitted
        if repeats:
            self._counters.inc("touches_repeat", len(repeats))


class ResolveMutualFollows(beam.PTransform):
    """``{'taps', 'users'}`` -> ``{'follows', 'dead_letters'}``; see the module docstring."""

    def __init__(self, params: FollowParams = FollowParams(), label=None):
        super().__init__(label)
        self._params = params

    def expand(self, inputs):
        p = self._params
        pubkeys = beam.pvalue.AsDict(
            inputs["users"] | "PubkeyByUserId" >> beam.Map(lambda u: (u.user_id, u.pubkey)))
        checked = (inputs["taps"]
                   | "CheckTapReports" >> beam.ParDo(_CheckTapReportsFn(p), pubkeys)
                   .with_output_types(Tuple[str, CheckedTap]).with_outputs(DEAD, main="ok"))
        # checked.ok : (nonce, CheckedTap) at the touch's pairing time
        judged = (checked.ok
                  | "WindowByPairingTime" >> beam.WindowInto(
                      window.FixedWindows(PAIRING_GRANULE_S),
                      trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                      accumulation_mode=trigger.AccumulationMode.DISCARDING,
                      allowed_lateness=Duration(seconds=p.allowed_lateness_s))
                  | "GroupReportsByNonce" >> beam.GroupByKey()
                  # (nonce, [CheckedTap]) : one element per touch and pane
                  | "JudgeTouches" >> beam.ParDo(_JudgeTouchesFn(p))
                  .with_input_types(Tuple[str, Iterable[CheckedTap]]).with_output_types(Tuple[str, Follow])
                  .with_outputs(DEAD, main="confirmed"))
        # judged.confirmed : ('["user_a","user_b"]', Follow)
        follows = (judged.confirmed
                   | "IntoFollowGraph" >> beam.WindowInto(window.GlobalWindows())
                   | "KeepFirstFollowPerPair" >> beam.ParDo(_KeepFirstFollowPerPairFn())
                   .with_input_types(Tuple[str, Follow]).with_output_types(Follow))
        dead_letters = (
            (checked[DEAD],
             judged[DEAD] | "JudgedDeadLettersToGlobal" >> beam.WindowInto(window.GlobalWindows()))
            | "MergeDeadLetters" >> beam.Flatten().with_output_types(DeadLetter))
        return {"follows": follows, "dead_letters": dead_letters}

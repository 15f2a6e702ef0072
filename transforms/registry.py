"""The Beam host of ``core.registry``: one record per user and per tweet, upstream of every step.

* :class:`MergeRegistry`: the registry merged the most private way, one record per
  ``user_id`` (``core.registry.merge_registry``); every extra copy is a dead letter; the
  latest verified settings change applied. Follows, alerts and DP statistics all read it.
* :class:`FollowRegistry` (streaming): the registry as a changing input -- the launch
  snapshot, then every record read while the job runs, folded per user
  (``core.registry.CurrentRegistry``); alerts and statistics take each new record.
* :class:`DedupeTweets`: each tweet id used once, by alerts and statistics alike
  (``core.registry.FirstCopy``; bounded input: one group per id in the ordered
  host's batch plan; unbounded: its state in a stateful DoFn, freed by an
  event-time timer ``horizon_s`` past the tweet's time); the launcher sets
  ``horizon_s`` beyond every step's lateness bound, so a copy arriving after that
  is late data no step uses.
* :class:`KeepRegisteredPings`: a ping of a user who is not in the registry is a
  dead letter, not a silent drop (``core.registry.registered_ping``).
"""
from __future__ import annotations

import typing
from typing import Optional

import apache_beam as beam
from apache_beam.coders import FloatCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from core.conventions import METRICS_NAMESPACE as _NS, is_bounded
from core.registry import (DUPLICATE_TWEETS, PINGS_UNKNOWN_USER, FirstCopy, effective_user, merge_registry,
                           registered_ping, registry_over)
from schemas.records import DeadLetter, Ping, Tweet, User
from transforms.ordered import OrderedByKey

DEAD = "dead_letters"


def _tag_dead_letters(outputs):
    """Route a core step's outputs: dead letters to the ``dead_letters`` output, the rest to main."""
    for out in outputs:
        yield beam.pvalue.TaggedOutput(DEAD, out) if isinstance(out, DeadLetter) else out


class MergeRegistry(beam.PTransform):
    """``PCollection[(User | RegistryChange, raw)]`` -> ``{'users': merged User, 'entries':
    RegistryEntry, 'dead_letters': DeadLetter}``.

    The registry read at launch is merged in one place (a side input of a single impulse),
    so the merged records keep the registry's timestamp: the latest state, each verified
    settings change applied (``portal_pubkey``: the portal's key that signs them).
    ``entries`` (each user's whole state) seed :class:`FollowRegistry` in streaming.
    """

    def __init__(self, origin: str, portal_pubkey: Optional[str] = None):
        super().__init__()
        self._origin, self._portal_pubkey = origin, portal_pubkey

    def expand(self, pairs):
        origin, portal_pubkey = self._origin, self._portal_pubkey
        out = (pairs.pipeline
               | "Impulse" >> beam.Create([None])
               | "Merge" >> beam.FlatMap(
                   lambda _, rows: _tag_dead_letters(merge_registry(rows, origin, portal_pubkey, entries=True)),
                   beam.pvalue.AsList(pairs)).with_outputs(DEAD, main="entries"))
        return {
            "users": out["entries"] | "AsUser" >> beam.Map(effective_user).with_output_types(User),
            "entries": out["entries"],
            "dead_letters": out[DEAD] | "AsDeadLetter" >> beam.Map(lambda d: d).with_output_types(DeadLetter),
        }


class FollowRegistry(beam.PTransform):
    """Streaming: ``{'entries': the launch snapshot's RegistryEntry, 'records': (User |
    RegistryChange, raw) read while the job runs}`` -> ``{'users', 'dead_letters'}``: each
    user's effective record from the snapshot, then a new one whenever a settings change
    (or a new subscriber) changes it (``core.registry.registry_over``, hosted by ``BeamOps``)."""

    def __init__(self, origin: str, portal_pubkey: Optional[str], tick_s: float, allowed_lateness_s: float):
        super().__init__()
        self._origin, self._portal_pubkey = origin, portal_pubkey
        self._tick_s, self._lateness_s = tick_s, allowed_lateness_s

    def expand(self, inputs):
        from transforms.beam_ops import BeamOps
        return registry_over(BeamOps(False), inputs["entries"], inputs["records"], self._origin,
                             self._portal_pubkey, tick_s=self._tick_s, allowed_lateness_s=self._lateness_s)


def _routed_copy(out, duplicates):
    """A ``FirstCopy`` output: the tweet to the main output, a later copy's dead letter counted aside."""
    if isinstance(out, DeadLetter):
        duplicates.inc()
        return beam.pvalue.TaggedOutput(DEAD, out)
    return out


class _FirstCopyFn(beam.DoFn):
    """Hosts ``core.registry.FirstCopy``: its state per tweet id, freed at its ``gc_time``."""
    FORGET_AT = ReadModifyWriteStateSpec("forget_at", FloatCoder())
    EXPIRE = TimerSpec("expire", TimeDomain.WATERMARK)

    def __init__(self, origin: str, horizon_s: float):
        self._origin, self._horizon_s = origin, horizon_s

    def setup(self):
        self._first_copy = FirstCopy(self._origin, self._horizon_s)
        self._duplicates = Metrics.counter(_NS, DUPLICATE_TWEETS)

    def process(self, element, forget_at=beam.DoFn.StateParam(FORGET_AT), expire=beam.DoFn.TimerParam(EXPIRE)):
        _tweet_id, pair = element
        before = forget_at.read()
        after, outputs = self._first_copy.process(before, pair)
        if after != before:
            forget_at.write(after)
            expire.set(self._first_copy.gc_time(after))
        for out in outputs:
            yield _routed_copy(out, self._duplicates)

    @on_timer(EXPIRE)
    def forget(self, forget_at=beam.DoFn.StateParam(FORGET_AT)):
        forget_at.clear()


class _RouteCopiesFn(beam.DoFn):
    """``FirstCopy``'s outputs from the ordered host (bounded input), routed by ``_routed_copy``."""

    def setup(self):
        self._duplicates = Metrics.counter(_NS, DUPLICATE_TWEETS)

    def process(self, out):
        yield _routed_copy(out, self._duplicates)


class DedupeTweets(beam.PTransform):
    """``PCollection[(Tweet, raw)]`` -> ``{'tweets': Tweet (each id once), 'dead_letters'}``."""

    def __init__(self, origin: str, horizon_s: float):
        super().__init__()
        self._origin, self._horizon_s = origin, horizon_s

    def expand(self, pairs):
        by_id = pairs | "ById" >> beam.Map(lambda pair: (pair[0].tweet_id, pair)).with_output_types(
            typing.Tuple[str, typing.Tuple[Tweet, str]])
        if is_bounded(by_id):
            # Bounded input: one global-window group per tweet id (the ordered host's batch plan).
            # The stateful DoFn below costs a state commit per id, which DirectRunner's state
            # cache weighs object by object (objsize): a third of a batch run (issue #13's profile).
            first_copy = FirstCopy(self._origin, self._horizon_s)
            ordered = by_id | "FirstCopy" >> OrderedByKey(first_copy, bounded=True, step="tweets")
            out = ordered["out"] | "RouteCopies" >> beam.ParDo(_RouteCopiesFn()).with_outputs(DEAD, main="tweets")
        else:
            out = by_id | "FirstCopy" >> beam.ParDo(_FirstCopyFn(self._origin, self._horizon_s)).with_outputs(
                DEAD, main="tweets")
        return {
            "tweets": out["tweets"] | "AsTweet" >> beam.Map(lambda t: t).with_output_types(Tweet),
            "dead_letters": out[DEAD] | "AsDeadLetter" >> beam.Map(lambda d: d).with_output_types(DeadLetter),
        }


class _KnownUserFn(beam.DoFn):
    def __init__(self, origin: str):
        self._origin = origin

    def setup(self):
        self._unknown = Metrics.counter(_NS, PINGS_UNKNOWN_USER)

    def process(self, pair, registered):
        ping, raw = pair
        out = registered_ping(ping, raw, registered, self._origin)
        if isinstance(out, DeadLetter):
            self._unknown.inc()
            yield beam.pvalue.TaggedOutput(DEAD, out)
        else:
            yield out


class KeepRegisteredPings(beam.PTransform):
    """``{'pings': (Ping, raw), 'users'}`` -> ``{'pings': registered users' pings, 'dead_letters'}``."""

    def __init__(self, origin: str):
        super().__init__()
        self._origin = origin

    def expand(self, inputs):
        registered = beam.pvalue.AsDict(inputs["users"] | "UserIds" >> beam.Map(lambda u: (u.user_id, True)))
        out = inputs["pings"] | "KnownUser" >> beam.ParDo(_KnownUserFn(self._origin), registered).with_outputs(
            DEAD, main="pings")
        return {
            "pings": out["pings"] | "AsPing" >> beam.Map(lambda p: p).with_output_types(Ping),
            "dead_letters": out[DEAD] | "AsDeadLetter" >> beam.Map(lambda d: d).with_output_types(DeadLetter),
        }

"""FlinkOps: the ``core.ops`` operations over PyFlink DataStreams, one named operator each.

A core composition (``core.alerts.fan_out_over`` …) called with a :class:`FlinkOps`
builds that step's part of the Flink job, as ``transforms.beam_ops.BeamOps`` builds
its Beam graph. Each operator is named by its scope path
(``<uid_prefix>/<nested scopes>/<stage_name>``, unique: a path built twice is an
error): the names show in Flink's UI and metric scopes. The stateful operators (the
ordered hosts) also take it as their uid, which keeps savepoints restorable across
rebuilds of the job; so do the stateless ones (``flink_job.ordered.assign_uids``).

Elements are the core's plain Python objects, pickled (``Types.PICKLED_BYTE_ARRAY``);
``output_type`` is ignored. Each function given to an operation runs in a wrapper that
binds the operator's metric group around each call (``flink_job.counters``), so the
core's counters count where they are used. Ordered processors run in
``flink_job.ordered.run_ordered``.
"""
from __future__ import annotations

from typing import Callable, Sequence

from pyflink.common import Types
from pyflink.datastream import FilterFunction, FlatMapFunction, MapFunction, OutputTag, ProcessFunction

from core.ops import Ops
from core.processor import Processor
from flink_job.counters import FlinkCounter, bind_metrics
from flink_job.ordered import run_ordered, side_output, uid_path

PICKLED = Types.PICKLED_BYTE_ARRAY()


class _Bound:
    """A wrapper of a core function: binds the operator's metric group in open()."""

    def __init__(self, fn: Callable):
        self._fn = fn

    def open(self, runtime_context):
        self._rc = runtime_context
        bind_metrics(runtime_context)


class _Map(_Bound, MapFunction):
    def map(self, value):
        bind_metrics(self._rc)
        return self._fn(value)


class _FlatMap(_Bound, FlatMapFunction):
    def flat_map(self, value):
        bind_metrics(self._rc)
        # materialized while bound: see flink_job.counters
        return list(self._fn(value))


class _Filter(_Bound, FilterFunction):
    def filter(self, value):
        bind_metrics(self._rc)
        return bool(self._fn(value))


class _Tagged(_Bound, ProcessFunction):
    """fn(element) yields (tag, value) -> value on the side output of that tag."""

    def __init__(self, fn: Callable, tags: dict):
        super().__init__(fn)
        self._tags = tags

    def process_element(self, value, ctx):
        bind_metrics(self._rc)
        return [(self._tags[tag], out) for tag, out in self._fn(value)]


class _GroupAll(Processor):
    """group_by_key on bounded input as an ordered step: (key, (key, v)) -> (key, [v...]) at end."""
    name = "group_by_key"

    def run_batch_timed(self, messages):
        return [(float("inf"), (messages[0][0], [value for _key, value in messages]))]


def _self_keyed(pair):
    return pair[0], pair


class FlinkOps(Ops):
    """Ops over DataStreams of ``env``; ``bounded`` picks the ordered hosts' batch plan
    (True: BATCH runtime mode or a bounded source) or their streaming one (False).

    ``uid_prefix`` starts every operator's uid (and name), so that two compositions
    built into one job stay unique.
    """

    def __init__(self, env, bounded: bool, uid_prefix: str = ""):
        self.env = env
        self.bounded = bounded
        self.uid_prefix = uid_prefix
        self._scope: list[str] = []
        self._uids: set[str] = set()

    # -- naming --

    def _path(self) -> str:
        return uid_path(self.uid_prefix, *self._scope)

    def _uid(self, stage_name: str) -> str:
        if not stage_name:
            raise ValueError("every FlinkOps operation needs a stage_name (its operator's uid)")
        uid = uid_path(self._path(), stage_name)
        if uid in self._uids:
            raise ValueError(f"stage {uid!r} is built twice: give each stage a unique name in its scope")
        self._uids.add(uid)
        return uid

    def _named(self, stream, stage_name: str):
        """Named by its scope path, which is its uid too (``flink_job.ordered.assign_uids``)."""
        uid = self._uid(stage_name)
        return stream.name(uid).uid(uid)

    # -- the operations --

    def map(self, col, fn, stage_name, output_type=None):
        return self._named(col.map(_Map(fn), output_type=PICKLED), stage_name)

    def flat_map(self, col, fn, stage_name, output_type=None):
        return self._named(col.flat_map(_FlatMap(fn), output_type=PICKLED), stage_name)

    def filter(self, col, fn, stage_name):
        return self._named(col.filter(_Filter(fn)), stage_name)

    def flatten(self, cols: Sequence, stage_name):
        """A union: no operator of its own, so nothing to name."""
        cols = list(cols)
        if not cols:
            raise ValueError(f"{stage_name}: flatten of no collections (Flink has no empty stream to return)")
        self._uid(stage_name)  # still one stage: its name stays unique
        return cols[0] if len(cols) == 1 else cols[0].union(*cols[1:])

    def group_by_key(self, col, stage_name):
        """(key, value) -> (key, [values]) once the input has ended (bounded input only)."""
        if not self.bounded:
            raise NotImplementedError(
                f"{stage_name}: group_by_key on unbounded input has no end to emit at; no core "
                f"composition uses it (an ordered step, run_ordered, is the streaming form)")
        uid = self._uid(stage_name)
        pairs = col.map(_self_keyed, output_type=PICKLED).name(uid_path(uid, "Key"))
        return run_ordered(pairs, _GroupAll(), "Group", tick_s=1.0, allowed_lateness_s=0.0,
                           step="", uid_prefix=uid, bounded=True)["out"]

    def tagged(self, col, fn, tags, stage_name):
        uid = self._uid(stage_name)
        outputs = {tag: OutputTag(uid_path(uid, tag), PICKLED) for tag in tags}
        main = col.process(_Tagged(fn, outputs), output_type=PICKLED).name(uid).uid(uid)
        return {tag: side_output(main, output_tag, uid_path(uid, tag, "Out")) for tag, output_tag in outputs.items()}

    def run_ordered(self, col, processor, stage_name, *, tick_s, allowed_lateness_s, step):
        self._uid(stage_name)
        return run_ordered(col, processor, stage_name, tick_s=tick_s, allowed_lateness_s=allowed_lateness_s,
                           step=step, uid_prefix=self._path(), bounded=self.bounded)

    def counter(self, name):
        return FlinkCounter(name)

    def nested(self, stage_name, fn, inputs):
        self._uid(stage_name)
        self._scope.append(stage_name)
        try:
            return fn(self, inputs)
        finally:
            self._scope.pop()

"""BeamOps: the ``core.ops`` operations over PCollections, one labelled Beam step each.

A core composition (``core.alerts.fan_out_over`` …) called with a ``BeamOps``
inside a composite PTransform's ``expand`` builds that step's Beam graph: the
``stage_name`` of each operation is its Beam label, so the runner's UI and the
metrics name what the core code names. Counters are Beam ``Metrics`` counters in
namespace ``tapfollow``; ordered processors run in :class:`transforms.ordered.OrderedByKey`.
"""
from __future__ import annotations

from typing import Callable, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from core.ops import Ops
from transforms.ordered import NS, OrderedByKey


class _Nested(beam.PTransform):
    """One named scope of a composition: expand runs fn(ops, inputs)."""

    def __init__(self, ops: "BeamOps", fn: Callable):
        super().__init__()
        self._ops, self._fn = ops, fn

    def expand(self, inputs):
        return self._fn(self._ops, inputs)


class BeamOps(Ops):
    """Ops over PCollections; ``bounded`` picks the ordered host's batch or streaming plan
    (None: each ordered step reads it from its own input)."""

    def __init__(self, bounded: Optional[bool] = None):
        self.bounded = bounded

    def map(self, col, fn, stage_name, output_type=None):
        step = beam.Map(fn)
        return col | stage_name >> (step.with_output_types(output_type) if output_type else step)

    def flat_map(self, col, fn, stage_name, output_type=None):
        step = beam.FlatMap(fn)
        return col | stage_name >> (step.with_output_types(output_type) if output_type else step)

    def filter(self, col, fn, stage_name):
        return col | stage_name >> beam.Filter(fn)

    def flatten(self, cols, stage_name):
        return tuple(cols) | stage_name >> beam.Flatten()

    def group_by_key(self, col, stage_name):
        return col | stage_name >> beam.GroupByKey()

    def tagged(self, col, fn, tags, stage_name):
        def emit(element):
            for tag, value in fn(element):
                yield beam.pvalue.TaggedOutput(tag, value)
        emit.__name__ = fn.__name__  # Beam names the step's inner FlatMap after it, as before
        outputs = col | stage_name >> beam.FlatMap(emit).with_outputs(*tags)
        return {tag: outputs[tag] for tag in tags}

    def run_ordered(self, col, processor, stage_name, *, tick_s, allowed_lateness_s, step):
        return col | stage_name >> OrderedByKey(processor, self.bounded, tick_s, allowed_lateness_s, step)

    def counter(self, name):
        return Metrics.counter(NS, name)

    def nested(self, stage_name, fn, inputs):
        return inputs | stage_name >> _Nested(self, fn)

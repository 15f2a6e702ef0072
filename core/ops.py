"""The operations a composition of business steps is written over, and LocalOps.

Modelled on PipelineDP's ``pipeline_backend.py``: a step's wiring (which
processor runs keyed by what, what is flattened with what, what is counted) is
written ONCE as a function of an ``Ops`` object and its collections, and each
engine hosts it with its own implementation:

- :class:`LocalOps` (here): collections are plain lists; the batch semantics,
  with no runner at all -- the pure oracle, the tests and the benchmarks.
- ``transforms.beam_ops.BeamOps``: collections are PCollections, every
  operation one labelled Beam step (``stage_name`` is the label, so metrics and
  the runner's UI name what the code names).
- next, FlinkOps over DataStreams.

Every operation takes ``stage_name`` last; a composition gives each stage a
name unique within its scope (:meth:`Ops.nested` opens a named scope).
"""
from __future__ import annotations

import abc
import itertools
from collections import defaultdict
from typing import Any, Callable, Optional, Sequence

from core.processor import ProcessorProtocol, group_by_key, run_keyed_timed


class Counter(abc.ABC):
    """A monotone count an engine reports by name (Beam: a Metrics counter)."""

    @abc.abstractmethod
    def inc(self, n: int = 1) -> None:
        ...


class Ops(abc.ABC):
    """The operations interface; ``col`` is the engine's collection type."""

    # output_type: the record type of the outputs, where an engine encodes by type (Beam's RowCoder)
    @abc.abstractmethod
    def map(self, col, fn: Callable, stage_name: str, output_type: Optional[type] = None):
        ...

    @abc.abstractmethod
    def flat_map(self, col, fn: Callable, stage_name: str, output_type: Optional[type] = None):
        ...

    @abc.abstractmethod
    def filter(self, col, fn: Callable, stage_name: str):
        ...

    @abc.abstractmethod
    def flatten(self, cols: Sequence, stage_name: str):
        ...

    @abc.abstractmethod
    def group_by_key(self, col, stage_name: str):
        """(key, value) -> (key, [values])."""

    @abc.abstractmethod
    def tagged(self, col, fn: Callable, tags: Sequence[str], stage_name: str) -> dict:
        """fn(element) yields (tag, value) pairs -> {tag: collection of values} (Beam: tagged outputs)."""

    @abc.abstractmethod
    def run_ordered(self, col, processor: ProcessorProtocol, stage_name: str, *,
                    tick_s: float, allowed_lateness_s: float, step: str) -> dict:
        """(key, msg) -> {'out': outputs, 'late': DeadLetter}: each key's messages run through
        ``processor`` in its event-time order (``core.processor``). Unbounded input decides in
        ``tick_s`` event-time ticks; a message up to ``allowed_lateness_s`` behind what its key
        already decided is a dead letter (``core.processor.late_dead_letter``: source
        ``<step>:<processor.name>``, counted as ``<step>_late_<processor.name>``)."""

    @abc.abstractmethod
    def counter(self, name: str) -> Counter:
        """A counter that functions given to this Ops may close over and increment."""

    @abc.abstractmethod
    def nested(self, stage_name: str, fn: Callable[["Ops", Any], Any], inputs):
        """fn(self, inputs) run as one named sub-step (Beam: a composite PTransform)."""


class LocalCounter(Counter):
    def __init__(self, counts: dict, name: str):
        self._counts, self._name = counts, name

    def inc(self, n: int = 1) -> None:
        self._counts[self._name] += n


class LocalOps(Ops):
    """Plain lists, bounded input, no runner: each operation runs at once, in order.

    ``counters`` holds every count the composition made, by counter name.
    """

    def __init__(self):
        self.counters: dict[str, int] = defaultdict(int)

    def map(self, col, fn, stage_name=None, output_type=None):
        return [fn(x) for x in col]

    def flat_map(self, col, fn, stage_name=None, output_type=None):
        return [y for x in col for y in fn(x)]

    def filter(self, col, fn, stage_name=None):
        return [x for x in col if fn(x)]

    def flatten(self, cols, stage_name=None):
        return list(itertools.chain.from_iterable(cols))

    def group_by_key(self, col, stage_name=None):
        return list(group_by_key(col).items())

    def tagged(self, col, fn, tags, stage_name=None):
        out = {tag: [] for tag in tags}
        for x in col:
            for tag, value in fn(x):
                out[tag].append(value)
        return out

    def run_ordered(self, col, processor, stage_name=None, *, tick_s=1.0, allowed_lateness_s=0.0, step=""):
        # bounded input: every key's messages are all known, so nothing is ever late
        return {"out": [out for _due, out in run_keyed_timed(processor, col)], "late": []}

    def counter(self, name):
        return LocalCounter(self.counters, name)

    def nested(self, stage_name, fn, inputs):
        return fn(self, inputs)

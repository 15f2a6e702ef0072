"""The one stateful-processor protocol, and its local host (no engine).

A *processor* is a plain object that owns one key's state and sees that key's
messages in one total event-time order. Because the order is total and the
processor is deterministic, every host gives the same outputs: the local host
below (sort, run), Beam's ``transforms.ordered.OrderedByKey`` (bounded:
GroupByKey, sort, run; unbounded: event-time ticks run in order with the key's
state in a stateful DoFn and a GC timer) and, next, a Flink
``KeyedProcessFunction`` (state in a descriptor, expiry on an event-time timer).

The life cycle a host drives::

    state = p.initial_state()
    for msg in sorted(messages, key=p.sort_key):     # p.immediate(msg): never late
        state, outputs = p.process(state, msg)        # outputs stamped at sort_key(msg)[0]
    state = p.expire(state, now)                      # None: nothing left worth keeping
    p.gc_time(state)                                  # when expire may next free something

Bounded input may take a shortcut that gives the same result knowing all the
key's messages at once: :meth:`Processor.run_batch_timed`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Hashable, Iterable, Optional, Protocol, Sequence, runtime_checkable

from core.conventions import dead_letter
from schemas.records import DeadLetter


@runtime_checkable
class ProcessorProtocol(Protocol):
    """What every host relies on; :class:`Processor` gives the defaults."""
    name: str

    def sort_key(self, msg) -> tuple:
        """The message's place in its key's total order; item 0 is the event time it is due at."""

    def initial_state(self) -> Any:
        """A key's state before its first message."""

    def process(self, state, msg) -> tuple[Any, list]:
        """-> (new state, outputs) for one message, in sort_key order."""

    def expire(self, state, now: float) -> Optional[Any]:
        """State with what cannot matter after event time ``now`` dropped; None frees the key."""

    def gc_time(self, state) -> Optional[float]:
        """The event time at which expire may free something next; None: never by itself."""

    def immediate(self, msg) -> bool:
        """The message is configuration (no event time): never late, always applied."""

    def run_batch_timed(self, messages: Sequence) -> list[tuple[float, Any]]:
        """Bounded input: all of one key's outputs, each with its event time."""

    def run_batch(self, messages: Sequence) -> list:
        """Bounded input: all of one key's outputs."""


class Processor:
    """Base class of every processor: the protocol's defaults.

    A subclass sets ``name`` (it names dead letters ``alerts:<name>``-style and
    counters) and implements ``sort_key`` and ``process``; it overrides the rest
    when its state can expire, or when bounded input allows a shortcut.
    """
    name: str = "processor"

    def sort_key(self, msg) -> tuple:
        raise NotImplementedError(f"{type(self).__name__}.sort_key")

    def initial_state(self):
        return None

    def process(self, state, msg):
        raise NotImplementedError(f"{type(self).__name__}.process")

    def expire(self, state, now: float):
        # by default a key's state lasts (a host frees it only when expire says None)
        return state

    def gc_time(self, state) -> Optional[float]:
        return None

    def immediate(self, msg) -> bool:
        return False

    def run_batch_timed(self, messages: Sequence) -> list[tuple[float, Any]]:
        return run_ordered_timed(self, messages)[1]

    def run_batch(self, messages: Sequence) -> list:
        return [out for _due, out in self.run_batch_timed(messages)]


def run_ordered(processor: ProcessorProtocol, messages: Iterable, state=None):
    """Run one key's messages through processor in its event-time order -> (state, outputs)."""
    state, timed = run_ordered_timed(processor, messages, state)
    return state, [out for _due, out in timed]


def run_ordered_timed(processor: ProcessorProtocol, messages: Iterable, state=None):
    """Like run_ordered, each output paired with the event time of the message that made it."""
    state = processor.initial_state() if state is None else state
    outputs = []
    for msg in sorted(messages, key=processor.sort_key):
        state, out = processor.process(state, msg)
        due = processor.sort_key(msg)[0]
        outputs.extend((due, o) for o in out)
    return state, outputs


def group_by_key(keyed_messages: Iterable[tuple[Hashable, Any]]) -> dict:
    by_key = defaultdict(list)
    for key, msg in keyed_messages:
        by_key[key].append(msg)
    return by_key


def run_keyed_timed(processor: ProcessorProtocol, keyed_messages: Iterable[tuple[Hashable, Any]]):
    """[(key, msg)] -> [(due, output)], each key run separately (the batch semantics), keys in order."""
    by_key = group_by_key(keyed_messages)
    outputs = []
    for key in sorted(by_key):
        outputs.extend(processor.run_batch_timed(by_key[key]))
    return outputs


def run_keyed(processor: ProcessorProtocol, keyed_messages: Iterable[tuple[Hashable, Any]]) -> list:
    """[(key, msg)] -> all outputs, each key run separately (the batch semantics), keys in order."""
    return [out for _due, out in run_keyed_timed(processor, keyed_messages)]


# ---- late messages: what every streaming host does with one ---------------------------

def late_counter_name(step: str, processor: ProcessorProtocol) -> str:
    return f"{step}_late_{processor.name}"


def late_dead_letter(step: str, processor: ProcessorProtocol, msg, done_until: float) -> DeadLetter:
    """The dead letter of a message due before what its key has already decided (streaming)."""
    due = processor.sort_key(msg)[0]
    return dead_letter(f"{step}:{processor.name}",
                       f"late: event time {due:.3f} is behind {done_until:.3f}, up to which "
                       f"this key was already decided; raise the source's watermark delay", msg)

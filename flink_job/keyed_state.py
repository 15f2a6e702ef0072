"""What the adapter's own process functions share: metrics bound per call, one value per key.

``Bound``: binds the operator's metrics in open() and before each call of core code.
``KeyedValue``: one value per key, right in both runtime modes.

In STREAMING mode a value lives in a ``ValueState`` (checkpointed, restored from
savepoints). In BATCH runtime mode it lives in the worker's memory, keyed by the
current key: PyFlink 2.2's Python state requests reach BATCH mode's
one-key-at-a-time state backend out of step with the key switches (a key's timer
read another key's value, or none), while a key's elements and then its timers arrive
in order. BATCH mode restarts a failed region from its inputs, so nothing is lost
by keeping it off the state backend; functions free a key's values once its last
timer has run, so memory holds little more than the current key.
"""
from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream.state import ValueStateDescriptor

from flink_job.counters import bind_metrics

PICKLED = Types.PICKLED_BYTE_ARRAY()


class KeyedValue:
    """``get/put/clear(key)``: a pickled ValueState, or a dict when ``in_memory`` (BATCH mode)."""

    def __init__(self, runtime_context, name: str, in_memory: bool):
        self._state = None if in_memory else runtime_context.get_state(ValueStateDescriptor(name, PICKLED))
        self._memory = {}

    def get(self, key, default=None):
        value = self._memory.get(key) if self._state is None else self._state.value()
        return default if value is None else value

    def put(self, key, value) -> None:
        if self._state is None:
            self._memory[key] = value
        else:
            self._state.update(value)

    def clear(self, key) -> None:
        if self._state is None:
            self._memory.pop(key, None)
        else:
            self._state.clear()


class Bound:
    """A mixin binding the operator's metrics in open() and before each call of core code.

    Python operators chained into one worker share ``flink_job.counters``' current
    scope, so every method calls ``bind_metrics(self._rc)`` first and returns its
    outputs as a list: counting is over before a chained operator runs. ``in_memory``:
    keyed values in the worker's memory (BATCH runtime mode, :class:`KeyedValue`).
    Subclasses make their state and helpers in ``setup``.
    """
    in_memory = False

    def open(self, runtime_context):
        self._rc = runtime_context
        bind_metrics(runtime_context)
        self.setup(runtime_context)

    def setup(self, runtime_context):
        pass

"""The core's counters (``core.ops.Counter``) as Flink metric counters, group ``tapfollow``.

A core composition makes its counters once, at graph-building time, and closes over
them in the functions it gives to ``core.ops`` (``verdict_counters[v].inc()`` inside
``Triage``'s function, say). Flink pickles those closures and runs them in Python
workers, where a counter needs the metric group of the operator that calls it, which
exists only once that operator is open. So a :class:`FlinkCounter` holds just its name,
and counts in the *current* operator:

- every adapter function (the wrappers of ``flink_job.ops``, the ordered host of
  ``flink_job.ordered``, and the other ``flink_job`` functions) calls
  :func:`bind_metrics` with its runtime context in ``open()`` and again before each
  call of core code (an attribute read and a global assignment: cheap);
- a wrapper calling a core function that returns a generator materializes its outputs
  while bound, because Python operators chained into one worker hand each output on to
  the next operator before the generator resumes, and that one binds its own group.

The same counter name used in several operators therefore reports one Flink counter
per operator (Flink's metric scope names the operator); the launcher's summary sums
them by name, as Beam's metrics do per step. Counting must never fail the job: a
counter with no bound operator, or a metric system that refuses, loses the count.
"""
from __future__ import annotations

import logging

from core.conventions import METRICS_NAMESPACE
from core.ops import Counter

_log = logging.getLogger(__name__)

_ATTR = "_tapfollow_metrics"   # the operator's _Scope, kept on its runtime context


class _Scope:
    """One operator's metric group ``tapfollow`` and the counters made in it so far."""
    __slots__ = ("group", "counters")

    def __init__(self, group):
        self.group = group
        self.counters = {}

    def counter(self, name: str):
        found = self.counters.get(name)
        if found is None:
            found = self.counters[name] = self.group.counter(name)
        return found


_current: _Scope | None = None   # the scope of the operator whose function is running
_warned = False


def bind_metrics(runtime_context) -> None:
    """Make the operator of ``runtime_context`` the one counters count in (from now on).

    Call it in ``open()`` (it makes the operator's group then) and before each call of
    core code when several functions share a worker (every ``flink_job`` wrapper does).
    """
    global _current
    scope = getattr(runtime_context, _ATTR, None)
    if scope is None:
        try:
            scope = _Scope(runtime_context.get_metrics_group().add_group(METRICS_NAMESPACE))
        except Exception as exc:  # metrics off or unavailable: run on, uncounted
            _warn(f"no metric group for this operator ({exc!r}); its counts are lost")
            scope = None
        try:
            setattr(runtime_context, _ATTR, scope)
        except AttributeError:
            pass
    _current = scope


def unbind_metrics() -> None:
    """No operator is current (tests; a function that is done counting)."""
    global _current
    _current = None


def _warn(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        _log.warning("tapfollow counters: %s", message)


class FlinkCounter(Counter):
    """A core counter counted in the current operator's Flink metric group ``tapfollow``.

    Picklable (it holds only its name), so closures that capture it travel to the
    workers; each ``inc`` resolves the operator's counter there (see the module doc).
    """

    def __init__(self, name: str):
        self.name = name

    def inc(self, n: int = 1) -> None:
        scope = _current
        if scope is None:
            _warn(f"counter {self.name!r} incremented outside any bound operator; count lost")
            return
        try:
            scope.counter(self.name).inc(n)
        except Exception as exc:  # never fail the job for a count
            _warn(f"counter {self.name!r} failed ({exc!r}); count lost")

    def __repr__(self) -> str:
        return f"FlinkCounter({self.name!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, FlinkCounter) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("FlinkCounter", self.name))

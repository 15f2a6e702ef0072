"""flink_job.ordered: the Flink host of core processors gives the local host's outputs, batch and
streaming, dead-letters what is behind its key's decisions, and frees a key's state; and
flink_job.counters counts in the operator that calls it and never fails.

The host runs in the PyFlink venv (tests/flink/drivers/ordered_host.py on a local MiniCluster);
the counters are plain Python and run here with a stand-in runtime context.
"""
import pickle

import pytest

from flink_job import counters
from flink_job.counters import FlinkCounter, bind_metrics
from tests.flink.conftest import driver_path, run_driver


@pytest.fixture(scope="module")
def host(pyflink_python):
    return run_driver(pyflink_python, driver_path("ordered_host.py"), "batch", "streaming", "late", "gc",
                      "gc_overdue", timeout=300)


def test_batch_equals_the_local_host(host):
    r = host["batch"]
    assert len(r["want"]) == 60 and r["got"] == r["want"]
    assert r["stamps_at_due"] and r["late"] == []
    # ApplyDeletes' batch shortcut: a deleted tweet's alerts are suppressed, none retracted
    assert r["got_deletes"] == r["want_deletes"]
    assert sum("suppressed" in x for x in r["got_deletes"]) == 2


def test_streaming_out_of_order_within_the_watermark_equals_batch(host):
    r = host["streaming"]
    assert r["out_of_order"] > 0, "the input must really arrive out of order"
    assert r["got"] == r["want"] and r["late"] == []
    assert r["stamps_in_tick"]


def test_a_message_behind_its_keys_decisions_is_exactly_one_dead_letter(host):
    r = host["late"]
    # the late one is a dead letter, one behind a passed tick runs at once, one beyond
    # the allowed lateness is dropped
    assert r["late"] == r["want_late"] and len(r["late"]) == 1
    assert r["got"] == r["want"]


def test_gc_frees_a_key_and_leaves_nothing_behind(host):
    r = host["gc"]
    assert r["got"] == r["want"]   # ('g', 40.0, 1): a fresh key after its GC, not 3
    nothing = [False, None, None, []]   # state, done_until, GC timer, buffered ticks
    assert r["left"]["g"] == nothing and r["left"]["h"] == nothing
    assert r["left"]["z"] != nothing    # the probe does see what a live key holds


def test_a_gc_timer_behind_the_watermark_collects_before_the_keys_next_message(host):
    r = host["gc_overdue"]
    assert r["got"] == r["want"] and r["late"] == []   # ('a', 30.0, 1): collected first, not 3


# ---- counters (no Flink needed) ---------------------------------------------------------

class _Counter:
    def __init__(self):
        self.count = 0

    def inc(self, n=1):
        self.count += n


class _Group:
    def __init__(self, path=()):
        self.path, self.groups, self.counters = path, {}, {}

    def add_group(self, name):
        return self.groups.setdefault(name, _Group(self.path + (name,)))

    def counter(self, name):
        return self.counters.setdefault(name, _Counter())


class _Context:
    def __init__(self):
        self.group = _Group()

    def get_metrics_group(self):
        return self.group

    def count(self, name):
        return self.group.groups["tapfollow"].counters[name].count


def test_a_counter_counts_in_the_operator_that_calls_it():
    counter = pickle.loads(pickle.dumps(FlinkCounter("alerts_decided")))   # as in a shipped closure
    first, second = _Context(), _Context()
    bind_metrics(first)
    counter.inc()
    bind_metrics(second)
    counter.inc(2)
    bind_metrics(first)
    counter.inc(4)
    assert first.count("alerts_decided") == 5 and second.count("alerts_decided") == 2


def test_counting_never_fails_the_job():
    counters.unbind_metrics()
    FlinkCounter("nobody_bound").inc()          # lost, not raised

    class Broken:
        def get_metrics_group(self):
            raise RuntimeError("metrics are off")
    bind_metrics(Broken())
    FlinkCounter("broken").inc()

    class Refusing(_Context):
        def get_metrics_group(self):
            group = _Group()
            group.add_group = lambda name: None   # .counter on None raises
            return group
    bind_metrics(Refusing())
    FlinkCounter("refused").inc()
    counters.unbind_metrics()

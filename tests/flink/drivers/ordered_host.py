"""Driver: flink_job.ordered.run_ordered on a local MiniCluster, several cases in one run.

Usage: ordered_host.py CASE...  (batch, streaming, late, gc, gc_overdue, cost). Prints one JSON object
{case: result}: outputs as reprs, with what the local host (core.processor.run_keyed)
expects, so the test in the project venv compares them.
"""
from __future__ import annotations

import os
import random
import sys
import time

from pyflink.common import Types
from pyflink.datastream import ProcessFunction

from core.alerts import AlertMsg, ApplyDeletes, DeleteMsg
from core.processor import Processor, late_dead_letter, run_keyed
from flink_job.ordered import _RunTicks, key_pairs, run_ordered
from schemas.records import Alert, DeadLetter, TweetDelete
from tests.flink.drivers import PICKLED, collect, environment, event_stream, reply

STEP = "t"
# pacing that lets the watermark reach the keyed operator between two elements
PACE_S = 0.25 * float(os.environ.get("TAPFOLLOW_DEADLINE_FACTOR", "4"))


class Running(Processor):
    """Toy processor: (key, t, v) -> (key, t, running sum of v); the sum is forgotten
    ``idle_s`` after the key's last message (expire/gc_time)."""
    name = "running"

    def __init__(self, idle_s: float = 1e9):
        self.idle_s = idle_s

    def sort_key(self, msg):
        return (msg[1], msg[2])

    def initial_state(self):
        return (0, None)

    def process(self, state, msg):
        total = state[0] + msg[2]
        return (total, msg[1]), [(msg[0], msg[1], total)]

    def expire(self, state, now):
        return None if state[1] is not None and now - state[1] >= self.idle_s else state

    def gc_time(self, state):
        return None if state[1] is None else state[1] + self.idle_s


def settled(msg, n: int = 3):
    """``msg`` then ``n`` fillers at its time on key 'f': PyFlink's Python operators hand a
    watermark on only with the elements after it, so the next element that should see the
    watermark ``msg`` raises comes after these."""
    return [msg] + [("f", msg[1], 0)] * n


def fillers_out(*times, n: int = 3):
    return [("f", t, 0) for t in times for _ in range(n)]


def pairs_of(msgs):
    return [(m[0], m) for m in msgs]


def random_msgs(rnd, keys, n, span_s):
    return [(rnd.choice(keys), round(rnd.uniform(0, span_s), 3), rnd.randint(1, 9)) for _ in range(n)]


class _Stamps(ProcessFunction):
    def process_element(self, value, ctx):
        yield ctx.timestamp(), value


def stamped(stream):
    return stream.process(_Stamps(), output_type=PICKLED)


def tagged_late(result):
    """out and late of a run_ordered as one stream of ('out'|'late', timestamp, value)."""
    out = stamped(result["out"]).map(lambda tv: ("out", tv[0], tv[1]), output_type=PICKLED)
    late = result["late"].map(lambda d: ("late", None, d), output_type=PICKLED)
    return out.union(late)


def case_batch():
    rnd = random.Random(7)
    msgs = random_msgs(rnd, ["a", "b", "c", "d"], 60, 50.0)
    env = environment(batch=True)
    got = collect(tagged_late(run_ordered(env.from_collection(pairs_of(msgs)), Running(), "Running",
                                          tick_s=1.0, allowed_lateness_s=10.0, step=STEP)))
    # a processor with a batch shortcut (run_batch_timed): a deleted tweet alerts no one
    alerts = [Alert(f"id{i}", f"u{i}", tid, 100.0 + i, 1.0, "nearby:x:y") for i, tid in enumerate("ppqqr")]
    deletes = [TweetDelete("q", "author", 500.0)]
    delete_pairs = [(a.tweet_id, AlertMsg(a)) for a in alerts] + [(d.tweet_id, DeleteMsg(d)) for d in deletes]
    env = environment(batch=True)
    got_deletes = collect(tagged_late(run_ordered(env.from_collection(delete_pairs), ApplyDeletes(3600.0),
                                                  "ApplyDeletes", tick_s=1.0, allowed_lateness_s=10.0, step=STEP)))
    return {
        "got": sorted(repr(v) for kind, _ts, v in got if kind == "out"),
        "want": sorted(repr(v) for v in run_keyed(Running(), pairs_of(msgs))),
        "late": [repr(v) for kind, _ts, v in got + got_deletes if kind == "late"],
        # each output stamped at its due time (ms), as Beam's bounded host does
        "stamps_at_due": all(ts == int(v[1] * 1000) for kind, ts, v in got if kind == "out"),
        "got_deletes": sorted(repr(v) for kind, _ts, v in got_deletes if kind == "out"),
        "want_deletes": sorted(repr(v) for v in run_keyed(ApplyDeletes(3600.0), delete_pairs)),
    }


def case_streaming():
    """Out of order, but never by more than the watermark's bound: the batch outputs."""
    rnd = random.Random(11)
    msgs = random_msgs(rnd, ["a", "b", "c"], 40, 40.0)
    # arrival order: by due time plus up to 3 s of jitter; the watermark allows 4 s
    arrival = sorted(msgs, key=lambda m: m[1] + rnd.uniform(0.0, 3.0))
    env = environment(batch=False, paced=True)
    events = event_stream(env, pairs_of(arrival), lambda p: p[1][1], out_of_orderness_s=4.0, pace_s=0.02)
    got = collect(tagged_late(run_ordered(events, Running(), "Running", tick_s=1.0,
                                          allowed_lateness_s=10.0, step=STEP)))
    return {
        "out_of_order": sum(1 for x, y in zip(arrival, arrival[1:]) if y[1] < x[1]),
        "got": sorted(repr(v) for kind, _ts, v in got if kind == "out"),
        "want": sorted(repr(v) for v in run_keyed(Running(), pairs_of(msgs))),
        "late": [repr(v) for kind, _ts, v in got if kind == "late"],
        # stamped inside their tick: the timer at the tick's last millisecond
        "stamps_in_tick": all(ts // 1000 == int(v[1]) and ts % 1000 == 999 for kind, ts, v in got if kind == "out"),
    }


def case_late():
    """Behind what the key decided -> dead letter; behind a passed tick -> run at once
    (Beam's late pane); beyond the allowed lateness -> dropped."""
    arrival = [("a", 1.2, 1), ("a", 2.5, 2),
               *settled(("z", 50.0, 0)),    # the watermark passes 49 s: key a has decided up to 3 s
               ("a", 2.0, 5),               # due before 3 s: a dead letter
               ("a", 4.5, 7),               # its tick has passed, within the lateness: runs at once
               *settled(("z", 300.0, 0)),   # the watermark passes 299 s
               ("a", 6.0, 1)]               # 293 s behind, beyond the 100 s allowed: dropped
    env = environment(batch=False, paced=True)
    events = event_stream(env, pairs_of(arrival), lambda p: p[1][1], out_of_orderness_s=1.0, pace_s=PACE_S)
    got = collect(tagged_late(run_ordered(events, Running(), "Running", tick_s=1.0,
                                          allowed_lateness_s=100.0, step=STEP)))
    return {
        "got": sorted(repr(v) for kind, _ts, v in got if kind == "out"),
        "want": sorted(map(repr, [("a", 1.2, 1), ("a", 2.5, 3), ("a", 4.5, 10), ("z", 50.0, 0), ("z", 300.0, 0)]
                           + fillers_out(50.0, 300.0))),
        "late": [repr(v) for kind, _ts, v in got if kind == "late"],
        "want_late": [repr(late_dead_letter(STEP, Running(), ("a", 2.0, 5), 3.0))],
    }


class _Probe(_RunTicks):
    """The streaming host, reporting after each timer what its key still holds."""

    def on_timer(self, timestamp, ctx):
        yield from super().on_timer(timestamp, ctx)
        yield ("probe", ctx.get_current_key(), timestamp, *self.held())


def case_gc():
    """State freed on the GC timer: a message after it finds a fresh key; once the watermark
    has passed, keys g and h hold nothing (no processor state, no done_until, no GC timer, no
    buffered tick). Keys still alive when the input ends keep theirs: PyFlink loses timers
    set while the final watermark fires (they reach Java after its timer loop), and the job
    is over then anyway."""
    arrival = [("g", 1.0, 1), ("g", 2.0, 1), ("h", 3.0, 5),
               *settled(("z", 30.0, 0)),       # the watermark passes g's and h's GC time (last + 10 s)
               ("g", 40.0, 1),                 # a fresh key again: 1, not 3
               *settled(("z", 10_000.0, 0))]   # every GC timer of g and h fires before the end
    env = environment(batch=False, paced=True)
    events = event_stream(env, pairs_of(arrival), lambda p: p[1][1], out_of_orderness_s=1.0, pace_s=0.05)
    keyed = key_pairs(events)
    got = collect(keyed.process(_Probe(Running(idle_s=10.0), 1.0, 5.0, STEP, None), output_type=PICKLED))
    last = {}
    for value in got:
        if value[0] == "probe":
            last[value[1]] = value[3:]
    return {
        "got": sorted(repr(v) for v in got if v[0] != "probe"),
        "want": sorted(map(repr, [("g", 1.0, 1), ("g", 2.0, 2), ("h", 3.0, 5), ("z", 30.0, 0), ("g", 40.0, 1),
                                  ("z", 10_000.0, 0)] + fillers_out(30.0, 10_000.0))),
        "left": {key: list(held) for key, held in last.items()},
    }


def case_gc_overdue():
    """A GC timer re-armed behind the watermark still collects before the key's next message.

    Key a's GC timer lies at 11 s (its first message + 10 s idle); its second message makes
    gc_time 12 s, and the host leaves the timer at 11 s (a GC timer only moves earlier).
    The watermark jumps to 49 s: at 11 s nothing expires yet, and the timer is re-armed at
    12 s, behind the watermark, where Flink fires it only at the next watermark. a@30
    then runs at once (its tick has passed, within the allowed lateness): the key must have
    collected first, as a timer armed at 12 s in time would have, so its sum starts afresh."""
    arrival = [("a", 1.0, 1), ("a", 2.0, 1),
               *settled(("z", 50.0, 0)),   # the watermark passes 49 s
               ("a", 30.0, 1)]             # 2 s after 12 s idle: a fresh key, 1 (not 3)
    env = environment(batch=False, paced=True)
    events = event_stream(env, pairs_of(arrival), lambda p: p[1][1], out_of_orderness_s=1.0, pace_s=PACE_S)
    got = collect(tagged_late(run_ordered(events, Running(idle_s=10.0), "Running", tick_s=1.0,
                                          allowed_lateness_s=100.0, step=STEP)))
    return {
        "got": sorted(repr(v) for kind, _ts, v in got if kind == "out"),
        "want": sorted(map(repr, [("a", 1.0, 1), ("a", 2.0, 2), ("a", 30.0, 1), ("z", 50.0, 0)]
                           + fillers_out(50.0))),
        "late": [repr(v) for kind, _ts, v in got if kind == "late"],
    }


def case_cost():
    """Elements/s through one ordered host, over a plain pass-through of the same input."""
    rnd = random.Random(3)
    n = 50_000
    msgs = sorted(random_msgs(rnd, [f"k{i}" for i in range(500)], n, 3600.0), key=lambda m: m[1])
    result = {"n": n}
    for mode in ("batch", "streaming"):
        timings = {}
        for plan in ("passthrough", "ordered"):
            env = environment(batch=mode == "batch")
            if mode == "batch":
                source = env.from_collection(pairs_of(msgs))
            else:
                source = event_stream(env, pairs_of(msgs), lambda p: p[1][1], out_of_orderness_s=1.0)
            if plan == "ordered":
                out = run_ordered(source, Running(), "Running", tick_s=1.0, allowed_lateness_s=10.0, step=STEP)["out"]
            else:
                out = source.map(lambda p: p[1], output_type=PICKLED)
            start = time.monotonic()
            count = len(collect(out))
            timings[plan] = time.monotonic() - start
            assert count == n, (plan, count)
        extra = max(timings["ordered"] - timings["passthrough"], 1e-9)
        result[mode] = {"seconds": timings, "ordered_elements_per_s": round(n / extra)}
    return result


CASES = {"batch": case_batch, "streaming": case_streaming, "late": case_late, "gc": case_gc,
         "gc_overdue": case_gc_overdue, "cost": case_cost}

if __name__ == "__main__":
    reply({name: CASES[name]() for name in sys.argv[1:]})

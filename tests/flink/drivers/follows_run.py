"""Driver: ``flink_job.follows.resolve_follows`` on a local MiniCluster.

argv: the test's input pickle ({'mode': 'batch'|'streaming', 'reports', 'registry',
'params', 'pace_s'}, written by tests/flink/test_adapter_follows.py in the project venv,
whose helpers sign the reports). Streaming: the reports in the given order, each after a
pause (``pace_s``) so the watermark (bounded out-of-orderness over ``ts``) moves between
them, as a TestStream does in the Beam tests. Replies {'follows': [Follow as list],
'dead_letters': [DeadLetter as dict], 'seconds': job time}.
"""
from __future__ import annotations

import pickle
import sys
import time

from flink_job.follows import resolve_follows
from flink_job.ops import FlinkOps
from tests.flink.drivers import PICKLED, collect, environment, event_stream, reply


def main():
    with open(sys.argv[1], "rb") as fh:
        spec = pickle.load(fh)
    batch = spec["mode"] == "batch"
    env = environment(batch, paced=not batch)
    taps = event_stream(env, spec["reports"], lambda r: r.ts, out_of_orderness_s=5.0,
                        pace_s=0.0 if batch else spec["pace_s"])
    out = resolve_follows(FlinkOps(env, bounded=batch, uid_prefix="test"), taps, spec["registry"], spec["params"])
    tagged = (out["follows"].map(lambda f: ("follows", list(f)), output_type=PICKLED)
              .union(out["dead_letters"].map(lambda d: ("dead_letters", d._asdict()), output_type=PICKLED)))
    started = time.monotonic()
    elements = collect(tagged)
    result = {"follows": [], "dead_letters": [], "seconds": time.monotonic() - started}
    for tag, value in elements:
        result[tag].append(value)
    reply(result)


if __name__ == "__main__":
    main()

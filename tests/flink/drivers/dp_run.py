"""Driver: ``flink_job.dp_stats.release_statistics`` on a local MiniCluster.

argv: the test's input pickle ({'mode', 'records': pings/taps/tweets in delivery order,
'registry', 'params', 'pace_s'[, 'compliance': AlertParams, then 'records' hold compliance
messages too, which the tweets pass first]}). A record ``{'at': t, 'user': User}`` is a
registry update stamped ``t`` (streaming: the ``registry_updates`` input). Streaming: one
paced source, split by record type, so the inputs share one watermark. Noise:
``NoNoiseForTests``. Replies {'statistics': [Statistic as list], 'ledger': [dict], 'seconds': job time}.
"""
from __future__ import annotations

import pickle
import sys
import time

from core.dp_noise import NoNoiseForTests
from flink_job.dp_stats import release_statistics
from flink_job.ops import FlinkOps
from schemas.records import ComplianceEvent, Ping, TapReport, Tweet, User
from tests.flink.drivers import PICKLED, collect, environment, event_stream, reply


def main():
    with open(sys.argv[1], "rb") as fh:
        spec = pickle.load(fh)
    batch = spec["mode"] == "batch"
    env = environment(batch, paced=not batch)
    timed = [(r["at"], r["user"]) if isinstance(r, dict) else (r.ts, r) for r in spec["records"]]
    records = event_stream(env, timed, lambda pair: pair[0], out_of_orderness_s=5.0,
                           pace_s=0.0 if batch else spec["pace_s"])
    compliance = spec.get("compliance")
    kinds = (("pings", Ping), ("taps", TapReport), ("tweets", Tweet)) + \
        ((("deletes", ComplianceEvent),) if compliance is not None else ()) + \
        ((("registry_updates", User),) if any(isinstance(r, dict) for r in spec["records"]) else ())
    inputs = {name: records.filter(lambda pair, t=kind: isinstance(pair[1], t)).name(f"Only{name}")
              .map(lambda pair: pair[1], output_type=PICKLED).name(f"{name}Records") for name, kind in kinds}
    out = release_statistics(FlinkOps(env, bounded=batch, uid_prefix="test"), inputs, spec["registry"],
                             spec["params"], noise=NoNoiseForTests(for_tests_only=True), compliance=compliance)
    tagged = (out["statistics"].map(lambda s: ("statistics", list(s)), output_type=PICKLED)
              .union(out["ledger"].map(lambda row: ("ledger", row), output_type=PICKLED)))
    started = time.monotonic()
    elements = collect(tagged)
    result = {"statistics": [], "ledger": [], "seconds": time.monotonic() - started}
    for tag, value in elements:
        result[tag].append(value)
    reply(result)


if __name__ == "__main__":
    main()

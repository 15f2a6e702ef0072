"""Driver: the compliance gates of core.alerts.fan_out_over on FlinkOps (a local MiniCluster).

Usage: compliance_fanout.py MODE...  (batch, streaming). The worlds of
tests/compliance_scenarios.py: each compliance message kind covering one concert tweet,
with the messages first (event time and delivery before the tweets) or after the alerts
were written. Prints one JSON object {"<mode> <timing>": {'alerts', 'timeline', 'dead'}}.
"""
from __future__ import annotations

import sys

from core.alerts import fan_out_over
from core.locations import report_from_ping, report_from_tweet
from flink_job.ops import FlinkOps
from schemas.records import ComplianceEvent, Ping, Tweet
from tests.compliance_scenarios import AFTER, BEFORE, PARAMS, inputs_of, world
from tests.flink.drivers import collect, environment, event_stream, reply


def report_of(event):
    report = report_from_ping(event, PARAMS.max_accuracy_m) if isinstance(event, Ping) else report_from_tweet(event)
    return [] if report is None else [report]


def run(mode: str, at: float) -> dict:
    scenarios, messages, _covered = world(at)
    data = inputs_of([s.tweet for s in scenarios.values()], messages, scenarios)
    batch = mode == "batch"
    env = environment(batch=batch, paced=not batch)
    if batch:
        inputs = {name: env.from_collection(list(data[name])) for name in ("tweets", "deletes", "users", "reports")}
        inputs["follows"] = env.from_collection(data["users"]).filter(lambda _x: False).name("NoFollows")
    else:
        # delivery order: the messages before the tweets they cover, or after everything else
        first = messages if at == BEFORE else []
        events = first + data["pings"] + data["tweets"] + ([] if at == BEFORE else messages)
        stream = event_stream(env, events, lambda e: e.ts, out_of_orderness_s=300.0, pace_s=0.02)
        only = {name: stream.filter(lambda e, t=t: isinstance(e, t)).name(f"Only{name}")
                for name, t in (("tweets", Tweet), ("deletes", ComplianceEvent), ("pings", Ping))}
        inputs = {"tweets": only["tweets"], "deletes": only["deletes"], "users": env.from_collection(data["users"]),
                  "follows": stream.filter(lambda _e: False).name("NoFollows"),
                  "reports": only["tweets"].union(only["pings"]).flat_map(report_of)}
    # one environment per process (PyFlink's is a singleton): each job's uids its own
    out = fan_out_over(FlinkOps(env, bounded=batch, uid_prefix=f"FanOut-{mode}-{int(at)}"), inputs, PARAMS)
    tagged = (out["alerts"].map(lambda a: ("alert", a)).union(out["timeline"].map(lambda e: ("entry", e)))
              .union(out["dead_letters"].map(lambda d: ("dead", d))))
    got = collect(tagged)
    return {kind: [r._asdict() for tag, r in got if tag == kind] for kind in ("alert", "entry", "dead")}


if __name__ == "__main__":
    reply({f"{mode} {name}": run(mode, at) for mode in sys.argv[1:]
           for name, at in (("message_first", BEFORE), ("message_after", AFTER))})

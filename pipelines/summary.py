"""``run_summary.json``: counts per stage, privacy budget spent, wall time.

Counts come from the run's Beam counters (namespace ``tapfollow``), which every
step increments as it reads, rejects and emits; the privacy figures are summed
from the ledger the DP step wrote. ``stages`` reads as a table:
read = parsed + rejected per input, and emitted per output.
"""
from __future__ import annotations

import collections
import json
import os
import sys

from apache_beam.metrics.metric import MetricsFilter

from pipelines.sinks import read_jsonl_folder
from transforms.parse_inputs import METRICS_NAMESPACE


def counters_of(result) -> dict[str, int]:
    """Every ``tapfollow`` counter, summed over the steps that share a name."""
    totals: dict[str, int] = collections.Counter()
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except (NotImplementedError, AttributeError):
        return {}
    for counter in queried["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += int(value or 0)
    return dict(sorted(totals.items()))


def stage_table(counters: dict[str, int]) -> dict[str, dict[str, int]]:
    """{stage: {what: n}} from ``stage.what`` counter names."""
    table: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        stage, _, what = name.partition(".")
        table.setdefault(stage, {})[what or stage] = value
    return table


def privacy_spent(output_dir: str) -> dict:
    """Budget spent per user-day, from the ledger: the largest day's total is what a user lost."""
    rows = read_jsonl_folder(os.path.join(output_dir, "privacy_ledger"))
    per_day: dict[str, dict[str, float]] = {}
    for row in rows:
        day = per_day.setdefault(str(row.get("date")), {"epsilon": 0.0, "delta": 0.0, "releases": 0})
        day["epsilon"] += float(row.get("epsilon", 0.0))
        day["delta"] += float(row.get("delta", 0.0))
        day["releases"] += 1
    return {
        "ledger_rows": len(rows),
        "per_user_day": per_day,
        "max_epsilon_per_user_day": max((d["epsilon"] for d in per_day.values()), default=0.0),
        "max_delta_per_user_day": max((d["delta"] for d in per_day.values()), default=0.0),
    }


def write_summary(result, cfg, wall_time_s: float) -> dict:
    counters = counters_of(result)
    summary = {
        "state": str(result.state),
        "mode": "streaming" if cfg.streaming else "batch",
        "source": cfg.source,
        "input": cfg.input_dir,
        "output": cfg.output_dir,
        "stages": stage_table(counters),
        "counters": counters,
        "privacy": dict(privacy_spent(cfg.output_dir),
                        budget_epsilon_per_user_day=cfg.dp.epsilon_per_user_day,
                        budget_delta_per_user_day=cfg.dp.delta_per_user_day),
        "wall_time_s": round(wall_time_s, 3),
    }
    with open(os.path.join(cfg.output_dir, "run_summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return summary


def print_summary(summary: dict, output_dir: str, stream=sys.stdout) -> None:
    stages = summary["stages"]
    print(f"\n{'input':<10}{'read':>10}{'parsed':>10}{'rejected':>10}", file=stream)
    for kind in ("users", "pings", "taps", "tweets"):
        print(f"{kind:<10}{stages.get('read', {}).get(kind, 0):>10}"
              f"{stages.get('parsed', {}).get(kind, 0):>10}{stages.get('rejected', {}).get(kind, 0):>10}",
              file=stream)
    print(f"\n{'output':<16}{'emitted':>10}", file=stream)
    for name, value in sorted(stages.get("emitted", {}).items()):
        print(f"{name:<16}{value:>10}", file=stream)
    privacy = summary["privacy"]
    print(f"\nprivacy: max epsilon spent per user-day {privacy['max_epsilon_per_user_day']:.4g} "
          f"of {privacy['budget_epsilon_per_user_day']:g}; wall time {summary['wall_time_s']:.1f} s", file=stream)
    print(f"outputs in {os.path.abspath(output_dir)}/: follows/ alerts/ marketing/ deadletter/ "
          f"privacy_ledger/ run_summary.json", file=stream)

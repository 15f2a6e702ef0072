"""``run_summary.json``: counts per stage, privacy budget spent, wall time.

The stage counts are taken from what the run actually wrote, so they are exact
on every runner: ``read`` is the number of input lines (the pipeline's own
``read.<kind>`` counters; streaming from files on DirectRunner, whose counters are
not exact, the lines the replay delivered), ``rejected`` the dead letters whose ``source`` is that input, and
``emitted`` the records in each output folder. ``read = parsed + rejected``
holds per input; records a later step rejects (an unmatched tap, a late event)
appear under ``dead_letters`` by their step's source. Each step's own Beam
counters (namespace ``tapfollow``) are added under ``counters`` — except on
DirectRunner in streaming mode, whose bundle-based executor keeps only the last
bundle's value of a counter, so there they are left out rather than be wrong.
The privacy figures are summed from the ledger the DP step wrote, by its own
``check_ledger`` (a double release or an overspent day is reported, never summed).
``--engine flink`` (``pipelines.flink_engine``) writes the same file through
:func:`write_run_summary`, with ``engine: flink``, the job's id and web UI address; its
counters are the last values Flink's REST API showed while the job ran (it forgets a
finished job's metrics), so there they are a lower bound.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import sys

from apache_beam.metrics.metric import MetricsFilter

from core.conventions import METRICS_NAMESPACE
from core.dp_accounting import BudgetError, check_ledger
from pipelines.sinks import read_jsonl_folder

JSONL_OUTPUTS = ("follows", "alerts", "timeline", "privacy_ledger")


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


def parquet_rows(folder: str) -> int:
    import pyarrow.parquet as pq
    return sum(pq.read_metadata(path).num_rows
               for path in glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True))


def privacy_spent(ledger_rows: list[dict], epsilon: float, delta: float) -> dict:
    """Budget spent per user-day, from the ledger: the largest day's total is what a user lost.

    Summed by the DP step's own ``check_ledger``, so a window released twice or a day over
    the budget is reported (``ledger_check``) rather than added up as if it were sound."""
    try:
        spends = check_ledger(ledger_rows, epsilon, delta)
        verdict = "ok"
    except BudgetError as exc:
        spends = {}
        verdict = f"failed: {exc}"
    per_day = {day: {"epsilon": s.epsilon, "delta": s.delta, "releases": s.releases}
               for day, s in spends.items()}
    return {
        "ledger_rows": len(ledger_rows),
        "ledger_check": verdict,
        "per_user_day": dict(sorted(per_day.items())),
        "max_epsilon_per_user_day": max((d["epsilon"] for d in per_day.values()), default=0.0),
        "max_delta_per_user_day": max((d["delta"] for d in per_day.values()), default=0.0),
    }


def stage_counts(output_dir: str, lines_read: dict[str, int], origins: dict[str, str]) -> dict:
    dead_letters = read_jsonl_folder(os.path.join(output_dir, "deadletter"))
    by_source = collections.Counter(row["source"] for row in dead_letters)
    rejected = {kind: by_source.get(origin, 0) for kind, origin in origins.items()}
    emitted = {name: len(read_jsonl_folder(os.path.join(output_dir, name))) for name in JSONL_OUTPUTS}
    emitted["marketing"] = parquet_rows(os.path.join(output_dir, "marketing"))
    emitted["deadletter"] = len(dead_letters)
    return {
        "read": dict(lines_read),
        "parsed": {kind: lines_read.get(kind, 0) - rejected.get(kind, 0) for kind in lines_read},
        "rejected": rejected,
        "dead_letters_by_source": dict(sorted(by_source.items())),
        "emitted": emitted,
    }


def write_summary(result, cfg, lines_read: dict[str, int], origins: dict[str, str], runner: str,
                  wall_time_s: float) -> dict:
    """The Beam run's summary: its state and (where exact) its counters from the ``result``."""
    counters_exact = not (cfg.streaming and "direct" in runner.lower())
    return write_run_summary(cfg, lines_read, origins, state=str(result.state), runner=runner,
                             counters=counters_of(result) if counters_exact else None, wall_time_s=wall_time_s)


def write_run_summary(cfg, lines_read: dict[str, int], origins: dict[str, str], *, state: str, runner: str,
                      counters: dict | None, wall_time_s: float, engine: str = "beam",
                      extra: dict | None = None) -> dict:
    """``run_summary.json`` of any engine's run: stage counts from the outputs, ``counters`` as the
    engine reported them (None: not exact, left out), the privacy spent, and ``extra`` fields
    (the Flink job's id and web UI address)."""
    stages = stage_counts(cfg.output_dir, lines_read, origins)
    if cfg.results_sink == "kafka":
        # Follows and alerts went to Kafka topics, not folders: their counts come from the counters.
        for name in ("follows", "alerts"):
            del stages["emitted"][name]
            stages["emitted"][f"kafka:{name}"] = (counters or {}).get(f"emitted.{name}")
    ledger = read_jsonl_folder(os.path.join(cfg.output_dir, "privacy_ledger"))
    summary = {
        "engine": engine,
        "state": state,
        "runner": runner,
        "mode": "streaming" if cfg.streaming else "batch",
        "source": cfg.source,
        "input": cfg.input_dir,
        "output": cfg.output_dir,
        "stages": stages,
        "counters": counters,
        # each compliance message used, per kind (core.compliance); the rest are dead letters
        "compliance_used": None if counters is None else {
            name[len("compliance_"):]: n for name, n in sorted(counters.items())
            if name.startswith("compliance_") and not name.startswith("compliance_outputs_")},
        "privacy": dict(privacy_spent(ledger, cfg.dp.epsilon_per_user_day, cfg.dp.delta_per_user_day),
                        budget_epsilon_per_user_day=cfg.dp.epsilon_per_user_day,
                        budget_delta_per_user_day=cfg.dp.delta_per_user_day),
        "wall_time_s": round(wall_time_s, 3),
        **(extra or {}),
    }
    with open(os.path.join(cfg.output_dir, "run_summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")
    return summary


def print_summary(summary: dict, stream=sys.stdout) -> None:
    stages = summary["stages"]
    print(f"\n{'input':<10}{'read':>10}{'parsed':>10}{'rejected':>10}", file=stream)
    for kind in stages["read"]:
        print(f"{kind:<10}{stages['read'][kind]:>10}{stages['parsed'][kind]:>10}{stages['rejected'][kind]:>10}",
              file=stream)
    print(f"\n{'output':<16}{'records':>10}", file=stream)
    for name, value in stages["emitted"].items():
        label = name if name.startswith("kafka:") else name + "/"
        print(f"{label:<16}{'?' if value is None else value:>10}", file=stream)
    if stages["dead_letters_by_source"]:
        print("dead letters by source: " + ", ".join(
            f"{source} {n}" for source, n in stages["dead_letters_by_source"].items()), file=stream)
    privacy = summary["privacy"]
    print(f"\nprivacy: max epsilon spent per user-day {privacy['max_epsilon_per_user_day']:.4g} "
          f"of {privacy['budget_epsilon_per_user_day']:g}; wall time {summary['wall_time_s']:.1f} s", file=stream)
    print(f"outputs in {os.path.abspath(summary['output'])}/: follows/ alerts/ timeline/ marketing/ deadletter/ "
          f"privacy_ledger/ run_summary.json", file=stream)

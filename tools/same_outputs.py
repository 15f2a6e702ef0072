"""Do two versions of the pipeline give the same outputs? A fingerprint of every output folder.

    python -m tools.same_outputs record FILE [--users 300 2000] [--modes batch streaming]
    python -m tools.same_outputs check FILE       # exit 1 and the differing runs if any differ

For each world size (the generator's default world, seed 42, 6 hours from
``pipelines.options``' default start) and each mode, it runs ``pipelines.run``'s
own wiring on DirectRunner with the statistics' noise off (``NoNoiseForTests``:
code only, never a flag), then hashes each output folder: the sorted lines of
every ``*.jsonl`` shard (follows, alerts, timeline, deadletter, privacy_ledger) and the
sorted rows of the Parquet release (marketing). Shard names and Parquet row
groups may differ between versions; the records may not. ``record`` before a
refactoring, ``check`` after it: a restructure that changes no behaviour keeps
every fingerprint.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import tempfile

FOLDERS = ("follows", "alerts", "timeline", "deadletter", "privacy_ledger", "marketing")


def folder_fingerprint(folder: str) -> dict:
    if os.path.basename(folder) == "marketing":
        import pyarrow.parquet as pq
        rows = []
        for path in sorted(glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True)):
            rows.extend(json.dumps(row, sort_keys=True, default=str) for row in pq.read_table(path).to_pylist())
    else:
        rows = []
        for path in sorted(glob.glob(os.path.join(folder, "**", "*.jsonl"), recursive=True)):
            with open(path, encoding="utf-8") as handle:
                rows.extend(line.rstrip("\n") for line in handle if line.strip())
    rows.sort()
    digest = hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()
    return {"records": len(rows), "sha256": digest}


def run_once(world: str, out: str, streaming: bool, extra=()) -> dict:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    import dataclasses

    from pipelines.dp_schedule import with_release_schedule
    from pipelines.run import add_runner_experiments, build, config_from, prepare_output
    from core.dp_noise import NoNoiseForTests

    args = ["--input", world, "--output", out] + (["--streaming"] if streaming else []) + list(extra)
    options = PipelineOptions(args)
    cfg = config_from(options)
    cfg = dataclasses.replace(cfg, dp=with_release_schedule(cfg.dp, cfg.input_dir))
    prepare_output(cfg)
    add_runner_experiments(options)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, cfg, noise=NoNoiseForTests(for_tests_only=True))
    pipeline.run().wait_until_finish()
    return {folder: folder_fingerprint(os.path.join(out, folder)) for folder in FOLDERS}


def fingerprints(sizes: list[int], modes: list[str]) -> dict:
    from pipelines.options import TapFollowOptions
    from synthetic.world import write_world
    defaults = TapFollowOptions([])
    result = {}
    with tempfile.TemporaryDirectory(prefix="same_outputs_") as tmp:
        for users in sizes:
            world = os.path.join(tmp, f"world-{users}")
            write_world(world, users=users, hours=defaults.world_hours, seed=defaults.world_seed,
                        start=defaults.world_start)
            for mode in modes:
                key = f"{users} users, {mode}"
                print(f"running {key} ...", file=sys.stderr)
                result[key] = run_once(world, os.path.join(tmp, f"out-{users}-{mode}"), mode == "streaming")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.same_outputs", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("record", "check"))
    parser.add_argument("file")
    parser.add_argument("--users", type=int, nargs="+", default=[300, 2000])
    parser.add_argument("--modes", nargs="+", choices=("batch", "streaming"), default=["batch", "streaming"])
    args = parser.parse_args(argv)
    if args.action == "check":
        with open(args.file, encoding="utf-8") as handle:
            recorded = json.load(handle)
        sizes = sorted({int(key.split()[0]) for key in recorded})
        modes = sorted({key.rsplit(" ", 1)[1] for key in recorded})
        now = fingerprints(sizes, modes)
        differing = {key: {f: (recorded[key][f], now[key][f]) for f in FOLDERS if recorded[key][f] != now[key][f]}
                     for key in recorded}
        differing = {k: v for k, v in differing.items() if v}
        for key, folders in differing.items():
            for folder, (before, after) in folders.items():
                print(f"DIFFERENT {key}: {folder}: {before} -> {after}")
        if not differing:
            print(f"same outputs: {', '.join(recorded)}")
        return 1 if differing else 0
    result = fingerprints(args.users, args.modes)
    with open(args.file, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2, sort_keys=True)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

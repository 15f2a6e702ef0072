"""Utility and throughput of the DP footfall release, next to PipelineDP on the same data.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.bench_dp_utility [--users 10000] [--hours 24] [--seed 1]
                                                   [--input DIR] [--beam] [--repeats 3]

It generates a world with ``synthetic.world.write_world`` (or reads ``--input``),
turns every ping, NFC touch and precisely located tweet of a registered,
non-opted-out user into a (user, hour, cell) presence, and releases footfall
(distinct users per H3 res-8 cell and hour) at epsilon 1, delta 1e-6 per
user-day (JST), with the same bounds for both engines: a user counts in at
most K (hour, cell) partitions per day (``max_cells_per_day``, default 36),
once each (L0 = K, Linf = 1); ours also caps a single hour at
``max_cells_per_hour`` cells.

* ours: ``transforms.dp_*`` with every share on footfall (``share_footfall=1``)
  so that both spend the whole budget on the one metric (equal privacy); the
  pure core (no runner) against PipelineDP's LocalBackend, and with ``--beam``
  ``ReleaseDpStatistics`` on the FnApiRunner against PipelineDP's BeamBackend,
  both starting from the same in-memory records (mapping to cells included).
  The default configuration (four metrics sharing the budget) is reported too.
* PipelineDP 0.3.1: ``PRIVACY_ID_COUNT``, Gaussian noise, the public
  partitions (every hour x every public cell), privacy unit (user, JST day).

Both release every hour of the world's period (its ``world.json``, as
``pipelines.run`` does), data or not; presences outside it are left out.

Printed per engine: the median relative error |released - true| / true over
the cell-hours with at least 100 distinct users (true = distinct users
present, before any bounding), the theoretical median relative error of the
noise alone (0.6745 sigma / true, the median of a half-normal), and
throughput in presences per second (wall time of the release, input already in
memory). Repeats re-draw the noise and report the median of the per-run
medians.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time

import h3

from schemas.parse import parse_line
from schemas.records import Ping, TapReport, Tweet
from schemas.service_area import public_cells
from core import dp_accounting as acct
from core import dp_bounding as bnd
from core.dp_noise import SecureGaussianNoise
from core.dp_stats import DpParams, release_contributions

RES = 8
EPSILON, DELTA = 1.0, 1e-6
DENSE = 100
HALF_NORMAL_MEDIAN = 0.6744897501960817


def load_world(directory: str):
    """users, and (Ping | TapReport | Tweet) records, from a world directory."""
    users, records = {}, []
    for source in ("users", "pings", "taps", "tweets"):
        with open(os.path.join(directory, f"{source}.jsonl"), encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = parse_line(source, line)
                except ValueError:
                    continue  # the benchmark scores clean records; the pipeline dead-letters these
                if source == "users":
                    users[record.user_id] = record
                elif isinstance(record, (Ping, TapReport, Tweet)):
                    records.append(record)
    return users, records


def presences(users, records, max_accuracy_m, schedule):
    """Contributions of consenting, registered users in public cells and scheduled hours
    (the pipeline's first step)."""
    public = frozenset(public_cells(RES))
    out = []
    for r in records:
        if not acct.in_schedule(r.ts, *schedule):
            continue
        kind = bnd.TWEET if isinstance(r, Tweet) else bnd.TOUCH if isinstance(r, TapReport) else bnd.PING
        c = bnd.contribution_of(r, kind, RES, public, max_accuracy_m)
        if isinstance(c, str):
            continue
        user = users.get(c.user_id)
        if user is not None and not user.stats_opt_out:
            out.append(c)
    return out


def truth(contributions):
    present = collections.defaultdict(set)
    for c in contributions:
        present[(acct.hour_start(c.ts), c.cell)].add(c.user_id)
    return {k: len(v) for k, v in present.items()}


def ours_local(users, contributions, params, noise):
    """The pipeline's logic without a runner (``core.dp_stats.release_contributions``: group, bound,
    spend days, sum, release every public cell of every scheduled hour)."""
    statistics_, _, _ = release_contributions(contributions, users, params, noise)
    return {(s.window_start, s.h3_cell): (s.value, s.noise_scale)
            for s in statistics_ if s.metric == bnd.FOOTFALL}


def _pipeline_dp_params(cells_per_day):
    import pipeline_dp
    return pipeline_dp.AggregateParams(
        noise_kind=pipeline_dp.NoiseKind.GAUSSIAN,
        metrics=[pipeline_dp.Metrics.PRIVACY_ID_COUNT],
        max_partitions_contributed=cells_per_day,  # = our K cell-hours per user-day
        max_contributions_per_partition=1)


def _pipeline_dp_extractors():
    import pipeline_dp
    return pipeline_dp.DataExtractors(
        privacy_id_extractor=lambda c: (c.user_id, acct.day_of(c.ts)),
        partition_extractor=lambda c: (acct.hour_start(c.ts), c.cell),
        value_extractor=lambda c: 1)


def public_partitions(hours):
    return [(h, cell) for h in hours for cell in public_cells(RES)]


def pipeline_dp_local(contributions, partitions, cells_per_day):
    import pipeline_dp
    accountant = pipeline_dp.NaiveBudgetAccountant(total_epsilon=EPSILON, total_delta=DELTA)
    engine = pipeline_dp.DPEngine(accountant, pipeline_dp.LocalBackend())
    result = engine.aggregate(contributions, _pipeline_dp_params(cells_per_day), _pipeline_dp_extractors(),
                              public_partitions=partitions)
    accountant.compute_budgets()
    return {k: v.privacy_id_count for k, v in result}


def pipeline_dp_sigma(cells_per_day):
    from pipeline_dp import dp_computations
    return dp_computations.compute_sigma(EPSILON, DELTA, cells_per_day ** 0.5)


def ours_beam(users, records, params):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.transforms.window import TimestampedValue
    from transforms.dp_stats import ReleaseDpStatistics
    p = TestPipeline(runner="FnApiRunner")
    by_type = collections.defaultdict(list)
    for r in records:
        by_type[type(r)].append(r)
    inputs = {name: (p | f"Create{name}" >> beam.Create(by_type[t]).with_output_types(t)
                     | f"Stamp{name}" >> beam.Map(lambda r: TimestampedValue(r, r.ts)).with_output_types(t))
              for name, t in (("pings", Ping), ("taps", TapReport), ("tweets", Tweet))}
    inputs["users"] = p | "Users" >> beam.Create(list(users.values()))
    out = inputs | ReleaseDpStatistics(params)
    path = tempfile.mkdtemp(prefix="bench_dp_")
    (out["statistics"] | beam.Filter(lambda s: s.metric == bnd.FOOTFALL)
     | beam.Map(lambda s: json.dumps([s.window_start, s.h3_cell, s.value]))
     | beam.io.WriteToText(os.path.join(path, "footfall")))
    p.run().wait_until_finish()
    return _read_released(path)


def _read_released(path: str) -> dict:
    """{(window_start, cell): value} from the JSON lines a Beam run wrote under ``path``."""
    released = {}
    for name in os.listdir(path):
        with open(os.path.join(path, name)) as handle:
            for line in handle:
                start, cell, value = json.loads(line)
                released[(start, cell)] = value
    return released


def pipeline_dp_beam(users, records, partitions, cells_per_day):
    """PipelineDP on Beam from the same in-memory records as ``ours_beam`` (same mapping to cells)."""
    import apache_beam as beam
    import pipeline_dp
    from apache_beam.testing.test_pipeline import TestPipeline
    p = TestPipeline(runner="FnApiRunner")
    accountant = pipeline_dp.NaiveBudgetAccountant(total_epsilon=EPSILON, total_delta=DELTA)
    engine = pipeline_dp.DPEngine(accountant, pipeline_dp.BeamBackend())
    consenting = frozenset(u for u, record in users.items() if not record.stats_opt_out)
    public = frozenset(public_cells(RES))
    max_accuracy_m = DpParams().max_accuracy_m

    def to_contribution(r):
        kind = bnd.TWEET if isinstance(r, Tweet) else bnd.TOUCH if isinstance(r, TapReport) else bnd.PING
        c = bnd.contribution_of(r, kind, RES, public, max_accuracy_m)
        if not isinstance(c, str) and c.user_id in consenting:
            yield c

    col = p | "Create" >> beam.Create(records) | "ToContributions" >> beam.FlatMap(to_contribution)
    result = engine.aggregate(col, _pipeline_dp_params(cells_per_day), _pipeline_dp_extractors(),
                              public_partitions=p | "Partitions" >> beam.Create(partitions))
    accountant.compute_budgets()
    path = tempfile.mkdtemp(prefix="bench_pdp_")
    (result | beam.Map(lambda kv: json.dumps([kv[0][0], kv[0][1], kv[1].privacy_id_count]))
     | beam.io.WriteToText(os.path.join(path, "footfall")))
    p.run().wait_until_finish()
    return _read_released(path)


def median_relative_error(released, true_counts):
    dense = [k for k, n in true_counts.items() if n >= DENSE]
    return statistics.median(abs(released[k] - true_counts[k]) / true_counts[k] for k in dense)


def theoretical(sigma, true_counts):
    dense = [n for n in true_counts.values() if n >= DENSE]
    return statistics.median(HALF_NORMAL_MEDIAN * sigma / n for n in dense) if dense else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", help="an existing world directory (default: generate one)")
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--hours", type=float, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_cells_per_hour", type=int, default=DpParams().max_cells_per_hour)
    parser.add_argument("--max_cells_per_day", type=int, default=DpParams().max_cells_per_day)
    parser.add_argument("--beam", action="store_true", help="also time both engines on the FnApiRunner")
    parser.add_argument("--beam_users", type=int, default=0,
                        help="run the --beam comparison on the data of this many users only (0: all)")
    args = parser.parse_args(argv)

    directory = args.input
    if directory is None:
        from synthetic.world import write_world
        directory = tempfile.mkdtemp(prefix="dp_world_")
        started = time.perf_counter()
        write_world(directory, users=args.users, hours=args.hours, seed=args.seed)
        print(f"world: {args.users} users, {args.hours:g} h, seed {args.seed} -> {directory} "
              f"({time.perf_counter() - started:.1f} s)")
    from pipelines.dp_schedule import world_period
    period = world_period(directory)
    if period is None:
        print(f"{directory} has no world.json: the benchmark releases the world's period", file=sys.stderr)
        return 2
    schedule = acct.schedule_of_period(*period)
    hours = acct.scheduled_hours(*schedule)
    users, records = load_world(directory)
    contributions = presences(users, records, DpParams().max_accuracy_m, schedule)
    true_counts = truth(contributions)
    dense = sum(1 for n in true_counts.values() if n >= DENSE)
    print(f"presences: {len(contributions)} from {len(records)} records; cell-hours with >= {DENSE} "
          f"users: {dense} (largest {max(true_counts.values())})")
    if not dense:
        print(f"no cell-hour has {DENSE} users: generate a bigger world (--users)", file=sys.stderr)
        return 2
    partitions = public_partitions(hours)

    bounds = dict(max_cells_per_hour=args.max_cells_per_hour, max_cells_per_day=args.max_cells_per_day)
    footfall_only = DpParams(share_footfall=1.0, share_footfall_by_age=0, share_tweets=0, share_nfc_touches=0,
                             **bounds).with_schedule(*schedule)
    default = DpParams(**bounds).with_schedule(*schedule)
    cells = footfall_only.cells_per_day()
    sigma_ours = footfall_only.plan().metrics[bnd.FOOTFALL].noise_stddev
    sigma_default = default.plan().metrics[bnd.FOOTFALL].noise_stddev
    sigma_pdp = pipeline_dp_sigma(cells)

    rows = []  # (engine, sigma, median relative error, seconds, presences, true counts)
    runs = {"ours, footfall only (local core)": (sigma_ours, lambda: ours_local(
                users, contributions, footfall_only, SecureGaussianNoise())),
            "ours, default 4 metrics (local core)": (sigma_default, lambda: ours_local(
                users, contributions, default, SecureGaussianNoise())),
            "PipelineDP LocalBackend": (sigma_pdp, lambda: pipeline_dp_local(contributions, partitions, cells))}
    for name, (sigma, run) in runs.items():
        errors, seconds = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            released = run()
            seconds.append(time.perf_counter() - started)
            released = {k: (v[0] if isinstance(v, tuple) else v) for k, v in released.items()}
            missing = [k for k in partitions if k not in released]
            assert not missing, f"{name} did not release {len(missing)} public partitions"
            errors.append(median_relative_error(released, true_counts))
        rows.append((name, sigma, statistics.median(errors), statistics.median(seconds), len(contributions),
                     true_counts))
        print(f"  done: {name}", flush=True)

    if args.beam:
        # Same data for both engines; a subset of users keeps a loaded machine's run short.
        keep = set(sorted(users)[:args.beam_users]) if args.beam_users else set(users)
        b_users = {k: v for k, v in users.items() if k in keep}
        b_records = [r for r in records if (r.author_id if isinstance(r, Tweet) else r.user_id) in keep]
        b_contributions = [c for c in contributions if c.user_id in keep]
        b_truth = truth(b_contributions)
        b_partitions = partitions
        for name, sigma, run in (
                ("ours, footfall only (Beam FnApiRunner)", sigma_ours,
                 lambda: ours_beam(b_users, b_records, footfall_only)),
                ("PipelineDP BeamBackend (FnApiRunner)", sigma_pdp,
                 lambda: pipeline_dp_beam(b_users, b_records, b_partitions, cells))):
            started = time.perf_counter()
            released = run()
            secs = time.perf_counter() - started
            missing = [k for k in b_partitions if k not in released]
            assert not missing, f"{name} did not release {len(missing)} public partitions"
            error = (median_relative_error(released, b_truth)
                     if any(n >= DENSE for n in b_truth.values()) else float("nan"))
            dense_here = sum(1 for n in b_truth.values() if n >= DENSE)
            rows.append((name + (f", {len(keep)} users, {dense_here} dense" if args.beam_users else ""),
                         sigma, error, secs,
                         len(b_contributions), b_truth))
            print(f"  done: {name}", flush=True)

    print(f"\nfootfall at epsilon {EPSILON:g}, delta {DELTA:g} per user-day; bounds: {cells} (hour, cell) "
          f"partitions per user-day (and {args.max_cells_per_hour} per hour for ours), 1 per partition; {len(partitions)} public partitions; "
          f"median over {dense} cell-hours with >= {DENSE} users")
    print(f"{'engine':<62}{'sigma':>8}{'theory':>9}{'measured':>10}{'seconds':>9}{'presences/s':>13}")
    for name, sigma, error, secs, n, counts in rows:
        print(f"{name:<62}{sigma:>8.2f}{theoretical(sigma, counts):>9.2%}{error:>10.2%}"
              f"{secs:>9.2f}{n / secs:>13,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

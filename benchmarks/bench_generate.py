"""Benchmark of the synthetic world generator: wall time and lines/s for a big world.

    python benchmarks/bench_generate.py [--users 10000] [--hours 24] [--seed 42] [--output DIR] [--keep]

Generates into a temporary directory (removed afterwards unless --keep or
--output is given) and prints the wall and CPU time per stage, the input
lines per file and the overall lines/s. The target is 10,000 users x 24 h in
under 30 s on a 2-core machine. CPU time is printed beside wall time because
on a shared machine the wall time also measures the neighbours.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from synthetic.world import INPUT_FILES, write_world  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=None, help="write here (kept) instead of a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    out = args.output or tempfile.mkdtemp(prefix="bench_generate_")
    hours = int(args.hours) if args.hours.is_integer() else args.hours

    wall0, cpu0 = time.perf_counter(), time.process_time()

    def progress(message: str) -> None:
        print(f"  {time.perf_counter() - wall0:6.1f} s wall {time.process_time() - cpu0:6.1f} s cpu  {message}",
              file=sys.stderr)

    try:
        counts = write_world(out, users=args.users, hours=hours, seed=args.seed, progress=progress)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        lines = sum(counts[name] for name in INPUT_FILES)
        size = sum(os.path.getsize(os.path.join(out, name)) for name in INPUT_FILES)
        print(f"world: {args.users} users x {hours} h, seed {args.seed}")
        for name in INPUT_FILES:
            print(f"  {name:14s} {counts[name]:>10,d} lines")
        print(f"input lines: {lines:,d} ({size / 1e6:.1f} MB)")
        print(f"wall time: {wall:.1f} s   cpu time: {cpu:.1f} s")
        print(f"throughput: {lines / wall:,.0f} lines/s wall, {lines / cpu:,.0f} lines/s cpu")
    finally:
        if args.output is None and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        elif args.keep:
            print(f"kept {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

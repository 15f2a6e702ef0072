"""The whole batch pipeline against Beam's own floor, side by side, per world size.

    .venv/bin/python -m benchmarks.bench_pipeline [--users 1000,10000] [--hours 24] [--seed 5]
        [--workdir /tmp/tapfollow-bench] [--chart docs/bench-pipeline.svg] [-- extra pipeline flags]

For each size a world is generated once (``python -m pipelines.generate --users N
--hours H --seed S``, kept in ``--workdir`` for the next run), then, one after the
other on the same machine:

* ``floor``: Beam's floor on that world, DirectRunner: every input line through
  ``ReadFromText``, ``json.loads``, an H3 cell where the line has a point,
  ``CombinePerKey(sum)`` (issue #13's definition; ``floor`` below);
* ``pipeline``: ``python -m pipelines.run --input WORLD --output OUT`` with the
  launcher's defaults plus any extra flags given after ``--``.

Each runs in its own process tree, measured from outside: wall time, CPU time of
the tree (user + sys, children included once they end), cores busy (CPU / wall), and
peak RSS of the whole tree (every descendant's ``VmRSS`` summed, sampled every
0.2 s). The table's ``ratio`` is the floor's time over the pipeline's (1.0: as fast
as the floor). ``--chart`` writes an SVG of time and peak memory against input lines.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the floor ----------------------------------------------------------------------------

def floor(world: str, output: str, beam_args: list[str]) -> None:
    """ReadFromText -> json.loads -> (H3 cell or "-", 1) -> CombinePerKey(sum) -> one text file."""
    import apache_beam as beam
    import h3
    from apache_beam.options.pipeline_options import PipelineOptions

    def cell(line: str):
        record = json.loads(line)
        lat, lng = record.get("lat"), record.get("lng")
        if lat is None:
            point = (record.get("coordinates") or {}).get("coordinates") if isinstance(record, dict) else None
            if point:
                lng, lat = point[0], point[1]
        if isinstance(lat, (int, float)) and isinstance(lng, (int, float)):
            return h3.latlng_to_cell(lat, lng, 9), 1
        return "-", 1

    pattern = os.path.join(world, "*.jsonl*")
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        (p | beam.io.ReadFromText(pattern) | beam.Map(cell) | beam.CombinePerKey(sum)
         | beam.Map(lambda kv: f"{kv[0]}\t{kv[1]}") | beam.io.WriteToText(os.path.join(output, "floor")))


# ---- measuring a process tree from outside ------------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                out.extend(int(c) for c in handle.read().split())
    except OSError:
        pass
    return out


def _tree_rss_bytes(root: int) -> int:
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
        todo.extend(_children(pid))
    return total


def measure(cmd: list[str], log_path: str) -> dict:
    """Run ``cmd``; wall s, CPU s of the tree, cores busy, peak tree RSS (MB), exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=HERE)
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_rss_bytes(proc.pid))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cores": round(cpu / wall, 2) if wall else 0.0,
            "peak_rss_mb": round(peak[0] / 2**20), "exit": code}


def lines_of(world: str) -> int:
    total = 0
    for name in sorted(os.listdir(world)):
        if name.endswith(".jsonl"):
            with open(os.path.join(world, name), "rb") as handle:
                total += sum(1 for _ in handle)
    return total


def ensure_world(workdir: str, users: int, hours: int, seed: int) -> str:
    world = os.path.join(workdir, f"world-{users}u-{hours}h-s{seed}")
    if not os.path.exists(os.path.join(world, "world.json")):
        subprocess.run([sys.executable, "-m", "pipelines.generate", "--output", world, "--users", str(users),
                        "--hours", str(hours), "--seed", str(seed)], check=True, cwd=HERE,
                       stdout=subprocess.DEVNULL)
    return world


# ---- the chart ----------------------------------------------------------------------------

def chart_svg(rows: list[dict]) -> str:
    """Wall time (s) of floor and pipeline and peak RSS (MB) of the pipeline against input lines."""
    w, h, pad = 640, 300, 50
    xs = [r["lines"] for r in rows]
    series = [("floor s", [r["floor"]["wall_s"] for r in rows], "#888"),
              ("pipeline s", [r["pipeline"]["wall_s"] for r in rows], "#c33"),
              ("pipeline peak MB / 10", [r["pipeline"]["peak_rss_mb"] / 10 for r in rows], "#36c")]
    top = max(max(v) for _, v, _ in series) or 1
    right = max(xs) or 1

    def point(x, y):
        return f"{pad + (w - 2 * pad) * x / right:.1f},{h - pad - (h - 2 * pad) * y / top:.1f}"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="11"><rect width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">input lines (max {right:,})</text>',
             f'<text x="{pad - 6}" y="{pad}" text-anchor="end">{top:,.0f}</text>']
    for i, (name, values, colour) in enumerate(series):
        pts = " ".join(point(x, y) for x, y in zip(xs, values))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{pad + 10}" y="{pad + 14 * i}" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    if argv and argv[0] == "floor":          # the floor itself, in its own process
        parser = argparse.ArgumentParser(prog="bench_pipeline floor")
        parser.add_argument("--input", required=True)
        parser.add_argument("--output", required=True)
        args, beam_args = parser.parse_known_args(argv[1:])
        floor(args.input, args.output, beam_args + extra)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", default="1000,10000", help="comma-separated world sizes (users)")
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/tapfollow-bench")
    parser.add_argument("--chart", help="write an SVG chart of time and memory against input lines here")
    parser.add_argument("--json", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    print(f"{'users':>7} {'lines':>9} | {'floor s':>8} {'lines/s':>8} {'cores':>5} {'MB':>6} | "
          f"{'pipeline s':>10} {'lines/s':>8} {'cores':>5} {'MB':>6} | {'ratio':>5}", flush=True)
    for users in (int(u) for u in args.users.split(",")):
        world = ensure_world(args.workdir, users, args.hours, args.seed)
        lines = lines_of(world)
        out = os.path.join(args.workdir, f"out-{users}u")
        row = {"users": users, "hours": args.hours, "lines": lines}
        row["floor"] = measure([sys.executable, "-m", "benchmarks.bench_pipeline", "floor", "--input", world,
                                "--output", out + "-floor", *extra], out + "-floor.log")
        row["pipeline"] = measure([sys.executable, "-m", "pipelines.run", "--input", world, "--output", out, *extra],
                                  out + ".log")
        for part in ("floor", "pipeline"):
            if row[part]["exit"] != 0:
                print(f"{part} failed (exit {row[part]['exit']}): see {out}{'-floor' if part == 'floor' else ''}.log",
                      file=sys.stderr)
                return 1
        row["ratio"] = round(row["floor"]["wall_s"] / row["pipeline"]["wall_s"], 3)
        f, p = row["floor"], row["pipeline"]
        print(f"{users:>7} {lines:>9,} | {f['wall_s']:>8.1f} {lines / f['wall_s']:>8,.0f} {f['cores']:>5.2f} "
              f"{f['peak_rss_mb']:>6} | {p['wall_s']:>10.1f} {lines / p['wall_s']:>8,.0f} {p['cores']:>5.2f} "
              f"{p['peak_rss_mb']:>6} | {row['ratio']:>5.3f}", flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"extra_flags": extra, "rows": rows}, handle, indent=2)
    if args.chart:
        with open(args.chart, "w") as handle:
            handle.write(chart_svg(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the Flink ordered host (``flink_job.ordered.run_ordered``) on a local MiniCluster.

    .venv/bin/python -m benchmarks.bench_flink_ordered [--n 50000] [--keys 500] [--span-s 3600]
        [--parallelism 2] [--tick-s 1] [--plans passthrough,batch,streaming] [--repeat 1]
        [--conf key=value ...] [--no-recommended]

Runs itself in the PyFlink venv (``PYFLINK_PYTHON`` from infra/env.sh, as tests/flink do).
The same ``--n`` messages (``--keys`` keys, event times uniform over ``--span-s``, sorted by
event time, so the streaming watermark advances as a real source's would) go through:

* ``passthrough``: source -> one stateless Python map (STREAMING mode, the source's
  watermarks assigned as for the streaming host): what any Python operator costs;
* ``batch``: the host's bounded plan in BATCH runtime mode;
* ``streaming``: the host's unbounded plan in STREAMING mode (``tick_s`` ticks per key).

``batch=MODULE`` / ``streaming=MODULE`` runs ``MODULE.run_ordered`` instead (an older
host, say: ``git show REV:flink_job/ordered.py > /tmp/old/ordered_old.py`` and
``PYTHONPATH=/tmp/old``), so that before and after share one run and one machine load.

Each prints wall seconds (job submission included), CPU seconds (this process, where
PyFlink's local Python workers run, and its JVM), elements/s, and the host's own rate
over the pass-through (n / (seconds - passthrough seconds)). Wall figures need an idle
machine; the load average is printed with them. Unless
``--no-recommended``, every job gets ``flink_job.ordered.recommended_configuration()``
(what the launcher applies); ``--conf`` adds or overrides entries.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyflink_python() -> str:
    path = os.environ.get("PYFLINK_PYTHON")
    if not path:
        path = subprocess.run(["bash", "-c", f'source "{REPO}/infra/env.sh"; printf %s "$PYFLINK_PYTHON"'],
                              capture_output=True, text=True, check=True).stdout
    if not path or not os.access(path, os.X_OK):
        fallback = "/tmp/pfv/bin/python"
        if os.access(fallback, os.X_OK):
            return fallback
        sys.exit(f"no PyFlink venv python ({path!r}): run infra/install.sh")
    return path


def _reexec_in_venv() -> None:
    """Run this script again in the PyFlink venv, set up as tests.flink.conftest.run_driver does."""
    python = _pyflink_python()
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")   # workers start `python`
    env["PYFLINK_CLIENT_EXECUTABLE"] = python
    env["TAPFOLLOW_BENCH_IN_VENV"] = "1"
    env.pop("VIRTUAL_ENV", None)
    os.execve(python, [python, os.path.abspath(__file__), *sys.argv[1:]], env)


def _messages(n: int, keys: int, span_s: float, seed: int = 3):
    import random
    rnd = random.Random(seed)
    names = [f"k{i}" for i in range(keys)]
    msgs = [(rnd.choice(names), round(rnd.uniform(0, span_s), 3), rnd.randint(1, 9)) for _ in range(n)]
    return sorted(msgs, key=lambda m: m[1])


def _unwrap(pair):
    return pair[1]


def _cpu_seconds() -> float:
    """CPU seconds so far of this process (its Python workers run in it: PyFlink's loopback
    mode) and of its live descendants (the MiniCluster's JVM): a figure other load on the
    machine inflates less than wall time."""
    import resource
    ticks = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    me = os.getpid()

    def descends(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == me:
                return True
        return False
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + sum(c for pid, c in cpu.items() if descends(pid))


def _run(plan: str, msgs, args, conf: dict) -> tuple[float, float]:
    from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
    from pyflink.datastream import RuntimeExecutionMode, StreamExecutionEnvironment

    import importlib

    from tests.flink.drivers import _At
    from tests.flink.drivers.ordered_host import Running

    config = Configuration()
    for key, value in conf.items():
        config.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(args.parallelism)
    plan, _, module = plan.partition("=")
    run_ordered = importlib.import_module(module or "flink_job.ordered").run_ordered
    batch = plan == "batch"
    env.set_runtime_mode(RuntimeExecutionMode.BATCH if batch else RuntimeExecutionMode.STREAMING)
    source = env.from_collection([(m[0], m) for m in msgs])
    if not batch:
        strategy = (WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(1000))
                    .with_timestamp_assigner(_At(lambda p: p[1][1])))
        source = source.assign_timestamps_and_watermarks(strategy)
    if plan == "passthrough":
        out = source.map(_unwrap, output_type=Types.PICKLED_BYTE_ARRAY())
    else:
        out = run_ordered(source, Running(), "Running", tick_s=args.tick_s, allowed_lateness_s=10.0,
                          step="bench")["out"]
    start, start_cpu = time.monotonic(), _cpu_seconds()
    with out.execute_and_collect() as results:
        count = sum(1 for _ in results)
    seconds, cpu = time.monotonic() - start, _cpu_seconds() - start_cpu
    if count != len(msgs):
        raise SystemExit(f"{plan}: {count} outputs for {len(msgs)} messages")
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--span-s", type=float, default=3600.0)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--tick-s", type=float, default=1.0)
    parser.add_argument("--plans", default="passthrough,batch,streaming")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-recommended", action="store_true")
    args = parser.parse_args()
    if not os.environ.get("TAPFOLLOW_BENCH_IN_VENV"):
        _reexec_in_venv()

    from flink_job.ordered import recommended_configuration
    conf = {} if args.no_recommended else dict(recommended_configuration())
    conf.update(item.split("=", 1) for item in args.conf)
    msgs = _messages(args.n, args.keys, args.span_s)
    plans = [p.strip() for p in args.plans.split(",") if p.strip()]
    print(f"n={args.n} keys={args.keys} span={args.span_s:g}s tick={args.tick_s:g}s "
          f"parallelism={args.parallelism} conf={json.dumps(conf, sort_keys=True)}", flush=True)
    best = {}
    for _ in range(args.repeat):
        for plan in plans:
            seconds, cpu = _run(plan, msgs, args, conf)
            if seconds < best.get(plan, (float("inf"),))[0]:
                best[plan] = (seconds, cpu)
            print(f"  {plan:12s} {seconds:8.2f} s  {cpu:8.2f} cpu-s  {args.n / seconds:10.0f} elements/s",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus (wall figures need an idle machine)")
    base = best.get("passthrough")
    print(f"{'plan':12s} {'seconds':>8s} {'cpu-s':>8s} {'elements/s':>11s} {'host alone /s':>14s}")
    for plan in plans:
        seconds, cpu = best[plan]
        extra = "" if base is None or plan == "passthrough" else \
            f"{args.n / max(seconds - base[0], 1e-9):14.0f}"
        print(f"{plan:12s} {seconds:8.2f} {cpu:8.2f} {args.n / seconds:11.0f} {extra}")


if __name__ == "__main__":
    main()

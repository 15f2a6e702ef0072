"""The native PyFlink job vs the Beam pipeline on Prism: Kafka throughput and event->alert latency.

    .venv/bin/python -m benchmarks.bench_flink [--users 10000] [--hours 24] [--seed 5]
        [--latency-users 1000] [--latency-hours 2] [--rate 200] [--engines flink,beam]
        [--checkpoint-ms 10000] [--beam-timeout-s 900] [--quiet-s 120] [--warm-rate 2]
        [--settle-s 15] [--tail-s 0] [--skip-throughput] [--skip-latency] [--port-offset 20000] [--keep-dir]

Everything runs on a **second infra instance** (infra/README.md, "A second instance"): its own
Kafka, expansion service, Java worker pool, Prism and Flink session cluster, on the default
ports + ``--port-offset``, its run/data/log/conf dirs under a temp dir; ``infra/up.sh`` at the
start and ``infra/down.sh`` at the end (always). The default instance is never touched.

1. **Throughput from a backlog.** One world (``synthetic.world.write_world``, ending an hour
   before now). For each engine in turn: topics deleted and recreated, the world loaded
   (``kafka_client.load_world``), then the launcher as a user runs it:

   * Flink: ``python -m pipelines.run --engine flink --source kafka --flink_kafka_stop_at_latest
     --results_sink kafka --checkpointing_interval MS`` (a bounded read: it ends by itself);
   * Beam on Prism: ``python -m pipelines.run --source kafka --streaming --results_sink kafka
     --runner=PortableRunner --environment_type=LOOPBACK`` (unbounded: it is cancelled once the
     committed follows and alerts equal the Flink run's counts and stay so for a few seconds,
     or after ``--quiet-s`` without a new output, or at ``--beam-timeout-s``).

   A consumer thread reads the follows and alerts topics ``read_committed`` from the start
   and stamps each message's arrival: wall = launch -> last committed output; startup = launch
   -> first committed output; events/s over both (the latter: ``steady``).
2. **Latency.** A smaller world paced into empty event topics: the users topic loaded, the
   job launched; from its submission on the world's pings, taps and tweets are produced in
   event-time order (CreateTime = event time, as ``kafka_client`` stamps it), at a trickle
   (``--warm-rate``) while the job starts and for ``--settle-s`` after it runs, then at
   ``--rate`` events/s; each record's wall time is kept. (The trickle matters: the Flink job
   never decides an alert again once all its Kafka sources have been idle for 10 s -- see the
   end of this docstring.) An alert's latency = its arrival on the alerts topic
   (``read_committed``) - the wall time by which every event with event time <= the alert's
   ``ts`` had been produced. Left out: alerts that were ready during the warm-up, alerts in
   the world's last ``--latency-guard-s`` of event time (their decision waits for data that
   never comes to move the watermark), and retractions. Rate: keep it below what the engine
   sustains (the throughput figure), or the latency measures the queue.

What bounds the figures (printed at the end too): Flink's results go to Kafka in transactions
committed by checkpoints, so an alert is visible only after the checkpoint that follows its
decision: at least the wait for that checkpoint (up to one interval plus the commit).
Beam's KafkaIO (CreateTime policy) moves a caught-up partition's watermark to wall-clock time,
so a paced replay of a past world is partly *late* for Beam: its events fall behind the
watermark and are dropped or dead-lettered; this is measured (late counters and dead letters
printed), not hidden.

A flink_job bug this benchmark ran into: its build-time sources (``flink_job.io.from_records``:
the registry's users and dead letters; ``ReleaseDpStatistics/ScheduledHours``) are bounded and
finish at once, sending the maximum watermark; Flink leaves idle inputs out of an operator's
watermark, so once every Kafka source is idle (``with_idleness``, 10 s), the operators that join
them (``FanOutGeofencedAlerts/DecidePerUser``, ``ReleaseDpStatistics/ReleaseHour``...) jump to
the maximum watermark: every scheduled hour is released at once, and no alert is decided after.
The benchmark warns (``WATERMARK AT MAX``) when it sees it.
"""
from __future__ import annotations

import argparse
import bisect
import heapq
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Iterable, Optional

from pipelines.flink_engine import TERMINAL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFRA = os.path.join(REPO, "infra")
STANDARD_TOPICS = ("users", "pings", "taps", "tweets", "alerts", "follows")
EVENT_TOPICS = ("pings", "taps", "tweets")
RESULT_TOPICS = ("follows", "alerts")
# infra/README.md "Ports": the default instance's; ours are these + --port-offset.
DEFAULT_PORTS = {"FLINK_REST_PORT": 8081, "FLINK_RPC_PORT": 6123, "KAFKA_PORT": 9092,
                 "KAFKA_CONTROLLER_PORT": 9093, "EXPANSION_PORT": 8097, "JAVA_WORKER_PORT": 8099,
                 "PRISM_JOB_PORT": 8073, "PRISM_WEB_PORT": 8074, "PROMETHEUS_PORT": 9090}


# ---- pure helpers (unit-tested in tests/test_bench_flink.py) ------------------------------

def instance_env(base_dir: str, port_offset: int, environ: Optional[dict] = None) -> dict:
    """The environment of a second infra instance: every port moved by ``port_offset``, its
    run/data/log/conf dirs under ``base_dir``, and what the launchers need to find it."""
    if port_offset <= 0:
        raise ValueError("a second instance needs a positive port offset")
    env = dict(os.environ if environ is None else environ)
    ports = {name: str(port + port_offset) for name, port in DEFAULT_PORTS.items()}
    env.update(ports)
    for name in ("RUN", "DATA", "LOG", "CONF"):
        env[f"INFRA_{name}_DIR"] = os.path.join(base_dir, name.lower())
    env["BEAM_KAFKA_EXPANSION_SERVICE"] = f"127.0.0.1:{ports['EXPANSION_PORT']}"
    env["FLINK_CONF_DIR"] = os.path.join(env["INFRA_CONF_DIR"], "flink")   # flink_engine.flink_install
    env.pop("INFRA_INSTANCE", None)
    return env


def ready_times(produced: Iterable[tuple[int, float]]) -> tuple[list[int], list[float]]:
    """From (event time ms, wall time produced) pairs: the event times sorted, and for each the
    wall time by which every event at or before it had been produced (a running maximum)."""
    pairs = sorted(produced)
    times, ready, latest = [], [], float("-inf")
    for ms, wall in pairs:
        latest = max(latest, wall)
        if times and times[-1] == ms:
            ready[-1] = latest
        else:
            times.append(ms)
            ready.append(latest)
    return times, ready


def ready_at(times: list[int], ready: list[float], ts_ms: int) -> Optional[float]:
    """When every event with event time <= ``ts_ms`` had been produced (None: none had such a time)."""
    i = bisect.bisect_right(times, ts_ms) - 1
    return ready[i] if i >= 0 else None


def alert_ts_ms(ts) -> int:
    """An alert's ``ts`` (RFC 3339 in its JSON, or epoch seconds) in epoch milliseconds."""
    if isinstance(ts, str):
        from schemas.timefmt import parse_rfc3339
        return int(round(parse_rfc3339(ts) * 1000))
    return int(round(float(ts) * 1000))


def alert_latencies(alerts: Iterable[tuple[dict, float]], produced: Iterable[tuple[int, float]],
                    cutoff_ms: int) -> tuple[list[float], dict]:
    """(latencies in s, what was left out) for (alert record, arrival wall time) pairs.

    Left out: retractions (``reason`` ``retract:...``), alerts whose ``ts`` lies after
    ``cutoff_ms`` (the world's tail) or before every produced event."""
    times, ready = ready_times(produced)
    latencies, left_out = [], {"retractions": 0, "tail": 0, "before_first_event": 0}
    for alert, arrived in alerts:
        if str(alert.get("reason", "")).startswith("retract:"):
            left_out["retractions"] += 1
            continue
        ts_ms = alert_ts_ms(alert["ts"])
        if ts_ms > cutoff_ms:
            left_out["tail"] += 1
            continue
        at = ready_at(times, ready, ts_ms)
        if at is None:
            left_out["before_first_event"] += 1
            continue
        latencies.append(arrived - at)
    return latencies, left_out


def percentile(values: list[float], q: float) -> Optional[float]:
    """The nearest-rank ``q``-th percentile (0 < q <= 100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(min(rank, len(ordered))) - 1]


def rates(events: int, launched: float, first: Optional[float], last: Optional[float],
          min_span_s: float = 1.0) -> dict:
    """Wall seconds from launch to the last output, startup (launch -> first output), and
    events/s over the wall and over (first -> last output): the ``steady`` rate."""
    if first is None or last is None:
        return {"wall_s": None, "startup_s": None, "events_per_s": None, "steady_per_s": None}
    wall, startup = last - launched, first - launched
    steady = last - first
    return {"wall_s": wall, "startup_s": startup,
            "events_per_s": events / wall if wall > 0 else None,
            # outputs all committed at once (one transaction, one bundle): no steady rate to speak of
            "steady_per_s": events / steady if steady >= min_span_s else None}


def merge_in_event_time(streams: dict[str, Iterable[tuple[str, Optional[int]]]]) -> Iterable[tuple[int, str, str]]:
    """(event ms, topic, line) of every stream merged in event-time order (each stream in its
    own order; a line with no time takes 0, as it would be sent first)."""
    def keyed(topic, items):
        for line, ms in items:
            yield (ms or 0, topic, line)
    return heapq.merge(*(keyed(topic, items) for topic, items in streams.items()), key=lambda item: item[0])


def _fmt(value, spec: str = ",.0f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def throughput_rows(results: list[dict]) -> list[str]:
    lines = [f"{'engine':<7} {'events':>9} {'wall s':>8} {'startup s':>9} {'events/s':>9} {'steady/s':>9} "
             f"{'follows':>8} {'alerts':>7} {'dead':>6}  note"]
    for r in results:
        lines.append(f"{r['engine']:<7} {r['events']:>9,} {_fmt(r['wall_s'], '.1f'):>8} "
                     f"{_fmt(r['startup_s'], '.1f'):>9} {_fmt(r['events_per_s']):>9} {_fmt(r['steady_per_s']):>9} "
                     f"{r['follows']:>8,} {r['alerts']:>7,} {_fmt(r.get('dead_letters'), ','):>6}  {r.get('note', '')}")
    return lines


def latency_rows(results: list[dict]) -> list[str]:
    lines = [f"{'engine':<7} {'alerts':>7} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'left out':>9} {'dead':>6}  note"]
    for r in results:
        left = sum(r["left_out"].values())
        lines.append(f"{r['engine']:<7} {r['count']:>7,} {_fmt(r['p50'], '.2f'):>7} {_fmt(r['p99'], '.2f'):>7} "
                     f"{_fmt(r['max'], '.2f'):>7} {left:>9,} {_fmt(r.get('dead_letters'), ','):>6}  {r.get('note', '')}")
    return lines


def markdown_block(sizes: dict, throughput: list[dict], latency: list[dict], checkpoint_ms: int) -> str:
    """The README's Benchmarks row for ``bench_flink`` (one table row, figures of this run)."""
    parts = []
    if throughput:
        t = sizes["throughput"]
        per = "; ".join(
            f"{r['engine']} {_fmt(r['events_per_s'])} events/s ({_fmt(r['steady_per_s'])} after its "
            f"{_fmt(r['startup_s'], '.0f')} s startup{', ' + r['note'] if r.get('note') else ''})"
            for r in throughput)
        parts.append(f"backlog of {t['users']:,} users × {t['hours']:g} h ({throughput[0]['events']:,} events) "
                     f"Kafka → committed outputs: {per}")
    if latency:
        t = sizes["latency"]
        per = "; ".join(
            f"{r['engine']} p50 {_fmt(r['p50'], '.1f')} s / p99 {_fmt(r['p99'], '.1f')} s ({r['count']:,} alerts"
            f"{', ' + r['note'] if r.get('note') else ''})" for r in latency)
        parts.append(f"event→alert latency, {t['users']:,} users × {t['hours']:g} h paced at {t['rate']:g} events/s, "
                     f"checkpoints every {checkpoint_ms / 1000:g} s: {per}")
    return (f"| `bench_flink` | native PyFlink job vs the Beam pipeline on Prism, Kafka in and out exactly once, "
            f"second infra instance | {'. '.join(parts)} |")


# ---- services -----------------------------------------------------------------------------

class Instance:
    """A second infra instance: up.sh/down.sh with its own env; Kafka, Flink and Prism endpoints."""

    def __init__(self, base_dir: str, port_offset: int):
        self.env = instance_env(base_dir, port_offset)
        self.bootstrap = f"127.0.0.1:{self.env['KAFKA_PORT']}"
        self.flink_master = f"127.0.0.1:{self.env['FLINK_REST_PORT']}"
        self.prism = f"127.0.0.1:{self.env['PRISM_JOB_PORT']}"
        self.expansion = self.env["BEAM_KAFKA_EXPANSION_SERVICE"]

    def script(self, name: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", os.path.join(INFRA, name)], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def up(self) -> None:
        t0 = time.monotonic()
        done = self.script("up.sh")
        if done.returncode != 0:
            raise RuntimeError(f"infra/up.sh failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        print(f"second infra instance up in {time.monotonic() - t0:.0f} s: Kafka {self.bootstrap}, "
              f"Flink {self.flink_master}, Prism {self.prism}, expansion {self.expansion}", flush=True)

    def down(self) -> None:
        done = self.script("down.sh", timeout=300)
        print(f"infra/down.sh (second instance): exit {done.returncode}", flush=True)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")

    def rest(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"http://{self.flink_master}{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None


class PrismJobs:
    """Prism's job service through Beam's job API: which job runs, and cancelling it."""

    def __init__(self, endpoint: str):
        import grpc
        from apache_beam.portability.api import beam_job_api_pb2 as job_api
        from apache_beam.portability.api import beam_job_api_pb2_grpc as job_grpc
        self.api = job_api
        self.channel = grpc.insecure_channel(endpoint)
        self.stub = job_grpc.JobServiceStub(self.channel)
        s = job_api.JobState
        self.terminal = {s.DONE, s.FAILED, s.CANCELLED, s.STOPPED, s.DRAINED, s.UPDATED}

    def ids(self) -> set[str]:
        return {j.job_id for j in self.stub.GetJobs(self.api.GetJobsRequest(), timeout=10).job_info}

    def state(self, job_id: str) -> int:
        return self.stub.GetState(self.api.GetJobStateRequest(job_id=job_id), timeout=10).state

    def running(self, job_id: str) -> bool:
        return self.state(job_id) == self.api.JobState.RUNNING

    def cancel(self, job_id: str, timeout_s: float = 60) -> bool:
        if self.state(job_id) not in self.terminal:
            self.stub.Cancel(self.api.CancelJobRequest(job_id=job_id), timeout=10)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.state(job_id) in self.terminal:
                return True
            time.sleep(0.5)
        return False

    def close(self) -> None:
        self.channel.close()


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def reset_topics(bootstrap: str) -> None:
    """Delete and recreate the standard topics (deletion is asynchronous in Kafka)."""
    import kafka_client
    kafka_client.delete_topics(STANDARD_TOPICS, bootstrap)
    # (a loaded broker took over 120 s to delete the 10k-user world's topics)
    wait_for(lambda: not set(STANDARD_TOPICS) & kafka_client.list_topics(bootstrap), 600, "topic deletion")

    def created():
        try:
            kafka_client.create_topics(STANDARD_TOPICS, bootstrap)
        except Exception:  # noqa: BLE001 -- the broker may still be finishing the deletion
            return False
        return set(STANDARD_TOPICS) <= kafka_client.list_topics(bootstrap)
    wait_for(created, 120, "fresh topics", 1.0)


class OutputWatcher(threading.Thread):
    """Reads the result topics ``read_committed`` from the beginning; each message's arrival wall time."""

    def __init__(self, bootstrap: str, topics=RESULT_TOPICS, keep: tuple = ("alerts",)):
        super().__init__(daemon=True)
        self.bootstrap, self.topics, self.keep = bootstrap, topics, keep
        self.counts = {topic: 0 for topic in topics}
        self.first: Optional[float] = None
        self.last: Optional[float] = None
        self.kept: list[tuple[dict, float]] = []
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        import kafka_client
        client = kafka_client.consumer(self.bootstrap, **{"fetch.wait.max.ms": 50})
        try:
            assignment = [TopicPartition(topic, p, OFFSET_BEGINNING) for topic in self.topics
                          for p in kafka_client.partitions_of(client, topic)]
            client.assign(assignment)
            self.ready.set()
            while not self.halt.is_set():
                for msg in client.consume(1000, 0.1):
                    if msg.error() is not None:
                        continue
                    now = time.time()
                    with self.lock:
                        self.counts[msg.topic()] += 1
                        self.first = now if self.first is None else self.first
                        self.last = now
                        if msg.topic() in self.keep:
                            try:
                                self.kept.append((json.loads(msg.value()), now))
                            except ValueError:
                                pass
        finally:
            self.ready.set()
            client.close()

    def snapshot(self) -> tuple[dict, Optional[float], Optional[float]]:
        with self.lock:
            return dict(self.counts), self.first, self.last

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def count_lines(folder: str) -> int:
    total = 0
    if os.path.isdir(folder):
        for root, _dirs, files in os.walk(folder):
            for name in files:
                if name.startswith(".") or name.endswith((".crc", ".tmp")):
                    continue
                with open(os.path.join(root, name), "rb") as handle:
                    total += sum(1 for line in handle if line.strip())
    return total


def read_summary(out: str) -> dict:
    path = os.path.join(out, "run_summary.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def make_world(path: str, users: int, hours: float, seed: int) -> dict:
    from synthetic.world import write_world
    start = (int(time.time()) // 3600 - int(-(-hours // 1)) - 1) * 3600    # ends an hour (or so) before now
    t0 = time.monotonic()
    counts = write_world(path, users=users, hours=hours, seed=seed, start=float(start))
    print(f"world {users:,} users × {hours:g} h (seed {seed}): "
          f"{sum(counts[f'{k}.jsonl'] for k in ('users', *EVENT_TOPICS)):,} input lines "
          f"in {time.monotonic() - t0:.0f} s -> {path}", flush=True)
    return counts


# ---- launching the engines -----------------------------------------------------------------

def flink_args(inst: Instance, world: str, out: str, checkpoint_ms: int, bounded: bool) -> list[str]:
    return [sys.executable, "-m", "pipelines.run", "--engine", "flink", "--flink_master", inst.flink_master,
            "--source", "kafka", *(["--flink_kafka_stop_at_latest"] if bounded else []),
            "--results_sink", "kafka", "--kafka_bootstrap_servers", inst.bootstrap,
            "--checkpointing_interval", str(checkpoint_ms), "--input", world, "--output", out]


def beam_args(inst: Instance, world: str, out: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.run", "--source", "kafka", "--streaming", "--results_sink", "kafka",
            "--kafka_bootstrap_servers", inst.bootstrap, "--kafka_expansion_service", inst.expansion,
            "--runner=PortableRunner", f"--job_endpoint={inst.prism}", "--environment_type=LOOPBACK",
            "--input", world, "--output", out]


def start_launcher(inst: Instance, args: list[str], log_path: str) -> subprocess.Popen:
    log = open(log_path, "w", encoding="utf-8")
    try:
        return subprocess.Popen(args, cwd=REPO, env=inst.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def stop_launcher(proc: subprocess.Popen, grace_s: float = 120) -> None:
    """SIGINT (the launcher cancels its Flink job / ends its Beam job), then SIGTERM, then SIGKILL."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue


def cancel_flink_jobs(inst: "Instance", before: set[str]) -> list[str]:
    """Cancel every job the run started that still runs; their ids. (A launcher that outlived
    its Ctrl-C and was killed left its job running, reading the topics -- which Kafka then
    re-created as fast as the next half deleted them.)"""
    left = [j["jid"] for j in inst.rest("/jobs/overview")["jobs"]
            if j["jid"] not in before and j["state"] not in TERMINAL]
    for job in left:
        inst.rest(f"/jobs/{job}?mode=cancel", method="PATCH")
    wait_for(lambda: all(inst.rest(f"/jobs/{j}")["state"] in TERMINAL for j in left),
             120, "the left-over Flink jobs to be cancelled")
    return left


def tail(path: str, n: int = 2500) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-n:]
    except OSError:
        return ""


def new_flink_job(inst: Instance, before: set[str]) -> Optional[str]:
    jobs = [j["jid"] for j in inst.rest("/jobs/overview")["jobs"] if j["jid"] not in before]
    return jobs[0] if jobs else None


def flink_job_running(inst: Instance, job_id: str) -> bool:
    job = inst.rest(f"/jobs/{job_id}")
    return job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"])


def beam_cancel(prism: PrismJobs, before: set[str]) -> str:
    new = prism.ids() - before
    notes = []
    for job in sorted(new):
        notes.append(f"{job}: {'cancelled' if prism.cancel(job) else 'NOT cancelled'}")
    return ", ".join(notes) or "no Prism job found"


def alert_keys(watcher: OutputWatcher) -> list[tuple]:
    with watcher.lock:
        return sorted((a.get("alert_id"), a.get("reason"), a.get("ts")) for a, _wall in watcher.kept)


def dead_letter_note(out: str, summary: dict) -> tuple[int, str]:
    dead = count_lines(os.path.join(out, "deadletter"))
    late = {k: v for k, v in (summary.get("counters") or {}).items() if "late" in k and v}
    return dead, (f"late counters {late}" if late else "")


# ---- 1. throughput -------------------------------------------------------------------------

def throughput_flink(inst: Instance, world: str, work: str, checkpoint_ms: int, events: int) -> dict:
    out, log = os.path.join(work, "tp-flink"), os.path.join(work, "tp-flink.log")
    watcher = OutputWatcher(inst.bootstrap)
    watcher.start()
    watcher.ready.wait(30)
    launched = time.time()
    proc = start_launcher(inst, flink_args(inst, world, out, checkpoint_ms, bounded=True), log)
    try:
        status = proc.wait()
    finally:
        stop_launcher(proc)
    time.sleep(3)                       # the last committed transaction reaches the watcher
    watcher.stop()
    counts, first, last = watcher.snapshot()
    summary = read_summary(out)
    result = {"engine": "flink", "alert_keys": alert_keys(watcher), "events": events, "status": status, **rates(events, launched, first, last),
              "follows": counts["follows"], "alerts": counts["alerts"]}
    job_id = summary.get("flink_job_id")
    if job_id:
        job = inst.rest(f"/jobs/{job_id}")
        result["job_run_s"] = job.get("duration", 0) / 1000
        result["submit_to_done_s"] = summary.get("submit_to_done_s")
    result["dead_letters"], note = dead_letter_note(out, summary)
    if "job_run_s" in result:
        note = f"job ran {result['job_run_s']:.0f} s" + (f"; {note}" if note else "")
    if first is not None and result["steady_per_s"] is None:
        note = f"every output committed within {last - first:.1f} s, at the end; {note}"
    if status != 0:
        note = f"launcher exit {status}; " + note
        print(tail(log))
    result["note"] = note
    print(f"  flink: exit {status}, job {job_id}, run {result.get('job_run_s', 0):.1f} s "
          f"(submit->done {summary.get('submit_to_done_s')} s), outputs {counts}", flush=True)
    return result


def throughput_beam(inst: Instance, world: str, work: str, events: int, target: Optional[dict],
                    timeout_s: float, quiet_s: float) -> dict:
    out, log = os.path.join(work, "tp-beam"), os.path.join(work, "tp-beam.log")
    prism = PrismJobs(inst.prism)
    before = prism.ids()
    watcher = OutputWatcher(inst.bootstrap)
    watcher.start()
    watcher.ready.wait(30)
    launched = time.time()
    proc = start_launcher(inst, beam_args(inst, world, out), log)
    why, cancelled = "", ""
    try:
        last_change, seen = time.time(), None
        while True:
            time.sleep(2)
            counts, first, last = watcher.snapshot()
            now = time.time()
            if counts != seen:
                seen, last_change = counts, now
            if proc.poll() is not None:
                why = f"launcher exited {proc.returncode}"
                break
            if target and all(counts[t] >= target[t] for t in RESULT_TOPICS) and now - last_change >= 10:
                why = "outputs equal the Flink run's"
                break
            if first is not None and now - last_change >= quiet_s:
                why = f"no new output for {quiet_s:g} s"
                break
            if now - launched >= timeout_s:
                why = f"capped at {timeout_s:g} s"
                break
    finally:
        cancelled = beam_cancel(prism, before)
        try:
            proc.wait(90)               # a cancelled job ends the launcher, which writes its summary
        except subprocess.TimeoutExpired:
            pass
        stop_launcher(proc)
        prism.close()
    time.sleep(2)
    watcher.stop()
    counts, first, last = watcher.snapshot()
    summary = read_summary(out)
    read = {k: v for k, v in (summary.get("counters") or {}).items() if k.startswith("read.")}
    read_events = sum(read.get(f"read.{k}", 0) for k in EVENT_TOPICS)
    result = {"engine": "beam", "alert_keys": alert_keys(watcher), "events": events, "status": proc.returncode,
              **rates(events, launched, first, last), "follows": counts["follows"], "alerts": counts["alerts"]}
    result["dead_letters"], note = dead_letter_note(out, summary)
    notes = [why]
    if why.startswith("capped"):
        # not every event was processed: the rate is what it read by the cap, as its counters say
        elapsed = time.time() - launched
        if read_events:
            result["events_per_s"] = read_events / timeout_s
            notes.append(f"read {read_events:,} of {events:,} events by the cap ({read_events / timeout_s:,.0f}/s)")
        else:
            result["events_per_s"] = None
            notes.append(f"no read counters after {elapsed:.0f} s")
        result["steady_per_s"] = None
    if target and any(counts[t] != target[t] for t in RESULT_TOPICS):
        notes.append(f"WARNING outputs differ from Flink's {target}")
    if note:
        notes.append(note)
    result["note"] = "; ".join(n for n in notes if n)
    print(f"  beam: stopped ({why}); Prism job {cancelled}; launcher exit {proc.returncode}; outputs {counts}; "
          f"counters read {read}", flush=True)
    if proc.returncode not in (0, 130, -2) and not first:
        print(tail(log))
    return result


def run_throughput(inst: Instance, args, work: str) -> list[dict]:
    import kafka_client
    world = os.path.join(work, "world-throughput")
    make_world(world, args.users, args.hours, args.seed)
    results, target = [], None
    for engine in args.engines:
        reset_topics(inst.bootstrap)
        t0 = time.monotonic()
        loaded = kafka_client.load_world(world, inst.bootstrap)
        seconds = time.monotonic() - t0
        events = sum(loaded.get(k, 0) for k in EVENT_TOPICS)
        print(f"[throughput/{engine}] loaded {loaded} in {seconds:.0f} s "
              f"({sum(loaded.values()) / seconds:,.0f} records/s); load {os.getloadavg()[0]:.1f}", flush=True)
        if engine == "flink":
            result = throughput_flink(inst, world, work, args.checkpoint_ms, events)
            if result["status"] == 0:
                target = {t: result[t] for t in RESULT_TOPICS}
        else:
            result = throughput_beam(inst, world, work, events, target, args.beam_timeout_s, args.quiet_s)
        result["load"] = os.getloadavg()[0]
        results.append(result)
    flink = [r for r in results if r["engine"] == "flink"]
    beam = [r for r in results if r["engine"] == "beam"]
    if flink and beam and any(flink[0][t] != beam[0][t] for t in RESULT_TOPICS):
        print(f"WARNING: the engines' outputs differ: flink {[flink[0][t] for t in RESULT_TOPICS]} vs "
              f"beam {[beam[0][t] for t in RESULT_TOPICS]} (follows, alert messages)")
        only = {e: sorted(set(r[0]["alert_keys"]) - set(o[0]["alert_keys"]))
                for e, r, o in (("flink", flink, beam), ("beam", beam, flink))}
        for engine, keys in only.items():
            print(f"  alert messages only {engine} wrote ({len(keys)}): {keys[:10]}")
    return results


# ---- 2. latency ----------------------------------------------------------------------------

def paced_produce(bootstrap: str, world: str, rate: float, warm_rate: float, warm: threading.Event,
                  produced: list) -> None:
    """The world's events into their topics in event-time order, appending (event ms, wall
    time produced) of each to ``produced``: at ``warm_rate``/s until ``warm`` is set (the job is
    still starting: a trickle keeps the Kafka sources from going idle), then at ``rate``/s."""
    from confluent_kafka import Producer

    import kafka_client
    from core.lines import read_lines
    streams = {kind: kafka_client.timestamped(read_lines(kafka_client.find_input(world, kind)), kind)
               for kind in EVENT_TOPICS}
    producer = Producer(kafka_client.client_config(bootstrap, **{"acks": "all", "enable.idempotence": True,
                                                                "linger.ms": 2}))
    due = time.time()
    for ms, topic, line in merge_in_event_time(streams):
        delay = due - time.time()
        if delay > 0:
            producer.poll(0)
            time.sleep(delay)
        while True:
            try:
                producer.produce(topic, value=line.encode("utf-8", errors="surrogateescape"),
                                 timestamp=kafka_client.create_time_ms(ms) or 0)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        now = time.time()
        produced.append((ms, now))
        due = max(due, now - 1.0) + 1.0 / (rate if warm.is_set() else warm_rate)
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"{left} records not acknowledged")


def flink_watermarks(inst: Instance, job_id: str) -> dict[str, int]:
    """Each operator's current input watermark (its lowest subtask's)."""
    marks = {}
    for vertex in inst.rest(f"/jobs/{job_id}")["vertices"]:
        values = [int(w["value"]) for w in inst.rest(f"/jobs/{job_id}/vertices/{vertex['id']}/watermarks")]
        if values:
            marks[vertex["name"]] = min(values)
    return marks


MAX_WATERMARK = 2 ** 63 - 1


def latency_run(inst: Instance, engine: str, world: str, work: str, args) -> dict:
    import kafka_client
    out, log = os.path.join(work, f"lat-{engine}"), os.path.join(work, f"lat-{engine}.log")
    reset_topics(inst.bootstrap)
    kafka_client.produce_jsonl(os.path.join(world, "users.jsonl"), "users", inst.bootstrap, kind="users")
    watcher = OutputWatcher(inst.bootstrap, keep=("alerts",))
    watcher.start()
    watcher.ready.wait(30)
    prism = PrismJobs(inst.prism) if engine == "beam" else None
    before_flink = {j["jid"] for j in inst.rest("/jobs/overview")["jobs"]} if engine == "flink" else set()
    before_beam = prism.ids() if prism else set()
    launched = time.monotonic()
    argv = flink_args(inst, world, out, args.checkpoint_ms, bounded=False) if engine == "flink" \
        else beam_args(inst, world, out)
    proc = start_launcher(inst, argv, log)
    produced: list[tuple[int, float]] = []
    warm = threading.Event()
    producer = threading.Thread(target=paced_produce, daemon=True,
                                args=(inst.bootstrap, world, args.rate, args.warm_rate, warm, produced))
    notes, status, warm_at, max_marks = [], None, None, []
    try:
        def check_alive():
            if proc.poll() is not None:
                raise RuntimeError(f"launcher exited {proc.returncode}:\n{tail(log)}")

        def submitted():
            check_alive()
            return new_flink_job(inst, before_flink) if engine == "flink" else \
                next(iter(sorted(prism.ids() - before_beam)), None)

        def running():
            check_alive()
            return flink_job_running(inst, job) if engine == "flink" else prism.running(job)
        job = wait_for(submitted, 600, f"the {engine} job to be submitted", 0.5)
        producer.start()             # from now on, at the warm-up trickle
        wait_for(running, 600, f"the {engine} job to run", 1.0)
        print(f"  {engine} job {job} running {time.monotonic() - launched:.0f} s after launch; warming up "
              f"{args.settle_s:g} s at {args.warm_rate:g} events/s", flush=True)
        time.sleep(args.settle_s)
        warm_at = time.time()
        warm.set()
        started_with = len(produced)
        producer.join()
        seconds = time.time() - warm_at
        print(f"  produced {len(produced):,} events ({started_with:,} in the warm-up), then "
              f"{(len(produced) - started_with) / seconds:,.0f}/s over {seconds:.0f} s", flush=True)
        if engine == "flink":
            max_marks = [name for name, mark in flink_watermarks(inst, job).items() if mark >= MAX_WATERMARK]
        wait_s = args.tail_s or max(30.0, 3 * args.checkpoint_ms / 1000)
        print(f"  waiting {wait_s:.0f} s for the last alerts", flush=True)
        time.sleep(wait_s)
    finally:
        warm.set()
        if prism:
            print(f"  Prism: {beam_cancel(prism, before_beam)}", flush=True)
            prism.close()
            try:
                proc.wait(90)           # a cancelled job ends the launcher, which writes its summary
            except subprocess.TimeoutExpired:
                pass
        stop_launcher(proc)
        status = proc.returncode
        if engine == "flink":
            left = cancel_flink_jobs(inst, before_flink)
            if left:
                notes.append(f"the launcher left job(s) {', '.join(left)} running: cancelled")
        watcher.stop()
    with watcher.lock:
        alerts = list(watcher.kept)
    last_ms = max(ms for ms, _ in produced)
    cutoff = last_ms - int(args.latency_guard_s * 1000)
    times, ready = ready_times(produced)
    in_warmup = [(ready_at(times, ready, alert_ts_ms(a["ts"])) or 0) < warm_at for a, _t in alerts]
    latencies, left_out = alert_latencies([x for x, early in zip(alerts, in_warmup) if not early], produced, cutoff)
    left_out["warm_up"] = sum(in_warmup)
    dead, late_note = dead_letter_note(out, read_summary(out))
    if not alerts:
        notes.append("no alerts")
    if max_marks:
        notes.append(f"WATERMARK AT MAX in {len(max_marks)} operators while running (e.g. {max_marks[0][:60]!r})")
    if late_note:
        notes.append(late_note)
    result = {"engine": engine, "count": len(latencies), "p50": percentile(latencies, 50),
              "p99": percentile(latencies, 99), "max": max(latencies) if latencies else None,
              "left_out": left_out, "dead_letters": dead, "messages": len(alerts), "status": status,
              "note": "; ".join(notes)}
    print(f"  {engine}: {len(alerts)} alert messages, {len(latencies)} timed, left out {left_out}, "
          f"{dead} dead letters, launcher exit {status}", flush=True)
    return result


def run_latency(inst: Instance, args, work: str) -> list[dict]:
    world = os.path.join(work, "world-latency")
    make_world(world, args.latency_users, args.latency_hours, args.seed)
    results = []
    for engine in args.engines:
        print(f"[latency/{engine}] paced at {args.rate:g} events/s; load {os.getloadavg()[0]:.1f}", flush=True)
        results.append(latency_run(inst, engine, world, work, args))
    return results


# ---- main ----------------------------------------------------------------------------------

BOUNDS = """What bounds them:
* Flink writes follows and alerts to Kafka exactly once, in transactions committed when a checkpoint
  completes: a read_committed consumer sees an alert only after the checkpoint that follows its
  decision, so its latency is at least the wait for that checkpoint (up to one interval, --checkpoint-ms,
  plus the commit; about half an interval on average) and a backlog's outputs arrive in checkpoint-sized
  steps. Throughput is bounded by the job's Python operators (PyFlink's Python workers, one per slot,
  on 2 shared cores) and the job's startup (submission, Python workers, the first checkpoint).
* Beam on Prism (LOOPBACK: the Python SDK worker runs inside the launcher) is bounded by Prism's bundle
  scheduling and that one Python worker. Its KafkaIO CreateTime policy moves a caught-up partition's
  watermark to wall-clock time: in a paced replay of a past world, events arriving after their topic
  caught up are behind the watermark, dropped or dead-lettered as late (the late counters and dead
  letters above), so Beam's alerts are fewer and its latency says how long its bundles take, not more.
* The replay trickles events (--warm-rate) from the job's submission on, so the paced part
  starts on a job whose sources are all reading (the firehose topic is never declared idle:
  its watermark is the job's clock)."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=24)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--latency-users", type=int, default=1000)
    parser.add_argument("--latency-hours", type=float, default=2)
    parser.add_argument("--rate", type=float, default=200, help="paced replay: events/s (default 200)")
    parser.add_argument("--latency-guard-s", type=float, default=60,
                        help="alerts in the world's last this-many event-time seconds are not timed")
    parser.add_argument("--settle-s", type=float, default=15,
                        help="latency: warm-up after the job runs, before the paced replay (its alerts not timed)")
    parser.add_argument("--warm-rate", type=float, default=2,
                        help="latency: events/s from submission to the end of the warm-up (keeps the sources busy)")
    parser.add_argument("--tail-s", type=float, default=0,
                        help="latency: wait this long after the last event (default max(30 s, 3 checkpoints))")
    parser.add_argument("--engines", default="flink,beam")
    parser.add_argument("--checkpoint-ms", type=int, default=10_000)
    parser.add_argument("--beam-timeout-s", type=float, default=900, help="cap of the Beam throughput run")
    parser.add_argument("--quiet-s", type=float, default=120, help="Beam: stop after this long without new output")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--port-offset", type=int, default=20_000, help="the second instance's ports: default + this")
    parser.add_argument("--keep-dir", action="store_true", help="keep the work dir (worlds, outputs, logs)")
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not set(args.engines) <= {"flink", "beam"} or not args.engines:
        parser.error("--engines: flink, beam or both")

    work = tempfile.mkdtemp(prefix="bench-flink-")
    inst = Instance(os.path.join(work, "infra"), args.port_offset)
    os.environ.update({"BEAM_KAFKA_EXPANSION_SERVICE": inst.expansion})
    print(f"bench_flink: work dir {work}; load {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores", flush=True)
    throughput, latency = [], []
    t_all = time.monotonic()
    try:
        inst.up()
        if not args.skip_throughput:
            throughput = run_throughput(inst, args, work)
        if not args.skip_latency:
            latency = run_latency(inst, args, work)
    finally:
        inst.down()
        if args.keep_dir:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nbench_flink: {time.monotonic() - t_all:.0f} s in all; load {os.getloadavg()[0]:.1f}")
    if throughput:
        print(f"\nThroughput, Kafka backlog -> committed follows/alerts ({args.users:,} users × {args.hours:g} h, "
              f"seed {args.seed}; Flink checkpoints every {args.checkpoint_ms / 1000:g} s):")
        print("\n".join(throughput_rows(throughput)))
    if latency:
        print(f"\nEvent -> alert latency ({args.latency_users:,} users × {args.latency_hours:g} h paced at "
              f"{args.rate:g} events/s; alerts in the last {args.latency_guard_s:g} s of event time not timed):")
        print("\n".join(latency_rows(latency)))
    print("\n" + BOUNDS)
    sizes = {"throughput": {"users": args.users, "hours": args.hours},
             "latency": {"users": args.latency_users, "hours": args.latency_hours, "rate": args.rate}}
    print("\nREADME row:\n" + markdown_block(sizes, throughput, latency, args.checkpoint_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak run: the native Flink job streaming from Kafka on the local cluster for N minutes with
input trickling in (issue #16).

    bash infra/up.sh
    .venv/bin/python -m benchmarks.bench_soak [--minutes 30] [--users 60] [--every 60]

A world is generated whose events, in event-time order, are produced into the topics evenly
over the run (users first: the job takes the registry at launch); the launcher
(``pipelines.run --engine flink --source kafka --results_sink kafka``) stays in the foreground
the whole time. Every ``--every`` seconds it prints what it checked: events produced and read
by the job, follows/alerts/dead letters emitted, the job's state and restarts, the Kafka
source's lag (the Kafka consumer's records-lag-max) and the watermark's lag behind the newest event produced
(from Prometheus when it answers), and the RSS of the JobManager, the TaskManager, the PyFlink
Python workers and the launcher. At the end the launcher is interrupted as an operator would
(Ctrl-C: it cancels the job, writes its summary and exits 130) and must do so with no
traceback. Exit 1 if a check failed.
Ports and directories come from infra/env.sh and the environment (a second instance's
exports work). tests/integration/test_soak.py runs it for 5 minutes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from pipelines.flink_engine import FlinkRest, core_counter_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENT_KINDS = ("pings", "taps", "tweets")
EVENTS_PER_USER_HOUR = 7.5          # the generator's worlds: ~930 events for 60 users x 2 h
PYFLINK_WORKER = re.compile(r"pyflink-udf-runner\.sh|pyflink\.fn_execution\.beam")


def infra_env() -> dict[str, str]:
    """What infra/env.sh sets for this instance (the environment's overrides applied)."""
    names = ("KAFKA_BOOTSTRAP", "FLINK_REST_PORT", "PROMETHEUS_PORT", "RUN_DIR", "INFRA_FLINK_CONF_DIR",
             "FLINK_HOME")
    script = f'source "{REPO}/infra/env.sh"; ' + "; ".join(f'echo "{n}=${n}"' for n in names)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _pid_file(path: str) -> int | None:
    try:
        return int(open(path).read().strip())
    except (OSError, ValueError):
        return None


def python_workers(flink_conf_dir: str) -> list[int]:
    """This instance's PyFlink Python workers (as infra/lib.sh's pyflink_worker_pids finds them)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode("utf-8", "replace")
            if not PYFLINK_WORKER.search(cmdline):
                continue
            environ = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"FLINK_CONF_DIR={flink_conf_dir}".encode() in environ:
            found.append(int(entry))
    return found


class PrometheusQuery:
    """Questions to Prometheus's HTTP API (also the tests' client: tests/integration/prometheus_helpers)."""

    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params):
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise ValueError(f"Prometheus {path}: {body}")
        return body["data"]

    def counters(self, job_id: str) -> dict[str, int]:
        """The job's ``tapfollow`` counters as Flink's Prometheus reporter exported them, summed
        over operators and subtasks, by the core's names (``read.tweets``); {} if unanswered."""
        prefix = "flink_taskmanager_job_task_operator_tapfollow_"
        expr = f'sum by (__name__) ({{__name__=~"{prefix}.*", job_id="{job_id}"}})'
        try:
            result = self.get("/api/v1/query", query=expr)["result"]
        except (OSError, ValueError, KeyError):
            return {}
        return {core_counter_name(r["metric"]["__name__"][len(prefix):]): int(float(r["value"][1])) for r in result}

    def value(self, expr: str) -> float | None:
        """The one value of a scalar-like ``expr`` (a sum, say); None when it has no series or
        Prometheus does not answer (a sample is then reported as n/a)."""
        try:
            result = self.get("/api/v1/query", query=expr)["result"]
        except (OSError, ValueError, KeyError):
            return None
        return float(result[0]["value"][1]) if result else None


@dataclasses.dataclass
class Sample:
    t_s: float
    produced: int
    read: int
    follows: int
    alerts: int
    dead_letters: int
    state: str
    restarts: int | None
    consumer_lag: float | None
    watermark_lag_s: float | None
    rss_mb: dict

    def line(self) -> str:
        lag = "n/a" if self.consumer_lag is None else f"{self.consumer_lag:.0f}"
        wm = "n/a" if self.watermark_lag_s is None else f"{self.watermark_lag_s:.0f}s"
        rss = " ".join(f"{k}={v:.0f}" for k, v in self.rss_mb.items())
        return (f"{self.t_s / 60:6.1f} min  in {self.produced:6d}  read {self.read:6d}  out follows {self.follows:4d} "
                f"alerts {self.alerts:5d} dead {self.dead_letters:4d}  {self.state} restarts {self.restarts}  "
                f"lag {lag} watermark-lag {wm}  RSS MB {rss}")


def fresh_topics(topics, bootstrap: str, deadline_s: float = 120.0) -> None:
    """Delete and re-create ``topics`` (empty); a deletion the broker has not finished is retried."""
    import kafka_client
    kafka_client.delete_topics(topics, bootstrap)
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            kafka_client.create_topics(topics, bootstrap)
            if set(topics) <= kafka_client.list_topics(bootstrap):
                return
        except Exception:  # noqa: BLE001 -- "marked for deletion": the broker is still deleting
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


def trickle_plan(world: str) -> list[tuple[int, str, str]]:
    """(event time ms, topic, line) of every event of ``world``, in event-time order."""
    from kafka_client import find_input, timestamped
    from core.lines import iter_lines
    events = []
    for kind in EVENT_KINDS:
        path = find_input(world, kind)
        events.extend((ms or 0, kind, line) for line, ms in timestamped(iter_lines(path), kind))
    events.sort(key=lambda event: event[0])
    return events


def soak(minutes: float, users: int = 60, every_s: float = 60.0, prometheus_url: str | None = None,
         workdir: str | None = None, out=sys.stdout, on_sample=None) -> dict:
    """Run the soak; a report dict (its ``ok`` and ``problems`` say whether every check held).

    ``on_sample(sample, inject)`` (tests) is called after each sample; ``inject(topic, lines)``
    produces extra lines stamped with the newest event time produced so far (so they move no
    watermark): a burst of bad input, a backlog."""
    import kafka_client
    env = infra_env()
    workdir = workdir or tempfile.mkdtemp(prefix="soak-")
    bootstrap, rest = env["KAFKA_BOOTSTRAP"], FlinkRest(f"127.0.0.1:{env['FLINK_REST_PORT']}")
    prometheus = PrometheusQuery(prometheus_url or f"http://127.0.0.1:{env['PROMETHEUS_PORT']}")
    hours = max(2, math.ceil(minutes * 60 * 2.0 / (users * EVENTS_PER_USER_HOUR)))   # ~2 events/s at least
    world = os.path.join(workdir, "world")
    subprocess.run([sys.executable, "-m", "pipelines.generate", "--output", world, "--users", str(users),
                    "--hours", str(hours), "--seed", "16"], cwd=REPO, check=True, capture_output=True)
    # fresh topics: the job reads each from its start
    topics = ("users", "taps", "tweets", "pings", "follows", "alerts")
    fresh_topics(topics, bootstrap)
    kafka_client.produce_jsonl(os.path.join(world, "users.jsonl"), "users", bootstrap)
    plan = trickle_plan(world)
    print(f"soak: {minutes:g} min, {users} users x {hours} h world, {len(plan)} events trickled in over the run",
          file=out, flush=True)

    launcher_log = open(os.path.join(workdir, "launcher.log"), "w")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "pipelines.run", "--engine", "flink", "--flink_master", rest.base[len("http://"):],
         "--checkpointing_interval", "10000", "--source", "kafka", "--results_sink", "kafka",
         "--kafka_bootstrap_servers", bootstrap, "--input", world, "--output", os.path.join(workdir, "out")],
        cwd=REPO, stdout=launcher_log, stderr=subprocess.STDOUT,
        env=dict(os.environ, FLINK_HOME=env["FLINK_HOME"], FLINK_CONF_DIR=env["INFRA_FLINK_CONF_DIR"]))
    log_path = launcher_log.name
    problems: list[str] = []
    job_id = None
    deadline = time.monotonic() + 600
    while job_id is None and time.monotonic() < deadline and launcher.poll() is None:
        found = re.search(r"Flink job ([0-9a-f]{32})", open(log_path).read())
        job_id = found.group(1) if found else None
        time.sleep(1)
    if job_id is None:
        launcher.kill()
        return {"ok": False, "problems": [f"no job submitted: {open(log_path).read()[-2000:]}"]}
    print(f"soak: job {job_id}: {rest.base}/#/job/running/{job_id}", file=out, flush=True)
    # the job reads RUNNING while its tasks still wait for slots: trickle once they all run
    tasks: dict = {}
    while time.monotonic() < deadline and launcher.poll() is None:
        try:
            tasks = {v["name"][:60]: v["status"] for v in rest.call(f"/jobs/{job_id}")["vertices"]}
        except (OSError, ValueError, KeyError):
            tasks = {}
        # (the bounded build-time sources -- registry, schedule -- may have FINISHED already)
        if "RUNNING" in tasks.values() and set(tasks.values()) <= {"RUNNING", "FINISHED"}:
            break
        time.sleep(1)
    else:
        others = [j for j in rest.call("/jobs/overview")["jobs"] if j["jid"] != job_id and j["state"] == "RUNNING"]
        launcher.send_signal(signal.SIGINT)
        return {"ok": False, "problems": [f"the job's tasks did not all start: {tasks}; "
                                          f"other jobs running on the cluster: {[j['jid'] for j in others]}"]}

    from confluent_kafka import Producer
    producer = Producer(kafka_client.client_config(bootstrap, **{"acks": "all", "linger.ms": 20}))
    pids = {"jobmanager": _pid_file(os.path.join(env["RUN_DIR"], "flink-jobmanager.pid")),
            "taskmanager": _pid_file(os.path.join(env["RUN_DIR"], "flink-taskmanager.pid")),
            "launcher": launcher.pid}
    samples: list[Sample] = []
    started = time.monotonic()
    duration = minutes * 60
    sent = 0
    next_sample = started + every_s
    last_event_ms = 0

    def inject(topic: str, lines) -> int:
        items = ((None, line.encode("utf-8"), last_event_ms, None) for line in lines)
        return kafka_client.produce_all(producer, topic, items)

    def sample() -> Sample:
        try:
            state = rest.state(job_id)
            counters = rest.counters(job_id) if state == "RUNNING" else {}
        except (OSError, ValueError, KeyError):
            state, counters = "UNREACHABLE", {}
        # Also as Prometheus has them: in one CI session Flink's REST API showed none of the
        # job's counters for its whole run while its Prometheus reporter exported them all
        # (the job read and wrote everything); each counter is the larger of the two views.
        for name, value in prometheus.counters(job_id).items():
            counters[name] = max(counters.get(name, 0), value)
        restarts = prometheus.value(f'max(flink_jobmanager_job_numRestarts{{job_id="{job_id}"}})')
        # (sources that have finished report Long.MAX; an idle source keeps its last watermark,
        # which Flink leaves out downstream: the job's event time is its operators')
        watermark = prometheus.value('min(flink_taskmanager_job_task_operator_currentOutputWatermark'
                                     '{operator_name!~"Source.*"} > 0 < 9e18)')
        rss = {name: rss_mb(pid) for name, pid in pids.items() if pid}
        rss["python_workers"] = sum(rss_mb(pid) for pid in python_workers(env["INFRA_FLINK_CONF_DIR"]))
        return Sample(time.monotonic() - started, sent,
                      sum(v for k, v in counters.items() if k.startswith("read.")),
                      counters.get("emitted.follows", 0), counters.get("emitted.alerts", 0),
                      counters.get("emitted.dead_letters", 0), state,
                      None if restarts is None else int(restarts),
                      prometheus.value("max(flink_taskmanager_job_task_operator_KafkaSourceReader_KafkaConsumer_records_lag_max)"),
                      None if watermark is None or not last_event_ms else (last_event_ms - watermark) / 1000, rss)

    try:
        while time.monotonic() - started < duration:
            due = int(len(plan) * min(1.0, (time.monotonic() - started) / (duration * 0.9)))
            while sent < due:
                ms, topic, line = plan[sent]
                producer.produce(topic, value=line if isinstance(line, bytes) else line.encode("utf-8"), timestamp=kafka_client.create_time_ms(ms) or 0)
                last_event_ms = max(last_event_ms, ms)
                sent += 1
            producer.poll(0)
            if launcher.poll() is not None:
                problems.append(f"the launcher exited ({launcher.returncode}) while the job should run")
                break
            if time.monotonic() >= next_sample:
                producer.flush(30)
                samples.append(sample())
                print(samples[-1].line(), file=out, flush=True)
                if on_sample is not None:
                    on_sample(samples[-1], inject)
                if samples[-1].state != "RUNNING":
                    problems.append(f"job {samples[-1].state} at {samples[-1].t_s / 60:.1f} min")
                next_sample += every_s
            time.sleep(0.2)
        producer.flush(60)
        # every event produced is read by the job before the end (its read.* counters)
        drain_until = time.monotonic() + max(120.0, every_s)
        while time.monotonic() < drain_until and launcher.poll() is None:
            last = sample()
            if last.read >= sent:
                break
            time.sleep(5)
        samples.append(sample())
        print(samples[-1].line(), file=out, flush=True)
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)     # Ctrl-C: the launcher cancels the job
            try:
                launcher.wait(timeout=180)
            except subprocess.TimeoutExpired:
                launcher.kill()
                problems.append("the launcher did not end within 180 s of Ctrl-C")
        launcher_log.close()
        try:
            if rest.state(job_id) not in ("CANCELED", "FINISHED"):
                rest.cancel(job_id)
        except (OSError, ValueError, KeyError):
            pass

    final = samples[-1] if samples else None
    log = open(log_path).read()
    if "Traceback" in log:
        problems.append("a traceback in the launcher's output: " + log[log.index("Traceback"):][:800])
    if launcher.returncode != 130:   # what the launcher exits with after Ctrl-C, the summary written
        problems.append(f"the launcher exited {launcher.returncode}, not 130 (interrupted, summary written)")
    if final is None or final.read < sent:
        problems.append(f"the job read {final.read if final else 0} of {sent} events")
    if final is not None and not final.follows and not final.alerts:
        problems.append("no follow and no alert emitted")
    if final is not None and final.restarts:
        problems.append(f"the job restarted {final.restarts} times")
    report = {"ok": not problems, "problems": problems, "job_id": job_id, "minutes": minutes, "events": sent,
              "launcher_exit": launcher.returncode, "samples": [dataclasses.asdict(s) for s in samples],
              "launcher_log": log_path}
    print(f"soak: {'OK' if report['ok'] else 'FAILED'}: launcher exit {launcher.returncode}, "
          f"{sent} events in, {final.read if final else 0} read, "
          f"{final.follows if final else 0} follows, {final.alerts if final else 0} alerts out"
          + "".join(f"\n  problem: {p}" for p in problems), file=out, flush=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the job runs (default 30)")
    parser.add_argument("--users", type=int, default=60, help="users of the trickled world (default 60)")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--prometheus", default=None, help="Prometheus URL (default the instance's)")
    parser.add_argument("--workdir", default=None, help="where the world, outputs and launcher log go")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.users <= 0 or args.every <= 0:
        parser.error("--minutes, --users and --every must be > 0")
    return 0 if soak(args.minutes, args.users, args.every, args.prometheus, args.workdir)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

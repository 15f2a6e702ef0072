"""``python -m pipelines.run --engine flink``: the same steps as a native Flink job (``flink_job``).

The launcher side, in the project venv (the job itself runs in the PyFlink venv):

1. the run's config is checked as for Beam (``core.config``: the same exit-2 one-liners);
   the output folders are prepared as for Beam; for ``--source kafka`` the users topic is
   snapshotted (``kafka_client.snapshot_topic_with_ends``) into a file the job reads at build
   time, and the end offsets it stopped at are where the job's live read of the users topic
   starts (``JobSettings.users_live_from``: the settings changes);
2. the config is written as JSON (``flink_job.config``) and ``core/ schemas/ flink_job/``
   are packed into one zip for ``-pyfs`` (the workers import them from it);
3. ``$FLINK_HOME/bin/flink run -m MASTER -d -pym flink_job -pyfs ZIP -pyclientexec PY
   -pyexec PY --config FILE`` submits it (``FLINK_HOME``, ``PYFLINK_PYTHON`` and
   ``FLINK_JOB_JARS`` as ``infra/env.sh`` exports them; read from there when absent);
4. the job's web UI address is printed, and the job is watched over Flink's REST API until
   it ends; Ctrl-C cancels it. On success ``run_summary.json`` is written (engine
   ``flink``, the job id and URL, stage counts from the outputs as for Beam) and the exit
   status is 0; a FAILED job exits 1 with Flink's root exception as its one-line reason.

Counts: Flink's REST API forgets a job's metrics once it has finished, so the ``tapfollow``
counters are the last values polled while it ran (``counters``, under ``counters_note``);
the summary's ``read`` counts are the lines of the input files as the job's own reader
reads them (``core.lines``), or, from Kafka, the messages the topics held at launch
(``--flink_kafka_stop_at_latest``: what the bounded read consumes), else its counters.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from typing import Callable, Optional

from core.config import ConfigError, RunConfig
from core.input_files import EVENT_KINDS, input_files, kafka_origins, origin_names
from core.lines import iter_lines
from flink_job.config import JobSettings, write_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MASTER = "127.0.0.1:8081"
JOB_ENTRY = "flink_job"                      # the module ``flink run -pym`` runs
JOB_PACKAGES = ("core", "schemas", "flink_job")
WORK_DIR = ".flink-job"                      # under --output: config, zip, users snapshot (hidden)
DEFAULT_STREAMING_CHECKPOINT_MS = 10_000
TERMINAL = ("FINISHED", "FAILED", "CANCELED", "SUSPENDED")
NOT_INSTALLED = "PyFlink is not installed: run make infra-up"
METRICS_GROUP = "tapfollow."
# Flink shows a metric name's dots as underscores (a dot separates its scope): the core's
# "<stage>.<what>" counters are given their dot back by their stage.
DOTTED_STAGES = ("read", "parsed", "rejected", "future", "emitted", "duplicates")
ENV_SCRIPT = os.path.join(REPO, "infra", "env.sh")


@dataclasses.dataclass(frozen=True)
class FlinkInstall:
    flink_home: str
    python: str           # the PyFlink venv's interpreter: the job's client and its workers
    jars: tuple           # connector jars the job adds (Kafka, Parquet + Hadoop)
    conf_dir: str


def _from_env_sh(names: tuple, script: str) -> dict:
    """The values ``script`` (``infra/env.sh``) gives ``names`` (the launcher is often run without it sourced)."""
    if not os.path.exists(script):
        return {}
    printed = "; ".join(f'printf "%s\\0" "${{{name}:-}}"' for name in names)
    try:
        out = subprocess.run(["bash", "-c", f'source "{script}" >/dev/null 2>&1; {printed}'],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(zip(names, out.split("\0")))


def flink_install(environ=os.environ, env_script: str = ENV_SCRIPT) -> FlinkInstall:
    """Where Flink and the PyFlink venv are: the environment ``infra/env.sh`` exports, else
    ``infra/env.sh`` itself; ConfigError (:data:`NOT_INSTALLED`) when they are not there."""
    names = ("FLINK_HOME", "PYFLINK_PYTHON", "FLINK_JOB_JARS", "INFRA_CACHE")
    values = {name: environ.get(name, "") for name in names}
    if not all(values[name] for name in names[:2]):
        values = {**_from_env_sh(names, env_script), **{k: v for k, v in values.items() if v}}
    flink_home, python = values.get("FLINK_HOME", ""), values.get("PYFLINK_PYTHON", "")
    if not (flink_home and os.access(os.path.join(flink_home, "bin", "flink"), os.X_OK)
            and python and os.access(python, os.X_OK)):
        raise ConfigError(NOT_INSTALLED)
    jars = tuple(jar for jar in values.get("FLINK_JOB_JARS", "").split(":") if jar)
    conf_dir = environ.get("FLINK_CONF_DIR") or os.path.join(
        values.get("INFRA_CACHE") or os.path.join(REPO, "infra", ".cache"), "conf", "flink")
    return FlinkInstall(flink_home, python, jars, conf_dir)


def job_settings(options: dict, cfg: RunConfig, jars: tuple, users_file: Optional[str],
                 users_live_from: Optional[tuple] = None) -> JobSettings:
    """The job's own settings from the launcher's flags (``--parallelism`` -1: the cluster's)."""
    parallelism = options.get("parallelism")
    interval = options.get("checkpointing_interval")
    if interval is None and cfg.streaming:
        interval = DEFAULT_STREAMING_CHECKPOINT_MS
    job_id = uuid.uuid4().hex[:12]
    return JobSettings(
        job_name=f"tapfollow-{cfg.source}-{job_id}",
        parallelism=parallelism if parallelism and parallelism > 0 else None,
        checkpointing_interval_ms=interval,
        state_backend=options.get("flink_state_backend") or "hashmap",
        kafka_stop_at_latest=bool(options.get("flink_kafka_stop_at_latest")),
        users_file=users_file,
        users_live_from=users_live_from,
        jars=jars,
        transactional_id_prefix=f"tapfollow-{job_id}")


def master_of(options: dict) -> str:
    """``--flink_master`` as host:port (Beam's default ``[auto]``: the local session cluster)."""
    master = options.get("flink_master") or "[auto]"
    if master.startswith("["):
        return DEFAULT_MASTER
    return re.sub(r"^https?://", "", master).rstrip("/")


def pack_job(zip_path: str) -> str:
    """``core/ schemas/ flink_job/`` (their .py files) in one zip for ``-pyfs``."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in JOB_PACKAGES:
            for folder, dirs, files in os.walk(os.path.join(REPO, package)):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(files):
                    if name.endswith(".py") or name.endswith(".json"):
                        path = os.path.join(folder, name)
                        archive.write(path, os.path.relpath(path, REPO))
    return zip_path


def topic_sizes(bootstrap: str, topics) -> dict[str, int]:
    """Messages each topic holds now (end minus start offsets, over its partitions): what a
    read bounded at the latest offsets consumes, when no transaction markers sit in between."""
    from confluent_kafka import TopicPartition

    from kafka_client import consumer, partitions_of
    client = consumer(bootstrap)
    try:
        sizes = {}
        for topic in topics:
            ranges = [client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                      for p in partitions_of(client, topic)]
            sizes[topic] = sum(end - start for start, end in ranges)
        return sizes
    finally:
        client.close()


def users_snapshot(bootstrap: str, path: str) -> tuple[int, tuple]:
    """The users topic's snapshot into ``path`` (one line per message); (its lines, where the
    job's live read of the topic starts: ``(partition, offset)`` pairs, the end offsets the
    snapshot stopped at, so the live read continues it exactly). Offsets, not a time: a
    message's CreateTime is its event time (a change's ``updated_at``), which a time-based
    start would compare with the launch's clock and could skip."""
    from kafka_client import snapshot_topic_with_ends
    lines, ends = snapshot_topic_with_ends(bootstrap, "users")
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.writelines(line.replace("\n", " ") + "\n" for line in lines)
    return len(lines), tuple(sorted(ends.items()))


def count_input_lines(cfg: RunConfig, users_lines: Optional[int]) -> dict[str, int]:
    """Lines per input file as the job's reader reads them (``core.lines.iter_lines``); from
    Kafka, the users snapshot's lines."""
    if cfg.source == "kafka":
        return {"users": users_lines or 0}
    files = input_files(cfg.input_dir)
    return {kind: sum(1 for path in paths for _ in iter_lines(path)) for kind, paths in files.items()}


def core_counter_name(flink_name: str) -> str:
    """``emitted_alerts`` (as Flink's REST API shows it) -> ``emitted.alerts`` (the core's name)."""
    stage, sep, rest = flink_name.partition("_")
    return f"{stage}.{rest}" if sep and stage in DOTTED_STAGES else flink_name


def failure_reason(stacktrace: str) -> str:
    """One line from a failed job's root exception: a Python error's own line (the last of its
    traceback, e.g. ``FileNotFoundError: ...``), else Java's innermost ``Caused by``."""
    lines = [line.strip() for line in stacktrace.splitlines() if line.strip()]
    python = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if python:
        frames = lines[python[-1] + 1:]
        end = next((i for i, line in enumerate(frames) if line.startswith("at ")), len(frames))
        error = [line for line in frames[:end] if not line.startswith(("File ", "^", "~"))]
        if error:
            return error[-1][:500]
    causes = [line for line in lines if line.startswith("Caused by:")]
    return (causes[-1] if causes else lines[0] if lines else "the job failed")[:500]


class FlinkRest:
    """The few calls of Flink's REST API the launcher needs."""

    def __init__(self, master: str, timeout_s: float = 10.0):
        self.base = f"http://{master}"
        self.timeout_s = timeout_s

    def call(self, path: str, method: str = "GET", body: Optional[dict] = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, method=method, data=data,
                                         headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            body = response.read()
        return json.loads(body) if body else None

    def state(self, job_id: str) -> str:
        return self.call(f"/jobs/{job_id}")["state"]

    def cancel(self, job_id: str) -> None:
        self.call(f"/jobs/{job_id}?mode=cancel", method="PATCH")

    def stop_with_savepoint(self, job_id: str, target_dir: Optional[str] = None, drain: bool = False,
                            timeout_s: float = 600.0, poll_s: float = 1.0, sleep: Callable = time.sleep) -> str:
        """Stop the job with a savepoint (Flink's ``stop``: sources stop, a synchronous
        savepoint is taken, sinks commit, the job ends FINISHED); the savepoint's path.
        ``drain``: send the maximum watermark first (every timer fires: an end of input).
        RuntimeError with Flink's reason if the savepoint fails."""
        body = {"drain": drain}
        if target_dir:
            body["targetDirectory"] = target_dir
        trigger = self.call(f"/jobs/{job_id}/stop", method="POST", body=body)["request-id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.call(f"/jobs/{job_id}/savepoints/{trigger}")
            if status["status"]["id"] == "COMPLETED":
                operation = status.get("operation") or {}
                if operation.get("failure-cause"):
                    raise RuntimeError("stop with savepoint failed: "
                                       + failure_reason(operation["failure-cause"].get("stack-trace", "")))
                return operation["location"]
            sleep(poll_s)
        raise RuntimeError(f"stop with savepoint of job {job_id}: no savepoint after {timeout_s:.0f} s")

    def status(self, job_id: str) -> dict:
        """What an operator asks of a job: state, name, parallelism, checkpoints, restored from."""
        job = self.call(f"/jobs/{job_id}")
        try:
            checkpoints = self.call(f"/jobs/{job_id}/checkpoints")
        except (OSError, ValueError):
            checkpoints = {}
        latest = checkpoints.get("latest") or {}
        completed = latest.get("completed") or {}
        restored = latest.get("restored") or {}
        return {"job_id": job_id, "name": job.get("name"), "state": job["state"],
                "parallelism": max((v["parallelism"] for v in job.get("vertices", [])), default=None),
                "checkpoints": checkpoints.get("counts", {}),
                "last_checkpoint": completed.get("external_path"),
                "last_savepoint": (latest.get("savepoint") or {}).get("external_path"),
                "restored_from": restored.get("external_path"),
                "url": f"{self.base}/#/job/{'running' if job['state'] not in TERMINAL else 'completed'}/{job_id}"}

    def failure(self, job_id: str) -> str:
        """The job's root exception, first line."""
        try:
            exceptions = self.call(f"/jobs/{job_id}/exceptions")
        except (OSError, ValueError):
            return "the job failed (Flink's REST API gave no reason)"
        root = (exceptions.get("exceptionHistory") or {}).get("entries") or []
        text = root[0].get("stacktrace") if root else exceptions.get("root-exception")
        return failure_reason(text or "")

    def counters(self, job_id: str) -> dict[str, int]:
        """Every ``tapfollow`` counter of a running job, summed over operators and subtasks."""
        totals: dict[str, int] = collections.Counter()
        for vertex in self.call(f"/jobs/{job_id}")["vertices"]:
            base = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"
            names = [m["id"] for m in self.call(base) if METRICS_GROUP in m["id"]]
            for start in range(0, len(names), 40):
                chunk = ",".join(names[start:start + 40])
                for metric in self.call(f"{base}?get={chunk}&agg=sum"):
                    totals[core_counter_name(metric["id"].split(METRICS_GROUP, 1)[1])] += \
                        int(float(metric.get("sum", 0)))
        return dict(sorted(totals.items()))


def submit_command(install: FlinkInstall, master: str, entry: str, zip_path: str, config_path: str,
                   savepoint: Optional[str] = None) -> list[str]:
    """``flink run`` of the job, detached. ``entry``: a module (``-pym``) or a script (``-py``);
    ``savepoint``: start from it (``-s``; every stateful operator has a stable uid)."""
    run = [os.path.join(install.flink_home, "bin", "flink"), "run", "-m", master, "-d"]
    if savepoint:
        run += ["-s", savepoint]
    run += ["-py", entry] if entry.endswith(".py") else ["-pym", entry]
    return run + ["-pyfs", zip_path, "-pyclientexec", install.python, "-pyexec", install.python,
                  "--config", config_path]


def submit(command: list[str], install: FlinkInstall, log_path: str) -> str:
    """Run ``flink run``; the job id it printed. ConfigError with its last lines if none."""
    env = dict(os.environ, FLINK_CONF_DIR=install.conf_dir)
    env["PATH"] = os.path.dirname(install.python) + os.pathsep + env.get("PATH", "")
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=600)
        log.write(done.stdout)
    found = re.search(r"JobID ([0-9a-f]{32})", done.stdout)
    if done.returncode != 0 or not found:
        tail = [line for line in done.stdout.splitlines() if line.strip()][-12:]
        reason = next((line for line in reversed(tail) if "Error" in line or "Exception" in line),
                      tail[-1] if tail else "no output")
        raise RuntimeError(f"flink run failed (exit {done.returncode}): {reason.strip()[:400]} (log: {log_path})")
    return found.group(1)


def watch(rest: FlinkRest, job_id: str, poll_s: float = 1.0, counters_every_s: float = 3.0,
          sleep: Callable = time.sleep) -> tuple[str, dict]:
    """Wait for the job's end: (final state, the last counters seen while it ran). Ctrl-C cancels it."""
    counters: dict = {}
    last_counters = 0.0
    try:
        while True:
            try:
                state = rest.state(job_id)
            except (OSError, ValueError, KeyError):
                state = "UNKNOWN"
            if state in TERMINAL:
                return state, counters
            if state == "RUNNING" and time.monotonic() - last_counters >= counters_every_s:
                try:
                    counters = rest.counters(job_id) or counters
                except (OSError, ValueError, KeyError):
                    pass
                last_counters = time.monotonic()
            sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\npipelines.run: cancelling Flink job {job_id}", file=sys.stderr)
        rest.cancel(job_id)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if rest.state(job_id) in TERMINAL:
                    break
            except (OSError, ValueError, KeyError):
                pass
            sleep(poll_s)
        raise


def launch(cfg: RunConfig, options: dict, started: float, entry: str = JOB_ENTRY,
           environ=os.environ) -> int:
    """Submit the job, watch it, write the summary; the exit status. ``entry`` is the job's
    module or script: ``flink_job`` unless a test passes its own (code only, never a flag)."""
    from pipelines.run import OUTPUT_FOLDERS
    from pipelines.summary import print_summary, write_run_summary
    try:
        install = flink_install(environ)
    except ConfigError as exc:
        print(f"pipelines.run: error: {exc}", file=sys.stderr)
        return 2
    master = master_of(options)
    rest = FlinkRest(master)
    try:
        rest.call("/overview")
    except (OSError, ValueError) as exc:
        # before anything is written or submitted: `flink run` would retry for a minute first
        print(f"pipelines.run: error: no Flink cluster answers at http://{master} ({exc}); "
              "start one with make infra-up, or give --flink_master HOST:PORT", file=sys.stderr)
        return 2
    work = os.path.join(os.path.abspath(cfg.output_dir), WORK_DIR)
    os.makedirs(work, exist_ok=True)
    for folder in OUTPUT_FOLDERS:   # Flink's sinks create a folder only when they write to it
        if not (cfg.results_sink == "kafka" and folder in ("follows", "alerts")):
            os.makedirs(os.path.join(cfg.output_dir, folder), exist_ok=True)
    cfg = dataclasses.replace(cfg, output_dir=os.path.abspath(cfg.output_dir),
                              input_dir=os.path.abspath(cfg.input_dir) if cfg.input_dir else None)
    users_file, users_lines, users_live_from, event_sizes = None, None, None, None
    if cfg.source == "kafka":
        users_file = os.path.join(work, "users.snapshot.jsonl")
        users_lines, users_live_from = users_snapshot(cfg.kafka_bootstrap_servers, users_file)
        if options.get("flink_kafka_stop_at_latest"):
            event_sizes = topic_sizes(cfg.kafka_bootstrap_servers, EVENT_KINDS)
    settings = job_settings(options, cfg, install.jars, users_file, users_live_from)
    config_path = os.path.join(work, "job-config.json")
    write_config(config_path, cfg, settings)
    zip_path = pack_job(os.path.join(work, "tapfollow-job.zip"))
    if entry != JOB_ENTRY:
        entry = os.path.abspath(entry)
    t0 = time.monotonic()
    savepoint = options.get("flink_savepoint")
    try:
        job_id = submit(submit_command(install, master, entry, zip_path, config_path, savepoint), install,
                        os.path.join(work, "flink-run.log"))
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"pipelines.run: error: {exc}", file=sys.stderr)
        return 1
    print(f"Flink job {job_id} ({settings.job_name}): http://{master}/#/job/running/{job_id}", file=sys.stderr)
    if options.get("flink_detached"):
        # the job runs on; `python -m pipelines.flink_engine status|stop JOB_ID` operate it
        print(job_id)
        return 0
    interrupted = False
    try:
        state, counters = watch(rest, job_id)
    except KeyboardInterrupt:
        interrupted, state, counters = True, "CANCELED", {}
    done_s = time.monotonic() - t0
    url = f"http://{master}/#/job/completed/{job_id}"
    if state == "FAILED":
        print(f"pipelines.run: error: Flink job {job_id} failed: {rest.failure(job_id)} ({url})", file=sys.stderr)
        return 1
    if state not in ("FINISHED", "CANCELED"):
        print(f"pipelines.run: error: Flink job {job_id} ended {state} ({url})", file=sys.stderr)
        return 1
    origins = kafka_origins() if cfg.source == "kafka" else origin_names(input_files(cfg.input_dir))
    lines_read = count_input_lines(cfg, users_lines)
    if cfg.source == "kafka":  # what the bounded read consumed, else what the counters saw
        lines_read.update(event_sizes or {kind: counters.get(f"read.{kind}", 0) for kind in EVENT_KINDS})
    summary = write_run_summary(
        cfg, lines_read, origins, state=state, runner=f"flink@{master}", counters=counters or None,
        wall_time_s=time.time() - started, engine="flink",
        extra={"flink_job_id": job_id, "flink_job_url": url, "flink_job_name": settings.job_name,
               "submit_to_done_s": round(done_s, 3),
               "counters_note": "the last tapfollow counters Flink's REST API showed while the job ran "
                                "(it forgets them when the job ends): a lower bound"})
    print_summary(summary)
    print(f"Flink job {job_id} {state} in {done_s:.1f} s: {url}", file=sys.stderr)
    return 130 if interrupted else 0


# ---- the job's lifecycle: ``python -m pipelines.flink_engine COMMAND`` --------------------

LIFECYCLE_USAGE = """python -m pipelines.flink_engine COMMAND [--flink_master HOST:PORT] ...

  status JOB_ID                     state, parallelism, checkpoints, last savepoint, restored from (JSON)
  stop JOB_ID [--savepoint_dir D]   stop with a savepoint (the job ends FINISHED); prints its path
       [--drain]                    ... after the maximum watermark: every pending timer fires (an end of input)
  upgrade JOB_ID [--savepoint_dir D] -- RUN_ARGS...
                                    stop with a savepoint, then submit `pipelines.run RUN_ARGS` from it,
                                    detached (new code, new parameters or --parallelism: a rescale)

Submit detached: `python -m pipelines.run --engine flink ... --flink_detached` (prints the job id);
resume from a savepoint: the same with `--flink_savepoint PATH`."""


def lifecycle(argv, run_job: Optional[Callable] = None) -> int:
    """The lifecycle commands (:data:`LIFECYCLE_USAGE`); the exit status. ``run_job``: the
    launcher's ``pipelines.run.run`` (tests pass their own, code only)."""
    import argparse
    argv = list(argv)
    run_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, run_args = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(prog="python -m pipelines.flink_engine", usage=LIFECYCLE_USAGE)
    parser.add_argument("command", choices=("status", "stop", "upgrade"))
    parser.add_argument("job_id")
    parser.add_argument("--flink_master", default=None)
    parser.add_argument("--savepoint_dir", default=None, help="default: the cluster's savepoint dir")
    parser.add_argument("--drain", action="store_true")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[0-9a-f]{32}", args.job_id):
        parser.error(f"job id {args.job_id!r}: a Flink job id is 32 hex digits")
    if args.command == "upgrade" and not run_args:
        parser.error("upgrade: give the new job's pipelines.run arguments after --")
    if any(a.startswith("--flink_savepoint") for a in run_args):
        parser.error("upgrade: the new job starts from the savepoint it takes; give no --flink_savepoint")
    master = master_of({"flink_master": args.flink_master})
    rest = FlinkRest(master)
    try:
        if args.command == "status":
            print(json.dumps(rest.status(args.job_id), indent=2, sort_keys=True))
            return 0
        savepoint_dir = os.path.abspath(args.savepoint_dir) if args.savepoint_dir else None
        location = rest.stop_with_savepoint(args.job_id, savepoint_dir, drain=args.drain)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        print(f"pipelines.flink_engine: error: {args.command} {args.job_id} at {master}: {exc}", file=sys.stderr)
        return 1
    print(f"Flink job {args.job_id} stopped with savepoint {location}", file=sys.stderr)
    if args.command == "stop":
        print(location)
        return 0
    if run_job is None:
        from pipelines.run import run as run_job
    given = [a for a in run_args if a != "--flink_detached"]
    return run_job(given + ["--flink_master", master, "--flink_savepoint", location, "--flink_detached"])


if __name__ == "__main__":
    sys.exit(lifecycle(sys.argv[1:]))

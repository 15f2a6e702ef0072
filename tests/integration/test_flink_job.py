"""The native Flink job (``python -m pipelines.run --engine flink``) on the session cluster.

Every run here is the launcher as a user runs it (``pipelines.run.run``) with the test-only
job entry ``tests/flink/drivers/job_no_noise.py`` (the statistics' noise off, code only), on
a small generated world, against the Beam reference: ``pipelines.run.build`` on DirectRunner
with ``NoNoiseForTests`` (``tools.same_outputs.run_once``, whose folder fingerprints are the
comparison of every JSON Lines folder).

a. BATCH from files: follows, alerts, dead letters and the ledger equal Beam's; the released
   statistics have the same (window, cell, metric) keys and, noise off, the same values.
b. STREAMING from Kafka (the world loaded with ``kafka_client``, a bounded read up to the
   offsets at job start), follows and alerts to Kafka exactly once (read ``read_committed``),
   the rest to files: equal to (a).
c. the TaskManager SIGKILLed once the first checkpoint has completed, then restarted: the
   job restores from its checkpoint and finishes; what it committed equals the no-fault run,
   no follow or alert lost or duplicated, no ledger row duplicated.
d. ``--parallelism 2`` equals parallelism 1.

Run locally with ``INFRA_KEEP_UP=1`` to keep the services up between runs.
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import os
import threading
import time

import pyarrow.parquet as pq
import pytest

import kafka_client
from core.alerts import apply_retractions
from pipelines import run as launcher
from pipelines.sinks import read_jsonl_folder
from schemas.records import Alert
from tests.integration.conftest import slow_machine
from tests.integration.test_pipeline_on_runner import _reset_topics
from tools.same_outputs import folder_fingerprint, run_once

pytestmark = pytest.mark.flink

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NO_NOISE_ENTRY = os.path.join(REPO, "tests", "flink", "drivers", "job_no_noise.py")
WORLD = dict(users=60, hours=3, seed=7)
JSONL = ("follows", "alerts", "deadletter", "privacy_ledger")


def _marketing(out: str) -> dict:
    """(window start in epoch s, cell, metric) -> value. Beam writes its times as
    ``timestamp[ms, UTC]``, Flink's Parquet writer as UTC ``timestamp[ms]`` without the flag."""
    rows = {}
    folder = os.path.join(out, "marketing")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".parquet") and not name.startswith("."):
            for row in pq.read_table(os.path.join(folder, name)).to_pylist():
                start = row["window_start"]
                epoch = (start if start.tzinfo else start.replace(tzinfo=dt.timezone.utc)).timestamp()
                key = (epoch, row["h3_cell"], row["metric"])
                assert key not in rows, f"statistic {key} released twice"
                rows[key] = row["value"]
    return rows


def _summary(out: str) -> dict:
    with open(os.path.join(out, "run_summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def _launch(*args: str) -> None:
    status = launcher.run(list(args), flink_entry=NO_NOISE_ENTRY)
    assert status == 0, f"pipelines.run --engine flink exited {status}"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    from synthetic.world import write_world
    path = str(tmp_path_factory.mktemp("flink-world"))
    write_world(path, **WORLD)
    return path


@pytest.fixture(scope="module")
def beam(world, tmp_path_factory) -> str:
    """The reference: Beam's own wiring on DirectRunner, batch, noise off."""
    out = str(tmp_path_factory.mktemp("beam-batch"))
    prints = run_once(world, out, streaming=False)
    assert all(prints[folder]["records"] for folder in ("follows", "alerts", "privacy_ledger", "marketing")), prints
    return out


@pytest.fixture(scope="module")
def flink_batch(infra, world, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("flink-batch"))
    t0 = time.monotonic()
    _launch("--engine", "flink", "--flink_master", infra.flink_master, "--input", world, "--output", out)
    elapsed = time.monotonic() - t0
    summary = _summary(out)
    lines = sum(summary["stages"]["read"].values())
    print(f"Flink batch: {lines} lines, launcher {elapsed:.1f} s, submit-to-done {summary['submit_to_done_s']:.1f} s, "
          f"{lines / summary['submit_to_done_s']:.0f} lines/s")
    return out


def assert_same_outputs(got: str, expected: str, folders=JSONL) -> None:
    for folder in folders:
        assert folder_fingerprint(os.path.join(got, folder)) == folder_fingerprint(os.path.join(expected, folder)), \
            folder
    got_stats, expected_stats = _marketing(got), _marketing(expected)
    assert sorted(got_stats) == sorted(expected_stats)
    assert got_stats == expected_stats


def test_batch_from_files_equals_beam(flink_batch, beam, infra):
    summary = _summary(flink_batch)
    assert (summary["engine"], summary["state"], summary["mode"]) == ("flink", "FINISHED", "batch")
    job = infra.rest(f"/jobs/{summary['flink_job_id']}")
    assert job["state"] == "FINISHED" and job["name"] == summary["flink_job_name"]
    assert summary["stages"]["read"] == _lines_of(summary["input"])
    assert_same_outputs(flink_batch, beam)


def _lines_of(world: str) -> dict:
    counts = {}
    for name in sorted(os.listdir(world)):
        if name.endswith(".jsonl"):
            with open(os.path.join(world, name), encoding="utf-8") as handle:
                counts[name[:-len(".jsonl")]] = sum(1 for _ in handle)
    return counts


def test_parallelism_2_equals_parallelism_1(flink_batch, infra, world, tmp_path):
    out = str(tmp_path / "p2")
    _launch("--engine", "flink", "--flink_master", infra.flink_master, "--parallelism", "2",
            "--input", world, "--output", out)
    job = infra.rest(f"/jobs/{_summary(out)['flink_job_id']}")
    assert max(v["parallelism"] for v in job["vertices"]) == 2
    assert_same_outputs(out, flink_batch)


# ---- Kafka ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kafka_world(infra, world) -> str:
    _reset_topics(infra.bootstrap)
    counts = kafka_client.load_world(world, infra.bootstrap)
    assert all(counts.get(kind) for kind in ("users", "pings", "taps", "tweets")), counts
    return world


def _topic_rows(topic: str, bootstrap: str) -> list[dict]:
    """Every committed message of ``topic`` (``kafka_client`` reads ``read_committed``)."""
    return [json.loads(value) for _ts, value in kafka_client.consume(topic, bootstrap, None, timeout_s=3)]


def _kafka_args(infra, world: str, out: str, *extra: str) -> list[str]:
    return ["--engine", "flink", "--flink_master", infra.flink_master, "--source", "kafka",
            "--flink_kafka_stop_at_latest", "--results_sink", "kafka",
            "--kafka_bootstrap_servers", infra.bootstrap,
            "--input", world,  # the world.json: the DP release schedule, as the Beam Kafka run
            "--output", out, *extra]


def _assert_kafka_run_equals(out: str, follows: list[dict], alerts: list[dict], expected: str) -> None:
    canonical = lambda rows: sorted(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows)  # noqa: E731
    assert canonical(follows) == canonical(read_jsonl_folder(os.path.join(expected, "follows")))
    kept = [a._asdict() for a in apply_retractions(Alert(**row) for row in alerts)]
    assert canonical(kept) == canonical(read_jsonl_folder(os.path.join(expected, "alerts")))
    assert_same_outputs(out, expected, folders=("deadletter", "privacy_ledger"))


@pytest.fixture(scope="module")
def flink_kafka(infra, kafka_world, tmp_path_factory):
    """The no-fault streaming run: (output dir, follows, alerts as consumed)."""
    out = str(tmp_path_factory.mktemp("flink-kafka"))
    before = {topic: len(_topic_rows(topic, infra.bootstrap)) for topic in ("follows", "alerts")}
    assert before == {"follows": 0, "alerts": 0}, before
    _launch(*_kafka_args(infra, kafka_world, out, "--checkpointing_interval", "2000"))
    return out, _topic_rows("follows", infra.bootstrap), _topic_rows("alerts", infra.bootstrap)


def test_streaming_from_kafka_equals_batch(flink_kafka, flink_batch):
    out, follows, alerts = flink_kafka
    summary = _summary(out)
    assert (summary["engine"], summary["state"], summary["mode"], summary["source"]) == \
        ("flink", "FINISHED", "streaming", "kafka")
    _assert_kafka_run_equals(out, follows, alerts, flink_batch)


def _first_checkpoint_then_kill(infra, found: dict, stop: threading.Event) -> None:
    """Wait for the new job's first completed checkpoint, then SIGKILL the TaskManager (once)."""
    deadline = time.monotonic() + slow_machine(120)
    while not stop.is_set() and time.monotonic() < deadline:
        jobs = [j for j in infra.rest("/jobs/overview")["jobs"] if j["jid"] not in found["before"]]
        if jobs:
            job = jobs[0]["jid"]
            found["job"] = job
            counts = infra.rest(f"/jobs/{job}/checkpoints")["counts"]
            if counts["completed"] >= 1:
                found["state_at_kill"] = infra.rest(f"/jobs/{job}")["state"]
                found["killed"] = infra.flink("kill-taskmanager")
                return
        time.sleep(0.2)


def test_taskmanager_killed_mid_stream_restores_and_loses_nothing(infra, flink_kafka, kafka_world, tmp_path):
    expected_out, expected_follows, expected_alerts = flink_kafka
    # the topics hold the no-fault run's committed results: this run's come after them
    offsets = {topic: len(_topic_rows(topic, infra.bootstrap)) for topic in ("follows", "alerts")}
    out = str(tmp_path / "fault")
    found = {"before": {j["jid"] for j in infra.rest("/jobs/overview")["jobs"]}}
    stop = threading.Event()
    killer = threading.Thread(target=_first_checkpoint_then_kill, args=(infra, found, stop), daemon=True)
    killer.start()
    try:
        _launch(*_kafka_args(infra, kafka_world, out, "--checkpointing_interval", "1000"))
    finally:
        stop.set()
        killer.join(30)
        if "killed" in found:
            infra.flink("start-taskmanager")
    assert "killed" in found, f"the TaskManager was never killed: {found}"
    assert found["state_at_kill"] == "RUNNING", found
    job = found["job"]
    checkpoints = infra.rest(f"/jobs/{job}/checkpoints")
    restored = (checkpoints.get("latest") or {}).get("restored")
    assert restored is not None, f"job {job} did not restore from a checkpoint: {checkpoints.get('latest')}"
    follows = _topic_rows("follows", infra.bootstrap)[offsets["follows"]:]
    alerts = _topic_rows("alerts", infra.bootstrap)[offsets["alerts"]:]
    ids = collections.Counter(a["alert_id"] for a in alerts)
    assert not [i for i, n in ids.items() if n > 1], "an alert was committed twice"
    assert sorted(ids) == sorted(a["alert_id"] for a in expected_alerts)
    pairs = collections.Counter((f["user_a"], f["user_b"]) for f in follows)
    assert not [p for p, n in pairs.items() if n > 1], "a follow was committed twice"
    assert len(follows) == len(expected_follows)
    ledger = read_jsonl_folder(os.path.join(out, "privacy_ledger"))
    rows = collections.Counter(json.dumps(row, sort_keys=True) for row in ledger)
    assert not [r for r, n in rows.items() if n > 1], "a ledger row was written twice"
    _assert_kafka_run_equals(out, follows, alerts, expected_out)
    print(f"TaskManager killed ({found['killed'].strip()}); job {job} restored from checkpoint "
          f"{restored.get('id')} and finished")

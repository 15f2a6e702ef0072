"""The whole pipeline (``python -m pipelines.run``, unchanged) on a real portable runner.

Beam's Flink job server is not reachable here (infra/README.md), so the runner is
Beam's Prism job service from ``infra/up.sh``, with Kafka in and out through the
cross-language KafkaIO the Flink deployment uses:

* streaming: a generated world is fed into the input topics -- taps and tweets through
  the NFC gateway (``nfc_gateway serve`` with a broker: every tap report POSTed as a
  phone would, the firehose replayed from the file), users and pings with
  ``kafka_client`` -- the pipeline runs
  ``--source kafka --streaming --results_sink kafka`` on Prism, and what reaches the
  ``follows`` and ``alerts`` topics (alerts after applying retractions) is exactly
  the DirectRunner batch run's output on the same files; follows are exactly the
  world's true follows. The privacy ledger and dead letters match too.
* batch: the same pipeline from files on Prism writes exactly what DirectRunner writes.

Streaming on Prism runs with ``--experiments=prism_disable_sdf_split``, which
``pipelines.run`` adds (see ``PRISM_NO_SPLIT`` there: Prism's dynamic splits of a
Kafka read made data late). Each test checks in Prism's job service that its job ran there. The pipeline runs in
a subprocess, as a user runs it (LOOPBACK: the Python worker lives in that process).
The standard topics are deleted and recreated first: ``pipelines.run`` reads and
writes those names, and the broker is shared by the whole session.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions
from apache_beam.portability.api import beam_job_api_pb2 as job_api
from apache_beam.portability.api import beam_job_api_pb2_grpc as job_grpc

import kafka_client
from pipelines.run import PRISM_NO_SPLIT, add_runner_experiments
from pipelines.sinks import read_jsonl_folder
from portal.registry import RegistryWriter
from schemas.proofs import new_keypair
from schemas.records import Alert, User
from tests.integration.conftest import slow_machine, topic_rows, wait_for
from core.alerts import apply_retractions

pytestmark = pytest.mark.flink

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Small on purpose (the suite has 2 cores): 30 users over 2 h still give follows,
# alerts, deleted tweets and released statistics in both hours.
WORLD_ARGS = ["--users", "30", "--hours", "2", "--start", "2026-11-20T17:00:00+09:00"]
STANDARD_TOPICS = ("users", "pings", "taps", "tweets", "alerts", "follows")
COMPARED = ("follows", "alerts", "deadletter", "privacy_ledger")
RUNNING = job_api.JobState.RUNNING
TERMINAL = {job_api.JobState.DONE, job_api.JobState.FAILED, job_api.JobState.CANCELLED,
            job_api.JobState.STOPPED, job_api.JobState.DRAINED, job_api.JobState.UPDATED}


def _cli(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                         text=True, timeout=slow_machine(timeout))
    assert out.returncode == 0, f"{module} {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _canonical(rows) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True, ensure_ascii=False) for row in rows)


def _marketing_keys(out: str) -> list[tuple]:
    rows = pq.ParquetDataset(os.path.join(out, "marketing")).read().select(
        ["window_start", "h3_cell", "metric"]).to_pylist()
    return sorted((str(r["window_start"]), r["h3_cell"], r["metric"]) for r in rows)


def _marketing_hours_written(out: str, hours: set[str]):
    """The marketing keys once every hour of ``hours`` is written in full, else None."""
    try:
        keys = _marketing_keys(out)
    except (OSError, ValueError):  # a file still being written is not Parquet yet
        return None
    return keys if {k[0] for k in keys} == hours else None



def _wait(predicate, timeout: float, what: str, interval: float = 1.0):
    return wait_for(predicate, timeout, what, interval)


class PrismJobs:
    """The Prism job service, seen through Beam's job API (what the runner really ran)."""

    def __init__(self, endpoint: str):
        self._channel = grpc.insecure_channel(endpoint)
        self._stub = job_grpc.JobServiceStub(self._channel)

    def job_ids(self) -> set[str]:
        return {j.job_id for j in self._stub.GetJobs(job_api.GetJobsRequest(), timeout=10).job_info}

    def new_job(self, before: set[str]):
        """The one job submitted since ``before`` (PortableRunner names every job 'job')."""
        new = self.job_ids() - before
        assert len(new) <= 1, f"more than one new job in Prism: {sorted(new)}"
        return new.pop() if new else None

    def state(self, job_id: str) -> int:
        return self._stub.GetState(job_api.GetJobStateRequest(job_id=job_id), timeout=10).state

    def cancel(self, job_id: str) -> None:
        if self.state(job_id) not in TERMINAL:
            self._stub.Cancel(job_api.CancelJobRequest(job_id=job_id), timeout=10)

    def close(self) -> None:
        self._channel.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("runner-world"))
    _cli("pipelines.generate", "--output", path, *WORLD_ARGS)
    return path


@pytest.fixture(scope="module")
def direct_batch(world, tmp_path_factory) -> str:
    """The reference: DirectRunner, batch, from the world's files."""
    out = str(tmp_path_factory.mktemp("direct-batch"))
    _cli("pipelines.run", "--input", world, "--output", out, "--runner=DirectRunner")
    expected = {folder: read_jsonl_folder(os.path.join(out, folder)) for folder in COMPARED}
    # a world in which the comparison means something
    assert expected["follows"] and expected["alerts"] and expected["privacy_ledger"], \
        {k: len(v) for k, v in expected.items()}
    return out


@pytest.fixture
def prism(infra):
    if not infra.prism_endpoint:
        pytest.skip("Prism runner not installed (infra/install.sh needs go)")
    jobs = PrismJobs(infra.prism_endpoint)
    yield jobs
    jobs.close()


def _reset_topics(bootstrap: str) -> None:
    """Delete and recreate the standard topics (deletion is asynchronous in Kafka)."""
    kafka_client.delete_topics(STANDARD_TOPICS, bootstrap)
    _wait(lambda: not set(STANDARD_TOPICS) & kafka_client.list_topics(bootstrap), 60, "topic deletion", 0.5)

    def created():
        try:
            kafka_client.create_topics(STANDARD_TOPICS, bootstrap)
        except Exception:  # noqa: BLE001 -- the broker may still be finishing the deletion
            return False
        return True
    _wait(created, 60, "fresh topics", 1.0)


def _feed_through_gateway(world: str, bootstrap: str, workdir) -> dict[str, int]:
    """Taps and tweets of ``world`` into their topics the way production feeds them: through
    ``nfc_gateway serve`` (tap reports POSTed one by one, the firehose file replayed); users
    and pings (which the gateway does not carry) with ``kafka_client``. Returns the counts."""
    from nfc_gateway.testing import get, post, start_gateway
    produced = {kind: kafka_client.produce_jsonl(os.path.join(world, f"{kind}.jsonl"), kind, bootstrap, kind=kind)
                for kind in ("users", "pings")}
    taps = [json.loads(line) for line in open(os.path.join(world, "taps.jsonl"), encoding="utf-8")]
    with open(os.path.join(world, "tweets.jsonl"), "rb") as handle:
        tweets = sum(1 for line in handle if line.strip())
    gateway, port = start_gateway(
        workdir / "gateway", "--users", os.path.join(world, "users.jsonl"), "--kafka-bootstrap", bootstrap,
        "--firehose", os.path.join(world, "tweets.jsonl"), "--rate", "0",
        "--device-rate", "100000", "--device-burst", "100000")
    try:
        statuses = [post(port, report)[0] for report in taps]      # in file (= time) order, like the phones
        assert statuses == [201] * len(taps), sorted(set(statuses))

        def forwarded():
            health = get(port, "/healthz")[1]
            assert health["status"] == "ok", health
            return health["taps"]["forwarded"] == len(taps) and health["firehose"]["done"] \
                and health["firehose"]["written"] == tweets
        _wait(forwarded, 120, f"the gateway to forward {len(taps)} taps and {tweets} tweets to Kafka", 0.5)
    finally:
        gateway.terminate()
        gateway.wait(30)
    produced.update(taps=len(taps), tweets=tweets)
    return produced


def _kept_alerts(rows: list[dict]) -> list[dict]:
    return [a._asdict() for a in apply_retractions(Alert(**row) for row in rows)]


def test_streaming_from_kafka_on_prism_equals_batch(infra, prism, world, direct_batch, tmp_path):
    """Gateway -> Kafka -> the whole streaming pipeline on Prism -> Kafka gives the batch outputs exactly."""
    expected = {folder: read_jsonl_folder(os.path.join(direct_batch, folder)) for folder in COMPARED}
    truth = [json.loads(line) for line in open(os.path.join(world, "truth", "follows.jsonl"), encoding="utf-8")]

    _reset_topics(infra.bootstrap)
    # The whole backlog before the job starts: a caught-up partition's watermark jumps to now.
    produced = _feed_through_gateway(world, infra.bootstrap, tmp_path)
    assert produced["taps"] and produced["tweets"] and produced["pings"], produced
    assert [len(kafka_client.snapshot_topic(infra.bootstrap, kind)) for kind in ("users", "pings", "taps", "tweets")] \
        == [produced[kind] for kind in ("users", "pings", "taps", "tweets")]        # each record once

    out, log_path = str(tmp_path / "out"), tmp_path / "pipeline.log"
    portal_key, portal_pubkey = new_keypair(bytes([31]) * 32)
    args = [sys.executable, "-m", "pipelines.run", "--source", "kafka", "--streaming", "--results_sink", "kafka",
            "--kafka_bootstrap_servers", infra.bootstrap, "--kafka_expansion_service", infra.expansion_service,
            "--output", out, "--input", world,  # Kafka gives the events; the world.json, the DP release schedule
            "--registry_portal_pubkey", portal_pubkey, *infra.portable_runner_args(streaming=True)]
    before = prism.job_ids()
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    job = None
    try:
        def submitted():
            assert proc.poll() is None, f"pipeline exited with {proc.returncode}:\n{log_tail()}"
            return prism.new_job(before)
        job = _wait(submitted, 120, "the job in Prism's job service")
        # The registry is a changing input: a settings change the portal signs, produced to the
        # users topic once the job runs, is read after the launch snapshot (whose records are not
        # read again) and folded in; a forged one is refused. Alerts off, stamped now: it changes
        # no output of the world's past hours.
        users = [json.loads(line) for line in open(os.path.join(world, "users.jsonl"), encoding="utf-8")]
        first = users[0]
        user = User(first["user_id"], first["pubkey"], not first["alerts_opt_in"], first["stats_opt_out"],
                    first.get("age_band"))
        changes = [json.dumps(RegistryWriter(key).record(user)) for key in (portal_key, new_keypair(bytes([32]) * 32)[0])]
        kafka_client.produce_lines("users", changes, infra.bootstrap, kind="users")

        def complete():
            assert proc.poll() is None, f"pipeline exited with {proc.returncode}:\n{log_tail()}"
            assert prism.state(job) == RUNNING, \
                f"job {job} is {job_api.JobState.Enum.Name(prism.state(job))}:\n{log_tail()}"
            follows = topic_rows("follows", infra.bootstrap)
            alerts = topic_rows("alerts", infra.bootstrap)
            if len(follows) >= len(expected["follows"]) and len(_kept_alerts(alerts)) >= len(expected["alerts"]):
                return True
            return False
        _wait(complete, 240, f"{len(expected['follows'])} follows and {len(expected['alerts'])} alerts in Kafka")
        outputs_s = time.monotonic() - t0
        # The last hour's ledger is written once the watermark has passed the end of
        # the data, so every dead letter (late data included) has been written by then.
        _wait(lambda: len(read_jsonl_folder(os.path.join(out, "privacy_ledger"))) >= len(expected["privacy_ledger"]),
              120, "the privacy ledger of every hour")
        time.sleep(3)  # anything extra (duplicates, late retractions) would show up now
        assert prism.state(job) == RUNNING, log_tail()
        follows = topic_rows("follows", infra.bootstrap)
        alerts = topic_rows("alerts", infra.bootstrap)
        got = {folder: read_jsonl_folder(os.path.join(out, folder)) for folder in ("deadletter", "privacy_ledger")}
        # released statistics: noisy values, so the keys (hour, cell, metric) are compared
        expected_marketing = _marketing_keys(direct_batch)
        marketing = _wait(lambda: _marketing_hours_written(out, {k[0] for k in expected_marketing}), 60,
                          "the marketing Parquet files of every hour")
    finally:
        job = job or prism.new_job(before)  # submitted, but not seen in time
        if job is not None:
            prism.cancel(job)
            _wait(lambda: prism.state(job) in TERMINAL, 60, "the job to be cancelled")
        try:
            proc.wait(timeout=slow_machine(30))
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=slow_machine(30))
    print(f"streaming on Prism: {len(follows)} follows, {len(alerts)} alert messages, "
          f"outputs complete {outputs_s:.1f}s after launch")

    # a cancelled streaming job ends the CLI cleanly, with the summary of what it did
    assert proc.returncode == 0, log_tail()
    with open(os.path.join(out, "run_summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    assert (summary["state"], summary["runner"], summary["mode"]) == ("CANCELLED", "PortableRunner", "streaming")
    assert summary["counters"]["emitted.follows"] == len(follows)
    assert summary["counters"]["emitted.alerts"] == len(alerts)
    # the two changes read once, after the snapshot; the signed one folded in (one new
    # effective record), the forged one refused
    assert summary["counters"]["read.users"] == len(users) + 2
    assert summary["counters"]["registry_users_emitted"] == len(users) + 1
    assert summary["counters"]["registry_rejected_live"] == 1

    assert _canonical(follows) == _canonical(truth)
    assert _canonical(follows) == _canonical(expected["follows"])
    assert _canonical(_kept_alerts(alerts)) == _canonical(expected["alerts"])
    # (the forged change's dead letter, stamped now, is not the world's)
    assert _canonical(d for d in got["deadletter"] if d["raw"] != changes[1]) == _canonical(expected["deadletter"])
    assert _canonical(got["privacy_ledger"]) == _canonical(expected["privacy_ledger"])
    assert marketing == expected_marketing


def test_batch_from_files_on_prism_equals_direct_runner(infra, prism, world, direct_batch, tmp_path):
    """The same pipeline, bounded, from files on Prism: the DirectRunner's outputs exactly."""
    out = str(tmp_path / "out")
    before = prism.job_ids()
    t0 = time.monotonic()
    _cli("pipelines.run", "--input", world, "--output", out, *infra.portable_runner_args(streaming=False))
    elapsed = time.monotonic() - t0
    job = prism.new_job(before)
    assert job is not None, "the job did not appear in Prism's job service"
    assert prism.state(job) == job_api.JobState.DONE
    with open(os.path.join(out, "run_summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    assert (summary["runner"], summary["mode"], summary["state"]) == ("PortableRunner", "batch", "DONE")
    for folder in COMPARED:
        assert _canonical(read_jsonl_folder(os.path.join(out, folder))) == \
            _canonical(read_jsonl_folder(os.path.join(direct_batch, folder))), folder
    assert _marketing_keys(out) == _marketing_keys(direct_batch)
    print(f"batch on Prism: {elapsed:.1f}s including interpreter start")


@pytest.mark.parametrize("args, disabled", [
    (["--runner=PortableRunner", "--streaming"], True),
    (["--runner=PrismRunner", "--streaming", "--experiments=prism_disable_sdf_split"], True),
    (["--runner=PortableRunner"], False),  # bounded: a split cannot make data late
    (["--runner=DirectRunner", "--streaming"], False),
    (["--runner=FlinkRunner", "--streaming"], False),
])
def test_streaming_on_prism_asks_for_no_dynamic_splits(args, disabled):
    options = PipelineOptions(args)
    add_runner_experiments(options)
    experiments = options.view_as(DebugOptions).experiments or []
    assert experiments.count(PRISM_NO_SPLIT) == (1 if disabled else 0), experiments

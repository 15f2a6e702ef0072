"""Smoke tests of the streaming infrastructure (infra/up.sh): Kafka, the Beam KafkaIO
expansion service, the Prism portable runner and the Flink session cluster.

* Beam pipelines (streaming Kafka -> Kafka with event-time windows, bounded files <-> Kafka)
  run on the portable runner at the Prism job endpoint, through the same
  pipelines.kafka_io transforms the main pipeline uses.
* Beam on Flink (FlinkRunner) runs only when the Beam Flink job-server jar is installed;
  Maven Central as reachable here does not serve it, so those tests skip with the reason.
* The Flink cluster itself is exercised with a Flink SQL job: checkpointing, then a
  TaskManager SIGKILL + restart, and recovery from the last completed checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid

import pytest

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window

import kafka_client
from pipelines import kafka_io
from tests.integration.conftest import slow_machine, wait_for

pytestmark = pytest.mark.flink
TOPICS = {"taps", "tweets", "pings", "users", "alerts", "follows"}


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"



def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    return wait_for(predicate, timeout, what, interval)


def _pings(n: int, start_s: int = 0, phase: str = "pre") -> list[str]:
    return [json.dumps({"user_id": f"u{i}", "ts": f"2026-11-01T12:00:{(start_s + i) % 60:02d}Z",
                        "lat": 48.85, "lng": 2.35, "phase": phase}) for i in range(n)]


# --------------------------------------------------------------- services ----

def test_services_up(infra):
    overview = infra.rest("/overview")
    assert overview["taskmanagers"] >= 1 and overview["slots-total"] >= 2, overview
    assert TOPICS <= kafka_client.list_topics(infra.bootstrap)
    print(f"infra up in {infra.up_seconds:.1f}s")


def test_produce_uses_event_time(infra, tmp_path):
    topic = _topic("evt")
    records = [
        {"user_id": "1", "ts": "2026-11-01T12:00:00Z", "lat": 1, "lng": 2},
        {"id_str": "9", "created_at": "Sun Nov 01 12:00:05 +0000 2026", "text": "v1.1"},
        {"data": {"id": "10", "created_at": "2026-11-01T12:00:07.000Z", "text": "v2"}},
        {"delete": {"status": {"id_str": "9", "user_id_str": "1"}}},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert kafka_client.produce_jsonl(str(path), topic, infra.bootstrap) == 4
    got = kafka_client.consume(topic, infra.bootstrap, max_messages=4, timeout_s=slow_machine(30))
    base = 1793534400000  # 2026-11-01T12:00:00Z
    assert [ts for ts, _ in got] == [base, base + 5000, base + 7000, base + 7000]
    assert [json.loads(v) for _, v in got] == records
    assert kafka_client.snapshot_topic(infra.bootstrap, topic) == [json.dumps(r) for r in records]


# ------------------------------------------------ Beam, portable runner ----

def _needs_prism(infra):
    if not infra.prism_endpoint:
        pytest.skip("Prism runner not installed (infra/install.sh needs go)")


def _format(kv, ts=beam.DoFn.TimestampParam):
    source, raw = kv
    return json.dumps({"source": source, "raw": raw, "event_ms": int(ts.micros // 1000)})


def test_beam_streaming_kafka_to_kafka(infra):
    """Unbounded Kafka -> Beam -> Kafka on the portable runner: every record comes out with
    its event time as element timestamp, records produced after the job started are picked
    up, and 1-minute event-time windows over the replayed backlog fire once the reader has
    caught up (KafkaIO's CreateTime watermark). The job is cancelled at the end."""
    _needs_prism(infra)
    src_a, src_b, out, counts = _topic("in-a"), _topic("in-b"), _topic("out"), _topic("counts")
    kafka_client.create_topics([src_a, src_b, out, counts], infra.bootstrap)
    # the backlog: produced before the job starts, so none of it is late
    kafka_client.produce_lines(src_a, _pings(5), infra.bootstrap)
    kafka_client.produce_lines(src_b, [json.dumps({"tap_id": "t1", "ts": "2026-11-01T12:00:30Z", "phase": "pre"})],
                              infra.bootstrap)

    pipeline = beam.Pipeline(options=PipelineOptions(infra.portable_runner_args(streaming=True)))
    events = pipeline | kafka_io.ReadRawFromKafka({"pings": src_a, "taps": src_b}, infra.bootstrap,
                                                  infra.expansion_service)
    events | "Fmt" >> beam.Map(_format) | "Out" >> kafka_io.WriteLinesToKafka(out, infra.bootstrap,
                                                                              infra.expansion_service)
    # Records produced after the job caught up carry old event times: behind the watermark,
    # i.e. late for any window. Only the backlog is counted.
    (events
     | beam.Filter(lambda kv: json.loads(kv[1]).get("phase") == "pre")
     | beam.WindowInto(window.FixedWindows(60))
     | beam.combiners.Count.PerKey()
     | beam.Map(lambda kv, w=beam.DoFn.WindowParam: json.dumps(
         {"source": kv[0], "count": kv[1], "window_start": int(w.start.micros // 1000)}))
     | "Counts" >> kafka_io.WriteLinesToKafka(counts, infra.bootstrap, infra.expansion_service))

    t0 = time.monotonic()
    result = pipeline.run()
    try:
        _wait(lambda: len(kafka_client.consume(out, infra.bootstrap, 6, timeout_s=2)) >= 6, 120, "first 6 outputs")
        first_out = time.monotonic() - t0
        kafka_client.produce_lines(src_a, _pings(4, start_s=10, phase="post"), infra.bootstrap)
        got = _wait(lambda: (lambda m: m if len(m) >= 10 else None)(
            kafka_client.consume(out, infra.bootstrap, 10, timeout_s=2)), 90, "10 outputs")
        window_counts = _wait(lambda: (lambda m: m if sum(json.loads(v)["count"] for _, v in m) >= 6 else None)(
            kafka_client.consume(counts, infra.bootstrap, None, timeout_s=2)), 120, "event-time window counts")
    finally:
        result.cancel()
    rows = [json.loads(v) for _, v in got]
    assert {r["source"] for r in rows} == {"pings", "taps"}
    assert sorted(json.loads(r["raw"])["phase"] for r in rows) == ["post"] * 4 + ["pre"] * 6
    for r in rows:  # element timestamp == record event time (Kafka CreateTime)
        assert r["event_ms"] == kafka_client.event_time_ms(json.loads(r["raw"]))
    totals = {}
    for _, v in window_counts:
        c = json.loads(v)
        assert c["window_start"] == 1793534400000
        totals[c["source"]] = totals.get(c["source"], 0) + c["count"]
    assert totals == {"pings": 5, "taps": 1}
    print(f"streaming job: first output {first_out:.1f}s after submit")


def test_beam_batch_files_and_kafka(infra, tmp_path):
    """Bounded: files -> Kafka, then a bounded Kafka read (max_num_records) -> files; the
    read goes through the launcher jar (Beam starts and stops its own expansion service)."""
    _needs_prism(infra)
    topic = _topic("batch")
    kafka_client.create_topics([topic], infra.bootstrap)
    src = tmp_path / "pings.jsonl"
    lines = _pings(20)
    src.write_text("\n".join(lines) + "\n")

    with beam.Pipeline(options=PipelineOptions(infra.portable_runner_args(streaming=False))) as p:
        (p | beam.io.ReadFromText(str(src))
         | kafka_io.WriteLinesToKafka(topic, infra.bootstrap, infra.expansion_service))
    assert sorted(kafka_client.snapshot_topic(infra.bootstrap, topic)) == sorted(lines)

    out_prefix = str(tmp_path / "out" / "part")
    with beam.Pipeline(options=PipelineOptions(infra.portable_runner_args(streaming=False))) as p:
        (p | kafka_io.ReadRawFromKafka({"pings": topic}, infra.bootstrap, kafka_io.expansion_service_jar(),
                                       max_num_records=20)
         | beam.Map(_format) | beam.io.WriteToText(out_prefix, file_name_suffix=".jsonl"))
    written = []
    for name in os.listdir(tmp_path / "out"):
        written += (tmp_path / "out" / name).read_text().splitlines()
    assert sorted(json.loads(w)["raw"] for w in written) == sorted(lines)


# ------------------------------------------------------ Beam on Flink ----

def _needs_job_server(infra):
    if not infra.flink_job_server_jar:
        pytest.skip("Beam Flink job-server jar not installed: org.apache.beam:beam-runners-flink-*-job-server "
                    "is not served by the Maven Central reachable here (see infra/README.md)")


def test_beam_streaming_on_flink(infra):
    _needs_job_server(infra)
    src, out = _topic("flink-in"), _topic("flink-out")
    kafka_client.create_topics([src, out], infra.bootstrap)
    kafka_client.produce_lines(src, _pings(5), infra.bootstrap)
    pipeline = beam.Pipeline(options=PipelineOptions(infra.flink_runner_args(streaming=True, checkpoint_ms=2000)))
    (pipeline | kafka_io.ReadRawFromKafka({"pings": src}, infra.bootstrap, infra.expansion_service)
     | beam.Map(_format) | kafka_io.WriteLinesToKafka(out, infra.bootstrap, infra.expansion_service))
    result = pipeline.run()
    try:
        _wait(lambda: len(kafka_client.consume(out, infra.bootstrap, 5, timeout_s=2)) >= 5, 180, "Flink outputs")
    finally:
        result.cancel()


def test_beam_batch_on_flink(infra, tmp_path):
    _needs_job_server(infra)
    src = tmp_path / "in.txt"
    src.write_text("a\nb\nc\n")
    with beam.Pipeline(options=PipelineOptions(infra.flink_runner_args(streaming=False))) as p:
        (p | beam.io.ReadFromText(str(src)) | beam.Map(str.upper)
         | beam.io.WriteToText(str(tmp_path / "out"), shard_name_template=""))
    assert sorted((tmp_path / "out").read_text().split()) == ["A", "B", "C"]


# ------------------------------------------------- native PyFlink jobs ----
# The project's Flink engine is a native PyFlink job (flink_job/) in the PyFlink venv with
# the connector jars of infra/maven/flink-job-jars-pom.xml. These drivers prove the two
# sinks it relies on with exactly those pieces: Parquet files through FileSink (the
# marketing/ dataset) and Kafka transactions (exactly-once results).

PARQUET_DRIVER = """
import os, sys
from pyflink.common import Configuration, Instant, Row, Types
from pyflink.datastream import RuntimeExecutionMode, StreamExecutionEnvironment
from pyflink.datastream.connectors.file_system import BucketAssigner, FileSink, OutputFileConfig
from pyflink.datastream.formats.parquet import ParquetBulkWriters
from pyflink.table.types import DataTypes

mode, out = sys.argv[1], sys.argv[2]
conf = Configuration()
conf.set_string("python.executable", sys.executable)  # the Python workers: this venv
conf.set_string("restart-strategy.type", "none")       # fail on the first error
conf.set_string("pipeline.jars", ";".join("file://" + j for j in os.environ["FLINK_JOB_JARS"].split(":")))
env = StreamExecutionEnvironment.get_execution_environment(conf)
env.set_parallelism(2)
if mode == "batch":
    env.set_runtime_mode(RuntimeExecutionMode.BATCH)
else:
    env.enable_checkpointing(500)  # bulk formats commit their part files on checkpoints only
row_type = DataTypes.ROW([DataTypes.FIELD("user_id", DataTypes.STRING()), DataTypes.FIELD("n", DataTypes.BIGINT()),
                          DataTypes.FIELD("score", DataTypes.DOUBLE()),
                          DataTypes.FIELD("window_start", DataTypes.TIMESTAMP_LTZ(3))])
row_info = Types.ROW_NAMED(["user_id", "n", "score", "window_start"],
                           [Types.STRING(), Types.LONG(), Types.DOUBLE(), Types.INSTANT()])
hadoop = Configuration()
hadoop.set_string("parquet.write.int64.timestamp", "true")  # int64 millis, not legacy int96
hadoop.set_string("parquet.timestamp.time.unit", "millis")
writer = ParquetBulkWriters.for_row_type(row_type, hadoop_config=hadoop, utc_timestamp=True)
sink = (FileSink.for_bulk_format(out, writer)
        .with_output_file_config(OutputFileConfig.builder().with_part_prefix("part").with_part_suffix(".parquet").build())
        .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner()).build())
base_ms = int(sys.argv[3])
(env.from_collection([(f"u{i}", i) for i in range(100)], type_info=Types.TUPLE([Types.STRING(), Types.INT()]))
 .map(lambda t: Row(t[0], t[1] * 10, t[1] / 4, Instant.of_epoch_milli(base_ms + 1000 * t[1])), output_type=row_info)
 .sink_to(sink))
env.execute("parquet-probe-" + mode)
"""


def _pyflink_env(infra) -> dict:
    return dict(os.environ, FLINK_JOB_JARS=":".join(infra.flink_job_jars))


@pytest.mark.parametrize("mode", ["streaming", "batch"])
def test_pyflink_parquet_sink(infra, tmp_path, mode):
    """FileSink + ParquetBulkWriters on a local MiniCluster, in the PyFlink venv with the job jars
    (flink-parquet, parquet-hadoop, the shaded Hadoop client): every row comes back through pyarrow."""
    import pyarrow.dataset as ds
    driver, out = tmp_path / "parquet_driver.py", tmp_path / "out"
    driver.write_text(PARQUET_DRIVER)
    base_ms = 1793534400000  # 2026-11-01T12:00:00Z
    run = subprocess.run([infra.pyflink_python, str(driver), mode, str(out), str(base_ms)], capture_output=True,
                         text=True, env=_pyflink_env(infra), timeout=slow_machine(180))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    parts = sorted(p.name for p in out.iterdir())
    # committed part files only: an uncommitted one would be a hidden ".part-…inprogress…" file
    assert parts and all(p.startswith("part-") and p.endswith(".parquet") for p in parts), parts
    table = ds.dataset(str(out), format="parquet").to_table().sort_by("n")
    assert table.num_rows == 100
    assert table.column("n").to_pylist() == [10 * i for i in range(100)]
    assert table.column("score").to_pylist() == [i / 4 for i in range(100)]
    # Flink writes TIMESTAMP_LTZ as int64 millis without isAdjustedToUTC: pyarrow reads naive
    # timestamps, whose wall-clock values are UTC
    assert str(table.schema.field("window_start").type) == "timestamp[ms]"
    assert [int(t.value) for t in table.column("window_start")] == [base_ms + 1000 * i for i in range(100)]


KAFKA_DRIVER = """
import os, sys, uuid
from pyflink.common import Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (KafkaOffsetsInitializer, KafkaRecordSerializationSchema,
                                                 KafkaSink, KafkaSource)

bootstrap, in_topic, out_topic = sys.argv[1:4]
env = StreamExecutionEnvironment.get_execution_environment()
env.add_jars(*("file://" + j for j in os.environ["FLINK_JOB_JARS"].split(":")))
env.set_parallelism(1)
env.enable_checkpointing(1000)  # transactions commit on checkpoints
source = (KafkaSource.builder().set_bootstrap_servers(bootstrap).set_topics(in_topic)
          .set_starting_offsets(KafkaOffsetsInitializer.earliest()).set_bounded(KafkaOffsetsInitializer.latest())
          .set_value_only_deserializer(SimpleStringSchema()).build())
sink = (KafkaSink.builder().set_bootstrap_servers(bootstrap)
        .set_record_serializer(KafkaRecordSerializationSchema.builder().set_topic(out_topic)
                               .set_value_serialization_schema(SimpleStringSchema()).build())
        .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
        .set_transactional_id_prefix("probe-" + uuid.uuid4().hex[:8])
        .set_property("transaction.timeout.ms", "600000")  # as flink_job's sink
        .build())
(env.from_source(source, WatermarkStrategy.no_watermarks(), "kafka-in")
 .map(lambda line: line.upper(), output_type=Types.STRING()).sink_to(sink))
env.execute("kafka-exactly-once-probe")
"""


def test_pyflink_kafka_exactly_once(infra, tmp_path):
    """A PyFlink job submitted to the session cluster (`flink run -py`, the jobs' way) reads a topic
    and writes another through the exactly-once KafkaSink; a read_committed consumer sees every
    record once. Needs the broker's transaction settings (infra/kafka.sh) to fit Flink's sink."""
    from confluent_kafka.admin import AdminClient, ConfigResource
    admin = AdminClient({"bootstrap.servers": infra.bootstrap})
    broker = ConfigResource(ConfigResource.Type.BROKER, "1")
    config = admin.describe_configs([broker])[broker].result(timeout=slow_machine(30))
    assert int(config["transaction.max.timeout.ms"].value) >= 600000, "flink_job's transaction.timeout.ms"
    assert int(config["transaction.state.log.replication.factor"].value) == 1
    src, out = _topic("pyflink-in"), _topic("pyflink-out")
    kafka_client.create_topics([src, out], infra.bootstrap)
    lines = _pings(30)
    kafka_client.produce_lines(src, lines, infra.bootstrap)
    driver = tmp_path / "kafka_driver.py"
    driver.write_text(KAFKA_DRIVER)
    run = subprocess.run(
        [os.path.join(infra.flink_home, "bin", "flink"), "run", "-m", infra.flink_master, "-py", str(driver),
         "-pyclientexec", infra.pyflink_python, "-pyexec", infra.pyflink_python, infra.bootstrap, src, out],
        capture_output=True, text=True, timeout=slow_machine(240),
        env=dict(_pyflink_env(infra), FLINK_CONF_DIR=infra.flink_conf_dir))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    got = kafka_client.snapshot_topic(infra.bootstrap, out)
    assert sorted(got) == sorted(line.upper() for line in lines)


# ------------------------------------------- Flink cluster fault tolerance ----

PROBE_SQL = """
SET 'execution.runtime-mode' = 'streaming';
SET 'execution.checkpointing.interval' = '1s';
SET 'pipeline.name' = '{name}';
SET 'table.dml-sync' = 'false';
CREATE TABLE gen (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '100', 'fields.id.kind' = 'random');
CREATE TABLE sink (id BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO sink SELECT id FROM gen;
"""


def _submit_sql(infra, tmp_path, name: str) -> str:
    script = tmp_path / "probe.sql"
    script.write_text(PROBE_SQL.format(name=name))
    env = dict(os.environ, FLINK_CONF_DIR=infra.flink_conf_dir,
               FLINK_LOG_DIR=os.path.join(os.path.dirname(infra.flink_conf_dir), "..", "logs", "flink"))
    out = subprocess.run([os.path.join(infra.flink_home, "bin", "sql-client.sh"), "-f", str(script)],
                         capture_output=True, text=True, env=env, timeout=slow_machine(180))
    match = re.search(r"Job ID: ([0-9a-f]{32})", out.stdout)
    assert match, out.stdout[-2000:] + out.stderr[-2000:]
    return match.group(1)


def _job_running(infra, job_id: str) -> bool:
    job = infra.rest(f"/jobs/{job_id}")
    return job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"])


def test_taskmanager_failover(infra, tmp_path):
    """SIGKILL the only TaskManager mid-stream, start a new one: the job restarts from
    its last completed checkpoint and keeps checkpointing."""
    job_id = _submit_sql(infra, tmp_path, "infra-failover-probe")
    try:
        _wait(lambda: infra.rest(f"/jobs/{job_id}/checkpoints")["counts"]["completed"] >= 2, 120,
              "two completed checkpoints")
        before = infra.rest(f"/jobs/{job_id}/checkpoints")["latest"]["completed"]["id"]
        infra.flink("kill-taskmanager")
        t_kill = time.monotonic()
        _wait(lambda: infra.rest(f"/jobs/{job_id}")["state"] in ("RESTARTING", "CREATED", "RUNNING")
              and not _job_running(infra, job_id), 30, "job noticing the lost TaskManager")
        infra.flink("start-taskmanager")
        _wait(lambda: _job_running(infra, job_id), 120, "job running again")
        recovered = time.monotonic() - t_kill
        ck = _wait(lambda: (lambda c: c if c["counts"]["restored"] >= 1 and c["latest"]["completed"]
                            and c["latest"]["completed"]["id"] > before else None)(
            infra.rest(f"/jobs/{job_id}/checkpoints")), 60, "restore + a new checkpoint")
        assert ck["latest"]["restored"]["id"] >= before
        print(f"TaskManager kill -> job RUNNING again in {recovered:.1f}s; restored checkpoint "
              f"{ck['latest']['restored']['id']}, latest {ck['latest']['completed']['id']}")
    finally:
        infra.rest(f"/jobs/{job_id}?mode=cancel", method="PATCH")

"""The Kafka hand-off against a real broker at 127.0.0.1:9092 (started by the ``infra`` session fixture).

Each test writes to its own fresh topics, and simulates the one crash that
matters: the batch reached Kafka but the gateway died before committing that
fact. After the restart every record is in the topic exactly once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest

from nfc_gateway.firehose import FirehoseReplay
from nfc_gateway.kafka_sink import KafkaTapSink, KafkaTweetSink
from nfc_gateway.service import Gateway, GatewayConfig
from nfc_gateway.spool import write_json_atomic
from nfc_gateway.testing import PUBKEYS, post, signed_report
from kafka_client import port_open
from schemas.timefmt import parse_rfc3339
from tests.integration.conftest import slow_machine, wait_for
from tests.integration.prometheus_helpers import free_port

BOOTSTRAP = "127.0.0.1:9092"


# The broker is the one infra/up.sh starts (the session fixture ``infra`` in conftest.py).
needs_broker = pytest.mark.flink


class Record(NamedTuple):
    key: bytes | None
    value: bytes
    timestamp: int


def read_topic(topic: str, expect: int, timeout: float = 20.0, bootstrap: str = BOOTSTRAP) -> list[Record]:
    """Every record of ``topic`` once ``expect`` arrived, plus any that follow within 1.5 s
    (a duplicate would show there)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    from kafka_client import consumer, partitions_of
    client = consumer(bootstrap)
    records, deadline, quiet_until = [], time.monotonic() + slow_machine(timeout), None
    try:
        client.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions_of(client, topic)])
        while time.monotonic() < deadline and (quiet_until is None or time.monotonic() < quiet_until):
            for msg in client.consume(500, 0.25):
                if msg.error() is None:
                    records.append(Record(msg.key(), msg.value(), msg.timestamp()[1]))
            if quiet_until is None and len(records) >= expect:
                quiet_until = time.monotonic() + 1.5
    finally:
        client.close()
    return records


CREATED: list[str] = []


def fresh(name: str) -> str:
    topic = f"nfcgw-test-{name}-{uuid.uuid4().hex[:8]}"
    CREATED.append(topic)
    return topic


@pytest.fixture(scope="module", autouse=True)
def drop_test_topics():
    """The broker is shared: leave no test topics behind."""
    yield
    if CREATED and port_open(BOOTSTRAP):
        from kafka_client import delete_topics
        delete_topics(CREATED, BOOTSTRAP)


@needs_broker
def test_taps_reach_kafka_exactly_once_even_when_the_commit_was_lost(tmp_path, infra):
    topic = fresh("taps")
    gw = Gateway(GatewayConfig(port=0, output_dir=str(tmp_path), public_keys=PUBKEYS, kafka_bootstrap=BOOTSTRAP,
                               taps_topic=topic, device_rate=1000, device_burst=1000, instance_id="gw-a")).start()
    reports = [signed_report("1001", "1002", seq=i) for i in range(30)]
    try:
        assert {post(gw.port, r)[0] for r in reports} == {201}
        deadline = time.monotonic() + slow_machine(20)
        while gw.tap_sink.forwarded < len(reports):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        gw.stop()
    # the crash window: everything is in Kafka, but the commit of that never hit the disk
    write_json_atomic(tmp_path / ".gateway" / f"kafka-{topic}.json", {"wal_offset": 0})
    sink = KafkaTapSink(str(tmp_path), BOOTSTRAP, topic, "gw-a")
    try:
        deadline = time.monotonic() + slow_machine(20)
        while sink.sender is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(sink._skip) == len(reports)
        deadline = time.monotonic() + slow_machine(20)
        while sink.forwarded < len(reports):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        sink.close()
    records = read_topic(topic, len(reports))
    assert sorted(r.key.decode() for r in records) == sorted(r["tap_id"] for r in reports)
    by_id = {r["tap_id"]: r for r in reports}
    assert all(json.loads(r.value) == by_id[r.key.decode()] for r in records)
    # the pipeline takes CreateTime as event time: it must be the report's own ts
    assert all(r.timestamp == round(parse_rfc3339(by_id[r.key.decode()]["ts"]) * 1000) for r in records)


@needs_broker
def test_firehose_reaches_kafka_exactly_once_after_a_lost_commit(tmp_path, infra):
    topic = fresh("tweets")
    source = tmp_path / "firehose.jsonl"
    lines = [json.dumps({"id_str": str(i), "text": f"t{i}"}).encode() for i in range(3000)]
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    sink = KafkaTweetSink(str(tmp_path / "out"), BOOTSTRAP, topic, "gw-b")
    replay = FirehoseReplay(str(source), sink, batch_size=500).start()
    assert replay.done.wait(30) and replay.error is None
    sink.close()
    state_path = tmp_path / "out" / ".gateway" / f"kafka-{topic}.json"
    state = json.loads(state_path.read_text())
    (key,) = state["sources"]
    state["sources"][key] = sum(len(line) + 1 for line in lines[:1000])   # roll the commit back to line 1000
    write_json_atomic(state_path, state)

    sink = KafkaTweetSink(str(tmp_path / "out"), BOOTSTRAP, topic, "gw-b")
    replay = FirehoseReplay(str(source), sink, batch_size=500).start()
    assert replay.done.wait(30) and replay.error is None
    sink.close()
    values = [r.value for r in read_topic(topic, len(lines))]
    assert sorted(values) == sorted(lines)


def test_taps_are_accepted_while_kafka_is_unreachable(tmp_path):
    """The intake spools; the forwarder keeps trying (here: a port with no broker)."""
    gw = Gateway(GatewayConfig(port=0, output_dir=str(tmp_path), public_keys=PUBKEYS,
                               kafka_bootstrap="127.0.0.1:9", taps_topic=fresh("down"))).start()
    try:
        assert post(gw.port, signed_report("1001", "1002"))[0] == 201
        health = gw.health()["taps"]
        assert health["connected"] is False and health["forwarded"] == 0 and health["spool_bytes"] > 0
    finally:
        gw.stop()


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_broker(tmp_path, infra):
    """A second KRaft broker for this test alone (own ports, data, pid file; infra's jars),
    so that killing it disturbs no other test."""
    port, controller = free_port(), free_port()     # (not 19092: a second infra instance's)
    env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_CONTROLLER_PORT=str(controller),
               INFRA_RUN_DIR=str(tmp_path / "run"), INFRA_DATA_DIR=str(tmp_path / "data"),
               INFRA_LOG_DIR=str(tmp_path / "logs"))

    def kafka(*args):
        return subprocess.run(["bash", str(REPO / "infra" / "kafka.sh"), *args], env=env, capture_output=True,
                              text=True, timeout=slow_machine(120))

    started = kafka("start")
    assert started.returncode == 0, started.stderr
    pid_file = tmp_path / "run" / "kafka.pid"

    def kill9():
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(),
                 30, "the broker to die", 0.1)

    yield SimpleNamespace(bootstrap=f"127.0.0.1:{port}", kill9=kill9, start=lambda: kafka("start"))
    kafka("stop")


@needs_broker
def test_taps_survive_a_broker_killed_mid_stream_exactly_once(tmp_path, own_broker):
    """kill -9 of the broker while the gateway forwards; the gateway keeps accepting (spool),
    the broker comes back, and the topic holds every acknowledged report exactly once."""
    topic = "taps-broker-kill"
    gw = Gateway(GatewayConfig(port=0, output_dir=str(tmp_path / "gw"), public_keys=PUBKEYS,
                               kafka_bootstrap=own_broker.bootstrap, taps_topic=topic, device_rate=100000,
                               device_burst=100000, instance_id="gw-kill")).start()
    reports = [signed_report("1001", "1002", seq=i) for i in range(600)]
    try:
        first, rest = reports[:300], reports[300:]
        assert {post(gw.port, r)[0] for r in first} == {201}
        wait_for(lambda: gw.health()["taps"]["forwarded"] >= 100, 60, "some forwarding", 0.05)
        own_broker.kill9()
        assert {post(gw.port, r)[0] for r in rest} == {201}         # accepted while the broker is dead
        assert gw.health()["taps"]["forwarded"] < len(reports)
        restarted = own_broker.start()
        assert restarted.returncode == 0, restarted.stderr
        wait_for(lambda: gw.health()["taps"]["forwarded"] == len(reports), 180, "every report forwarded", 0.2)
    finally:
        gw.stop()
    records = read_topic(topic, len(reports), timeout=60, bootstrap=own_broker.bootstrap)
    assert sorted(r.key.decode() for r in records) == sorted(r["tap_id"] for r in reports)   # each once
    by_id = {r["tap_id"]: r for r in reports}
    assert all(json.loads(r.value) == by_id[r.key.decode()] for r in records)

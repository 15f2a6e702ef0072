"""The live firehose client into Kafka: every record of a world in topic ``tweets`` exactly
once, through a dropped connection and a client killed with SIGKILL mid-run (issue #17)."""
from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest

from nfc_gateway.firehose_emulator import load_lines
from nfc_gateway.testing import kill9
from tests.integration.conftest import topic_rows, wait_for
from tests.test_firehose_client import Client, Emulator, world  # noqa: F401 - the module's world fixture

pytestmark = pytest.mark.flink            # needs a broker, like the other Kafka tests


def test_firehose_into_kafka_exactly_once_across_a_kill(world, tmp_path, kafka_bootstrap):  # noqa: F811
    from kafka_client import delete_topics
    records = [json.loads(line) for line in load_lines(str(world / "tweets.jsonl"))]
    topic = f"tweets-fh-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    flags = ("--kafka-bootstrap", kafka_bootstrap, "--tweets-topic", topic, "--instance-id", "fh-test")
    emulator = Emulator(world, "--partitions", "2", "--rate", "15", "--keepalive", "0.1", "--split-seed", "3")
    try:
        client = Client(emulator.url, out, *flags)
        wait_for(lambda: client.metrics().get('firehose_records_total{partition="1"}', 0) >= 20, 60,
                 "records in Kafka", 0.1)
        emulator.call("/control/fault", {"partition": 1, "kind": "drop"})
        wait_for(lambda: sum(v for k, v in client.metrics().items() if k.startswith("firehose_records_total"))
                 >= len(records) // 2, 60, "half the world in Kafka", 0.1)
        kill9(client.proc)
        client.stop()
        client = Client(emulator.url, out, *flags)
        wait_for(lambda: len(topic_rows(topic, kafka_bootstrap)) >= len(records), 120, "every record in Kafka", 0.5)
        client.stop()
        rows = topic_rows(topic, kafka_bootstrap)
    finally:
        emulator.close()
        delete_topics([topic], kafka_bootstrap)
    canon = lambda rs: Counter(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
    assert canon(rows) == canon(records)

"""Pure-Python parts of kafka_client / pipelines.kafka_io (no broker, no JVM)."""
import gzip
import json

import pytest

import kafka_client
from core.inputs import event_time_ms
from core.lines import read_lines
from pipelines import kafka_io

BASE = 1793534400000  # 2026-11-01T12:00:00Z


def test_parse_time_formats():
    assert kafka_client.parse_time_ms("2026-11-01T12:00:00Z") == BASE
    assert kafka_client.parse_time_ms("2026-11-01T13:00:00.250+01:00") == BASE + 250
    assert kafka_client.parse_time_ms("Sun Nov 01 12:00:00 +0000 2026") == BASE
    assert kafka_client.parse_time_ms(BASE) == BASE
    assert kafka_client.parse_time_ms(BASE / 1000) == BASE
    for bad in (None, "", "yesterday", True, [], {}):
        assert kafka_client.parse_time_ms(bad) is None


def test_event_time_fields():
    assert kafka_client.event_time_ms({"ts": "2026-11-01T12:00:00Z"}) == BASE
    assert kafka_client.event_time_ms({"created_at": "Sun Nov 01 12:00:01 +0000 2026"}) == BASE + 1000
    assert kafka_client.event_time_ms({"data": {"created_at": "2026-11-01T12:00:02.000Z"}}) == BASE + 2000
    assert kafka_client.event_time_ms({"delete": {"status": {"id_str": "1"}}}) is None
    assert kafka_client.event_time_ms(["not", "a", "record"]) is None


def test_timestamped_carries_previous_and_backfills_leading():
    lines = [json.dumps({"delete": {}}), "not json", json.dumps({"ts": "2026-11-01T12:00:00Z"}),
             json.dumps({"delete": {}}), json.dumps({"ts": "2026-11-01T12:00:05Z"})]
    assert [ts for _, ts in kafka_client.timestamped(lines)] == [BASE, BASE, BASE, BASE, BASE + 5000]
    assert [line for line, _ in kafka_client.timestamped(lines)] == lines
    assert list(kafka_client.timestamped([json.dumps({"x": 1})])) == [(json.dumps({"x": 1}), None)]


def test_read_lines_plain_and_gzip(tmp_path):
    plain = tmp_path / "a.jsonl"
    plain.write_text('{"a": 1}\n\n{"a": 2}\r\n')
    packed = tmp_path / "a.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as fh:
        fh.write('{"a": 1}\n{"a": 2}\n')
    assert list(read_lines(str(plain))) == ['{"a": 1}', '{"a": 2}']
    assert list(read_lines(str(packed))) == ['{"a": 1}', '{"a": 2}']
    assert kafka_client.find_input(str(tmp_path), "a") == str(plain)


def test_resolve_expansion_service_explicit_address_unreachable_raises():
    import pytest
    with pytest.raises(RuntimeError, match="no Beam expansion service"):
        kafka_io.resolve_expansion_service("127.0.0.1:1")
    assert kafka_io.resolve_expansion_service(object) is object  # objects pass through


def test_read_raw_rejects_bad_topic_maps():
    import pytest
    with pytest.raises(ValueError):
        kafka_io.ReadRawFromKafka({})
    with pytest.raises(ValueError):
        kafka_io.ReadRawFromKafka({"taps": "t", "pings": "t"})


class FakeProducer:
    """librdkafka's contract as produce_all sees it: a bounded local queue (BufferError when
    full, drained by poll), delivery callbacks, flush returning what is still queued."""

    def __init__(self, capacity=3, fail=None, stuck=0):
        self.capacity, self.fail, self.stuck = capacity, fail, stuck
        self.queue, self.sent, self.polls = [], [], 0

    def produce(self, topic, value=None, key=None, timestamp=0, headers=None, on_delivery=None):
        if len(self.queue) >= self.capacity:
            raise BufferError("Local: Queue full")
        self.queue.append((topic, key, value, timestamp, headers, on_delivery))

    def poll(self, timeout=0):
        self.polls += 1
        self._deliver(len(self.queue))
        return 0

    def flush(self, timeout=None):
        self._deliver(len(self.queue) - self.stuck)
        return len(self.queue)

    def _deliver(self, n):
        for item in self.queue[:max(n, 0)]:
            err = self.fail if self.fail and item[2] == b"bad" else None
            if err is None:
                self.sent.append(item[:5])
            item[5](err, None)
        del self.queue[:max(n, 0)]


def test_produce_all_waits_out_a_full_queue_and_sends_everything_in_order():
    producer = FakeProducer(capacity=3)
    items = [(b"k%d" % i, b"v%d" % i, 1000 + i if i % 2 else None, [("h", b"x")]) for i in range(10)]
    assert kafka_client.produce_all(producer, "t", items) == 10
    assert producer.polls >= 3                                  # the full queue was drained, not dropped
    assert producer.sent == [("t", k, v, ts or 0, h) for k, v, ts, h in items]   # None -> 0: the broker's now


def test_produce_all_raises_on_a_delivery_error_or_an_unacknowledged_record():
    with pytest.raises(RuntimeError, match="delivery failed: boom"):
        kafka_client.produce_all(FakeProducer(fail="boom"), "t", [(None, b"ok", None, None), (None, b"bad", None, None)])
    with pytest.raises(RuntimeError, match="1 records not acknowledged within 5 s"):
        kafka_client.produce_all(FakeProducer(stuck=1), "t", [(None, b"a", None, None)], timeout_s=5)


def test_compliance_notices_carry_their_own_time():
    notice = {"delete": {"status": {"id_str": "1", "user_id_str": "2"}, "timestamp_ms": str(BASE + 7)}}
    assert kafka_client.event_time_ms(notice) == BASE + 7
    assert kafka_client.event_time_ms({"delete": {"status": {}}, "other": 1}) is None


def test_with_a_kind_times_are_read_exactly_as_the_pipeline_reads_them():
    v1 = json.dumps({"id_str": "1", "created_at": "Sun Nov 01 12:00:03 +0000 2026", "text": "hi",
                     "user": {"id_str": "9"}})
    v2 = json.dumps({"data": {"id": "2", "author_id": "9", "created_at": "2026-11-01T12:00:04.500Z", "text": "hi"}})
    notice = json.dumps({"delete": {"status": {"id_str": "1", "user_id_str": "9"}, "timestamp_ms": str(BASE + 6000)}})
    broken = '{"data": {"id": "3"'
    lines = [v1, v2, broken, notice]
    assert [ms for _, ms in kafka_client.timestamped(lines, kind="tweets")] == [BASE + 3000, BASE + 4500, BASE + 4500,
                                                                              BASE + 6000]
    assert event_time_ms("tweets", broken) is None
    assert event_time_ms("pings", json.dumps({"user_id": "1", "ts": "2026-11-01T12:00:00Z",
                                                           "lat": 35.6, "lng": 139.7})) == BASE
    assert event_time_ms("pings", json.dumps({"user_id": "1", "ts": "2026-11-01T12:00:00Z",
                                                           "lat": 91, "lng": 139.7})) is None   # rejected


class FakeMessage:
    def __init__(self, partition, offset):
        self._p, self._o = partition, offset

    def error(self):
        return None

    def partition(self):
        return self._p

    def offset(self):
        return self._o


class FakeConsumer:
    """Partition 0 holds messages at offsets 0-1 and then two transaction markers (2, 3):
    no message shows offset 3, only the position moves to 4."""

    def __init__(self):
        self.assigned, self._batches, self._position = None, [[FakeMessage(0, 0), FakeMessage(0, 1)], []], 0

    def assign(self, tps):
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in tps]

    def consume(self, num, timeout):
        batch = self._batches.pop(0) if self._batches else []
        self._position = 2 if batch else 4
        return batch

    def position(self, tps):
        from confluent_kafka import TopicPartition
        return [TopicPartition(tp.topic, tp.partition, self._position) for tp in tps]


def test_read_partitions_ends_by_position_even_when_the_last_offsets_are_markers():
    import time
    client = FakeConsumer()
    got = list(kafka_client.read_partitions(client, "t", {0: 0, 1: 5}, {0: 4, 1: 5}, time.monotonic() + 5))
    assert [m.offset() for m in got] == [0, 1]
    assert client.assigned == [("t", 0, 0)]          # partition 1 is empty in range: not even assigned


def test_read_partitions_gives_up_at_the_deadline():
    import time

    class Stuck(FakeConsumer):
        def position(self, tps):
            from confluent_kafka import TopicPartition
            return [TopicPartition(tp.topic, tp.partition, 1) for tp in tps]
    with pytest.raises(TimeoutError, match=r"partitions \[0\] not read to their end"):
        list(kafka_client.read_partitions(Stuck(), "t", {0: 0}, {0: 4}, time.monotonic() + 0.2))

"""Pure-Python parts of pipelines.kafka_tools / kafka_io (no broker, no JVM)."""
import gzip
import json

from pipelines import kafka_io, kafka_tools

BASE = 1793534400000  # 2026-11-01T12:00:00Z


def test_parse_time_formats():
    assert kafka_tools.parse_time_ms("2026-11-01T12:00:00Z") == BASE
    assert kafka_tools.parse_time_ms("2026-11-01T13:00:00.250+01:00") == BASE + 250
    assert kafka_tools.parse_time_ms("Sun Nov 01 12:00:00 +0000 2026") == BASE
    assert kafka_tools.parse_time_ms(BASE) == BASE
    assert kafka_tools.parse_time_ms(BASE / 1000) == BASE
    for bad in (None, "", "yesterday", True, [], {}):
        assert kafka_tools.parse_time_ms(bad) is None


def test_event_time_fields():
    assert kafka_tools.event_time_ms({"ts": "2026-11-01T12:00:00Z"}) == BASE
    assert kafka_tools.event_time_ms({"created_at": "Sun Nov 01 12:00:01 +0000 2026"}) == BASE + 1000
    assert kafka_tools.event_time_ms({"data": {"created_at": "2026-11-01T12:00:02.000Z"}}) == BASE + 2000
    assert kafka_tools.event_time_ms({"delete": {"status": {"id_str": "1"}}}) is None
    assert kafka_tools.event_time_ms(["not", "a", "record"]) is None


def test_timestamped_carries_previous_and_backfills_leading():
    lines = [json.dumps({"delete": {}}), "not json", json.dumps({"ts": "2026-11-01T12:00:00Z"}),
             json.dumps({"delete": {}}), json.dumps({"ts": "2026-11-01T12:00:05Z"})]
    assert [ts for _, ts in kafka_tools.timestamped(lines)] == [BASE, BASE, BASE, BASE, BASE + 5000]
    assert [line for line, _ in kafka_tools.timestamped(lines)] == lines
    assert list(kafka_tools.timestamped([json.dumps({"x": 1})])) == [(json.dumps({"x": 1}), None)]


def test_read_lines_plain_and_gzip(tmp_path):
    plain = tmp_path / "a.jsonl"
    plain.write_text('{"a": 1}\n\n{"a": 2}\r\n')
    packed = tmp_path / "a.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as fh:
        fh.write('{"a": 1}\n{"a": 2}\n')
    assert list(kafka_tools.read_lines(str(plain))) == ['{"a": 1}', '{"a": 2}']
    assert list(kafka_tools.read_lines(str(packed))) == ['{"a": 1}', '{"a": 2}']
    assert kafka_tools.find_input(str(tmp_path), "a") == str(plain)


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

"""Plain-Python Kafka helpers (kafka-python) for tests, tools and the pipeline's launch.

No Beam here: these talk to the broker directly.

* :func:`produce_jsonl` sends a JSON Lines file (``.jsonl`` or ``.jsonl.gz``) to a topic,
  one message per line, the message timestamp (Kafka CreateTime) set to the record's
  event time so that a Beam read with ``create_time_policy`` sees event time.
* :func:`consume` reads a topic from the beginning until N messages or a timeout.
* :func:`snapshot_topic` reads everything a topic holds right now (bounded).
* :func:`create_topics` creates topics if missing.

Command line::

    python -m pipelines.kafka_tools produce --topic taps world/taps.jsonl
    python -m pipelines.kafka_tools load-world world/         # users/pings/taps/tweets -> same-named topics
    python -m pipelines.kafka_tools consume --topic alerts --max 10 --timeout 30
    python -m pipelines.kafka_tools create-topics taps tweets pings users alerts follows
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Iterable, Iterator

DEFAULT_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
WORLD_KINDS = ("users", "pings", "taps", "tweets")

_V11_FORMAT = "%a %b %d %H:%M:%S %z %Y"  # Wed Oct 10 20:19:24 +0000 2018


def parse_time_ms(value) -> int | None:
    """Epoch milliseconds from an RFC 3339 string, a Twitter v1.1 date, or epoch s/ms."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value if value > 1e11 else value * 1000)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        try:
            dt = datetime.strptime(text, _V11_FORMAT)
        except ValueError:
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def event_time_ms(record) -> int | None:
    """The event time of one input record: ``ts``; tweets ``created_at`` / ``data.created_at``."""
    if not isinstance(record, dict):
        return None
    for candidate in (record.get("ts"), record.get("created_at"),
                      (record.get("data") or {}).get("created_at") if isinstance(record.get("data"), dict) else None):
        ms = parse_time_ms(candidate)
        if ms is not None:
            return ms
    return None


def read_lines(path: str) -> Iterator[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="surrogateescape", newline="\n") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if line.strip():
                yield line


def timestamped(lines: Iterable[str]) -> Iterator[tuple[str, int | None]]:
    """(line, timestamp_ms): the record's event time, else the previous record's.

    Lines before the first datable record get the first event time found (so a file
    that opens with a compliance message still replays in event time); unparseable
    lines are passed through too (the pipeline dead-letters them).
    """
    pending: list[str] = []
    last: int | None = None
    for line in lines:
        try:
            ms = event_time_ms(json.loads(line))
        except (ValueError, RecursionError):
            ms = None
        if ms is None:
            ms = last
        else:
            last = ms
        if ms is None:
            pending.append(line)
            continue
        for early in pending:
            yield early, ms
        pending.clear()
        yield line, ms
    for early in pending:
        yield early, None


def _producer(bootstrap: str):
    from kafka import KafkaProducer
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                         retries=5, max_in_flight_requests_per_connection=1)


def produce_lines(topic: str, lines: Iterable[str], bootstrap: str = DEFAULT_BOOTSTRAP,
                  with_event_time: bool = True) -> int:
    """Send each line as one message (UTF-8 value, no key); returns the count sent."""
    producer = _producer(bootstrap)
    n = 0
    try:
        items = timestamped(lines) if with_event_time else ((line, None) for line in lines)
        for line, ms in items:
            producer.send(topic, value=line.encode("utf-8", errors="surrogateescape"), timestamp_ms=ms)
            n += 1
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    return n


def produce_jsonl(path: str, topic: str, bootstrap: str = DEFAULT_BOOTSTRAP) -> int:
    """Produce a JSONL(.gz) file's lines into ``topic``, timestamped with event time."""
    return produce_lines(topic, read_lines(path), bootstrap)


def find_input(directory: str, kind: str) -> str | None:
    for name in (f"{kind}.jsonl", f"{kind}.jsonl.gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    return None


def load_world(directory: str, bootstrap: str = DEFAULT_BOOTSTRAP,
               topics: dict[str, str] | None = None) -> dict[str, int]:
    """Produce ``users/pings/taps/tweets.jsonl`` of a world directory into their topics."""
    topics = topics or {kind: kind for kind in WORLD_KINDS}
    counts = {}
    for kind, topic in topics.items():
        path = find_input(directory, kind)
        if path:
            counts[topic] = produce_jsonl(path, topic, bootstrap)
    return counts


def consume(topic: str, bootstrap: str = DEFAULT_BOOTSTRAP, max_messages: int | None = None,
            timeout_s: float = 30.0, from_beginning: bool = True) -> list[tuple[int, str]]:
    """(timestamp_ms, value) pairs from ``topic`` until ``max_messages`` or ``timeout_s``."""
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest" if from_beginning else "latest",
                             consumer_timeout_ms=500)
    out: list[tuple[int, str]] = []
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if parts:
                partitions = [TopicPartition(topic, p) for p in sorted(parts)]
            else:
                time.sleep(0.2)
        if not partitions:
            return out
        consumer.assign(partitions)
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        while time.monotonic() < deadline and (max_messages is None or len(out) < max_messages):
            batch = consumer.poll(timeout_ms=250)
            for records in batch.values():
                for rec in records:
                    out.append((rec.timestamp, rec.value.decode("utf-8", errors="replace")))
    finally:
        consumer.close()
    return out if max_messages is None else out[:max_messages]


def snapshot_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[str]:
    """Every value ``topic`` holds now (up to its end offsets at call time), in partition order."""
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        partitions = [TopicPartition(topic, p) for p in sorted(parts)]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if end[tp] > consumer.position(tp)}
        lines: list[str] = []
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"snapshot of topic {topic!r} incomplete after {timeout_s}s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                for rec in records:
                    if rec.offset < end[tp]:
                        lines.append(rec.value.decode("utf-8", errors="replace"))
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return lines
    finally:
        consumer.close()


def create_topics(names: Iterable[str], bootstrap: str = DEFAULT_BOOTSTRAP,
                  partitions: int = 1) -> list[str]:
    """Create missing topics; returns the names created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(n, num_partitions=partitions, replication_factor=1)
               for n in names if n not in existing]
        if new:
            admin.create_topics(new)
        return [t.name for t in new]
    finally:
        admin.close()


def delete_topics(names: Iterable[str], bootstrap: str = DEFAULT_BOOTSTRAP) -> None:
    from kafka.admin import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        existing = set(admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.kafka_tools", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("produce", help="produce a JSONL(.gz) file into a topic with event-time timestamps")
    p.add_argument("--topic", required=True)
    p.add_argument("path")
    p = sub.add_parser("load-world", help="produce users/pings/taps/tweets of a world directory")
    p.add_argument("directory")
    p = sub.add_parser("consume", help="print a topic's messages as JSON lines")
    p.add_argument("--topic", required=True)
    p.add_argument("--max", type=int, default=None)
    p.add_argument("--timeout", type=float, default=10.0)
    p = sub.add_parser("create-topics")
    p.add_argument("names", nargs="+")
    p.add_argument("--partitions", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "produce":
            print(f"{args.topic}: {produce_jsonl(args.path, args.topic, args.bootstrap)} messages")
        elif args.cmd == "load-world":
            for topic, n in load_world(args.directory, args.bootstrap).items():
                print(f"{topic}: {n} messages")
        elif args.cmd == "consume":
            for _ts, value in consume(args.topic, args.bootstrap, args.max, args.timeout):
                print(value)
        elif args.cmd == "create-topics":
            created = create_topics(args.names, args.bootstrap, args.partitions)
            print("created: " + (" ".join(created) if created else "(none)"))
    except (OSError, TimeoutError) as exc:
        print(f"kafka_tools: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # kafka.errors.* (no broker, ...)
        print(f"kafka_tools: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

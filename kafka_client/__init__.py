"""The one Kafka client (confluent-kafka, i.e. librdkafka) of the launcher, the gateway,
``infra/`` scripts and tests.

No Beam here: these talk to the broker directly (the pipeline's own Beam KafkaIO reads
and writes are ``pipelines.kafka_io``).

* :func:`produce_jsonl` sends a JSON Lines file (``.jsonl`` or ``.jsonl.gz``) to a topic,
  one message per line, the message timestamp (Kafka CreateTime) set to the record's
  event time so that a Beam read with ``create_time_policy`` sees event time -- for the
  pipeline's inputs read exactly as the pipeline reads them (``core.inputs.event_time_ms``).
  Lines are read by the pipeline's one line reader (``core.lines``: bounded memory,
  a damaged ``.gz`` or over-long line sent as its kept first bytes, so it is a dead letter).
* No CreateTime is ever set beyond the producer's clock plus ``MAX_CREATE_TIME_AHEAD_S``
  (:func:`create_time_ms`): KafkaIO's watermark follows CreateTime, and one record stamped
  2099 would make every genuine record after it late. Such a record is sent unchanged --
  the pipeline dead-letters it by its own time -- with its neighbour's time (files) or the
  producer's clock (the gateway) as CreateTime.
* :func:`consume` reads a topic from the beginning until N messages or a timeout.
* :func:`snapshot_topic` reads everything a topic holds right now (bounded).
* :func:`create_topics` creates topics if missing.

Command line::

    python -m kafka_client produce --topic taps world/taps.jsonl   # [--kind taps]
    python -m kafka_client load-world world/         # users/pings/taps/tweets -> same-named topics
    python -m kafka_client consume --topic alerts --max 10 --timeout 30
    python -m kafka_client create-topics taps tweets pings users alerts follows
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
from typing import Iterable, Iterator

from core.config import DEFAULT_KAFKA_BOOTSTRAP as DEFAULT_BOOTSTRAP
from core import inputs
from core.lines import read_lines
from schemas.timefmt import DEFAULT_MAX_EVENT_FUTURE_S

WORLD_KINDS = ("users", "pings", "taps", "tweets")
# How far ahead of the producer's clock a CreateTime may be (the pipeline's --max_event_future_s).
MAX_CREATE_TIME_AHEAD_S = DEFAULT_MAX_EVENT_FUTURE_S

def parse_time_ms(value) -> int | None:
    """Epoch milliseconds from an RFC 3339 string, a Twitter v1.1 date, or epoch s/ms.

    Strings are read by the pipeline's own strict parsers (``schemas.timefmt``), so a
    timestamp the pipeline would reject (``2026-W47-4T15:00:00Z``, full-width digits …)
    gives no Kafka time here either."""
    from schemas.errors import InvalidRecord
    from schemas.timefmt import parse_rfc3339, parse_twitter_v1
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return None
        return int(value if value > 1e11 else value * 1000)
    if not isinstance(value, str) or not value.strip():
        return None
    for parser in (parse_rfc3339, parse_twitter_v1):
        try:
            return int(round(parser(value) * 1000))
        except InvalidRecord:
            continue
    return None


def event_time_ms(record) -> int | None:
    """The event time of any JSON record, by its usual fields: ``ts``; tweets ``created_at`` /
    ``data.created_at``; a compliance message's ``timestamp_ms``. For the contract's inputs,
    ``core.inputs.event_time_ms`` is exact."""
    if not isinstance(record, dict):
        return None
    notice = next((v for v in record.values() if isinstance(v, dict) and "timestamp_ms" in v), None) \
        if len(record) == 1 else None
    if notice is not None:
        ms = notice["timestamp_ms"]
        return parse_time_ms(int(ms) if isinstance(ms, str) and ms.isdigit() else ms)
    for candidate in (record.get("ts"), record.get("created_at"),
                      (record.get("data") or {}).get("created_at") if isinstance(record.get("data"), dict) else None):
        ms = parse_time_ms(candidate)
        if ms is not None:
            return ms
    return None


def too_far_ahead(ms: int | None, now_ms: int | None = None, max_ahead_s: float = MAX_CREATE_TIME_AHEAD_S) -> bool:
    """Whether event time ``ms`` lies more than ``max_ahead_s`` ahead of the clock ``now_ms``
    (default: this producer's wall clock)."""
    if ms is None:
        return False
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return ms > now_ms + int(max_ahead_s * 1000)


def create_time_ms(ms: int | None, now_ms: int | None = None,
                   max_ahead_s: float = MAX_CREATE_TIME_AHEAD_S) -> int | None:
    """The Kafka CreateTime for a record of event time ``ms``: ``ms`` itself, unless it is more
    than ``max_ahead_s`` ahead of the producer's clock ``now_ms`` (default: the wall clock),
    then the clock -- never beyond it plus the skew. The record is sent unchanged, so the
    pipeline still dead-letters it by its own time. None stays None (the broker's now)."""
    if ms is None:
        return None
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return now_ms if too_far_ahead(ms, now_ms, max_ahead_s) else ms


def timestamped(lines: Iterable[str], kind: str | None = None, now_ms: int | None = None,
                max_ahead_s: float = MAX_CREATE_TIME_AHEAD_S) -> Iterator[tuple[str, int | None]]:
    """(line, timestamp_ms): the record's event time, else the previous record's.

    A record more than ``max_ahead_s`` ahead of the clock ``now_ms`` (default: the wall
    clock at the start) counts as undatable: it takes its neighbour's time, so a 2099 line
    never moves a reader's watermark (the pipeline dead-letters it by its own time).

    ``kind`` (``pings``, ``taps``, ``tweets``) reads it as the pipeline will
    (``core.inputs.event_time_ms``); without one, by the usual fields (:func:`event_time_ms`).

    Lines before the first datable record get the first event time found (so a file
    that opens with a compliance message still replays in event time); unparseable
    lines are passed through too (the pipeline dead-letters them).
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    pending: list[str] = []
    last: int | None = None
    for line in lines:
        if kind is not None:
            ms = inputs.event_time_ms(kind, line)
        else:
            try:
                ms = event_time_ms(json.loads(line))
            except (ValueError, RecursionError):
                ms = None
        if too_far_ahead(ms, now_ms, max_ahead_s):
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


def port_open(address: str, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (a broker, a service)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def client_config(bootstrap: str, **extra) -> dict:
    """librdkafka settings every client here shares: its log lines go to Python's logging
    (logger ``librdkafka``) instead of straight to stderr."""
    return {"bootstrap.servers": bootstrap, "logger": logging.getLogger("librdkafka"), **extra}


def _producer(bootstrap: str):
    from confluent_kafka import Producer
    return Producer(client_config(bootstrap, **{"acks": "all", "enable.idempotence": True, "linger.ms": 20}))


def produce_all(producer, topic: str, items: Iterable[tuple], timeout_s: float = 60.0) -> int:
    """Send ``(key, value, timestamp_ms, headers)`` items and wait until every one is
    acknowledged; raises ``RuntimeError`` naming the first delivery error. Returns the count.

    A full local queue is drained by serving delivery reports, so memory stays
    bounded however many items come. ``timestamp_ms`` None means the broker's now; one
    more than ``MAX_CREATE_TIME_AHEAD_S`` ahead of this producer's clock is sent as the
    clock (:func:`create_time_ms`: every producer here and in the gateway goes through this).
    """
    errors: list = []

    def delivered(err, _msg):
        if err is not None and len(errors) < 1:
            errors.append(err)

    n = 0
    for key, value, timestamp_ms, headers in items:
        while True:
            try:
                producer.produce(topic, value=value, key=key, timestamp=create_time_ms(timestamp_ms) or 0,
                                 headers=headers, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(timeout_s)
    if errors:
        raise RuntimeError(f"Kafka {topic}: delivery failed: {errors[0]}")
    if left:
        raise RuntimeError(f"Kafka {topic}: {left} records not acknowledged within {timeout_s:g} s")
    return n


def produce_lines(topic: str, lines: Iterable[str], bootstrap: str = DEFAULT_BOOTSTRAP,
                  with_event_time: bool = True, kind: str | None = None) -> int:
    """Send each line as one message (UTF-8 value, no key); returns the count sent.
    ``kind``: read event times as the pipeline reads that input (see :func:`timestamped`)."""
    items = timestamped(lines, kind) if with_event_time else ((line, None) for line in lines)
    return produce_all(_producer(bootstrap), topic,
                       ((None, line.encode("utf-8", errors="surrogateescape"), ms, None) for line, ms in items))


def produce_jsonl(path: str, topic: str, bootstrap: str = DEFAULT_BOOTSTRAP, kind: str | None = None) -> int:
    """Produce a JSONL(.gz) file's lines into ``topic``, timestamped with event time
    (read as the pipeline reads ``kind``, when given)."""
    return produce_lines(topic, read_lines(path), bootstrap, kind=kind)


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
            counts[topic] = produce_jsonl(path, topic, bootstrap, kind=kind)
    return counts


def consumer(bootstrap: str, **extra):
    """A consumer for explicit partition assignment: no group offsets committed, ever."""
    from confluent_kafka import Consumer
    return Consumer(client_config(bootstrap, **{
        "group.id": "tapfollow-tools", "enable.auto.commit": False, "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest", "isolation.level": "read_committed", **extra}))


def partitions_of(client, topic: str, timeout_s: float = 10.0) -> list[int]:
    """The partition ids of ``topic`` (empty if it does not exist)."""
    meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None:
        return []
    return sorted(meta.partitions)


def read_partitions(client, topic: str, starts: dict[int, int], ends: dict[int, int], deadline: float) -> Iterator:
    """Every message of ``topic`` at offsets [starts[p], ends[p]) per partition p, from an
    assigned consumer; ``TimeoutError`` if the broker does not deliver them by ``deadline``."""
    from confluent_kafka import TopicPartition
    remaining = {p for p in ends if ends[p] > starts[p]}
    if not remaining:
        return
    client.assign([TopicPartition(topic, p, starts[p]) for p in sorted(remaining)])
    while remaining:
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic!r}: partitions {sorted(remaining)} not read to their end in time")
        for msg in client.consume(500, 0.5):
            if msg.error() is not None:
                continue      # e.g. partition EOF; real errors show as the deadline
            p = msg.partition()
            if p in remaining and msg.offset() < ends[p]:
                yield msg
        # by position, not by the last message seen: offsets may skip (transaction markers)
        for tp in client.position([TopicPartition(topic, p) for p in sorted(remaining)]):
            if tp.offset >= ends[tp.partition]:
                remaining.discard(tp.partition)


def consume(topic: str, bootstrap: str = DEFAULT_BOOTSTRAP, max_messages: int | None = None,
            timeout_s: float = 30.0, from_beginning: bool = True) -> list[tuple[int, str]]:
    """(timestamp_ms, value) pairs from ``topic`` until ``max_messages`` or ``timeout_s``."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition
    client = consumer(bootstrap)
    out: list[tuple[int, str]] = []
    try:
        deadline = time.monotonic() + timeout_s
        parts: list[int] = []
        while not parts and time.monotonic() < deadline:
            parts = partitions_of(client, topic)
            if not parts:
                time.sleep(0.2)
        if not parts:
            return out
        client.assign([TopicPartition(topic, p, OFFSET_BEGINNING if from_beginning else OFFSET_END) for p in parts])
        while time.monotonic() < deadline and (max_messages is None or len(out) < max_messages):
            for msg in client.consume(500, 0.25):
                if msg.error() is None:
                    out.append((msg.timestamp()[1], (msg.value() or b"").decode("utf-8", errors="replace")))
    finally:
        client.close()
    return out if max_messages is None else out[:max_messages]


def snapshot_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[str]:
    """Every value ``topic`` holds now (up to its end offsets at call time), in partition order."""
    return snapshot_topic_with_ends(bootstrap, topic, timeout_s)[0]


def snapshot_topic_with_ends(bootstrap: str, topic: str, timeout_s: float = 60.0) -> tuple[list[str], dict[int, int]]:
    """(:func:`snapshot_topic`'s values, the end offset per partition the snapshot stopped at):
    a live read of the topic that skips what lies below those offsets continues it exactly."""
    from confluent_kafka import TopicPartition
    client = consumer(bootstrap)
    try:
        starts, ends = {}, {}
        for p in partitions_of(client, topic):
            starts[p], ends[p] = client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        by_partition: dict[int, list[str]] = {p: [] for p in ends}
        for msg in read_partitions(client, topic, starts, ends, time.monotonic() + timeout_s):
            by_partition[msg.partition()].append((msg.value() or b"").decode("utf-8", errors="replace"))
        return [line for p in sorted(by_partition) for line in by_partition[p]], ends
    finally:
        client.close()


def _admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient
    return AdminClient(client_config(bootstrap))


def list_topics(bootstrap: str = DEFAULT_BOOTSTRAP, timeout_s: float = 10.0) -> set[str]:
    return set(_admin(bootstrap).list_topics(timeout=timeout_s).topics)


def create_topics(names: Iterable[str], bootstrap: str = DEFAULT_BOOTSTRAP,
                  partitions: int = 1) -> list[str]:
    """Create missing topics; returns the names created."""
    from confluent_kafka.admin import NewTopic
    admin = _admin(bootstrap)
    existing = set(admin.list_topics(timeout=10).topics)
    new = [n for n in dict.fromkeys(names) if n not in existing]
    if new:
        futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in new],
                                      operation_timeout=30)
        for future in futures.values():
            future.result()
    return new


def delete_topics(names: Iterable[str], bootstrap: str = DEFAULT_BOOTSTRAP) -> None:
    admin = _admin(bootstrap)
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [n for n in dict.fromkeys(names) if n in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            future.result()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kafka_client", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("produce", help="produce a JSONL(.gz) file into a topic with event-time timestamps")
    p.add_argument("--topic", required=True)
    p.add_argument("--kind", choices=WORLD_KINDS,
                   help="read event times as the pipeline reads this input (default: the topic's name, if a kind)")
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
            kind = args.kind or (args.topic if args.topic in WORLD_KINDS else None)
            print(f"{args.topic}: {produce_jsonl(args.path, args.topic, args.bootstrap, kind)} messages")
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
        print(f"kafka_client: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # KafkaException (no broker, ...)
        print(f"kafka_client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


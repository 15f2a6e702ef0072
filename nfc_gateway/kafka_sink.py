"""Handing records to Kafka without losing or repeating one across a restart.

Each batch goes out in one Kafka transaction (confluent-kafka, i.e. librdkafka:
``acks=all``, idempotent, ``transactional.id`` per gateway instance, topic and
source), and progress is committed to a local state file only after the
transaction is committed. Readers use ``read_committed`` (the pipeline's
KafkaIO read and ``kafka_client`` set it), so an aborted batch is never
read. Idempotence alone would not do: a broker that dies with a batch in
flight can end up holding it twice (librdkafka #4953; the broker-kill test
below found exactly that). A crash between the Kafka commit and the local
commit would still send the batch again, so every record carries headers
``tf-gateway`` (this instance), ``tf-source`` and ``tf-pos`` (its position in
the source), and on start -- after the new producer has fenced its former
self, whose open transaction the broker then aborts -- the gateway reads the
committed tail of every partition and skips exactly the records of the
uncommitted window that already landed.

* Taps: the HTTP intake confirms a report once it is fsynced in the write-ahead
  spool ``OUT/spool/taps.wal.jsonl`` (so senders are not held hostage by a slow
  broker); a forwarder thread moves the spool to the topic, keyed by
  ``tap_id``. The spool also rebuilds the seen-``tap_id`` set on start.
* Every record's Kafka timestamp is its event time (the report's ``ts``, the
  tweet's ``created_at``/``timestamp_ms``): the pipeline reads CreateTime as
  event time, so a replayed firehose lands in the right windows. Never beyond the
  gateway's clock plus ``kafka_client.MAX_CREATE_TIME_AHEAD_S`` (300 s):
  a record stamped further ahead (2099) is sent unchanged with the gateway's clock
  as its CreateTime (``kafka_client.create_time_ms``, applied by ``produce_all``), so
  it cannot drag the pipeline's watermark; the pipeline dead-letters it by its own time.
* Tweets: each firehose batch is committed in Kafka before the source offset
  is committed; records are keyed by nothing (the broker spreads them).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

from core.inputs import event_time_ms
from kafka_client import client_config, consumer, partitions_of, produce_all, read_partitions
from nfc_gateway.sinks import STATE_DIR
from nfc_gateway.spool import DurableLog, read_lines, write_json_atomic

log = logging.getLogger(__name__)

H_GATEWAY, H_SOURCE, H_POS = "tf-gateway", "tf-source", "tf-pos"
# How far back from each partition's end the restart scan looks; it must cover
# the uncommitted window (one batch) plus whatever other producers wrote since.
TAIL_SCAN_RECORDS = 20_000
BATCH_RECORDS = 1000
# A record is retried for this long, then fails. A batch is waited for longer than that, so when
# the wait ends every record of it has landed or failed for good: the tail scan that follows a
# failure sees all that will ever land, and the retry cannot race a late original.
MESSAGE_TIMEOUT_S = 120


def transactional_id(gateway: str, topic: str, source: str) -> str:
    """One per gateway instance, topic and source: a restarted gateway fences its former self
    (whose open transaction the broker then aborts)."""
    return f"tapfollow-gw:{gateway}:{topic}:{source}"


def make_producer(bootstrap: str, txn_id: str):
    """A transactional producer, initialised (raises while the broker is away)."""
    from confluent_kafka import Producer
    producer = Producer(client_config(bootstrap, **{
        "acks": "all",
        "enable.idempotence": True,               # also caps in-flight requests at 5, order kept
        "transactional.id": txn_id,
        "linger.ms": 5,
        "message.timeout.ms": MESSAGE_TIMEOUT_S * 1000,   # retried until then, then a delivery error
        "transaction.timeout.ms": (MESSAGE_TIMEOUT_S + 60) * 1000,
    }))
    producer.init_transactions(30)
    return producer


def landed_positions(bootstrap: str, topic: str, gateway: str, source: str, after: int,
                     scan: int = TAIL_SCAN_RECORDS) -> set[int]:
    """Positions > ``after`` of records this gateway already wrote for ``source``."""
    from confluent_kafka import TopicPartition
    client = consumer(bootstrap)
    try:
        starts, ends = {}, {}
        for p in partitions_of(client, topic):
            begin, end = client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            starts[p], ends[p] = max(begin, end - scan), end
        want_gateway, want_source = gateway.encode(), source.encode()
        found: set[int] = set()
        try:
            for msg in read_partitions(client, topic, starts, ends, time.monotonic() + 60):
                headers = dict(msg.headers() or ())
                if headers.get(H_GATEWAY) == want_gateway and headers.get(H_SOURCE) == want_source:
                    pos = int(headers[H_POS])
                    if pos > after:
                        found.add(pos)
        except TimeoutError:
            raise RuntimeError(f"could not read the tail of {topic} to recover; refusing to risk duplicates") from None
        return found
    finally:
        client.close()


def _headers(gateway: str, source: str, pos: int):
    return [(H_GATEWAY, gateway.encode()), (H_SOURCE, source.encode()), (H_POS, str(pos).encode())]


class TxnSender:
    """The transactional producer of one (gateway, topic, source), replaced when it breaks."""

    def __init__(self, bootstrap: str, txn_id: str, stop: threading.Event):
        self.bootstrap, self.txn_id, self.stop = bootstrap, txn_id, stop
        self.producer = make_producer(bootstrap, txn_id)

    def reset(self):
        """Abort the open transaction; if the producer cannot, make a new one (same id: the
        broker fences the old producer and aborts its transaction)."""
        try:
            self.producer.abort_transaction(30)
            return
        except Exception as exc:  # noqa: BLE001 - fatal or not abortable: replace the producer
            log.error("Kafka: abort failed (%s); replacing the producer", exc)
        while not self.stop.is_set():
            try:
                self.producer = make_producer(self.bootstrap, self.txn_id)
                return
            except Exception as exc:  # noqa: BLE001 - broker away: wait
                log.error("Kafka: producer %s not ready yet (%s)", self.txn_id, exc)
                self.stop.wait(2.0)

    def close(self):
        self.producer.flush(10)


def publish_exactly(sender: TxnSender, topic: str, records: list[tuple[Optional[bytes], bytes, int, Optional[int]]],
                    gateway: str, source: str, bootstrap: str, committed: int, skip: set[int],
                    stop: threading.Event) -> bool:
    """Send ``(key, value, pos, timestamp_ms)`` records not in ``skip`` in one transaction;
    return once it is committed. Returns False only when stopping.

    Idempotence alone is not enough: when a broker dies with a batch in flight, librdkafka
    may bump the producer epoch and send it again, and the broker keeps both copies
    (librdkafka #4953; seen here in tests/integration/test_nfc_kafka.py). In a transaction
    the first copy is aborted, invisible to ``read_committed`` readers (the pipeline's). On
    any failure the transaction is aborted (or the producer replaced, which fences it), the
    topic's committed tail is read, and exactly the missing records are sent again.
    """
    while not stop.is_set():
        try:
            sender.producer.begin_transaction()
            produce_all(sender.producer, topic, ((key, value, timestamp_ms, _headers(gateway, source, pos))
                                                 for key, value, pos, timestamp_ms in records if pos not in skip),
                        timeout_s=MESSAGE_TIMEOUT_S + 10)
            sender.producer.commit_transaction(MESSAGE_TIMEOUT_S)
            return True
        except Exception as exc:  # noqa: BLE001 - any Kafka error: find what landed, retry the rest
            log.error("Kafka %s: batch not committed (%s: %s); retrying", topic, type(exc).__name__, exc)
            sender.reset()
            stop.wait(1.0)
            try:
                skip |= landed_positions(bootstrap, topic, gateway, source, committed)
            except Exception as scan_exc:  # noqa: BLE001 - broker still away: wait and try again
                log.error("Kafka %s: cannot read the tail yet (%s)", topic, scan_exc)
    return False


def connect(bootstrap: str, topic: str, gateway: str, source: str, committed: int, stop: threading.Event):
    """(TxnSender, positions already landed) once the broker answers; None if stopped first.

    The gateway keeps accepting (and spooling) while the broker is away, so a
    broker that is down at start is waited for, not a reason to refuse to start.
    """
    wait = 0.5
    while not stop.is_set():
        try:
            # the producer first: initialising it fences (and so aborts) a former self's open
            # transaction, after which the committed tail is final
            sender = TxnSender(bootstrap, transactional_id(gateway, topic, source), stop)
            return sender, landed_positions(bootstrap, topic, gateway, source, committed)
        except Exception as exc:  # noqa: BLE001 - NoBrokersAvailable, timeouts, metadata errors
            log.error("Kafka at %s not usable yet (%s: %s); retrying in %.1f s", bootstrap, type(exc).__name__, exc, wait)
            stop.wait(wait)
            wait = min(wait * 2, 10.0)
    return None


class KafkaTapSink:
    name = "kafka"

    def __init__(self, output_dir: str, bootstrap: str, topic: str, gateway: str):
        self.bootstrap, self.topic, self.gateway = bootstrap, topic, gateway
        out = Path(output_dir)
        self.wal_path = out / "spool" / "taps.wal.jsonl"
        self.wal = DurableLog(self.wal_path)
        (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        self.state_path = out / STATE_DIR / f"kafka-{topic}.json"
        self.committed = json.loads(self.state_path.read_text())["wal_offset"] if self.state_path.exists() else 0
        self.sender: Optional[TxnSender] = None   # connected by the forwarder, so intake never waits for Kafka
        self._skip: set[int] = set()
        self.forwarded = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._forward_loop, name="kafka-taps", daemon=True)
        self._thread.start()

    def existing(self) -> Iterable[bytes]:
        for _, line in read_lines(self.wal_path):
            yield line

    def append(self, line: bytes):
        self.wal.append(line)
        self._wake.set()

    def _forward_loop(self):
        connected = connect(self.bootstrap, self.topic, self.gateway, "taps-wal", self.committed, self._stop)
        if connected is None:
            return
        self.sender, self._skip = connected
        while not self._stop.is_set():
            batch = []
            for end, line in read_lines(self.wal_path, self.committed):
                batch.append((end, line))
                if len(batch) >= BATCH_RECORDS:
                    break
            if not batch:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            records = [(json.loads(line)["tap_id"].encode(), line, end, event_time_ms("taps", line)) for end, line in batch]
            if not publish_exactly(self.sender, self.topic, records, self.gateway, "taps-wal", self.bootstrap,
                                   self.committed, self._skip, self._stop):
                return
            self.committed = batch[-1][0]
            write_json_atomic(self.state_path, {"wal_offset": self.committed})
            self.forwarded += len(batch)

    def health(self) -> dict:
        return {"sink": "kafka", "topic": self.topic, "connected": self.sender is not None,
                "spool_bytes": self.wal.size, "forwarded_bytes": self.committed, "forwarded": self.forwarded}

    def close(self):
        self._stop.set()
        self._wake.set()
        # still connecting: nothing was forwarded, and the daemon thread ends on its own
        self._thread.join(10 if self.sender is not None else 1)
        if self.sender is not None:
            self.sender.close()
        self.wal.close()


class KafkaTweetSink:
    name = "kafka"

    def __init__(self, output_dir: str, bootstrap: str, topic: str, gateway: str):
        self.bootstrap, self.topic, self.gateway = bootstrap, topic, gateway
        out = Path(output_dir) / STATE_DIR
        out.mkdir(parents=True, exist_ok=True)
        self.state_path = out / f"kafka-{topic}.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"sources": {}}
        self.sender: Optional[TxnSender] = None   # connected when the replay starts (on its own thread)
        self._skip: set[int] = set()
        self._stop = threading.Event()

    def resume_offset(self, source: str) -> int:
        committed = int(self.state["sources"].get(source, 0))
        connected = connect(self.bootstrap, self.topic, self.gateway, source, committed, self._stop)
        if connected is None:
            raise RuntimeError("stopped before Kafka was reachable")
        self.sender, self._skip = connected
        if self._skip:
            log.info("firehose: %d records after the last commit already in %s; skipping them", len(self._skip), self.topic)
        return committed

    def write_batch(self, source: Optional[str], lines: list[bytes], ends: list[int]):
        if self.sender is None:      # stdin: no offsets to resume, but a producer all the same
            connected = connect(self.bootstrap, self.topic, self.gateway, "-", 0, self._stop)
            if connected is None:
                raise RuntimeError("stopped before Kafka was reachable")
            self.sender = connected[0]
        records = [(None, line, end, event_time_ms("tweets", line)) for line, end in zip(lines, ends)]
        committed = int(self.state["sources"].get(source, 0)) if source else 0
        if not publish_exactly(self.sender, self.topic, records, self.gateway, source or "-", self.bootstrap,
                               committed, self._skip, self._stop):
            raise RuntimeError("stopped before the batch was acknowledged")
        if source is not None:
            self.state["sources"][source] = ends[-1]
            write_json_atomic(self.state_path, self.state)

    def close(self):
        self._stop.set()
        if self.sender is not None:
            self.sender.close()

"""Keeps the portal's store current while the pipeline streams: one consumer thread in the
portal process reads the result topics (``follows``, ``alerts``, and ``timeline`` when the
pipeline writes it) from their beginning and applies each message as a line of its folder
(``Store.load_lines``: the same rules as the batch load, so retractions work the same).

Partitions are assigned explicitly and re-listed every ``rescan_s`` (a topic created after
the portal starts is picked up); read_committed, so a transaction the pipeline aborts is
never shown. A deployment with several portal replicas would point each at a shared store
instead (see the README).
"""
from __future__ import annotations

import logging
import threading
import time

from kafka_client import consumer, partitions_of
from portal.store import Store

log = logging.getLogger("portal.feed")

TOPIC_KINDS = {"follows": "follows", "alerts": "alerts", "timeline": "timeline"}


class TopicFeed:
    def __init__(self, store: Store, bootstrap: str, topics: dict[str, str] = TOPIC_KINDS, rescan_s: float = 5.0):
        self.store, self.bootstrap, self.topics, self.rescan_s = store, bootstrap, dict(topics), rescan_s
        self.applied = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="portal-feed", daemon=True)

    def start(self) -> "TopicFeed":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition
        client = consumer(self.bootstrap, **{"group.id": "tapfollow-portal"})
        assigned: set[tuple[str, int]] = set()
        next_scan = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_scan:
                    fresh = [(topic, p) for topic in self.topics for p in partitions_of(client, topic, 5.0)
                             if (topic, p) not in assigned]
                    if fresh:
                        assigned.update(fresh)
                        client.incremental_assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in fresh])
                    next_scan = time.monotonic() + self.rescan_s
                batch: dict[str, list[str]] = {}
                for msg in client.consume(500, 0.5) if assigned else []:
                    if msg.error() is not None:
                        continue
                    batch.setdefault(self.topics[msg.topic()], []).append(
                        (msg.value() or b"").decode("utf-8", errors="replace"))
                for kind, lines in batch.items():
                    self.applied += self.store.load_lines(kind, lines)
                if not assigned:
                    self._stop.wait(0.5)
        except Exception:                           # noqa: BLE001 -- a dead feed must be visible
            log.exception("the topic feed stopped; the portal now shows data as of its last message")
            raise
        finally:
            client.close()

"""Kafka sources and sinks for the pipeline (Beam cross-language KafkaIO).

* :class:`ReadRawFromKafka` -> ``(source_name, raw_line)`` with the Kafka CreateTime
  as the element timestamp (event time flows), reading every topic from the earliest
  offset. Unbounded unless ``max_num_records`` / ``max_read_time`` is given.
* :class:`WriteLinesToKafka` writes ``str`` lines (JSON) as UTF-8 message values.
* :func:`resolve_expansion_service` turns ``--kafka_expansion_service`` (or the
  environment ``infra/`` sets) into what Beam's Kafka transforms take.

KafkaIO is Java: Python hands it to an *expansion service*, and the runner executes it
in a *Java SDK worker*. With no Docker here, ``infra/xlang.sh start`` (part of
``infra/up.sh``) runs both from Maven Central jars: the expansion service on
127.0.0.1:8097, whose Java transforms get an EXTERNAL environment served by the Java
worker pool on 127.0.0.1:8099. This module only connects to what is configured: it
never starts services or looks into ``infra/`` (a library must not shell out to a
deployment's scripts); ``infra/env.sh`` exports where things are.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import apache_beam as beam
from apache_beam.io.kafka import ReadFromKafka, WriteToKafka

from core.config import DEFAULT_KAFKA_BOOTSTRAP
from kafka_client import port_open

# Set by infra/env.sh (and so by every infra script and the integration tests' fixture).
DEFAULT_EXPANSION_ADDRESS = os.environ.get("BEAM_KAFKA_EXPANSION_SERVICE", "127.0.0.1:8097")
JAVA_WORKER_ADDRESS = os.environ.get("BEAM_JAVA_WORKER_POOL", "127.0.0.1:8099")
_BYTES = "org.apache.kafka.common.serialization.ByteArraySerializer"


def expansion_service_jar() -> Optional[str]:
    """The launcher jar of the installed KafkaIO expansion service (``$BEAM_KAFKA_EXPANSION_JAR``,
    which ``infra/env.sh`` exports), or None.

    It is a manifest-only jar (Main-Class + Class-Path over the Maven Central jars next
    to it), usable as ``java -jar JAR <port>`` or with Beam's ``JavaJarExpansionService``.
    """
    jar = os.environ.get("BEAM_KAFKA_EXPANSION_JAR")
    return jar if jar and os.path.isfile(jar) else None


def resolve_expansion_service(expansion_service=None):
    """What to pass as ``expansion_service=`` to Beam's Kafka transforms.

    * ``"host:port"`` -> used as is (a running expansion service);
    * a path to a ``.jar`` -> Beam starts it for the pipeline (Java transforms get an
      EXTERNAL environment at ``BEAM_JAVA_WORKER_POOL``, default 127.0.0.1:8099);
    * ``None`` -> ``$BEAM_KAFKA_EXPANSION_SERVICE`` or 127.0.0.1:8097, which must answer
      (``infra/xlang.sh start`` or ``infra/up.sh`` starts it).
    """
    if expansion_service is not None and not isinstance(expansion_service, str):
        return expansion_service  # already an ExpansionService object
    if expansion_service and expansion_service.endswith(".jar"):
        from apache_beam.transforms.external import JavaJarExpansionService
        return JavaJarExpansionService(
            expansion_service,
            extra_args=["{{PORT}}", "--defaultEnvironmentType=EXTERNAL",
                        f"--defaultEnvironmentConfig={JAVA_WORKER_ADDRESS}"])
    address = expansion_service or DEFAULT_EXPANSION_ADDRESS
    if port_open(address):
        return address
    raise RuntimeError(
        f"no Beam expansion service at {address}: run `bash infra/install.sh && bash infra/xlang.sh start` "
        "(or infra/up.sh), or pass --kafka_expansion_service HOST:PORT|JAR")


def _consumer_config(bootstrap_servers: str, group_id: Optional[str], extra: Optional[Mapping[str, str]]):
    # read_committed: the gateway writes in transactions; an aborted batch (a broker crash
    # mid-write, re-sent after) must not be read twice
    config = {"bootstrap.servers": bootstrap_servers, "auto.offset.reset": "earliest",
              "isolation.level": "read_committed"}
    if group_id:
        config["group.id"] = group_id
    config.update(extra or {})
    return config


class ReadRawFromKafka(beam.PTransform):
    """Read topics as ``(source_name, raw_line)``; element timestamp = Kafka CreateTime.

    ``topics`` maps a source name (``taps``, ``tweets``, ``pings`` …) to its topic. Each
    topic gets its own Java read (with metadata, so a record's topic names its source),
    and the reads are flattened; values are decoded as UTF-8 (undecodable bytes become
    U+FFFD, so the parser dead-letters them with the damage visible).
    ``max_num_records`` / ``max_read_time`` bound each topic's read. ``skip_below`` drops a
    topic's records below given offsets per partition: the ones a launch snapshot already
    holds (``kafka_client.snapshot_topic_with_ends``), so the live read continues it
    exactly -- by offset, not by time (Kafka's start-by-time would skip a record produced
    later with an older CreateTime; KafkaIO's start position ignores a group's commits).

    Event time: Kafka's CreateTime policy. The watermark of a partition follows the
    largest CreateTime read from it; a partition with no backlog lets the watermark move
    to the current time, so historical replays should be fully produced before reading
    (with one partition per topic, as ``infra/up.sh`` creates them).

    Why one read per topic: Prism (Beam 2.77) takes a splittable read's output
    watermark from the residuals of the *last* bundle it ran, not from all of the
    read's partitions. With one read over several topics, the bundle that finds the
    smallest topic caught up (watermark = wall-clock time) moved the watermark of every
    topic to now, and the rest of the replay arrived days late. Separate reads are
    separate stages, and a Flatten's watermark is the minimum of its inputs', so each
    topic holds the watermark until its own backlog is read.
    """

    def __init__(self, topics: Mapping[str, str], bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP,
                 expansion_service=None, *, group_id: Optional[str] = None,
                 max_num_records: Optional[int] = None, max_read_time: Optional[int] = None,
                 consumer_config: Optional[Mapping[str, str]] = None, commit_offsets: bool = False,
                 skip_below: Optional[Mapping[str, Mapping[int, int]]] = None):
        super().__init__()
        # topic -> {partition: offset}: records below are dropped (a launch snapshot holds them)
        self._skip_below = {topic: dict(ends) for topic, ends in (skip_below or {}).items()}
        if not topics:
            raise ValueError("ReadRawFromKafka needs at least one topic")
        self._by_topic = {topic: name for name, topic in topics.items()}
        if len(self._by_topic) != len(topics):
            raise ValueError(f"two sources read the same topic: {dict(topics)}")
        self._bootstrap = bootstrap_servers
        self._expansion_service = expansion_service
        self._group_id = group_id or ("beam-pipeline" if commit_offsets else None)
        self._max_num_records = max_num_records
        self._max_read_time = max_read_time
        self._extra = consumer_config
        self._commit = commit_offsets

    def expand(self, pbegin):
        by_topic = self._by_topic
        expansion_service = resolve_expansion_service(self._expansion_service)

        skip_below = self._skip_below

        def held_by_snapshot(row) -> bool:
            ends = skip_below.get(row.topic)
            return ends is not None and row.offset < ends.get(row.partition, 0)

        def to_source_line(row):
            value = row.value
            if isinstance(value, (bytes, bytearray)):
                value = bytes(value).decode("utf-8", errors="replace")
            elif value is None:
                value = ""
            return by_topic.get(row.topic, row.topic), value

        reads = []
        for topic in sorted(by_topic):
            records = pbegin | f"KafkaRead[{topic}]" >> ReadFromKafka(
                consumer_config=_consumer_config(self._bootstrap, self._group_id, self._extra),
                topics=[topic],
                timestamp_policy=ReadFromKafka.create_time_policy,
                with_metadata=True,
                max_num_records=self._max_num_records,
                max_read_time=self._max_read_time,
                commit_offset_in_finalize=self._commit,
                expansion_service=expansion_service)
            if topic in skip_below:
                records = records | f"AfterSnapshot[{topic}]" >> beam.Filter(lambda row: not held_by_snapshot(row))
            reads.append(records | f"ToSourceLine[{topic}]"
                         >> beam.Map(to_source_line).with_output_types(tuple[str, str]))
        if len(reads) == 1:
            return reads[0]
        return tuple(reads) | "AllTopics" >> beam.Flatten()


class WriteLinesToKafka(beam.PTransform):
    """Write ``str`` lines (e.g. JSON records) to ``topic`` as UTF-8 values (empty key)."""

    def __init__(self, topic: str, bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP, expansion_service=None,
                 *, producer_config: Optional[Mapping[str, str]] = None):
        super().__init__()
        self._topic = topic
        self._bootstrap = bootstrap_servers
        self._expansion_service = expansion_service
        self._extra = producer_config

    def expand(self, lines):
        config = {"bootstrap.servers": self._bootstrap, "acks": "all"}
        config.update(self._extra or {})
        return (lines
                | "ToKV" >> beam.Map(lambda line: (b"", line.encode("utf-8"))).with_output_types(tuple[bytes, bytes])
                | "KafkaWrite" >> WriteToKafka(
                    producer_config=config, topic=self._topic,
                    key_serializer=_BYTES, value_serializer=_BYTES,
                    expansion_service=resolve_expansion_service(self._expansion_service)))

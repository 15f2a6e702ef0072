"""Where the Flink job's lines come from and where its records go.

Sources (every line ends in exactly one place: a typed record or a dead letter):

* **files** (bounded, BATCH runtime mode): the contract's input files
  (``core.input_files``, the names Beam gives them) are read *inside* the job: a
  collection of ``(kind, path)`` and a FlatMap reading each with the one line reader
  (``core.lines.iter_lines``: damaged ``.gz``, over-long lines and BOMs handled as on
  Beam). Each line is judged once (``core.inputs.judge_line``, against the worker's
  clock, as Beam's ParseInputs does) and stamped with the judged record's event time.
* **Kafka** (STREAMING): one ``KafkaSource`` per event topic from the earliest offset,
  values as strings, event time = the Kafka record's timestamp (CreateTime, which
  ``kafka_client`` sets to the record's event time as ``core.inputs`` reads it), the
  watermark ``stream_disorder_s`` behind the largest time seen, an idle taps or pings
  partition ignored after ``kafka_idleness_ms`` (the firehose never is: ``CLOCK_TOPIC``).
  ``kafka_stop_at_latest`` bounds the read to what
  the topics held at job start.
* the **registry** is read at build time (the users file, or the snapshot of the users
  topic the launcher took) and merged with ``core.registry.merge_registry`` as Beam's
  MergeRegistry does (each user's latest verified settings change applied, forged ones dead
  letters): the steps get it as a plain dict, its dead letters join the stream. Streaming
  from Kafka, the ``users`` topic is also read live from the end offsets the snapshot saw
  (``JobSettings.users_live_from``), one more source of the event union: the settings
  changes, judged like every line (``flink_job.job`` folds them into the registry).

Sinks: JSON lines (``schemas.records.to_json_line``) in ``FileSink`` part files named
``part-*.jsonl`` straight under each folder, rolled on checkpoints only, so a file is
committed exactly once, at a checkpoint or at the end of input. Until then it is a hidden
``.part-*.jsonl.inprogress.*`` file, which no reader takes (they glob ``*.jsonl``, and
``glob`` skips dot files). Follows and alerts may go to Kafka instead through an
exactly-once ``KafkaSink`` (transactions committed on checkpoints: readers must read
``read_committed``, as ``kafka_client`` does). ``marketing/`` is a Parquet dataset
(``ParquetBulkWriters``), committed on checkpoints too.

Every operator is named after its stage; the stateful ones -- sources (their read
positions) and sinks (their pending files and transactions) -- also carry that name as
their uid, so a checkpoint or savepoint restores into a rebuilt job. The stateless maps
get theirs from their names (``flink_job.ordered.assign_uids``).
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator, Optional

from pyflink.common import Duration, Instant, Row, Types, WatermarkStrategy
from pyflink.common.serialization import Encoder, SimpleStringSchema
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.file_system import (BucketAssigner, FileSink, OutputFileConfig,
                                                       RollingPolicy)
from pyflink.datastream.connectors.kafka import (KafkaOffsetsInitializer, KafkaRecordSerializationSchema,
                                                 KafkaSink, KafkaSource, KafkaTopicPartition)
from pyflink.datastream.connectors.number_seq import NumberSequenceSource

from core.config import RunConfig
from core.conventions import dead_letter, raw_text
from core.input_files import EVENT_KINDS, as_element
from core.inputs import OUTPUT_TAGS, Judged, judge_line
from core.lines import iter_lines
from core.registry import merge_registry
from schemas.records import DeadLetter, Statistic, to_json_line
from schemas.timefmt import DEFAULT_MAX_EVENT_FUTURE_S

PICKLED = Types.PICKLED_BYTE_ARRAY()
OUTPUTS = OUTPUT_TAGS                         # users, pings, taps, tweets, deletes
DEAD = "dead_letters"
# Kafka's transactions must outlive a restart from the last checkpoint; the broker's
# transaction.max.timeout.ms is set to match (infra/kafka.sh).
KAFKA_TRANSACTION_TIMEOUT_MS = 600_000


# ---- one line, judged --------------------------------------------------------------------

def judge_element(element, origins: dict, max_future_s: float, now: float) -> Judged:
    """The judgement of a read element: ``(kind, line)``, or ``(kind, raw, error)`` for a line
    the reader could not read whole (``core.input_files.as_element``), as ParseInputs judges it."""
    kind, line = element[0], element[1]
    if kind not in origins:
        return Judged(str(kind), line, DEAD, dead_letter(str(kind), f"unknown input kind {kind!r}", line))
    if len(element) == 3:
        return Judged(kind, line, DEAD, dead_letter(origins[kind], element[2], line))
    return judge_line(kind, origins[kind], line, now, max_future_s)


def judging(ops, origins: dict, max_future_s: float):
    """The judging function of the ParseEvents stage, counting as ParseInputs does
    (``read.<kind>``, ``parsed.<kind>``, ``rejected.<kind>``, ``future.<kind>``)."""
    counters = {(stage, kind): ops.counter(f"{stage}.{kind}")
                for kind in origins for stage in ("read", "parsed", "rejected", "future")}
    unknown = ops.counter("rejected.unknown_kind")

    def judge(element) -> Judged:
        judged = judge_element(element, origins, max_future_s, time.time())
        if judged.kind not in origins:
            unknown.inc()
            return judged
        counters["read", judged.kind].inc()
        if judged.future:
            counters["future", judged.kind].inc()
        counters["rejected" if judged.tag == DEAD else "parsed", judged.kind].inc()
        return judged
    return judge


def routing(with_raw: frozenset):
    """Judged -> (tag, value): the typed record (with its raw line for the ``with_raw`` kinds,
    for a later step that may still dead-letter it) or its dead letter."""
    def route(judged: Judged):
        value = judged.value
        if judged.tag in with_raw:
            value = (value, raw_text(judged.line))
        yield judged.tag, value
    return route


class _JudgedTime(TimestampAssigner):
    """A judged line's event time in ms; a dead letter (no time of its own) at 0: in BATCH
    mode it only travels to the dead-letter sink, where its time means nothing."""

    def extract_timestamp(self, value, record_timestamp) -> int:
        ts = value.event_time
        return 0 if ts is None else int(round(ts * 1000))


# ---- the registry, at build time ----------------------------------------------------------

def registry_from_lines(lines: Iterable, origin: str, portal_pubkey: Optional[str] = None,
                        entries: bool = False) -> tuple[dict, list[DeadLetter], int]:
    """(user_id -> merged User, dead letters, lines read) from the registry's lines, judged and
    merged as Beam's ParseUsers + MergeRegistry do (``core.inputs``, ``core.registry``): the
    latest settings change ``portal_pubkey`` verifies applied. ``entries``: each user's
    ``RegistryEntry`` instead of the User (the seeds of the live registry)."""
    pairs, dead, read = [], [], 0
    origins = {"users": origin}
    for line in lines:
        read += 1
        # ParseUsers' clock rule (its default bound): only a settings change has a time
        judged = judge_element(as_element("users", line), origins, DEFAULT_MAX_EVENT_FUTURE_S, time.time())
        if judged.tag == DEAD:
            dead.append(judged.value)
        else:
            pairs.append((judged.value, raw_text(judged.line)))
    merged = {}
    for out in merge_registry(pairs, origin, portal_pubkey, entries=entries):
        if isinstance(out, DeadLetter):
            dead.append(out)
        else:
            merged[out.user_id] = out
    return merged, dead, read


def registry_lines(paths: Iterable[str]) -> Iterator:
    for path in paths:
        yield from iter_lines(path)


# ---- event sources ----------------------------------------------------------------------

def _read_path(kind_path):
    kind, path = kind_path
    for line in iter_lines(path):
        yield as_element(kind, line)


def file_events(env, files: dict, uid: str):
    """``(kind, line)`` elements of every event file, read inside the job (one FlatMap)."""
    paths = [(kind, path) for kind in EVENT_KINDS for path in files[kind]]
    return (from_records(env, paths, uid, "Files")
            .flat_map(_read_path, output_type=PICKLED).name(f"{uid}/ReadLines"))


def stamp_judged(judged, uid: str):
    """Judged lines stamped with their records' event time (the files' BATCH read)."""
    strategy = WatermarkStrategy.for_monotonous_timestamps().with_timestamp_assigner(_JudgedTime())
    return judged.assign_timestamps_and_watermarks(strategy).name(f"{uid}/EventTime")


# The topic whose watermark is never declared idle: the firehose, the stream's clock. If
# every Kafka source were idle at once, the only inputs left at the joins would be the
# finished build-time sources (registry, the DP schedule's hour ticks), whose final
# watermark is Long.MAX: every pending hour would be released and every tick decided at
# once, and all later data would be late. A quiet firehose holds the watermark instead
# (nothing early, nothing late); a quiet taps or pings topic stalls nothing.
CLOCK_TOPIC = "tweets"
# The users topic (read live: the registry's changes) is a changelog, quiet for hours: it is
# ignored by the watermark as soon as it has nothing new (a periodic watermark or two later),
# not after the event topics' idleness. With 10 s, every start held the watermark for 10 s
# while a backlog was read into keyed state with no tick run; the fault test's TaskManager
# kill then restored all of it pending, behind a watermark only new tweets move (a restored
# source starts at Long.MIN), and the stop --drain that decided it all at once committed no
# follows. A change that arrives behind the watermark (within the allowed lateness) is
# applied at once: the registry's messages are immediate (``CurrentRegistry``).
REGISTRY_IDLENESS_MS = 1


def _offsets_from(topic: str, live_from: tuple):
    """Where a read of ``topic`` starts: the given ``(partition, offset)`` pairs, a partition
    not named at its group's committed offset, else its earliest."""
    return KafkaOffsetsInitializer.offsets({KafkaTopicPartition(topic, partition): offset
                                            for partition, offset in live_from})


def kafka_events(env, cfg: RunConfig, stop_at_latest: bool, idleness_ms: int, uid: str,
                 users_live_from: Optional[tuple] = None):
    """``(kind, line)`` elements of the event topics (topic = kind), at their Kafka timestamps;
    taps and pings ignored by the watermark after ``idleness_ms`` without a record, the
    firehose never (``CLOCK_TOPIC``). ``users_live_from``: the ``users`` topic too, from those
    offsets (what was produced after the launch snapshot: the settings changes), ignored by the
    watermark whenever it is quiet (``REGISTRY_IDLENESS_MS``); in this union its records share
    the firehose's watermark, so the registry's fold is held by the stream's clock."""
    streams = []
    disorder = Duration.of_millis(int(round(cfg.stream_disorder_s * 1000)))
    starts = {kind: KafkaOffsetsInitializer.earliest() for kind in EVENT_KINDS}
    if users_live_from is not None:
        starts["users"] = _offsets_from("users", users_live_from)
    for kind, start in starts.items():
        builder = (KafkaSource.builder()
                   .set_bootstrap_servers(cfg.kafka_bootstrap_servers)
                   .set_topics(kind)
                   .set_group_id(f"tapfollow-flink-{kind}")
                   .set_starting_offsets(start)
                   .set_value_only_deserializer(SimpleStringSchema())
                   .set_property("isolation.level", "read_committed")
                   .set_property("partition.discovery.interval.ms", "0" if stop_at_latest else "30000"))
        if stop_at_latest:
            builder = builder.set_bounded(KafkaOffsetsInitializer.latest())
        strategy = WatermarkStrategy.for_bounded_out_of_orderness(disorder)
        if kind != CLOCK_TOPIC:
            quiet_ms = REGISTRY_IDLENESS_MS if kind == "users" else idleness_ms
            strategy = strategy.with_idleness(Duration.of_millis(quiet_ms))
        stream = (env.from_source(builder.build(), strategy, f"{uid}/Kafka:{kind}").uid(f"{uid}/kafka-{kind}")
                  .map(lambda value, kind=kind: (kind, value), output_type=PICKLED)
                  .name(f"{uid}/Kafka:{kind}/AsElement"))
        streams.append(stream)
    first, *rest = streams
    return first.union(*rest) if rest else first


# ---- sinks --------------------------------------------------------------------------------

def jsonl_sink(records, folder: str, uid: str) -> None:
    """Records -> ``folder/part-*.jsonl`` (committed on checkpoints / at end of input)."""
    sink = (FileSink.for_row_format(folder, Encoder.simple_string_encoder("UTF-8"))
            .with_output_file_config(OutputFileConfig.builder().with_part_prefix("part")
                                     .with_part_suffix(".jsonl").build())
            .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
            .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
            .build())
    (records.map(to_json_line, output_type=Types.STRING()).name(f"{uid}/ToJson")
     .sink_to(sink).name(f"{uid}/Write").uid(f"{uid}/write"))


def kafka_sink(records, topic: str, bootstrap: str, transactional_id_prefix: str, uid: str) -> None:
    """Records -> JSON lines in ``topic``, exactly once (Kafka transactions committed on checkpoints)."""
    serializer = (KafkaRecordSerializationSchema.builder().set_topic(topic)
                  .set_value_serialization_schema(SimpleStringSchema()).build())
    sink = (KafkaSink.builder()
            .set_bootstrap_servers(bootstrap)
            .set_record_serializer(serializer)
            .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
            .set_transactional_id_prefix(f"{transactional_id_prefix}-{topic}")
            .set_property("transaction.timeout.ms", str(KAFKA_TRANSACTION_TIMEOUT_MS))
            .build())
    (records.map(to_json_line, output_type=Types.STRING()).name(f"{uid}/ToJson")
     .sink_to(sink).name(f"{uid}/Write").uid(f"{uid}/write"))


STATISTIC_TIMES = ("window_start", "window_end")


def statistic_row_type():
    """``schemas.records.arrow_schema(Statistic)`` in Flink's types: times as TIMESTAMP_LTZ(3)
    (UTC instants, as the Arrow schema's ``timestamp[ms, UTC]``), the rest field by field."""
    from pyflink.table.types import DataTypes
    import typing
    kinds = {str: DataTypes.STRING(), float: DataTypes.DOUBLE(), int: DataTypes.BIGINT()}
    fields = []
    for name, annotation in typing.get_type_hints(Statistic).items():
        kind = DataTypes.TIMESTAMP_LTZ(3) if name in STATISTIC_TIMES else kinds[annotation]
        fields.append(DataTypes.FIELD(name, kind))
    return DataTypes.ROW(fields)


def _statistic_row(stat: Statistic) -> Row:
    values = stat._asdict()
    for name in STATISTIC_TIMES:
        values[name] = Instant.of_epoch_milli(int(round(values[name] * 1000)))
    return Row(**values)


def parquet_sink(statistics, folder: str, uid: str) -> None:
    """Statistics -> the ``marketing/`` Parquet dataset (``part-*.parquet``, committed on checkpoints)."""
    import typing
    from pyflink.datastream.formats.parquet import ParquetBulkWriters
    names = list(typing.get_type_hints(Statistic))
    kinds = {str: Types.STRING(), float: Types.DOUBLE(), int: Types.LONG()}
    hints = typing.get_type_hints(Statistic)
    row_info = Types.ROW_NAMED(names, [Types.INSTANT() if n in STATISTIC_TIMES else kinds[hints[n]] for n in names])
    from pyflink.common import Configuration
    hadoop = Configuration()
    # int64 millisecond timestamps (as Beam's timestamp[ms, UTC]), not Parquet's legacy int96
    hadoop.set_string("parquet.write.int64.timestamp", "true")
    hadoop.set_string("parquet.timestamp.time.unit", "millis")
    writer = ParquetBulkWriters.for_row_type(statistic_row_type(), hadoop_config=hadoop, utc_timestamp=True)
    sink = (FileSink.for_bulk_format(folder, writer)
            .with_output_file_config(OutputFileConfig.builder().with_part_prefix("part")
                                     .with_part_suffix(".parquet").build())
            .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
            .build())
    (statistics.map(_statistic_row, output_type=row_info).name(f"{uid}/ToRow")
     .sink_to(sink).name(f"{uid}/Write").uid(f"{uid}/write"))


def from_records(env, records: list, uid: str, stage: str):
    """A bounded stream of build-time records (the merged registry, its dead letters).

    A checkpointed source (``NumberSequenceSource``: the record indexes, then the records
    themselves, closed over): restored after a failure it resumes where its checkpoint left
    it. ``from_collection`` is a legacy source that starts over, and its records came twice."""
    records = list(records)
    indexes = NumberSequenceSource(0, max(len(records) - 1, 0))
    return (env.from_source(indexes, WatermarkStrategy.no_watermarks(), f"{uid}/{stage}").uid(f"{uid}/{stage}")
            .flat_map(lambda index: records[index:index + 1], output_type=PICKLED)
            .name(f"{uid}/{stage}/Records"))

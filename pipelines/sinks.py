"""The sinks of the output contract: JSONL folders, the Parquet marketing
dataset, Kafka topics for the alerting side, and ``run_summary.json``.

Batch writes one set of shards per folder; streaming writes a set of shards per
hour of event time (``triggering_frequency``), which readers take the same way
since they read every ``*.jsonl`` / Parquet file under a folder.
"""
from __future__ import annotations

import datetime as dt
import glob
import json
import os

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.window import TimestampedValue

from schemas.records import Statistic, TIME_FIELDS, arrow_schema, to_json_dict
from core.conventions import METRICS_NAMESPACE

STREAMING_FILE_WINDOW_S = 3600
# Streaming shards are named by their window in UTC, e.g.
# part-[2026-11-20T03-00-00, 2026-11-20T04-00-00)-00000-of-00001.jsonl (Beam's default
# template prints the window's bounds as epoch floats).
STREAMING_SHARD_NAME_TEMPLATE = "-V-SSSSS-of-NNNNN"


def to_json_line(record) -> str:
    """One record as its contract JSON line (times RFC 3339, UTF-8 kept as is)."""
    as_dict = record if isinstance(record, dict) else to_json_dict(record)
    line = json.dumps(as_dict, ensure_ascii=False, separators=(",", ":"))
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate got this far (the parsers reject them): write it as a JSON
            # escape rather than fail the whole write.
            line = json.dumps(as_dict, ensure_ascii=True, separators=(",", ":"))
    return line


class CountEmitted(beam.PTransform):
    """Pass-through that counts ``emitted.<name>`` for the run summary."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    def expand(self, pcoll):
        counter_name = f"emitted.{self._name}"

        def count(element, counter=[None]):
            if counter[0] is None:
                counter[0] = Metrics.counter(METRICS_NAMESPACE, counter_name)
            counter[0].inc()
            return element

        return pcoll | "Count" >> beam.Map(count)


class _ClampToEpoch(beam.DoFn):
    """Streaming file windows cannot hold MIN-timestamped registry rows; file them at the epoch."""

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        if timestamp < 0:
            yield TimestampedValue(element, 0)
        else:
            yield element


def _windowable(pcoll, streaming: bool):
    return pcoll | "ClampTimestamps" >> beam.ParDo(_ClampToEpoch()) if streaming else pcoll


class WriteJsonl(beam.PTransform):
    """Records (NamedTuples or dicts) -> ``<folder>/part-*.jsonl``."""

    def __init__(self, folder: str, streaming: bool):
        super().__init__()
        self._folder, self._streaming = folder, streaming

    def expand(self, records):
        return (
            _windowable(records, self._streaming)
            | "ToJson" >> beam.Map(to_json_line)
            | "Write" >> beam.io.WriteToText(
                os.path.join(self._folder, "part"),
                file_name_suffix=".jsonl",
                shard_name_template=STREAMING_SHARD_NAME_TEMPLATE if self._streaming else None,
                triggering_frequency=STREAMING_FILE_WINDOW_S if self._streaming else None))


def _statistic_row(stat: Statistic) -> dict:
    row = stat._asdict()
    for name in TIME_FIELDS.intersection(row):
        row[name] = dt.datetime.fromtimestamp(row[name], tz=dt.timezone.utc)
    return row


class _HourTable(beam.DoFn):
    """One file window's rows -> one Arrow table, kept in that window at its own timestamp."""

    def __init__(self, schema):
        self._schema = schema

    def process(self, keyed_rows):
        _key, rows = keyed_rows
        yield pa.Table.from_pylist(list(rows), schema=self._schema)


class WriteMarketingParquet(beam.PTransform):
    """Released statistics -> the ``marketing/`` Parquet dataset.

    Streaming builds one Arrow table per file window itself and writes it with
    ``WriteToParquetBatched``. ``WriteToParquet``'s unbounded path batches rows in
    ``_RowDictionariesToArrowTable``, whose ``finish_bundle`` stamps each table at
    its window's *end*, one millisecond past the window's last timestamp. Prism
    (Beam 2.77) then advances the writer's GroupByKey past that window (its
    allowed lateness is 0), garbage-collects the window's trigger state while the
    table is still pending, and panics (``assignment to entry in nil map``,
    elementmanager.go:2107). A GroupByKey output stays inside its window.
    """

    def __init__(self, folder: str, streaming: bool):
        super().__init__()
        self._folder, self._streaming = folder, streaming

    def expand(self, statistics):
        schema = arrow_schema(Statistic)
        rows = _windowable(statistics, self._streaming) | "ToRow" >> beam.Map(_statistic_row)
        prefix = os.path.join(self._folder, "part")
        if not self._streaming:
            return rows | "Write" >> beam.io.WriteToParquet(prefix, schema=schema, file_name_suffix=".parquet")
        return (
            rows
            # the writer's own file windows (fixed, on time, no lateness), grouped here
            | "FileWindows" >> beam.WindowInto(window.FixedWindows(STREAMING_FILE_WINDOW_S))
            | "KeyAll" >> beam.Map(lambda row: (None, row))
            | "GroupWindow" >> beam.GroupByKey()
            | "ToTable" >> beam.ParDo(_HourTable(schema))
            | "Write" >> beam.io.WriteToParquetBatched(
                prefix, schema=schema, file_name_suffix=".parquet",
                shard_name_template=STREAMING_SHARD_NAME_TEMPLATE,
                triggering_frequency=STREAMING_FILE_WINDOW_S))


def read_jsonl_folder(folder: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.jsonl"), recursive=True)):
        with open(path, encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows

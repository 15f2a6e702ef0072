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
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from schemas.records import Statistic, TIME_FIELDS, arrow_schema, to_json_dict
from transforms.parse_inputs import METRICS_NAMESPACE

STREAMING_FILE_WINDOW_S = 3600


def to_json_line(record) -> str:
    """One record as its contract JSON line (times RFC 3339, UTF-8 kept as is)."""
    as_dict = record if isinstance(record, dict) else to_json_dict(record)
    return json.dumps(as_dict, ensure_ascii=False, separators=(",", ":"))


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
                triggering_frequency=STREAMING_FILE_WINDOW_S if self._streaming else None))


def _statistic_row(stat: Statistic) -> dict:
    row = stat._asdict()
    for name in TIME_FIELDS.intersection(row):
        row[name] = dt.datetime.fromtimestamp(row[name], tz=dt.timezone.utc)
    return row


class WriteMarketingParquet(beam.PTransform):
    """Released statistics -> the ``marketing/`` Parquet dataset."""

    def __init__(self, folder: str, streaming: bool):
        super().__init__()
        self._folder, self._streaming = folder, streaming

    def expand(self, statistics):
        return (
            _windowable(statistics, self._streaming)
            | "ToRow" >> beam.Map(_statistic_row)
            | "Write" >> beam.io.WriteToParquet(
                os.path.join(self._folder, "part"),
                schema=arrow_schema(Statistic),
                file_name_suffix=".parquet",
                triggering_frequency=STREAMING_FILE_WINDOW_S if self._streaming else None))


def count_jsonl_lines(folder: str) -> int:
    total = 0
    for path in glob.glob(os.path.join(folder, "**", "*.jsonl"), recursive=True):
        with open(path, "rb") as handle:
            total += sum(1 for _ in handle)
    return total


def read_jsonl_folder(folder: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.jsonl"), recursive=True)):
        with open(path, encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows

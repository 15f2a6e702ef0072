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
from apache_beam.transforms import window
from apache_beam.transforms.window import TimestampedValue

from schemas.records import Statistic, arrow_schema, arrow_table, to_json_line
from core.conventions import METRICS_NAMESPACE

STREAMING_FILE_WINDOW_S = 3600
# Streaming shards are named by their window in UTC, e.g.
# part-[2026-11-20T03-00-00, 2026-11-20T04-00-00)-00000-of-00001.jsonl (Beam's default
# template prints the window's bounds as epoch floats).
STREAMING_SHARD_NAME_TEMPLATE = "-V-SSSSS-of-NNNNN"


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


def window_file_name(start: float, end: float, index: int, suffix: str) -> str:
    """``part-[2026-11-20T03-00-00, 2026-11-20T04-00-00)-00000-of-00001.parquet``: the
    name Beam gives a windowed text shard through STREAMING_SHARD_NAME_TEMPLATE."""
    def utc(t: float) -> str:
        return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    return f"part-[{utc(start)}, {utc(end)})-{index:05d}-of-00001{suffix}"


class _WriteWindowParquet(beam.DoFn):
    """One window's statistics -> one Parquet file, written whole and renamed into place."""

    def __init__(self, folder: str):
        self._folder = folder

    def process(self, keyed_statistics, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        import pyarrow.parquet as pq
        _key, statistics = keyed_statistics
        table = arrow_table(list(statistics), Statistic)
        os.makedirs(self._folder, exist_ok=True)
        name = window_file_name(win.start.micros / 1e6, win.end.micros / 1e6, pane.index, ".parquet")
        temp = os.path.join(self._folder, f".{name}.tmp")      # not *.parquet: readers skip it
        pq.write_table(table, temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, os.path.join(self._folder, name))
        yield name


class WriteMarketingParquet(beam.PTransform):
    """Released statistics -> the ``marketing/`` Parquet dataset.

    Streaming writes each file window's rows itself, after the window's GroupByKey
    (fixed hourly windows, on time, no lateness): the file is written under a
    temporary name, synced and renamed, so it is complete the moment it appears.
    Beam's streaming file sinks did not hold up on Prism (Beam 2.77):
    ``WriteToParquet``'s unbounded path stamps its Arrow tables one millisecond past
    the window, and Prism garbage-collected the window's trigger state while the
    table was pending and panicked (``assignment to entry in nil map``,
    elementmanager.go:2107); ``WriteToParquetBatched`` with a triggering frequency
    left its files without their Parquet footer (iobase's
    ``_WriteWindowedBundleDoFn`` looks its open writers up by window but files them
    by window *and key*, so a window's writer can be replaced before it is closed):
    readers saw corrupt files and the Kafka-to-Prism test timed out.
    """

    def __init__(self, folder: str, streaming: bool):
        super().__init__()
        self._folder, self._streaming = folder, streaming

    def expand(self, statistics):
        if not self._streaming:
            # Arrow tables built column by column from batches of records, written as they come
            # (a dict per row through WriteToParquet cost 7 % of a batch run: issue #13's profile).
            prefix = os.path.join(self._folder, "part")
            return (statistics
                    | "Batch" >> beam.BatchElements(min_batch_size=1024, max_batch_size=65536)
                    | "ToArrow" >> beam.Map(arrow_table, Statistic)
                    | "Write" >> beam.io.WriteToParquetBatched(prefix, schema=arrow_schema(Statistic),
                                                               file_name_suffix=".parquet"))
        return (
            _windowable(statistics, self._streaming)
            | "FileWindows" >> beam.WindowInto(window.FixedWindows(STREAMING_FILE_WINDOW_S))
            | "KeyAll" >> beam.Map(lambda stat: (None, stat))
            | "GroupWindow" >> beam.GroupByKey()
            | "WriteWindowFile" >> beam.ParDo(_WriteWindowParquet(self._folder)))


def read_jsonl_folder(folder: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.jsonl"), recursive=True)):
        with open(path, encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows

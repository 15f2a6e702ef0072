"""The streaming marketing sink: one complete Parquet file per hour of event time."""
from __future__ import annotations

import os

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

import transforms  # noqa: F401 -- registers the records' coders
from pipelines.sinks import WriteMarketingParquet, window_file_name
from schemas.records import Statistic

HOUR = 1_763_625_600.0          # 2025-11-20T08:00:00Z


def stat(hour: float, cell: str, value: float) -> Statistic:
    return Statistic(hour, hour + 3600, cell, 8, "footfall", value, "gaussian", 1.5, 2.9, 0.4, 1e-7)


def test_streaming_writes_one_complete_parquet_file_per_hour(tmp_path):
    """Every file that appears is a whole Parquet file (footer included) named by its hour,
    and holds exactly that hour's rows (Beam's streaming Parquet sink left footer-less files)."""
    rows = [stat(HOUR, "88a", 1.0), stat(HOUR, "88b", 2.0), stat(HOUR + 3600, "88a", 3.0)]
    stream = (TestStream()
              .add_elements([TimestampedValue(r, r.window_start + 1) for r in rows[:2]])
              .advance_watermark_to(HOUR + 3600 + 10)
              .add_elements([TimestampedValue(rows[2], rows[2].window_start + 1)])
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    folder = str(tmp_path / "marketing")
    with beam.Pipeline(options=options) as pipeline:
        _ = (pipeline | stream.with_output_types(Statistic)
             | WriteMarketingParquet(folder, streaming=True))
    names = sorted(os.listdir(folder))
    assert names == [window_file_name(HOUR, HOUR + 3600, 0, ".parquet"),
                     window_file_name(HOUR + 3600, HOUR + 7200, 0, ".parquet")]
    assert names[0] == "part-[2025-11-20T08-00-00, 2025-11-20T09-00-00)-00000-of-00001.parquet"
    first, second = (pq.read_table(os.path.join(folder, n)).to_pylist() for n in names)
    assert sorted((r["h3_cell"], r["value"]) for r in first) == [("88a", 1.0), ("88b", 2.0)]
    assert [(r["h3_cell"], r["value"]) for r in second] == [("88a", 3.0)]

"""Driver scripts of tests/flink, run in the PyFlink venv (``tests.flink.conftest.run_driver``),
and what they share: environments, a paced event-time source, collecting, the JSON reply."""
from __future__ import annotations

import json
import sys
import time

from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import MapFunction, RuntimeExecutionMode, StreamExecutionEnvironment

from flink_job.job import MAX_PARALLELISM

PICKLED = Types.PICKLED_BYTE_ARRAY()


def environment(batch: bool, paced: bool = False, parallelism: int = 2) -> StreamExecutionEnvironment:
    """A local MiniCluster environment. ``paced``: Python bundles of one element and a 10 ms
    watermark interval, so a slowed source really advances the watermark between elements
    (by default PyFlink hands a Python operator's outputs on per bundle, up to a second)."""
    config = Configuration()
    if paced:
        config.set_string("python.fn-execution.bundle.size", "1")
        config.set_string("python.fn-execution.bundle.time", "1")
        config.set_string("pipeline.auto-watermark-interval", "10 ms")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(parallelism)
    # as the job does (flink_job.job.configure): BATCH's adaptive scheduler refuses an output read by
    # consumers of different max parallelism (seen once the timeline also reads the tweets)
    env.set_max_parallelism(MAX_PARALLELISM)
    env.set_runtime_mode(RuntimeExecutionMode.BATCH if batch else RuntimeExecutionMode.STREAMING)
    return env


class _Pace(MapFunction):
    def __init__(self, seconds: float):
        self._seconds = seconds

    def map(self, value):
        time.sleep(self._seconds)
        return value


class _At(TimestampAssigner):
    def __init__(self, when):
        self._when = when

    def extract_timestamp(self, value, record_timestamp) -> int:
        return int(round(self._when(value) * 1000))


def event_stream(env, events, when, out_of_orderness_s: float, pace_s: float = 0.0):
    """``events`` in the given order as a stream stamped ``when(e)`` (epoch s), with bounded
    out-of-orderness watermarks; ``pace_s`` sleeps before each element (one source subtask,
    so the watermark is not held back by an idle one)."""
    stream = env.from_collection(list(events))
    if pace_s:
        stream = stream.map(_Pace(pace_s), output_type=PICKLED).set_parallelism(1)
    strategy = (WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(int(out_of_orderness_s * 1000)))
                .with_timestamp_assigner(_At(when)))
    return stream.assign_timestamps_and_watermarks(strategy).set_parallelism(1)


def collect(stream) -> list:
    with stream.execute_and_collect() as results:
        return list(results)


def reply(result: dict) -> None:
    """The driver's answer: JSON on the last stdout line (what run_driver reads)."""
    sys.stdout.write(json.dumps(result, sort_keys=True, default=repr) + "\n")
    sys.stdout.flush()

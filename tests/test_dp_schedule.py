"""The DP release schedule: which hours are released comes from configuration, never the data."""
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from pipelines.dp_schedule import with_release_schedule, world_period
from core.config import ConfigError
from pipelines.sinks import read_jsonl_folder
from schemas.timefmt import parse_rfc3339
from core import dp_accounting as acct
from core.dp_stats import DpParams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H0 = parse_rfc3339("2026-11-25T01:00:00Z")


@settings(max_examples=300, deadline=None)
@given(first=st.integers(-50, 50), length=st.integers(0, 100),
       ts=st.floats(H0 - 100 * 3600, H0 + 200 * 3600, allow_nan=False))
def test_an_event_is_in_the_schedule_exactly_when_its_hour_is_scheduled(first, length, ts):
    first_hour, last_hour = H0 + first * 3600, H0 + (first + length) * 3600
    hours = acct.scheduled_hours(first_hour, last_hour)
    assert len(hours) == length + 1 and hours[0] == first_hour and hours[-1] == last_hour
    assert acct.in_schedule(ts, first_hour, last_hour) == (acct.hour_start(ts) in hours)


@settings(max_examples=300, deadline=None)
@given(start=st.floats(H0, H0 + 10 ** 6, allow_nan=False), length=st.floats(1e-3, 10 ** 6))
def test_a_period_schedules_every_hour_it_touches_and_no_other(start, length):
    end = start + length
    first, last = acct.schedule_of_period(start, end)
    assert first <= start < first + 3600                      # the period's first hour
    assert last < end <= last + 3600                          # the period's last hour
    assert first % 3600 == 0 and last % 3600 == 0


def test_in_schedule_is_false_for_nan_and_infinities():
    assert not acct.in_schedule(float("nan"), H0, H0)
    assert not acct.in_schedule(float("inf"), H0, H0)
    assert not acct.in_schedule(float("-inf"), H0, H0)


@pytest.mark.parametrize("fields, message", [
    (dict(first_hour="2026-11-20T03:00:00Z"), "first_hour and last_hour go together"),
    (dict(last_hour="2026-11-20T03:00:00Z"), "first_hour and last_hour go together"),
    (dict(first_hour="2026-11-20T03:30:00Z", last_hour="2026-11-20T05:00:00Z"), "first_hour='2026-11-20T03:30:00Z' is not on the hour"),
    (dict(first_hour="yesterday", last_hour="2026-11-20T05:00:00Z"), "give an RFC 3339 time on the hour"),
    (dict(first_hour="2026-11-20T05:00:00Z", last_hour="2026-11-20T03:00:00Z"), "swap them"),
    (dict(first_hour="2026-01-01T00:00:00Z", last_hour="2027-06-01T00:00:00Z"), "release at most 8784"),
    (dict(max_future_s=-1), "max_future_s=-1"),
])
def test_bad_schedules_are_refused_with_what_to_change(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DpParams(**fields)


def test_a_schedule_reads_back_in_epoch_seconds_with_offsets():
    params = DpParams(first_hour="2026-11-20T12:00:00+09:00", last_hour="2026-11-20T05:00:00Z")
    assert params.schedule() == (parse_rfc3339("2026-11-20T03:00:00Z"), parse_rfc3339("2026-11-20T05:00:00Z"))
    assert len(params.scheduled_hours()) == 3
    assert DpParams().schedule() is None


def _manifest(directory, start, end):
    with open(os.path.join(directory, "world.json"), "w") as handle:
        json.dump({"generator": "synthetic.world", "period": {"start": start, "end": end}}, handle)


def test_the_launcher_takes_flags_first_then_world_json_else_refuses(tmp_path):
    _manifest(tmp_path, "2026-11-20T12:30:00.000+09:00", "2026-11-20T14:00:00.001+09:00")
    from_world = with_release_schedule(DpParams(), str(tmp_path))
    assert from_world.schedule() == (parse_rfc3339("2026-11-20T03:00:00Z"), parse_rfc3339("2026-11-20T05:00:00Z"))
    flags = DpParams(first_hour="2026-11-21T00:00:00Z", last_hour="2026-11-21T00:00:00Z")
    assert with_release_schedule(flags, str(tmp_path)) is flags
    empty = tmp_path / "plain"
    empty.mkdir()
    for directory in (str(empty), None):
        with pytest.raises(ConfigError, match="no DP release schedule: give --dp_first_hour"):
            with_release_schedule(DpParams(), directory)
    (empty / "world.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a world manifest"):
        with_release_schedule(DpParams(), str(empty))


def test_the_generator_writes_its_period_beside_the_input_files(tmp_path):
    from synthetic.world import write_world
    write_world(str(tmp_path), users=10, hours=1.5, seed=3, start="2026-11-20T17:10:00+09:00")
    assert world_period(str(tmp_path)) == (parse_rfc3339("2026-11-20T08:10:00Z"),
                                           parse_rfc3339("2026-11-20T09:40:00Z"))
    assert with_release_schedule(DpParams(), str(tmp_path)).scheduled_hours() == [
        parse_rfc3339("2026-11-20T08:00:00Z"), parse_rfc3339("2026-11-20T09:00:00Z")]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipelines.run", *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_cli_without_a_schedule_exits_2_and_with_one_releases_every_hour_of_an_empty_input(tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    for kind in ("users", "pings", "taps", "tweets"):
        (world / f"{kind}.jsonl").write_text("")
    done = _cli("--input", str(world), "--output", str(tmp_path / "refused"))
    assert done.returncode == 2
    reasons = [line for line in done.stderr.splitlines() if line.startswith("pipelines.run: error:")]
    assert len(reasons) == 1 and "no DP release schedule" in reasons[0], done.stderr
    out = tmp_path / "out"
    done = _cli("--input", str(world), "--output", str(out), "--dp_first_hour", "2026-11-20T03:00:00Z",
                "--dp_last_hour", "2026-11-20T04:00:00Z", "--dp_share_footfall_by_age", "0",
                "--dp_share_tweets", "0", "--dp_share_nfc_touches", "0")
    assert done.returncode == 0, done.stderr
    rows = pq.ParquetDataset(str(out / "marketing")).read().select(["window_start", "metric"]).to_pylist()
    starts = sorted({str(r["window_start"]) for r in rows})
    assert len(starts) == 2 and starts[0].startswith("2026-11-20 03:00") and starts[1].startswith("2026-11-20 04:00")
    assert len(rows) == 2 * 1030 and {r["metric"] for r in rows} == {"footfall"}
    ledger = read_jsonl_folder(str(out / "privacy_ledger"))
    assert sorted(r["window_start"] for r in ledger) == ["2026-11-20T03:00:00.000Z", "2026-11-20T04:00:00.000Z"]


def test_the_kubernetes_job_states_a_valid_release_schedule():
    """The production Job reads Kafka (no world.json): without its own schedule it would exit 2."""
    import yaml
    from apache_beam.options.pipeline_options import PipelineOptions
    from pipelines.run import config_from
    with open(os.path.join(ROOT, "infra", "k8s", "flink-submit-job.yaml"), encoding="utf-8") as handle:
        job = yaml.safe_load(handle)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    dp = with_release_schedule(config_from(PipelineOptions(args)).dp, None)
    first, last = dp.schedule()
    assert (last - first) / 3600 + 1 == 365 * 24

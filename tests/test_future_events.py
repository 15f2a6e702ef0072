"""Issue #10: a record dated far in the future (2099) never moves time forward.

One rule for every input kind (``ParseInputs``): an event time more than
``--max_event_future_s`` (300 s) ahead of the run's clock is a dead letter with
its reason; the streaming replay schedules such a line at its neighbour's time;
Kafka producers never set a CreateTime beyond their clock plus the skew.
"""
import json
import os
import re
import shutil

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

import kafka_client
from core.compliance import apply_retractions
from core.inputs import event_time_ms
from core.lines import read_lines
from pipelines import sources
from pipelines.run import run
from pipelines.sinks import read_jsonl_folder
from schemas.records import Alert, DeadLetter, TimelineEntry
from schemas.timefmt import ahead_of_clock, parse_rfc3339
from synthetic.world import write_world
from transforms.parse_inputs import ParseInputs

START = "2026-11-20T17:00:00+09:00"
ORIGINS = {"users": "users.jsonl", "pings": "pings.jsonl", "taps": "taps.jsonl", "tweets": "tweets.jsonl"}
NOW = parse_rfc3339("2026-11-20T09:00:00Z")      # the run's clock in the unit tests
FUTURE = "2099-06-01T00:00:00Z"
FUTURE_S = parse_rfc3339(FUTURE)
FUTURE_MS = int(FUTURE_S * 1000)
# 2099-06-01T00:00:00Z - 2026-11-20T09:00:00Z, to the millisecond
AHEAD = f"{FUTURE_S - NOW:.3f}"
REASON = (f"event time 2099-06-01T00:00:00.000Z is {AHEAD} s ahead of the clock 2026-11-20T09:00:00.000Z "
          "(max_event_future_s=300): a future time would move the watermark past every genuine record")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("world"))
    write_world(path, users=40, hours=2, seed=11, start=START)
    return path


def _lines(world, kind):
    with open(os.path.join(world, f"{kind}.jsonl"), encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def future_lines(world) -> dict[str, list[str]]:
    """A 2099 ping, tap, tweet and delete made from the world's own genuine records."""
    ping = json.loads(_lines(world, "pings")[10])
    ping["ts"] = FUTURE
    tap = json.loads(_lines(world, "taps")[0])
    tap.update(tap_id="future-tap-0001", ts=FUTURE)
    tweets = [json.loads(line) for line in _lines(world, "tweets")]
    v2 = next(t for t in tweets if "id" in t.get("data", {}))
    v2 = json.loads(json.dumps(v2))
    v2["data"].update(id="4123688011462868992", created_at=FUTURE)
    v2["data"]["edit_history_tweet_ids"] = ["4123688011462868992"]
    # a delete of a genuine, never-deleted tweet: used, it would retract that tweet's alerts
    genuine = next(t for t in tweets if "id" in t.get("data", {}) and t is not tweets[0])
    delete = {"delete": {"status": {"id_str": genuine["data"]["id"], "user_id_str": genuine["data"]["author_id"]},
                         "timestamp_ms": str(FUTURE_MS)}}
    return {"pings": [json.dumps(ping)], "taps": [json.dumps(tap)],
            "tweets": [json.dumps(v2), json.dumps(delete)]}


# ---- the rule, on its own ----------------------------------------------------------------------

def test_ahead_of_clock_boundary_and_reason():
    assert ahead_of_clock(NOW + 300.0, NOW, 300.0) is None          # phone clocks drift: within the skew
    assert ahead_of_clock(NOW - 86400.0, NOW, 300.0) is None
    assert ahead_of_clock(NOW + 300.5, NOW, 300.0) == (
        "event time 2026-11-20T09:05:00.500Z is 300.500 s ahead of the clock 2026-11-20T09:00:00.000Z "
        "(max_event_future_s=300): a future time would move the watermark past every genuine record")
    assert ahead_of_clock(FUTURE_S, NOW, 300.0) == REASON


def test_parse_inputs_dead_letters_a_2099_ping_tap_tweet_and_delete(world):
    bad = future_lines(world)
    genuine = {kind: _lines(world, kind)[:3] for kind in ("pings", "taps")}
    # three statuses (the firehose now opens with compliance messages)
    genuine["tweets"] = [line for line in _lines(world, "tweets")
                         if "id_str" in json.loads(line) or "id" in json.loads(line).get("data", {})][:3]
    raw = [(kind, line.encode()) for kind, lines in genuine.items() for line in lines]
    raw += [(kind, line.encode()) for kind, lines in bad.items() for line in lines]
    expected_dead = [DeadLetter(f"{kind}.jsonl", REASON, line) for kind, lines in bad.items() for line in lines]
    with TestPipeline() as p:
        out = p | beam.Create(raw) | ParseInputs(ORIGINS, clock=lambda: NOW)
        assert_that(out["dead_letters"], equal_to(expected_dead), label="dead")
        assert_that(out["pings"] | "P" >> beam.Map(lambda r: r.ts), equal_to(
            [parse_rfc3339(json.loads(line)["ts"]) for line in genuine["pings"]]), label="pings")
        assert_that(out["taps"] | "T" >> beam.Map(lambda r: r.tap_id), equal_to(
            [json.loads(line)["tap_id"] for line in genuine["taps"]]), label="taps")
        assert_that(out["tweets"] | "W" >> beam.Map(lambda r: 1), equal_to([1, 1, 1]), label="tweets")
        assert_that(out["deletes"], equal_to([]), label="deletes")


def test_the_skew_is_configurable(world):
    ping = json.loads(_lines(world, "pings")[0])
    ts = parse_rfc3339(ping["ts"])
    line = json.dumps(ping).encode()
    with TestPipeline() as p:
        # the same ping 60 s ahead of the clock: kept with the default skew, refused with a 30 s one
        kept = p | "A" >> beam.Create([("pings", line)]) | "PA" >> ParseInputs(ORIGINS, clock=lambda: ts - 60)
        refused = p | "B" >> beam.Create([("pings", line)]) | "PB" >> ParseInputs(
            ORIGINS, max_future_s=30, clock=lambda: ts - 60)
        assert_that(kept["pings"] | "KA" >> beam.Map(lambda r: r.user_id), equal_to([ping["user_id"]]), label="kept")
        assert_that(refused["dead_letters"] | "KB" >> beam.Map(lambda d: d.error.split(" (")[1]),
                    equal_to(["max_event_future_s=30): a future time would move the watermark past every genuine "
                              "record"]), label="refused")
    with pytest.raises(ValueError, match="max_future_s=-1"):
        ParseInputs(ORIGINS, max_future_s=-1)


def test_the_replay_schedules_a_future_line_at_its_neighbours_time(world):
    bad = future_lines(world)["pings"][0].encode()
    own, judged = sources.judged_element("pings", "pings.jsonl", bad, NOW, 300)
    assert own is None and judged.tag == "dead_letters" and judged.future          # at its neighbour's time
    own, judged = sources.judged_element("pings", "pings.jsonl", bad, FUTURE_S - 300, 300)
    assert own == FUTURE_S and judged.tag == "pings"                                 # within the skew


# ---- Kafka CreateTime ----------------------------------------------------------------------------

NOW_MS = int(NOW * 1000)


def test_create_time_is_never_beyond_the_producers_clock_plus_the_skew():
    assert kafka_client.create_time_ms(NOW_MS - 5000, NOW_MS) == NOW_MS - 5000            # the past: unchanged
    assert kafka_client.create_time_ms(NOW_MS + 300_000, NOW_MS) == NOW_MS + 300_000      # drift within the skew
    assert kafka_client.create_time_ms(NOW_MS + 300_001, NOW_MS) == NOW_MS                # beyond: the clock
    assert kafka_client.create_time_ms(FUTURE_MS, NOW_MS) == NOW_MS
    assert kafka_client.create_time_ms(FUTURE_MS, NOW_MS, max_ahead_s=1e10) == FUTURE_MS
    assert kafka_client.create_time_ms(None, NOW_MS) is None                              # the broker's now


class _Recorder:
    def __init__(self):
        self.sent = []

    def produce(self, topic, value, key, timestamp, headers, on_delivery):
        self.sent.append((value, timestamp))
        on_delivery(None, None)

    def poll(self, _timeout):
        return 0

    def flush(self, _timeout):
        return 0


def test_produce_all_clamps_every_producers_create_time():
    """The gateway's tap and tweet sinks and kafka_tools' helpers all send through produce_all."""
    producer = _Recorder()
    past = NOW_MS - 3_600_000
    kafka_client.produce_all(producer, "t", [(None, b"old", past, None), (None, b"2099", FUTURE_MS, None),
                                            (None, b"undated", None, None)])
    sent = dict(producer.sent)
    assert sent[b"old"] == past and sent[b"undated"] == 0
    import time
    assert abs(sent[b"2099"] - time.time() * 1000) < 60_000       # the producer's clock, not 2099


def test_file_replays_into_kafka_give_a_future_line_its_neighbours_time(world):
    pings = _lines(world, "pings")[:3]
    bad = future_lines(world)["pings"][0]
    times = [event_time_ms("pings", line) for line in pings]
    got = list(kafka_client.timestamped([pings[0], bad, pings[1], pings[2]], kind="pings", now_ms=NOW_MS))
    assert got == [(pings[0], times[0]), (bad, times[0]), (pings[1], times[1]), (pings[2], times[2])]
    # a leading future line takes the first genuine time, like any undatable line
    got = list(kafka_client.timestamped([bad, pings[0]], kind="pings", now_ms=NOW_MS))
    assert got == [(bad, times[0]), (pings[0], times[0])]


def test_kafka_tools_reads_lines_with_the_pipelines_bounded_reader(tmp_path):
    import gzip
    path = tmp_path / "pings.jsonl.gz"
    whole = gzip.compress(b'\xef\xbb\xbf{"a": 1}\n\n{"a": 2}\r\n' + b'{"b": "' + b"x" * (2 << 20) + b'"}\n{"a": 3}\n')
    path.write_bytes(whole)
    lines = list(read_lines(str(path)))
    # the BOM is dropped, the over-long line is sent as its first 64 KiB (a dead letter downstream), not held whole
    assert lines[:2] == ['{"a": 1}', '{"a": 2}'] and lines[3] == '{"a": 3}'
    assert len(lines[2]) == 64 * 1024 and lines[2].startswith('{"b": "xxx')
    cut = tmp_path / "cut.jsonl.gz"          # a truncated copy: the readable lines, then a logged end
    cut.write_bytes(gzip.compress(b'{"a": 1}\n{"a": 2}\n')[:-4])
    assert list(read_lines(str(cut))) == ['{"a": 1}', '{"a": 2}']


# ---- the whole pipeline: genuine records give the outputs of the world without the 2099 lines ----

def _with_future_lines(world, dest):
    os.makedirs(dest)
    for name in os.listdir(world):
        if os.path.isfile(os.path.join(world, name)):
            shutil.copy(os.path.join(world, name), os.path.join(dest, name))
    for kind, extra in future_lines(world).items():
        lines = _lines(world, kind)
        middle = len(lines) // 2
        with open(os.path.join(dest, f"{kind}.jsonl"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines[:middle] + extra + lines[middle:]) + "\n")
    return dest


def _run(world, out, *extra):
    assert run(["--input", world, "--output", out, *extra]) == 0
    with open(os.path.join(out, "run_summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def _canonical(rows):
    return sorted(json.dumps(row, sort_keys=True, ensure_ascii=False) for row in rows)


def _outputs(out):
    table = pq.ParquetDataset(os.path.join(out, "marketing")).read()
    marketing = sorted((str(r["window_start"]), r["h3_cell"], r["metric"])
                       for r in table.select(["window_start", "h3_cell", "metric"]).to_pylist())
    found = {folder: _canonical(read_jsonl_folder(os.path.join(out, folder))) for folder in ("follows", "privacy_ledger")}
    # what a consumer keeps: streaming retracts what a later compliance message took back (core.compliance)
    for folder, record in (("alerts", Alert), ("timeline", TimelineEntry)):
        rows = read_jsonl_folder(os.path.join(out, folder))
        found[folder] = _canonical(r._asdict() for r in apply_retractions(record(**row) for row in rows))
    return found | {"marketing": marketing}


FUTURE_REASON = re.compile(r"event time 2099-06-01T00:00:00\.000Z is \d+\.\d{3} s ahead of the clock "
                           r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \(max_event_future_s=300\): a future time "
                           r"would move the watermark past every genuine record")


@pytest.fixture(scope="module")
def clean_batch(world, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("clean"))
    _run(world, out)
    return out


def _check_same_outputs_plus_four_dead_letters(world, clean, out, summary):
    assert _outputs(out) == _outputs(clean)
    clean_dead = read_jsonl_folder(os.path.join(clean, "deadletter"))
    dead = read_jsonl_folder(os.path.join(out, "deadletter"))
    extra = [row for row in dead if row["error"].startswith("event time ")]
    assert _canonical([row for row in dead if row not in extra]) == _canonical(clean_dead)
    assert sorted((row["source"], row["raw"]) for row in extra) == sorted(
        (f"{kind}.jsonl", line) for kind, lines in future_lines(world).items() for line in lines)
    assert all(FUTURE_REASON.fullmatch(row["error"]) for row in extra), extra
    assert summary["stages"]["rejected"] == {"users": 0, "pings": 1, "taps": 1, "tweets": 2}


def test_batch_2099_lines_are_dead_letters_and_change_nothing_else(world, clean_batch, tmp_path):
    bad = _with_future_lines(world, str(tmp_path / "bad"))
    out = str(tmp_path / "out")
    summary = _run(bad, out)
    _check_same_outputs_plus_four_dead_letters(world, clean_batch, out, summary)
    assert summary["counters"]["future.pings"] == 1 and summary["counters"]["future.tweets"] == 2


def test_streaming_replay_with_2099_lines_gives_the_batch_outputs(world, clean_batch, tmp_path):
    """A 2099 line in the middle of every file: the replay's watermark never jumps to 2099,
    so no genuine record after it is late; every output equals the clean batch run's."""
    bad = _with_future_lines(world, str(tmp_path / "bad"))
    out = str(tmp_path / "stream")
    summary = _run(bad, out, "--streaming", "--stream_disorder_s", "8")
    assert summary["mode"] == "streaming"
    _check_same_outputs_plus_four_dead_letters(world, clean_batch, out, summary)


def test_max_event_future_s_is_a_project_option(world, tmp_path, capsys):
    assert run(["--input", world, "--output", str(tmp_path / "o"), "--max_event_future_s", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "pipelines.run: error: --max_event_future_s must be >= 0, got -1.0"


def test_the_replay_never_moves_time_to_a_future_line(world, tmp_path):
    """Streaming from files: the 2099 lines are delivered (ParseInputs dead-letters them) but
    neither they nor any watermark step lies beyond the genuine records' last event time."""
    bad = _with_future_lines(world, str(tmp_path / "bad"))
    steps = list(sources.replay_steps(sources.input_files(bad), 8.0, 7, now=NOW + 86400))
    delivered = [value for step, values in steps if step == "elements" for value in values]
    marks = [value for step, value in steps if step == "watermark"]
    last_genuine = max(parse_rfc3339(json.loads(line)["ts"]) for line in _lines(world, "pings"))
    future_raw = {line.encode() for lines in future_lines(world).values() for line in lines}
    assert {tv.value[1] for tv in delivered} >= future_raw                 # all four are still delivered
    assert max(tv.timestamp.micros for tv in delivered) / 1e6 <= last_genuine + 3600
    assert max(marks) <= last_genuine + 3600

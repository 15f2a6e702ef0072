"""The generator's live firehose (synthetic/live.py, ``pipelines.generate --live``) and the
gateway taking it from a pipe: the same lines as file mode, in event time, nothing lost."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.timefmt import parse_rfc3339, parse_twitter_v1
from synthetic.live import line_millis, paced, stream_lines
from synthetic.world import write_world

from nfc_gateway.testing import get, kill9, start_gateway

ROOT = Path(__file__).resolve().parents[1]
START = "2026-11-26T10:00:00+09:00"


def _generate(*args, stdout=subprocess.PIPE):
    return subprocess.Popen([sys.executable, "-m", "pipelines.generate", *args], cwd=ROOT,
                            stdout=stdout, stderr=subprocess.PIPE)


def _event_ms(obj: dict) -> int:
    if "data" in obj and "id" in obj["data"]:
        return int(parse_rfc3339(obj["data"]["created_at"]) * 1000)
    if "created_at" in obj:
        return int(parse_twitter_v1(obj["created_at"]) * 1000)
    # a compliance message: v1.1's timestamp_ms, v2's event_at
    body = next(iter(obj["data"].values())) if "data" in obj else next(iter(obj.values()))
    return int(body["timestamp_ms"]) if "timestamp_ms" in body else int(parse_rfc3339(body["event_at"]) * 1000)


@pytest.fixture(scope="module")
def file_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("file-world")
    write_world(str(out), users=40, hours=1, seed=9, start=START, adversarial=True)
    return out


def test_line_millis_reads_the_event_time_of_every_firehose_line(file_world):
    lines = (file_world / "tweets.jsonl").read_text(encoding="utf-8").splitlines()
    labels = (file_world / "truth" / "invalid_lines.jsonl").read_text().splitlines()
    bad = {label["line"] for label in map(json.loads, labels) if label["file"] == "tweets.jsonl"}
    assert bad
    seen_kinds = set()
    for number, line in enumerate(lines, start=1):
        if number in bad:       # a malformed line may or may not show a time; it is sent in order either way
            continue
        obj = json.loads(line)
        ms = line_millis(line)
        tweet = "created_at" in obj or "id" in obj.get("data", {})
        seen_kinds.add(("v2" if "data" in obj else "v1.1") + (" tweet" if tweet else " compliance"))
        # created_at has whole seconds; the snowflake keeps the milliseconds
        assert ms // 1000 == _event_ms(obj) // 1000, line[:120]
    # both tweet forms, and compliance messages (in the form of their tweet's API, or v2 events)
    assert {"v1.1 tweet", "v2 tweet"} < seen_kinds <= {"v1.1 tweet", "v2 tweet", "v1.1 compliance", "v2 compliance"}
    assert line_millis("not json") is None and line_millis('{"foo": 1}') is None


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def _v2(ms: int) -> str:
    from synthetic.twitter import TWITTER_EPOCH_MS
    return json.dumps({"data": {"id": str((ms - TWITTER_EPOCH_MS) << 22)}}, separators=(",", ":"))


def test_paced_yields_each_line_at_its_event_time_divided_by_speed():
    t0 = 1_795_000_000_000
    lines = [_v2(t0), _v2(t0 + 10_000), _v2(t0 + 10_000), "garbage", _v2(t0 + 30_000), _v2(t0 + 5_000)]
    fake = FakeClock()
    at = []
    for line in paced(lines, t0, speed=10, clock=fake.clock, sleep=fake.sleep):
        at.append((line, round(fake.now - 100.0, 6)))
    # 10 s of event time is 1 s of wall time; the unreadable line goes with the one before it,
    # and a line already due (out of order) goes at once
    assert [t for _, t in at] == [0.0, 1.0, 1.0, 1.0, 3.0, 3.0]
    assert [line for line, _ in at] == lines


def test_paced_does_not_drift_when_the_consumer_is_slow():
    t0 = 1_795_000_000_000
    fake = FakeClock()
    times = []
    for line in paced([_v2(t0 + i * 1000) for i in range(5)], t0, speed=1, clock=fake.clock, sleep=fake.sleep):
        fake.now += 0.4                       # the consumer takes 0.4 s per line
        times.append(fake.now - 100.0)
    assert times == pytest.approx([0.4, 1.4, 2.4, 3.4, 4.4])      # on schedule, not 0.4 s later each time


@pytest.mark.parametrize("speed", [0, float("inf")])
def test_speed_zero_or_infinite_never_waits(speed, tmp_path):
    fake = FakeClock()
    target = tmp_path / "out"
    with open(target, "wb") as out:
        assert stream_lines([_v2(2_000_000_000_000), "x"], 0, speed, out, fake.clock, fake.sleep) == 2
    assert fake.slept == [] and target.read_bytes().count(b"\n") == 2


def test_live_cli_streams_exactly_the_file_mode_firehose_and_writes_the_rest(file_world, tmp_path):
    live = tmp_path / "live"
    proc = _generate("--output", str(live), "--users", "40", "--hours", "1", "--seed", "9", "--start", START,
                     "--adversarial", "--live", "--speed", "0", "--quiet")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out == (file_world / "tweets.jsonl").read_bytes()
    assert not (live / "tweets.jsonl").exists()
    for name in ("users.jsonl", "pings.jsonl", "taps.jsonl", "truth/follows.jsonl", "truth/deleted.jsonl",
                 "truth/happenings.jsonl", "truth/invalid_lines.jsonl"):
        assert (live / name).read_bytes() == (file_world / name).read_bytes(), name
    manifest = json.loads((live / "truth" / "manifest.json").read_text())
    assert manifest["counts"]["tweets (live)"] == out.count(b"\n")


def test_live_mode_removes_a_stale_firehose_file(tmp_path):
    (tmp_path / "tweets.jsonl").write_text("old\n")
    (tmp_path / "tweets.jsonl.gz").write_bytes(b"old")
    proc = _generate("--output", str(tmp_path), "--users", "5", "--hours", "0.5", "--live", "--speed", "0", "--quiet")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out and not (tmp_path / "tweets.jsonl").exists() and not (tmp_path / "tweets.jsonl.gz").exists()


def test_a_live_world_without_start_is_the_one_just_ended_so_nothing_is_ahead_of_the_clock(tmp_path):
    """The pipeline and the gateway refuse events dated ahead of the clock (max_event_future_s):
    a live world that started now would date its last hour of pings, taps and tweets in the future."""
    before = time.time()
    proc = _generate("--output", str(tmp_path), "--users", "20", "--hours", "1", "--live", "--speed", "0", "--quiet")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    from schemas.parse import parse_line
    times = []
    for kind, lines in (("pings", (tmp_path / "pings.jsonl").read_text().splitlines()),
                        ("taps", (tmp_path / "taps.jsonl").read_text().splitlines()),
                        ("tweets", out.decode().splitlines())):
        for line in lines:
            record = parse_line(kind, line)
            times.append(record.ts)
    assert times and max(times) <= time.time()
    assert min(times) >= before - 3600 - 1             # and it is the hour that has just ended


@pytest.mark.parametrize("args, reason", [
    (["--live", "--speed", "-2"], "--speed must be >= 0"),
    (["--live", "--speed", "nan"], "--speed must be >= 0"),
    (["--live", "--gzip"], "--gzip and --live do not go together"),
])
def test_live_cli_rejects_bad_arguments_with_one_line(tmp_path, args, reason):
    proc = _generate("--output", str(tmp_path / "w"), *args)
    out, err = proc.communicate(timeout=60)
    lines = [line for line in err.decode().splitlines() if line.strip() and "apitools" not in line]
    assert proc.returncode == 2 and out == b""
    assert len(lines) == 1 and reason in lines[0], err


def test_a_reader_that_goes_away_ends_the_generator_with_one_line(tmp_path):
    proc = _generate("--output", str(tmp_path / "w"), "--users", "40", "--hours", "1", "--live", "--speed", "0",
                     "--quiet")
    proc.stdout.read(100)
    proc.stdout.close()                       # the reader is gone mid-stream
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 1
    lines = [line for line in err.splitlines() if line.strip() and "apitools" not in line]
    assert len(lines) == 1 and "closed the pipe" in lines[0], err


def test_the_gateway_hands_on_the_live_stream_unchanged_and_in_event_time(file_world, tmp_path):
    """generate --live | nfc_gateway serve --firehose -: the gateway's tweets.jsonl is the
    file-mode firehose byte for byte, and it took as long as the event time at this speed."""
    speed = 1200.0   # ~3 s of pacing: a loaded machine's late first poll is a small part of it
    lines = (file_world / "tweets.jsonl").read_text(encoding="utf-8").splitlines()
    times = [ms for ms in map(line_millis, lines) if ms is not None]
    span_s = (max(times) - int(parse_rfc3339(START) * 1000)) / 1000.0 / speed
    out = tmp_path / "gw"
    gen = _generate("--output", str(tmp_path / "world"), "--users", "40", "--hours", "1", "--seed", "9",
                    "--start", START, "--adversarial", "--live", "--speed", str(speed), "--quiet")
    gateway, port = start_gateway(out, "--firehose", "-", "--rate", "0", stdin=gen.stdout)
    gen.stdout.close()                        # the gateway holds the only reading end
    try:
        deadline = time.monotonic() + 120
        first_line_at = None
        while True:
            status = get(port, "/metrics")[1]["firehose"]
            if first_line_at is None and status["written"] > 0:
                first_line_at = time.monotonic()
            if status["done"]:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.02)
        done_at = time.monotonic()
        assert gen.wait(30) == 0
        assert status["error"] is None and status["read"] == len(lines)
    finally:
        kill9(gateway)
    assert (out / "tweets.jsonl").read_bytes() == (file_world / "tweets.jsonl").read_bytes()
    assert span_s > 1.0
    assert done_at - first_line_at >= 0.8 * span_s          # paced, not dumped (generation time not counted)


def test_a_partial_batch_is_handed_on_while_the_live_source_is_quiet(tmp_path):
    """A live firehose may pause for minutes: the lines already read must not wait for the
    next one to arrive before they are written (the batch is handed on when batch_s old)."""
    from nfc_gateway.firehose import FirehoseReplay

    class Sink:
        def __init__(self):
            self.lines = []

        def resume_offset(self, key):
            return 0

        def write_batch(self, key, batch, ends):
            self.lines.extend(batch)

    read_end, write_end = os.pipe()
    sink = Sink()
    replay = FirehoseReplay(f"/dev/fd/{read_end}", sink, batch_s=0.05).start()
    try:
        os.write(write_end, b'{"id": 1}\n{"id": 2}\n')          # then the source goes quiet, pipe still open
        deadline = time.monotonic() + 60
        while len(sink.lines) < 2:
            assert time.monotonic() < deadline, "the partial batch waited for a line that never came"
            time.sleep(0.01)
        assert sink.lines == [b'{"id": 1}', b'{"id": 2}'] and not replay.done.is_set()
        os.write(write_end, b'{"id": 3}\n')
        os.close(write_end)
        assert replay.done.wait(60)
        assert sink.lines == [b'{"id": 1}', b'{"id": 2}', b'{"id": 3}'] and replay.error is None
    finally:
        replay.stop()
        os.close(read_end)

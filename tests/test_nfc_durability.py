"""Nothing lost, nothing twice: the gateway killed with SIGKILL mid-stream and restarted.

Also the pieces that promise it: the spool's crash repair, the firehose's committed
offsets and pacing, and the per-device token buckets.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from nfc_gateway.firehose import FirehoseReplay
from nfc_gateway.ratelimit import TokenBuckets, retry_after_header
from nfc_gateway.sinks import FileTweetSink, FirehoseState
from nfc_gateway.spool import DurableLog, read_lines, repair_tail
from nfc_gateway.testing import get, kill9, post, signed_report, start_gateway, users_jsonl



def test_reports_survive_a_kill_9_exactly_once(tmp_path):
    users = tmp_path / "users.jsonl"
    users_jsonl(users)
    out = tmp_path / "out"
    pairs = [("1001", "1002"), ("1002", "1001"), ("1003", "1001"), ("1001", "1003")]
    reports = [signed_report(u, p, seq=4 * i + k) for i in range(100) for k, (u, p) in enumerate(pairs)]  # 400
    flags = ("--users", str(users), "--device-rate", "100000", "--device-burst", "100000")

    proc, port = start_gateway(out, *flags)
    acked: set[str] = set()
    lock = threading.Lock()

    def send(report):
        try:
            status, _, _ = post(port, report, timeout=5)
        except (OSError, http.client.HTTPException):
            return                      # the gateway died under us (mid-connect or mid-response): not acknowledged
        if status in (200, 201):
            with lock:
                acked.add(report["tap_id"])

    def killer():
        while True:
            with lock:
                if len(acked) >= 120:
                    break
            time.sleep(0.002)
        kill9(proc)

    threading.Thread(target=killer, daemon=True).start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, reports))
    proc.wait(10)
    assert 120 <= len(acked) < len(reports), "the kill must land mid-stream"

    proc, port = start_gateway(out, *flags)
    try:
        status, metrics = get(port, "/metrics")
        assert metrics["tap_ids_recovered_at_start"] >= len(acked)   # every confirmed report was durable
        unacked = [r for r in reports if r["tap_id"] not in acked]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda r: post(port, r)[0], unacked))
        assert set(statuses) <= {200, 201}
        # a sender that is unsure re-sends everything: still exactly once
        assert {post(port, r)[0] for r in reports[:40]} == {200}
    finally:
        kill9(proc)

    lines = (out / "taps.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""                                  # no half line
    stored = [json.loads(line) for line in lines[:-1]]
    assert sorted(r["tap_id"] for r in stored) == sorted(r["tap_id"] for r in reports)
    by_id = {r["tap_id"]: r for r in reports}
    assert all(r == by_id[r["tap_id"]] for r in stored)


def write_firehose(path: Path, n: int) -> list[bytes]:
    lines = []
    with open(path, "wb") as handle:
        for i in range(n):
            line = json.dumps({"id_str": str(10**17 + i), "text": f"tweet {i} \u00e9",
                               "created_at": "Wed Oct 10 20:19:24 +0000 2018"}, ensure_ascii=False).encode()
            lines.append(line)
            handle.write(line + (b"\r\n" if i % 7 == 0 else b"\n"))
            if i % 1000 == 0:
                handle.write(b"\n")                            # blank lines are not records
    return lines


def test_firehose_replay_resumes_exactly_after_a_kill_9(tmp_path):
    source = tmp_path / "firehose.jsonl"
    expected = write_firehose(source, 30_000)
    out = tmp_path / "out"
    flags = ("--firehose", str(source), "--rate", "25000")

    proc, port = start_gateway(out, *flags)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        written = get(port, "/metrics")[1]["firehose"]["written"]
        if written >= 5000:
            break
        time.sleep(0.02)
    kill9(proc)
    assert 5000 <= written < len(expected), "the kill must land mid-replay"

    proc, port = start_gateway(out, *flags)
    try:
        deadline = time.monotonic() + 30
        while not get(port, "/metrics")[1]["firehose"]["done"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status = get(port, "/metrics")[1]["firehose"]
        assert status["error"] is None and status["not_json"] == 0
    finally:
        kill9(proc)
    assert (out / "tweets.jsonl").read_bytes() == b"".join(line + b"\n" for line in expected)


class ListSink:
    def __init__(self):
        self.batches = []

    def resume_offset(self, key):
        return 0

    def write_batch(self, key, lines, ends):
        assert len(lines) == len(ends) and ends == sorted(ends)
        self.batches.append((list(lines), ends[-1]))


def test_firehose_keeps_its_rate_and_hands_lines_on_unchanged(tmp_path):
    source = tmp_path / "f.jsonl"
    source.write_bytes(b'{"a":1}\n\nnot json\r\n{"delete":{"status":{"id_str":"5"}}}\n' * 100)
    sink = ListSink()
    started = time.monotonic()
    replay = FirehoseReplay(str(source), sink, rate=1000).start()
    assert replay.done.wait(10)
    elapsed = time.monotonic() - started
    lines = [line for batch, _ in sink.batches for line in batch]
    assert lines == [b'{"a":1}', b"not json", b'{"delete":{"status":{"id_str":"5"}}}'] * 100
    assert 0.28 <= elapsed < 6.0                               # 300 records at 1000/s (generous: CI is loaded)
    assert sink.batches[-1][1] == source.stat().st_size        # the last commit covers the whole file
    assert replay.status()["not_json"] == 100


def test_tweet_sink_cuts_back_to_the_last_commit(tmp_path):
    state = FirehoseState(tmp_path)
    sink = FileTweetSink(tmp_path, state)
    sink.write_batch("src", [b"a", b"b"], [2, 4])
    sink.close()
    with open(tmp_path / "tweets.jsonl", "ab") as handle:
        handle.write(b"c\nd")                                  # written, never committed
    sink = FileTweetSink(tmp_path, FirehoseState(tmp_path))
    assert (tmp_path / "tweets.jsonl").read_bytes() == b"a\nb\n"
    assert sink.resume_offset("src") == 4 and sink.resume_offset("other") == 0
    sink.close()


@pytest.mark.parametrize("content, kept", [
    (b"", b""),
    (b'{"a":1}\n', b'{"a":1}\n'),
    (b'{"a":1}\n{"b":', b'{"a":1}\n'),
    (b'{"b":', b""),
    (b"x\n" * 50000 + b"y" * 100000, b"x\n" * 50000),        # a tail longer than one scan block
])
def test_repair_tail_cuts_only_an_unfinished_last_line(tmp_path, content, kept):
    path = tmp_path / "taps.jsonl"
    path.write_bytes(content)
    assert repair_tail(path) == len(content) - len(kept)
    assert path.read_bytes() == kept


def test_durable_log_group_commits_concurrent_appends(tmp_path):
    log = DurableLog(tmp_path / "spool.jsonl")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: log.append(b'{"i":%d}' % i), range(500)))
    log.close()
    lines = [line for _, line in read_lines(tmp_path / "spool.jsonl")]
    assert sorted(lines) == sorted(b'{"i":%d}' % i for i in range(500))
    assert log.batches < 500                                   # fsyncs were shared
    with pytest.raises(ValueError):
        DurableLog(tmp_path / "x.jsonl").append(b"two\nlines")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_token_bucket_allows_the_burst_then_the_rate():
    clock = FakeClock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.check("d")[0] for _ in range(4)] == [True, True, True, False]
    assert buckets.check("d") == (False, 0.5)
    assert buckets.check("other") == (True, 0.0)
    clock.now = 0.5
    assert buckets.check("d") == (True, 0.0)
    assert buckets.check("d")[0] is False
    assert retry_after_header(0.01) == "1" and retry_after_header(1.2) == "2"


def test_idle_buckets_are_forgotten():
    clock = FakeClock()
    buckets = TokenBuckets(rate=1.0, burst=2, clock=clock)
    for i in range(100):
        buckets.check(f"d{i}")
    clock.now = 10.0
    buckets.check("fresh")
    assert len(buckets) == 1


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=0.1, max_value=50), st.integers(min_value=1, max_value=20),
       st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200))
def test_a_device_never_gets_more_than_burst_plus_rate_times_elapsed(rate, burst, gaps):
    clock = FakeClock()
    buckets = TokenBuckets(rate=rate, burst=burst, clock=clock)
    allowed = 0
    for gap in gaps:
        clock.now += gap
        if buckets.check("d")[0]:
            allowed += 1
        assert allowed <= burst + rate * clock.now + 1e-9

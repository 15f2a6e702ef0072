"""The gateway attacked from a hostile network, in-process on loopback.

Distinct "clients" are distinct loopback source addresses (127.0.0.2, 127.0.0.3, …,
bound before connect). Every wait is on a condition with a generous deadline.
"""
from __future__ import annotations

import errno
import json
import threading

import pytest

from nfc_gateway.service import client_key
from nfc_gateway.spool import DurableLog, read_lines
from nfc_gateway.testing import connect, get, post, raw_request, read_until_closed, signed_report
from tests.gateway_helpers import DEADLINE_S, counters, start, stored, wait_for



POST_HEAD = (b"POST /v1/taps HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n")


def http_status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else 0


def answer_body(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


# -- slow clients ----------------------------------------------------------------------------------

class Trickler:
    """Slow connections from one source address, each sending a byte of a request now and then."""

    def __init__(self, port: int, source: str, n: int):
        self.socks = []
        for _ in range(n):
            sock = connect(port, source, timeout=DEADLINE_S)
            self.socks.append(sock)
        self.request = POST_HEAD % 400

    def trickle(self, i: int):
        for sock in self.socks:
            try:
                sock.send(self.request[i:i + 1])
            except OSError:
                pass

    def close(self):
        for sock in self.socks:
            sock.close()


def test_slow_clients_get_408_at_the_whole_request_deadline_while_others_are_served(tmp_path):
    gw = start(tmp_path, request_timeout_s=1.5, max_connections=200, max_connections_per_client=16)
    attackers = [Trickler(gw.port, f"127.0.0.{2 + a}", 16) for a in range(4)]       # 64 slow connections
    try:
        wait_for(lambda: gw.open_connections == 64, "64 admitted slow connections")
        stop = threading.Event()

        def trickle():                               # a byte every 0.3 s: each read is "in time"
            i = 0
            while not stop.wait(0.3) and i < 200:
                for attacker in attackers:
                    attacker.trickle(i)
                i += 1

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        # a legitimate client meanwhile: every report answered, none refused
        statuses = [post(gw.port, signed_report("1001", "1002", seq=i))[0] for i in range(20)]
        assert statuses == [201] * 20
        # every slow request is cut at its deadline with a 408, however regularly it trickles
        answers = []
        for attacker in attackers:
            for sock in attacker.socks:
                sock.settimeout(DEADLINE_S)
                answers.append(read_until_closed(sock))
        stop.set()
        trickler.join(DEADLINE_S)
        assert [http_status(a) for a in answers] == [408] * 64
        assert answer_body(answers[0]) == {"error": "request_timeout", "detail": "the request was not complete in time"}
        wait_for(lambda: gw.open_connections == 0, "the slots to be given back")
        assert counters(gw) == {"accepted": 20, "rejected_request_timeout": 64}
    finally:
        for attacker in attackers:
            attacker.close()
        gw.stop()


def test_one_client_address_cannot_hold_more_than_its_share_of_connections(tmp_path):
    gw = start(tmp_path, max_connections=1000, max_connections_per_client=8)
    attacker = Trickler(gw.port, "127.0.0.2", 8)
    try:
        wait_for(lambda: gw.connections_of("127.0.0.2") == 8, "8 connections of the attacker")
        with connect(gw.port, "127.0.0.2") as extra:                    # the ninth: refused at once
            answer = read_until_closed(extra)
        assert http_status(answer) == 429 and b"Retry-After: 1" in answer
        assert answer_body(answer)["error"] == "too_many_connections"
        # another address is unaffected, and so is a keep-alive client doing many requests
        assert post(gw.port, signed_report("1001", "1002"), source="127.0.0.3")[0] == 201
        assert gw.connections_of("127.0.0.2") == 8
        assert counters(gw) == {"accepted": 1, "rejected_too_many_connections": 1}
    finally:
        attacker.close()
        gw.stop()


def test_an_attacker_holding_512_slow_connections_does_not_lock_out_anyone(tmp_path):
    """The issue's attack: 512 connections trickling. With per-client caps they are spread
    over 8 addresses; the service still answers every legitimate request."""
    gw = start(tmp_path, request_timeout_s=30, max_connections=1024, max_connections_per_client=64)
    attackers = [Trickler(gw.port, f"127.0.1.{1 + a}", 64) for a in range(8)]
    try:
        wait_for(lambda: gw.open_connections == 512, "512 slow connections")
        for attacker in attackers:
            attacker.trickle(0)
        statuses = [post(gw.port, signed_report("1002", "1001", seq=i))[0] for i in range(10)]
        assert statuses == [201] * 10
        assert get(gw.port, "/healthz")[0] == 200
    finally:
        for attacker in attackers:
            attacker.close()
        gw.stop()


def test_an_idle_connection_is_closed_after_the_idle_timeout(tmp_path):
    gw = start(tmp_path, idle_timeout_s=0.5)
    try:
        with connect(gw.port, timeout=DEADLINE_S) as sock:
            assert read_until_closed(sock) == b""                       # closed by the gateway, silently
        wait_for(lambda: gw.open_connections == 0, "the slot back")
    finally:
        gw.stop()


# -- malformed HTTP ----------------------------------------------------------------------------------

@pytest.mark.parametrize("request_bytes, status, reason", [
    (b"POST /v1/taps HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(100)) + b"\r\n",
     431, "too_many_headers"),
    (b"POST /v1/taps HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, "header_too_large"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400, "bad_http"),
    (b"POST /v1/taps HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "bad_http"),
    (b"POST /v1/taps HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n", 400, "bad_http"),
    (b"POST /v1/taps HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400, "bad_http"),
])
def test_malformed_http_gets_a_specific_json_answer_and_is_counted(tmp_path, request_bytes, status, reason):
    gw = start(tmp_path, max_headers=40)
    try:
        answer = raw_request(gw.port, request_bytes)
        assert http_status(answer) == status
        assert answer_body(answer)["error"] == reason
        assert b"aiohttp" not in answer and b"Python" not in answer                # no stack name or version
        assert counters(gw) == {f"rejected_{reason}": 1}
    finally:
        gw.stop()


def test_a_body_shorter_than_its_content_length_times_out_with_408(tmp_path):
    gw = start(tmp_path, request_timeout_s=1.0)
    try:
        with connect(gw.port, timeout=DEADLINE_S) as sock:
            sock.sendall(POST_HEAD % 500 + b'{"tap_id": ')                   # and then nothing
            answer = read_until_closed(sock)
        assert http_status(answer) == 408 and answer_body(answer)["error"] == "request_timeout"
        assert counters(gw) == {"rejected_request_timeout": 1}
    finally:
        gw.stop()


def test_a_body_cut_short_by_the_client_is_counted_and_nothing_is_stored(tmp_path):
    gw = start(tmp_path, request_timeout_s=300)                   # so the answer is not the deadline's
    try:
        body = json.dumps(signed_report("1001", "1002")).encode()
        answer = raw_request(gw.port, POST_HEAD % (len(body) + 50) + body)    # EOF before the promised length
        assert http_status(answer) == 400 and answer_body(answer)["error"] == "body_incomplete"
        wait_for(lambda: counters(gw) == {"rejected_body_incomplete": 1}, "the count")
        assert stored(gw) == []
    finally:
        gw.stop()


def test_pipelined_requests_are_answered_in_order(tmp_path):
    gw = start(tmp_path)
    try:
        first, second = (json.dumps(signed_report("1001", "1002", seq=i)).encode() for i in range(2))
        data = POST_HEAD % len(first) + first + POST_HEAD % len(second) + second + POST_HEAD % len(first) + first
        answer = raw_request(gw.port, data)
        statuses = [int(part.split(b" ", 1)[0]) for part in answer.split(b"HTTP/1.1 ")[1:]]
        assert statuses == [201, 201, 200]
        assert len(stored(gw)) == 2
    finally:
        gw.stop()


def test_a_chunked_body_is_refused_with_411_and_not_read(tmp_path):
    gw = start(tmp_path)
    try:
        answer = raw_request(gw.port, b"POST /v1/taps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                      b"Transfer-Encoding: chunked\r\n\r\n" + b"4000\r\n" + b"{" * 0x4000 + b"\r\n")
        assert http_status(answer) == 411 and b"Connection: close" in answer
        assert counters(gw) == {"rejected_length_required": 1}
    finally:
        gw.stop()


# -- hostile bodies ------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, reason", [
    (b'{"tap_id": "\\ud800", "user_id": "1001"}', "malformed_json"),
    (b"[" * 4000 + b"]" * 4000, "malformed_json"),
    (b'{"lat": ' + b"9" * 5000 + b"}", "malformed_json"),
])
def test_hostile_json_is_a_400_not_a_dropped_connection(tmp_path, body, reason):
    gw = start(tmp_path, max_body=16 * 1024)
    try:
        status, answer, _ = post(gw.port, body)
        assert (status, answer["error"]) == (400, reason)
        assert counters(gw) == {f"rejected_{reason}": 1}
    finally:
        gw.stop()


def test_a_lone_surrogate_in_a_signed_report_is_a_400(tmp_path):
    gw = start(tmp_path)
    try:
        report = signed_report("1001", "1002")
        body = json.dumps(report).replace(report["tap_id"], report["tap_id"][:-4] + "\\ud800").encode()
        status, answer, _ = post(gw.port, body)
        assert (status, answer["error"]) == (400, "malformed_json")
        assert stored(gw) == []
    finally:
        gw.stop()


def test_one_client_address_can_store_only_its_budget(tmp_path):
    gw = start(tmp_path, device_rate=1000, device_burst=1000, client_rate=0.01, client_burst=2)
    try:
        reports = [signed_report(u, p, seq=i) for i, (u, p) in enumerate([("1001", "1002"), ("1002", "1003"),
                                                                            ("1003", "1001")])]
        got = [post(gw.port, r, source="127.0.0.2") for r in reports]
        assert [g[0] for g in got] == [201, 201, 429]                     # three devices, one address
        assert got[2][1]["error"] == "client_flood" and int(got[2][2]["Retry-After"]) >= 1
        assert post(gw.port, reports[2], source="127.0.0.3")[0] == 201     # another address
        assert post(gw.port, reports[0], source="127.0.0.2")[0] == 200     # a retry is never throttled
        assert counters(gw) == {"accepted": 3, "rejected_client_flood": 1, "duplicates": 1}
    finally:
        gw.stop()


def test_a_report_costs_one_token_per_started_kib():
    from nfc_gateway.ratelimit import TokenBuckets, report_cost
    assert [report_cost(n) for n in (1, 1024, 1025, 5000)] == [1, 1, 2, 5]
    buckets = TokenBuckets(rate=1e-9, burst=6, clock=lambda: 0.0)
    assert buckets.check("a", report_cost(5000))[0] is True
    assert buckets.check("a", report_cost(1025))[0] is False               # 1 token left, 2 needed
    assert buckets.check("a", report_cost(600))[0] is True


def test_client_keys_group_ipv6_by_64_and_unwrap_mapped_ipv4():
    assert client_key(("127.0.0.2", 5)) == "127.0.0.2"
    assert client_key(("2001:db8:1:2:aaaa::1", 5, 0, 0)) == client_key(("2001:db8:1:2:bbbb::9", 5, 0, 0)) \
        == "2001:db8:1:2::/64"
    assert client_key(("::ffff:10.0.0.1", 5, 0, 0)) == "10.0.0.1"
    assert client_key(None) == "unknown"


# -- nothing internal shown ------------------------------------------------------------------------------

def test_health_metrics_and_errors_show_no_paths(tmp_path):
    firehose = tmp_path / "secret-firehose.jsonl"
    firehose.write_bytes(b'{"a":1}\n')
    out = tmp_path / "secret-out"
    gw = start(out, firehose=str(firehose))
    try:
        wait_for(lambda: gw.firehose.done.is_set(), "the firehose")
        texts = [json.dumps(get(gw.port, "/healthz")[1]), json.dumps(get(gw.port, "/metrics")[1]),
                 json.dumps(post(gw.port, b"{", content_type="application/json")[1]),
                 json.dumps(get(gw.port, "/nope/" + str(tmp_path))[1])]
        for text in texts:
            assert str(tmp_path) not in text and "secret" not in text, text
        assert get(gw.port, "/healthz")[1]["firehose"]["source"] == "file"
    finally:
        gw.stop()


# -- a full disk ---------------------------------------------------------------------------------------------

class Disk:
    """os.write with a quota: past ``free`` bytes it writes what fits, then raises ENOSPC."""

    def __init__(self, free: int):
        self.free = free
        self.lock = threading.Lock()

    def write(self, fd, data):
        import os
        with self.lock:
            if self.free <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            part = bytes(data[:self.free])
            written = os.write(fd, part)
            self.free -= written
            return written


def test_a_partly_written_failed_batch_is_never_stored_even_after_space_is_freed(tmp_path):
    disk = Disk(free=25)
    log = DurableLog(tmp_path / "taps.jsonl", write=disk.write)
    try:
        assert log.append(b'{"n":1}') == 8                             # fits
        with pytest.raises(OSError):
            log.append(b'{"n":2,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxx"}')   # 17 bytes of it reach the disk
        assert (tmp_path / "taps.jsonl").read_bytes() == b'{"n":1}\n'  # cut back at once
        assert log.writable() is False
        disk.free = 10_000                                              # space freed
        assert log.append(b'{"n":2}') == 16
        assert log.append(b'{"n":3}') == 24
    finally:
        log.close()
    assert (tmp_path / "taps.jsonl").read_bytes() == b'{"n":1}\n{"n":2}\n{"n":3}\n'


def test_a_failed_fsync_leaves_nothing_and_the_retry_stores_once(tmp_path):
    import os
    failures = [OSError(errno.EIO, "I/O error")]

    def fsync(fd):
        if failures and os.fstat(fd).st_size > 8:
            raise failures.pop()
        os.fsync(fd)

    log = DurableLog(tmp_path / "taps.jsonl", fsync=fsync)
    try:
        log.append(b'{"n":1}')
        with pytest.raises(OSError):
            log.append(b'{"n":2}')
        assert log.append(b'{"n":2}') == 16
    finally:
        log.close()
    assert (tmp_path / "taps.jsonl").read_bytes() == b'{"n":1}\n{"n":2}\n'


def test_disk_full_then_freed_and_retried_stores_every_report_exactly_once(tmp_path):
    """The issue's reproduction: 300 distinct reports, the disk fills part-way, space is
    freed, the refused ones are retried: 300 lines, each tap_id once; /healthz is 503 meanwhile."""
    gw = start(tmp_path, workers=8)
    disk = Disk(free=60 * 1024)
    gw.tap_sink.log._write = disk.write
    gw.tap_sink.log._probe_interval_s = 0.0
    reports = [signed_report(u, p, seq=i) for i in range(150) for u, p in (("1001", "1002"), ("1002", "1001"))]
    try:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda r: post(gw.port, r)[0], reports))
        refused = [r for r, s in zip(reports, statuses) if s == 503]
        assert refused and set(statuses) == {201, 503}
        health = get(gw.port, "/healthz")
        assert health[0] == 503 and health[1]["status"] == "failing" and health[1]["taps"]["writable"] is False
        disk.free = 10 ** 9
        assert get(gw.port, "/healthz")[0] == 200                      # the probe notices freed space
        with ThreadPoolExecutor(8) as pool:
            retried = list(pool.map(lambda r: post(gw.port, r)[0], refused))
        assert set(retried) == {201}
        assert {post(gw.port, r)[0] for r in reports[:20]} == {200}
    finally:
        gw.stop()
    lines = [json.loads(line) for _, line in read_lines(tmp_path / "taps.jsonl")]
    assert len(lines) == 300 and sorted(r["tap_id"] for r in lines) == sorted(r["tap_id"] for r in reports)
    assert (tmp_path / "taps.jsonl").read_bytes().endswith(b"\n")


def test_the_firehose_waits_out_a_full_disk_and_writes_each_line_once(tmp_path):
    from nfc_gateway.firehose import FirehoseReplay
    from nfc_gateway.sinks import FileTweetSink, FirehoseState
    source = tmp_path / "fh.jsonl"
    lines = [b'{"id_str":"%d","text":"%s"}' % (i, b"x" * 50) for i in range(2000)]
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    out = tmp_path / "out"
    out.mkdir()
    disk = Disk(free=30_000)
    sink = FileTweetSink(out, FirehoseState(out), write=disk.write)
    replay = FirehoseReplay(str(source), sink, rate=0, batch_size=100)
    replay.retry_initial_s = replay.retry_max_s = 0.01
    replay.start()
    wait_for(lambda: replay.write_retries >= 3, "the firehose to hit the full disk")
    assert replay.status()["error"] == "OSError: ENOSPC"
    disk.free = 10 ** 9
    assert replay.done.wait(DEADLINE_S)
    sink.close()
    assert replay.status()["error"] is None
    assert (out / "tweets.jsonl").read_bytes() == b"".join(line + b"\n" for line in lines)

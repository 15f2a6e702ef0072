"""Issue #10 "Hardening": the gateway against colluding users and many hostile addresses.

In-process on loopback; distinct clients are distinct loopback source addresses
(127.0.x.y, bound before connect). Every wait is on a condition with a generous deadline.
"""
from __future__ import annotations

import json
import select
import socket

import pytest

import nfc_gateway.service as service
from nfc_gateway.ratelimit import TokenBuckets
from nfc_gateway.testing import connect, get, post, raw_request, read_until_closed, resign, signed_report
from tests.gateway_helpers import DEADLINE_S, counters, start, stored, wait_for



def status_of(gw, report, **kw) -> tuple[int, str | None]:
    status, body, _ = post(gw.port, report, **kw)
    return status, (body or {}).get("error")


# -- 1. pre-emption by colluders ----------------------------------------------------------------------

def colluders_reports(seq: int):
    """1001 and 1002 touch; 1003 and 1004 overheard the nonce and each sign a valid report of
    their own for it, under the tap_ids the victims' phones will use."""
    victim, partner = signed_report("1001", "1002", seq=seq), signed_report("1002", "1001", seq=seq)
    hijack_a = resign(dict(signed_report("1003", "1004", seq=seq), tap_id=victim["tap_id"]))
    hijack_b = resign(dict(signed_report("1004", "1003", seq=seq), tap_id=partner["tap_id"]))
    assert hijack_a["nonce"] == victim["nonce"]
    return victim, partner, hijack_a, hijack_b


@pytest.mark.parametrize("restart", [False, True], ids=["live", "after-restart"])
def test_colluders_cannot_lock_out_a_genuine_report_by_filing_its_tap_id_first(tmp_path, restart):
    victim, partner, hijack_a, hijack_b = colluders_reports(seq=7)
    gw = start(tmp_path)
    try:
        # valid reports of the colluders' own (signed by them): stored; the pipeline judges them
        assert status_of(gw, hijack_a) == (201, None)
        assert status_of(gw, hijack_b) == (201, None)
        if restart:                                  # the index is rebuilt from the spool
            gw.stop()
            gw = start(tmp_path)
            assert gw.intake.recovered == 2
        assert status_of(gw, victim) == (201, None)
        assert status_of(gw, partner) == (201, None)
        # an identical retry is still 200, for victims and colluders alike
        assert status_of(gw, victim) == (200, None)
        assert status_of(gw, hijack_a) == (200, None)
        # the same user re-using its own tap_id with different content is still 409
        moved = resign(dict(victim, lat=35.7))
        assert status_of(gw, moved) == (409, "tap_id_conflict")
        # and a user reports a touch once: the same nonce under another tap_id is 409
        renamed = resign(dict(hijack_a, tap_id=f"{hijack_a['nonce']}-1003"))
        assert status_of(gw, renamed) == (409, "touch_already_reported")
        assert sorted((r["user_id"], r["tap_id"]) for r in stored(gw)) == sorted(
            (r["user_id"], r["tap_id"]) for r in (victim, partner, hijack_a, hijack_b))
    finally:
        gw.stop()


def test_after_a_restart_a_genuine_report_filed_first_still_wins_its_retries(tmp_path):
    victim, partner, hijack_a, _ = colluders_reports(seq=8)
    gw = start(tmp_path)
    try:
        assert status_of(gw, victim) == (201, None)
        gw.stop()
        gw = start(tmp_path)
        assert status_of(gw, hijack_a) == (201, None)          # the colluder's own (user, tap_id)
        assert status_of(gw, victim) == (200, None)            # the victim's retry: safe
        assert status_of(gw, resign(dict(victim, lat=35.7))) == (409, "tap_id_conflict")
        assert len(stored(gw)) == 2
    finally:
        gw.stop()


# -- 2. many addresses filling the global connection cap --------------------------------------------------

def test_slow_connections_from_24_addresses_at_the_cap_do_not_lock_out_a_client(tmp_path):
    cap, addresses = 48, [f"127.0.2.{1 + a}" for a in range(24)]           # 2 slow connections each
    gw = start(tmp_path, max_connections=cap, request_timeout_s=DEADLINE_S * 2)
    slow: list[tuple[str, socket.socket]] = []

    def open_slow(source):
        sock = connect(gw.port, source, timeout=DEADLINE_S)
        sock.sendall(b"POST /v1/taps HTTP/1.1\r\nHost: gw\r\n")           # ... and nothing more
        slow.append((source, sock))

    try:
        for source in addresses * 2:
            open_slow(source)
        wait_for(lambda: gw.connections_mid_request == cap, f"{cap} slow connections mid-request")
        evicted_answers, reconnects = [], 0
        for i in range(10):
            # a legitimate client (its own address) on a fresh connection each time
            assert status_of(gw, signed_report("1001", "1002", seq=i), source="127.0.0.200") == (201, None)
            # the attacker re-opens each connection it loses, from the same address (bounded)
            wait_for(lambda: select.select([s for _, s in slow], [], [], 0)[0], "an evicted slow connection")
            for source, sock in list(slow):
                if select.select([sock], [], [], 0)[0]:
                    evicted_answers.append(read_until_closed(sock))
                    sock.close()
                    slow.remove((source, sock))
                    open_slow(source)
                    reconnects += 1
            assert reconnects <= 2 * (i + 1)
        assert len(evicted_answers) == 10 and all(a.startswith(b"HTTP/1.1 503") for a in evicted_answers)
        assert json.loads(evicted_answers[0].split(b"\r\n\r\n", 1)[1])["error"] == "evicted"
        wait_for(lambda: gw.open_connections == cap, "the cap held by the re-opened slow connections")
        got = counters(gw)
        assert got["accepted"] == 10 and got["rejected_evicted"] >= 10 and "rejected_overloaded" not in got
        assert len(stored(gw)) == 10
    finally:
        for _, sock in slow:
            sock.close()
        gw.stop()


# -- 3. a budget for refused requests per address ----------------------------------------------------------

def test_refused_requests_spend_the_address_budget_then_429_without_verifying(tmp_path, monkeypatch):
    verified = []
    real_verify = service.verify_report
    monkeypatch.setattr(service, "verify_report", lambda *a, **k: (verified.append(1), real_verify(*a, **k))[1])
    gw = start(tmp_path, refusal_rate=0.01, refusal_burst=5)
    try:
        genuine = signed_report("1001", "1002", seq=1)
        assert status_of(gw, genuine, source="127.0.0.2") == (201, None)
        forged = [signed_report("1002", "1001", seq=10 + i, forge_report_sig=True) for i in range(8)]
        statuses = [status_of(gw, r, source="127.0.0.2") for r in forged[:5]]
        assert statuses == [(422, "bad_report_sig")] * 5
        assert len(verified) == 6
        # spent: forgeries, bad JSON, wrong type and unknown users get 429, with no signature checked
        status, body, headers = post(gw.port, forged[5], source="127.0.0.2")
        assert (status, body["error"]) == (429, "client_flood") and int(headers["Retry-After"]) >= 1
        assert status_of(gw, b"{not json", source="127.0.0.2") == (429, "client_flood")
        assert status_of(gw, genuine, content_type="text/plain", source="127.0.0.2") == (429, "client_flood")
        unknown = dict(signed_report("1001", "1002", seq=30), user_id="999")
        assert status_of(gw, unknown, source="127.0.0.2") == (429, "client_flood")
        assert len(verified) == 6
        # an identical retry of a stored report is never throttled
        assert status_of(gw, genuine, source="127.0.0.2") == (200, None)
        # a well-behaved client at another address is unaffected
        honest = [signed_report("1003", "1004", seq=40 + i) for i in range(20)]
        assert [status_of(gw, r, source="127.0.0.3") for r in honest] == [(201, None)] * 20
        got = counters(gw)
        assert got["rejected_bad_report_sig"] == 5 and got["rejected_client_flood"] == 4 and got["accepted"] == 21
    finally:
        gw.stop()


def test_cheap_http_refusals_count_against_the_budget_too(tmp_path):
    gw = start(tmp_path, refusal_rate=0.01, refusal_burst=3)
    try:
        request = b"GET /nowhere HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        for _ in range(2):
            assert raw_request(gw.port, request, source="127.0.0.4").startswith(b"HTTP/1.1 404")
        assert b" 400 " in raw_request(gw.port, b"NOT HTTP AT ALL\r\n\r\n", source="127.0.0.4")[:16]
        assert status_of(gw, signed_report("1001", "1002"), source="127.0.0.4") == (429, "client_flood")
        assert status_of(gw, signed_report("1001", "1002"), source="127.0.0.5") == (201, None)
        assert get(gw.port, "/healthz", source="127.0.0.4")[0] == 200           # probes are not refused
    finally:
        gw.stop()


def test_the_budget_comes_back_with_time(tmp_path):
    gw = start(tmp_path, refusal_rate=20.0, refusal_burst=2)
    try:
        for _ in range(2):
            assert status_of(gw, b"[]", source="127.0.0.6") == (400, "malformed_json")
        first = status_of(gw, signed_report("1001", "1002"), source="127.0.0.6")
        if first != (201, None):                    # unless the 50 ms refill already happened
            assert first == (429, "client_flood")
            wait_for(lambda: status_of(gw, signed_report("1001", "1002"), source="127.0.0.6")[0] == 201,
                     "the refusal budget refilled")
    finally:
        gw.stop()


def test_refusal_buckets_are_bounded_in_number(tmp_path):
    buckets = TokenBuckets(rate=1e-6, burst=5, clock=lambda: 0.0, max_keys=100)
    for i in range(10_000):
        buckets.check(f"10.0.{i // 256}.{i % 256}")
    assert len(buckets) == 100
    assert buckets.peek("10.0.39.15") == (True, 0.0) and len(buckets) == 100   # peek adds nothing
    gw = start(tmp_path, refusal_rate=0.01, refusal_burst=5, max_client_buckets=8)
    try:
        for a in range(20):
            assert status_of(gw, b"[]", source=f"127.0.3.{1 + a}") == (400, "malformed_json")
        assert len(gw.refusal_limiter) <= 8
    finally:
        gw.stop()

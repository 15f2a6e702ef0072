"""Hostile peers over nfcpy's emulated link: each is refused with its own reason, and no
report reaches the gateway.

A real agent listens as Target; the peer is either a hostile initiator (a short nfcpy
script sending one crafted NDEF message over SNEP) or a real agent holding the wrong key.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from nfc_gateway.keys import write_new_key
from nfc_gateway.protocol import MIME_HELLO, SERVICE_NAME
from nfc_gateway.service import Gateway, GatewayConfig
from tests.test_nfc_touch import ROOT, finish, free_udp_port, start_agent

TARGET, INITIATOR = "1717", "4242"

HOSTILE_INITIATOR = textwrap.dedent("""
    import json, logging, sys, threading, time
    import ndef, nfc, nfc.snep
    logging.getLogger("nfc").setLevel(logging.INFO)
    port, service, mime, payload = sys.argv[1], sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])
    done, result = threading.Event(), {}
    def exchange(llc):
        client = nfc.snep.SnepClient(llc, max_ndef_msg_recv_size=4096)
        try:
            client.connect(service)
            answer = client.get_records([ndef.Record(mime, "", payload)], timeout=3.0)
            result["answer"] = [r.type for r in answer] if answer else None
        except nfc.snep.SnepError as exc:
            result["snep_error"] = exc.errno
        finally:
            client.close()
            done.set()
    def on_connect(llc):
        threading.Thread(target=exchange, args=(llc,), daemon=True).start()
        return True
    clf = nfc.ContactlessFrontend("udp:127.0.0.1:" + port)
    started = time.time()
    try:
        clf.connect(llcp={"on-connect": on_connect, "role": "initiator", "sec": False},
                    terminate=lambda: done.is_set() or time.time() - started > 15)
    finally:
        clf.close()
    print(json.dumps(result))
""")


@pytest.fixture
def gateway_and_keys(tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    keys = {user: write_new_key(tmp_path / f"{user}.key") for user in (TARGET, INITIATOR)}
    write_new_key(tmp_path / "mallory.key")
    with open(world / "users.jsonl", "w", encoding="utf-8") as handle:
        for user, pubkey in keys.items():
            handle.write(json.dumps({"user_id": user, "pubkey": pubkey, "alerts_opt_in": False, "stats_opt_out": False}) + "\n")
    gateway = Gateway(GatewayConfig(port=0, output_dir=str(world), public_keys=keys)).start()
    yield tmp_path, gateway
    gateway.stop()


def taps_stored(gateway) -> int:
    with open(gateway.tap_sink.path, "rb") as handle:
        return sum(1 for _ in handle)


HELLO = json.dumps({"v": 1, "user_id": INITIATOR, "touch_ms": 1, "rand": "00" * 5}).encode()


@pytest.mark.parametrize("mime, payload, reason, snep_error", [
    ("text/plain", HELLO, "wrong_mime_type", 0xC2),
    (MIME_HELLO, b'{"v":1,"user_id":"' + b"9" * 3000 + b'"}', "ndef_oversized", 0xC2),
    (MIME_HELLO, b"\x00not json", "ndef_malformed", 0xC2),
    (MIME_HELLO, HELLO, "clock_skew", 0xFF),            # touch_ms=1: a hello from 1970
], ids=["wrong_mime_type", "oversized_ndef", "malformed_ndef", "clock_skew"])
def test_a_crafted_message_is_refused_by_name_and_nothing_is_reported(gateway_and_keys, mime, payload, reason, snep_error):
    tmp_path, gateway = gateway_and_keys
    port = free_udp_port()
    target = start_agent(tmp_path, gateway, TARGET, "target", port, 35.68, 139.76)
    hostile = subprocess.run([sys.executable, "-c", HOSTILE_INITIATOR, str(port), SERVICE_NAME, mime, payload.hex()],
                             cwd=ROOT, capture_output=True, text=True, timeout=40)
    assert hostile.returncode == 0, hostile.stderr[-2000:]
    assert json.loads(hostile.stdout.strip().splitlines()[-1]) == {"snep_error": snep_error}
    events = finish(target)
    assert [e["event"] for e in events] == ["touch_failed", "stopped"]
    assert events[0]["reason"] == reason
    assert events[-1]["counters"] == {f"rejected_{reason}": 1}
    assert taps_stored(gateway) == 0


def test_a_peer_signing_with_the_wrong_key_is_refused_on_both_phones(gateway_and_keys):
    tmp_path, gateway = gateway_and_keys
    port = free_udp_port()
    (tmp_path / f"{INITIATOR}.key").write_text((tmp_path / "mallory.key").read_text())   # 4242 holds mallory's key
    target = start_agent(tmp_path, gateway, TARGET, "target", port, 35.68, 139.76)
    initiator = start_agent(tmp_path, gateway, INITIATOR, "initiator", port, 35.68, 139.76)
    initiator_events, target_events = finish(initiator), finish(target)
    assert (target_events[0]["event"], target_events[0]["reason"]) == ("touch_failed", "bad_signature")
    assert (initiator_events[0]["event"], initiator_events[0]["reason"]) == ("touch_failed", "peer_refused")
    assert "0xFF" in initiator_events[0]["detail"]
    assert taps_stored(gateway) == 0


def test_a_listening_agent_stops_promptly_and_cleanly_on_sigterm(gateway_and_keys):
    import signal
    import time

    tmp_path, gateway = gateway_and_keys
    target = start_agent(tmp_path, gateway, TARGET, "target", free_udp_port(), 35.68, 139.76)
    time.sleep(0.5)                                       # inside nfcpy's listen window
    started = time.monotonic()
    target.send_signal(signal.SIGTERM)
    events = finish(target)                              # exit status 0 is asserted there
    assert time.monotonic() - started < 5                # no thread left holding the process
    assert [e["event"] for e in events] == ["stopped"] and events[0]["touches"] == 0

"""End to end over nfcpy's emulated link: two phone agents (each its own process) touch
on loopback UDP, report to a gateway, and the pipeline makes exactly one mutual follow;
a phone pulled away mid-exchange leaves no report and no follow.

The "pull away" is a UDP relay between the phones that stops carrying frames at
a chosen point of the exchange -- what losing the RF field does to a real link.
"""
from __future__ import annotations

import binascii
import glob
import json
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nfc_gateway.keys import write_new_key
from nfc_gateway.service import Gateway, GatewayConfig
from schemas.parse import parse_line
from schemas.proofs import verify_claim, verify_report_signature

ROOT = Path(__file__).resolve().parents[1]
ALICE, BOB = "4242", "1717"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def world(tmp_path):
    """Two users with keys, a users.jsonl, and a gateway writing the pipeline's input dir."""
    out = tmp_path / "world"
    out.mkdir()
    keys = {}
    for user in (ALICE, BOB):
        keys[user] = write_new_key(tmp_path / f"{user}.key")
    with open(out / "users.jsonl", "w", encoding="utf-8") as handle:
        for user, pubkey in keys.items():
            handle.write(json.dumps({"user_id": user, "pubkey": pubkey, "alerts_opt_in": False, "stats_opt_out": False}) + "\n")
    (out / "pings.jsonl").write_text("")
    (out / "tweets.jsonl").write_text("")
    gateway = Gateway(GatewayConfig(port=0, output_dir=str(out), public_keys=keys, require_known_users=True)).start()
    yield tmp_path, out, keys, gateway
    gateway.stop()


def start_agent(tmp_path, gateway, user, role, port, lat, lng):
    cmd = [sys.executable, "-m", "nfc_gateway", "agent", "--device", f"udp:127.0.0.1:{port}", "--role", role,
           "--user-id", user, "--key", str(tmp_path / f"{user}.key"), "--keys", str(tmp_path / "world" / "users.jsonl"),
           "--lat", str(lat), "--lng", str(lng), "--gateway", gateway.url, "--outbox", str(tmp_path / f"outbox-{user}"),
           "--touches", "1", "--timeout", "20"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = json.loads(proc.stdout.readline())      # the agent says when its device is open
    assert first["event"] == "listening", first
    return proc


def finish(proc) -> list[dict]:
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err[-2000:]
    return [json.loads(line) for line in out.splitlines()]


def touch(tmp_path, gateway, target_port, initiator_port):
    # the listener first: nfcpy's initiator only senses in short windows
    bob = start_agent(tmp_path, gateway, BOB, "target", target_port, 35.6812, 139.7671)
    alice = start_agent(tmp_path, gateway, ALICE, "initiator", initiator_port, 35.6813, 139.7672)
    return finish(alice), finish(bob)


def read_taps(out: Path) -> list:
    with open(out / "taps.jsonl", encoding="utf-8") as handle:
        return [parse_line("taps", line) for line in handle]


def test_two_phones_touch_and_the_pipeline_makes_one_mutual_follow(world):
    tmp_path, out, keys, gateway = world
    port = free_udp_port()
    alice_events, bob_events = touch(tmp_path, gateway, port, port)

    assert [e["event"] for e in alice_events] == ["touch_completed", "report_delivered", "stopped"]
    assert [e["event"] for e in bob_events] == ["touch_completed", "report_delivered", "stopped"]
    taps = sorted(read_taps(out), key=lambda r: r.user_id)
    assert [(r.user_id, r.peer_user_id) for r in taps] == [(BOB, ALICE), (ALICE, BOB)]
    bob_report, alice_report = taps
    assert alice_report.nonce == bob_report.nonce
    assert alice_report.proof == bob_report.peer_proof and bob_report.proof == alice_report.peer_proof
    for r in taps:
        assert verify_claim(keys[r.user_id], r.proof, r.user_id, r.peer_user_id, r.nonce)
        assert verify_claim(keys[r.peer_user_id], r.peer_proof, r.user_id, r.peer_user_id, r.nonce)
        # each phone signed its own whole report; the other phone's key does not verify it
        assert verify_report_signature(keys[r.user_id], r.report_sig, r)
        assert not verify_report_signature(keys[r.peer_user_id], r.report_sig, r)
        assert r.accuracy_m is not None
    assert int(alice_report.nonce[:12], 16) / 1000 == pytest.approx(alice_report.ts, abs=0.5)
    assert not list((tmp_path / f"outbox-{ALICE}").glob("*.json"))     # delivered, nothing left behind

    if not (ROOT / "transforms" / "follows.py").exists():
        pytest.skip("transforms/follows.py (ResolveMutualFollows) has not landed; reports verified above")
    result = tmp_path / "result"
    # the gateway's folder has no world.json: the DP release schedule is the touch's hour
    from schemas.timefmt import format_rfc3339
    hour = format_rfc3339(alice_report.ts // 3600 * 3600)
    run = subprocess.run([sys.executable, "-m", "pipelines.run", "--input", str(out), "--output", str(result),
                          "--dp_first_hour", hour, "--dp_last_hour", hour],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    follows = [json.loads(line) for path in glob.glob(str(result / "follows" / "*.jsonl"))
               for line in open(path, encoding="utf-8") if line.strip()]
    assert len(follows) == 1
    assert (follows[0]["user_a"], follows[0]["user_b"], follows[0]["nonce"]) == (BOB, ALICE, alice_report.nonce)


class CuttingRelay:
    """Carries the emulated RF frames between the phones until ``cut_at`` is seen, then nothing."""

    def __init__(self, target_port: int, cut_direction: str, cut_marker: bytes):
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # the initiator talks to this
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)    # the target answers this
        self.back.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.target = ("127.0.0.1", target_port)
        self.cut_direction, self.cut_marker = cut_direction, cut_marker
        self.cut = threading.Event()
        self.carried = 0
        self._stop = threading.Event()
        self._initiator = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _frame_has_marker(self, datagram: bytes) -> bool:
        parts = datagram.split()
        if len(parts) != 2:
            return False
        try:
            return self.cut_marker in binascii.unhexlify(parts[1])
        except binascii.Error:
            return False

    def _run(self):
        while not self._stop.is_set():
            ready, _, _ = select.select([self.front, self.back], [], [], 0.05)
            for sock in ready:
                data, addr = sock.recvfrom(4096)
                direction = "to_target" if sock is self.front else "to_initiator"
                if sock is self.front:
                    self._initiator = addr
                if not self.cut.is_set() and direction == self.cut_direction and self._frame_has_marker(data):
                    self.cut.set()             # the phone leaves the field: this frame and all after are lost
                if self.cut.is_set():
                    continue
                self.carried += 1
                if sock is self.front:
                    self.back.sendto(data, self.target)
                elif self._initiator:
                    self.front.sendto(data, self._initiator)

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.front.close()
        self.back.close()


@pytest.mark.parametrize("direction, marker, alice_reason", [
    # the target's signed claim never reaches the initiator
    ("to_initiator", b"vnd.tapfollow.claim", "link_lost"),
    # both claims crossed, but the initiator's acknowledgement is lost
    ("to_target", b"vnd.tapfollow.ack", "link_lost"),
])
def test_a_phone_pulled_away_mid_exchange_leaves_no_report_and_no_follow(world, direction, marker, alice_reason):
    tmp_path, out, keys, gateway = world
    target_port = free_udp_port()
    relay = CuttingRelay(target_port, direction, marker)
    try:
        alice_events, bob_events = touch(tmp_path, gateway, target_port, relay.port)
    finally:
        relay.close()
    assert relay.cut.is_set() and relay.carried > 10        # the link was up when it was cut
    assert [e["event"] for e in alice_events] == ["touch_failed", "stopped"]
    assert [e["event"] for e in bob_events] == ["touch_failed", "stopped"]
    assert alice_events[0]["reason"] == alice_reason
    assert bob_events[0]["reason"] in {"link_lost", "touch_timeout"}
    assert read_taps(out) == []                              # no report at all, so no follow can exist
    assert gateway.metrics()["counters"] == {}
    for user in (ALICE, BOB):
        assert not list((tmp_path / f"outbox-{user}").glob("*.json"))

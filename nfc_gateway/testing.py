"""Test support for nfc_gateway: users with fixed keys, signed tap reports, a tiny HTTP client,
and the gateway as a process of its own (tests and benchmark)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys

from schemas.proofs import make_nonce, new_keypair, sign_claim, sign_report
from schemas.timefmt import format_rfc3339

T0 = 1_780_000_000.0
USERS = {uid: new_keypair(bytes([i]) * 32) for i, uid in enumerate(("1001", "1002", "1003", "1004"), start=1)}
PUBKEYS = {uid: pub for uid, (_, pub) in USERS.items()}


def signed_report(user: str, peer: str, seq: int = 0, t: float = T0, lat: float = 35.68, lng: float = 139.76,
                  forge_proof: bool = False, forge_peer_proof: bool = False, accuracy_m: int = 10,
                  forge_report_sig: bool = False) -> dict:
    """A report as ``user``'s phone files it: claim proofs, and ``report_sig`` over the whole report."""
    nonce = make_nonce(t + seq, seq.to_bytes(10, "big"))
    proof_key = USERS["1004" if forge_proof else user][0]
    peer_key = USERS["1004" if forge_peer_proof else peer][0]
    report = {
        "tap_id": f"{nonce}-{user}", "user_id": user, "peer_user_id": peer, "nonce": nonce,
        "ts": format_rfc3339(t + seq + 0.2), "lat": lat, "lng": lng,
        "proof": sign_claim(proof_key, user, peer, nonce),
        "peer_proof": sign_claim(peer_key, peer, user, nonce),
        "accuracy_m": accuracy_m,
    }
    return resign(report, "1004" if forge_report_sig else user)


def resign(report: dict, signer: str | None = None) -> dict:
    """``report`` with a fresh ``report_sig`` by ``signer`` (default: its own reporter)."""
    from schemas.timefmt import parse_rfc3339
    fields = {k: report[k] for k in ("tap_id", "user_id", "peer_user_id", "nonce", "lat", "lng", "accuracy_m",
                                     "proof", "peer_proof")}
    sig = sign_report(USERS[signer or report["user_id"]][0], ts=parse_rfc3339(report["ts"]), **fields)
    return dict(report, report_sig=sig)


def users_jsonl(path):
    with open(path, "w", encoding="utf-8") as handle:
        for uid, pub in PUBKEYS.items():
            handle.write(json.dumps({"user_id": uid, "pubkey": pub, "alerts_opt_in": False, "stats_opt_out": False}) + "\n")


def post(port: int, body, content_type: str = "application/json", path: str = "/v1/taps", timeout: float = 10.0,
         source: str | None = None):
    """(status, json body, headers) for one POST on a fresh connection (from loopback address
    ``source``, e.g. 127.0.0.2, to play a distinct client)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request("POST", path, body=data, headers=headers)
        response = conn.getresponse()
        text = response.read()
        return response.status, json.loads(text) if text else None, dict(response.getheaders())
    finally:
        conn.close()


def get(port: int, path: str, source: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def connect(port: int, source: str | None = None, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to the gateway from loopback address ``source`` (bound before connect)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0) if source else None)


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    chunks, size = [], 0
    while size < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def raw_request(port: int, data: bytes, source: str | None = None, half_close: bool = True) -> bytes:
    """Send ``data`` as is and return everything the gateway answers until it closes."""
    with connect(port, source) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_gateway(out, *flags: str, stdin=None, stderr=subprocess.DEVNULL,
                  log_level: str | None = None) -> tuple[subprocess.Popen, int]:
    """``python -m nfc_gateway serve --port 0 --output OUT FLAGS…`` as its own process;
    (process, port) once it has printed its address."""
    if "--users" not in flags:               # the gateway always needs a registry: the test users'
        users = f"{out}.users.jsonl"
        users_jsonl(users)
        flags = (*flags, "--users", users)
    cmd = [sys.executable, "-m", "nfc_gateway", *(("--log-level", log_level) if log_level else ()),
           "serve", "--port", "0", "--output", str(out), *flags]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = proc.stdout.readline()
    if not line:
        detail = proc.stderr.read()[-500:] if proc.stderr else ""
        raise RuntimeError(f"gateway did not start {detail}".strip())
    return proc, int(json.loads(line)["url"].rsplit(":", 1)[1])


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

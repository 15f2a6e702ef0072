"""The agent's way to the gateway (outbox, retry, backoff, final refusals) and the CLI's
configuration errors."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nfc_gateway.__main__ import main
from nfc_gateway.delivery import GatewayClient, Outbox, deliver_with_outbox
from nfc_gateway.keys import KeyStoreError, load_private_key, load_public_keys, write_new_key
from nfc_gateway.service import Gateway, GatewayConfig
from nfc_gateway.testing import PUBKEYS, signed_report, users_jsonl


class ScriptedGateway:
    """Answers POSTs with a scripted list of (status, headers), then 201."""

    def __init__(self, script):
        self.script = list(script)
        self.bodies = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers = outer.script.pop(0) if outer.script else (201, {})
                body = json.dumps({"status": status}).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def client(url, deadline=5.0):
    return GatewayClient(url, deadline_s=deadline, first_backoff_s=0.01, max_backoff_s=0.05)


def test_transient_answers_are_retried_until_accepted(tmp_path):
    gw = ScriptedGateway([(503, {}), (429, {"Retry-After": "0"}), (500, {})])
    try:
        outbox = Outbox(tmp_path)
        report = signed_report("1001", "1002")
        result = deliver_with_outbox(client(gw.url), outbox, report)
        assert (result.delivered, result.status, result.attempts) == (True, 201, 4)
        assert {json.loads(b)["tap_id"] for b in gw.bodies} == {report["tap_id"]}
        assert outbox.pending() == []
    finally:
        gw.close()


def test_a_final_refusal_moves_the_report_aside_with_the_reason(tmp_path):
    gw = ScriptedGateway([(422, {})])
    try:
        outbox = Outbox(tmp_path)
        report = signed_report("1001", "1002")
        result = deliver_with_outbox(client(gw.url), outbox, report)
        assert (result.delivered, result.status, result.attempts) == (False, 422, 1)
        assert outbox.pending() == []
        (aside,) = (tmp_path / "rejected").glob("*.json")
        saved = json.loads(aside.read_text())
        assert saved["report"] == report and saved["reason"].startswith("HTTP 422")
    finally:
        gw.close()


def test_an_unreachable_gateway_keeps_the_report_for_the_next_start(tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    report = signed_report("1001", "1002")
    result = deliver_with_outbox(client("http://127.0.0.1:9", deadline=0.2), outbox, report)
    assert not result.delivered and result.status is None and result.attempts >= 2
    assert outbox.pending() == [report]
    # the next start: a real gateway, the outbox is flushed, and a second copy is a harmless duplicate
    gw = Gateway(GatewayConfig(port=0, output_dir=str(tmp_path / "gw"), public_keys=PUBKEYS)).start()
    try:
        assert deliver_with_outbox(client(gw.url), outbox, outbox.pending()[0]).status == 201
        assert outbox.pending() == []
        again = deliver_with_outbox(client(gw.url), outbox, report)
        assert (again.delivered, again.status) == (True, 200)
    finally:
        gw.stop()


def test_key_files_round_trip_and_bad_ones_say_why(tmp_path):
    pub = write_new_key(tmp_path / "k")
    assert oct((tmp_path / "k").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        write_new_key(tmp_path / "k")
    load_private_key(tmp_path / "k")
    (tmp_path / "map.json").write_text(json.dumps({"5": pub}))
    assert load_public_keys(tmp_path / "map.json") == {"5": pub}
    users_jsonl(tmp_path / "users.jsonl")
    assert load_public_keys(tmp_path / "users.jsonl") == PUBKEYS
    (tmp_path / "bad.jsonl").write_text('{"user_id":"1","pubkey":"AAAA","alerts_opt_in":false,"stats_opt_out":false}\n')
    with pytest.raises(KeyStoreError, match="bad.jsonl:1: pubkey"):
        load_public_keys(tmp_path / "bad.jsonl")
    (tmp_path / "short.key").write_text("AAAA")
    with pytest.raises(KeyStoreError, match="seed is 3 bytes"):
        load_private_key(tmp_path / "short.key")


@pytest.mark.parametrize("argv, message", [
    (["serve", "--users", "/nonexistent/users.jsonl"], "cannot read key store"),
    (["serve"], "--users is required"),
    (["serve", "--require-known-users"], "--users is required"),
    (["serve", "--firehose", "/nonexistent/tweets.jsonl"], "not a readable file"),
    (["agent", "--device", "udp:127.0.0.1:5", "--user-id", "1", "--key", "k", "--keys", "u", "--lat", "0", "--lng", "0"],
     "--role target"),
    (["keygen", "--user-id", "abc", "--key-out", "x"], "not a Twitter id_str"),
])
def test_bad_configuration_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as exc:
        main(["agent", "--device", "usb", "--user-id", "1", "--key", "k", "--keys", "u", "--lat", "91", "--lng", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--device-rate", "0"])
    assert exc.value.code == 2

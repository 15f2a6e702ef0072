"""CLI flags added by issue #10: the agent's ``--accuracy``, the gateway's refusal budget."""
from __future__ import annotations

import pytest

import nfc_gateway.agent as agent_module
import nfc_gateway.service as service_module
from nfc_gateway.__main__ import main
from nfc_gateway.agent import DEFAULT_ACCURACY_M
from nfc_gateway.keys import write_new_key
from nfc_gateway.testing import users_jsonl


@pytest.fixture
def agent_args(tmp_path):
    key, users = tmp_path / "a.key", tmp_path / "users.jsonl"
    write_new_key(key)
    users_jsonl(users)
    return ["agent", "--device", "udp:127.0.0.1:50999", "--role", "target", "--user-id", "1001",
            "--key", str(key), "--keys", str(users), "--lat", "35.68", "--lng", "139.76"]


@pytest.fixture
def captured_agent_config(monkeypatch):
    seen = []

    class FakeAgent:
        def __init__(self, config):
            seen.append(config)

        def run(self):
            return 0

    monkeypatch.setattr(agent_module, "TapAgent", FakeAgent)
    return seen


@pytest.mark.parametrize("flag, expected", [(None, DEFAULT_ACCURACY_M), ("25", 25), ("12.2", 13), ("0", 0)])
def test_agent_accuracy_flag_is_the_signed_accuracy_in_whole_metres(agent_args, captured_agent_config, flag, expected):
    assert main(agent_args + (["--accuracy", flag] if flag is not None else [])) == 0
    assert captured_agent_config[0].accuracy_m == expected


@pytest.mark.parametrize("flag", ["-1", "nan", "inf", "1e9", "ten"])
def test_agent_accuracy_out_of_range_is_exit_2(agent_args, captured_agent_config, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(agent_args + ["--accuracy", flag])
    assert exit_info.value.code == 2 and "--accuracy" in capsys.readouterr().err
    assert captured_agent_config == []


def test_the_agent_signs_its_accuracy_into_the_report():
    import json
    from nfc_gateway import protocol
    from nfc_gateway.agent import build_report
    from nfc_gateway.testing import PUBKEYS, USERS, signed_report
    from nfc_gateway.validation import parse_report, verify_report
    from schemas.timefmt import parse_rfc3339
    genuine = signed_report("1001", "1002")
    touch = protocol.CompletedTouch(user_id="1001", peer_user_id="1002", nonce=genuine["nonce"],
                                    seen_at=parse_rfc3339(genuine["ts"]), proof=genuine["proof"],
                                    peer_proof=genuine["peer_proof"])
    report = build_report(touch, 35.68, 139.76, USERS["1001"][0], accuracy_m=25)
    assert report["accuracy_m"] == 25
    parsed, _ = parse_report(json.dumps(report).encode())
    verify_report(parsed, PUBKEYS, now=parse_rfc3339(genuine["ts"]))       # raises if not signed as sent


def test_serve_passes_the_refusal_budget(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(service_module, "run_gateway", lambda config: seen.append(config) or 0)
    users = tmp_path / "users.jsonl"
    users_jsonl(users)
    assert main(["serve", "--users", str(users), "--output", str(tmp_path / "out"),
                 "--refusal-rate", "0.5", "--refusal-burst", "7"]) == 0
    assert (seen[0].refusal_rate, seen[0].refusal_burst) == (0.5, 7)
    assert main(["serve", "--users", str(users), "--output", str(tmp_path / "out")]) == 0
    assert (seen[1].refusal_rate, seen[1].refusal_burst) == (1.0, 60)

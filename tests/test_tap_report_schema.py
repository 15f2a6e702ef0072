"""The tap report's own fields (accuracy_m, report_sig) and the registry's key checks (issue #10)."""
from __future__ import annotations

import base64
import json

import pytest

from schemas.errors import InvalidRecord
from schemas.parse import parse_line
from schemas.proofs import new_keypair

_, GOOD_KEY = new_keypair(bytes([7]) * 32)
IDENTITY_KEY = base64.b64encode((1).to_bytes(32, "little")).decode()
TAP = {"tap_id": "t", "user_id": "1", "peer_user_id": "2", "nonce": "0" * 32, "ts": "2026-11-20T01:00:00Z",
       "lat": 35.7, "lng": 139.7, "proof": "p", "peer_proof": "q"}


def _user(pubkey):
    return json.dumps({"user_id": "9", "pubkey": pubkey, "alerts_opt_in": True, "stats_opt_out": False})


def _reason(source, obj) -> str:
    with pytest.raises(InvalidRecord) as info:
        parse_line(source, json.dumps(obj) if isinstance(obj, dict) else obj)
    return str(info.value)


def test_registry_refuses_a_small_order_key_with_the_reason():
    with pytest.raises(InvalidRecord) as info:
        parse_line("users", _user(IDENTITY_KEY))
    assert str(info.value) == ("pubkey: refused weak Ed25519 key: "
                               "a small-order point (anyone could forge this user's signatures)")


def test_registry_refuses_a_non_canonical_key_spelling():
    last = GOOD_KEY[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    other = GOOD_KEY[:-2] + alphabet[alphabet.index(last) ^ 1] + "="
    with pytest.raises(InvalidRecord, match="not the canonical base64 spelling"):
        parse_line("users", _user(other))
    assert parse_line("users", _user(GOOD_KEY)).pubkey == GOOD_KEY


def test_tap_own_fields_parse():
    report = parse_line("taps", json.dumps(dict(TAP, accuracy_m=12, report_sig="s")))
    assert (report.accuracy_m, report.report_sig) == (12, "s")
    legacy = parse_line("taps", json.dumps(TAP))
    assert (legacy.accuracy_m, legacy.report_sig) == (None, None)


@pytest.mark.parametrize("value, reason", [
    (12.5, "accuracy_m: expected an integer number of metres, got float"),
    (True, "accuracy_m: expected an integer number of metres, got bool"),
    ("12", "accuracy_m: expected an integer number of metres, got str"),
    (-1, "accuracy_m: -1 outside 0..100000"),
    (10 ** 400, "accuracy_m: " + str(10 ** 400)[:0]),
])
def test_tap_accuracy_must_be_whole_metres_in_range(value, reason):
    text = json.dumps(dict(TAP, accuracy_m=value))
    with pytest.raises(InvalidRecord) as info:
        parse_line("taps", text)
    assert str(info.value).startswith(reason)


@pytest.mark.parametrize("value, reason", [
    (12, "report_sig: expected a string, got int"),
    ("", "report_sig: length 0 outside 1..128"),
    ("x" * 129, "report_sig: length 129 outside 1..128"),
])
def test_tap_report_sig_shape(value, reason):
    assert _reason("taps", dict(TAP, report_sig=value)) == reason


def test_tap_id_with_a_lone_surrogate_is_refused_not_crashing_a_sink():
    line = json.dumps(dict(TAP, tap_id="\ud800x"))          # json.dumps escapes it as \\ud800
    with pytest.raises(InvalidRecord, match="tap_id: contains an unpaired UTF-16 surrogate"):
        parse_line("taps", line)


@pytest.mark.parametrize("field", ["proof", "peer_proof", "report_sig"])
def test_signatures_must_be_ascii(field):
    assert _reason("taps", dict(TAP, **{field: "é" * 4})) == f"{field}: expected base64 (ASCII), got non-ASCII characters"

"""The gateway's checks of a tap report (nfc_gateway.validation), issue #10: pure functions, no server."""
from __future__ import annotations

import json

import pytest

from nfc_gateway.testing import PUBKEYS, T0, resign, signed_report
from nfc_gateway.validation import Rejection, digest, parse_report, verify_report


def _parsed(report: dict):
    return parse_report(json.dumps(report).encode())


def _refusal(report: dict, keys=PUBKEYS, now=T0) -> tuple[int, str]:
    parsed, _ = _parsed(report)
    with pytest.raises(Rejection) as info:
        verify_report(parsed, keys, now=now)
    return info.value.status, info.value.reason


def test_a_genuine_report_passes():
    parsed, _ = _parsed(signed_report("1001", "1002"))
    verify_report(parsed, PUBKEYS, now=T0)
    verify_report(parsed, PUBKEYS, True, now=T0)      # the old require_known flag is accepted, ignored


def test_swapped_report_is_refused_before_the_claims():
    genuine = signed_report("1001", "1002")
    swapped = dict(genuine, tap_id="x", user_id="1002", peer_user_id="1001",
                   proof=genuine["peer_proof"], peer_proof=genuine["proof"])
    assert _refusal(swapped) == (422, "bad_report_sig")


def test_sniffed_claim_under_another_tap_id_is_refused_so_it_cannot_pre_empt():
    genuine = signed_report("1001", "1002")
    assert _refusal(dict(genuine, tap_id="squat")) == (422, "bad_report_sig")
    assert _refusal(signed_report("1001", "1002", forge_report_sig=True)) == (422, "bad_report_sig")


def test_unsigned_report_is_refused():
    report = signed_report("1001", "1002")
    del report["report_sig"]
    assert _refusal(report) == (422, "unsigned_report")
    del report["accuracy_m"]
    parsed, _ = _parsed(report)
    with pytest.raises(Rejection, match="no accuracy_m and report_sig"):
        verify_report(parsed, PUBKEYS, now=T0)


def test_unknown_users_are_refused_always_even_without_a_registry():
    report = signed_report("1001", "1002")
    assert _refusal(report, keys=None) == (422, "unknown_user")
    assert _refusal(report, keys={"1001": PUBKEYS["1001"]}) == (422, "unknown_user")


def test_moved_position_is_refused():
    assert _refusal(dict(signed_report("1001", "1002"), lat=35.7)) == (422, "bad_report_sig")


def test_claim_proofs_are_still_checked_after_the_report_sig():
    assert _refusal(signed_report("1001", "1002", forge_proof=True)) == (422, "bad_proof")
    assert _refusal(signed_report("1001", "1002", forge_peer_proof=True)) == (422, "bad_peer_proof")


def test_future_touch_is_refused():
    report = signed_report("1001", "1002", t=T0 + 3600)
    assert _refusal(report, now=T0) == (422, "future_touch")
    verify_report(_parsed(report)[0], PUBKEYS, now=T0 + 3600)


def test_respelt_copy_of_a_signed_report_is_the_same_report_not_a_conflict():
    genuine = signed_report("1001", "1002", lat=35.6812345)
    respelt = dict(genuine, ts=genuine["ts"].replace("Z", "0Z"), lat=35.68123450000001)
    (_, line_a), (_, line_b) = _parsed(genuine), _parsed(respelt)
    assert line_a != line_b
    assert digest(line_a) == digest(line_b)
    other = resign(dict(genuine, accuracy_m=11))
    assert digest(_parsed(other)[1]) != digest(line_a)


def test_canonical_line_keeps_the_own_fields():
    report = signed_report("1001", "1002")
    _, line = _parsed(dict(report, extra="dropped"))
    assert json.loads(line) == report
    assert list(json.loads(line))[-2:] == ["accuracy_m", "report_sig"]

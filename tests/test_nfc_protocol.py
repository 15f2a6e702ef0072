"""The tap handshake as pure state machines: exact messages, every refusal, no radio."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

from nfc_gateway import protocol
from nfc_gateway.agent import build_report
from nfc_gateway.protocol import (
    MIME_ACK, MIME_CLAIM, MIME_HELLO, HandshakeError, InitiatorHandshake, TargetHandshake, decode_message,
)
from schemas.parse import parse_line
from schemas.proofs import claim_bytes, new_keypair, nonce_time, sign_claim, verify_claim, verify_report_signature

KEY_A, PUB_A = new_keypair(bytes(range(32)))
KEY_B, PUB_B = new_keypair(bytes(range(1, 33)))
KEY_M, PUB_M = new_keypair(bytes(range(2, 34)))   # a third user ("mallory")
KEYS = {"111": PUB_A, "222": PUB_B, "333": PUB_M}
T0 = 1_780_000_000.0   # 2026-05-28


def record(mime, payload):
    return SimpleNamespace(type=mime, data=payload)


def initiator(clock=lambda: T0, rand=b"\x01" * 5, user="111", key=KEY_A, keys=KEYS, **kw):
    return InitiatorHandshake(user, key, keys.get, clock=clock, random_half=lambda: rand, **kw)


def target(clock=lambda: T0 + 0.25, rand=b"\x02" * 5, user="222", key=KEY_B, keys=KEYS, **kw):
    return TargetHandshake(user, key, keys.get, clock=clock, random_half=lambda: rand, **kw)


def send(tgt: TargetHandshake, message):
    """Carry one request to the target the way the SNEP server does, return the decoded answer."""
    mime, payload = message
    answer_mime, answer_payload = tgt.answer([record(mime, payload)])
    return decode_message([record(answer_mime, answer_payload)], answer_mime)


def run_touch(ini, tgt):
    hello = send(tgt, ini.hello())
    claim = send(tgt, ini.on_hello(hello))
    ack = send(tgt, ini.on_claim(claim))
    return ini.on_ack(ack), tgt.result


def test_a_touch_gives_both_phones_the_same_nonce_and_swapped_proofs():
    a, b = run_touch(initiator(), target())
    expected_nonce = f"{int(T0 * 1000):012x}" + "01" * 5 + "02" * 5
    assert a.nonce == b.nonce == expected_nonce
    assert nonce_time(a.nonce) == T0                # the initiator's clock is the touch time
    assert (a.user_id, a.peer_user_id, b.user_id, b.peer_user_id) == ("111", "222", "222", "111")
    assert a.proof == b.peer_proof == sign_claim(KEY_A, "111", "222", expected_nonce)
    assert b.proof == a.peer_proof == sign_claim(KEY_B, "222", "111", expected_nonce)
    assert (a.seen_at, b.seen_at) == (T0, T0 + 0.25)  # each report keeps its own phone's clock


def test_reports_built_from_a_touch_are_valid_contract_records():
    a, b = run_touch(initiator(), target())
    ra, rb = build_report(a, 35.681, 139.761, KEY_A), build_report(b, 35.680, 139.760, KEY_B, accuracy_m=7.2)
    assert ra["tap_id"] == f"{a.nonce}-111" and rb["tap_id"] == f"{a.nonce}-222"
    assert ra["ts"] == "2026-05-28T20:26:40.000Z" and rb["ts"] == "2026-05-28T20:26:40.250Z"
    assert (ra["accuracy_m"], rb["accuracy_m"]) == (10, 8)      # whole metres, rounded up
    for r in (ra, rb):
        parsed = parse_line("taps", json.dumps(r))
        assert verify_claim(KEYS[parsed.user_id], parsed.proof, parsed.user_id, parsed.peer_user_id, parsed.nonce)
        assert verify_claim(KEYS[parsed.peer_user_id], parsed.peer_proof, parsed.user_id, parsed.peer_user_id, parsed.nonce)
        # each phone signed its whole report; the partner's key does not verify it
        assert verify_report_signature(KEYS[parsed.user_id], parsed.report_sig, parsed)
        assert not verify_report_signature(KEYS[parsed.peer_user_id], parsed.report_sig, parsed)


def test_agent_reports_pair_into_exactly_one_follow():
    from core.follows import resolve_reports
    a, b = run_touch(initiator(), target())
    reports = [parse_line("taps", json.dumps(build_report(a, 35.681, 139.761, KEY_A))),
               parse_line("taps", json.dumps(build_report(b, 35.6810001, 139.7610002, KEY_B)))]
    result = resolve_reports(reports, KEYS, now=T0 + 60)
    assert len(result.follows) == 1 and result.rejections == []


def test_messages_on_the_wire_are_compact_json_of_our_mime_types():
    ini, tgt = initiator(), target()
    mime, payload = ini.hello()
    assert mime == MIME_HELLO
    assert payload == b'{"rand":"0101010101","touch_ms":1780000000000,"user_id":"111","v":1}'
    answer = send(tgt, (mime, payload))
    assert answer.body == {"rand": "0202020202", "user_id": "222", "v": 1}
    mime, payload = ini.on_hello(answer)
    assert mime == MIME_CLAIM and set(json.loads(payload)) == {"v", "user_id", "peer_user_id", "nonce", "proof"}


@pytest.mark.parametrize("records, reason", [
    ([], "ndef_malformed"),
    (None, "ndef_malformed"),
    ([record(MIME_HELLO, b"{}"), record(MIME_HELLO, b"{}")], "ndef_malformed"),
    ([record("text/plain", b'{"v":1}')], "wrong_mime_type"),
    ([record("urn:nfc:wkt:T", b'{"v":1}')], "wrong_mime_type"),
    ([record(MIME_HELLO, b"\xff\xfe")], "ndef_malformed"),
    ([record(MIME_HELLO, b"[1,2]")], "ndef_malformed"),
    ([record(MIME_HELLO, b'{"v":1,')], "ndef_malformed"),
    ([record(MIME_HELLO, b'{"v":2}')], "unsupported_version"),
    ([record(MIME_HELLO, b'{"v":1,"pad":"' + b"x" * 600 + b'"}')], "ndef_oversized"),
])
def test_bad_ndef_is_refused_with_a_specific_reason(records, reason):
    with pytest.raises(HandshakeError) as err:
        decode_message(records, MIME_HELLO)
    assert err.value.reason == reason


def test_an_oversized_message_is_refused_before_decoding():
    with pytest.raises(HandshakeError) as err:
        decode_message([record(MIME_HELLO, b'{"v":1}')], MIME_HELLO, message_bytes=protocol.MAX_NDEF_BYTES + 1)
    assert err.value.reason == "ndef_oversized"


def test_target_refuses_a_claim_signed_by_the_wrong_key_and_then_everything():
    ini, tgt = initiator(key=KEY_M), target()         # mallory's key, claiming to be 111
    hello = send(tgt, ini.hello())
    with pytest.raises(HandshakeError) as err:
        send(tgt, ini.on_hello(hello))
    assert err.value.reason == "bad_signature"
    assert tgt.state == "failed" and tgt.result is None
    with pytest.raises(HandshakeError) as err:       # no way back into the touch
        send(tgt, (MIME_ACK, json.dumps({"v": 1, "nonce": ini.nonce}).encode()))
    assert err.value.reason == "out_of_order"


def test_initiator_refuses_a_target_claim_signed_by_the_wrong_key():
    ini, tgt = initiator(), target(key=KEY_M)         # target pretends to be 222
    hello = send(tgt, ini.hello())
    # the honest initiator's claim verifies, so the forged target answers with its (bad) claim
    claim = send(tgt, ini.on_hello(hello))
    with pytest.raises(HandshakeError) as err:
        ini.on_claim(claim)
    assert err.value.reason == "bad_signature" and ini.result is None and ini.state == "failed"


def test_a_claim_for_another_nonce_or_user_is_a_mismatch():
    ini, tgt = initiator(), target()
    hello = send(tgt, ini.hello())
    ini.on_hello(hello)
    forged_nonce = f"{int(T0 * 1000):012x}" + "ff" * 10
    body = {"v": 1, "user_id": "111", "peer_user_id": "222", "nonce": forged_nonce,
            "proof": sign_claim(KEY_A, "111", "222", forged_nonce)}
    with pytest.raises(HandshakeError) as err:
        send(tgt, (MIME_CLAIM, json.dumps(body).encode()))
    assert err.value.reason == "claim_mismatch"


def test_target_refuses_a_hello_far_from_its_clock():
    ini, tgt = initiator(clock=lambda: T0 - 3600), target()
    with pytest.raises(HandshakeError) as err:
        send(tgt, ini.hello())
    assert err.value.reason == "clock_skew" and tgt.state == "failed"


def test_initiator_refuses_a_peer_whose_key_it_does_not_have():
    ini, tgt = initiator(keys={"111": PUB_A}), target()
    hello = send(tgt, ini.hello())
    with pytest.raises(HandshakeError) as err:
        ini.on_hello(hello)
    assert err.value.reason == "unknown_peer"


def test_target_refuses_an_unknown_initiator_and_a_self_tap():
    tgt = target(keys={"222": PUB_B})
    with pytest.raises(HandshakeError) as err:
        send(tgt, initiator().hello())
    assert err.value.reason == "unknown_peer"
    with pytest.raises(HandshakeError) as err:
        send(target(), initiator(user="222", key=KEY_B).hello())
    assert err.value.reason == "self_tap"


def test_out_of_order_messages_are_refused():
    tgt = target()
    ini = initiator()
    ini.hello()
    claim = {"v": 1, "user_id": "111", "peer_user_id": "222", "nonce": "0" * 32, "proof": "x"}
    with pytest.raises(HandshakeError) as err:     # a claim before any hello
        tgt.answer([record(MIME_CLAIM, json.dumps(claim).encode())])
    assert err.value.reason == "wrong_mime_type" and tgt.state == "failed"
    with pytest.raises(HandshakeError) as err:
        initiator().on_claim(decode_message([record(MIME_CLAIM, json.dumps(claim).encode())], MIME_CLAIM))
    assert err.value.reason == "out_of_order"


def test_link_dropped_before_the_ack_leaves_no_completed_touch_on_either_side():
    ini, tgt = initiator(), target()
    hello = send(tgt, ini.hello())
    claim = send(tgt, ini.on_hello(hello))
    ini.on_claim(claim)          # the ack is built, but the link drops before it is carried
    assert ini.result is None and tgt.result is None
    assert tgt.state == "claim_sent" and ini.state == "ack_sent"


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=5, max_size=5), st.binary(min_size=5, max_size=5),
       st.floats(min_value=1.2e9, max_value=4.0e9), st.floats(min_value=-9.9, max_value=9.9))
def test_any_honest_touch_completes_with_a_shared_fresh_nonce(rand_i, rand_t, t, skew):
    ini = initiator(clock=lambda: t, rand=rand_i)
    tgt = target(clock=lambda: t + skew, rand=rand_t)
    a, b = run_touch(ini, tgt)
    assert a.nonce == b.nonce
    assert a.nonce[12:] == (rand_i + rand_t).hex()     # both halves of the randomness are in it
    assert abs(nonce_time(a.nonce) - t) <= 0.0005
    assert verify_claim(PUB_A, a.proof, "222", "111", a.nonce)
    assert verify_claim(PUB_B, a.peer_proof, "111", "222", a.nonce)
    assert claim_bytes("111", "222", a.nonce) == claim_bytes("222", "111", b.nonce)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=700), st.text(max_size=40))
def test_decode_message_never_raises_anything_but_a_handshake_error(payload, mime):
    try:
        msg = decode_message([record(mime, payload)], MIME_HELLO)
    except HandshakeError as exc:
        assert exc.reason in {"ndef_malformed", "wrong_mime_type", "ndef_oversized", "unsupported_version"}
    else:
        assert mime == MIME_HELLO and msg.body["v"] == 1

"""The trust model of a follow (issue #10): two reports, each signed whole by its own phone.

Attacks on core.pairing's pure rules, on small hand-made touches.
"""
from __future__ import annotations

import base64

import h3

from schemas.proofs import new_keypair, nonce_time, sign_claim
from schemas.records import TapReport
from schemas.timefmt import parse_rfc3339
from schemas.touch import follow_for_touch
from tests.test_pairing import (A, B, C, PRIVATE, PUBKEYS, SKEW, EXPIRY, T0, VENUE, kinds, nonce_at, report,
                                resolve, signed, touch)
from core.follows import resolve_reports
from core.pairing import CheckedTap, check_report

_, MALLORY_PUB = new_keypair(bytes([99]) * 32)


def test_one_report_with_its_fields_swapped_is_not_a_partner_report():
    x, _y = touch(A, B, T0, 1)
    swapped = x._replace(tap_id="swapped", user_id=x.peer_user_id, peer_user_id=x.user_id,
                         proof=x.peer_proof, peer_proof=x.proof)
    result = resolve([x, swapped])
    assert result.follows == []
    assert kinds(result) == [(x.tap_id, "taps_unmatched"), ("swapped", "taps_bad_report_sig")]
    assert dict((r.report.tap_id, r.reason) for r in result.rejections)["swapped"].startswith(
        "bad report_sig: not a signature by user '1002' over this whole report")


def test_claims_sniffed_off_the_link_cannot_file_the_other_phones_report():
    x, y = touch(A, B, T0, 1)
    # the eavesdropper holds both claim signatures and A's report, but not B's key
    fake_y = y._replace(tap_id="sniffed", report_sig=x.report_sig)
    by_a = signed(y._replace(tap_id="sniffed-2"), by=A)
    result = resolve([x, fake_y, by_a])
    assert result.follows == []
    assert kinds(result) == sorted([(x.tap_id, "taps_unmatched"), ("sniffed", "taps_bad_report_sig"),
                                    ("sniffed-2", "taps_bad_report_sig")])


def test_unsigned_report_is_rejected_with_its_reason():
    x, y = touch(A, B, T0, 1)
    result = resolve([x._replace(report_sig=None), y])
    assert kinds(result) == sorted([(x.tap_id, "taps_unsigned_report"), (y.tap_id, "taps_unmatched")])
    reason = [r.reason for r in result.rejections if r.kind == "taps_unsigned_report"][0]
    assert reason.startswith("unsigned report: no report_sig")
    no_accuracy = x._replace(accuracy_m=None)
    assert check_report(no_accuracy, PUBKEYS, SKEW).reason == (
        "unsigned report: no accuracy_m (the signed accuracy of the reporter's position)")


def test_forged_report_under_the_genuine_tap_id_does_not_lock_the_genuine_one_out():
    x, y = touch(A, B, T0, 1)
    # filed first, with x's tap_id: an unsigned copy naming A, and C's own signed report under A's id
    impostor = x._replace(ts=x.ts - 1, report_sig=y.report_sig)
    squatter = report(x.tap_id, C, A, x.nonce, T0 - 2)
    for early in ([impostor], [squatter], [impostor, squatter]):
        result = resolve(early + [x, y])
        assert result.follows == [follow_for_touch(x, y)], early
        assert (x.tap_id, "taps_duplicate") not in kinds(result)


def test_moving_a_signed_position_breaks_the_report_signature():
    x, y = touch(A, B, T0, 1)
    moved = x._replace(lat=x.lat + 0.01)
    assert kinds(resolve([moved, y])) == sorted([(x.tap_id, "taps_bad_report_sig"), (y.tap_id, "taps_unmatched")])


def test_cell_comes_from_signed_positions_only():
    x, y = touch(A, B, T0, 1)
    # below the signed 1e-7 degrees: the same signed report, whatever bits the float carries
    nudged = x._replace(lat=x.lat + 4e-8)
    assert resolve([nudged, y]).follows == resolve([x, y]).follows
    lat = (round(x.lat * 1e7) + round(y.lat * 1e7)) / 2 / 1e7
    lng = (round(x.lng * 1e7) + round(y.lng * 1e7)) / 2 / 1e7
    assert follow_for_touch(nudged, y).h3_cell == h3.latlng_to_cell(lat, lng, 9)


def test_colluding_phones_far_apart_make_no_follow():
    nonce = nonce_at(T0, 7)
    shinjuku, chiba = (35.6900, 139.7000), (35.6074, 140.1065)   # 40 km apart, Chiba outside the area
    x = report("x", A, B, nonce, T0, where=shinjuku)
    far = report("far", B, A, nonce, T0, where=chiba)
    assert kinds(resolve([x, far])) == [("far", "taps_outside_service_area"), ("x", "taps_unmatched")]
    # both inside the area but 10 km apart: signed, verified, and still no follow
    ikebukuro = (35.7295, 139.7109)
    apart = report("apart", B, A, nonce, T0, where=(35.6450, 139.7100))
    result = resolve([report("x", A, B, nonce, T0, where=ikebukuro), apart])
    assert result.follows == []
    assert kinds(result) == [("apart", "taps_too_far_apart"), ("x", "taps_too_far_apart")]
    assert result.rejections[0].reason.startswith("too far apart: the partner report 'x' was signed 9")


def test_distance_allows_the_bound_plus_both_accuracies_and_no_more():
    nonce = nonce_at(T0, 8)
    here = VENUE
    # ~111 m north: allowed with 50 m + 30 + 31 = 111.. metres of slack, refused with less
    there = (VENUE[0] + 0.001, VENUE[1])
    ok = resolve([report("x", A, B, nonce, T0, where=here, accuracy=30),
                  report("y", B, A, nonce, T0, where=there, accuracy=32)])
    assert len(ok.follows) == 1
    tight = resolve([report("x", A, B, nonce, T0, where=here, accuracy=30),
                     report("y", B, A, nonce, T0, where=there, accuracy=30)])
    assert tight.follows == [] and {k for _, k in kinds(tight)} == {"taps_too_far_apart"}


def test_huge_claimed_accuracy_cannot_excuse_any_distance():
    nonce = nonce_at(T0, 9)
    x = report("x", A, B, nonce, T0, accuracy=100)
    huge = report("huge", B, A, nonce, T0, where=(35.65, 139.70), accuracy=50_000)
    result = resolve([x, huge])
    assert result.follows == []
    assert kinds(result) == [("huge", "taps_bad_position"), ("x", "taps_unmatched")]
    assert result.rejections[0].reason == "bad position: accuracy_m=50000 exceeds max_accuracy_m=100"


def test_touch_far_in_the_future_never_becomes_a_follow():
    t = parse_rfc3339("2099-01-01T00:00:00Z")
    x, y = touch(A, B, t, 3)
    result = resolve_reports([x, y], PUBKEYS, max_clock_skew_s=SKEW, pending_expiry_s=EXPIRY, now=T0 + 3600)
    assert result.follows == []
    assert {k for _, k in kinds(result)} == {"taps_future_touch"}
    assert result.rejections[0].reason.startswith("future touch: the nonce's touch time is ")
    # a touch a little ahead of the run's clock (phone clocks drift) is within max_future_s
    near = touch(A, B, T0 + 200, 4)
    assert len(resolve_reports(list(near), PUBKEYS, now=T0).follows) == 1
    assert resolve_reports(list(near), PUBKEYS, now=T0, max_future_s=100).follows == []


def test_default_run_clock_is_the_wall_clock():
    t = parse_rfc3339("2099-01-01T00:00:00Z")
    x, _ = touch(A, B, t, 3)
    assert check_report(x, PUBKEYS, SKEW).kind == "taps_future_touch"
    x_now, _ = touch(A, B, T0, 3)
    assert isinstance(check_report(x_now, PUBKEYS, SKEW), CheckedTap)


def test_weak_registered_key_cannot_be_used_to_forge():
    identity = base64.b64encode((1).to_bytes(32, "little")).decode()
    keys = dict(PUBKEYS, **{C: identity})
    nonce = nonce_at(T0, 11)
    forged_sig = base64.b64encode((1).to_bytes(32, "little") + bytes(32)).decode()   # verifies under identity
    x = report("x", A, C, nonce, T0, peer_proof=forged_sig)
    y = TapReport("y", C, A, nonce, T0, *VENUE, forged_sig, x.proof, 10, forged_sig)
    result = resolve_reports([x, y], keys, now=T0)
    assert result.follows == []
    assert kinds(result) == [("x", "taps_bad_peer_proof"), ("y", "taps_bad_proof")]
    assert "small-order point" in result.rejections[0].reason


def test_non_canonical_report_sig_spelling_is_rejected():
    x, y = touch(A, B, T0, 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    sig = x.report_sig
    other = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="
    assert base64.b64decode(other) == base64.b64decode(sig)
    assert kinds(resolve([x._replace(report_sig=other), y])) == sorted(
        [(x.tap_id, "taps_bad_report_sig"), (y.tap_id, "taps_unmatched")])


def test_report_outside_the_service_area_is_rejected():
    nonce = nonce_at(T0, 12)
    berlin = report("b", A, B, nonce, T0, where=(52.52, 13.405))
    rejection = check_report(berlin, PUBKEYS, SKEW, now=T0)
    assert rejection.kind == "taps_outside_service_area"
    assert rejection.reason == ("outside the service area: (52.5200000, 13.4050000) is not in Tokyo's 23 wards")


def test_nonce_time_and_claim_unchanged_for_genuine_pairs():
    x, y = touch(A, B, T0, 1)
    assert x.proof == y.peer_proof == sign_claim(PRIVATE[A], A, B, x.nonce)
    assert resolve([x, y]).follows[0].established_at == nonce_time(x.nonce)

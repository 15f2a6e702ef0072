"""Tests of event-time formats (schemas.timefmt) and the tap proof format (schemas.proofs).

Run: .venv/bin/pytest tests/test_timefmt_proofs.py -q
"""
from __future__ import annotations

import base64
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import InvalidRecord
from schemas.proofs import (
    claim_bytes, decode_pubkey, make_nonce, new_keypair, nonce_time, sign_claim, verify_claim,
)
from schemas.timefmt import check_epoch, format_rfc3339, parse_rfc3339, parse_twitter_v1

UTC = dt.timezone.utc
EARLIEST_MS = int(dt.datetime(2006, 3, 21, tzinfo=UTC).timestamp() * 1000)
LATEST_MS = int(dt.datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000) - 1
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

epoch_millis = st.integers(min_value=EARLIEST_MS, max_value=LATEST_MS)
# Real UTC offsets are whole minutes within ±24 h.
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(lambda m: dt.timedelta(minutes=m))


def rejected(fn, *args) -> str:
    with pytest.raises(InvalidRecord) as info:
        fn(*args)
    return str(info.value)


# ---- RFC 3339 --------------------------------------------------------------------------

@given(epoch_millis)
def test_rfc3339_round_trips_at_millisecond_precision(millis):
    seconds = millis / 1000
    text = format_rfc3339(seconds)
    assert parse_rfc3339(text) == seconds
    assert format_rfc3339(parse_rfc3339(text)) == text


@given(epoch_millis, offsets)
def test_rfc3339_offsets_are_converted_to_utc(millis, offset):
    moment = dt.datetime.fromtimestamp(millis / 1000, tz=UTC).astimezone(dt.timezone(offset))
    text = moment.isoformat(timespec="milliseconds")  # e.g. 2018-10-11T05:19:24.000+09:00
    assert parse_rfc3339(text) == millis / 1000


@pytest.mark.parametrize("text, seconds", [
    ("2018-10-10T20:19:24Z", 1539202764.0),
    ("2018-10-10T20:19:24.000Z", 1539202764.0),
    ("2018-10-10t20:19:24.5z", 1539202764.5),
    ("2018-10-11T05:19:24+09:00", 1539202764.0),
    ("2018-10-10T15:49:24.250-04:30", 1539202764.25),
    ("2018-10-10 20:19:24Z", 1539202764.0),  # RFC 3339 allows a space for 'T'
])
def test_rfc3339_examples(text, seconds):
    assert parse_rfc3339(text) == seconds


@pytest.mark.parametrize("value, reason", [
    ("2018-10-10T20:19:24", "ts: '2018-10-10T20:19:24' has no UTC offset (RFC 3339 requires one)"),
    ("2018-10-10", "ts: '2018-10-10' has no UTC offset (RFC 3339 requires one)"),
    ("10/10/2018 20:19", "ts: '10/10/2018 20:19' is not an RFC 3339 timestamp"),
    ("2018-02-30T00:00:00Z", "ts: '2018-02-30T00:00:00Z' is not an RFC 3339 timestamp"),
    ("", "ts: '' is not an RFC 3339 timestamp"),
    (1539202764, "ts: expected an RFC 3339 string, got int"),
    (None, "ts: expected an RFC 3339 string, got NoneType"),
    ("2005-12-31T23:59:59Z", "ts: 2005-12-31T23:59:59.000Z is outside 2006..2100"),
    ("2100-01-01T00:00:00Z", "ts: 2100-01-01T00:00:00.000Z is outside 2006..2100"),
])
def test_rfc3339_rejections(value, reason):
    assert rejected(parse_rfc3339, value) == reason


def test_format_rfc3339_is_fixed_width_milliseconds_z():
    assert format_rfc3339(1539202764.0) == "2018-10-10T20:19:24.000Z"
    assert format_rfc3339(1539202764.9996) == "2018-10-10T20:19:25.000Z"  # rounds, never 1000 ms
    assert format_rfc3339(1539202764.0125) == "2018-10-10T20:19:24.012Z"


def test_check_epoch_rejects_non_finite_and_non_numbers():
    assert rejected(check_epoch, float("nan")) == "ts: not a finite time"
    assert rejected(check_epoch, float("inf")) == "ts: inf is outside 2006..2100"
    assert rejected(check_epoch, True) == "ts: not a finite time"
    assert check_epoch(1539202764) == 1539202764.0


# ---- v1.1 created_at -------------------------------------------------------------------

def v1_text(moment: dt.datetime) -> str:
    """Format like the v1.1 API, with English names whatever the locale."""
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return (f"{WEEKDAYS[moment.weekday()]} {MONTHS[moment.month - 1]} {moment.day:02d} "
            f"{moment:%H:%M:%S} {sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d} {moment.year}")


@given(st.integers(min_value=EARLIEST_MS // 1000, max_value=LATEST_MS // 1000), offsets)
def test_v1_date_round_trips_in_any_offset(seconds, offset):
    moment = dt.datetime.fromtimestamp(seconds, tz=UTC).astimezone(dt.timezone(offset))
    text = v1_text(moment)
    assert parse_twitter_v1(text) == seconds
    # and agrees with strptime's reading of the same text (C locale)
    assert parse_twitter_v1(text) == dt.datetime.strptime(text, "%a %b %d %H:%M:%S %z %Y").timestamp()


@pytest.mark.parametrize("text, seconds", [
    ("Wed Oct 10 20:19:24 +0000 2018", 1539202764.0),
    ("Thu Oct 11 05:19:24 +0900 2018", 1539202764.0),
    ("Wed Oct 10 15:49:24 -0430 2018", 1539202764.0),
    ("Thu Feb 29 23:59:59 +0000 2024", 1709251199.0),
])
def test_v1_date_examples(text, seconds):
    assert parse_twitter_v1(text) == seconds


@pytest.mark.parametrize("text", [
    "Wed Okt 10 20:19:24 +0000 2018",     # German month
    "Mi. Oct 10 20:19:24 +0000 2018",     # not an English weekday
    "Wed Oct 10 20:19:24 2018",           # no offset
    "Wed Oct 10 20:19:24 Z 2018",
    "Wed Oct 10 20:19:24 +00:00 2018",
    "Wed Oct 10 20:19:24 +0060 2018",     # 60 offset minutes
    "Wed Oct 10 20:19:24 +2400 2018",
    "Wed Oct 10 24:00:00 +0000 2018",
    "Wed Oct 32 20:19:24 +0000 2018",
    "Thu Feb 29 12:00:00 +0000 2019",     # not a leap year
    "Wed Oct 1 20:19:24 +0000 2018",      # v1.1 always pads the day
    "Wed Oct 10 20:19:24 +0000 18",
    "Wed  Oct 10 20:19:24 +0000 2018",
    " Wed Oct 10 20:19:24 +0000 2018",
    "Wed Oct １０ 20:19:24 +0000 2018",    # full-width digits
    "2018-10-10T20:19:24Z",
    "",
])
def test_v1_date_rejections(text):
    assert rejected(parse_twitter_v1, text) == (
        f"created_at: {text!r} is not a v1.1 date like 'Wed Oct 10 20:19:24 +0000 2018'")


def test_v1_date_type_and_range():
    assert rejected(parse_twitter_v1, 1539202764) == "created_at: expected a string, got int"
    assert rejected(parse_twitter_v1, "Sat Jan 01 00:00:00 +0000 2000") == (
        "created_at: 2000-01-01T00:00:00.000Z is outside 2006..2100")


# ---- proofs ----------------------------------------------------------------------------

# RFC 8032 section 7.1, test 1: a known key pair pins the key encoding.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
ALICE, BOB, CAROL = "6253282", "783214", "12"
NONCE = make_nonce(1795600800.25, bytes(range(10)))


@pytest.fixture(scope="module")
def keys():
    return {user: new_keypair(bytes([n]) * 32) for n, user in enumerate((ALICE, BOB, CAROL), start=1)}


def test_pubkey_encoding_matches_rfc8032():
    _, pubkey = new_keypair(RFC8032_SEED)
    assert base64.b64decode(pubkey) == RFC8032_PUBLIC


def test_claim_bytes_are_canonical_and_order_free():
    expected = f'["tap-to-follow/v1","6253282","783214","{NONCE}"]'.encode()
    assert claim_bytes(ALICE, BOB, NONCE) == claim_bytes(BOB, ALICE, NONCE) == expected


def test_sign_and_verify(keys):
    alice_key, alice_pub = keys[ALICE]
    signature = sign_claim(alice_key, ALICE, BOB, NONCE)
    assert len(base64.b64decode(signature, validate=True)) == 64
    assert verify_claim(alice_pub, signature, ALICE, BOB, NONCE)
    assert verify_claim(decode_pubkey(alice_pub), signature, ALICE, BOB, NONCE)


def test_both_phones_sign_the_same_claim_whatever_the_order(keys):
    alice_key, alice_pub = keys[ALICE]
    # Alice signs (me=Alice, peer=Bob); Bob's phone checks it as (me=Bob, peer=Alice).
    signature = sign_claim(alice_key, ALICE, BOB, NONCE)
    assert signature == sign_claim(alice_key, BOB, ALICE, NONCE)  # Ed25519 is deterministic
    assert verify_claim(alice_pub, signature, BOB, ALICE, NONCE)


def test_altered_claims_fail(keys):
    alice_key, alice_pub = keys[ALICE]
    _, bob_pub = keys[BOB]
    signature = sign_claim(alice_key, ALICE, BOB, NONCE)
    assert not verify_claim(alice_pub, signature, ALICE, CAROL, NONCE)      # altered peer id
    assert not verify_claim(alice_pub, signature, CAROL, BOB, NONCE)        # altered own id
    other_nonce = make_nonce(1795600800.25, bytes(range(1, 11)))
    assert not verify_claim(alice_pub, signature, ALICE, BOB, other_nonce)  # moved to another touch
    assert not verify_claim(bob_pub, signature, ALICE, BOB, NONCE)          # someone else's key
    flipped = bytearray(base64.b64decode(signature))
    flipped[0] ^= 1
    assert not verify_claim(alice_pub, base64.b64encode(bytes(flipped)).decode(), ALICE, BOB, NONCE)


@pytest.mark.parametrize("pubkey, signature", [
    ("not base64!", None),
    (base64.b64encode(b"short").decode(), None),
    (None, "not base64!"),
    (None, base64.b64encode(b"x" * 63).decode()),
    (None, ""),
    (None, 12345),
])
def test_garbage_keys_and_signatures_verify_false_without_raising(keys, pubkey, signature):
    alice_key, alice_pub = keys[ALICE]
    pubkey = alice_pub if pubkey is None else pubkey
    signature = sign_claim(alice_key, ALICE, BOB, NONCE) if signature is None else signature
    assert verify_claim(pubkey, signature, ALICE, BOB, NONCE) is False


def test_decode_pubkey_rejects_garbage():
    assert rejected(decode_pubkey, "AAAA") == "pubkey: expected 44 base64 characters (32 bytes), got 4"
    assert rejected(decode_pubkey, "no!") == "pubkey: expected 44 base64 characters (32 bytes), got 3"
    assert rejected(decode_pubkey, "!" * 44) == "pubkey: not base64 (standard alphabet, padded)"
    assert rejected(decode_pubkey, None) == "pubkey: expected a base64 string, got NoneType"


def test_nonce_layout():
    assert NONCE == f"{1795600800250:012x}" + "00010203040506070809"
    assert nonce_time(NONCE) == 1795600800.25
    with pytest.raises(ValueError):
        make_nonce(1795600800.25, b"short")


@given(epoch_millis, st.binary(min_size=10, max_size=10))
def test_nonce_time_round_trips(millis, random_bytes):
    nonce = make_nonce(millis / 1000, random_bytes)
    assert len(nonce) == 32
    assert nonce_time(nonce) == millis / 1000
    assert nonce[12:] == random_bytes.hex()


@pytest.mark.parametrize("nonce", [
    NONCE.upper(), NONCE[:-1], NONCE + "0", NONCE + "\n", " " + NONCE[1:], "g" * 32, "", None, 1234,
])
def test_malformed_nonce_is_rejected(nonce):
    assert rejected(nonce_time, nonce) == (
        f"nonce: expected 32 lower-case hex digits, got {str(nonce)[:64]!r}")


def test_random_nonces_differ():
    assert make_nonce(1795600800.0) != make_nonce(1795600800.0)


# ---- strict encodings and weak keys (issue #10) ------------------------------------------

from schemas.proofs import (  # noqa: E402
    L, decode_signature, key_weakness, report_bytes, report_bytes_of, sign_report, signed_lat_lng,
    verify_report_signature,
)

_P = 2 ** 255 - 19


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _other_spellings(canonical: str) -> list[str]:
    """Every base64 string that decodes to the same bytes (the last data character's unused bits)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = canonical.rstrip("=")
    padding = canonical[len(body):]
    out = []
    for ch in alphabet:
        text = body[:-1] + ch + padding
        if text != canonical and base64.b64decode(text) == base64.b64decode(canonical):
            out.append(text)
    return out


def test_a_signature_has_exactly_one_accepted_spelling(keys):
    alice_key, alice_pub = keys[ALICE]
    signature = sign_claim(alice_key, ALICE, BOB, NONCE)
    spellings = _other_spellings(signature)
    assert len(spellings) == 15          # 16 spellings decode to the same 64 bytes
    for text in spellings:
        assert verify_claim(alice_pub, text, ALICE, BOB, NONCE) is False
        assert "canonical base64" in rejected(decode_signature, text)
    assert verify_claim(alice_pub, signature, ALICE, BOB, NONCE) is True


def test_a_pubkey_has_exactly_one_accepted_spelling(keys):
    alice_key, alice_pub = keys[ALICE]
    spellings = _other_spellings(alice_pub)
    assert len(spellings) == 3
    for text in spellings:
        assert "canonical base64" in rejected(decode_pubkey, text)
        assert verify_claim(text, sign_claim(alice_key, ALICE, BOB, NONCE), ALICE, BOB, NONCE) is False


def test_signature_with_s_at_or_above_the_group_order_is_refused(keys):
    from cryptography.exceptions import InvalidSignature
    alice_key, alice_pub = keys[ALICE]
    raw = base64.b64decode(sign_claim(alice_key, ALICE, BOB, NONCE))
    s = int.from_bytes(raw[32:], "little")
    malleated = raw[:32] + (s + L).to_bytes(32, "little")
    # OpenSSL (through cryptography) already refuses it ...
    with pytest.raises(InvalidSignature):
        decode_pubkey(alice_pub).verify(malleated, claim_bytes(ALICE, BOB, NONCE))
    # ... and so does the project's own decoder, whatever the library does.
    assert rejected(decode_signature, _b64(malleated)) == (
        "signature: scalar S is not below the group order L (a malleated signature)")
    assert verify_claim(alice_pub, _b64(malleated), ALICE, BOB, NONCE) is False


# The 8 small-order points' canonical encodings (y, sign bit), e.g. libsodium's blocklist.
SMALL_ORDER = [
    (1).to_bytes(32, "little"),                                        # the identity (0, 1)
    (_P - 1).to_bytes(32, "little"),                                   # (0, -1), order 2
    bytes(32),                                                         # (+-sqrt(-1), 0), order 4
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),  # order 8
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),  # order 8
]


@pytest.mark.parametrize("raw", SMALL_ORDER)
def test_small_order_keys_are_refused(raw):
    assert key_weakness(raw) == "a small-order point (anyone could forge this user's signatures)"
    assert rejected(decode_pubkey, _b64(raw)) == (
        "pubkey: refused weak Ed25519 key: a small-order point (anyone could forge this user's signatures)")


def test_identity_key_would_let_anyone_forge_and_is_refused():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    identity = (1).to_bytes(32, "little")
    forged = identity + bytes(32)        # R = identity, S = 0: [S]B = R + [h]A for A = identity
    # OpenSSL accepts this forgery for any message: the key itself must be refused.
    Ed25519PublicKey.from_public_bytes(identity).verify(forged, claim_bytes(ALICE, BOB, NONCE))
    assert verify_claim(_b64(identity), _b64(forged), ALICE, BOB, NONCE) is False


@pytest.mark.parametrize("raw, reason", [
    ((_P + 1).to_bytes(32, "little"), "not the canonical encoding of a point on Ed25519"),      # y >= p
    ((1 | 1 << 255).to_bytes(32, "little"), "not the canonical encoding of a point on Ed25519"),  # x = -0
    ((2).to_bytes(32, "little"), "not the canonical encoding of a point on Ed25519"),           # off the curve
])
def test_non_canonical_and_off_curve_keys_are_refused(raw, reason):
    assert key_weakness(raw) == reason


def test_mixed_order_key_is_refused(keys):
    from schemas import proofs
    _, alice_pub = keys[ALICE]
    a = proofs._decode_point(base64.b64decode(alice_pub))
    t = proofs._decode_point(SMALL_ORDER[3])
    x, y, z, _ = proofs._add(a, t)
    zi = pow(z, _P - 2, _P)
    x, y = x * zi % _P, y * zi % _P
    mixed = (y | (x & 1) << 255).to_bytes(32, "little")
    assert key_weakness(mixed) == "not in the prime-order subgroup (a torsion component)"


def test_genuine_keys_are_sound(keys):
    for _, pubkey in keys.values():
        assert key_weakness(base64.b64decode(pubkey)) is None


REPORT = dict(tap_id="t-1", user_id=ALICE, peer_user_id=BOB, nonce=NONCE, ts=1795600800.5, lat=35.6812345,
              lng=139.7671234, accuracy_m=12, proof="P" * 86 + "==", peer_proof="Q" * 86 + "==")


def test_report_bytes_are_integers_in_a_fixed_order():
    assert report_bytes(**REPORT) == (
        '["tap-report/v1","t-1","6253282","783214","' + NONCE + '",1795600800500,356812345,1397671234,12,"'
        + "P" * 86 + '==","' + "Q" * 86 + '=="]').encode()


def test_report_bytes_are_ascii_whatever_the_tap_id():
    assert report_bytes(**dict(REPORT, tap_id="\ud800é")).startswith(b'["tap-report/v1","\\ud800\\u00e9"')


def test_report_bytes_refuse_a_fractional_accuracy():
    with pytest.raises(TypeError):
        report_bytes(**dict(REPORT, accuracy_m=12.5))


class _R:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_report_signature_covers_every_field(keys):
    alice_key, alice_pub = keys[ALICE]
    signature = sign_report(alice_key, **REPORT)
    assert verify_report_signature(alice_pub, signature, _R(**REPORT))
    changes = dict(tap_id="t-2", user_id=BOB, peer_user_id=CAROL, nonce=NONCE[:-1] + "f", ts=1795600800.501,
                   lat=35.6812346, lng=139.7671235, accuracy_m=13, proof="R" * 86 + "==", peer_proof="P" * 86 + "==")
    for field, value in changes.items():
        assert not verify_report_signature(alice_pub, signature, _R(**dict(REPORT, **{field: value}))), field
    assert not verify_report_signature(keys[BOB][1], signature, _R(**REPORT))     # another reporter's key


@given(st.integers(min_value=-900_000_000, max_value=900_000_000),
       st.integers(min_value=-1_800_000_000, max_value=1_800_000_000))
def test_signed_position_round_trips_through_floats(lat_e7, lng_e7):
    lat, lng = lat_e7 / 1e7, lng_e7 / 1e7
    report = _R(**dict(REPORT, lat=lat, lng=lng))
    assert signed_lat_lng(report) == (lat, lng)
    assert report_bytes_of(report) == report_bytes(**dict(REPORT, lat=lat, lng=lng))
    assert f",{lat_e7},{lng_e7},".encode() in report_bytes_of(report)

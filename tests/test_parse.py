"""Tests of the line parsers for users, pings and taps (schemas.parse.parse_line).

Every bad line must raise InvalidRecord with a reason naming what is wrong, and
nothing else may escape, whatever the line. Run: .venv/bin/pytest tests/test_parse.py -q
"""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import InvalidRecord
from schemas.parse import MAX_LINE_BYTES, parse_line
from schemas.records import Ping, TapReport, User

TS = "2026-11-25T10:00:00.250Z"
TS_EPOCH = 1795600800.25
NONCE = f"{1795600800250:012x}" + "0123456789abcdef0123"
PROOF = "A" * 86 + "=="
PEER_PROOF = "B" * 86 + "=="
PUBKEY = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="

USER = {"user_id": "6253282", "pubkey": PUBKEY, "alerts_opt_in": True, "stats_opt_out": False,
        "age_band": "20-29"}
PING = {"user_id": "6253282", "ts": TS, "lat": 35.6, "lng": 139.7, "accuracy_m": 12.5, "source": "gps"}
TAP = {"tap_id": "tap-0001", "user_id": "6253282", "peer_user_id": "783214", "nonce": NONCE, "ts": TS,
       "lat": 35.6, "lng": 139.7, "proof": PROOF, "peer_proof": PEER_PROOF}
GOOD = {"users": USER, "pings": PING, "taps": TAP}


def line(obj: dict, **overrides) -> str:
    """``obj`` as a JSON line with fields overridden (``DROP`` removes one)."""
    fields = dict(obj)
    for key, value in overrides.items():
        if value is DROP:
            del fields[key]
        else:
            fields[key] = value
    return json.dumps(fields)


DROP = object()


def reason(source: str, raw) -> str:
    with pytest.raises(InvalidRecord) as info:
        parse_line(source, raw)
    return str(info.value)


# ---- good lines ----------------------------------------------------------------------

def test_user():
    assert parse_line("users", line(USER)) == User(
        user_id="6253282", pubkey=PUBKEY, alerts_opt_in=True, stats_opt_out=False, age_band="20-29")


def test_user_age_band_is_optional():
    assert parse_line("users", line(USER, age_band=DROP)).age_band is None
    assert parse_line("users", line(USER, age_band=None)).age_band is None


def test_ping():
    assert parse_line("pings", line(PING)) == Ping(
        user_id="6253282", ts=TS_EPOCH, lat=35.6, lng=139.7, accuracy_m=12.5, source="gps")


def test_ping_optional_fields_and_integer_coordinates():
    assert parse_line("pings", line(PING, accuracy_m=DROP, source=DROP, lat=35, lng=-180)) == Ping(
        user_id="6253282", ts=TS_EPOCH, lat=35.0, lng=-180.0, accuracy_m=None, source=None)


def test_ping_offset_is_converted_to_utc():
    assert parse_line("pings", line(PING, ts="2026-11-25T19:00:00.250+09:00")).ts == TS_EPOCH


def test_tap():
    assert parse_line("taps", line(TAP)) == TapReport(
        tap_id="tap-0001", user_id="6253282", peer_user_id="783214", nonce=NONCE, ts=TS_EPOCH,
        lat=35.6, lng=139.7, proof=PROOF, peer_proof=PEER_PROOF)


def test_bytes_lines_and_trailing_newline_are_accepted():
    assert parse_line("taps", (line(TAP) + "\n").encode("utf-8")) == parse_line("taps", line(TAP))


def test_unicode_is_kept():
    assert parse_line("taps", line(TAP, tap_id="タップ-1")).tap_id == "タップ-1"


# ---- bad lines: each with its own reason ----------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("", "empty line"),
    ("  \n", "empty line"),
    ('{"user_id": "1",', "malformed JSON: Expecting property name enclosed in double quotes at char 16"),
    ('{"user_id": "1"} {}', "malformed JSON: Extra data at char 17"),
    ("{'user_id': '1'}", "malformed JSON: Expecting property name enclosed in double quotes at char 1"),
    ("[" * 100_000, "malformed JSON: nested too deeply"),
    ('{"n": 1' + "0" * 5000 + "}",
     "malformed JSON: Exceeds the limit (4300 digits) for integer string conversion: value has 5001 digits"),
    ("[]", "expected a JSON object, got list"),
    ('"a string"', "expected a JSON object, got str"),
    ("42", "expected a JSON object, got int"),
    ("null", "expected a JSON object, got NoneType"),
    (b"\xff\xfe{}", "not UTF-8: invalid start byte at byte 0"),
    (42, "expected a text line, got int"),
    (None, "expected a text line, got NoneType"),
])
def test_undecodable_lines(raw, expected):
    for source in GOOD:
        assert reason(source, raw) == expected


def test_ten_megabyte_line_is_rejected_as_too_large():
    huge = '{"user_id": "' + "1" * (10 * 1024 * 1024) + '"}'
    expected = f"line of {len(huge)} bytes exceeds the {MAX_LINE_BYTES}-byte limit"
    assert reason("users", huge) == expected
    assert reason("users", huge.encode()) == expected
    # measured in UTF-8 bytes, not characters: 400k three-byte characters exceed 1 MiB
    wide = '{"tap_id": "' + "東" * 400_000 + '"}'
    assert reason("taps", wide) == f"line of {len(wide.encode())} bytes exceeds the {MAX_LINE_BYTES}-byte limit"


def test_large_line_with_lone_surrogate_is_measured_not_crashed():
    raw = line(TAP, tap_id="\ud800" + "x" * 300_000)
    assert reason("taps", raw.replace("\\ud800", "\ud800")) == "tap_id: contains an unpaired UTF-16 surrogate"


def test_unknown_source():
    assert reason("likes", line(USER)) == "unknown source 'likes'; expected one of users, pings, taps, tweets"


@pytest.mark.parametrize("source, field", [
    ("users", "user_id"), ("users", "pubkey"), ("users", "alerts_opt_in"), ("users", "stats_opt_out"),
    ("pings", "user_id"), ("pings", "ts"), ("pings", "lat"), ("pings", "lng"),
    ("taps", "tap_id"), ("taps", "user_id"), ("taps", "peer_user_id"), ("taps", "nonce"), ("taps", "ts"),
    ("taps", "lat"), ("taps", "lng"), ("taps", "proof"), ("taps", "peer_proof"),
])
def test_missing_required_field(source, field):
    assert reason(source, line(GOOD[source], **{field: DROP})) == f"missing required field {field!r}"
    assert reason(source, line(GOOD[source], **{field: None})) == f"missing required field {field!r}"


@pytest.mark.parametrize("source, overrides, expected", [
    # coordinates
    ("pings", {"lat": "35.6"}, "lat: expected a number, got str"),
    ("pings", {"lng": True}, "lng: expected a number, got bool"),
    ("pings", {"lat": [35.6]}, "lat: expected a number, got list"),
    ("pings", {"lat": 91}, "lat: 91.0 out of range [-90, 90]"),
    ("pings", {"lat": -90.0001}, "lat: -90.0001 out of range [-90, 90]"),
    ("pings", {"lng": 180.5}, "lng: 180.5 out of range [-180, 180]"),
    ("taps", {"lat": 91}, "lat: 91.0 out of range [-90, 90]"),
    ("taps", {"lng": "139.7"}, "lng: expected a number, got str"),
    # optional ping fields
    ("pings", {"accuracy_m": -1}, "accuracy_m: -1.0 is negative"),
    ("pings", {"accuracy_m": "5"}, "accuracy_m: expected a number, got str"),
    ("pings", {"source": "bluetooth"}, "source: 'bluetooth' is not one of gps, cell, wifi"),
    ("pings", {"source": ["gps"]}, "source: ['gps'] is not one of gps, cell, wifi"),
    # time
    ("pings", {"ts": "2026-11-25T10:00:00"}, "ts: '2026-11-25T10:00:00' has no UTC offset (RFC 3339 requires one)"),
    ("pings", {"ts": "yesterday"}, "ts: 'yesterday' is not an RFC 3339 timestamp"),
    ("pings", {"ts": 1795600800}, "ts: expected an RFC 3339 string, got int"),
    ("pings", {"ts": "1999-01-01T00:00:00Z"}, "ts: 1999-01-01T00:00:00.000Z is outside 2006..2100"),
    ("taps", {"ts": "2026-13-01T00:00:00Z"}, "ts: '2026-13-01T00:00:00Z' is not an RFC 3339 timestamp"),
    # booleans
    ("users", {"alerts_opt_in": "true"}, "alerts_opt_in: expected true/false, got str"),
    ("users", {"stats_opt_out": 0}, "stats_opt_out: expected true/false, got int"),
    # strings
    ("users", {"pubkey": ""}, "pubkey: length 0 outside 1..64"),
    ("users", {"pubkey": 5}, "pubkey: expected a string, got int"),
    ("users", {"age_band": 25}, "age_band: expected a string, got int"),
    ("taps", {"tap_id": "x" * 129}, "tap_id: length 129 outside 1..128"),
    ("taps", {"proof": ["sig"]}, "proof: expected a string, got list"),
    # user ids: Twitter id_str, ASCII decimal digits only
    ("users", {"user_id": "abc"}, "user_id: 'abc' is not a Twitter id_str (decimal digits)"),
    ("users", {"user_id": "12 3"}, "user_id: '12 3' is not a Twitter id_str (decimal digits)"),
    ("users", {"user_id": "-123"}, "user_id: '-123' is not a Twitter id_str (decimal digits)"),
    ("users", {"user_id": "١٢٣"}, "user_id: '١٢٣' is not a Twitter id_str (decimal digits)"),
    ("users", {"user_id": "²"}, "user_id: '²' is not a Twitter id_str (decimal digits)"),
    ("users", {"user_id": 6253282}, "user_id: expected a string, got int"),
    ("users", {"user_id": ""}, "user_id: length 0 outside 1..32"),
    ("pings", {"user_id": "@TwitterDev"}, "user_id: '@TwitterDev' is not a Twitter id_str (decimal digits)"),
    ("taps", {"peer_user_id": "78x"}, "peer_user_id: '78x' is not a Twitter id_str (decimal digits)"),
    # nonces
    ("taps", {"nonce": NONCE.upper()}, f"nonce: expected 32 lower-case hex digits, got {NONCE.upper()!r}"),
    ("taps", {"nonce": NONCE[:-1]}, f"nonce: expected 32 lower-case hex digits, got {NONCE[:-1]!r}"),
    ("taps", {"nonce": NONCE + "0"}, f"nonce: expected 32 lower-case hex digits, got {NONCE + '0'!r}"),
    ("taps", {"nonce": NONCE + "\n"}, f"nonce: expected 32 lower-case hex digits, got {NONCE + chr(10)!r}"),
    ("taps", {"nonce": "g" * 32}, f"nonce: expected 32 lower-case hex digits, got {'g' * 32!r}"),
    ("taps", {"nonce": 12345}, "nonce: expected 32 lower-case hex digits, got '12345'"),
])
def test_bad_field(source, overrides, expected):
    assert reason(source, line(GOOD[source], **overrides)) == expected


@pytest.mark.parametrize("literal, expected", [
    ("NaN", "lat: nan is not finite"),
    ("Infinity", "lat: inf is not finite"),
    ("-Infinity", "lat: -inf is not finite"),
    ("1e400", "lat: inf is not finite"),
    ("1" + "0" * 400, "lat: integer too large for a number"),
])
def test_non_finite_json_numbers_are_rejected(literal, expected):
    # Python's json module accepts NaN/Infinity literals; the parser must not.
    for source in ("pings", "taps"):
        raw = line(GOOD[source], lat="@@").replace('"@@"', literal)
        assert reason(source, raw) == expected


def test_unknown_extra_fields_are_ignored():
    assert parse_line("users", line(USER, nickname="x")) == parse_line("users", line(USER))


# ---- properties ----------------------------------------------------------------------

def outcome(source, raw):
    try:
        return parse_line(source, raw)
    except InvalidRecord as exc:
        assert str(exc)  # a reason, never an empty message
        return exc


@given(st.sampled_from(["users", "pings", "taps", "tweets"]), st.text(max_size=200))
def test_any_text_line_is_a_record_or_invalid_record(source, raw):
    outcome(source, raw)


@given(st.sampled_from(["users", "pings", "taps", "tweets"]), st.binary(max_size=200))
def test_any_bytes_line_is_a_record_or_invalid_record(source, raw):
    outcome(source, raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 80), max_value=2 ** 80) | st.floats()
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300)
@given(st.sampled_from(sorted(GOOD)), st.data())
def test_good_lines_with_junk_fields_are_a_record_or_invalid_record(source, data):
    """Near-valid lines: the real field names, each kept, dropped or replaced by junk."""
    fields = {}
    for key, value in GOOD[source].items():
        choice = data.draw(st.sampled_from(["keep", "drop", "junk"]))
        if choice == "keep":
            fields[key] = value
        elif choice == "junk":
            fields[key] = data.draw(json_values)
    result = outcome(source, json.dumps(fields))
    if not isinstance(result, InvalidRecord):
        assert type(result) is {"users": User, "pings": Ping, "taps": TapReport}[source]
        # a record is only ever made from values that passed validation
        assert result.user_id.isascii() and result.user_id.isdigit()
        if source != "users":
            assert -90 <= result.lat <= 90 and -180 <= result.lng <= 180
            assert isinstance(result.ts, float)


@given(lat=st.floats(-90, 90), lng=st.floats(-180, 180))
def test_valid_coordinates_round_trip(lat, lng):
    ping = parse_line("pings", line(PING, lat=lat, lng=lng))
    assert (ping.lat, ping.lng) == (lat, lng)

"""Parsing and validation of the contract's input lines into typed records.

``parse_line(source, line)`` is the single entry point the pipeline, the
generator's self-check and the gateway use: it returns one record or raises
``InvalidRecord`` with a specific reason. Pure functions, no Beam.
"""
from __future__ import annotations

import json
import math

from schemas.errors import InvalidRecord
from schemas.proofs import MAX_ACCURACY_M, check_nonce, decode_pubkey
from schemas.records import Ping, RegistryChange, TapReport, User
from schemas.timefmt import parse_rfc3339

# A line larger than this is rejected before JSON decoding: no legitimate record
# is near it (a v1.1 status with everything expanded is ~10 KB).
MAX_LINE_BYTES = 1 << 20
SOURCES = ("users", "pings", "taps", "tweets")
PING_SOURCES = frozenset({"gps", "cell", "wifi"})


def parse_line(source: str, line) -> object:
    """One input line of ``source`` (users|pings|taps|tweets) -> a typed record."""
    obj = decode_json_object(line)
    if source == "users":
        return parse_user(obj)
    if source == "pings":
        return parse_ping(obj)
    if source == "taps":
        return parse_tap(obj)
    if source == "tweets":
        from schemas.tweets import parse_tweet  # the firehose formats live apart
        return parse_tweet(obj)
    raise InvalidRecord(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")


def decode_json_object(line) -> dict:
    if isinstance(line, bytes):
        if len(line) > MAX_LINE_BYTES:
            raise InvalidRecord(f"line of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte limit")
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRecord(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if not isinstance(line, str):
        raise InvalidRecord(f"expected a text line, got {type(line).__name__}")
    if len(line) > MAX_LINE_BYTES // 4:
        # surrogatepass: a str line may hold lone surrogates; measuring must not raise.
        size = len(line.encode("utf-8", "surrogatepass"))
        if size > MAX_LINE_BYTES:
            raise InvalidRecord(f"line of {size} bytes exceeds the {MAX_LINE_BYTES}-byte limit")
    if not line.strip():
        raise InvalidRecord("empty line")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidRecord(f"malformed JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        raise InvalidRecord("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # an integer literal over Python's 4300-digit conversion limit
        raise InvalidRecord(f"malformed JSON: {str(exc).split(';')[0]}") from None
    if not isinstance(obj, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(obj).__name__}")
    # JSON's "\ud800" escape (or a str line holding one) decodes to a lone UTF-16
    # surrogate, which no UTF-8 sink, coder or Arrow column can write: anywhere in the
    # object, used field or not, it makes the line a dead letter naming the field.
    if "\\ud" in line or "\\uD" in line or (not line.isascii() and not _encodable(line)):
        check_encodable(obj)
    return obj


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_encodable(obj) -> None:
    """Raise ``InvalidRecord`` naming the first string (value or key) UTF-8 cannot encode."""
    stack = [(obj, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and not _encodable(value):
                raise InvalidRecord(f"{_path(path)}: contains an unpaired UTF-16 surrogate")
        elif isinstance(value, dict):
            for key in value:
                if not key.isascii() and not _encodable(key):
                    raise InvalidRecord(f"{_path(path) if path else 'object'}: key {key!r} "
                                        "contains an unpaired UTF-16 surrogate")
            stack.extend((item, (*path, key)) for key, item in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in reversed(list(enumerate(value))))


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# ---- field validators, shared with schemas.tweets -------------------------------------

def req(obj: dict, field: str, where: str = ""):
    """``obj[field]``; a missing or null field is an error naming its path (``where`` + field)."""
    value = obj.get(field)
    if value is None:
        raise InvalidRecord(f"missing required field '{where}{field}'")
    return value


def _of_type(value, kind: type, field: str, expected: str):
    """``value`` when it is a ``kind``, else an error naming the field and what it got."""
    if not isinstance(value, kind):
        raise InvalidRecord(f"{field}: expected {expected}, got {type(value).__name__}")
    return value


def as_object(value, field: str) -> dict:
    return _of_type(value, dict, field, "an object")


def as_str(value, field: str, max_len: int = 256) -> str:
    _of_type(value, str, field, "a string")
    if not value or len(value) > max_len:
        raise InvalidRecord(f"{field}: length {len(value)} outside 1..{max_len}")
    return value


def as_user_id(value, field: str = "user_id") -> str:
    value = as_str(value, field, 32)
    if not value.isascii() or not value.isdigit():
        raise InvalidRecord(f"{field}: {value!r} is not a Twitter id_str (decimal digits)")
    return value


def as_bool(value, field: str) -> bool:
    return _of_type(value, bool, field, "true/false")


def as_number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRecord(f"{field}: expected a number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # a JSON integer literal with hundreds of digits
        raise InvalidRecord(f"{field}: integer too large for a number") from None
    if not math.isfinite(value):
        raise InvalidRecord(f"{field}: {value} is not finite")
    return value


def as_lat_lng(lat, lng, where: str = "") -> tuple[float, float]:
    lat = as_number(lat, f"{where}lat")
    lng = as_number(lng, f"{where}lng")
    if not -90.0 <= lat <= 90.0:
        raise InvalidRecord(f"{where}lat: {lat} out of range [-90, 90]")
    if not -180.0 <= lng <= 180.0:
        raise InvalidRecord(f"{where}lng: {lng} out of range [-180, 180]")
    return lat, lng


# ---- the three simple sources ---------------------------------------------------------

def parse_user(obj: dict):
    """A registry record: a ``User``, or -- with ``updated_at`` -- a ``RegistryChange`` the
    portal signed (``portal_sig``; checked against the portal's key in ``core.registry``)."""
    if "updated_at" in obj:
        from schemas.signin import CHANGE_SIG_FIELD, registry_change_body
        signature = obj.get(CHANGE_SIG_FIELD)
        if not isinstance(signature, str) or not signature:
            raise InvalidRecord(f"a registry change (updated_at) must carry the portal's signature "
                                f"{CHANGE_SIG_FIELD}: none given, the change is not used")
        updated_at = parse_rfc3339(obj["updated_at"])
        user = parse_user({k: v for k, v in obj.items() if k not in ("updated_at", CHANGE_SIG_FIELD)})
        return RegistryChange(user=user, ts=updated_at, signed=registry_change_body(obj), portal_sig=signature)
    age_band = obj.get("age_band")
    if age_band is not None:
        age_band = as_str(age_band, "age_band", 16)
    return User(
        user_id=as_user_id(req(obj, "user_id")),
        pubkey=as_pubkey(req(obj, "pubkey")),
        alerts_opt_in=as_bool(req(obj, "alerts_opt_in"), "alerts_opt_in"),
        stats_opt_out=as_bool(req(obj, "stats_opt_out"), "stats_opt_out"),
        age_band=age_band,
    )


def parse_ping(obj: dict) -> Ping:
    lat, lng = as_lat_lng(req(obj, "lat"), req(obj, "lng"))
    accuracy = obj.get("accuracy_m")
    if accuracy is not None:
        accuracy = as_number(accuracy, "accuracy_m")
        if accuracy < 0:
            raise InvalidRecord(f"accuracy_m: {accuracy} is negative")
    source = obj.get("source")
    if source is not None and (not isinstance(source, str) or source not in PING_SOURCES):
        raise InvalidRecord(f"source: {source!r} is not one of gps, cell, wifi")
    return Ping(
        user_id=as_user_id(req(obj, "user_id")),
        ts=parse_rfc3339(req(obj, "ts")),
        lat=lat,
        lng=lng,
        accuracy_m=accuracy,
        source=source,
    )


def as_pubkey(value) -> str:
    """A registered key must be usable: canonical base64 of a sound Ed25519 point (``schemas.proofs``)."""
    value = as_str(value, "pubkey", 64)
    decode_pubkey(value)  # InvalidRecord names the reason (encoding, off-curve, small order, torsion)
    return value


def _ascii(value: str, field: str) -> str:
    if not value.isascii():
        raise InvalidRecord(f"{field}: expected base64 (ASCII), got non-ASCII characters")
    return value


def parse_tap(obj: dict) -> TapReport:
    """Shape checks only; signatures are checked where the users' keys are known.

    ``accuracy_m`` (integer metres, 0..MAX_ACCURACY_M) and ``report_sig`` are the
    project's own fields (``schemas.proofs``); both are optional here so a report
    without them is dead-lettered by the pairing with its own reason, and counted.
    """
    lat, lng = as_lat_lng(req(obj, "lat"), req(obj, "lng"))
    accuracy = obj.get("accuracy_m")
    if accuracy is not None:
        if isinstance(accuracy, bool) or not isinstance(accuracy, int):
            raise InvalidRecord(f"accuracy_m: expected an integer number of metres, got {type(accuracy).__name__}")
        if not 0 <= accuracy <= MAX_ACCURACY_M:
            raise InvalidRecord(f"accuracy_m: {str(accuracy)[:24]} outside 0..{MAX_ACCURACY_M}")
    report_sig = obj.get("report_sig")
    if report_sig is not None:
        report_sig = _ascii(as_str(report_sig, "report_sig", 128), "report_sig")
    return TapReport(
        tap_id=as_str(req(obj, "tap_id"), "tap_id", 128),
        user_id=as_user_id(req(obj, "user_id")),
        peer_user_id=as_user_id(req(obj, "peer_user_id"), "peer_user_id"),
        nonce=check_nonce(req(obj, "nonce")),
        ts=parse_rfc3339(req(obj, "ts")),
        lat=lat,
        lng=lng,
        proof=_ascii(as_str(req(obj, "proof"), "proof", 128), "proof"),
        peer_proof=_ascii(as_str(req(obj, "peer_proof"), "peer_proof", 128), "peer_proof"),
        accuracy_m=accuracy,
        report_sig=report_sig,
    )

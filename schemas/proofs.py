"""The tap proof format: what each phone signs, and how the pipeline checks it.

Two kinds of signature protect a follow.

**The touch claim** (swapped over NFC). A touch between phones of users X and Y
produces one shared *claim*::

    claim = JSON ["tap-to-follow/v1", min(X, Y), max(X, Y), nonce]
            (UTF-8, no spaces: json.dumps(..., separators=(",", ":")))

Both phones sign the same claim bytes with their own Ed25519 key and swap
signatures over NFC; each phone then reports ``proof`` = its own signature and
``peer_proof`` = the peer's. Ed25519 is deterministic, so in a genuine pair
A.proof == B.peer_proof and A.peer_proof == B.proof. The claim names both
users, so a report whose ``peer_user_id`` was altered fails ``peer_proof``; it
names the nonce, so a signature cannot be moved to another touch. The *time*
is bound through the nonce: ``nonce`` is 32 hex digits, the first 12 are the
touch time in Unix milliseconds (the initiating phone's clock, big-endian) and
the remaining 20 are 80 random bits agreed over the link.

**The report signature** (``report_sig``, the project's own field). The claim
alone is not enough: both phones hold both claim signatures after a touch (and
anyone listening to the NFC link does too), so the claim cannot tell *which*
phone filed a report. Each phone therefore also signs its whole report::

    report = JSON ["tap-report/v1", tap_id, user_id, peer_user_id, nonce,
                   ts_ms, lat_e7, lng_e7, accuracy_m, proof, peer_proof]
             (ASCII: json.dumps(..., separators=(",", ":"), ensure_ascii=True))

with ``ts_ms = round(ts * 1000)`` (Unix milliseconds), ``lat_e7 =
round(lat * 1e7)`` and ``lng_e7 = round(lng * 1e7)`` (1e-7 degrees, ~1 cm), and
``accuracy_m`` the position's accuracy in whole metres (an integer in the
report). These integers are exactly what the pipeline and the gateway recompute
from a parsed report, however the JSON spelled the numbers, so one signed
report has one meaning everywhere; and every use of a position (the pairing's
distance check, the follow's H3 cell) reads the quantised signed values
(``signed_lat_lng``), never the raw floats. A follow thus needs two reports,
each signed by its own reporter over its own tap_id, position and time: a
report with its fields swapped, or filed under another tap_id, or moved, no
longer verifies.

**Encodings.** Signatures are base64 (standard alphabet, padded) of the raw
64-byte signature, public keys base64 of the raw 32-byte key; only the
canonical spelling is accepted (``b64encode(b64decode(s)) == s``: the unused
low bits of the last character must be zero, so one signature has one string).
A signature's scalar ``S`` must be below the group order ``L`` (OpenSSL
refuses ``S >= L`` too; checked here first so the rule does not depend on the
library). A public key must be the canonical encoding of a point on the curve
(``y < p``, no "negative zero" x) in the prime-order subgroup and not of small
order: with a small-order key (the identity, for one) anyone can forge
signatures that verify for that user. ``decode_pubkey`` refuses such keys with
the reason; the registry parser calls it, so a weak key is dead-lettered where
the user is read.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.errors import InvalidRecord

CLAIM_DOMAIN = "tap-to-follow/v1"
REPORT_DOMAIN = "tap-report/v1"
NONCE_HEX_DIGITS = 32
_NONCE_TIME_DIGITS = 12
_NONCE_RE = re.compile(r"[0-9a-f]{32}")  # used with fullmatch: '$' would accept a trailing newline
SIGNATURE_B64_CHARS = 88   # base64 of 64 bytes, padded
PUBKEY_B64_CHARS = 44      # base64 of 32 bytes, padded
MAX_ACCURACY_M = 100_000   # schema bound on accuracy_m; the pipeline's own bound is far lower

# Ed25519 (RFC 8032): field prime, curve constant, group order.
_P = 2 ** 255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
L = 2 ** 252 + 27742317777372353535851937790883648493


# ---- the touch claim and its nonce ------------------------------------------------------

def claim_bytes(user_x: str, user_y: str, nonce: str) -> bytes:
    """The canonical bytes both phones sign for a touch between user_x and user_y."""
    a, b = sorted((user_x, user_y))
    return json.dumps([CLAIM_DOMAIN, a, b, nonce], separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def make_nonce(touch_time: float, random_bytes: bytes | None = None) -> str:
    """Nonce = 48-bit Unix milliseconds || 80 random bits, as 32 lower-case hex digits."""
    rand = os.urandom(10) if random_bytes is None else random_bytes
    if len(rand) != 10:
        raise ValueError("a nonce needs exactly 10 random bytes")
    millis = int(round(touch_time * 1000))
    return f"{millis:012x}" + rand.hex()


def nonce_time(nonce: str) -> float:
    """The touch time (epoch seconds) bound into a nonce; InvalidRecord if malformed."""
    check_nonce(nonce)
    return int(nonce[:_NONCE_TIME_DIGITS], 16) / 1000.0


def check_nonce(nonce) -> str:
    if not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
        raise InvalidRecord(f"nonce: expected {NONCE_HEX_DIGITS} lower-case hex digits, got {str(nonce)[:64]!r}")
    return nonce


# ---- keys -------------------------------------------------------------------------------

def new_keypair(seed: bytes | None = None) -> tuple[Ed25519PrivateKey, str]:
    """A private key and its base64 public key (deterministic from a 32-byte seed)."""
    key = Ed25519PrivateKey.from_private_bytes(seed) if seed is not None else Ed25519PrivateKey.generate()
    return key, encode_pubkey(key.public_key())


def read_keypair_file(path) -> tuple[Ed25519PrivateKey, str]:
    """(private key, base64 public key) from a key file: base64 of the 32-byte Ed25519 seed,
    the format of the phones', the portal's and the marketers' keys. ValueError naming what
    is wrong (each caller turns it into its own error)."""
    try:
        with open(path, encoding="ascii") as handle:
            seed = base64.b64decode(handle.read().strip(), validate=True)
    except OSError as exc:
        raise ValueError(f"cannot read private key {path}: {exc.strerror or exc}") from None
    except (binascii.Error, ValueError):
        raise ValueError(f"{path}: not base64 of a 32-byte Ed25519 seed") from None
    if len(seed) != 32:
        raise ValueError(f"{path}: seed is {len(seed)} bytes, expected 32")
    return new_keypair(seed)


def encode_pubkey(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    return base64.b64encode(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def _canonical_b64(text, size: int, chars: int, what: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidRecord(f"{what}: expected a base64 string, got {type(text).__name__}")
    if len(text) != chars:
        raise InvalidRecord(f"{what}: expected {chars} base64 characters ({size} bytes), got {len(text)}")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRecord(f"{what}: not base64 (standard alphabet, padded)") from None
    if len(raw) != size or base64.b64encode(raw).decode("ascii") != text:
        raise InvalidRecord(f"{what}: not the canonical base64 spelling of {size} bytes "
                            "(the unused low bits of the last character must be zero)")
    return raw


# Extended twisted-Edwards coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z.
_IDENTITY = (0, 1, 1, 0)


def _add(p1, p2):
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = 2 * t1 * t2 * _D % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(k: int, point):
    result = _IDENTITY
    while k:
        if k & 1:
            result = _add(result, point)
        point = _add(point, point)
        k >>= 1
    return result


def _is_identity(point) -> bool:
    x, y, z, _ = point
    return x % _P == 0 and (y - z) % _P == 0


def _decode_point(raw: bytes):
    """RFC 8032 5.1.3, strict: None unless ``raw`` is the canonical encoding of a curve point."""
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None                                   # non-canonical y
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x2 = u * pow(v, _P - 2, _P) % _P
    if x2 == 0:
        if sign:
            return None                               # "negative zero": a second spelling of x = 0
        return (0, y, 1, 0)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None                                   # not on the curve
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def key_weakness(raw: bytes) -> str | None:
    """Why a raw 32-byte public key must be refused, or None when it is a sound key."""
    point = _decode_point(raw)
    if point is None:
        return "not the canonical encoding of a point on Ed25519"
    if _is_identity(_mul(8, point)):
        return "a small-order point (anyone could forge this user's signatures)"
    if not _is_identity(_mul(L, point)):
        return "not in the prime-order subgroup (a torsion component)"
    return None


@functools.lru_cache(maxsize=1 << 16)
def _decode_pubkey_cached(pubkey_b64: str) -> Ed25519PublicKey:
    raw = _canonical_b64(pubkey_b64, 32, PUBKEY_B64_CHARS, "pubkey")
    weakness = key_weakness(raw)
    if weakness is not None:
        raise InvalidRecord(f"pubkey: refused weak Ed25519 key: {weakness}")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise InvalidRecord("pubkey: not a 32-byte Ed25519 public key") from None


def decode_pubkey(pubkey_b64) -> Ed25519PublicKey:
    """A usable public key, or InvalidRecord naming why not (encoding, curve, weak point)."""
    if not isinstance(pubkey_b64, str):
        raise InvalidRecord(f"pubkey: expected a base64 string, got {type(pubkey_b64).__name__}")
    return _decode_pubkey_cached(pubkey_b64)


# ---- signatures -------------------------------------------------------------------------

def decode_signature(signature_b64, what: str = "signature") -> bytes:
    """The raw 64 bytes of a canonically encoded signature with S < L; InvalidRecord otherwise."""
    raw = _canonical_b64(signature_b64, 64, SIGNATURE_B64_CHARS, what)
    if int.from_bytes(raw[32:], "little") >= L:
        raise InvalidRecord(f"{what}: scalar S is not below the group order L (a malleated signature)")
    return raw


def _verify(public_key, signature_b64, message: bytes) -> bool:
    try:
        if isinstance(public_key, str):
            public_key = decode_pubkey(public_key)
        public_key.verify(decode_signature(signature_b64), message)
        return True
    except (InvalidSignature, InvalidRecord, ValueError, TypeError, AttributeError):
        return False


def sign_claim(private_key: Ed25519PrivateKey, user_x: str, user_y: str, nonce: str) -> str:
    return base64.b64encode(private_key.sign(claim_bytes(user_x, user_y, nonce))).decode("ascii")


def verify_claim(public_key: Ed25519PublicKey | str, signature_b64: str, user_x: str, user_y: str, nonce: str) -> bool:
    """True when signature_b64 is a valid signature over the claim (never raises on bad input)."""
    try:
        message = claim_bytes(user_x, user_y, nonce)
    except (TypeError, ValueError):
        return False
    return _verify(public_key, signature_b64, message)


# ---- the whole report -------------------------------------------------------------------

def ts_millis(ts: float) -> int:
    return int(round(ts * 1000))


def degrees_e7(value: float) -> int:
    return int(round(value * 1e7))


def signed_lat_lng(report) -> tuple[float, float]:
    """The position as signed: lat/lng quantised to 1e-7 degrees (what follows and checks use)."""
    return degrees_e7(report.lat) / 1e7, degrees_e7(report.lng) / 1e7


def report_bytes(tap_id: str, user_id: str, peer_user_id: str, nonce: str, ts: float, lat: float, lng: float,
                 accuracy_m: int, proof: str, peer_proof: str) -> bytes:
    """The canonical bytes a phone signs for its own report (see the module docstring)."""
    if isinstance(accuracy_m, bool) or not isinstance(accuracy_m, int):
        raise TypeError(f"accuracy_m must be an integer number of metres, got {accuracy_m!r}")
    return json.dumps([REPORT_DOMAIN, tap_id, user_id, peer_user_id, nonce, ts_millis(ts), degrees_e7(lat),
                       degrees_e7(lng), accuracy_m, proof, peer_proof],
                      separators=(",", ":"), ensure_ascii=True).encode("ascii")


def report_bytes_of(report) -> bytes:
    """``report_bytes`` of a parsed report (a ``TapReport`` or anything with its fields)."""
    return report_bytes(report.tap_id, report.user_id, report.peer_user_id, report.nonce, report.ts,
                        report.lat, report.lng, report.accuracy_m, report.proof, report.peer_proof)


def sign_report(private_key: Ed25519PrivateKey, *, tap_id: str, user_id: str, peer_user_id: str, nonce: str,
                ts: float, lat: float, lng: float, accuracy_m: int, proof: str, peer_proof: str) -> str:
    """``report_sig``: the reporter's signature over its whole report."""
    message = report_bytes(tap_id, user_id, peer_user_id, nonce, ts, lat, lng, accuracy_m, proof, peer_proof)
    return base64.b64encode(private_key.sign(message)).decode("ascii")


def sign_report_of(private_key: Ed25519PrivateKey, report) -> str:
    return base64.b64encode(private_key.sign(report_bytes_of(report))).decode("ascii")


def verify_report_signature(public_key: Ed25519PublicKey | str, signature_b64, report) -> bool:
    """True when ``signature_b64`` is the reporter's signature over ``report`` (never raises)."""
    try:
        message = report_bytes_of(report)
    except (TypeError, ValueError, AttributeError):
        return False
    return _verify(public_key, signature_b64, message)

"""The tap proof format: what each phone signs, and how the pipeline checks it.

A touch between phones of users X and Y produces one shared *claim*::

    claim = JSON ["tap-to-follow/v1", min(X, Y), max(X, Y), nonce]
            (UTF-8, no spaces: json.dumps(..., separators=(",", ":")))

Both phones sign the same claim bytes with their own Ed25519 key and swap
signatures over NFC; each phone then reports ``proof`` = its own signature and
``peer_proof`` = the peer's, both base64 (standard alphabet, padded) of the raw
64-byte signature. ``pubkey`` in ``users.jsonl`` is base64 of the raw 32-byte
public key. Ed25519 is deterministic, so in a genuine pair A.proof ==
B.peer_proof and A.peer_proof == B.proof.

The claim names both users, so a report whose ``peer_user_id`` was altered fails
``peer_proof``; it names the nonce, so a signature cannot be moved to another
touch. The *time* is bound through the nonce: ``nonce`` is 32 hex digits, the
first 12 are the touch time in Unix milliseconds (the initiating phone's clock,
big-endian) and the remaining 20 are 80 random bits agreed over the link. A
report whose own ``ts`` is further than the allowed clock skew from its nonce's
time is rejected, so an old signed claim cannot be replayed as a new touch.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.errors import InvalidRecord

CLAIM_DOMAIN = "tap-to-follow/v1"
NONCE_HEX_DIGITS = 32
_NONCE_TIME_DIGITS = 12
_NONCE_RE = re.compile(r"[0-9a-f]{32}")  # used with fullmatch: '$' would accept a trailing newline


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


def new_keypair(seed: bytes | None = None) -> tuple[Ed25519PrivateKey, str]:
    """A private key and its base64 public key (deterministic from a 32-byte seed)."""
    key = Ed25519PrivateKey.from_private_bytes(seed) if seed is not None else Ed25519PrivateKey.generate()
    return key, encode_pubkey(key.public_key())


def encode_pubkey(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    return base64.b64encode(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def decode_pubkey(pubkey_b64: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(pubkey_b64, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidRecord("pubkey: not base64 of a 32-byte Ed25519 public key") from None


def sign_claim(private_key: Ed25519PrivateKey, user_x: str, user_y: str, nonce: str) -> str:
    return base64.b64encode(private_key.sign(claim_bytes(user_x, user_y, nonce))).decode("ascii")


def verify_claim(public_key: Ed25519PublicKey | str, signature_b64: str, user_x: str, user_y: str, nonce: str) -> bool:
    """True when signature_b64 is a valid signature over the claim (never raises on bad input)."""
    try:
        if isinstance(public_key, str):
            public_key = decode_pubkey(public_key)
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, claim_bytes(user_x, user_y, nonce))
        return True
    except (InvalidSignature, InvalidRecord, binascii.Error, ValueError, TypeError):
        return False

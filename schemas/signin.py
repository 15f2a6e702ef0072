"""The sign-in proof: a phone (or a marketer's key) signs the portal's challenge.

The portal issues a single-use, expiring challenge for one account; the holder of that
account's Ed25519 key signs :func:`signin_bytes` and the portal checks it with the same
public key that verifies the account's taps (``users.jsonl``) or the marketer's key file.
The message is domain-separated from tap claims and reports (``SIGNIN_DOMAIN``), so a
signature over a tap can never be replayed as a sign-in, nor the reverse; it names the
role and the account, so a challenge issued to one account signs in no other.

Used by ``nfc_gateway login`` (the phone side) and ``portal.auth`` (the server side).
"""
from __future__ import annotations

import base64

from schemas.errors import InvalidRecord
from schemas.proofs import decode_pubkey, decode_signature

SIGNIN_DOMAIN = "tapfollow-portal-signin/v1"
ROLES = ("subscriber", "marketer")


def signin_bytes(role: str, account: str, challenge: str) -> bytes:
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return "\n".join((SIGNIN_DOMAIN, role, account, challenge)).encode("utf-8")


def sign_signin(private_key, role: str, account: str, challenge: str) -> str:
    """base64 of the Ed25519 signature over the challenge (``private_key``: cryptography's key)."""
    return base64.b64encode(private_key.sign(signin_bytes(role, account, challenge))).decode("ascii")


def verify_signin(pubkey_b64: str, signature_b64: str, role: str, account: str, challenge: str) -> bool:
    """True only for a well-formed signature by that key over exactly this sign-in."""
    from cryptography.exceptions import InvalidSignature
    try:
        public_key = decode_pubkey(pubkey_b64)
        signature = decode_signature(signature_b64)
        public_key.verify(signature, signin_bytes(role, account, challenge))
    except (InvalidRecord, InvalidSignature, ValueError):
        return False
    return True


# ---- registry changes signed by the portal ---------------------------------------------
# A subscriber's settings change (alerts on/off, leave the statistics) is the subscriber's
# claim, authenticated by their signed-in session; the portal, which checked it, signs the
# resulting registry record so the pipeline can tell it from a forged line in the users
# topic or file. The signature covers the canonical JSON of every other field.
REGISTRY_CHANGE_DOMAIN = "tapfollow-registry-change/v1"
CHANGE_SIG_FIELD = "portal_sig"


def registry_change_body(record: dict) -> str:
    """The canonical JSON of every field but the signature: what the portal signs."""
    import json
    body = {k: v for k, v in record.items() if k != CHANGE_SIG_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def registry_change_bytes(record: dict) -> bytes:
    return signed_change_bytes(registry_change_body(record))


def signed_change_bytes(body: str) -> bytes:
    return (REGISTRY_CHANGE_DOMAIN + "\n" + body).encode("utf-8", "surrogatepass")


def sign_registry_change(private_key, record: dict) -> dict:
    signature = base64.b64encode(private_key.sign(registry_change_bytes(record))).decode("ascii")
    return {**record, CHANGE_SIG_FIELD: signature}


def verify_registry_change(portal_pubkey_b64: str, record: dict) -> bool:
    return verify_signed_change(portal_pubkey_b64, registry_change_body(record), record.get(CHANGE_SIG_FIELD))


def verify_signed_change(portal_pubkey_b64: str, body: str, signature_b64) -> bool:
    """Whether the portal's key signed ``body`` (:func:`registry_change_body`) with this signature."""
    from cryptography.exceptions import InvalidSignature
    try:
        decode_pubkey(portal_pubkey_b64).verify(decode_signature(signature_b64), signed_change_bytes(body))
    except (InvalidRecord, InvalidSignature, ValueError, TypeError):
        return False
    return True


def signin_url(portal_base: str, role: str, account: str, challenge: str, private_key) -> str:
    """The sign-in link a phone (or a marketer's tool) prints: the portal's confirmation page
    with the signed challenge."""
    from urllib.parse import urlencode
    query = urlencode({"role": role, "account": account, "challenge": challenge,
                       "sig": sign_signin(private_key, role, account, challenge)})
    return f"{portal_base.rstrip('/')}/auth/signin?{query}"


def challenge_url(portal_base: str, role: str, account: str) -> str:
    from urllib.parse import urlencode
    return f"{portal_base.rstrip('/')}/auth/challenge?{urlencode({'role': role, 'account': account})}"


class SigninUnavailable(Exception):
    """The portal gave no usable challenge (unreachable, refused, or not a challenge)."""


def fetch_signin_link(portal_base: str, role: str, account: str, private_key, timeout_s: float = 10.0) -> str:
    """Ask the portal for a challenge, sign it, and return the sign-in link to open."""
    import json
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(challenge_url(portal_base, role, account), timeout=timeout_s) as reply:
            challenge = json.load(reply)["challenge"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
        raise SigninUnavailable(f"no sign-in challenge from {portal_base}: {exc}") from None
    return signin_url(portal_base, role, account, challenge, private_key)

"""Who is asking: sign-in challenges, session tokens and CSRF tokens, all signed by the portal.

* A **challenge** is issued for one (role, account) and is itself an HMAC-signed token
  naming them and its expiry, so the server keeps no state per issued challenge; what it
  keeps is the set of challenges already *used* (until they expire), which makes each one
  single-use: a replayed sign-in link fails.
* A **session** token (cookie ``tf_session``: HttpOnly, SameSite=Strict, Secure when served
  over https) names the role, the account and the expiry, HMAC-SHA256 signed with the
  portal's secret; any change to it (another user id, a later expiry) breaks the signature.
* A **CSRF** token is the HMAC of the session token under its own label: every form that
  changes state carries it and the server compares it in constant time, so a page of
  another site cannot post on a subscriber's behalf (SameSite=Strict is the second wall).
  The sign-in form, before any session, is bound the same way to a pre-session cookie.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import re
import threading
import time
from typing import Callable, NamedTuple, Optional

from schemas.signin import ROLES, verify_signin

SESSION_COOKIE = "tf_session"
PRESESSION_COOKIE = "tf_pre"
DEFAULT_SESSION_S = 12 * 3600.0
DEFAULT_CHALLENGE_S = 300.0
ACCOUNT_RE = {"subscriber": re.compile(r"[0-9]{1,20}"), "marketer": re.compile(r"[a-z0-9_-]{1,64}")}


class Principal(NamedTuple):
    role: str        # subscriber | marketer
    account: str     # user_id or marketer name
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


class Signer:
    """HMAC-SHA256 tokens ``<label>.<fields…>.<mac>`` under one secret (per label, domain-separated)."""

    def __init__(self, secret: bytes):
        if len(secret) < 32:
            raise ValueError("the portal secret must be at least 32 bytes")
        self._secret = secret

    def mac(self, label: str, payload: str) -> str:
        return _b64(hmac.new(self._secret, f"{label}\n{payload}".encode("utf-8"), hashlib.sha256).digest())

    def sign(self, label: str, *fields: str) -> str:
        for field in fields:
            if "." in field or not field:
                raise ValueError(f"token field {field!r} must be non-empty and contain no '.'")
        payload = ".".join(fields)
        return f"{payload}.{self.mac(label, payload)}"

    def open(self, label: str, token: Optional[str], n_fields: int) -> Optional[list[str]]:
        """The fields of a token this signer made under ``label``, or None (forged, altered, malformed)."""
        if not token or len(token) > 512:
            return None
        parts = token.split(".")
        if len(parts) != n_fields + 1:
            return None
        payload = ".".join(parts[:-1])
        if not hmac.compare_digest(parts[-1], self.mac(label, payload)):
            return None
        return parts[:-1]


class Authority:
    """Issues and checks challenges, sessions and CSRF tokens for both roles."""

    def __init__(self, secret: bytes, subscriber_key: Callable[[str], Optional[str]], marketer_keys: dict[str, str],
                 clock=time.time, session_s: float = DEFAULT_SESSION_S, challenge_s: float = DEFAULT_CHALLENGE_S):
        """``subscriber_key(user_id)``: the user's registered public key (None: unknown user);
        ``marketer_keys``: marketer name -> public key."""
        self.signer = Signer(secret)
        self.lookups = {"subscriber": subscriber_key, "marketer": marketer_keys.get}
        self.clock, self.session_s, self.challenge_s = clock, session_s, challenge_s
        self._used: dict[str, float] = {}      # challenge -> its expiry (kept until then)
        self._lock = threading.Lock()
        self.refusals: dict[str, int] = {}

    def refuse(self, reason: str) -> None:
        with self._lock:
            self.refusals[reason] = self.refusals.get(reason, 0) + 1

    # ---- challenges ------------------------------------------------------------------
    def pubkey(self, role: str, account: str) -> Optional[str]:
        lookup = self.lookups.get(role)
        return lookup(account) if lookup else None

    def challenge(self, role: str, account: str) -> Optional[str]:
        """A fresh challenge for a well-formed account (None: malformed). Issued whether or not
        the account exists, so asking for one tells nobody who is a subscriber."""
        if role not in ROLES or not ACCOUNT_RE[role].fullmatch(account or ""):
            return None
        expires = str(int(self.clock() + self.challenge_s))
        return self.signer.sign("challenge", role, account, expires, secrets.token_hex(16))

    def sign_in(self, role: str, account: str, challenge: str, signature: str) -> tuple[Optional[str], str]:
        """(a session token, "") for a valid, unexpired, unused challenge signed by the account's key;
        else (None, the reason), counted."""
        fields = self.signer.open("challenge", challenge, 4)
        if fields is None or fields[0] != role or fields[1] != account:
            return self._refused("challenge_forged")
        now = self.clock()
        if now > int(fields[2]):
            return self._refused("challenge_expired")
        pubkey = self.pubkey(role, account)
        if not pubkey or not verify_signin(pubkey, signature, role, account, challenge):
            return self._refused("signature_invalid")
        with self._lock:
            for used, until in list(self._used.items()):
                if until < now:
                    del self._used[used]
            if challenge in self._used:
                self.refusals["challenge_replayed"] = self.refusals.get("challenge_replayed", 0) + 1
                return None, "challenge_replayed"
            self._used[challenge] = int(fields[2])
        return self.session(role, account), ""

    def _refused(self, reason: str):
        self.refuse(reason)
        return None, reason

    # ---- sessions and CSRF ---------------------------------------------------------------
    def session(self, role: str, account: str) -> str:
        expires = str(int(self.clock() + self.session_s))
        return self.signer.sign("session", role, account, expires, secrets.token_hex(8))

    def principal(self, token: Optional[str]) -> Optional[Principal]:
        fields = self.signer.open("session", token, 4)
        if fields is None:
            return None
        role, account, expires, _ = fields
        if self.clock() > int(expires) or not self.pubkey(role, account):
            return None
        return Principal(role, account, float(expires))

    def csrf_token(self, bound_to: str) -> str:
        return self.signer.mac("csrf", bound_to)

    def csrf_ok(self, bound_to: Optional[str], token: Optional[str]) -> bool:
        return bool(bound_to and token) and hmac.compare_digest(token, self.csrf_token(bound_to))


def new_presession() -> str:
    return secrets.token_urlsafe(24)

"""The tap handshake two phones run over NFC, as pure state machines.

A touch is three request/response rounds carried as SNEP GET requests on the
LLCP link; the phone in NFC-DEP *Initiator* role asks, the *Target* answers.
Every message is one NDEF record of the project's own MIME types::

    round  initiator -> target                        target -> initiator
    1      hello {user_id, touch_ms, rand}            hello {user_id, rand}
    2      claim {user_id, peer_user_id, nonce, proof} claim {…its own…}
    3      ack   {nonce}                              ack   {nonce}

Round 1 agrees on the nonce of ``schemas.proofs``: the touch time is the
initiator's clock, the 10 random bytes are the initiator's 5 followed by the
target's 5, so each honest phone knows the nonce it signs is fresh even when
the peer is not. Round 2 swaps the signed claims; each side verifies the
peer's signature with the peer's public key before answering or accepting.
Round 3 closes the exchange: the target reports only once the initiator has
acknowledged the target's claim, and the initiator only once that
acknowledgement was answered, so a link that drops (a phone pulled away)
before both claims are across leaves *no* report on either phone. The one
window no protocol can close (the last answer lost in flight) leaves at most
one complete, correctly signed report, which the pipeline never pairs into a
follow on its own.

Anything else -- oversized or malformed NDEF, a foreign MIME type, a claim
that does not verify, a touch time off the local clock, a message out of
order -- raises ``HandshakeError`` with a specific ``reason`` code, and the
state machine refuses every later message. Nothing here touches nfcpy, so the
whole protocol is tested without a radio.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from schemas.proofs import check_nonce, make_nonce, nonce_time, sign_claim, verify_claim
from schemas.errors import InvalidRecord

MIME_HELLO = "application/vnd.tapfollow.hello+json"
MIME_CLAIM = "application/vnd.tapfollow.claim+json"
MIME_ACK = "application/vnd.tapfollow.ack+json"
PROTOCOL_VERSION = 1

# The SNEP service both phones use; "xsn" is NFC Forum's namespace for
# services named by a domain the project controls.
SERVICE_NAME = "urn:nfc:xsn:tapfollow.net:tap"

# A claim record is ~250 bytes; anything larger is refused before decoding so a
# hostile peer cannot make a phone parse megabytes while the link is up.
MAX_NDEF_BYTES = 1024
MAX_PAYLOAD_BYTES = 512
RANDOM_HALF_BYTES = 5
# The pipeline dead-letters a report whose ts is further than this from its nonce
# time (core.follows.FollowParams.max_clock_skew_s); refusing such a touch
# on the phone keeps a doomed report from ever being signed.
DEFAULT_MAX_SKEW_S = 10.0

_USER_ID_RE = re.compile(r"^[0-9]{1,32}$")
_RAND_RE = re.compile(r"^[0-9a-f]{%d}$" % (2 * RANDOM_HALF_BYTES))


class HandshakeError(Exception):
    """A touch that must not produce a report; ``reason`` is a stable code for metrics."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Message:
    mime: str
    body: dict


@dataclass(frozen=True)
class CompletedTouch:
    """Everything a phone needs to write its tap report for one verified touch."""
    user_id: str
    peer_user_id: str
    nonce: str
    seen_at: float          # this phone's clock when the touch began
    proof: str
    peer_proof: str


# ---- NDEF record <-> message ------------------------------------------------------------

def encode_message(mime: str, body: dict) -> tuple[str, bytes]:
    """(record type, payload) for one message; compact JSON, UTF-8."""
    return mime, json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_message(records, expected_mime: str, message_bytes: Optional[int] = None) -> Message:
    """Validate a received NDEF message: exactly one record, our MIME type, small JSON object.

    ``records`` is a list of objects with ``.type`` and ``.data`` (ndeflib records
    or test doubles); ``message_bytes`` is the encoded size when the caller knows it.
    """
    if message_bytes is not None and message_bytes > MAX_NDEF_BYTES:
        raise HandshakeError("ndef_oversized", f"NDEF message of {message_bytes} bytes exceeds {MAX_NDEF_BYTES}")
    if records is None:
        raise HandshakeError("ndef_malformed", "no NDEF message received")
    records = list(records)
    if len(records) != 1:
        raise HandshakeError("ndef_malformed", f"expected exactly one NDEF record, got {len(records)}")
    record = records[0]
    record_type = getattr(record, "type", None)
    if record_type != expected_mime:
        raise HandshakeError("wrong_mime_type", f"expected {expected_mime}, got {str(record_type)[:80]!r}")
    payload = bytes(getattr(record, "data", b"") or b"")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise HandshakeError("ndef_oversized", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise HandshakeError("ndef_malformed", f"payload is not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HandshakeError("ndef_malformed", f"payload is a JSON {type(body).__name__}, not an object")
    if body.get("v") != PROTOCOL_VERSION:
        raise HandshakeError("unsupported_version", f"protocol version {body.get('v')!r}, expected {PROTOCOL_VERSION}")
    return Message(expected_mime, body)


def _field(body: dict, name: str, pattern: re.Pattern, what: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not pattern.match(value):
        raise HandshakeError("ndef_malformed", f"{name}: expected {what}, got {str(value)[:64]!r}")
    return value


def _nonce_field(body: dict) -> str:
    try:
        return check_nonce(body.get("nonce"))
    except InvalidRecord as exc:
        raise HandshakeError("ndef_malformed", str(exc)) from None


# ---- the two roles ----------------------------------------------------------------------

PublicKeyLookup = Callable[[str], Optional[str]]


class _Side:
    def __init__(self, user_id: str, private_key, peer_key: PublicKeyLookup,
                 clock: Callable[[], float] = time.time, max_skew_s: float = DEFAULT_MAX_SKEW_S,
                 random_half: Callable[[], bytes] = lambda: os.urandom(RANDOM_HALF_BYTES)):
        if not _USER_ID_RE.match(user_id):
            raise ValueError(f"user id {user_id!r} is not a Twitter id_str")
        self.user_id = user_id
        self._key = private_key
        self._peer_key = peer_key
        self._clock = clock
        self._max_skew_s = max_skew_s
        self._random_half = random_half
        self.state = "start"
        self.peer_user_id: Optional[str] = None
        self.nonce: Optional[str] = None
        self.seen_at: Optional[float] = None
        self.proof: Optional[str] = None
        self.peer_proof: Optional[str] = None
        self.result: Optional[CompletedTouch] = None

    def _fail(self, error: HandshakeError):
        self.state = "failed"
        raise error

    def _expect(self, state: str, what: str):
        if self.state != state:
            self._fail(HandshakeError("out_of_order", f"{what} in state {self.state!r}"))

    def _check_peer(self, peer_user_id: str) -> str:
        if peer_user_id == self.user_id:
            self._fail(HandshakeError("self_tap", f"peer claims to be this phone's own user {peer_user_id}"))
        pubkey = self._peer_key(peer_user_id)
        if pubkey is None:
            self._fail(HandshakeError("unknown_peer", f"no public key for user {peer_user_id}"))
        return pubkey

    def _verify_peer_claim(self, msg: Message) -> str:
        body = msg.body
        try:
            sender = _field(body, "user_id", _USER_ID_RE, "a user id")
            named_peer = _field(body, "peer_user_id", _USER_ID_RE, "a user id")
            nonce = _nonce_field(body)
            proof = body.get("proof")
            if not isinstance(proof, str) or not 0 < len(proof) <= 128:
                raise HandshakeError("ndef_malformed", "proof: expected a base64 signature")
        except HandshakeError as exc:
            self._fail(exc)
        if (sender, named_peer, nonce) != (self.peer_user_id, self.user_id, self.nonce):
            self._fail(HandshakeError(
                "claim_mismatch",
                f"claim names ({sender}, {named_peer}, {nonce}), expected ({self.peer_user_id}, {self.user_id}, {self.nonce})"))
        if not verify_claim(self._peer_key(sender), proof, sender, named_peer, nonce):
            self._fail(HandshakeError("bad_signature", f"claim of user {sender} does not verify with its public key"))
        return proof

    def _own_claim(self) -> tuple[str, bytes]:
        self.proof = sign_claim(self._key, self.user_id, self.peer_user_id, self.nonce)
        return encode_message(MIME_CLAIM, {
            "v": PROTOCOL_VERSION, "user_id": self.user_id, "peer_user_id": self.peer_user_id,
            "nonce": self.nonce, "proof": self.proof,
        })

    def _complete(self) -> CompletedTouch:
        self.state = "done"
        self.result = CompletedTouch(self.user_id, self.peer_user_id, self.nonce, self.seen_at,
                                     self.proof, self.peer_proof)
        return self.result


class InitiatorHandshake(_Side):
    """The asking side: call the methods in order, sending each request and feeding back the answer."""

    def hello(self) -> tuple[str, bytes]:
        self._expect("start", "hello")
        self.seen_at = self._clock()
        self._touch_ms = int(round(self.seen_at * 1000))
        self._rand = self._random_half()
        self.state = "hello_sent"
        return encode_message(MIME_HELLO, {
            "v": PROTOCOL_VERSION, "user_id": self.user_id, "touch_ms": self._touch_ms, "rand": self._rand.hex(),
        })

    def on_hello(self, msg: Message) -> tuple[str, bytes]:
        """Target's hello -> our signed claim to send."""
        self._expect("hello_sent", "hello answer")
        try:
            peer = _field(msg.body, "user_id", _USER_ID_RE, "a user id")
            rand_t = _field(msg.body, "rand", _RAND_RE, f"{2 * RANDOM_HALF_BYTES} hex digits")
        except HandshakeError as exc:
            self._fail(exc)
        self._check_peer(peer)
        self.peer_user_id = peer
        self.nonce = make_nonce(self._touch_ms / 1000.0, self._rand + bytes.fromhex(rand_t))
        self.state = "claim_sent"
        return self._own_claim()

    def on_claim(self, msg: Message) -> tuple[str, bytes]:
        """Target's claim -> our acknowledgement to send."""
        self._expect("claim_sent", "claim answer")
        self.peer_proof = self._verify_peer_claim(msg)
        self.state = "ack_sent"
        return encode_message(MIME_ACK, {"v": PROTOCOL_VERSION, "nonce": self.nonce})

    def on_ack(self, msg: Message) -> CompletedTouch:
        self._expect("ack_sent", "ack answer")
        if msg.body.get("nonce") != self.nonce:
            self._fail(HandshakeError("claim_mismatch", "ack names another nonce"))
        return self._complete()


class TargetHandshake(_Side):
    """The answering side: ``handle(mime, body)`` for each request, returns the answer."""

    def handle(self, msg: Message) -> tuple[str, bytes]:
        if msg.mime == MIME_HELLO:
            return self._on_hello(msg)
        if msg.mime == MIME_CLAIM:
            return self._on_claim(msg)
        if msg.mime == MIME_ACK:
            return self._on_ack(msg)
        self._fail(HandshakeError("wrong_mime_type", f"unexpected message type {msg.mime!r}"))

    def expected_mime(self) -> Optional[str]:
        return {"start": MIME_HELLO, "hello_sent": MIME_CLAIM, "claim_sent": MIME_ACK}.get(self.state)

    def answer(self, records, message_bytes: Optional[int] = None) -> tuple[str, bytes]:
        """One received NDEF message -> the answer to send (what the SNEP server calls)."""
        expected = self.expected_mime()
        if expected is None:
            raise HandshakeError("out_of_order", f"message after the touch was {self.state}")
        try:
            msg = decode_message(records, expected, message_bytes)
        except HandshakeError as exc:
            self._fail(exc)
        return self.handle(msg)

    def _on_hello(self, msg: Message) -> tuple[str, bytes]:
        self._expect("start", "hello")
        self.seen_at = self._clock()
        try:
            peer = _field(msg.body, "user_id", _USER_ID_RE, "a user id")
            rand_i = _field(msg.body, "rand", _RAND_RE, f"{2 * RANDOM_HALF_BYTES} hex digits")
            touch_ms = msg.body.get("touch_ms")
            if isinstance(touch_ms, bool) or not isinstance(touch_ms, int) or not 0 < touch_ms < 1 << 48:
                raise HandshakeError("ndef_malformed", f"touch_ms: expected a 48-bit integer, got {str(touch_ms)[:32]!r}")
        except HandshakeError as exc:
            self._fail(exc)
        # The nonce carries the initiator's clock; a time far from ours is either a
        # badly set phone or a replayed hello, and the pipeline would reject the
        # reports anyway, so refuse before signing anything.
        skew = abs(touch_ms / 1000.0 - self.seen_at)
        if skew > self._max_skew_s:
            self._fail(HandshakeError("clock_skew", f"peer touch time is {skew:.1f} s off this phone's clock (max {self._max_skew_s:g} s)"))
        self._check_peer(peer)
        self.peer_user_id = peer
        rand_t = self._random_half()
        self.nonce = make_nonce(touch_ms / 1000.0, bytes.fromhex(rand_i) + rand_t)
        self.state = "hello_sent"
        return encode_message(MIME_HELLO, {"v": PROTOCOL_VERSION, "user_id": self.user_id, "rand": rand_t.hex()})

    def _on_claim(self, msg: Message) -> tuple[str, bytes]:
        self._expect("hello_sent", "claim")
        self.peer_proof = self._verify_peer_claim(msg)
        self.state = "claim_sent"
        return self._own_claim()

    def _on_ack(self, msg: Message) -> tuple[str, bytes]:
        self._expect("claim_sent", "ack")
        if msg.body.get("nonce") != self.nonce:
            self._fail(HandshakeError("claim_mismatch", "ack names another nonce"))
        self._complete()
        return encode_message(MIME_ACK, {"v": PROTOCOL_VERSION, "nonce": self.nonce})


def tap_id_for(user_id: str, nonce: str) -> str:
    """One report per phone per touch: the id is derived, so a retried POST is idempotent."""
    return f"{nonce}-{user_id}"


def key_lookup(keys: Mapping[str, str]) -> PublicKeyLookup:
    return keys.get


__all__ = [
    "MIME_HELLO", "MIME_CLAIM", "MIME_ACK", "SERVICE_NAME", "MAX_NDEF_BYTES", "MAX_PAYLOAD_BYTES",
    "HandshakeError", "Message", "CompletedTouch", "InitiatorHandshake", "TargetHandshake",
    "encode_message", "decode_message", "tap_id_for", "key_lookup", "nonce_time",
]

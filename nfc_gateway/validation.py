"""What the gateway accepts as a tap report, as pure functions.

Each refusal is a ``Rejection`` carrying the HTTP status, a stable reason code
(the metric's name) and a sentence for the sender:

====  =======================  ==================================================
415   unsupported_media_type   Content-Type is not ``application/json``
400   malformed_json           body is not UTF-8 JSON, or not a JSON object
400   invalid_report           a contract field is missing or of the wrong shape
422   self_tap                 ``user_id`` == ``peer_user_id``
422   unknown_user             a named user has no key (``--require-known-users``)
422   bad_proof                ``proof`` is not the reporter's signature of the claim
422   bad_peer_proof           ``peer_proof`` is not the peer's signature of the claim
====  =======================  ==================================================

The body limit (413), the flood limit (429) and duplicates (200/409) are
decided by the service, which holds the state they need.
"""
from __future__ import annotations

import hashlib
import json
from typing import Mapping, Optional

from schemas.errors import InvalidRecord
from schemas.parse import decode_json_object, parse_tap
from schemas.proofs import verify_claim
from schemas.records import TapReport

TAP_FIELDS = TapReport._fields


class Rejection(Exception):
    def __init__(self, status: int, reason: str, detail: str):
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


def check_content_type(header: Optional[str]):
    media_type = (header or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise Rejection(415, "unsupported_media_type", f"Content-Type must be application/json, got {header or 'none'!r}")


def parse_report(body: bytes) -> tuple[TapReport, bytes]:
    """The typed report and its canonical JSONL line (contract fields, in contract order)."""
    try:
        obj = decode_json_object(body)
    except InvalidRecord as exc:
        raise Rejection(400, "malformed_json", str(exc)) from None
    try:
        report = parse_tap(obj)
    except InvalidRecord as exc:
        raise Rejection(400, "invalid_report", str(exc)) from None
    canonical = json.dumps({name: obj[name] for name in TAP_FIELDS}, separators=(",", ":"), ensure_ascii=False)
    return report, canonical.encode("utf-8")


def verify_report(report: TapReport, public_keys: Optional[Mapping[str, str]], require_known: bool = False):
    """Signature checks where the keys are known; the pipeline re-checks everything anyway."""
    if report.user_id == report.peer_user_id:
        raise Rejection(422, "self_tap", f"user {report.user_id} reports a touch with itself")
    if public_keys is None:
        return
    own_key = public_keys.get(report.user_id)
    peer_key = public_keys.get(report.peer_user_id)
    if require_known:
        missing = [u for u, k in ((report.user_id, own_key), (report.peer_user_id, peer_key)) if k is None]
        if missing:
            raise Rejection(422, "unknown_user", f"no public key for user(s) {', '.join(missing)}")
    if own_key is not None and not verify_claim(own_key, report.proof, report.user_id, report.peer_user_id, report.nonce):
        raise Rejection(422, "bad_proof", f"proof does not verify with user {report.user_id}'s key")
    if peer_key is not None and not verify_claim(peer_key, report.peer_proof, report.user_id, report.peer_user_id, report.nonce):
        raise Rejection(422, "bad_peer_proof", f"peer_proof does not verify with user {report.peer_user_id}'s key")


def digest(line: bytes) -> bytes:
    """What makes two reports with one tap_id 'the same': their canonical line."""
    return hashlib.blake2b(line, digest_size=16).digest()

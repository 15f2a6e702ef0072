"""What the gateway accepts as a tap report, as pure functions.

Each refusal is a ``Rejection`` carrying the HTTP status, a stable reason code
(the metric's name) and a sentence for the sender:

====  =======================  ==================================================
415   unsupported_media_type   Content-Type is not ``application/json``
400   malformed_json           body is not UTF-8 JSON, or not a JSON object
400   invalid_report           a contract field is missing or of the wrong shape
422   self_tap                 ``user_id`` == ``peer_user_id``
422   unsigned_report          no ``report_sig`` or no ``accuracy_m`` (``schemas.proofs``)
422   unknown_user             a named user is not in the registry (always refused)
422   bad_report_sig           ``report_sig`` is not the reporter's signature of the whole report
422   bad_proof                ``proof`` is not the reporter's signature of the claim
422   bad_peer_proof           ``peer_proof`` is not the peer's signature of the claim
422   future_touch             the nonce's touch time is more than ``MAX_FUTURE_S`` ahead of this clock
====  =======================  ==================================================

The reporter's whole-report signature is checked before anything else is
decided about a report, so only a report its own phone signed can be accepted,
and a report nobody signed never reaches the duplicate bookkeeping where it
could lock the genuine one out. The body limit (413), the flood limit (429)
and duplicates (200/409) are decided by the service, which holds the state
they need.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Mapping, Optional

from schemas.errors import InvalidRecord
from schemas.parse import decode_json_object, parse_tap
from schemas.proofs import nonce_time, report_bytes_of, verify_claim, verify_report_signature
from schemas.records import TapReport

TAP_FIELDS = TapReport._fields
OWN_FIELDS = ("accuracy_m", "report_sig")        # the project's own, beside the contract's
# A touch time may be at most this far ahead of the gateway's clock (phone clocks drift a
# little; the pipeline's FollowParams.max_future_s is the same bound).
MAX_FUTURE_S = 300.0


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
    """The typed report and its canonical JSONL line (contract fields in contract order, then our own)."""
    try:
        obj = decode_json_object(body)
    except InvalidRecord as exc:
        raise Rejection(400, "malformed_json", str(exc)) from None
    try:
        report = parse_tap(obj)
    except InvalidRecord as exc:
        raise Rejection(400, "invalid_report", str(exc)) from None
    fields = {name: obj[name] for name in TAP_FIELDS if name not in OWN_FIELDS}
    fields.update((name, obj[name]) for name in OWN_FIELDS if obj.get(name) is not None)
    canonical = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return report, canonical.encode("utf-8")  # parse_tap refused lone surrogates, so this cannot raise


def verify_report(report: TapReport, public_keys: Optional[Mapping[str, str]], *_compat, now: Optional[float] = None):
    """The reporter's whole-report signature first, then the claim proofs; unknown users always refused.

    ``public_keys`` is the users registry (user_id -> pubkey); ``None`` is an empty
    registry, so nothing is accepted without one. (A third positional argument,
    the old ``require_known`` flag, is accepted and ignored: unknown users are
    always refused.)
    """
    keys = public_keys or {}
    if report.user_id == report.peer_user_id:
        raise Rejection(422, "self_tap", f"user {report.user_id} reports a touch with itself")
    if report.report_sig is None or report.accuracy_m is None:
        missing = " and ".join(name for name in OWN_FIELDS if getattr(report, name) is None)
        raise Rejection(422, "unsigned_report", f"no {missing}: each phone signs its whole report "
                                                "(report_sig over tap_id, users, nonce, ts, position, accuracy, proofs)")
    own_key = keys.get(report.user_id)
    if own_key is None:
        raise Rejection(422, "unknown_user", f"no public key for user {report.user_id}")
    if not verify_report_signature(own_key, report.report_sig, report):
        raise Rejection(422, "bad_report_sig", f"report_sig does not verify with user {report.user_id}'s key "
                                               "over this whole report")
    peer_key = keys.get(report.peer_user_id)
    if peer_key is None:
        raise Rejection(422, "unknown_user", f"no public key for user {report.peer_user_id}")
    if not verify_claim(own_key, report.proof, report.user_id, report.peer_user_id, report.nonce):
        raise Rejection(422, "bad_proof", f"proof does not verify with user {report.user_id}'s key")
    if not verify_claim(peer_key, report.peer_proof, report.user_id, report.peer_user_id, report.nonce):
        raise Rejection(422, "bad_peer_proof", f"peer_proof does not verify with user {report.peer_user_id}'s key")
    ahead = nonce_time(report.nonce) - (time.time() if now is None else now)
    if ahead > MAX_FUTURE_S:
        raise Rejection(422, "future_touch", f"the touch time is {ahead:.0f} s ahead of the gateway's clock "
                                             f"(at most {MAX_FUTURE_S:g} s)")


def digest(line: bytes) -> bytes:
    """What makes two reports with one tap_id 'the same': what their reporter signed.

    Two spellings of one signed report (``ts`` with more digits, a float's last
    bits below the signed 1e-7 degrees) are the same report: a copy re-spelt and
    filed first by someone else makes the genuine report a duplicate (200), never
    a conflict (409). A line that is not a signed report is compared as bytes.
    """
    try:
        report = parse_tap(decode_json_object(line))
        if report.report_sig is not None and report.accuracy_m is not None:
            signed = report_bytes_of(report) + b"\n" + report.report_sig.encode("ascii", "replace")
            return hashlib.blake2b(signed, digest_size=16, person=b"tap-report/v1").digest()
    except (InvalidRecord, TypeError, ValueError):
        pass
    return hashlib.blake2b(line, digest_size=16).digest()

"""The rules that turn NFC tap reports into mutual follows, as pure functions.

No engine here: ``core.follows`` composes these rules into the follow step's
processors, which ``transforms.follows.ResolveMutualFollows`` hosts in Beam, and
``core.follows.resolve_reports`` runs on a plain list (the reference the Beam
tests and the benchmark compare against).

A touch is identified by its nonce (``schemas.proofs``: 48-bit touch time ||
80 random bits). The rules, in the order they are applied:

1. ``check_report`` (one report, no crypto): reporter and peer must be known
   users with usable keys, not the same user; the report must carry its
   reporter's whole-report signature (``report_sig``) and its position's
   accuracy; its ``ts`` must be within ``max_clock_skew_s`` of the touch time
   signed into the nonce, and that touch time at most ``max_future_s`` ahead of
   the run's clock (the worker's wall clock: no genuine touch lies in the
   future, in batch or streaming); its accuracy at most ``max_accuracy_m`` and
   its signed position inside the service area.
2. ``judge_touch`` (all reports of one nonce that have arrived so far, plus the
   nonce's ``NonceMemory``): each report's ``report_sig`` must verify under the
   reporter's key over the whole report (``schemas.proofs.report_bytes``), then
   its ``proof`` under the reporter's key and its ``peer_proof`` under the
   peer's key, over the shared claim. Only then is it compared with what was
   seen: a (``user_id``, ``tap_id``) already received is a duplicate -- so a
   report nobody signed, or one signed by someone else under a victim's
   ``tap_id``, can never shadow the victim's genuine report. A touch is
   confirmed by one report X->Y and one report Y->X whose ``ts`` differ by at
   most ``max_clock_skew_s`` and whose signed positions are at most
   ``max_pair_distance_m`` plus both accuracies apart. A nonce confirms at most
   one follow, ever: every other valid report of a confirmed nonce is a
   replay. Valid reports without a partner wait (``NonceMemory.pending``)
   until ``expire_touch``.
3. ``expire_touch`` (at touch time + ``pending_expiry_s``): the waiting reports
   become unmatched; the memory keeps only which tap ids were seen and that the
   touch expired, so a partner arriving later cannot match.
4. ``keep_first_follow`` (all confirmed touches of one user pair): the pair's
   earliest touch is the follow; later touches of an already-followed pair are
   repeats, counted, never a second edge.

Every decision is independent of the order the reports arrive in within one
call: inputs are put in a canonical order first, and choices between
candidates use explicit tie-breaks (earliest ``ts``, then ``tap_id``).
Claim signatures shared by both reports of a genuine pair (Ed25519 is
deterministic, so A's ``proof`` is B's ``peer_proof``) are verified once, so a
report costs two Ed25519 checks (its ``report_sig`` and one claim signature),
not three.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from cryptography.exceptions import InvalidSignature

from core.geo import distance_m
from schemas.errors import InvalidRecord
from schemas.proofs import (claim_bytes, decode_pubkey, decode_signature, nonce_time, report_bytes_of,
                            signed_lat_lng)
from schemas.service_area import contains as in_service_area
from schemas.records import Follow, TapReport
from schemas.touch import follow_for_touch

# Counter names (``Metrics.counter('tapfollow', kind)``), one per way a report can end.
TAPS_UNKNOWN_USER = "taps_unknown_user"
TAPS_UNKNOWN_PEER = "taps_unknown_peer"
TAPS_SELF = "taps_self_tap"
TAPS_CLOCK_SKEW = "taps_clock_skew"
TAPS_BAD_NONCE = "taps_bad_nonce"
TAPS_BAD_PROOF = "taps_bad_proof"
TAPS_BAD_PEER_PROOF = "taps_bad_peer_proof"
TAPS_DUPLICATE = "taps_duplicate"
TAPS_REPLAYED = "taps_replayed"
TAPS_UNMATCHED = "taps_unmatched"
TAPS_LATE = "taps_late"
TAPS_UNSIGNED = "taps_unsigned_report"
TAPS_BAD_REPORT_SIG = "taps_bad_report_sig"
TAPS_FUTURE = "taps_future_touch"
TAPS_BAD_POSITION = "taps_bad_position"
TAPS_OUTSIDE_AREA = "taps_outside_service_area"
TAPS_TOO_FAR = "taps_too_far_apart"

# Defaults of the rules (``core.follows.FollowParams`` mirrors them).
DEFAULT_MAX_FUTURE_S = 300.0
DEFAULT_MAX_ACCURACY_M = 100.0
DEFAULT_MAX_PAIR_DISTANCE_M = 50.0


class Rejection(NamedTuple):
    """A report that cannot confirm a follow: ``kind`` is its counter, ``reason`` its dead-letter error."""
    report: TapReport
    kind: str
    reason: str


class CheckedTap(NamedTuple):
    """A report that passed the key-free checks, with both users' registered public keys."""
    report: TapReport
    reporter_key: str            # base64 Ed25519 public key of report.user_id
    peer_key: str                # base64 Ed25519 public key of report.peer_user_id


class NonceMemory(NamedTuple):
    """What is remembered about one nonce between arrivals (small: ids and flags, plus waiting reports)."""
    seen_tap_ids: frozenset = frozenset()          # (user_id, tap_id) of every verified report
    pending: Tuple[CheckedTap, ...] = ()           # valid reports still waiting for a partner
    confirmed: Optional[Tuple[str, str]] = None     # (user_a, user_b) once the nonce confirmed a touch
    expired: bool = False                           # the pending expiry has passed without confirmation


EMPTY_MEMORY = NonceMemory()


class Verdict(NamedTuple):
    memory: NonceMemory
    follows: List[Follow]
    rejections: List[Rejection]
    expire_at: Optional[float]   # event time at which expire_touch must run; None when nothing waits


# ---- 1. one report, no crypto -------------------------------------------------------------

def check_report(report: TapReport, pubkeys: Mapping[str, str], max_clock_skew_s: float,
                 keys_ok: Optional[Dict[str, Optional[str]]] = None, *, now: Optional[float] = None,
                 max_future_s: float = DEFAULT_MAX_FUTURE_S, max_accuracy_m: float = DEFAULT_MAX_ACCURACY_M):
    """A ``CheckedTap`` when the report may go on to pairing, else a ``Rejection``.

    ``keys_ok`` is an optional cache (pubkey -> None or why it is refused) the caller keeps across calls;
    ``now`` is the run's clock (default: this worker's wall clock).
    """
    reporter_key = pubkeys.get(report.user_id)
    if reporter_key is None:
        return Rejection(report, TAPS_UNKNOWN_USER, f"unknown user: user_id {report.user_id!r} is not in users")
    if report.user_id == report.peer_user_id:
        return Rejection(report, TAPS_SELF, f"self-tap: user_id and peer_user_id are both {report.user_id!r}")
    peer_key = pubkeys.get(report.peer_user_id)
    if peer_key is None:
        return Rejection(report, TAPS_UNKNOWN_PEER,
                         f"unknown peer: peer_user_id {report.peer_user_id!r} is not in users")
    for who, key in ((report.user_id, reporter_key), (report.peer_user_id, peer_key)):
        problem = _key_problem(key, keys_ok)
        if problem is not None:
            kind = TAPS_BAD_PROOF if who == report.user_id else TAPS_BAD_PEER_PROOF
            return Rejection(report, kind, f"unusable key: the registered pubkey of user {who!r} is refused "
                                           f"({problem})")
    try:
        touch_time = nonce_time(report.nonce)
    except InvalidRecord as exc:
        return Rejection(report, TAPS_BAD_NONCE, str(exc))
    if report.report_sig is None:
        return Rejection(report, TAPS_UNSIGNED,
                         "unsigned report: no report_sig (the reporter's signature over the whole report, "
                         "schemas.proofs); the claim signatures alone do not show which phone filed it")
    if report.accuracy_m is None:
        return Rejection(report, TAPS_UNSIGNED,
                         "unsigned report: no accuracy_m (the signed accuracy of the reporter's position)")
    off = report.ts - touch_time
    if abs(off) > max_clock_skew_s:
        return Rejection(report, TAPS_CLOCK_SKEW,
                         f"clock skew: ts is {off:+.3f} s from the touch time signed into the nonce "
                         f"(max_clock_skew_s={max_clock_skew_s:g})")
    clock = time.time() if now is None else now
    if touch_time > clock + max_future_s:
        return Rejection(report, TAPS_FUTURE,
                         f"future touch: the nonce's touch time is {touch_time - clock:.0f} s ahead of the "
                         f"run's clock (max_future_s={max_future_s:g})")
    if report.accuracy_m > max_accuracy_m:
        return Rejection(report, TAPS_BAD_POSITION,
                         f"bad position: accuracy_m={report.accuracy_m} exceeds max_accuracy_m={max_accuracy_m:g}")
    lat, lng = signed_lat_lng(report)
    if not in_service_area(lat, lng):
        return Rejection(report, TAPS_OUTSIDE_AREA,
                         f"outside the service area: ({lat:.7f}, {lng:.7f}) is not in Tokyo's 23 wards")
    return CheckedTap(report, reporter_key, peer_key)


def _key_problem(key: str, cache: Optional[Dict[str, Optional[str]]]) -> Optional[str]:
    """None for a usable key, else why it is refused (``schemas.proofs.decode_pubkey``)."""
    if cache is not None and key in cache:
        return cache[key]
    try:
        decode_pubkey(key)
        problem = None
    except InvalidRecord as exc:
        problem = str(exc)
    if cache is not None:
        if len(cache) > 1_000_000:
            cache.clear()
        cache[key] = problem
    return problem


# ---- 2. all reports of one nonce ----------------------------------------------------------

class Verifier:
    """Ed25519 verification that decodes each key once and checks each (key, signature, message) once.

    In a genuine pair the same two claim signatures appear in both reports, so one
    ``Verifier`` per nonce group does one claim verification per report, not two
    (plus the report's own ``report_sig``). Signatures must be canonically
    encoded with S < L (``schemas.proofs.decode_signature``).
    """

    def __init__(self, key_cache: Optional[dict] = None):
        self._keys = key_cache if key_cache is not None else {}
        self._results: Dict[tuple, bool] = {}
        self.verifications = 0   # actual signature checks done (for tests and the benchmark)

    def verify(self, key_b64: str, signature_b64: str, user_x: str, user_y: str, nonce: str) -> bool:
        memo = (key_b64, signature_b64, *sorted((user_x, user_y)), nonce)
        result = self._results.get(memo)
        if result is None:
            result = self._check(key_b64, signature_b64, claim_bytes(user_x, user_y, nonce))
            self._results[memo] = result
        return result

    def verify_report(self, key_b64: str, report: TapReport) -> bool:
        """The reporter's ``report_sig`` over the whole report."""
        try:
            message = report_bytes_of(report)
        except (TypeError, ValueError):
            return False
        memo = (key_b64, report.report_sig, message)
        result = self._results.get(memo)
        if result is None:
            result = self._check(key_b64, report.report_sig, message)
            self._results[memo] = result
        return result

    def _check(self, key_b64: str, signature_b64: str, message: bytes) -> bool:
        key = self._keys.get(key_b64)
        if key is None:
            try:
                key = decode_pubkey(key_b64)
            except InvalidRecord:
                return False
            if len(self._keys) > 1_000_000:
                self._keys.clear()
            self._keys[key_b64] = key
        try:
            signature = decode_signature(signature_b64)
        except InvalidRecord:
            return False
        self.verifications += 1
        try:
            key.verify(signature, message)
            return True
        except (InvalidSignature, ValueError, TypeError):
            return False


def _arrival_order(tap: CheckedTap):
    r = tap.report
    return (r.tap_id, r.user_id, r.ts, r.peer_user_id, r.lat, r.lng, r.proof, r.peer_proof, r.nonce,
            r.accuracy_m if r.accuracy_m is not None else -1, r.report_sig or "")


def _pair_order(tap: CheckedTap):
    return (tap.report.ts, tap.report.tap_id)


def judge_touch(memory: NonceMemory, arrivals: Iterable[CheckedTap], *, max_clock_skew_s: float,
                pending_expiry_s: float, verifier: Optional[Verifier] = None,
                max_pair_distance_m: float = DEFAULT_MAX_PAIR_DISTANCE_M) -> Verdict:
    """Add newly arrived reports of one nonce to its memory and decide what can be decided now."""
    verifier = verifier or Verifier()
    rejections: List[Rejection] = []
    seen = set(memory.seen_tap_ids)
    valid: List[CheckedTap] = []
    # Signatures first: only a report its own reporter signed may occupy a (user_id, tap_id).
    for tap in sorted(arrivals, key=_arrival_order):
        r = tap.report
        if not verifier.verify_report(tap.reporter_key, r):
            rejections.append(Rejection(r, TAPS_BAD_REPORT_SIG,
                                        f"bad report_sig: not a signature by user {r.user_id!r} over this "
                                        "whole report (tap_id, users, nonce, ts, position, accuracy, proofs)"))
        elif not verifier.verify(tap.reporter_key, r.proof, r.user_id, r.peer_user_id, r.nonce):
            rejections.append(Rejection(r, TAPS_BAD_PROOF,
                                        f"bad proof: not a signature by user {r.user_id!r} over the claim "
                                        f"({r.user_id!r}, {r.peer_user_id!r}, nonce)"))
        elif not verifier.verify(tap.peer_key, r.peer_proof, r.user_id, r.peer_user_id, r.nonce):
            rejections.append(Rejection(r, TAPS_BAD_PEER_PROOF,
                                        f"bad peer_proof: not a signature by peer_user_id {r.peer_user_id!r} "
                                        "over the claim (forged, or peer_user_id altered)"))
        elif (r.user_id, r.tap_id) in seen:
            rejections.append(Rejection(r, TAPS_DUPLICATE,
                                        f"duplicate: user {r.user_id!r} already filed tap_id {r.tap_id!r} "
                                        "for this nonce"))
        else:
            seen.add((r.user_id, r.tap_id))
            valid.append(tap)

    seen_ids = frozenset(seen)
    if memory.confirmed is not None:
        rejections.extend(_replayed(tap, memory.confirmed) for tap in valid)
        return Verdict(memory._replace(seen_tap_ids=seen_ids), [], rejections, None)
    if memory.expired:
        rejections.extend(Rejection(tap.report, TAPS_LATE,
                                    "unmatched: arrived after its touch expired "
                                    f"(pending_expiry_s={pending_expiry_s:g} after the nonce's touch time)")
                          for tap in valid)
        return Verdict(memory._replace(seen_tap_ids=seen_ids), [], rejections, None)

    candidates = list(memory.pending) + valid
    pair = _choose_pair(candidates, max_clock_skew_s, max_pair_distance_m)
    if pair is not None:
        x, y = pair
        follow = follow_for_touch(x.report, y.report)
        users = (follow.user_a, follow.user_b)
        rejections.extend(_replayed(tap, users) for tap in candidates if tap is not x and tap is not y)
        return Verdict(NonceMemory(seen_ids, (), users, False), [follow], rejections, None)
    pending = tuple(sorted(candidates, key=_arrival_order))
    expire_at = nonce_time(pending[0].report.nonce) + pending_expiry_s if pending else None
    return Verdict(NonceMemory(seen_ids, pending, None, False), [], rejections, expire_at)


def _replayed(tap: CheckedTap, users: Tuple[str, str]) -> Rejection:
    return Rejection(tap.report, TAPS_REPLAYED,
                     f"replayed: this nonce already confirmed the touch between {users[0]!r} and {users[1]!r}")


def pair_distance(x: TapReport, y: TapReport) -> tuple[float, float]:
    """(distance between the two signed positions, what the rule allows before adding the bound)."""
    (lat_x, lng_x), (lat_y, lng_y) = signed_lat_lng(x), signed_lat_lng(y)
    return distance_m(lat_x, lng_x, lat_y, lng_y), float((x.accuracy_m or 0) + (y.accuracy_m or 0))


def _close_enough(x: TapReport, y: TapReport, max_pair_distance_m: float) -> bool:
    apart, slack = pair_distance(x, y)
    return apart <= max_pair_distance_m + slack


def _choose_pair(candidates: List[CheckedTap], max_clock_skew_s: float,
                 max_pair_distance_m: float = DEFAULT_MAX_PAIR_DISTANCE_M):
    """The confirming (X->Y, Y->X) pair, or None; ties broken by users, then earliest ts, then tap_id.

    A pair confirms only when its reports' ts are within the skew of each other and
    their signed positions within ``max_pair_distance_m`` plus both accuracies.
    """
    by_direction: Dict[Tuple[str, str], List[CheckedTap]] = defaultdict(list)
    for tap in candidates:
        by_direction[(tap.report.user_id, tap.report.peer_user_id)].append(tap)
    best = None
    for (x_user, y_user), xs in sorted(by_direction.items()):
        if x_user > y_user or (y_user, x_user) not in by_direction:
            continue
        xs = sorted(xs, key=_pair_order)
        ys = sorted(by_direction[(y_user, x_user)], key=_pair_order)
        for x in xs:
            # the earliest Y->X report within the skew and the distance of x
            for y in ys:
                if (abs(y.report.ts - x.report.ts) <= max_clock_skew_s
                        and _close_enough(x.report, y.report, max_pair_distance_m)):
                    best = (x, y)
                    break
            if best is not None:
                break
        if best is not None:
            return best
    return None


# ---- 3. the pending expiry ----------------------------------------------------------------

def expire_touch(memory: NonceMemory, *, max_clock_skew_s: float, pending_expiry_s: float,
                 max_pair_distance_m: float = DEFAULT_MAX_PAIR_DISTANCE_M) -> Verdict:
    """The waiting reports become unmatched; afterwards nothing waits and no expiry is due."""
    rejections = []
    directions = {}
    for t in sorted(memory.pending, key=_pair_order):
        directions.setdefault((t.report.user_id, t.report.peer_user_id), t)
    for tap in memory.pending:
        r = tap.report
        partner = directions.get((r.peer_user_id, r.user_id))
        if partner is not None and abs(partner.report.ts - r.ts) <= max_clock_skew_s:
            apart, slack = pair_distance(r, partner.report)
            rejections.append(Rejection(r, TAPS_TOO_FAR,
                                        f"too far apart: the partner report {partner.report.tap_id!r} was signed "
                                        f"{apart:.0f} m from this one (max_pair_distance_m={max_pair_distance_m:g} "
                                        f"plus accuracies {slack:g} m)"))
        elif partner is not None:
            rejections.append(Rejection(r, TAPS_CLOCK_SKEW,
                                        f"clock skew: the partner report {partner.report.tap_id!r} has ts "
                                        f"{partner.report.ts - r.ts:+.3f} s from this one "
                                        f"(max_clock_skew_s={max_clock_skew_s:g})"))
        else:
            rejections.append(Rejection(r, TAPS_UNMATCHED,
                                        "unmatched: no partner report within "
                                        f"pending_expiry_s={pending_expiry_s:g} of the touch time"))
    return Verdict(NonceMemory(memory.seen_tap_ids, (), memory.confirmed, memory.confirmed is None),
                   [], rejections, None)


# ---- 4. one edge per user pair ------------------------------------------------------------

def follow_order(follow: Follow):
    return (follow.established_at, follow.nonce, follow.h3_cell)


def keep_first_follow(edge: Optional[Follow], candidates: Iterable[Follow]):
    """(edge, newly emitted follow or None, repeats) for one user pair: the earliest touch is the edge."""
    ordered = sorted(candidates, key=follow_order)
    if edge is None and ordered:
        return ordered[0], ordered[0], ordered[1:]
    return edge, None, ordered

"""The mutual-follow rules (core.pairing) on small hand-made touches, no runner.

Also the small world builder the Beam tests (tests/test_follows.py) share.
"""
from __future__ import annotations

import random

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.proofs import make_nonce, new_keypair, nonce_time, sign_claim, sign_report_of
from schemas.records import Follow, TapReport
from schemas.touch import follow_for_touch
from core import pairing
from core.follows import resolve_reports
from core.pairing import (EMPTY_MEMORY, CheckedTap, NonceMemory, Rejection, Verifier, check_report,
                          expire_touch, judge_touch, keep_first_follow)

# ---- a small world: users with deterministic keys, and genuine touches --------------------

USER_IDS = [str(1000 + i) for i in range(1, 10)]
PRIVATE = {}
PUBKEYS = {}
for _i, _uid in enumerate(USER_IDS, start=1):
    PRIVATE[_uid], PUBKEYS[_uid] = new_keypair(seed=bytes([_i]) * 32)
A, B, C, D = USER_IDS[:4]
T0 = 1_700_000_000.0
VENUE = (35.6812, 139.7671)   # Tokyo station: inside the service area
SKEW, EXPIRY = 10.0, 600.0


def nonce_at(t: float, r: int) -> str:
    return make_nonce(t, r.to_bytes(10, "big"))


def report(tap_id, user, peer, nonce, ts, where=VENUE, proof=None, peer_proof=None, accuracy=10):
    """One phone's report; proofs signed by the real users unless given, the whole report by its reporter."""
    if proof is None:
        proof = sign_claim(PRIVATE[user], user, peer, nonce)
    if peer_proof is None:
        peer_proof = sign_claim(PRIVATE[peer], user, peer, nonce)
    return signed(TapReport(tap_id, user, peer, nonce, ts, where[0], where[1], proof, peer_proof, accuracy))


def signed(r: TapReport, by=None) -> TapReport:
    """``r`` with a fresh report_sig by ``by`` (default: its own reporter, as a phone that lies would)."""
    return r._replace(report_sig=sign_report_of(PRIVATE[by or r.user_id], r))


def touch(x, y, t, r, dx=0.0, dy=0.0, where=VENUE, ids=None):
    """Both reports of one genuine touch at time t (phone clocks off by dx, dy)."""
    nonce = nonce_at(t, r)
    ids = ids or (f"{r}-{x}", f"{r}-{y}")
    other = (where[0] + 0.0001, where[1] - 0.0001)
    return report(ids[0], x, y, nonce, t + dx, where), report(ids[1], y, x, nonce, t + dy, other)


def resolve(reports):
    return resolve_reports(reports, PUBKEYS, max_clock_skew_s=SKEW, pending_expiry_s=EXPIRY)


def kinds(resolution):
    return sorted((r.report.tap_id, r.kind) for r in resolution.rejections)


def judge(memory, arrivals, verifier=None):
    checked = [check_report(r, PUBKEYS, SKEW) for r in arrivals]
    assert all(isinstance(c, CheckedTap) for c in checked), checked
    return judge_touch(memory, checked, max_clock_skew_s=SKEW, pending_expiry_s=EXPIRY, verifier=verifier)


# ---- a touch is confirmed by both reports ------------------------------------------------

def test_genuine_pair_gives_exactly_its_follow():
    x, y = touch(A, B, T0, 1, dx=0.4, dy=-0.3)
    result = resolve([x, y])
    assert result.follows == [follow_for_touch(x, y)]
    assert result.follows[0] == Follow(A, B, T0, x.nonce, result.follows[0].h3_cell)
    assert result.rejections == [] and result.repeats == []


def test_follow_records_an_h3_cell_of_the_midpoint_never_coordinates():
    x, y = touch(A, B, T0, 1)
    (follow,) = resolve([y, x]).follows
    mid = ((x.lat + y.lat) / 2, (x.lng + y.lng) / 2)
    assert follow.h3_cell == h3.latlng_to_cell(*mid, 9)
    assert h3.get_resolution(follow.h3_cell) == 9
    assert set(Follow._fields) == {"user_a", "user_b", "established_at", "nonce", "h3_cell"}


def test_one_sided_report_is_unmatched():
    x, _ = touch(A, B, T0, 1)
    result = resolve([x])
    assert result.follows == []
    assert [(r.kind, r.reason) for r in result.rejections] == [
        ("taps_unmatched", "unmatched: no partner report within pending_expiry_s=600 of the touch time")]


def test_reports_with_different_nonces_do_not_pair():
    x, _ = touch(A, B, T0, 1)
    _, y = touch(A, B, T0, 2)
    assert resolve([x, y]).follows == []
    assert kinds(resolve([x, y])) == sorted([(x.tap_id, "taps_unmatched"), (y.tap_id, "taps_unmatched")])


def test_a_reports_b_but_b_reports_c_is_not_mutual():
    nonce = nonce_at(T0, 3)
    ab = report("ab", A, B, nonce, T0)
    bc = report("bc", B, C, nonce, T0)
    result = resolve([ab, bc])
    assert result.follows == []
    assert kinds(result) == [("ab", "taps_unmatched"), ("bc", "taps_unmatched")]


# ---- forged and altered reports --------------------------------------------------------

def test_proof_signed_with_the_wrong_key_is_rejected():
    x, y = touch(A, B, T0, 1)
    # A's phone itself lies (it signs its report): the claim proof is still checked
    forged = signed(x._replace(proof=sign_claim(PRIVATE[C], A, B, x.nonce)))
    result = resolve([forged, y])
    assert result.follows == []
    assert kinds(result) == sorted([(x.tap_id, "taps_bad_proof"), (y.tap_id, "taps_unmatched")])
    assert result.rejections[0].reason.startswith("bad proof: not a signature by user '1001'")


def assert_no_follow_and_rejected(reports, tap_id: str, kind: str):
    result = resolve(reports)
    assert result.follows == []
    assert (tap_id, kind) in kinds(result)


def test_peer_proof_that_the_peer_never_signed_is_rejected():
    x, y = touch(A, B, T0, 1)
    # A made up B's consent: signs the claim itself and presents it as B's
    forged = signed(x._replace(peer_proof=sign_claim(PRIVATE[A], A, B, x.nonce)))
    assert_no_follow_and_rejected([forged, y], x.tap_id, "taps_bad_peer_proof")


def test_altered_peer_user_id_fails_the_proofs():
    x, y = touch(A, B, T0, 1)
    # the same signatures, but the report now claims A touched C
    altered = x._replace(peer_user_id=C)
    assert kinds(resolve([altered, y])) == sorted([(x.tap_id, "taps_bad_report_sig"), (y.tap_id, "taps_unmatched")])
    assert kinds(resolve([signed(altered), y])) == sorted([(x.tap_id, "taps_bad_proof"), (y.tap_id, "taps_unmatched")])
    # an attacker holding A's key re-signs its own proof: B's signature still does not cover C
    resigned = signed(altered._replace(proof=sign_claim(PRIVATE[A], A, C, x.nonce)))
    assert_no_follow_and_rejected([resigned, y], x.tap_id, "taps_bad_peer_proof")


def test_signature_bound_to_another_nonce_is_rejected():
    x, y = touch(A, B, T0, 1)
    moved_nonce = nonce_at(T0, 99)
    assert kinds(resolve([x._replace(nonce=moved_nonce), y._replace(nonce=moved_nonce)])) == sorted(
        [(x.tap_id, "taps_bad_report_sig"), (y.tap_id, "taps_bad_report_sig")])
    assert kinds(resolve([signed(x._replace(nonce=moved_nonce)), signed(y._replace(nonce=moved_nonce))])) == sorted(
        [(x.tap_id, "taps_bad_proof"), (y.tap_id, "taps_bad_proof")])


def test_garbage_signature_is_rejected_not_raised():
    x, y = touch(A, B, T0, 1)
    assert (x.tap_id, "taps_bad_proof") in kinds(resolve([signed(x._replace(proof="not base64!")), y]))
    assert (x.tap_id, "taps_bad_peer_proof") in kinds(resolve([signed(x._replace(peer_proof="AAAA")), y]))
    assert (x.tap_id, "taps_bad_report_sig") in kinds(resolve([x._replace(report_sig="not base64!"), y]))


def test_self_tap_and_unknown_users():
    nonce = nonce_at(T0, 5)
    self_tap = report("self", A, A, nonce, T0)
    ghost = TapReport("ghost", "999", A, nonce, T0, *VENUE, "x", "y")
    to_ghost = TapReport("to-ghost", A, "999", nonce, T0, *VENUE, "x", "y")
    result = resolve([self_tap, ghost, to_ghost])
    assert result.follows == []
    assert [(r.report.tap_id, r.kind, r.reason) for r in result.rejections] == [
        ("ghost", "taps_unknown_user", "unknown user: user_id '999' is not in users"),
        ("self", "taps_self_tap", "self-tap: user_id and peer_user_id are both '1001'"),
        ("to-ghost", "taps_unknown_peer", "unknown peer: peer_user_id '999' is not in users"),
    ]


def test_unusable_registered_key_is_rejected():
    x, y = touch(A, B, T0, 1)
    keys = dict(PUBKEYS, **{B: "not-a-key"})
    result = resolve_reports([x, y], keys)
    assert result.follows == []
    assert {r.kind for r in result.rejections} == {"taps_bad_proof", "taps_bad_peer_proof"}
    assert all("unusable key" in r.reason for r in result.rejections)


# ---- clock skew ----------------------------------------------------------------------------

def test_skew_to_the_nonce_time_up_to_the_bound_is_accepted():
    x, y = touch(A, B, T0, 1, dx=+SKEW, dy=+SKEW)
    assert resolve([x, y]).follows == [follow_for_touch(x, y)]


def test_skew_to_the_nonce_time_beyond_the_bound_is_rejected():
    x, y = touch(A, B, T0, 1, dx=SKEW + 0.5)
    result = resolve([x, y])
    assert result.follows == []
    assert kinds(result) == sorted([(x.tap_id, "taps_clock_skew"), (y.tap_id, "taps_unmatched")])
    assert "ts is +10.500 s from the touch time" in result.rejections[0].reason


def test_skew_between_the_two_reports_beyond_the_bound_is_rejected():
    x, y = touch(A, B, T0, 1, dx=-6.0, dy=+6.0)   # each within 10 s of the nonce, 12 s apart
    result = resolve([x, y])
    assert result.follows == []
    assert kinds(result) == sorted([(x.tap_id, "taps_clock_skew"), (y.tap_id, "taps_clock_skew")])
    assert "partner report" in result.rejections[0].reason
    x, y = touch(A, B, T0, 2, dx=-5.0, dy=+5.0)   # exactly at the bound
    assert len(resolve([x, y]).follows) == 1


# ---- a nonce confirms at most one follow; duplicates are harmless ---------------------

def test_duplicate_delivery_of_a_report_is_used_once():
    x, y = touch(A, B, T0, 1)
    result = resolve([x, y, x, x, y])
    assert result.follows == [follow_for_touch(x, y)]
    assert kinds(result) == sorted([(x.tap_id, "taps_duplicate")] * 2 + [(y.tap_id, "taps_duplicate")])


def test_replayed_pair_with_new_tap_ids_creates_nothing():
    x, y = touch(A, B, T0, 1)
    # the tap_id is signed: a replay under a new one fails the report signature ...
    assert kinds(resolve([x, y, x._replace(tap_id="replay-x")])) == [("replay-x", "taps_bad_report_sig")]
    # ... and the phones themselves re-filing the touch under new tap_ids get a spent nonce
    x2, y2 = signed(x._replace(tap_id="replay-x")), signed(y._replace(tap_id="replay-y"))
    result = resolve([x, y, x2, y2])
    assert result.follows == [follow_for_touch(x, y)]
    assert kinds(result) == [("replay-x", "taps_replayed"), ("replay-y", "taps_replayed")]
    assert result.rejections[0].reason == "replayed: this nonce already confirmed the touch between '1001' and '1002'"


def test_third_report_with_the_same_nonce_is_a_replay():
    x, y = touch(A, B, T0, 1)
    # C even holds a valid signature of A over (A, C, nonce): the nonce is spent anyway
    third = report("third", C, A, x.nonce, T0)
    back = report("back", A, C, x.nonce, T0)
    result = resolve([x, y, third, back])
    assert result.follows == [follow_for_touch(x, y)]
    assert kinds(result) == [("back", "taps_replayed"), ("third", "taps_replayed")]


def test_same_pair_resent_a_day_later_is_rejected():
    x, y = touch(A, B, T0, 1)
    later = [signed(r._replace(tap_id=r.tap_id + "-later", ts=r.ts + 86400)) for r in (x, y)]
    result = resolve([x, y] + later)
    assert result.follows == [follow_for_touch(x, y)]
    assert {k for _, k in kinds(result)} == {"taps_clock_skew"}
    # and a re-send that keeps the old ts is a replay of a spent nonce
    same_ts = [signed(r._replace(tap_id=r.tap_id + "-again")) for r in (x, y)]
    assert {k for _, k in kinds(resolve([x, y] + same_ts))} == {"taps_replayed"}


def test_already_followed_pair_touching_again_is_a_repeat_not_an_edge():
    first = touch(A, B, T0, 1)
    again = touch(B, A, T0 + 3600, 2)
    result = resolve(list(again) + list(first))
    assert result.follows == [follow_for_touch(*first)]
    assert result.repeats == [follow_for_touch(*again)]
    assert result.rejections == []


def test_keep_first_follow_is_the_earliest_touch():
    f1 = follow_for_touch(*touch(A, B, T0, 1))
    f2 = follow_for_touch(*touch(A, B, T0 + 60, 2))
    assert keep_first_follow(None, [f2, f1]) == (f1, f1, [f2])
    assert keep_first_follow(f1, [f2]) == (f1, None, [f2])
    assert keep_first_follow(None, []) == (None, None, [])


# ---- a crowd -------------------------------------------------------------------------

def crowd(pairs: int, seed: int = 7):
    """`pairs` touches in the same second at the same venue, between distinct users."""
    rng = random.Random(seed)
    keys = {}
    reports, truth = [], []
    for i in range(pairs):
        x, y = f"{2 * i + 100000}", f"{2 * i + 100001}"
        for uid in (x, y):
            PRIVATE.setdefault(uid, new_keypair(seed=int(uid).to_bytes(32, "big"))[0])
            keys[uid] = new_keypair(seed=int(uid).to_bytes(32, "big"))[1]
        t = T0 + rng.random()
        pair = touch(x, y, t, 10_000 + i, dx=rng.uniform(-3, 3), dy=rng.uniform(-3, 3))
        reports.extend(pair)
        truth.append(follow_for_touch(*pair))
    return reports, keys, sorted(truth)


def test_crowd_of_500_pairs_gives_exactly_the_true_follows():
    reports, keys, truth = crowd(500)
    random.Random(1).shuffle(reports)
    result = resolve_reports(reports, keys)
    assert result.follows == truth
    assert result.rejections == []


# ---- streaming memory: expiry, late partners, and what is left behind ----------------

def test_expiry_makes_the_waiting_report_unmatched_and_clears_it():
    x, y = touch(A, B, T0, 1)
    waiting = judge(EMPTY_MEMORY, [x])
    assert waiting.follows == [] and waiting.rejections == []
    assert [t.report for t in waiting.memory.pending] == [x]
    assert waiting.expire_at == nonce_time(x.nonce) + EXPIRY
    expired = expire_touch(waiting.memory, max_clock_skew_s=SKEW, pending_expiry_s=EXPIRY)
    assert [(r.report, r.kind) for r in expired.rejections] == [(x, "taps_unmatched")]
    # nothing waits and no timer is due: only the ids seen and the outcome are kept
    assert expired.memory == NonceMemory(frozenset({(A, x.tap_id)}), (), None, True)
    assert expired.expire_at is None
    late = judge(expired.memory, [y])
    assert late.follows == []
    assert [(r.report, r.kind) for r in late.rejections] == [(y, "taps_late")]
    assert late.memory.pending == () and late.expire_at is None


def test_partner_in_a_later_pane_before_expiry_confirms():
    x, y = touch(A, B, T0, 1)
    first = judge(EMPTY_MEMORY, [x, x])
    assert [r.kind for r in first.rejections] == ["taps_duplicate"]
    second = judge(first.memory, [y, x])
    assert second.follows == [follow_for_touch(x, y)]
    assert [r.kind for r in second.rejections] == ["taps_duplicate"]
    assert second.memory.pending == () and second.expire_at is None
    assert second.memory.confirmed == (A, B)
    replay = judge(second.memory, [signed(x._replace(tap_id="re"))])
    assert replay.follows == [] and [r.kind for r in replay.rejections] == ["taps_replayed"]


def test_expiring_a_confirmed_nonce_rejects_nothing():
    x, y = touch(A, B, T0, 1)
    done = judge(EMPTY_MEMORY, [x, y])
    after = expire_touch(done.memory, max_clock_skew_s=SKEW, pending_expiry_s=EXPIRY)
    assert after.rejections == [] and after.memory.confirmed == (A, B) and not after.memory.expired


def test_shared_signatures_are_verified_once():
    x, y = touch(A, B, T0, 1)
    verifier = Verifier()
    assert len(judge(EMPTY_MEMORY, [x, y], verifier).follows) == 1
    # two report signatures, and two distinct claim signatures shared by both reports
    assert verifier.verifications == 4


# ---- properties: order independence, idempotence, split independence -----------------

@st.composite
def worlds(draw):
    """Genuine touches among 6 users, some one-sided, plus forged, replayed and third-party reports."""
    users = USER_IDS[:6]
    n = draw(st.integers(1, 5))
    reports = []
    for k in range(n):
        x, y = draw(st.sampled_from([(u, v) for u in users for v in users if u != v]))
        t = T0 + draw(st.sampled_from([0.0, 0.5, 30.0, 3600.0]))
        dx = draw(st.floats(-12, 12, allow_nan=False))
        dy = draw(st.floats(-12, 12, allow_nan=False))
        rx, ry = touch(x, y, t, k + 1, dx, dy)
        fate = draw(st.sampled_from(["both", "both", "one", "forged", "replay", "third"]))
        if fate == "one":
            reports.append(rx)
            continue
        reports.extend([rx, ry])
        if fate == "forged":
            reports.append(rx._replace(tap_id=f"forged-{k}", proof=ry.proof))
        elif fate == "replay":
            reports.append(ry._replace(tap_id=f"replay-{k}", ts=ry.ts + draw(st.floats(-3, 3))))
        elif fate == "third":
            z = draw(st.sampled_from([u for u in users if u not in (x, y)]))
            reports.append(report(f"third-{k}", z, x, rx.nonce, t))
    return reports


@settings(max_examples=40, deadline=None)
@given(worlds(), st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_result(reports, rnd):
    shuffled = list(reports)
    rnd.shuffle(shuffled)
    assert resolve(shuffled) == resolve(reports)


@settings(max_examples=40, deadline=None)
@given(worlds(), st.randoms(use_true_random=False))
def test_duplicate_deliveries_change_nothing_but_add_duplicates(reports, rnd):
    extra = [rnd.choice(reports) for _ in range(rnd.randint(1, 4))]
    once, twice = resolve(reports), resolve(reports + extra)
    assert twice.follows == once.follows and twice.repeats == once.repeats
    # each copy still ends somewhere: as a duplicate, or (rejected before pairing) with its twin's reason
    fates = lambda res: {(r.report.tap_id, r.kind, r.reason) for r in res.rejections if r.kind != "taps_duplicate"}
    assert fates(twice) == fates(once)
    assert len(twice.rejections) == len(once.rejections) + len(extra)


@settings(max_examples=40, deadline=None)
@given(worlds(), st.randoms(use_true_random=False))
def test_arrivals_split_into_panes_before_expiry_decide_like_one_pane(reports, rnd):
    """What streaming does (several panes, then the expiry) equals what batch does (one pane)."""
    by_nonce = {}
    for r in reports:
        checked = check_report(r, PUBKEYS, SKEW)
        if isinstance(checked, CheckedTap):
            by_nonce.setdefault(r.nonce, []).append(checked)
    for group in by_nonce.values():
        rnd.shuffle(group)
        one = judge_touch(EMPTY_MEMORY, group, max_clock_skew_s=SKEW, pending_expiry_s=EXPIRY)
        one_rej = one.rejections + expire_touch(one.memory, max_clock_skew_s=SKEW,
                                                pending_expiry_s=EXPIRY).rejections
        memory, follows, rej = EMPTY_MEMORY, [], []
        cut = sorted(rnd.sample(range(len(group) + 1), k=min(2, len(group) + 1)))
        for pane in (group[:cut[0]], group[cut[0]:cut[-1]], group[cut[-1]:]):
            v = judge_touch(memory, pane, max_clock_skew_s=SKEW, pending_expiry_s=EXPIRY)
            memory, follows, rej = v.memory, follows + v.follows, rej + v.rejections
        final = expire_touch(memory, max_clock_skew_s=SKEW, pending_expiry_s=EXPIRY)
        rej += final.rejections
        assert [f.nonce for f in follows] == [f.nonce for f in one.follows]
        assert {(f.user_a, f.user_b) for f in follows} == {(f.user_a, f.user_b) for f in one.follows}
        # which of two interchangeable replays gets used may differ, what happens to the touch may not
        assert sorted(r.kind for r in rej) == sorted(r.kind for r in one_rej)
        assert final.memory.pending == () and final.expire_at is None


@settings(max_examples=30, deadline=None)
@given(worlds())
def test_every_report_ends_in_exactly_one_place(reports):
    result = resolve(reports)
    used = 2 * (len(result.follows) + len(result.repeats))
    assert used + len(result.rejections) == len(reports)
    # a follow is only ever made of two mutually signed reports
    for follow in result.follows + result.repeats:
        mine = [r for r in reports if r.nonce == follow.nonce and {r.user_id, r.peer_user_id} == {follow.user_a, follow.user_b}]
        assert {r.user_id for r in mine} == {follow.user_a, follow.user_b}

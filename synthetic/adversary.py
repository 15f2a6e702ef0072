"""Hostile and broken input for an opt-in ``adversarial`` world.

A clean world exercises the happy path; this module adds what a real edge
sees, so the pipeline's rejection paths run on generated data with a truth to
score them against:

* tap reports that must never create a follow, one kind at a time
  (``TAP_ATTACKS``): forged signatures, a report whose peer was altered, a
  replayed or duplicated report, an old claim replayed hours later, a touch
  only one phone reported, a peer who is no user, a phone tapping itself;
  and the trust-model attacks of issue #10: one report's fields swapped into a
  "partner report", a report filed with claims sniffed off the NFC link, an
  unsigned report, a moved position, two colluding phones far apart, a huge
  claimed accuracy, a touch dated 2099;
* lines that cannot be parsed at all (``MALFORMED``), a few per input file.

Everything here is added on top of the clean world (its own random stream),
so an adversarial world holds the clean world's lines plus these, and its
``truth/follows.jsonl`` is the clean world's: no attack adds or removes a
follow. Labels go to ``truth/tap_attacks.jsonl`` and ``truth/invalid_lines.jsonl``.
"""
from __future__ import annotations

import base64
import random
import uuid

from schemas import proofs
from schemas.records import TapReport

# kind -> what makes the report unusable (for the truth file's readers).
TAP_ATTACKS = {
    "forged_peer_proof": "the peer's signature is random bytes: the peer never signed",
    "forged_pair": "an attacker fabricates both reports; the victim's signatures are random bytes",
    "altered_peer": "a genuine report re-sent with another peer_user_id: its signatures no longer verify",
    "replay": "a phone re-files its own signed touch under a new tap_id: its nonce is already used",
    "relayed_replay": "someone else re-sends a genuine report under a new tap_id: the tap_id is signed",
    "duplicate": "a genuine report delivered twice (same tap_id)",
    "stale_replay": "a genuine report re-sent hours later with a current ts: off its nonce's time",
    "one_sided": "a real touch only one phone reported: no partner ever arrives",
    "unknown_peer": "the peer is not a platform user",
    "self_tap": "a phone reports touching itself",
    "swapped_report": "a genuine report with its fields swapped to pose as the partner's: not signed by the partner",
    "sniffed_claim": "the partner's report made up from claims sniffed off the NFC link: no valid report_sig",
    "unsigned": "a report without report_sig (and accuracy_m), as before issue #10",
    "moved_position": "a genuine report with its lat/lng changed: the position is signed",
    "far_apart": "two colluding phones sign one touch 10 km apart: too far for one touch",
    "huge_accuracy": "a signed report claiming a 50 km accuracy to excuse any distance",
    "future_touch": "two colluding phones sign a touch dated 2099",
}
FUTURE_TOUCH_S = 4_070_908_800.0   # 2099-01-01T00:00:00Z

MALFORMED = {
    "users": [
        ("truncated_json", '{"user_id":"1234","pubkey":"AAAA'),
        ("missing_field", '{"user_id":"1234567","alerts_opt_in":true,"stats_opt_out":false}'),
        ("bad_user_id", '{"user_id":"@taro","pubkey":"AAAA","alerts_opt_in":true,"stats_opt_out":false}'),
    ],
    "pings": [
        ("truncated_json", '{"user_id":"1234567","ts":"2026-11-20T'),
        ("lat_out_of_range", '{"user_id":"1234567","ts":"2026-11-20T01:00:00Z","lat":135.7,"lng":139.7}'),
        ("no_utc_offset", '{"user_id":"1234567","ts":"2026-11-20T01:00:00","lat":35.7,"lng":139.7}'),
        ("unknown_source", '{"user_id":"1234567","ts":"2026-11-20T01:00:00Z","lat":35.7,"lng":139.7,"source":"ble"}'),
        ("not_an_object", '[35.7, 139.7]'),
    ],
    "taps": [
        ("bad_nonce", '{"tap_id":"x","user_id":"1","peer_user_id":"2","nonce":"xyz","ts":"2026-11-20T01:00:00Z",'
                      '"lat":35.7,"lng":139.7,"proof":"a","peer_proof":"b"}'),
        ("missing_field", '{"tap_id":"x","user_id":"1","peer_user_id":"2"}'),
    ],
    "tweets": [
        ("limit_notice", '{"limit":{"track":42,"timestamp_ms":"1795000000000"}}'),
        ("float_id", '{"created_at":"Fri Nov 20 01:00:00 +0000 2026","id":2.1234e18,"text":"x","user":{"id_str":"1"}}'),
        ("truncated_json", '{"data":{"id":"2123","author_id":"1","created_at":"2026-11-20T01:00'),
        ("bad_created_at", '{"created_at":"2026-11-20 01:00","id_str":"2123","text":"x","user":{"id_str":"1"}}'),
    ],
}


def _random_signature(rng: random.Random) -> str:
    return base64.b64encode(rng.randbytes(64)).decode("ascii")


def _tap_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def tap_attacks(rng: random.Random, people: list, public_ids: list, genuine: list, t0: float, t1: float,
                rounds: int) -> tuple[list, list]:
    """(attack reports, labels {tap_id, kind, user_id, nonce}) for ``rounds`` of every kind.

    ``people`` are the users (with ``key``, ``user_id``, ``friends``), ``genuine``
    the clean world's reports, ``public_ids`` ids of accounts that are not users.
    """
    by_nonce: dict[str, list] = {}
    for r in genuine:
        by_nonce.setdefault(r.nonce, []).append(r)
    nonces = sorted(by_nonce)
    reports, labels = [], []

    def add(kind: str, report: TapReport) -> None:
        reports.append(report)
        labels.append({"tap_id": report.tap_id, "kind": kind, "user_id": report.user_id, "nonce": report.nonce})

    def fresh_nonce(when: float) -> str:
        return proofs.make_nonce(when, rng.randbytes(10))

    def somewhere() -> tuple:
        r = genuine[rng.randrange(len(genuine))] if genuine else None
        return (r.lat, r.lng) if r else (35.6812, 139.7671)

    def by(person, r: TapReport, accuracy_m: int = 10) -> TapReport:
        """``r`` as ``person``'s phone files it: with an accuracy and its own whole-report signature."""
        r = r._replace(accuracy_m=accuracy_m)
        return r._replace(report_sig=proofs.sign_report_of(person.key, r))

    def claims(x, y, nonce) -> tuple:
        return proofs.sign_claim(x.key, x.user_id, y.user_id, nonce), proofs.sign_claim(y.key, x.user_id, y.user_id, nonce)

    for _ in range(rounds):
        when = rng.uniform(t0 + 60.0, max(t0 + 61.0, t1 - 60.0))
        m, v = rng.sample(people, 2)
        lat, lng = somewhere()

        nonce = fresh_nonce(when)
        add("forged_peer_proof", by(m, TapReport(_tap_id(rng), m.user_id, v.user_id, nonce, round(when, 3), lat, lng,
                                                 proofs.sign_claim(m.key, m.user_id, v.user_id, nonce),
                                                 _random_signature(rng))))

        nonce = fresh_nonce(when + 7.0)
        forged = _random_signature(rng)
        own = proofs.sign_claim(m.key, m.user_id, v.user_id, nonce)
        add("forged_pair", by(m, TapReport(_tap_id(rng), m.user_id, v.user_id, nonce, round(when + 7.0, 3), lat, lng,
                                           own, forged)))
        add("forged_pair", TapReport(_tap_id(rng), v.user_id, m.user_id, nonce, round(when + 8.0, 3), lat, lng, forged,
                                     own, 10, _random_signature(rng)))

        if nonces:
            original = by_nonce[nonces[rng.randrange(len(nonces))]][rng.randrange(2)]
            others = [p for p in people if p.user_id not in (original.user_id, original.peer_user_id)]
            if others:
                third = others[rng.randrange(len(others))]
                add("altered_peer", original._replace(tap_id=_tap_id(rng), peer_user_id=third.user_id))
            original = by_nonce[nonces[rng.randrange(len(nonces))]][rng.randrange(2)]
            reporter = next(p for p in people if p.user_id == original.user_id)
            add("replay", by(reporter, original._replace(tap_id=_tap_id(rng),
                                                         ts=round(original.ts + rng.uniform(0.5, 3.0), 3)),
                             original.accuracy_m))
            original = by_nonce[nonces[rng.randrange(len(nonces))]][rng.randrange(2)]
            add("relayed_replay", original._replace(tap_id=_tap_id(rng)))
            original = by_nonce[nonces[rng.randrange(len(nonces))]][rng.randrange(2)]
            add("swapped_report", original._replace(tap_id=_tap_id(rng), user_id=original.peer_user_id,
                                                    peer_user_id=original.user_id, proof=original.peer_proof,
                                                    peer_proof=original.proof))
            original = by_nonce[nonces[rng.randrange(len(nonces))]][rng.randrange(2)]
            add("sniffed_claim", original._replace(tap_id=_tap_id(rng), user_id=original.peer_user_id,
                                                   peer_user_id=original.user_id, proof=original.peer_proof,
                                                   peer_proof=original.proof, report_sig=_random_signature(rng)))
            original = by_nonce[nonces[rng.randrange(len(nonces))]][rng.randrange(2)]
            add("moved_position", original._replace(tap_id=_tap_id(rng), lat=round(original.lat + 0.01, 7)))
            original = by_nonce[nonces[rng.randrange(len(nonces))]][rng.randrange(2)]
            add("duplicate", original)
            original = by_nonce[nonces[rng.randrange(len(nonces))]][rng.randrange(2)]
            # Hours later, possibly past the world's window: a replay comes whenever the attacker likes.
            later = original.ts + rng.uniform(2 * 3600.0, 6 * 3600.0)
            add("stale_replay", original._replace(tap_id=_tap_id(rng), ts=round(later, 3)))

        a = people[rng.randrange(len(people))]
        b = people[sorted(a.friends)[rng.randrange(len(a.friends))]] if a.friends else m if m is not a else v
        nonce = fresh_nonce(when + 20.0)
        add("one_sided", by(a, TapReport(_tap_id(rng), a.user_id, b.user_id, nonce, round(when + 20.0, 3), lat, lng,
                                         *claims(a, b, nonce))))

        stranger = public_ids[rng.randrange(len(public_ids))]
        nonce = fresh_nonce(when + 30.0)
        add("unknown_peer", by(m, TapReport(_tap_id(rng), m.user_id, stranger, nonce, round(when + 30.0, 3), lat, lng,
                                            proofs.sign_claim(m.key, m.user_id, stranger, nonce),
                                            _random_signature(rng))))

        nonce = fresh_nonce(when + 40.0)
        own = proofs.sign_claim(m.key, m.user_id, m.user_id, nonce)
        add("self_tap", by(m, TapReport(_tap_id(rng), m.user_id, m.user_id, nonce, round(when + 40.0, 3), lat, lng,
                                        own, own)))

        nonce = fresh_nonce(when + 50.0)
        add("unsigned", TapReport(_tap_id(rng), m.user_id, v.user_id, nonce, round(when + 50.0, 3), lat, lng,
                                  *claims(m, v, nonce)))

        # Colluders m and v: both sign, in the service area, 10 km apart (Ikebukuro / Meguro).
        nonce = fresh_nonce(when + 60.0)
        mine, theirs = claims(m, v, nonce)
        add("far_apart", by(m, TapReport(_tap_id(rng), m.user_id, v.user_id, nonce, round(when + 60.0, 3),
                                         35.7295, 139.7109, mine, theirs)))
        add("far_apart", by(v, TapReport(_tap_id(rng), v.user_id, m.user_id, nonce, round(when + 60.5, 3),
                                         35.6340, 139.7158, theirs, mine)))
        nonce = fresh_nonce(when + 70.0)
        mine, theirs = claims(m, v, nonce)
        add("huge_accuracy", by(m, TapReport(_tap_id(rng), m.user_id, v.user_id, nonce, round(when + 70.0, 3),
                                             35.7295, 139.7109, mine, theirs), 50_000))
        add("huge_accuracy", by(v, TapReport(_tap_id(rng), v.user_id, m.user_id, nonce, round(when + 70.5, 3),
                                             35.6340, 139.7158, theirs, mine), 50_000))
        future = FUTURE_TOUCH_S + rng.uniform(0.0, 86400.0)
        nonce = fresh_nonce(future)
        mine, theirs = claims(m, v, nonce)
        add("future_touch", by(m, TapReport(_tap_id(rng), m.user_id, v.user_id, nonce, round(future, 3), lat, lng,
                                            mine, theirs)))
        add("future_touch", by(v, TapReport(_tap_id(rng), v.user_id, m.user_id, nonce, round(future + 0.5, 3), lat,
                                            lng, theirs, mine)))
    return reports, labels


def malformed_lines(rng: random.Random, source: str, lines: list, count: int) -> tuple[list, list]:
    """``lines`` with ``count`` unparseable lines inserted; returns (lines, labels {line, kind}).

    ``line`` in a label is the 1-based line number in the written file.
    """
    samples = MALFORMED[source]
    positions = sorted(rng.randrange(len(lines) + 1) for _ in range(count))
    out, labels, taken = [], [], 0
    for i, pos in enumerate(positions):
        out.extend(lines[taken:pos])
        taken = pos
        kind, text = samples[i % len(samples)]
        out.append(text)
        labels.append({"line": len(out), "kind": kind})
    out.extend(lines[taken:])
    return out, labels

"""Settings changes: the registry is a changing input (core rules, no engine).

A subscriber's change is a ``users`` record with ``updated_at``, signed by the portal
(``portal.registry.RegistryWriter``); the latest verified one sets the two settings,
everything unsigned, forged or about an unknown user is a dead letter, and the streaming
fold (``CurrentRegistry``) agrees with the batch merge on any arrival order.
"""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from core.inputs import judge_line
from core.registry import CurrentRegistry, RegistryEntry, effective_user, merge_registry
from portal.registry import RegistryWriter
from schemas.errors import InvalidRecord
from schemas.parse import parse_line
from schemas.proofs import new_keypair
from schemas.records import DeadLetter, RegistryChange, User

PORTAL_KEY, PORTAL_PUB = new_keypair(bytes([9]) * 32)
OTHER_KEY, _ = new_keypair(bytes([10]) * 32)
KEY_A = new_keypair(bytes(32))[1]
BASE = User("7", KEY_A, True, False, "20-29")
T0 = 1_763_600_000.0


def change_line(user: User, at: float, key=PORTAL_KEY, **tamper) -> str:
    record = RegistryWriter(key, clock=lambda: at).record(user)
    record.update(tamper)
    return json.dumps(record, sort_keys=True)


def parsed(line: str):
    return parse_line("users", line), line


def base_line(user: User) -> str:
    return json.dumps({"user_id": user.user_id, "pubkey": user.pubkey, "alerts_opt_in": user.alerts_opt_in,
                       "stats_opt_out": user.stats_opt_out, "age_band": user.age_band}, sort_keys=True)


def test_a_portal_record_parses_as_a_change_stamped_at_its_updated_at():
    line = change_line(BASE._replace(stats_opt_out=True), T0)
    change = parse_line("users", line)
    assert isinstance(change, RegistryChange)
    assert change.user == BASE._replace(stats_opt_out=True) and change.ts == T0
    judged = judge_line("users", "users.jsonl", line, T0, 300.0)
    assert (judged.tag, judged.event_time) == ("users", T0)


def test_a_change_without_the_portals_signature_or_with_a_bad_time_is_refused_at_parse():
    record = json.loads(change_line(BASE, T0))
    del record["portal_sig"]
    with pytest.raises(InvalidRecord, match="must carry the portal's signature portal_sig"):
        parse_line("users", json.dumps(record))
    record = json.loads(change_line(BASE, T0))
    record["updated_at"] = "yesterday"
    with pytest.raises(InvalidRecord):
        parse_line("users", json.dumps(record))


def test_a_change_stamped_ahead_of_the_clock_is_a_dead_letter():
    judged = judge_line("users", "users.jsonl", change_line(BASE, T0 + 3600), T0, 300.0)
    assert judged.tag == "dead_letters" and "ahead of the clock" in judged.value.error


def test_the_latest_verified_change_sets_the_two_settings_and_nothing_else():
    out = list(merge_registry([
        parsed(base_line(BASE)),
        parsed(change_line(BASE._replace(stats_opt_out=True, alerts_opt_in=False), T0 + 10)),
        # a later change may opt back in: it is the subscriber's own, signed, latest word
        parsed(change_line(BASE._replace(alerts_opt_in=True, stats_opt_out=True), T0 + 20)),
        # an earlier one that arrives last does not win
        parsed(change_line(BASE, T0 + 5)),
        # a change cannot swap the key or the age band
        parsed(change_line(BASE._replace(pubkey=new_keypair(bytes([3]) * 32)[1], age_band="70+"), T0 + 1)),
    ], "users.jsonl", PORTAL_PUB))
    assert out == [BASE._replace(alerts_opt_in=True, stats_opt_out=True)]


def test_forged_altered_unverifiable_and_unknown_user_changes_are_dead_letters():
    forged = change_line(BASE._replace(stats_opt_out=True), T0, key=OTHER_KEY)
    altered = change_line(BASE._replace(stats_opt_out=True), T0, alerts_opt_in=False)
    stranger = change_line(User("99", KEY_A, True, False, None), T0)
    out = list(merge_registry([parsed(base_line(BASE)), parsed(forged), parsed(altered), parsed(stranger)],
                              "users.jsonl", PORTAL_PUB))
    assert out[0] == BASE
    errors = sorted((d.raw, d.error) for d in out[1:])
    assert [raw for raw, _ in errors] == sorted([forged, altered, stranger])
    assert all(isinstance(d, DeadLetter) for d in out[1:])
    assert {e for _, e in errors} == {
        "settings change for user 7: portal_sig does not verify against the portal's key (forged or altered), "
        "the change is not used",
        "settings change for user 99, who is not in the user registry: the change is not used"}
    # no portal key configured: no change is used
    out = list(merge_registry([parsed(base_line(BASE)), parsed(change_line(BASE._replace(stats_opt_out=True), T0))],
                              "users.jsonl", None))
    assert out[0] == BASE and "no --registry_portal_pubkey" in out[1].error


def test_the_stream_fold_emits_each_new_effective_record_and_is_quiet_on_redelivery():
    fold = CurrentRegistry("users", PORTAL_PUB)
    opt_out = change_line(BASE._replace(stats_opt_out=True), T0 + 10)
    entry, out = fold.process(None, parsed(base_line(BASE)))
    assert out == [BASE]
    entry, out = fold.process(entry, parsed(opt_out))
    assert out == [BASE._replace(stats_opt_out=True)]
    for line in (opt_out, base_line(BASE), change_line(BASE, T0 + 1)):   # re-delivered, or older
        entry, out = fold.process(entry, parsed(line))
        assert out == []
    entry, out = fold.process(entry, parsed(change_line(BASE, T0 + 30)))
    assert out == [BASE]
    assert entry.changed_at == T0 + 30


def test_the_stream_fold_starts_from_a_snapshot_entry():
    fold = CurrentRegistry("users", PORTAL_PUB)
    seeded = RegistryEntry("7", base=BASE)
    entry, out = fold.process(seeded, parsed(change_line(BASE._replace(alerts_opt_in=False), T0)))
    assert out == [BASE._replace(alerts_opt_in=False)] and effective_user(entry) == out[0]


settings_change = st.tuples(st.booleans(), st.booleans(), st.integers(0, 50))


@settings(max_examples=60, deadline=None)
@given(st.lists(settings_change, max_size=6), st.randoms(use_true_random=False), st.booleans())
def test_the_stream_fold_in_any_arrival_order_ends_where_the_batch_merge_does(changes, rnd, second_copy):
    lines = [base_line(BASE)] + [change_line(BASE._replace(alerts_opt_in=a, stats_opt_out=s), T0 + dt)
                                 for a, s, dt in changes]
    if second_copy:
        lines.append(base_line(BASE._replace(alerts_opt_in=False)))
    batch = [out for out in merge_registry([parsed(line) for line in lines], "users", PORTAL_PUB)
             if isinstance(out, User)]
    arrival = list(lines)
    rnd.shuffle(arrival)
    # the base record first (a change for a user not yet registered is refused, as in batch without a base)
    arrival.sort(key=lambda line: "updated_at" in line)
    fold, entry = CurrentRegistry("users", PORTAL_PUB), None
    for line in arrival:
        entry, _ = fold.process(entry, parsed(line))
    assert [effective_user(entry)] == batch

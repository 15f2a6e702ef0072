"""The registry as a changing input, end to end on DirectRunner (issue #15).

A subscriber's settings change is a ``users`` record the portal signs (``updated_at``,
``portal_sig``). Batch runs use the latest state; a streaming run takes each change in
the event-time tick of its ``updated_at``: alerts stop from then on, and every hour of
statistics not yet released leaves the user out. A forged change changes nothing and is
a dead letter. Statistics are compared exactly with the noise off (``tools.same_outputs``).
"""
from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from core.compliance import apply_retractions
from pipelines.sinks import read_jsonl_folder
from portal.registry import RegistryWriter
from schemas.proofs import new_keypair
from schemas.records import Alert, User
from schemas.timefmt import parse_rfc3339
from synthetic.world import write_world
from tools.same_outputs import run_once

START = "2026-11-20T17:00:00+09:00"
PORTAL_KEY, PORTAL_PUB = new_keypair(bytes([21]) * 32)
FORGER_KEY, _ = new_keypair(bytes([22]) * 32)
HOUR = 3600.0


def _users(world):
    with open(os.path.join(world, "users.jsonl"), encoding="utf-8") as handle:
        return {row["user_id"]: row for row in map(json.loads, handle)}


def _user(row) -> User:
    return User(row["user_id"], row["pubkey"], row["alerts_opt_in"], row["stats_opt_out"], row.get("age_band"))


def _alerts(out):
    kept = apply_retractions(Alert(**dict(row, ts=parse_rfc3339(row["ts"])))
                             for row in read_jsonl_folder(os.path.join(out, "alerts")))
    return sorted((a.user_id, a.tweet_id, a.alert_id) for a in kept), {a.alert_id: a for a in kept}


def _statistics(out):
    rows = pq.ParquetDataset(os.path.join(out, "marketing")).read().to_pylist()
    return sorted(json.dumps(row, sort_keys=True, default=str) for row in rows)


def _by_hour(stats):
    hours = {}
    for row in stats:
        hours.setdefault(json.loads(row)["window_start"], []).append(row)
    return hours


def _copy(world, dest):
    shutil.copytree(world, dest)
    return dest


def _append(world, lines):
    with open(os.path.join(world, "users.jsonl"), "a", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")


def _signed(user: User, at: float, key=PORTAL_KEY) -> str:
    return json.dumps(RegistryWriter(key, clock=lambda: at).record(user), ensure_ascii=False)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry_stream")
    base = str(root / "base")
    write_world(base, users=80, hours=2, seed=11, start=START)
    extra = ["--registry_portal_pubkey", PORTAL_PUB]
    run_once(base, str(root / "base_out"), False, extra)
    alerts, by_id = _alerts(str(root / "base_out"))
    per_user = {}
    for user_id, _tweet, alert_id in alerts:
        per_user.setdefault(user_id, []).append(by_id[alert_id].ts)
    # X: a user with two alerts far enough apart to put a change between them
    x, (t_before, t_after) = next((u, pair) for u, times in sorted(per_user.items())
                                  for pair in zip(sorted(times), sorted(times)[1:]) if pair[1] - pair[0] > 10)
    users = _users(base)
    with open(os.path.join(base, "world.json"), encoding="utf-8") as handle:
        first_hour = parse_rfc3339(json.load(handle)["period"]["start"])
    hours_pinged = {}
    with open(os.path.join(base, "pings.jsonl"), encoding="utf-8") as handle:
        for ping in map(json.loads, handle):
            hours_pinged.setdefault(ping["user_id"], set()).add(int((parse_rfc3339(ping["ts"]) - first_hour) // HOUR))
    # Y: counted in both hours' statistics
    y = next(u for u in sorted(users) if u != x and not users[u]["stats_opt_out"] and {0, 1} <= hours_pinged.get(u, set()))
    z = next(u for u in sorted(per_user) if u not in (x, y))
    t_alerts = (t_before + t_after) / 2
    t_stats = first_hour + HOUR + 1200      # after the first hour's release, before the second's
    changes = [
        _signed(_user(users[x])._replace(alerts_opt_in=False), t_alerts),
        _signed(_user(users[y])._replace(stats_opt_out=True), t_stats),
        _signed(_user(users[z])._replace(alerts_opt_in=False), t_alerts, key=FORGER_KEY),
    ]
    changed = _copy(base, str(root / "changed"))
    _append(changed, changes)
    # the same world with X and Y as the changes leave them, from the start
    settled = _copy(base, str(root / "settled"))
    rows = [dict(users[u], **({"alerts_opt_in": False} if u == x else {"stats_opt_out": True} if u == y else {}))
            for u in sorted(users)]
    with open(os.path.join(settled, "users.jsonl"), "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    outs = {}
    for name, world, streaming in (("settled", settled, False), ("changed_batch", changed, False),
                                   ("changed_stream", changed, True)):
        outs[name] = str(root / name)
        run_once(world, outs[name], streaming, extra)
    return dict(x=x, y=y, z=z, t_alerts=t_alerts, t_stats=t_stats, first_hour=first_hour, changes=changes,
                base=str(root / "base_out"), **outs)


def test_batch_uses_the_latest_state(scenario):
    assert _alerts(scenario["changed_batch"])[0] == _alerts(scenario["settled"])[0]
    assert _statistics(scenario["changed_batch"]) == _statistics(scenario["settled"])
    assert not [a for a in _alerts(scenario["changed_batch"])[0] if a[0] == scenario["x"]]


def test_streaming_stops_alerts_from_the_change_on(scenario):
    x, t = scenario["x"], scenario["t_alerts"]
    base, by_id = _alerts(scenario["base"])
    expected = [a for a in base if a[0] != x or by_id[a[2]].ts < t]
    streamed = _alerts(scenario["changed_stream"])[0]
    assert streamed == expected
    assert [a for a in streamed if a[0] == x], "X had alerts before the change"
    assert len([a for a in base if a[0] == x]) > len([a for a in streamed if a[0] == x])


def test_streaming_leaves_the_user_out_of_every_hour_released_after_the_change(scenario):
    base, settled = _by_hour(_statistics(scenario["base"])), _by_hour(_statistics(scenario["settled"]))
    streamed = _by_hour(_statistics(scenario["changed_stream"]))
    assert sorted(streamed) == sorted(base) and len(streamed) >= 2
    assert base != settled, "Y counts in the world's statistics"
    for hour in streamed:
        released_before_change = parse_rfc3339(hour) + HOUR <= scenario["t_stats"]
        assert streamed[hour] == (base if released_before_change else settled)[hour], hour


def test_a_forged_change_changes_nothing_and_is_a_dead_letter(scenario):
    z = scenario["z"]
    for name in ("changed_batch", "changed_stream"):
        alerts = _alerts(scenario[name])[0]
        assert [a for a in alerts if a[0] == z] == [a for a in _alerts(scenario["base"])[0] if a[0] == z]
        dead = [d for d in read_jsonl_folder(os.path.join(scenario[name], "deadletter"))
                if d["raw"] == scenario["changes"][2]]
        assert len(dead) == 1 and "portal_sig does not verify" in dead[0]["error"], name
        used = [d for d in read_jsonl_folder(os.path.join(scenario[name], "deadletter"))
                if d["raw"] in scenario["changes"][:2]]
        assert used == [], name

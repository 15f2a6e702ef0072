"""The registry as a changing input on the native Flink job (issue #15), on the session cluster.

A subscriber's settings change is a ``users`` record the portal signs (``updated_at``,
``portal_sig``; built here with ``portal.registry.RegistryWriter``). The references are
Beam's batch runs (``tools.same_outputs.run_once``, noise off) of three worlds, as in
``tests/test_registry_stream.py``: the world as generated (*base*), the same with the
changes appended to its users file (*changed*), and the same with the changed settings in
its users file from the start (*settled*).

a. STREAMING from Kafka (``--source kafka``, launched detached, stopped with ``--drain``):
   the events before the first change's ``updated_at`` are read, then the changes are
   produced to the ``users`` topic, then the rest of the events. X's alerts stop for the
   tweets after X's change (alerts off); Y's user-hours leave every hour released after Y's
   change (leave the statistics), the hours released before it stay as they were; a change
   signed with another key is a dead letter and changes nothing.
b. BATCH from files: the changed world on Flink equals the changed world on Beam (the
   latest verified state, the forged change a dead letter).
"""
from __future__ import annotations

import json
import os

import pytest

import kafka_client
from core.lines import read_lines
from pipelines import flink_engine
from pipelines import run as launcher
from pipelines.sinks import read_jsonl_folder
from schemas.timefmt import parse_rfc3339
from tests.integration.conftest import wait_for
from tests.integration.test_flink_job import (EVENT_TOPICS, NO_NOISE_ENTRY, _job_id, _launch, _marketing,
                                              _running_with_a_checkpoint, _sources_read_to_end, _world,
                                              assert_same_outputs)
from tests.integration.test_pipeline_on_runner import _reset_topics
from tests.test_registry_stream import (FORGER_KEY, HOUR, PORTAL_PUB, _alerts, _append, _copy, _signed, _user,
                                        _users)
from tools.same_outputs import run_once

pytestmark = pytest.mark.flink

WORLD = dict(users=80, hours=2, seed=11)
PUBKEY = ["--registry_portal_pubkey", PORTAL_PUB]


def _hours(out: str) -> dict:
    """The released statistics by hour: window start (epoch s) -> {(cell, metric): value}."""
    hours = {}
    for (start, cell, metric), value in _marketing(out).items():
        hours.setdefault(start, {})[cell, metric] = value
    return hours


def _first_hour(world: str) -> float:
    with open(os.path.join(world, "world.json"), encoding="utf-8") as handle:
        return parse_rfc3339(json.load(handle)["period"]["start"])


def _hours_pinged(world: str, first_hour: float) -> dict:
    hours = {}
    for ping in map(json.loads, read_lines(os.path.join(world, "pings.jsonl"))):
        hours.setdefault(ping["user_id"], set()).add(int((parse_rfc3339(ping["ts"]) - first_hour) // HOUR))
    return hours


def _pick(world: str, base_out: str) -> dict:
    """X: alerted twice, more than 10 s apart (its change goes between); Y: in both hours'
    statistics (its change goes after the first hour's release); Z: another alerted user
    (a forged change)."""
    alerts, by_id = _alerts(base_out)
    times = {}
    for user_id, _tweet, alert_id in alerts:
        times.setdefault(user_id, []).append(by_id[alert_id].ts)
    gaps = [(user_id, earlier, later) for user_id in sorted(times)
            for earlier, later in zip(sorted(times[user_id]), sorted(times[user_id])[1:]) if later - earlier > 10]
    assert gaps, "no user alerted twice far enough apart: pick another world"
    x, before, after = gaps[0]
    users, first_hour = _users(world), _first_hour(world)
    pinged = _hours_pinged(world, first_hour)
    y = next(u for u in sorted(users) if u != x and not users[u]["stats_opt_out"] and {0, 1} <= pinged.get(u, set()))
    z = next(u for u in sorted(times) if u not in (x, y))
    return dict(x=x, y=y, z=z, users=users, first_hour=first_hour,
                t_alerts=(before + after) / 2, t_stats=first_hour + HOUR + 1200)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("flink-registry")
    base = _world(str(root / "base"), WORLD)
    outs = {"base": str(root / "beam-base")}
    run_once(base, outs["base"], False, PUBKEY)
    picked = _pick(base, outs["base"])
    x, y, z, users = picked["x"], picked["y"], picked["z"], picked["users"]
    changes = [
        _signed(_user(users[x])._replace(alerts_opt_in=False), picked["t_alerts"]),
        _signed(_user(users[y])._replace(stats_opt_out=True), picked["t_stats"]),
        _signed(_user(users[z])._replace(alerts_opt_in=False, stats_opt_out=True), picked["t_alerts"],
                key=FORGER_KEY),
    ]
    changed = _copy(base, str(root / "changed"))
    _append(changed, changes)
    # settled: a second, unsigned copy of X (alerts off) and of Y (out of the statistics) in the
    # registry, which merges a user's copies the most private way: as if so from the start
    settled = _copy(base, str(root / "settled"))
    _append(settled, [json.dumps(dict(users[x], alerts_opt_in=False)), json.dumps(dict(users[y], stats_opt_out=True))])
    for name, world in (("settled", settled), ("changed", changed)):
        outs[name] = str(root / f"beam-{name}")
        run_once(world, outs[name], False, PUBKEY)
    assert _hours(outs["base"]) != _hours(outs["settled"]), "Y counts in the statistics"
    return dict(picked, changes=changes, worlds={"base": base, "changed": changed}, beam=outs)


def _dead_for(out: str, raw_lines) -> list[dict]:
    return [d for d in read_jsonl_folder(os.path.join(out, "deadletter")) if d["raw"] in raw_lines]


def assert_forged_change_is_a_dead_letter(out: str, scenario) -> None:
    forged = _dead_for(out, scenario["changes"][2:])
    assert len(forged) == 1 and "portal_sig does not verify" in forged[0]["error"], forged
    assert _dead_for(out, scenario["changes"][:2]) == []
    z = scenario["z"]
    assert [a for a in _alerts(out)[0] if a[0] == z] == [a for a in _alerts(scenario["beam"]["base"])[0] if a[0] == z]


# ---- a: STREAMING from Kafka, the changes produced mid-stream -------------------------------

def _events_split(world: str, at_ms: int) -> dict:
    """Each event topic's lines (as ``kafka_client`` timestamps them) -> (before ``at_ms``, the rest)."""
    split = {}
    for kind in EVENT_TOPICS:
        timed = list(kafka_client.timestamped(read_lines(kafka_client.find_input(world, kind)), kind))
        split[kind] = ([line for line, ms in timed if ms is not None and ms < at_ms],
                       [line for line, ms in timed if ms is None or ms >= at_ms])
    return split


def _produce(bootstrap: str, lines_by_kind: dict) -> None:
    for kind, lines in lines_by_kind.items():
        if lines:
            assert kafka_client.produce_lines(kind, lines, bootstrap, kind=kind) == len(lines)


def test_streaming_takes_a_settings_change_produced_mid_stream(infra, scenario, tmp_path, capsys):
    world, bootstrap = scenario["worlds"]["base"], infra.bootstrap
    first_change = min(scenario["t_alerts"], scenario["t_stats"])
    split = _events_split(world, int(first_change * 1000))
    assert all(before and after for before, after in split.values()), {k: tuple(map(len, v)) for k, v in split.items()}
    _reset_topics(bootstrap)
    kafka_client.produce_jsonl(kafka_client.find_input(world, "users"), "users", bootstrap, kind="users")
    _produce(bootstrap, {kind: before for kind, (before, _after) in split.items()})
    out = str(tmp_path / "stream")
    args = ["--engine", "flink", "--flink_master", infra.flink_master, "--source", "kafka",
            "--kafka_bootstrap_servers", bootstrap, "--input", world, "--output", out,
            "--checkpointing_interval", "1000", "--flink_detached", *PUBKEY]
    assert launcher.run(args, flink_entry=NO_NOISE_ENTRY) == 0
    job = _job_id(capsys)
    try:
        wait_for(lambda: _running_with_a_checkpoint(infra, job), 120, "the job's first checkpoint")
        # the job has read (and checkpointed) every event before the first change: the
        # watermark lies before both changes' updated_at, so they come mid-stream
        wait_for(lambda: _sources_read_to_end(bootstrap), 180, "the job to read the events before the changes")
        assert kafka_client.produce_lines("users", scenario["changes"], bootstrap, kind="users") == 3
        _produce(bootstrap, {kind: after for kind, (_before, after) in split.items()})
        wait_for(lambda: _sources_read_to_end(bootstrap, EVENT_TOPICS + ("users",)), 180,
                 "the job to read the changes and the rest of the events")
        assert flink_engine.lifecycle(["stop", job, "--flink_master", infra.flink_master, "--drain",
                                       "--savepoint_dir", str(tmp_path / "savepoints")]) == 0
        wait_for(lambda: infra.rest(f"/jobs/{job}")["state"] == "FINISHED", 120, "the drained job to finish")
    finally:
        if infra.rest(f"/jobs/{job}")["state"] not in flink_engine.TERMINAL:
            infra.rest(f"/jobs/{job}?mode=cancel", method="PATCH")

    # X: no alert for a tweet after its change, every other alert as in the base world
    x, t = scenario["x"], scenario["t_alerts"]
    base, by_id = _alerts(scenario["beam"]["base"])
    streamed = _alerts(out)[0]
    assert streamed == [a for a in base if a[0] != x or by_id[a[2]].ts < t]
    assert [a for a in streamed if a[0] == x], "X had alerts before the change"
    assert len([a for a in streamed if a[0] == x]) < len([a for a in base if a[0] == x])
    # Y: out of every hour released after the change; the hours released before unchanged
    base_hours, settled_hours = (_hours(scenario["beam"][name]) for name in ("base", "settled"))
    streamed_hours = _hours(out)
    assert sorted(streamed_hours) == sorted(base_hours) and len(streamed_hours) >= 2
    for hour in streamed_hours:
        released_before_change = hour + HOUR <= scenario["t_stats"]
        assert streamed_hours[hour] == (base_hours if released_before_change else settled_hours)[hour], hour
    assert_forged_change_is_a_dead_letter(out, scenario)


# ---- b: BATCH from files ------------------------------------------------------------------------

def test_batch_with_signed_changes_equals_beam(infra, scenario, tmp_path):
    out = str(tmp_path / "batch")
    _launch("--engine", "flink", "--flink_master", infra.flink_master, "--input", scenario["worlds"]["changed"],
            "--output", out, *PUBKEY)
    assert_same_outputs(out, scenario["beam"]["changed"])
    assert_forged_change_is_a_dead_letter(out, scenario)
    # the latest state: as if the verified changes had been in the registry from the start
    assert _alerts(out)[0] == _alerts(scenario["beam"]["settled"])[0]
    assert _marketing(out) == _marketing(scenario["beam"]["settled"])

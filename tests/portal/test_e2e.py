"""End to end: generate a world, run the pipeline (DirectRunner), serve its outputs, and the
portal's pages agree with the output folders; a deleted tweet is never shown, nor one
withheld in Japan."""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from core.alerts import apply_retractions
from schemas.records import Alert
from schemas.timefmt import parse_rfc3339
from tests.portal.conftest import REPO, owned_key, rekeyed_world, sign_in_with, start_portal
from tests.portal import world as handmade

START = "2026-11-20T17:00:00+09:00"


def rows(folder_or_file):
    paths = [folder_or_file] if os.path.isfile(folder_or_file) else \
        sorted(glob.glob(os.path.join(folder_or_file, "**", "*.jsonl"), recursive=True))
    out = []
    for path in paths:
        with open(path) as handle:
            out += [json.loads(line) for line in handle if line.strip()]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("e2e"))
    world, out = os.path.join(root, "gen"), os.path.join(root, "out")
    subprocess.run([sys.executable, "-m", "pipelines.generate", "--output", world, "--users", "80", "--hours", "1.5",
                    "--seed", "5", "--start", START], cwd=REPO, check=True, capture_output=True, timeout=600)
    subprocess.run([sys.executable, "-m", "pipelines.run", "--input", world, "--output", out], cwd=REPO, check=True,
                   capture_output=True, timeout=900)
    users = rekeyed_world(world, os.path.join(root, "world"))
    with open(os.path.join(root, "marketers.json"), "w") as handle:
        json.dump({handmade.MARKETER: handmade.pubkey(handmade.MARKETER)}, handle)
    server = start_portal(root, out, os.path.join(root, "world"))
    yield server, world, out, users
    server.proc.terminate()
    server.proc.wait(30)


def test_alerts_and_friends_pages_agree_with_the_outputs(run):
    server, _world, out, _users = run
    kept = apply_retractions(Alert(r["alert_id"], r["user_id"], r["tweet_id"], parse_rfc3339(r["ts"]),
                                   r["distance_m"], r["reason"]) for r in rows(os.path.join(out, "alerts")))
    follows = rows(os.path.join(out, "follows"))
    assert kept and follows, "the generated world must give alerts and follows"
    alerted = sorted({a.user_id for a in kept})[:4]
    friendly = sorted({f["user_a"] for f in follows})[:4]
    for user in sorted(set(alerted + friendly)):
        client = sign_in_with(server.url, "subscriber", user, owned_key(user)[0])
        mine = sorted((a for a in kept if a.user_id == user), key=lambda a: (-a.ts, a.alert_id))[:20]
        page = client.get(f"/u/{user}/alerts").text
        assert re.findall(r'<li id="a([^"]+)"', page) == [a.alert_id for a in mine]
        friends = {f["user_b"] if f["user_a"] == user else f["user_a"] for f in follows if user in (f["user_a"], f["user_b"])}
        page = client.get(f"/u/{user}/friends").text
        assert set(re.findall(r'<li id="f([^"]+)"', page)) == friends


def test_marketer_map_shows_exactly_the_latest_release(run):
    server, _world, out, _users = run
    table = pq.read_table(os.path.join(out, "marketing")).to_pylist()
    latest = max(r["window_start"] for r in table if r["metric"] == "footfall")
    expected = {r["h3_cell"] for r in table if r["metric"] == "footfall" and r["window_start"] == latest}
    client = sign_in_with(server.url, "marketer", handmade.MARKETER, handmade.key(handmade.MARKETER))
    page = client.get("/m/map").text
    assert set(re.findall(r'data-cell="([0-9a-f]+)"', page)) == expected


def test_no_deleted_or_withheld_tweet_is_ever_shown(run):
    server, world, out, users = run
    if not os.path.isdir(os.path.join(out, "timeline")):
        pytest.skip("the pipeline writes no timeline/ yet (issue #14)")
    timeline = rows(os.path.join(out, "timeline"))
    retracted = {r["tweet_id"] for r in timeline if r["retracted"]}
    live = {r["tweet_id"] for r in timeline if not r["retracted"]} - retracted
    # the world's truth: tweets deleted, and tweets withdrawn (withheld in JP, edited away)
    gone = {r["tweet_id"] for name in ("deleted.jsonl", "withdrawn.jsonl")
            for r in rows(os.path.join(world, "truth", name))}
    shown = set()
    for user in users:
        client = sign_in_with(server.url, "subscriber", user, owned_key(user)[0])
        shown |= set(re.findall(r'<li id="t([^"]+)"', client.get(f"/u/{user}/near").text))
    assert shown, "some subscriber must see tweets near them"
    assert shown <= live
    assert not shown & gone


def test_a_settings_change_made_in_the_portal_reaches_the_next_batch_run(run, tmp_path):
    """Alerts off in the portal -> the portal's signed record, appended to the users file
    (``--registry-out``), is the latest state the next batch run uses: that user gets no
    alert, everyone else the same as before; without the portal's key the change is a dead
    letter and changes nothing."""
    import shutil
    server, world, out, _users = run
    kept = apply_retractions(Alert(r["alert_id"], r["user_id"], r["tweet_id"], parse_rfc3339(r["ts"]),
                                   r["distance_m"], r["reason"]) for r in rows(os.path.join(out, "alerts")))
    user = sorted({a.user_id for a in kept})[0]
    client = sign_in_with(server.url, "subscriber", user, owned_key(user)[0])
    page = client.get(f"/u/{user}/settings").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post(f"/u/{user}/settings", data={"csrf": csrf}).status_code == 303   # alerts off, stats in
    changes = [line for line in open(os.path.join(server.root, "registry.jsonl")) if json.loads(line)["user_id"] == user]
    assert len(changes) == 1 and json.loads(changes[0])["alerts_opt_in"] is False
    changed = str(tmp_path / "world")
    shutil.copytree(world, changed)
    with open(os.path.join(changed, "users.jsonl"), "a") as handle:
        handle.write(changes[0])
    pubkey = server.loaded["registry_signing_pubkey"]
    for name, extra in (("with_key", ["--registry_portal_pubkey", pubkey]), ("without_key", [])):
        again = str(tmp_path / name)
        subprocess.run([sys.executable, "-m", "pipelines.run", "--input", changed, "--output", again, *extra],
                       cwd=REPO, check=True, capture_output=True, timeout=900)
        now = sorted(a.alert_id for a in apply_retractions(
            Alert(r["alert_id"], r["user_id"], r["tweet_id"], parse_rfc3339(r["ts"]), r["distance_m"], r["reason"])
            for r in rows(os.path.join(again, "alerts"))))
        before = sorted(a.alert_id for a in kept if a.user_id != user or name == "without_key")
        assert now == before, name
        dead = [d for d in rows(os.path.join(again, "deadletter")) if d["raw"] == changes[0].strip()]
        assert len(dead) == (0 if name == "with_key" else 1), name

"""The command lines (``python -m portal``, ``python -m nfc_gateway login``) and the store's
retraction rules as properties."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from hypothesis import given, settings, strategies as st

from portal.store import Store
from tests.portal import world
from tests.portal.conftest import REPO, form_fields


def run(*args, **kw):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, **kw)


def test_help_and_bad_arguments_exit_2_with_one_line():
    assert run("-m", "portal", "--help").returncode == 0
    bad = run("-m", "portal", "serve", "--output", "/nonexistent/out", "--port", "0")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--output" in bad.stderr


def test_nfc_gateway_login_prints_a_link_that_signs_the_phone_in(portal, tmp_path):
    import base64
    key_file = tmp_path / "alice.key"
    key_file.write_text(base64.b64encode(world.SEEDS[world.ALICE]).decode() + "\n")
    out = run("-m", "nfc_gateway", "login", "--portal", portal.url, "--user-id", world.ALICE, "--key", str(key_file))
    assert out.returncode == 0, out.stderr
    link = out.stdout.strip()
    client = portal.client()
    page = client.get(link.replace(portal.url, ""))
    assert client.post("/auth/signin", data=form_fields(page.text)).headers["location"] == "/u/1001/near"
    refused = run("-m", "nfc_gateway", "login", "--portal", "http://127.0.0.1:9", "--user-id", "1001",
                  "--key", str(key_file))
    assert refused.returncode == 2 and "no sign-in challenge" in refused.stderr


def test_marketer_key_and_login(portal, tmp_path):
    marketers = tmp_path / "marketers.json"
    made = run("-m", "portal", "marketer-key", "--name", "newco", "--key-out", str(tmp_path / "newco.key"),
               "--marketers", str(marketers))
    assert made.returncode == 0 and json.loads(marketers.read_text())["newco"] == json.loads(made.stdout)["pubkey"]
    assert oct(os.stat(tmp_path / "newco.key").st_mode & 0o777) == "0o600"
    again = run("-m", "portal", "marketer-key", "--name", "newco", "--key-out", str(tmp_path / "newco.key"),
                "--marketers", str(marketers))
    assert again.returncode == 2
    # the running portal does not know newco: its link is refused; acme's own works
    link = run("-m", "portal", "login", "--portal", portal.url, "--name", "newco", "--key", str(tmp_path / "newco.key"))
    client = portal.client()
    page = client.get(link.stdout.strip().replace(portal.url, ""))
    assert client.post("/auth/signin", data=form_fields(page.text)).status_code == 401


def test_portal_key_makes_the_key_that_signs_settings_changes_and_prints_what_checks_them(tmp_path):
    from core.registry import change_problem
    from portal.__main__ import read_seed_key
    from portal.registry import RegistryWriter
    from schemas.parse import parse_line
    made = run("-m", "portal", "portal-key", "--key-out", str(tmp_path / "portal.key"))
    assert made.returncode == 0, made.stderr
    pubkey = json.loads(made.stdout)["registry_signing_pubkey"]
    assert oct(os.stat(tmp_path / "portal.key").st_mode & 0o777) == "0o600"
    key, same = read_seed_key(str(tmp_path / "portal.key"))
    assert same == pubkey
    from schemas.records import User
    alice = User(world.ALICE, world.pubkey(world.ALICE), True, False, "20-29")
    change = parse_line("users", json.dumps(RegistryWriter(key).record(alice)))
    assert change_problem(change, pubkey) is None
    assert "does not verify" in change_problem(change, world.pubkey(world.ALICE))
    again = run("-m", "portal", "portal-key", "--key-out", str(tmp_path / "portal.key"))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def timeline_row(tweet_id, retracted):
    return json.dumps(world.tl(tweet_id, f"text {tweet_id}", world.SHIBUYA, world.NOW - int(tweet_id),
                               retracted=retracted))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 8), st.booleans()), max_size=25), st.randoms(use_true_random=False),
       st.integers(1, 5))
def test_a_retracted_tweet_or_alert_never_shows_whatever_the_order_and_batching(events, rnd, batch):
    """Rows and retractions in any order, in batches of any size (a replayed topic): what is shown
    is exactly the rows whose id was never retracted."""
    lines = [timeline_row(str(i), r) for i, r in events]
    alerts = [json.dumps({"alert_id": f"x{i}", "user_id": "1001", "tweet_id": str(i), "ts": "2026-11-20T08:00:00Z",
                          "distance_m": 1.0, "reason": "retract:tweet_deleted" if r else "nearby:concert:c"})
              for i, r in events]
    rnd.shuffle(lines)
    rnd.shuffle(alerts)
    store = Store()
    for start in range(0, len(lines), batch):
        store.load_lines("timeline", lines[start:start + batch])
        store.load_lines("alerts", alerts[start:start + batch])
    retracted = {i for i, r in events if r}
    expected = {str(i) for i, r in events if i not in retracted}
    assert {t for (t,) in store.query("SELECT tweet_id FROM timeline")} == expected
    assert {a for (a,) in store.query("SELECT alert_id FROM alerts")} == {f"x{i}" for i in expected}


def test_bad_lines_are_counted_with_their_folder_not_dropped_silently():
    store = Store()
    applied = store.load_lines("timeline", ["not json", json.dumps({"tweet_id": "1"}),
                                            json.dumps({**json.loads(timeline_row("5", False)), "h3_cell": "zz"}),
                                            timeline_row("6", False)])
    assert applied == 1 and store.rejected == {"timeline": 3}

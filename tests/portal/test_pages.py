"""The portal's pages on the hand-made run (tests/portal/world.py), over HTTP on a real server:
each page shows exactly what the outputs say, and every subscriber page keeps the i-mode rule
(no script, under 20 KB)."""
from __future__ import annotations

import csv
import io
import re

import pyarrow.parquet as pq
import pytest

from portal.app import PAGE_BUDGET_BYTES
from tests.portal import world

SUBSCRIBER_PAGES = ("near", "alerts", "friends", "settings")


def ids(html: str, prefix: str) -> list[str]:
    return re.findall(rf'<li id="{prefix}([^"]+)"', html)


@pytest.fixture(scope="module")
def alice(portal):
    return portal.sign_in(world.ALICE)


@pytest.fixture(scope="module")
def marketer(portal):
    return portal.sign_in(world.MARKETER, "marketer")


def test_near_you_lists_the_live_nearby_recent_tweets_newest_first(alice):
    page = alice.get("/u/1001/near").text
    assert ids(page, "t") == world.LIVE_NEAR_ALICE          # not the deleted, far or old ones
    assert "this tweet was deleted" not in page
    assert "できごと: concert" in page                       # the happening is marked
    assert f"エリア {world.cell(world.SHIBUYA)}" in page


def test_keyword_search_stays_in_the_area(alice):
    assert ids(alice.get("/u/1001/near", params={"q": "ライブ"}).text, "t") == ["9001"]
    assert ids(alice.get("/u/1001/near", params={"q": "パンダ"}).text, "t") == []     # Ueno is not near
    assert ids(alice.get("/u/1001/near", params={"q": "deleted"}).text, "t") == []


def test_a_subscriber_without_a_recent_location_is_told_so(portal):
    carol = portal.sign_in(world.CAROL)
    page = carol.get("/u/1003/near").text
    assert "現在地がわかりません" in page and ids(page, "t") == []


def test_alerts_show_text_distance_and_time_without_the_retracted_one(alice):
    page = alice.get("/u/1001/alerts").text
    assert ids(page, "a") == ["a1"]
    assert "渋谷でライブ始まった" in page and "42 m" in page and "11/20 17:50" in page


def test_friends_show_the_cell_and_time_never_coordinates(alice):
    page = alice.get("/u/1001/friends").text
    assert ids(page, "f") == [world.BOB]
    assert world.FOLLOW_CELL in page and "11/20 17:10" in page
    assert "35.65" not in page and "139.70" not in page


def test_english_is_available_and_kept_in_links(alice):
    page = alice.get("/u/1001/alerts", params={"lang": "en"}).text
    assert "Your alerts" in page and 'href="/u/1001/near?lang=en"' in page and '<html lang="en">' in page


@pytest.mark.parametrize("name", SUBSCRIBER_PAGES)
@pytest.mark.parametrize("lang", ("ja", "en"))
def test_every_subscriber_page_is_light_and_scriptless(alice, name, lang):
    reply = alice.get(f"/u/1001/{name}", params={"lang": lang})
    assert reply.status_code == 200
    assert len(reply.content) < PAGE_BUDGET_BYTES
    assert "<script" not in reply.text.lower() and " on" not in re.sub(r">[^<]*<", "><", reply.text).lower()
    assert "script-src" not in reply.headers["content-security-policy"]     # default-src 'none': no script runs


def test_settings_change_is_saved_signed_and_shown(portal, alice):
    from schemas.signin import verify_registry_change
    import json
    page = alice.get("/u/1001/settings").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    reply = alice.post("/u/1001/settings", data={"csrf": csrf, "stats_opt_out": "1"})   # alerts off, leave stats
    assert reply.status_code == 303 and reply.headers["location"] == "/u/1001/settings?saved=1"
    page = alice.get("/u/1001/settings?saved=1").text
    assert 'name="alerts_opt_in" value="1">' in page and 'name="stats_opt_out" value="1" checked>' in page
    with open(f"{portal.root}/registry.jsonl") as handle:
        record = json.loads(handle.readlines()[-1])
    assert {k: record[k] for k in ("user_id", "alerts_opt_in", "stats_opt_out", "pubkey", "age_band")} == \
        {"user_id": "1001", "alerts_opt_in": False, "stats_opt_out": True, "pubkey": world.pubkey(world.ALICE),
         "age_band": "20-29"}
    assert verify_registry_change(portal.loaded["registry_signing_pubkey"], record)
    assert not verify_registry_change(portal.loaded["registry_signing_pubkey"], {**record, "stats_opt_out": False})
    assert not verify_registry_change(world.pubkey(world.ALICE), record)     # signed by the portal, not anyone
    # restore for the other tests (alerts back on, stats back in)
    alice.post("/u/1001/settings", data={"csrf": csrf, "alerts_opt_in": "1"})


def test_marketer_map_colours_the_release_and_marks_intervals_spanning_zero(marketer):
    page = marketer.get("/m/map").text
    latest = int(world.WINDOWS[-1])
    assert f'<option value="{latest}" selected>' in page
    cells = dict(re.findall(r'class="(zero|sig)" data-cell="([0-9a-f]+)"', page)[i][::-1] for i in range(4))
    assert cells == {world.MAP_CELLS[0]: "sig", world.MAP_CELLS[1]: "zero", world.MAP_CELLS[2]: "sig",
                     world.MAP_CELLS[3]: "sig"}
    assert f"{world.MAP_CELLS[0]}: 150.5 ± 30.0" in page        # the interval on hover
    assert "(1 / 4)" in page


def test_marketer_time_series_and_ledger(marketer):
    page = marketer.get("/m/cell", params={"cell": world.MAP_CELLS[0], "metric": "footfall"}).text
    assert re.findall(r"<td>([-0-9.]+)</td><td>± ([0-9.]+)</td>", page) == [("120.0", "30.0"), ("150.5", "30.0")]
    assert 'class="band"' in page
    ledger = marketer.get("/m/ledger").text
    assert "<td>2026-11-20</td><td>0.5</td><td>1.0</td>" in ledger and 'class="budget"' in ledger


def test_downloads_hold_exactly_what_is_shown(marketer):
    first = int(world.WINDOWS[0])
    text = marketer.get("/m/download.csv", params={"metric": "footfall", "window": first}).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted((r["h3_cell"], float(r["value"])) for r in rows) == \
        sorted((c, world.VALUES[c][0][0]) for c in world.MAP_CELLS)
    blob = marketer.get("/m/download.parquet", params={"metric": "footfall", "cell": world.MAP_CELLS[3]}).content
    table = pq.read_table(io.BytesIO(blob))
    assert table.column("value").to_pylist() == [200.0, 210.0]
    assert set(table.column_names) == {"window_start", "window_end", "h3_cell", "h3_res", "metric", "value",
                                       "mechanism", "noise_scale", "ci95_halfwidth", "epsilon", "delta"}


def test_metrics_count_requests_and_latency(portal, alice):
    from prometheus_client.parser import text_string_to_metric_families
    alice.get("/u/1001/near")
    text = portal.client().get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    near = [s for s in families["portal_requests"].samples
            if s.labels.get("route") == "/u/{user_id}/near" and s.labels.get("status") == "200"]
    assert near and near[0].value >= 1
    assert any(s.name == "portal_request_seconds_count" for s in families["portal_request_seconds"].samples)

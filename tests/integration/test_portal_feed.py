"""The portal's topic feed (``portal/feed.py``) against a real broker: a portal process
(``python -m portal serve --kafka-bootstrap``) over the hand-made run of ``tests/portal/world.py``,
records produced to ``alerts``, ``follows`` and ``timeline`` with ``kafka_client``, and the
subscriber pages read over HTTP as a phone reads them.

The broker may be shared with other tests of the session (``kafka_bootstrap``), so its topics may
hold other records of any event time: every id produced here is new per run, the new follow is
between two users made for this run, and the portal runs on the wall clock (``--clock wall``) with
Alice's location pinged just now, so nobody else's records move "now".

A sync point, never a sleep: the feed reads one partition per topic in order, so once a marker
produced after some messages shows on a page, those messages have been applied.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time

import httpx
import pytest

import kafka_client
from schemas.proofs import new_keypair
from schemas.timefmt import format_rfc3339
from tests.integration.conftest import wait_for
from tests.portal import world
from tests.portal.conftest import sign_in_with, start_portal

pytestmark = pytest.mark.flink

TOPICS = ("alerts", "follows", "timeline")
RUN = random.randrange(10 ** 8)
DAN, ERIN = f"7{RUN:08d}", f"8{RUN:08d}"         # this run's own users: DAN < ERIN, as a follow orders them
NEAR_SHIBUYA = (35.6597, 139.7003)


def run_key(user_id: str):
    return new_keypair(hashlib.sha256(f"portal-feed-test/{user_id}".encode()).digest())


def rid(name: str) -> str:
    """An id no earlier run on this broker used."""
    return f"{name}-{RUN:08d}"


def tweet_id(n: int) -> str:
    return f"9{RUN:08d}{n:02d}"


def alert_row(alert_id: str, user_id: str = world.ALICE, tweet: str = "9001", distance_m: float = 37.0,
              reason: str = "nearby:concert:feedtest") -> dict:
    return {"alert_id": alert_id, "user_id": user_id, "tweet_id": tweet, "ts": format_rfc3339(time.time() - 20),
            "distance_m": distance_m, "reason": reason}


def timeline_row(tweet: str, text: str, at=NEAR_SHIBUYA, retracted: bool = False) -> dict:
    return {"tweet_id": tweet, "author_id": "2001", "ts": format_rfc3339(time.time() - 15), "text": text,
            "lat": at[0], "lng": at[1], "h3_cell": world.cell(at), "happening": None, "retracted": retracted}


def produce(bootstrap: str, topic: str, *messages) -> None:
    """Each message as one record: a dict as JSON, a str as it is (lone surrogates become the raw
    bytes they escape: ``kafka_client`` encodes with surrogateescape)."""
    lines = [m if isinstance(m, str) else json.dumps(m, ensure_ascii=False) for m in messages]
    assert kafka_client.produce_lines(topic, lines, bootstrap, with_event_time=False) == len(lines)


def ids(client: httpx.Client, user: str, page: str, prefix: str) -> list[str]:
    reply = client.get(f"/u/{user}/{page}")
    assert reply.status_code == 200, reply.text[:300]
    return re.findall(rf'<li id="{prefix}([^"]+)"', reply.text)


class Live:
    def __init__(self, server, bootstrap: str):
        self.server, self.bootstrap = server, bootstrap
        self.clients: dict[str, httpx.Client] = {}

    def as_user(self, user: str) -> httpx.Client:
        if user not in self.clients:
            key = run_key(user)[0] if user in (DAN, ERIN) else world.key(user)
            self.clients[user] = sign_in_with(self.server.url, "subscriber", user, key)
        return self.clients[user]

    def rejected(self) -> dict[str, int]:
        reply = httpx.get(self.server.url + "/healthz", timeout=30)
        assert reply.status_code == 200
        return reply.json()["rejected"]

    def eventually(self, predicate, what: str, timeout: float = 10.0):
        """wait_for, naming the portal's log tail on a timeout (a dead feed logs why)."""
        try:
            return wait_for(predicate, timeout, what, interval=0.25)
        except AssertionError as exc:
            with open(os.path.join(self.server.root, "portal.log"), encoding="utf-8", errors="replace") as handle:
                raise AssertionError(f"{exc}\nportal.log:\n{handle.read()[-3000:]}") from None


def live_portal(root: str, bootstrap: str) -> Live:
    """A portal following the broker's topics over the hand-made run (plus this run's users, and
    pings just now: Alice in Shibuya, Bob in Ueno) under ``root``."""
    world_dir, out = world.build(root)
    with open(os.path.join(world_dir, "users.jsonl"), "a", encoding="utf-8") as handle:
        for user in (DAN, ERIN):
            handle.write(json.dumps({"user_id": user, "pubkey": run_key(user)[1], "alerts_opt_in": True,
                                     "stats_opt_out": False, "age_band": "30-39"}) + "\n")
    with open(os.path.join(world_dir, "pings.jsonl"), "a", encoding="utf-8") as handle:
        for user, (lat, lng) in ((world.ALICE, world.SHIBUYA), (world.BOB, world.UENO)):
            handle.write(json.dumps({"user_id": user, "ts": format_rfc3339(time.time() - 5), "lat": lat, "lng": lng,
                                     "accuracy_m": 10.0, "source": "gps"}) + "\n")
    server = start_portal(root, out, world_dir, "--kafka-bootstrap", bootstrap, "--clock", "wall")
    return Live(server, bootstrap)


def stop(live: Live) -> None:
    for client in live.clients.values():
        client.close()
    live.server.proc.terminate()
    live.server.proc.wait(30)


@pytest.fixture(scope="module")
def live(kafka_bootstrap, tmp_path_factory):
    kafka_client.create_topics(TOPICS, kafka_bootstrap)
    portal = live_portal(str(tmp_path_factory.mktemp("portal-feed")), kafka_bootstrap)
    yield portal
    stop(portal)


def test_an_alert_shows_its_retraction_removes_it_and_a_replay_does_not_bring_it_back(live):
    alice, alert_id = live.as_user(world.ALICE), rid("a1")
    assert alert_id not in ids(alice, world.ALICE, "alerts", "a")
    produce(live.bootstrap, "alerts", alert_row(alert_id))
    live.eventually(lambda: alert_id in ids(alice, world.ALICE, "alerts", "a"), "the new alert on Alice's alerts page")
    page = alice.get("/u/1001/alerts").text
    assert "37 m" in page and "nearby:concert:feedtest" in page and "渋谷でライブ始まった" in page
    assert alert_id not in ids(live.as_user(world.BOB), world.BOB, "alerts", "a")      # only its subscriber's

    produce(live.bootstrap, "alerts", alert_row(alert_id, reason="retract:tweet_deleted"))
    live.eventually(lambda: alert_id not in ids(alice, world.ALICE, "alerts", "a"), "the retracted alert to go")
    assert "a1" in ids(alice, world.ALICE, "alerts", "a")                                # the run's own alert stays

    # The alert's message again (a replayed topic, a re-sent record), then a marker after it.
    marker = rid("a2")
    produce(live.bootstrap, "alerts", alert_row(alert_id), alert_row(marker, distance_m=55.0))
    live.eventually(lambda: marker in ids(alice, world.ALICE, "alerts", "a"), "the marker alert after the replay")
    assert alert_id not in ids(alice, world.ALICE, "alerts", "a")


def test_a_follow_shows_on_both_users_friends_pages_with_its_cell_never_coordinates(live):
    dan, erin = live.as_user(DAN), live.as_user(ERIN)
    assert ids(dan, DAN, "friends", "f") == [] and ids(erin, ERIN, "friends", "f") == []
    follow_cell = world.cell(world.UENO, 9)
    produce(live.bootstrap, "follows", {"user_a": DAN, "user_b": ERIN, "established_at": format_rfc3339(time.time() - 30),
                                        "nonce": "cd" * 16, "h3_cell": follow_cell,
                                        "lat": world.UENO[0], "lng": world.UENO[1]})   # extra fields: never shown
    live.eventually(lambda: ids(dan, DAN, "friends", "f") == [ERIN], "Erin on Dan's friends page")
    live.eventually(lambda: ids(erin, ERIN, "friends", "f") == [DAN], "Dan on Erin's friends page")
    for user, client in ((DAN, dan), (ERIN, erin)):
        page = client.get(f"/u/{user}/friends").text
        assert follow_cell in page
        assert "35.71" not in page and "139.77" not in page, page
    assert ERIN not in ids(live.as_user(world.ALICE), world.ALICE, "friends", "f")


def test_a_timeline_entry_shows_near_its_area_and_its_retraction_removes_it(live):
    alice, bob = live.as_user(world.ALICE), live.as_user(world.BOB)
    near, far = tweet_id(1), tweet_id(2)
    produce(live.bootstrap, "timeline", timeline_row(near, "センター街で号外配布中"),
            timeline_row(far, "不忍池の花火", at=world.UENO))
    live.eventually(lambda: near in ids(alice, world.ALICE, "near", "t"), "the new tweet on Alice's near-you page")
    live.eventually(lambda: far in ids(bob, world.BOB, "near", "t"), "the Ueno tweet on Bob's near-you page")
    assert "センター街で号外配布中" in alice.get("/u/1001/near").text
    assert far not in ids(alice, world.ALICE, "near", "t")             # Ueno is not near Alice (Shibuya)
    assert near not in ids(bob, world.BOB, "near", "t")                # nor Shibuya near Bob (Ueno)

    produce(live.bootstrap, "timeline", timeline_row(near, "センター街で号外配布中", retracted=True))
    live.eventually(lambda: near not in ids(alice, world.ALICE, "near", "t"), "the retracted tweet to go")
    assert "センター街で号外配布中" not in alice.get("/u/1001/near").text
    assert far in ids(bob, world.BOB, "near", "t")                     # only the retracted entry went


# Lines the feed must count as refused and step over, each kind's own plus some for every topic:
# not JSON, bytes that are not UTF-8, JSON of the wrong shape, nesting too deep for the parser, and a
# lone surrogate (a JSON escape that decodes, but is no UTF-8 text to store).
def malformed(kind: str) -> list[str]:
    common = ["{not json", "\udcff\udcfe\udc80", "[]", "null", "[" * 100_000]
    surrogate = {"alerts": json.dumps(alert_row(rid("bad"), reason="nearby:\ud800")),
                 "follows": json.dumps({"user_a": DAN, "user_b": ERIN, "established_at": format_rfc3339(time.time()),
                                        "nonce": "\ud800", "h3_cell": world.cell(world.UENO, 9)}),
                 "timeline": json.dumps(timeline_row(tweet_id(9), "\ud800"))}[kind]
    wrong = {"alerts": json.dumps({**alert_row(rid("bad2")), "ts": "yesterday"}),
             "follows": json.dumps({"user_a": ERIN, "user_b": DAN, "established_at": format_rfc3339(time.time()),
                                    "nonce": "ef" * 16, "h3_cell": world.cell(world.UENO, 9)}),     # not ordered
             "timeline": json.dumps({**timeline_row(tweet_id(8), "x"), "h3_cell": "not-a-cell"})}[kind]
    return common + [surrogate, wrong]


def test_malformed_messages_on_every_topic_are_counted_and_the_feed_goes_on(live):
    alice, dan = live.as_user(world.ALICE), live.as_user(DAN)
    pair = f"6{RUN:08d}"                         # below DAN: a follow (pair, DAN) for each marker
    markers = {
        "alerts": lambda n: (alert_row(rid(f"m{n}")),
                             lambda: rid(f"m{n}") in ids(alice, world.ALICE, "alerts", "a")),
        "follows": lambda n: ({"user_a": f"{pair[:-1]}{n}", "user_b": DAN, "nonce": "01" * 16,
                               "established_at": format_rfc3339(time.time() - 10), "h3_cell": world.cell(world.UENO, 9)},
                              lambda: f"{pair[:-1]}{n}" in ids(dan, DAN, "friends", "f")),
        "timeline": lambda n: (timeline_row(tweet_id(10 + n), f"marker {n}"),
                               lambda: tweet_id(10 + n) in ids(alice, world.ALICE, "near", "t")),
    }
    for kind in TOPICS:
        # A marker first: every earlier message of the topic is applied once it shows.
        row, shown = markers[kind](1)
        produce(live.bootstrap, kind, row)
        live.eventually(shown, f"the first {kind} marker")
        before = live.rejected().get(kind, 0)
        bad = malformed(kind)
        row, shown = markers[kind](2)
        produce(live.bootstrap, kind, *bad, row)
        live.eventually(shown, f"the {kind} marker after {len(bad)} malformed messages (a dead feed never shows it)")
        assert live.rejected().get(kind, 0) - before == len(bad), (kind, live.rejected())
    # and the feed still applies every topic after all of them
    for kind in TOPICS:
        row, shown = markers[kind](3)
        produce(live.bootstrap, kind, row)
        live.eventually(shown, f"the last {kind} marker")


def test_a_restarted_portal_replays_the_topics_without_the_retracted_rows(live, tmp_path_factory):
    gone_alert, kept_alert, gone_tweet, kept_tweet = rid("r1"), rid("r2"), tweet_id(20), tweet_id(21)
    produce(live.bootstrap, "timeline", timeline_row(gone_tweet, "消える"), timeline_row(kept_tweet, "残る"),
            timeline_row(gone_tweet, "消える", retracted=True))
    produce(live.bootstrap, "alerts", alert_row(gone_alert), alert_row(gone_alert, reason="retract:tweet_deleted"),
            alert_row(kept_alert))
    second = live_portal(str(tmp_path_factory.mktemp("portal-feed-replay")), live.bootstrap)
    try:
        alice = second.as_user(world.ALICE)
        second.eventually(lambda: kept_alert in ids(alice, world.ALICE, "alerts", "a"), "the replayed alert")
        second.eventually(lambda: kept_tweet in ids(alice, world.ALICE, "near", "t"), "the replayed tweet")
        assert gone_alert not in ids(alice, world.ALICE, "alerts", "a")
        assert gone_tweet not in ids(alice, world.ALICE, "near", "t")
        assert rid("a1") not in ids(alice, world.ALICE, "alerts", "a")       # retracted in the first test, if run
    finally:
        stop(second)

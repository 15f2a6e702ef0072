"""Every access that is not the signed-in owner's own is refused: another user's pages, an
expired, forged or altered session, a replayed or expired challenge, a signature by the wrong
key, a missing or wrong CSRF token; and nothing per user ever reaches a marketer."""
from __future__ import annotations

import io
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from portal.auth import SESSION_COOKIE, Authority, Signer
from schemas.signin import sign_signin, signin_url
from tests.portal import world
from tests.portal.conftest import form_fields

PAGES = ("near", "alerts", "friends", "settings")


def signin_form(portal, client, link):
    page = client.get(link.replace(portal.url, ""))
    return form_fields(page.text)


@pytest.mark.parametrize("page", PAGES)
def test_another_users_pages_are_refused(portal, page):
    alice = portal.sign_in(world.ALICE)
    reply = alice.get(f"/u/{world.BOB}/{page}")
    assert reply.status_code == 403 and "1002" not in reply.text.replace("/u/1002", "")


@pytest.mark.parametrize("page", PAGES)
def test_pages_without_a_session_are_refused(portal, page):
    assert portal.client().get(f"/u/{world.ALICE}/{page}").status_code == 401


def test_a_session_cookie_altered_to_another_user_is_refused(portal):
    alice = portal.sign_in(world.ALICE)
    token = alice.cookies[SESSION_COOKIE]
    role, account, expires, nonce, mac = token.split(".")
    forged = ".".join((role, world.BOB, expires, nonce, mac))
    later = ".".join((role, account, str(int(expires) + 10 ** 6), nonce, mac))
    for bad in (forged, later, token[:-2] + "AA", "", "x" * 600):
        client = portal.client()
        client.cookies.set(SESSION_COOKIE, bad)
        assert client.get(f"/u/{world.BOB}/alerts").status_code == 401
        assert client.get(f"/u/{world.ALICE}/alerts").status_code in (401, 403)


def test_a_subscriber_session_cannot_open_marketer_pages_nor_the_reverse(portal):
    alice = portal.sign_in(world.ALICE)
    for path in ("/m/map", "/m/ledger", "/m/download.csv", "/m/download.parquet", "/m/about"):
        assert alice.get(path).status_code == 403
    marketer = portal.sign_in(world.MARKETER, "marketer")
    assert marketer.get(f"/u/{world.ALICE}/near").status_code == 403
    assert portal.client().get("/m/map").status_code == 401


def test_a_replayed_sign_in_link_is_refused(portal):
    link = portal.signin_link(world.ALICE)
    first, second = portal.client(), portal.client()
    form1, form2 = signin_form(portal, first, link), signin_form(portal, second, link)
    assert first.post("/auth/signin", data=form1).status_code == 303
    replay = second.post("/auth/signin", data=form2)
    assert replay.status_code == 401 and "challenge_replayed" in replay.text
    assert SESSION_COOKIE not in second.cookies


def test_a_challenge_signed_by_another_key_or_for_another_user_is_refused(portal):
    client = portal.client()
    challenge = client.get("/auth/challenge", params={"role": "subscriber", "account": world.ALICE}).json()["challenge"]
    by_bob = signin_url(portal.url, "subscriber", world.ALICE, challenge, world.key(world.BOB))
    reply = client.post("/auth/signin", data=signin_form(portal, client, by_bob))
    assert reply.status_code == 401 and "signature_invalid" in reply.text
    # Alice's own challenge, signed by Bob as Bob: the challenge names Alice
    as_bob = signin_url(portal.url, "subscriber", world.BOB, challenge, world.key(world.BOB))
    reply = client.post("/auth/signin", data=signin_form(portal, client, as_bob))
    assert reply.status_code == 401 and "challenge_forged" in reply.text
    # a marketer key cannot sign in a subscriber role and the reverse
    as_marketer = signin_url(portal.url, "marketer", world.ALICE, challenge, world.key(world.ALICE))
    assert client.post("/auth/signin", data=signin_form(portal, client, as_marketer)).status_code == 401


def test_sign_in_without_the_csrf_token_or_its_cookie_is_refused(portal):
    link = portal.signin_link(world.ALICE)
    client = portal.client()
    form = signin_form(portal, client, link)
    assert client.post("/auth/signin", data={**form, "csrf": "x"}).status_code == 403
    stranger = portal.client()              # a cross-site post carries no pre-session cookie
    assert stranger.post("/auth/signin", data=form).status_code == 403
    assert client.post("/auth/signin", data=form).status_code == 303    # the genuine one still works


def test_settings_without_a_valid_csrf_token_are_refused_and_change_nothing(portal):
    alice = portal.sign_in(world.ALICE)
    before = alice.get("/u/1001/settings").text
    bob = portal.sign_in(world.BOB)
    bobs_csrf = re.search(r'name="csrf" value="([^"]+)"', bob.get("/u/1002/settings").text).group(1)
    for data in ({}, {"csrf": "nope"}, {"csrf": bobs_csrf}):
        assert alice.post("/u/1001/settings", data={**data, "stats_opt_out": "1"}).status_code == 403
    assert bob.post("/u/1001/settings", data={"csrf": bobs_csrf}).status_code == 403
    after = alice.get("/u/1001/settings").text
    strip = lambda html: re.sub(r'value="[^"]{20,}"', "", html)
    assert strip(before) == strip(after)


def test_cookies_are_httponly_and_samesite_strict(portal):
    client = portal.client()
    page = client.get(portal.signin_link(world.ALICE).replace(portal.url, ""))
    reply = client.post("/auth/signin", data=form_fields(page.text))
    for header in [page.headers["set-cookie"], reply.headers["set-cookie"]]:
        assert "HttpOnly" in header and "SameSite=strict" in header.replace("Strict", "strict")


def test_expired_challenge_and_session_are_refused():
    from schemas.proofs import new_keypair
    now = [1_000_000.0]
    key, pub = new_keypair(b"k" * 32)
    auth = Authority(b"s" * 32, {"42": pub}.get, {}, clock=lambda: now[0], session_s=60, challenge_s=30)
    challenge = auth.challenge("subscriber", "42")
    now[0] += 31
    assert auth.sign_in("subscriber", "42", challenge, sign_signin(key, "subscriber", "42", challenge)) == \
        (None, "challenge_expired")
    now[0] -= 31
    token, _ = auth.sign_in("subscriber", "42", challenge, sign_signin(key, "subscriber", "42", challenge))
    assert auth.principal(token).account == "42"
    now[0] += 61
    assert auth.principal(token) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_no_string_but_the_signers_own_tokens_opens(fuzz):
    signer = Signer(b"s" * 32)
    genuine = signer.sign("session", "subscriber", "42", "9999999999", "ab")
    assert signer.open("session", genuine, 4) == ["subscriber", "42", "9999999999", "ab"]
    if fuzz != genuine:
        assert signer.open("session", fuzz, 4) is None
    assert signer.open("csrf", genuine, 4) is None       # labels are domain-separated


COORD = re.compile(r"\b(3[45]\.\d{3,}|13[89]\.\d{3,}|14[01]\.\d{3,})")


def test_no_user_id_pseudonym_or_coordinate_in_any_marketer_page_or_download(portal):
    marketer = portal.sign_in(world.MARKETER, "marketer")
    bodies = []
    for path in ("/m/map", "/m/ledger", "/m/about", f"/m/cell?cell={world.MAP_CELLS[0]}", "/m/download.csv",
                 f"/m/download.csv?cell={world.MAP_CELLS[1]}", f"/m/map?lang=en&window={int(world.WINDOWS[0])}"):
        reply = marketer.get(path)
        assert reply.status_code == 200
        bodies.append(reply.text)
    table = pq.read_table(io.BytesIO(marketer.get("/m/download.parquet").content))
    bodies.append(str(table.to_pylist()))
    for body in bodies:
        for user in (world.ALICE, world.BOB, world.CAROL, "2001"):
            assert not re.search(rf"\b{user}\b", body), user
        assert "user_id" not in body and "pseudonym" not in body and "author" not in body
        assert not COORD.search(body), COORD.search(body)

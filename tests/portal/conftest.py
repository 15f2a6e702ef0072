"""Fixtures of the portal's tests: the hand-made run, a real portal server (uvicorn, a free
port, a subprocess), and a sign-in helper that does what the phone does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from schemas.signin import fetch_signin_link
from tests.portal import world

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class PortalServer:
    def __init__(self, proc, url, root, loaded: dict):
        self.proc, self.url, self.root = proc, url.rstrip("/"), root
        self.loaded = loaded          # the "loaded" event: counts, refusals, the registry signing key

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=30.0)

    def signin_link(self, account: str, role: str = "subscriber") -> str:
        return fetch_signin_link(self.url, role, account, world.key(account))

    def sign_in(self, account: str, role: str = "subscriber") -> httpx.Client:
        """A client holding a session (the hand-made world's keys)."""
        return sign_in_with(self.url, role, account, world.key(account))


def form_fields(html: str) -> dict[str, str]:
    import re
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


def die_with_parent():
    """In the child: SIGTERM when the test or benchmark process dies, however it dies (Linux)."""
    import ctypes
    import signal
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)    # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_portal(root: str, output: str, world_dir: str | None, *extra: str) -> PortalServer:
    args = [sys.executable, "-m", "portal", "serve", "--output", output, "--port", "0",
            "--marketers", os.path.join(root, "marketers.json"), "--registry-out", os.path.join(root, "registry.jsonl"),
            *extra]
    if world_dir:
        args += ["--input", world_dir]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=open(os.path.join(root, "portal.log"), "w"),
                            text=True, preexec_fn=die_with_parent)
    deadline, loaded = time.monotonic() + 120, {}
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"portal exited: {open(os.path.join(root, 'portal.log')).read()[-2000:]}")
        event = json.loads(line)
        if event.get("event") == "loaded":
            loaded = event
        if event.get("event") == "serving":
            return PortalServer(proc, event["url"], root, loaded)
    proc.kill()
    raise TimeoutError("the portal did not start in 120 s")


@pytest.fixture(scope="session")
def portal(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("portal"))
    world_dir, out = world.build(root)
    server = start_portal(root, out, world_dir)
    yield server
    server.proc.terminate()
    server.proc.wait(30)


def owned_key(user_id: str):
    """A key pair the tests and the benchmark own for a generated user (the generator keeps no
    private keys): (private key, base64 public key)."""
    import hashlib
    from schemas.proofs import new_keypair
    return new_keypair(hashlib.sha256(f"portal-tests/{user_id}".encode()).digest())


def rekeyed_world(world_dir: str, dest: str) -> list[str]:
    """A portal input folder at ``dest``: the world's users with ``owned_key`` public keys, its
    pings linked as they are. Returns the user ids."""
    os.makedirs(dest, exist_ok=True)
    users = []
    with open(os.path.join(world_dir, "users.jsonl")) as src, open(os.path.join(dest, "users.jsonl"), "w") as dst:
        for line in src:
            row = json.loads(line)
            row["pubkey"] = owned_key(row["user_id"])[1]
            users.append(row["user_id"])
            dst.write(json.dumps(row) + "\n")
    os.symlink(os.path.abspath(os.path.join(world_dir, "pings.jsonl")), os.path.join(dest, "pings.jsonl"))
    return users


def sign_in_with(url: str, role: str, account: str, key) -> httpx.Client:
    """A client signed in at ``url`` as a browser does it: the signed link, then its form."""
    client = httpx.Client(base_url=url, follow_redirects=False, timeout=60.0)
    page = client.get(fetch_signin_link(url, role, account, key).replace(url, ""))
    reply = client.post("/auth/signin", data=form_fields(page.text))
    if reply.status_code != 303:
        raise AssertionError(f"sign-in of {role} {account} refused: {reply.status_code} {reply.text[:300]}")
    return client

"""Command line of the portal: ``python -m portal {serve,marketer-key,login} …``.

* ``serve``        -- the subscribers' pages and the marketers' view over a run's outputs
  (``--output``) and its world's users and pings (``--input``); with ``--kafka-bootstrap`` the
  store follows the result topics and settings changes go to the ``users`` topic.
* ``marketer-key`` -- a new Ed25519 key for a marketer (private key file + the public key
  added to the marketers file that ``serve --marketers`` reads).
* ``login``        -- prints a marketer's sign-in link (subscribers use
  ``python -m nfc_gateway login`` on the phone).

Exit status 0 on success; 2 with a one-line reason on stderr for a bad argument or an
unreadable input.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import socket
import sys


class ConfigError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m portal", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the portal over a run's outputs")
    serve.add_argument("--output", default="out", help="the run's output folder (follows/ alerts/ timeline/ marketing/ privacy_ledger/)")
    serve.add_argument("--input", help="the world folder: users.jsonl (keys, settings) and pings.jsonl (locations)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8088, help="0 picks a free port; the URL is printed on stdout. /metrics is served here")
    serve.add_argument("--marketers", help="JSON file {marketer name: base64 Ed25519 public key} (marketer-key writes it)")
    serve.add_argument("--secret-file", help="file with the HMAC secret for sessions (>= 32 bytes); default: a new one "
                                             "per start (everyone signs in again after a restart)")
    serve.add_argument("--portal-key", help="file with base64 of the portal's Ed25519 seed, signing registry changes "
                                            "(default: a new key per start, printed)")
    serve.add_argument("--registry-out", help="append each settings change (a signed users.jsonl record) to this file")
    serve.add_argument("--kafka-bootstrap", help="host:port: follow the follows/alerts/timeline topics and write "
                                                 "settings changes to the users topic")
    serve.add_argument("--users-topic", default="users")
    serve.add_argument("--clock", choices=("data", "wall"), default="data",
                       help="'now' for 'near you' and locations: the latest event time seen (a replayed world) or the wall clock")
    serve.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (serve behind https)")
    serve.add_argument("--db", default=":memory:", help="DuckDB database file for the store (default in memory)")

    pkey = sub.add_parser("portal-key", help="create the portal's key pair, which signs subscribers' settings "
                                             "changes; prints the public key the pipeline checks them with "
                                             "(pipelines.run --registry_portal_pubkey)")
    pkey.add_argument("--key-out", required=True, help="private key file to create (mode 0600; never overwritten); "
                                                       "serve --portal-key reads it")

    mkey = sub.add_parser("marketer-key", help="create a marketer's key pair")
    mkey.add_argument("--name", required=True, help="the marketer's account name ([a-z0-9_-], up to 64)")
    mkey.add_argument("--key-out", required=True, help="private key file to create (mode 0600; never overwritten)")
    mkey.add_argument("--marketers", required=True, help="the marketers JSON file to add the public key to")

    login = sub.add_parser("login", help="print a marketer's sign-in link")
    login.add_argument("--portal", required=True, help="the portal's base URL, e.g. http://127.0.0.1:8088")
    login.add_argument("--name", required=True, help="the marketer's account name")
    login.add_argument("--key", required=True, help="the marketer's private key file")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return {"serve": _serve, "portal-key": _portal_key, "marketer-key": _marketer_key,
                "login": _login}[args.command](args)
    except ConfigError as exc:
        print(f"portal {args.command}: {exc}", file=sys.stderr)
        return 2


def read_seed_key(path: str):
    """An Ed25519 key pair from a file of base64 of its 32-byte seed (the gateway's key format)."""
    from schemas.proofs import read_keypair_file
    try:
        return read_keypair_file(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_marketers(path: str | None) -> dict[str, str]:
    from portal.auth import ACCOUNT_RE
    from schemas.errors import InvalidRecord
    from schemas.proofs import decode_pubkey
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            marketers = json.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read --marketers {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--marketers {path}: not JSON ({exc})") from None
    if not isinstance(marketers, dict):
        raise ConfigError(f"--marketers {path}: expected an object {{name: pubkey}}")
    for name, pubkey in marketers.items():
        if not ACCOUNT_RE["marketer"].fullmatch(name):
            raise ConfigError(f"--marketers {path}: name {name!r} is not [a-z0-9_-]{{1,64}}")
        try:
            decode_pubkey(pubkey)
        except InvalidRecord as exc:
            raise ConfigError(f"--marketers {path}: {name}: {exc}") from None
    return marketers


def build_portal(args):
    """(the ASGI app, the store, the feed or None) from serve's arguments."""
    from portal.app import Portal
    from portal.auth import Authority
    from portal.registry import RegistryWriter
    from portal.store import Store
    from schemas.proofs import new_keypair

    if not os.path.isdir(args.output):
        raise ConfigError(f"--output {args.output}: not a folder (run python -m pipelines.run first)")
    if args.input and not os.path.isdir(args.input):
        raise ConfigError(f"--input {args.input}: not a folder")
    marketers = load_marketers(args.marketers)
    if args.secret_file:
        try:
            secret = open(args.secret_file, "rb").read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --secret-file: {exc.strerror or exc}") from None
        if len(secret) < 32:
            raise ConfigError("--secret-file must hold at least 32 bytes")
    else:
        secret = secrets.token_bytes(32)
    key, pubkey = read_seed_key(args.portal_key) if args.portal_key else new_keypair()
    store = Store(clock=args.clock, db_path=args.db)
    store.load_run(args.output, args.input)
    authority = Authority(secret, store.pubkey_of, marketers)
    registry = RegistryWriter(key, args.registry_out, args.kafka_bootstrap, args.users_topic)
    portal = Portal(store, authority, registry, secure_cookies=args.secure_cookies)
    feed = None
    if args.kafka_bootstrap:
        from portal.feed import TopicFeed
        feed = TopicFeed(store, args.kafka_bootstrap).start()
    print(json.dumps({"event": "loaded", "loaded": store.loaded, "rejected": store.rejected,
                      "registry_signing_pubkey": pubkey}, sort_keys=True), flush=True)
    return portal, store, feed


def _serve(args) -> int:
    import uvicorn
    portal, _store, feed = build_portal(args)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(2048)       # listening before the URL is printed: early clients wait in the backlog
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host, port = sock.getsockname()[:2]
    print(json.dumps({"event": "serving", "url": f"http://{host}:{port}/"}), flush=True)
    server = uvicorn.Server(uvicorn.Config(portal, log_level="warning", access_log=False, lifespan="off"))
    try:
        server.run(sockets=[sock])
    finally:
        if feed is not None:
            feed.stop()
    return 0


def _new_key_file(path: str) -> str:
    """A new Ed25519 key in ``path`` (base64 of its seed, mode 0600, never overwritten) -> its public key."""
    import base64
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
    from schemas.proofs import new_keypair
    key, pubkey = new_keypair()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; refusing to overwrite a private key") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode() + "\n")
    return pubkey


def _portal_key(args) -> int:
    print(json.dumps({"registry_signing_pubkey": _new_key_file(args.key_out)}))
    return 0


def _marketer_key(args) -> int:
    from portal.auth import ACCOUNT_RE
    if not ACCOUNT_RE["marketer"].fullmatch(args.name):
        raise ConfigError(f"--name {args.name!r} is not [a-z0-9_-]{{1,64}}")
    marketers = load_marketers(args.marketers) if os.path.exists(args.marketers) else {}
    marketers[args.name] = pubkey = _new_key_file(args.key_out)
    with open(args.marketers, "w", encoding="utf-8") as handle:
        json.dump(marketers, handle, indent=2, sort_keys=True)
    print(json.dumps({"name": args.name, "pubkey": pubkey}))
    return 0


def _login(args) -> int:
    from schemas.signin import SigninUnavailable, fetch_signin_link
    key, _ = read_seed_key(args.key)
    try:
        print(fetch_signin_link(args.portal, "marketer", args.name, key))
    except SigninUnavailable as exc:
        raise ConfigError(str(exc)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Keys for the gateway and the agent: who may sign what.

* Public keys (``user_id -> base64 Ed25519 public key``) come from the
  contract's ``users.jsonl`` (optionally ``.gz``) or from a plain JSON object
  ``{"<user_id>": "<pubkey>", …}``; a phone ships the latter for its contacts,
  the gateway reads the former.
* A phone's private key is a file holding base64 of the raw 32-byte Ed25519
  seed (``python -m nfc_gateway keygen`` writes one, mode 0600).
"""
from __future__ import annotations

import base64
import gzip
import json
import os
from pathlib import Path

from schemas.errors import InvalidRecord
from schemas.parse import parse_line
from schemas.proofs import decode_pubkey, new_keypair, read_keypair_file


class KeyStoreError(ValueError):
    """A key file that cannot be used; the message names the file and line."""


def load_public_keys(path: str | os.PathLike) -> dict[str, str]:
    """user_id -> pubkey from users.jsonl[.gz] or a JSON object file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise KeyStoreError(f"cannot read key store {path}: {exc.strerror or exc}") from None
    try:
        whole = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        whole = None  # JSON Lines (or garbage, reported line by line below)
    if isinstance(whole, dict) and "user_id" not in whole:
        keys = {}
        for user_id, pubkey in whole.items():
            _check_key(path, user_id, pubkey)
            keys[user_id] = pubkey
        return keys
    keys = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            user = parse_line("users", line)
        except InvalidRecord as exc:
            raise KeyStoreError(f"{path}:{number}: {exc}") from None
        _check_key(path, user.user_id, user.pubkey, number)
        keys[user.user_id] = user.pubkey
    return keys


def _check_key(path, user_id, pubkey, line: int | None = None):
    where = f"{path}:{line}" if line else str(path)
    if not isinstance(user_id, str) or not user_id.isdigit():
        raise KeyStoreError(f"{where}: user id {user_id!r} is not a Twitter id_str")
    try:
        decode_pubkey(pubkey)
    except InvalidRecord as exc:
        raise KeyStoreError(f"{where}: user {user_id}: {exc}") from None


def load_private_key(path: str | os.PathLike):
    try:
        key, _ = read_keypair_file(path)
    except ValueError as exc:
        raise KeyStoreError(str(exc)) from None
    return key


def write_new_key(path: str | os.PathLike, seed: bytes | None = None) -> str:
    """Create a private key file (0600, refuses to overwrite); returns the base64 public key."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
    key, pubkey = new_keypair(seed)
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(raw).decode("ascii") + "\n")
    return pubkey

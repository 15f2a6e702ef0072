"""Reading input lines from ``.jsonl`` and ``.jsonl.gz`` files, in bounded memory.

The one line reader: batch reads, the streaming replay, the registry snapshot
(:func:`iter_lines`) and the Kafka producers (:func:`read_lines`, the same lines as
text) all use it, so they see the same lines. Engine-neutral: no Beam here.

* The line limit applies while reading (and decompressing): a line over
  ``max_line_bytes`` is never held whole. Its first ``MAX_RAW_KEPT`` bytes are kept
  and the rest skipped to the next newline, so a gzip bomb of one 200 MiB line
  costs its decompression time and ~1 MiB of memory.
* Damage is never silent. A ``.gz`` whose compressed stream ends early (a
  truncated copy), is corrupt mid-way, or is followed by bytes that are not gzip
  gives, after every line it could read, a :class:`DamagedLine` saying so (with
  the incomplete last line, if any, as its raw text). The pipeline turns each
  :class:`DamagedLine` into a dead letter, counted as one line read.
* A UTF-8 byte order mark at the start of a file is dropped; ``\\r\\n`` endings
  are accepted.

:func:`check_input_file` is the launcher's up-front check: a file named ``.gz``
that is not gzip at all is a configuration error (exit 2 with one line).
"""
from __future__ import annotations

import logging
import os
import zlib
from typing import Iterator, NamedTuple

CHUNK = 1 << 16
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
# How much of an over-long or broken line a dead letter keeps (core.conventions.raw_text).
MAX_RAW_KEPT = 64 * 1024


class DamagedLine(NamedTuple):
    """A line that could not be read whole: its first bytes and why."""
    raw: bytes
    error: str


class InputFileError(ValueError):
    """A file that cannot be read as input at all (one line for stderr)."""


def default_max_line_bytes() -> int:
    from schemas.parse import MAX_LINE_BYTES
    return MAX_LINE_BYTES


def check_input_file(path: str) -> None:
    """Raise :class:`InputFileError` if ``path`` (``.gz``) is not gzip data at all."""
    if not path.endswith(".gz"):
        return
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head and head != GZIP_MAGIC:
        raise InputFileError(
            f"{path}: named .gz but not gzip data (it starts with {head.hex()}, not 1f8b); "
            "rename it to .jsonl if it is plain JSON Lines")


class _Damage(Exception):
    pass


def _plain_chunks(handle) -> Iterator[bytes]:
    while True:
        data = handle.read(CHUNK)
        if not data:
            return
        yield data


def _gzip_chunks(handle) -> Iterator[bytes]:
    """Decompressed chunks of a (multi-member) gzip stream, never more than CHUNK at a time."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending, started = b"", False
    while True:
        if not pending:
            pending = handle.read(CHUNK)
            if not pending:
                break
            started = True
        if decompressor.eof:  # the next member, or padding after the last one
            if not pending.strip(b"\x00"):
                pending = b""
                continue
            if not pending.startswith(GZIP_MAGIC[: len(pending)]):
                raise _Damage("bytes after the end of the gzip stream are not gzip data")
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = decompressor.decompress(pending, CHUNK)
        except zlib.error as exc:
            raise _Damage(f"corrupt gzip data ({exc})") from None
        pending = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail
        if out:
            yield out
    if started and not decompressor.eof:
        raise _Damage("the gzip stream ends before its end marker (a truncated file)")


def iter_lines(path: str, max_line_bytes: int | None = None) -> Iterator[bytes | DamagedLine]:
    """Every line of ``path`` as bytes without its line ending, or a :class:`DamagedLine`."""
    limit = default_max_line_bytes() if max_line_bytes is None else max_line_bytes
    name = os.path.basename(path)
    buf = bytearray()
    over = None          # (first bytes, size so far) while inside an over-long line
    number = 0
    first = True

    def finish():
        nonlocal over, number, first
        number += 1
        if over is not None:
            prefix, size = over
            over = None
            return DamagedLine(prefix, f"line {number} of {size} bytes exceeds the {limit}-byte limit "
                                       "(not read whole; its first bytes are kept)")
        line = bytes(buf)
        buf.clear()
        if first:
            first = False
            if line.startswith(UTF8_BOM):
                line = line[len(UTF8_BOM):]
        return line[:-1] if line.endswith(b"\r") else line

    def add(piece: bytes):
        nonlocal over
        if over is not None:
            over = (over[0], over[1] + len(piece))
            return
        buf.extend(piece)
        if len(buf) > limit + 1:  # + 1: a "\r" before the newline
            over = (bytes(buf[:MAX_RAW_KEPT]), len(buf))
            buf.clear()

    with open(path, "rb") as handle:
        chunks = _gzip_chunks(handle) if path.endswith(".gz") else _plain_chunks(handle)
        try:
            for chunk in chunks:
                start = 0
                while True:
                    newline = chunk.find(b"\n", start)
                    if newline < 0:
                        add(chunk[start:])
                        break
                    add(chunk[start:newline])
                    yield finish()
                    start = newline + 1
        except _Damage as exc:
            tail = f"line {number + 1} is incomplete" if (buf or over) else f"after line {number}"
            raw = over[0] if over is not None else bytes(buf[:MAX_RAW_KEPT])
            over = None
            buf.clear()
            yield DamagedLine(raw, f"{name}: {exc}: {tail}; whatever followed is lost")
            return
    if buf or over is not None:
        yield finish()


def read_lines(path: str) -> Iterator[str]:
    """The non-blank lines of a ``.jsonl``/``.jsonl.gz`` file as str (bytes that are not UTF-8
    kept as surrogate escapes, sent back as the same bytes), by :func:`iter_lines`. A line it
    could not read whole (over-long, a damaged ``.gz``) is given as its kept first bytes -- not
    JSON, so the pipeline dead-letters it -- and logged with the reason."""
    for line in iter_lines(path):
        if isinstance(line, DamagedLine):
            logging.getLogger(__name__).warning("%s: %s", path, line.error)
            line = line.raw
        if not line.strip():
            continue
        yield line.decode("utf-8", errors="surrogateescape")

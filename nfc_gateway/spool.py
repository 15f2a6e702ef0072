"""Durable append-only JSON Lines files: nothing is confirmed before it is on disk.

``DurableLog.append(line)`` returns only after the line has been written *and*
fsynced. Concurrent appenders are group-committed: one writer thread writes
every line queued meanwhile and fsyncs once for all of them, so durability
costs one fsync per batch, not per request.

A crash can leave at most an unconfirmed, partly written last line; opening the
file cuts it off (nobody was told it was stored, and the sender retries), so a
reader never sees half a record.
"""
from __future__ import annotations

import json
import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Iterator


def fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_tail(path: Path) -> int:
    """Truncate a partial last line left by a crash; returns the bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as handle:
        # scan back from the end for the last newline, in blocks
        end = size
        block = 64 * 1024
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            handle.seek(start)
            chunk = handle.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                end = start + idx + 1
                break
            pos = start
        else:
            end = 0
        if end == size:
            return 0
        handle.truncate(end)
        handle.flush()
        os.fsync(handle.fileno())
    return size - end


def read_lines(path: Path, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset after the line, line without newline) for each complete line from ``start``."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        handle.seek(start)
        offset = start
        for raw in handle:
            if not raw.endswith(b"\n"):
                return  # an unfinished line belongs to a writer still at work
            offset += len(raw)
            yield offset, raw[:-1]


def write_json_atomic(path: Path, obj) -> None:
    """Replace ``path`` with ``obj`` as JSON so a crash leaves the old or the new file, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class DurableLog:
    """An append-only JSONL file with group-committed fsync."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = repair_tail(self.path)
        existed = self.path.exists()
        self._file = open(self.path, "ab")
        if not existed:
            fsync_dir(self.path.parent)
        self.size = self._file.tell()
        self._queue: list[tuple[bytes, Future]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0
        self.lines = 0
        self._writer = threading.Thread(target=self._write_loop, name=f"spool:{self.path.name}", daemon=True)
        self._writer.start()

    def append(self, line: bytes, timeout: float = 30.0) -> int:
        """Durably append one line (no newline inside); returns the file size after it."""
        if b"\n" in line:
            raise ValueError("a JSONL record cannot contain a newline")
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise OSError("spool is closed")
            self._queue.append((line + b"\n", future))
            self._cond.notify()
        return future.result(timeout)

    def _write_loop(self):
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                batch, self._queue = self._queue, []
            try:
                self._file.write(b"".join(line for line, _ in batch))
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                # The batch may be partly on disk; truncating back keeps the file
                # equal to what was confirmed, and every caller gets the error.
                try:
                    self._file.truncate(self.size)
                    self._file.seek(self.size)
                except OSError:
                    pass
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.size = self._file.tell()
            self.batches += 1
            self.lines += len(batch)
            for _, future in batch:
                future.set_result(self.size)

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._writer.join(timeout=10)
        self._file.close()

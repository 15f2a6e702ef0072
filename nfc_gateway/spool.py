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

import errno
import json
import os
import threading
import time
from concurrent.futures import Future, TimeoutError as FutureTimeout
from pathlib import Path
from typing import Iterator, Optional


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


class SpoolUnavailable(OSError):
    """The spool cannot take a line now (disk full, I/O error, closed); nothing of it is stored."""


def write_all(write, fd: int, data: bytes) -> None:
    """``write(fd, view)`` until all of ``data`` is written (``os.write`` may write less);
    OSError when a write makes no progress."""
    view = memoryview(data)
    while view:
        written = write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


class DurableLog:
    """An append-only JSONL file with group-committed fsync.

    Writes go through ``os.write`` on an ``O_APPEND`` descriptor, never through a
    buffered file object: after a failed write a buffered writer keeps the unwritten
    rest in its buffer and writes it with the *next* batch, so lines reported as
    failed (and retried by their senders) would be stored twice. After any failed
    write or fsync the file is cut back to the confirmed size and fsynced before
    anything else is appended; if even that fails the log refuses appends until a
    repair succeeds (``writable()`` retries it). So a line reported as failed is
    never in the file, and one reported as stored always is.

    ``write`` and ``fsync`` can be replaced to simulate a full or failing disk.
    """

    PROBE_BYTES = 64 * 1024

    def __init__(self, path: str | os.PathLike, write=os.write, fsync=os.fsync, probe_interval_s: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = repair_tail(self.path)
        existed = self.path.exists()
        self._write = write
        self._fsync = fsync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            fsync_dir(self.path.parent)
        self.size = os.fstat(self._fd).st_size
        self._queue: list[tuple[bytes, Future]] = []
        self._cond = threading.Condition()
        self._io = threading.Lock()           # the writer thread and repair/probe never overlap
        self._closed = False
        self.error: Optional[str] = None      # why the last write failed (errno name), until one succeeds
        self._needs_repair = False            # the file may hold bytes past ``size``
        self._probe_interval_s = probe_interval_s
        self._last_probe = 0.0
        self.batches = 0
        self.lines = 0
        self.failed_batches = 0
        self._writer = threading.Thread(target=self._write_loop, name=f"spool:{self.path.name}", daemon=True)
        self._writer.start()

    def append(self, line: bytes, timeout: float = 30.0) -> int:
        """Durably append one line (no newline inside); returns the file size after it.

        Raises ``OSError`` (``SpoolUnavailable``, or the write's own error) when the
        line was not stored, and only then.
        """
        if b"\n" in line:
            raise ValueError("a JSONL record cannot contain a newline")
        future: Future = Future()
        item = (line + b"\n", future)
        with self._cond:
            if self._closed:
                raise SpoolUnavailable("spool is closed")
            self._queue.append(item)
            self._cond.notify()
        try:
            return future.result(timeout)
        except FutureTimeout:
            with self._cond:
                if item in self._queue:       # never handed to the disk: certainly not stored
                    self._queue.remove(item)
                    raise SpoolUnavailable("spool write timed out") from None
            # in flight: its outcome decides, and a failure is cut back before the next write
            return future.result()

    def _write_all(self, data: bytes):
        write_all(self._write, self._fd, data)

    def _repair(self):
        """Cut the file back to the confirmed size (caller holds ``_io``)."""
        os.ftruncate(self._fd, self.size)
        self._fsync(self._fd)
        if os.fstat(self._fd).st_size != self.size:
            raise OSError(errno.EIO, "spool could not be cut back to its confirmed size")
        self._needs_repair = False

    def _write_loop(self):
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                batch, self._queue = self._queue, []
            data = b"".join(line for line, _ in batch)
            with self._io:
                try:
                    if self._needs_repair:
                        self._repair()
                    self._needs_repair = True      # from here on the file may hold part of this batch
                    self._write_all(data)
                    self._fsync(self._fd)
                    self._needs_repair = False
                except OSError as exc:
                    # The batch may be partly on disk, or on disk but not durable (a failed
                    # fsync): cut back so the file equals what was confirmed. If that fails
                    # too, the next write (or a health probe) repairs first.
                    self.failed_batches += 1
                    self.error = _errno_name(exc)
                    try:
                        self._repair()
                    except OSError:
                        pass
                    for _, future in batch:
                        future.set_exception(SpoolUnavailable(exc.errno, f"spool write failed: {self.error}"))
                    continue
                self.size += len(data)
                self.error = None
            self.batches += 1
            self.lines += len(batch)
            for _, future in batch:
                future.set_result(self.size)

    def writable(self) -> bool:
        """Can the spool take lines now? After a failure, re-checks (at most once per
        ``probe_interval_s``): repairs the file, then writes and fsyncs a probe file of
        ``PROBE_BYTES`` beside it, so freed space is noticed without a client's report."""
        if self.error is None and not self._needs_repair:
            return True
        now = time.monotonic()
        if now - self._last_probe < self._probe_interval_s:
            return False
        self._last_probe = now
        probe = self.path.with_name(f".{self.path.name}.probe")
        with self._io:
            try:
                if self._needs_repair:
                    self._repair()
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    data = memoryview(bytes(self.PROBE_BYTES))
                    while data:
                        written = self._write(fd, data)
                        if written <= 0:
                            raise OSError(errno.EIO, "write made no progress")
                        data = data[written:]
                    self._fsync(fd)
                finally:
                    os.close(fd)
                    try:
                        os.unlink(probe)
                    except OSError:
                        pass
            except OSError as exc:
                self.error = _errno_name(exc)
                return False
            self.error = None
        return True

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._writer.join(timeout=10)
        with self._io:
            os.close(self._fd)


def _errno_name(exc: OSError) -> str:
    """A short, path-free name for an I/O error (``ENOSPC``), safe to show to anyone."""
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)

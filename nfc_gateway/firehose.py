"""The firehose connector: Twitter JSON lines in, the pipeline's ``tweets`` input out.

Replays a file (plain or ``.gz``) or stdin (``-``, e.g. piped from the
generator) at a chosen rate, and hands each line on *unchanged* -- v1.1
statuses, v2 objects and compliance ``delete`` notices alike. Validation is
the pipeline's job, where a bad line becomes a dead letter with the raw input;
the gateway only counts lines that are not even JSON objects, so an operator
sees a broken feed early.

Progress is committed per batch (``batch_size`` lines or ``batch_s`` seconds)
after the sink made the batch durable, so a restart resumes exactly after the
last committed line (see ``nfc_gateway.sinks``). Stdin cannot be re-read, so a
restart on stdin continues with whatever the pipe delivers next.
"""
from __future__ import annotations

import errno
import gzip
import itertools
import logging
import os
import queue
import stat
import sys
import threading
import time
from typing import Optional

log = logging.getLogger(__name__)


def _open_source(path: str):
    if path == "-":
        return sys.stdin.buffer
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def source_key(path: str) -> Optional[str]:
    return None if path == "-" else os.path.realpath(path)


class FirehoseReplay:
    def __init__(self, path: str, sink, rate: float = 0.0, batch_size: int = 1000, batch_s: float = 0.05,
                 metrics=None):
        self.path = path
        self.sink = sink
        self.rate = rate
        self.batch_size = batch_size
        self.batch_s = batch_s
        self.metrics = metrics
        self.read = 0
        self.written = 0
        self.not_json = 0
        self.done = threading.Event()
        self.error: Optional[str] = None
        self.write_retries = 0
        self.retry_initial_s = 0.2
        self.retry_max_s = 10.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="firehose", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0):
        self._stop.set()
        self._thread.join(timeout)

    def status(self) -> dict:
        # public on /healthz and /metrics: the kind of source and a path-free error name, never a path
        return {"source": "stdin" if self.path == "-" else "file", "read": self.read, "written": self.written,
                "not_json": self.not_json, "done": self.done.is_set(), "error": self.error,
                "write_retries": self.write_retries}

    def _run(self):
        try:
            self._replay()
        except Exception as exc:  # noqa: BLE001 - reported on /healthz, the HTTP side keeps serving
            log.exception("firehose replay failed")
            self.error = _error_name(exc)
        finally:
            self.done.set()

    def _replay(self):
        key = source_key(self.path)
        offset = self.sink.resume_offset(key) if key else 0
        source = _open_source(self.path)
        try:
            if offset:
                source.seek(offset)
                log.info("firehose %s resumes at byte %d", self.path, offset)
            started = time.monotonic()
            batch: list[bytes] = []
            ends: list[int] = []          # input offset after each line, for exact resumption
            batch_started = time.monotonic()
            sent = 0
            feed = _LineFeed(source, self._stop) if _may_block(source) else _FileFeed(source, self.batch_size)
            stopped = False
            while not stopped and not self._stop.is_set():
                # A live stream may pause for minutes: a partial batch is handed on once it is
                # batch_s old, whether or not another line has come.
                wait = max(0.0, batch_started + self.batch_s - time.monotonic()) if batch else 0.5
                chunk = feed.take(wait)          # the lines there are now; [] if none came in time
                if chunk is None:                # the source is exhausted
                    break
                for raw in chunk:
                    offset += len(raw)
                    line = raw.rstrip(b"\r\n")
                    if not line.strip():
                        continue
                    self.read += 1
                    if not line.lstrip().startswith(b"{"):
                        self.not_json += 1
                    if not batch:
                        batch_started = time.monotonic()
                    batch.append(line)
                    ends.append(offset)
                    sent += 1
                    if self.rate > 0:
                        # pace against the start, so per-line sleeps do not accumulate drift
                        ahead = started + sent / self.rate - time.monotonic()
                        if ahead > 0:
                            self._flush(key, batch, ends)
                            batch, ends = [], []
                            if self._stop.wait(ahead):
                                stopped = True
                                break
                    if len(batch) >= self.batch_size:
                        self._flush(key, batch, ends)
                        batch, ends = [], []
                if batch and time.monotonic() - batch_started >= self.batch_s:
                    self._flush(key, batch, ends)
                    batch, ends = [], []
            self._flush(key, batch, ends)
        finally:
            if source is not sys.stdin.buffer:
                source.close()

    def _flush(self, key, batch, ends):
        """Hand the batch on; a sink that cannot write now (disk full, broker down) is retried
        with backoff (the sink cuts a failed batch back, so a retry writes nothing twice) and
        the error shows on /healthz until a write succeeds."""
        if not batch:
            return
        backoff = self.retry_initial_s
        while True:
            try:
                self.sink.write_batch(key, batch, ends)
                break
            except OSError as exc:
                self.error = _error_name(exc)
                self.write_retries += 1
                log.warning("firehose batch not written (%s); retrying in %.1f s", self.error, backoff)
                if self._stop.wait(backoff):
                    raise
                backoff = min(self.retry_max_s, backoff * 2)
        self.error = None
        self.written += len(batch)


def _may_block(source) -> bool:
    """Whether reading the next line may wait for a writer (stdin, a pipe, a FIFO, a socket):
    only such a source needs a reader thread; a regular file is read directly (faster)."""
    try:
        return not stat.S_ISREG(os.fstat(source.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return True


class _FileFeed:
    """A regular file's lines, a batch at a time: reading never waits, so no thread."""

    def __init__(self, source, batch_size: int):
        self._lines, self._size = iter(source), batch_size

    def take(self, timeout: Optional[float]):
        chunk = list(itertools.islice(self._lines, self._size))
        return chunk or None


class _LineFeed:
    """The lines of a source that may wait for its writer (stdin, a pipe), read by a thread
    of their own so that the replay can stop waiting for the next line (and hand on a
    partial batch) while a live source is quiet. The queue is bounded: a slow sink holds
    the reader back, nothing piles up."""

    _END = object()

    def __init__(self, source, stop: threading.Event, depth: int = 10_000):
        self._queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self._stop = stop
        self._error: Optional[BaseException] = None
        self._ended = False
        threading.Thread(target=self._read, args=(source,), name="firehose-reader", daemon=True).start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, source):
        try:
            for raw in source:
                if not self._put(raw):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the replay thread, which reports it
            self._error = exc
        finally:
            self._put(self._END)

    def take(self, timeout: Optional[float], most: int = 10_000):
        """The lines queued now (waiting up to ``timeout`` for the first), [] if none came,
        None once the source is exhausted (its read error, if any, is raised)."""
        if self._ended:
            return self._end()
        chunk = []
        try:
            item = self._queue.get(timeout=timeout)
            while item is not self._END:
                chunk.append(item)
                if len(chunk) >= most:
                    break
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        else:
            if item is self._END:
                self._ended = True
        return chunk if chunk or not self._ended else self._end()

    def _end(self):
        error, self._error = self._error, None
        if error is not None:
            raise error
        return None


def _error_name(exc: BaseException) -> str:
    """``OSError: ENOSPC``-style: the kind of failure without its text (which may hold paths)."""
    code = getattr(exc, "errno", None)
    return f"{type(exc).__name__}: {errno.errorcode[code]}" if code in errno.errorcode else type(exc).__name__

"""Where the gateway hands records on: the contract's JSONL files, or Kafka.

Both sinks confirm a record only once it is durable, and both survive a
restart without losing or repeating a record:

* ``FileTapSink`` -- ``OUT/taps.jsonl`` *is* the spool: a report is fsynced
  there before the sender hears 2xx, and on start the file is re-read to
  rebuild the set of seen ``tap_id`` values.
* ``FileTweetSink`` -- ``OUT/tweets.jsonl`` plus the firehose state file
  (``OUT/.gateway/firehose.json``: input offset per source and the output size
  that goes with it, replaced atomically after each fsynced batch). On start the
  output is cut back to the committed size and the input resumes from the
  committed offset, so a batch written but not committed is written again
  exactly once.

The Kafka sinks (``nfc_gateway.kafka_sink``) keep the same promises with a
write-ahead spool and a scan of the topic's tail on start.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Optional

from nfc_gateway.spool import DurableLog, fsync_dir, read_lines, write_all, write_json_atomic

STATE_DIR = ".gateway"


class FileTapSink:
    name = "file"

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / "taps.jsonl"
        self.log = DurableLog(self.path)

    def existing(self) -> Iterator[bytes]:
        for _, line in read_lines(self.path):
            yield line

    def append(self, line: bytes):
        self.log.append(line)

    def writable(self) -> bool:
        return self.log.writable()

    def health(self) -> dict:
        # no path: /healthz is public, and where the spool lives is nobody's business
        return {"sink": "file", "writable": self.log.error is None, "error": self.log.error,
                "bytes": self.log.size, "fsync_batches": self.log.batches}

    def close(self):
        self.log.close()


class FirehoseState:
    """Committed progress of the firehose: input offset per source, output size."""

    def __init__(self, output_dir: str | os.PathLike):
        self.dir = Path(output_dir) / STATE_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "firehose.json"
        self.state = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {"sources": {}}

    def offset(self, source: str) -> int:
        return int(self.state["sources"].get(source, 0))

    def output_size(self) -> Optional[int]:
        return self.state.get("output_size")

    def commit(self, source: Optional[str], offset: int, output_size: Optional[int] = None):
        # the new state is kept only once it is on disk: a failed commit leaves both as they were
        state = dict(self.state, sources=dict(self.state["sources"]))
        if source is not None:
            state["sources"][source] = offset
        if output_size is not None:
            state["output_size"] = output_size
        write_json_atomic(self.path, state)
        self.state = state


class FileTweetSink:
    """``tweets.jsonl`` plus the committed state. A failed batch (disk full) is cut
    back to the last committed size before the error is raised, so the replay can
    retry it without writing any line twice."""
    name = "file"

    def __init__(self, output_dir: str | os.PathLike, state: FirehoseState, write=os.write):
        self.path = Path(output_dir) / "tweets.jsonl"
        self.state = state
        self._write = write
        committed = state.output_size()
        if self.path.exists() and committed is not None and self.path.stat().st_size > committed:
            # lines written after the last commit will be read and written again
            with open(self.path, "rb+") as handle:
                handle.truncate(committed)
                os.fsync(handle.fileno())
        existed = self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            fsync_dir(self.path.parent)
        self.size = os.fstat(self._fd).st_size
        if committed is None:
            # a tweets.jsonl that predates the state file is someone else's data: keep it
            state.commit(None, 0, self.size)

    def resume_offset(self, source: str) -> int:
        return self.state.offset(source)

    def write_batch(self, source: Optional[str], lines: list[bytes], ends: list[int]):
        """Durably append ``lines``; ``ends[i]`` is the input offset just after line i.
        On ``OSError`` nothing of the batch is left in the file (or the next call cuts it)."""
        data = b"".join(line + b"\n" for line in lines)
        try:
            if os.fstat(self._fd).st_size != self.size:
                self._cut_back()
            write_all(self._write, self._fd, data)
            os.fsync(self._fd)
            # the output and the committed state must agree: if the commit fails, the
            # batch is not committed and is cut back like a failed write
            self.state.commit(source, ends[-1], self.size + len(data))
        except OSError:
            try:
                self._cut_back()
            except OSError:
                pass        # retried before the next write
            raise
        self.size += len(data)

    def _cut_back(self):
        os.ftruncate(self._fd, self.size)
        os.fsync(self._fd)

    def close(self):
        os.close(self._fd)

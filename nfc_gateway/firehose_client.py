"""The firehose licensee's streaming client: a live firehose connection in, ``tweets`` out.

``python -m nfc_gateway firehose --url URL [--partitions N] [--output DIR | --kafka-bootstrap H:P]``
holds one HTTP connection per partition (``?partition=K``, v2), reads the stream as
Twitter delivers it (``\\r\\n``-delimited JSON, blank keep-alive lines, chunk boundaries
anywhere) and hands every record on *unchanged* -- statuses and compliance messages alike
-- to where the gateway sends the firehose today: ``OUT/tweets.jsonl`` or Kafka topic
``tweets`` (the sinks of ``nfc_gateway.sinks`` / ``nfc_gateway.kafka_sink``).

What it survives, following Twitter's connection guidelines:

* **Reconnects** (``ReconnectPolicy``): network errors (refused, reset, cut mid-record,
  stalled) back off linearly, 250 ms more per attempt up to 16 s; HTTP errors
  exponentially from 5 s up to 320 s; 420/429 exponentially from 60 s. A streak resets
  once a connection has stayed up ``--healthy-after`` seconds. ``--time-scale`` shrinks
  every delay (tests).
* **Stalls**: no byte at all (neither data nor keep-alive) for ``--stall-timeout`` (90 s)
  is a stall: the connection is dropped and made again.
* **Backfill**: each reconnect asks for the minutes missed since the partition's last
  record (+1 for delivery lag, at most ``--backfill-limit``, 5 for v2), also after a
  restart of the client, from the position file. Duplicates that backfill brings are
  dropped by tweet id (other records by a hash of their bytes) in a bounded set of the
  most recent ``--dedup-ids`` keys, rebuilt on start from the tail of the sink itself, so
  a record already downstream is never written twice.
* **Back-pressure**: records wait in a bounded queue for the sink; when it is full the
  readers stop reading, TCP pushes back to the server, and nothing piles up in memory.
* **Bad input**: a record that is not UTF-8 JSON object, or longer than
  ``--max-record-bytes``, goes to ``OUT/deadletter/firehose-client.jsonl`` with a reason
  (counted), never a crash. ``limit``/``disconnect``/``warning`` (and v2 ``errors``)
  messages are the stream talking to us: counted, logged, not forwarded.
* **The token** comes from an environment variable or a file, never argv, and never
  reaches a log line (a filter also masks it if a server echoes it back).

Metrics in Prometheus text format on ``http://HOST:--metrics-port/metrics``.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import signal
import stat
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from kafka_client import event_time_ms

log = logging.getLogger(__name__)

DEFAULT_TOKEN_ENV = "TWITTER_BEARER_TOKEN"
SOURCE = "firehose-stream"                   # the sinks' source key (state, Kafka headers)
POSITIONS_FILE = "firehose-client.json"
CONTROL_MESSAGES = ("limit", "disconnect", "warning")


class ConfigError(ValueError):
    """A bad flag or an unusable token source: exit 2 with this message."""


# -- reconnect policy -------------------------------------------------------------------
@dataclass
class ReconnectPolicy:
    """Twitter's reconnect guidelines, per partition. ``delay(kind)`` is the wait before the
    next attempt after a failure of ``kind``: ``network``, ``http`` or ``rate_limited``."""
    scale: float = 1.0
    network_step_s: float = 0.25
    network_max_s: float = 16.0
    http_start_s: float = 5.0
    http_max_s: float = 320.0
    rate_limited_start_s: float = 60.0
    rate_limited_max_s: float = 960.0
    streaks: dict = field(default_factory=lambda: {"network": 0, "http": 0, "rate_limited": 0})

    def delay(self, kind: str) -> float:
        self.streaks[kind] += 1
        n = self.streaks[kind]
        if kind == "network":
            seconds = min(self.network_max_s, self.network_step_s * n)
        elif kind == "http":
            seconds = min(self.http_max_s, self.http_start_s * 2 ** (n - 1))
        else:
            seconds = min(self.rate_limited_max_s, self.rate_limited_start_s * 2 ** (n - 1))
        return seconds * self.scale

    def reset(self):
        for kind in self.streaks:
            self.streaks[kind] = 0


def failure_kind(status: int) -> str:
    return "rate_limited" if status in (420, 429) else "http"


# -- framing and judging ----------------------------------------------------------------
class RecordFramer:
    """Bytes of one connection in, complete lines out, whatever the chunk boundaries.

    ``feed`` yields ``(line, None)`` for each complete line (keep-alives are empty lines)
    and ``(prefix, reason)`` for a line longer than ``max_bytes``: its first ``max_bytes``
    bytes are kept for the dead letter and the rest is skipped up to the next newline, so
    a hostile server cannot make the client buffer without bound."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._skipping = False

    def feed(self, chunk: bytes) -> Iterator[tuple[bytes, Optional[str]]]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            piece = chunk[start:end]
            start = end + 1
            if self._skipping:
                self._skipping = False
                continue
            if self._buf:
                self._buf += piece
                line, self._buf = bytes(self._buf), bytearray()
            else:
                line = piece
            if len(line) > self.max_bytes + 1:          # + the \r
                yield line[: self.max_bytes], f"record over {self.max_bytes} bytes"
                continue
            yield (line[:-1] if line.endswith(b"\r") else line), None
        if start < len(chunk) and not self._skipping:
            self._buf += chunk[start:]
            if len(self._buf) > self.max_bytes + 1:
                yield bytes(self._buf[: self.max_bytes]), f"record over {self.max_bytes} bytes"
                self._buf = bytearray()
                self._skipping = True

    @property
    def partial(self) -> bool:
        """Half a record is held (the connection ended mid-record)."""
        return bool(self._buf) or self._skipping


@dataclass(frozen=True)
class Judged:
    """What one stream line is: a ``record`` to hand on (``key`` for duplicates, event time),
    a ``control`` message (``reason`` names it), or ``dead`` (``reason`` says why)."""
    kind: str
    key: str = ""
    event_ms: Optional[int] = None
    reason: str = ""


def judge(line: bytes, with_time: bool = True) -> Judged:
    """``with_time=False`` skips the event time (parsing dates is a third of the cost)."""
    try:
        obj = json.loads(line)
    except UnicodeDecodeError:
        return Judged("dead", reason="not valid UTF-8")
    except ValueError as exc:
        return Judged("dead", reason=f"not JSON: {exc}")
    except RecursionError:
        return Judged("dead", reason="not JSON: nested too deeply")
    if not isinstance(obj, dict):
        return Judged("dead", reason="not a JSON object")
    if len(obj) == 1:
        (name,) = obj
        if name in CONTROL_MESSAGES:
            return Judged("control", reason=name)
    if "errors" in obj and "data" not in obj:
        return Judged("control", reason="errors")
    return Judged("record", key=dedup_key(obj, line), event_ms=event_time_ms(obj) if with_time else None)


def dedup_key(obj: dict, line: bytes) -> str:
    """The tweet id of a status (v1.1 ``id_str``, v2 ``data.id``); for anything else
    (compliance messages) a hash of the record's bytes: the same notice sent twice is one."""
    tweet_id = obj.get("id_str")
    data = obj.get("data")
    if tweet_id is None and isinstance(data, dict):
        tweet_id = data.get("id")
    if isinstance(tweet_id, str) and tweet_id.isdigit():
        return "t" + tweet_id
    return "h" + hashlib.blake2b(line, digest_size=16).hexdigest()


class RecentIds:
    """The most recent ``capacity`` keys, oldest evicted first: bounded memory."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._keys: "OrderedDict[str, None]" = OrderedDict()

    def add(self, key: str) -> bool:
        """True if ``key`` is new (and now remembered), False for a duplicate."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True

    def __len__(self):
        return len(self._keys)


def tail_lines(path: Path, count: int, block: int = 1 << 20) -> Iterator[bytes]:
    """The last ``count`` complete lines of ``path``, newest first, read backwards a block at
    a time (memory: a block and a line, never the file)."""
    if count <= 0 or not path.exists():
        return
    with open(path, "rb") as handle:
        pos = handle.seek(0, os.SEEK_END)
        carry = b""                      # the start of a line that may begin in an earlier block
        unfinished = True                # carry is still the piece after the file's last newline
        while pos > 0 and count > 0:
            start = max(0, pos - block)
            handle.seek(start)
            data = handle.read(pos - start) + carry
            pos = start
            pieces = data.split(b"\n")
            carry = pieces.pop(0)
            if unfinished:
                if not pieces:
                    continue             # no newline yet: all of it is the unfinished piece
                pieces.pop()
                unfinished = False
            for line in reversed(pieces):
                if count <= 0:
                    return
                yield line
                count -= 1
        if pos == 0 and not unfinished and count > 0 and carry:
            yield carry                  # the file's first line


# -- downstream -------------------------------------------------------------------------
class FileDownstream:
    """``OUT/tweets.jsonl`` through ``FileTweetSink``: fsync, then the committed state."""
    name = "file"
    needs_event_times = False
    recent_newest_first = True

    def __init__(self, output_dir: Path):
        from nfc_gateway.sinks import FileTweetSink, FirehoseState
        self.sink = FileTweetSink(output_dir, FirehoseState(output_dir))    # cuts back an uncommitted tail
        self.count = self.sink.resume_offset(SOURCE)

    def recent(self, count: int) -> Iterable[bytes]:
        return tail_lines(self.sink.path, count)

    def write(self, records: list[tuple[bytes, Optional[int]]]):
        lines = [line for line, _ in records]
        ends = list(range(self.count + 1, self.count + len(lines) + 1))
        self.sink.write_batch(SOURCE, lines, ends)
        self.count = ends[-1]

    def close(self):
        self.sink.close()


class KafkaDownstream:
    """Kafka topic ``tweets``: one transaction per batch (``kafka_sink.publish_exactly``),
    each record's CreateTime its event time, headers naming this client and a sequence."""
    name = "kafka"
    needs_event_times = True
    recent_newest_first = False

    def __init__(self, output_dir: Path, bootstrap: str, topic: str, gateway: str, stop: threading.Event):
        from nfc_gateway.kafka_sink import connect
        from nfc_gateway.spool import write_json_atomic
        self.bootstrap, self.topic, self.gateway, self.stop = bootstrap, topic, gateway, stop
        self._save = write_json_atomic
        self.state_path = output_dir / ".gateway" / f"kafka-{topic}-{SOURCE}.json"
        self.committed = json.loads(self.state_path.read_text())["seq"] if self.state_path.exists() else 0
        connected = connect(bootstrap, topic, gateway, SOURCE, self.committed, stop)
        if connected is None:
            raise RuntimeError("stopped before Kafka was reachable")
        self.sender, landed = connected
        # Records of a batch that landed before a crash keep their sequence numbers; new ones
        # go after them. They are not re-sent: the dedup set is rebuilt from the topic's tail.
        self.committed = max([self.committed, *landed])

    def recent(self, count: int) -> Iterator[bytes]:
        """The last ``count`` committed records of each partition, oldest first."""
        from confluent_kafka import TopicPartition
        from kafka_client import consumer, partitions_of, read_partitions
        client = consumer(self.bootstrap)
        try:
            starts, ends = {}, {}
            for p in partitions_of(client, self.topic):
                begin, end = client.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
                starts[p], ends[p] = max(begin, end - count), end
            # a generous deadline: up to ``count`` records per partition at a slow 10k/s
            deadline = time.monotonic() + 120 + sum(ends[p] - starts[p] for p in ends) / 10_000
            for msg in read_partitions(client, self.topic, starts, ends, deadline):
                yield msg.value()
        finally:
            client.close()

    def write(self, records: list[tuple[bytes, Optional[int]]]):
        """``(line, event time ms)`` pairs; the event time becomes the CreateTime."""
        from nfc_gateway.kafka_sink import publish_exactly
        keyed = [(None, line, seq, ms) for seq, (line, ms) in enumerate(records, start=self.committed + 1)]
        if not publish_exactly(self.sender, self.topic, keyed, self.gateway, SOURCE, self.bootstrap,
                               self.committed, set(), self.stop):
            raise RuntimeError("stopped before the batch was acknowledged")
        self.committed += len(records)
        self._save(self.state_path, {"seq": self.committed})

    def close(self):
        self.sender.close()


# -- metrics ----------------------------------------------------------------------------
class Metrics:
    def __init__(self):
        self.records = 0
        self.per_partition: dict[int, int] = {}
        self.duplicates = 0
        self.dead_letters: dict[str, int] = {}
        self.messages = {name: 0 for name in (*CONTROL_MESSAGES, "errors")}
        self.reconnects: dict[tuple[int, str], int] = {}
        self.stalls = 0
        self.keepalives = 0
        self.partial_records = 0
        self.backfill_requests = 0
        self.gaps_uncovered = 0
        self.newest_event_ms: Optional[int] = None
        self.connected: dict[int, bool] = {}
        self.healthy: dict[int, bool] = {}
        self.queued = 0
        self.write_retries = 0
        self._samples: deque = deque(maxlen=12)    # (monotonic, records) once a second

    def sample(self):
        self._samples.append((time.monotonic(), self.records))

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def text(self) -> str:
        out = []

        def metric(name, kind, help_, values):
            out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n")
            for labels, value in values:
                label = "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""
                out.append(f"{name}{label} {value}\n")

        metric("firehose_records_total", "counter", "records handed downstream (acknowledged by the sink)",
               [((("partition", p),), n) for p, n in sorted(self.per_partition.items())] or [((), 0)])
        metric("firehose_records_per_second", "gauge", "records handed downstream per second, last ~10 s",
               [((), round(self.rate(), 3))])
        metric("firehose_duplicates_dropped_total", "counter", "records dropped as already seen (backfill)",
               [((), self.duplicates)])
        metric("firehose_dead_letters_total", "counter", "records dead-lettered, by reason",
               [((("reason", r),), n) for r, n in sorted(self.dead_letters.items())] or [((), 0)])
        metric("firehose_messages_total", "counter", "stream control messages received, by kind",
               [((("kind", k),), n) for k, n in sorted(self.messages.items())])
        metric("firehose_reconnects_total", "counter", "reconnects, by partition and cause",
               [((("partition", p), ("cause", c)), n) for (p, c), n in sorted(self.reconnects.items())] or [((), 0)])
        metric("firehose_stalls_total", "counter", "connections dropped for silence past the stall timeout",
               [((), self.stalls)])
        metric("firehose_keepalives_total", "counter", "blank keep-alive lines received", [((), self.keepalives)])
        metric("firehose_partial_records_total", "counter",
               "records cut by a disconnect (re-delivered by backfill)", [((), self.partial_records)])
        metric("firehose_backfill_requests_total", "counter", "connections that asked for backfill",
               [((), self.backfill_requests)])
        metric("firehose_gaps_uncovered_total", "counter",
               "reconnects after a gap longer than the backfill limit (records may be missing)",
               [((), self.gaps_uncovered)])
        lag = "NaN" if self.newest_event_ms is None else round(time.time() - self.newest_event_ms / 1000, 3)
        metric("firehose_event_time_lag_seconds", "gauge", "now minus the event time of the newest record",
               [((), lag)])
        metric("firehose_connected", "gauge", "1 while the partition's stream is open",
               [((("partition", p),), int(v)) for p, v in sorted(self.connected.items())] or [((), 0)])
        metric("firehose_connection_healthy", "gauge", "1 once the open stream stayed up --healthy-after",
               [((("partition", p),), int(v)) for p, v in sorted(self.healthy.items())] or [((), 0)])
        metric("firehose_queued_batches", "gauge", "batches waiting for the sink (bounded)", [((), self.queued)])
        metric("firehose_write_retries_total", "counter", "sink writes retried", [((), self.write_retries)])
        return "".join(out)


# -- token ------------------------------------------------------------------------------
def read_token(token_env: Optional[str], token_file: Optional[str]) -> str:
    if token_file:
        try:
            mode = os.stat(token_file).st_mode
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file: cannot read it ({type(exc).__name__})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the token file is readable by others; chmod 600 it")
        if not token:
            raise ConfigError("--token-file is empty")
        return token
    name = token_env or DEFAULT_TOKEN_ENV
    token = os.environ.get(name, "").strip()
    if not token:
        raise ConfigError(f"no bearer token: set ${name} or give --token-file")
    return token


class RedactToken(logging.Filter):
    """Masks the token in any log record, in case a server or a library echoes it."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg, record.args = message.replace(self.token, "[REDACTED]"), None
        if record.exc_info and record.exc_info[1] is not None and self.token in str(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


# -- the client -------------------------------------------------------------------------
@dataclass
class ClientConfig:
    url: str
    token: str
    output_dir: str = "gateway-out"
    partitions: int = 1
    kafka_bootstrap: Optional[str] = None
    topic: str = "tweets"
    instance_id: Optional[str] = None
    stall_timeout_s: float = 90.0
    healthy_after_s: float = 30.0
    time_scale: float = 1.0
    backfill_limit_minutes: int = 5
    dedup_ids: int = 2_000_000
    max_record_bytes: int = 1 << 20
    queue_batches: int = 64
    batch_records: int = 1000
    connect_timeout_s: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: Optional[int] = None
    position_interval_s: float = 1.0

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("--url must be an http(s) URL")
        if parts.username or parts.password:
            raise ConfigError("--url must not carry credentials; use the token")
        for name in ("partitions", "backfill_limit_minutes", "dedup_ids", "max_record_bytes",
                     "queue_batches", "batch_records"):
            if getattr(self, name) < (0 if name == "backfill_limit_minutes" else 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        for name in ("stall_timeout_s", "healthy_after_s", "time_scale", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name[:-2].replace('_', '-')} must be > 0")

    @property
    def minute_s(self) -> float:
        return 60.0 * self.time_scale


class FirehoseClient:
    def __init__(self, config: ClientConfig, downstream=None):
        self.config = config
        self.out = Path(config.output_dir)
        (self.out / ".gateway").mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics()
        self._stop = threading.Event()
        self._downstream = downstream
        self.positions_path = self.out / ".gateway" / POSITIONS_FILE
        self.positions: dict[str, dict] = (json.loads(self.positions_path.read_text())["partitions"]
                                           if self.positions_path.exists() else {})
        self.last_record_at: dict[int, float] = {}     # wall time a partition's last record came in
        for key, pos in self.positions.items():
            self.last_record_at[int(key)] = pos["received_at"]
        self.recent = RecentIds(config.dedup_ids)
        self.deadletter = None
        self.metrics_url: Optional[str] = None

    # downstream and state are opened on a thread: Kafka's connect may wait for the broker
    def _open(self):
        from nfc_gateway.spool import DurableLog
        if self._downstream is None:
            if self.config.kafka_bootstrap:
                import socket
                gateway = self.config.instance_id or socket.gethostname()
                self._downstream = KafkaDownstream(self.out, self.config.kafka_bootstrap, self.config.topic,
                                                   gateway, self._stop)
            else:
                self._downstream = FileDownstream(self.out)
        keys = []
        for line in self._downstream.recent(self.config.dedup_ids):      # newest first
            judged = judge(line, with_time=False)
            if judged.kind == "record":
                keys.append(judged.key)
        if getattr(self._downstream, "recent_newest_first", False):
            keys.reverse()
        for key in keys:                 # oldest first, so the oldest are evicted first
            self.recent.add(key)
        self.deadletter = DurableLog(self.out / "deadletter" / "firehose-client.jsonl")
        log.info("firehose client: %d recent record keys loaded from the %s sink", len(self.recent),
                 self._downstream.name)

    def stop(self):
        self._stop.set()

    async def run(self, ready=None) -> int:
        await asyncio.to_thread(self._open)
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.config.queue_batches)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(asyncio.to_thread(self._stop.wait))
        watcher.add_done_callback(lambda _: stopping.set())
        metrics_runner = await self._serve_metrics() if self.config.metrics_port is not None else None
        import aiohttp
        timeout = aiohttp.ClientTimeout(total=None, connect=self.config.connect_timeout_s, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            readers = [loop.create_task(self._partition(session, k, queue, stopping))
                       for k in range(1, self.config.partitions + 1)]
            writer = loop.create_task(self._writer(queue))
            ticker = loop.create_task(self._tick(stopping))
            if ready is not None:
                ready(self)
            await stopping.wait()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await queue.put(None)           # the writer hands on what was received, then ends
            await writer
            ticker.cancel()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        self._save_positions()
        self._downstream.close()
        self.deadletter.close()
        return 0

    async def _tick(self, stopping: asyncio.Event):
        while not stopping.is_set():
            self.metrics.sample()
            await asyncio.sleep(1.0)

    async def _serve_metrics(self):
        from aiohttp import web

        async def metrics(_request):
            return web.Response(text=self.metrics.text(), content_type="text/plain", charset="utf-8",
                                headers={"X-Content-Type-Options": "nosniff"})
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.metrics_host, self.config.metrics_port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.metrics_url = f"http://{self.config.metrics_host}:{port}/metrics"
        return runner

    def backfill_minutes(self, partition: int) -> Optional[int]:
        """Minutes to ask for: since the partition's last record, +1 for delivery lag."""
        last = self.last_record_at.get(partition)
        limit = self.config.backfill_limit_minutes
        if last is None or limit == 0:
            return None
        gap = max(0.0, time.time() - last)
        if gap > limit * self.config.minute_s:
            self.metrics.gaps_uncovered += 1
            log.warning("partition %d: %.0f s since its last record, more than the %d-minute backfill; "
                        "records of that gap may be missing (use the replay API)", partition, gap, limit)
        return min(limit, math.ceil(gap / self.config.minute_s) + 1)

    def _stream_url(self, partition: int, backfill: Optional[int]) -> str:
        parts = urlsplit(self.config.url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("partition", "backfill_minutes")]
        query.append(("partition", str(partition)))
        if backfill:
            query.append(("backfill_minutes", str(backfill)))
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def _partition(self, session, partition: int, queue: asyncio.Queue, stopping: asyncio.Event):
        import aiohttp
        policy = ReconnectPolicy(scale=self.config.time_scale)
        headers = {"Authorization": f"Bearer {self.config.token}", "Accept-Encoding": "gzip"}
        attempt = 0
        while not stopping.is_set():
            backfill = self.backfill_minutes(partition)
            if backfill:
                self.metrics.backfill_requests += 1
            kind, cause = "network", ""
            try:
                async with session.get(self._stream_url(partition, backfill), headers=headers,
                                       allow_redirects=False) as resp:
                    if resp.status != 200:
                        detail = (await resp.content.read(512)).decode("utf-8", "replace")
                        kind, cause = failure_kind(resp.status), f"http {resp.status}"
                        log.warning("partition %d: HTTP %d %s%s", partition, resp.status,
                                    " ".join(detail.split())[:200], " (check the token)" if resp.status in (401, 403) else "")
                    else:
                        log.info("partition %d: connected%s", partition,
                                 f" with {backfill} minutes of backfill" if backfill else "")
                        cause = await self._read(resp, partition, queue, policy)
            except asyncio.TimeoutError:
                cause = "connect timeout"
            except (aiohttp.ClientError, OSError) as exc:
                cause = type(exc).__name__
            finally:
                self.metrics.connected[partition] = False
                self.metrics.healthy[partition] = False
            if stopping.is_set():
                return
            delay = policy.delay(kind)
            attempt += 1
            key = (partition, kind)
            self.metrics.reconnects[key] = self.metrics.reconnects.get(key, 0) + 1
            log.info("partition %d: %s; reconnecting in %.3f s (%s backoff)", partition, cause, delay, kind)
            await asyncio.sleep(delay)

    async def _read(self, resp, partition: int, queue: asyncio.Queue, policy: ReconnectPolicy) -> str:
        framer = RecordFramer(self.config.max_record_bytes)
        self.metrics.connected[partition] = True
        opened = time.monotonic()
        healthy = False
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(resp.content.readany(), self.config.stall_timeout_s)
                except asyncio.TimeoutError:
                    self.metrics.stalls += 1
                    log.warning("partition %d: nothing for %.1f s (stall)", partition, self.config.stall_timeout_s)
                    return "stall"
                if not chunk:
                    if resp.content.exception() is not None:
                        raise resp.content.exception()
                    return "closed by the server"
                if not healthy and time.monotonic() - opened >= self.config.healthy_after_s:
                    healthy = True
                    policy.reset()
                    self.metrics.healthy[partition] = True
                batch = self._judge_chunk(framer, chunk, partition)
                if batch:
                    self.metrics.queued = queue.qsize()
                    await queue.put(batch)     # blocks while the sink is behind: back-pressure
        finally:
            if framer.partial:
                self.metrics.partial_records += 1

    def _judge_chunk(self, framer: RecordFramer, chunk: bytes, partition: int) -> list:
        batch = []
        now = time.time()
        # every record's event time when the sink stamps it (Kafka's CreateTime); otherwise
        # only the chunk's last record's, for the lag metric
        every_time = self._downstream.needs_event_times
        for line, oversized in framer.feed(chunk):
            if oversized:
                self._dead(partition, oversized, line, truncated=True)
                continue
            if not line.strip():
                self.metrics.keepalives += 1
                continue
            judged = judge(line, with_time=every_time)
            if judged.kind == "dead":
                self._dead(partition, judged.reason, line)
            elif judged.kind == "control":
                self.metrics.messages[judged.reason] += 1
                log.warning("partition %d: %s message %s", partition, judged.reason,
                            line[:300].decode("utf-8", "replace"))
            elif self.recent.add(judged.key):
                self.last_record_at[partition] = now
                batch.append((line, partition, now, judged.event_ms))
            else:
                self.metrics.duplicates += 1
                self.last_record_at[partition] = now
        if batch and not every_time:
            line, part, received_at, _ = batch[-1]
            try:
                batch[-1] = (line, part, received_at, event_time_ms(json.loads(line)))
            except ValueError:
                pass
        return batch

    def _dead(self, partition: int, reason: str, raw: bytes, truncated: bool = False):
        label = reason.split(":")[0]
        self.metrics.dead_letters[label] = self.metrics.dead_letters.get(label, 0) + 1
        letter = {"source": f"firehose:partition={partition}", "error": reason,
                  "raw": raw.decode("utf-8", "backslashreplace")}
        if truncated:
            letter["raw_truncated"] = True
        # a dead letter is small and rare: written inline (fsynced) so it is never lost
        self.deadletter.append(json.dumps(letter, ensure_ascii=False).encode())

    async def _writer(self, queue: asyncio.Queue):
        last_positions = 0.0
        ending = False
        while not ending:
            item = await queue.get()
            if item is None:
                break
            batch = list(item)
            while len(batch) < self.config.batch_records and not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    ending = True
                    break
                batch.extend(more)
            self.metrics.queued = queue.qsize()
            await asyncio.to_thread(self._write, [(line, event_ms) for line, _, _, event_ms in batch])
            for _, partition, received_at, event_ms in batch:
                position = self.positions.setdefault(str(partition), {"event_time_ms": None})
                position["received_at"] = received_at
                if event_ms is not None:
                    position["event_time_ms"] = event_ms
                self.metrics.per_partition[partition] = self.metrics.per_partition.get(partition, 0) + 1
                if event_ms is not None and (self.metrics.newest_event_ms is None or event_ms > self.metrics.newest_event_ms):
                    self.metrics.newest_event_ms = event_ms
            self.metrics.records += len(batch)
            if time.monotonic() - last_positions >= self.config.position_interval_s:
                await asyncio.to_thread(self._save_positions)
                last_positions = time.monotonic()

    def _write(self, lines: list[tuple[bytes, Optional[int]]]):
        """Until the sink has them: a full disk or a broker away is waited out (the sinks cut
        a failed batch back, so a retry writes nothing twice)."""
        backoff = 0.2
        while True:
            try:
                self._downstream.write(lines)
                return
            except OSError as exc:
                self.metrics.write_retries += 1
                log.warning("firehose batch not written (%s); retrying in %.1f s", type(exc).__name__, backoff)
                if self._stop.wait(backoff) and self._stop.is_set():
                    raise
                backoff = min(10.0, backoff * 2)

    def _save_positions(self):
        """Acknowledged progress per partition. After a restart the backfill asked for
        reaches back to it; the sink's tail (dedup) keeps the overlap from doubling."""
        from nfc_gateway.spool import write_json_atomic
        write_json_atomic(self.positions_path, {"partitions": self.positions})


# -- command line -----------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument("--url", required=True, help="the stream endpoint, e.g. https://api.twitter.com/2/tweets/firehose/stream")
    parser.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, help="environment variable holding the bearer token")
    parser.add_argument("--token-file", help="file holding the bearer token (instead of the environment)")
    parser.add_argument("--partitions", type=int, default=1, help="connect to partitions 1..N, one connection each")
    parser.add_argument("--output", default="gateway-out", help="tweets.jsonl (file mode), state and dead letters")
    parser.add_argument("--kafka-bootstrap", help="host:port[,…]: write to Kafka instead of tweets.jsonl")
    parser.add_argument("--tweets-topic", default="tweets")
    parser.add_argument("--instance-id", default=None, help="names this client in Kafka headers (default: hostname)")
    parser.add_argument("--stall-timeout", type=float, default=90.0, help="seconds without a byte before reconnecting")
    parser.add_argument("--healthy-after", type=float, default=30.0, help="seconds up after which backoff resets")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies every backoff delay and the backfill minute (tests)")
    parser.add_argument("--backfill-limit", type=int, default=5, help="most backfill minutes the endpoint allows (0: never ask)")
    parser.add_argument("--dedup-ids", type=int, default=2_000_000, help="recent record keys kept to drop backfill duplicates")
    parser.add_argument("--max-record-bytes", type=int, default=1 << 20, help="longer records are dead-lettered")
    parser.add_argument("--queue-batches", type=int, default=64, help="received batches held while the sink is behind")
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--metrics-port", type=int, default=9464, help="Prometheus /metrics port (0: any free port; -1: none)")


def run_from_args(args) -> int:
    token = read_token(args.token_env, args.token_file)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactToken(token))
    config = ClientConfig(
        url=args.url, token=token, output_dir=args.output, partitions=args.partitions,
        kafka_bootstrap=args.kafka_bootstrap, topic=args.tweets_topic, instance_id=args.instance_id,
        stall_timeout_s=args.stall_timeout, healthy_after_s=args.healthy_after, time_scale=args.time_scale,
        backfill_limit_minutes=args.backfill_limit, dedup_ids=args.dedup_ids,
        max_record_bytes=args.max_record_bytes, queue_batches=args.queue_batches,
        metrics_host=args.metrics_host, metrics_port=None if args.metrics_port < 0 else args.metrics_port)
    client = FirehoseClient(config)

    def ready(c: FirehoseClient):
        print(json.dumps({"event": "firehose_client", "metrics": c.metrics_url, "partitions": config.partitions,
                          "sink": c._downstream.name}), flush=True)

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, client.stop)
        return await client.run(ready)

    return asyncio.run(main())

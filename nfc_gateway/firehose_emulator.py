"""A local Twitter firehose that misbehaves on command: the test bed of the firehose client.

Serves a world's ``tweets.jsonl`` (``python -m pipelines.generate``) the way the v2
firehose does: ``GET /2/tweets/firehose/stream?partition=K[&backfill_minutes=M]`` with
``Authorization: Bearer TOKEN``, a chunked response of ``\\r\\n``-delimited records and
blank keep-alive lines, one stream per partition (a record's partition is a hash of its
bytes). Real HTTP over loopback::

    FIREHOSE_EMULATOR_TOKEN=secret python -m nfc_gateway.firehose_emulator \\
        --tweets world/tweets.jsonl --port 8090 --partitions 2 --rate 50

The stream of each partition starts when its first client connects: record i is
*published* at ``start + i / rate`` (``--rate 0``: all at once) and a connection gets the
records published from the moment it connects, or -- with ``backfill_minutes=M`` (at most
5, as on the v2 endpoint) -- from M minutes before. A minute lasts ``60 * --time-scale``
seconds, so tests can shrink it. A client that was away longer than the backfill it asks
for misses records, as with the real firehose. A newer connection to a partition replaces
the older one (which is closed).

The control API (its own port, ``--control-port``, so that it answers through a
restart; the same bearer token; JSON bodies) makes it misbehave:

* ``POST /control/fault`` ``{"partition": K, "kind": ...}`` with kind
  ``drop`` (the partition's next ``count`` connections, current one first, are cut halfway
  through a record), ``stall`` (the current connection sends nothing, not even keep-alives,
  until the client leaves), ``status`` (the next ``count`` connection attempts are answered
  ``code``: 429, 503, 420 ...), ``message`` (sends ``{"<message>": {...}}``: ``limit``,
  ``warning``, ``disconnect``; a ``disconnect`` then closes the stream), ``garbage``
  (sends ``body``: any bytes, as latin-1 text, e.g. a malformed or oversized record).
* ``POST /control/restart`` ``{"down_s": S}``: every stream connection is cut, the stream
  port refuses connections for S seconds, then listens again (the publishing clock runs on).
* ``GET /control/log``: every stream connection attempt: partition, status,
  ``backfill_minutes``, ``at``/``ended`` (seconds since the emulator started), how it ended
  and how many records it sent -- the tests measure the client's reconnect delays here.

Prints ``{"event": "firehose_emulator", "url": ..., "control": ..., "records": N}`` once it
listens. ``make firehose-demo`` runs it with the client against a fresh world.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import math
import os
import random
import signal
import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from aiohttp import web

log = logging.getLogger(__name__)

STREAM_PATH = "/2/tweets/firehose/stream"
BACKFILL_LIMIT_MINUTES = 5          # the v2 firehose's limit
TOKEN_ENV = "FIREHOSE_EMULATOR_TOKEN"
MAX_CONTROL_BODY = 4 * 1024 * 1024


def partition_of(line: bytes, partitions: int) -> int:
    """1..partitions: where the emulator serves this record."""
    return zlib.crc32(line) % partitions + 1


@dataclass
class Connection:
    partition: int
    backfill_minutes: Optional[int]
    at: float
    status: int = 200
    ended: Optional[float] = None
    end: str = ""
    sent: int = 0
    faults: deque = field(default_factory=deque)                  # in the order they were asked for
    poked: asyncio.Event = field(default_factory=asyncio.Event)   # a fault came in
    replaced: asyncio.Event = field(default_factory=asyncio.Event)

    def poke(self, fault: Optional[dict] = None):
        if fault is not None:
            self.faults.append(fault)
        self.poked.set()

    def entry(self) -> dict:
        return {"partition": self.partition, "status": self.status, "backfill_minutes": self.backfill_minutes,
                "at": round(self.at, 6), "ended": None if self.ended is None else round(self.ended, 6),
                "end": self.end, "sent": self.sent}


class Partition:
    def __init__(self, number: int, records: list[bytes]):
        self.number = number
        self.records = records
        self.started: Optional[float] = None         # monotonic time of the first connection
        self.current: Optional[Connection] = None
        self.pending_drops = 0                        # connections still to be cut mid-record
        self.pending_status: list[int] = []           # answers for the next attempts


class FirehoseEmulator:
    def __init__(self, lines: list[bytes], token: str, partitions: int = 1, rate: float = 0.0,
                 keepalive_s: float = 10.0, time_scale: float = 1.0, max_chunk: int = 64 * 1024,
                 split_seed: Optional[int] = None, host: str = "127.0.0.1", port: int = 0,
                 control_port: int = 0):
        if not token:
            raise ValueError("the emulator needs a bearer token (it checks it like the real endpoint)")
        self.token = token
        self.rate = rate
        self.keepalive_s = keepalive_s
        self.minute_s = 60.0 * time_scale
        self.max_chunk = max_chunk
        # with a seed, every write is cut into random pieces (each its own HTTP chunk), so
        # records, their \r\n and keep-alives straddle chunk boundaries anywhere
        self.split = random.Random(split_seed) if split_seed is not None else None
        self.host, self.port = host, port
        by_partition: dict[int, list[bytes]] = {k: [] for k in range(1, partitions + 1)}
        for line in lines:
            by_partition[partition_of(line, partitions)].append(line)
        self.partitions = {k: Partition(k, recs) for k, recs in by_partition.items()}
        self.records = sum(len(p.records) for p in self.partitions.values())
        self.log: list[Connection] = []
        self.t0 = time.monotonic()
        self.control_port = control_port
        self.control_url: Optional[str] = None
        self._runner: Optional[web.AppRunner] = None
        self._control_runner: Optional[web.AppRunner] = None
        self._site: Optional[web.TCPSite] = None
        self._restarting = False

    # -- time ---------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def published_at(self, part: Partition, index: int) -> float:
        return part.started + (index / self.rate if self.rate > 0 else 0.0)

    def start_index(self, part: Partition, backfill_minutes: Optional[int], now: float) -> int:
        """The first record a connection made at ``now`` gets: published from then on, or backfill."""
        since = now - (backfill_minutes or 0) * self.minute_s
        if since <= part.started:
            return 0
        if self.rate <= 0:
            return len(part.records)
        # the smallest i with published_at(i) >= since
        return min(len(part.records), math.ceil((since - part.started) * self.rate - 1e-9))

    # -- HTTP ---------------------------------------------------------------------------
    def stream_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(STREAM_PATH, self.stream)
        return app

    def control_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_CONTROL_BODY)
        app.router.add_post("/control/fault", self.fault)
        app.router.add_post("/control/restart", self.restart)
        app.router.add_get("/control/log", self.connection_log)
        return app

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def start(self) -> str:
        """Listens; returns the stream's base URL (the control API's is ``control_url``)."""
        self._runner = web.AppRunner(self.stream_app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        self.port = self._site._server.sockets[0].getsockname()[1]
        self._control_runner = web.AppRunner(self.control_app(), handle_signals=False, access_log=None)
        await self._control_runner.setup()
        control = web.TCPSite(self._control_runner, self.host, self.control_port)
        await control.start()
        self.control_url = f"http://{self.host}:{control._server.sockets[0].getsockname()[1]}"
        return f"http://{self.host}:{self.port}"

    async def close(self):
        for part in self.partitions.values():
            if part.current is not None:
                part.current.replaced.set()
        for runner in (self._runner, self._control_runner):
            if runner is not None:
                await runner.cleanup()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if self._restarting:
            raise web.HTTPServiceUnavailable()
        if not self._authorized(request):
            return _problem(401, "Unauthorized")
        try:
            number = int(request.query.get("partition", "1"))
            backfill = request.query.get("backfill_minutes")
            backfill = None if backfill is None else int(backfill)
        except ValueError:
            return _problem(400, "partition and backfill_minutes must be integers")
        part = self.partitions.get(number)
        if part is None:
            return _problem(400, f"partition must be 1..{len(self.partitions)}")
        if backfill is not None and not 1 <= backfill <= BACKFILL_LIMIT_MINUTES:
            return _problem(400, f"backfill_minutes must be 1..{BACKFILL_LIMIT_MINUTES}")
        conn = Connection(number, backfill, self.now())
        self.log.append(conn)
        if part.pending_status:
            conn.status = part.pending_status.pop(0)
            conn.ended, conn.end = self.now(), "status"
            return _problem(conn.status, {420: "Enhance Your Calm", 429: "Too Many Requests"}.get(conn.status, "Error"))
        now = time.monotonic()
        if part.started is None:
            part.started = now
        if part.current is not None:
            part.current.replaced.set()
        part.current = conn
        index = self.start_index(part, backfill, now)
        response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            conn.end = await self._serve(request, response, part, conn, index)
        except (ConnectionError, asyncio.CancelledError) as exc:
            conn.end = conn.end or f"client gone ({type(exc).__name__})"
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            conn.ended = self.now()
            if part.current is conn:
                part.current = None
        return response

    async def _write(self, response: web.StreamResponse, data: bytes):
        if self.split is None:
            await response.write(data)
            return
        view = memoryview(data)
        while view:
            size = self.split.randint(1, 97)
            await response.write(bytes(view[:size]))
            view = view[size:]

    async def _serve(self, request, response, part: Partition, conn: Connection, index: int) -> str:
        records = part.records
        last_write = time.monotonic()
        while True:
            if conn.replaced.is_set():
                return "replaced"
            if part.pending_drops:
                part.pending_drops -= 1
                if index < len(records):
                    half = records[index][: max(1, len(records[index]) // 2)]
                    await response.write(half)        # one chunk: the client holds half a record
                request.transport.abort()
                return "dropped mid-record"
            conn.poked.clear()
            while conn.faults:
                fault = conn.faults.popleft()
                if fault["kind"] == "stall":
                    # nothing at all, not even keep-alives, until the client gives up
                    await _until_gone(request, conn)
                    return "stalled"
                if fault["kind"] == "message":
                    body = {fault["message"]: fault.get("body") or _control_body(fault["message"])}
                    await self._write(response, json.dumps(body).encode() + b"\r\n")
                    if fault["message"] == "disconnect":
                        await response.write_eof()
                        return "disconnect message"
                if fault["kind"] == "garbage":
                    await self._write(response, fault["body"].encode("latin-1") + b"\r\n")
            now = time.monotonic()
            due = index
            while due < len(records) and self.published_at(part, due) <= now:
                due += 1
            if due > index:
                out, size = [], 0
                while index < due and size < self.max_chunk:
                    out.append(records[index])
                    size += len(records[index]) + 2
                    index += 1
                out.append(b"")
                await self._write(response, b"\r\n".join(out))
                conn.sent += len(out) - 1
                last_write = time.monotonic()
                continue
            next_due = self.published_at(part, index) if index < len(records) else now + self.keepalive_s
            keepalive_at = last_write + self.keepalive_s
            wake = min(next_due, keepalive_at)
            try:
                await asyncio.wait_for(_wait_any(conn), max(0.0, wake - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            if time.monotonic() >= keepalive_at:
                await self._write(response, b"\r\n")
                last_write = time.monotonic()

    # -- control ------------------------------------------------------------------------
    async def fault(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _problem(401, "Unauthorized")
        try:
            spec = await request.json()
            part = self.partitions[int(spec.get("partition", 1))]
            kind = spec["kind"]
            count = int(spec.get("count", 1))
        except (ValueError, KeyError, TypeError):
            return _problem(400, "a fault needs partition (1..N) and kind")
        if kind == "drop":
            part.pending_drops += count
            if part.current is not None:
                part.current.poke()
        elif kind == "status":
            code = int(spec.get("code", 503))
            if not 400 <= code <= 599:
                return _problem(400, "status code must be 4xx or 5xx")
            part.pending_status.extend([code] * count)
        elif kind in ("stall", "message", "garbage"):
            if part.current is None:
                return _problem(409, "no client is connected to that partition")
            if kind == "message" and spec.get("message") not in ("limit", "warning", "disconnect"):
                return _problem(400, "message must be limit, warning or disconnect")
            if kind == "garbage" and not isinstance(spec.get("body"), str):
                return _problem(400, "garbage needs a body string")
            part.current.poke(spec)
        else:
            return _problem(400, f"unknown fault kind {kind!r}")
        return web.json_response({"ok": True})

    async def restart(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _problem(401, "Unauthorized")
        spec = await request.json()
        down_s = float(spec.get("down_s", 1.0))
        asyncio.get_running_loop().create_task(self._restart(down_s))
        return web.json_response({"ok": True})

    async def _restart(self, down_s: float):
        # The stream port stops listening, as a restarting server does, and every stream is
        # cut; the control API (its own port) keeps answering.
        self._restarting = True
        await self._site.stop()
        for part in self.partitions.values():
            if part.current is not None:
                part.current.replaced.set()
        # idle kept-alive connections too: a restarted process has none
        await self._runner.server.shutdown(0.5)
        await asyncio.sleep(down_s)
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        self._restarting = False

    async def connection_log(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _problem(401, "Unauthorized")
        return web.json_response({"connections": [c.entry() for c in self.log], "records": self.records,
                                  "minute_s": self.minute_s})


async def _wait_any(conn: Connection):
    """Returns when a fault arrives or the connection is replaced."""
    waits = [asyncio.ensure_future(conn.poked.wait()), asyncio.ensure_future(conn.replaced.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


async def _until_gone(request: web.Request, conn: Connection):
    while not conn.replaced.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        try:
            await asyncio.wait_for(conn.replaced.wait(), 0.05)
        except asyncio.TimeoutError:
            pass


def _control_body(message: str) -> dict:
    return {"limit": {"track": 42, "timestamp_ms": str(int(time.time() * 1000))},
            "warning": {"code": "FALLING_BEHIND", "message": "Your connection is falling behind", "percent_full": 60},
            "disconnect": {"code": 7, "stream_name": "emulator", "reason": "admin logout"}}[message]


def _problem(status: int, detail) -> web.Response:
    return web.json_response({"title": detail if isinstance(detail, str) else "Error", "status": status}, status=status)


def load_lines(path: str) -> list[bytes]:
    import gzip
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return [line.rstrip(b"\r\n") for line in handle if line.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nfc_gateway.firehose_emulator", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--world", help="a generated world's directory (its tweets.jsonl is served)")
    source.add_argument("--tweets", help="a tweets.jsonl[.gz] to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--control-port", type=int, default=0, help="the control API's port (0: any free one, printed)")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="records/s published per partition (0: all at once)")
    parser.add_argument("--keepalive", type=float, default=10.0, help="seconds of silence before a keep-alive line")
    parser.add_argument("--time-scale", type=float, default=1.0, help="a backfill minute lasts 60 * this seconds")
    parser.add_argument("--split-seed", type=int, default=None, help="cut every write into random small chunks")
    parser.add_argument("--token-file", help="file holding the bearer token (else $" + TOKEN_ENV + ")")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = open(args.token_file, encoding="utf-8").read().strip() if args.token_file else os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"firehose_emulator: no token (--token-file or ${TOKEN_ENV})", file=sys.stderr)
        return 2
    if args.partitions < 1 or args.rate < 0 or args.keepalive <= 0 or args.time_scale <= 0:
        print("firehose_emulator: --partitions >= 1, --rate >= 0, --keepalive and --time-scale > 0", file=sys.stderr)
        return 2
    path = os.path.join(args.world, "tweets.jsonl") if args.world else args.tweets
    try:
        lines = load_lines(path)
    except OSError as exc:
        print(f"firehose_emulator: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    emulator = FirehoseEmulator(lines, token, args.partitions, args.rate, args.keepalive, args.time_scale,
                                split_seed=args.split_seed, host=args.host, port=args.port,
                                control_port=args.control_port)

    async def serve():
        url = await emulator.start()
        print(json.dumps({"event": "firehose_emulator", "url": url + STREAM_PATH, "control": emulator.control_url,
                          "records": emulator.records, "partitions": len(emulator.partitions)}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await emulator.close()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

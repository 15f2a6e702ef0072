"""The gateway service: tap reports over HTTP and the firehose in, pipeline inputs out.

``python -m nfc_gateway serve --output DIR [--users users.jsonl] [--firehose FILE --rate N]
[--kafka-bootstrap HOST:PORT]`` starts:

* ``POST /v1/taps`` -- one tap report (the contract's fields) as a JSON body.
  Answers (body is JSON ``{"status"|"error", "reason", "detail", "tap_id"}``):

  ====  =================================================================
  201   accepted: the report is durable (fsynced, or in the Kafka spool)
  200   duplicate: this exact report was accepted before (safe retry)
  400   malformed JSON, or a contract field missing/wrong
  404   unknown path; 405 wrong method; 411 no Content-Length
  409   conflict: another report with this tap_id, or another report by this
        user of this touch (same nonce), was accepted before
  413   body larger than ``--max-body``
  415   Content-Type is not application/json
  422   verification failed (bad proof / peer_proof, self tap, unknown user)
  429   this device sent too many reports; ``Retry-After`` says when to retry
  503   the spool could not be written, or too many open connections; retry later
  ====  =================================================================

* ``GET /healthz`` -- liveness and the sinks' state; ``GET /metrics`` -- every
  counter (accepted, duplicates, each rejection reason, firehose progress) as JSON.

The order of checks is fixed so each answer is specific and cheap requests stay
cheap: size and type, then JSON and shape, then duplicate (so a retry of an
accepted report is never throttled), then signatures, then the flood limit
(only verified reports count against a device, so forgeries naming a victim
cannot use up its budget).
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from nfc_gateway.firehose import FirehoseReplay
from nfc_gateway.ratelimit import TokenBuckets, retry_after_header
from nfc_gateway.sinks import FileTapSink, FileTweetSink, FirehoseState
from nfc_gateway.validation import Rejection, check_content_type, digest, parse_report, verify_report

log = logging.getLogger("nfc_gateway.service")


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    output_dir: str = "gateway-out"
    public_keys: Optional[dict] = None
    require_known_users: bool = False
    kafka_bootstrap: Optional[str] = None
    taps_topic: str = "taps"
    tweets_topic: str = "tweets"
    firehose: Optional[str] = None
    firehose_rate: float = 0.0
    device_rate: float = 1.0
    device_burst: int = 10
    max_body: int = 16 * 1024
    instance_id: Optional[str] = None
    max_connections: int = 512


class _Pending:
    """A tap_id being spooled: a duplicate arriving meanwhile waits for its fate."""

    def __init__(self, line_digest: bytes):
        self.digest = line_digest
        self.done = threading.Event()
        self.stored = False


class TapIntake:
    """The decision for one POSTed body, independent of HTTP plumbing."""

    def __init__(self, sink, public_keys, require_known: bool, limiter: TokenBuckets, counters: Counter,
                 counters_lock: threading.Lock):
        self.sink = sink
        self.public_keys = public_keys
        self.require_known = require_known
        self.limiter = limiter
        self.counters = counters
        self._counters_lock = counters_lock
        self._seen: dict[str, object] = {}     # tap_id -> digest (stored) or _Pending
        # One phone files one report per touch: (user_id, nonce) -> tap_id. The
        # tap_id is not signed, so without this a phone could file the same signed
        # touch many times under fresh ids.
        self._touches: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for line in sink.existing():
            try:
                obj = json.loads(line)
                tap_id, touch = obj["tap_id"], (obj["user_id"], obj["nonce"])
            except (ValueError, KeyError, TypeError):
                continue  # not ours to judge; the pipeline dead-letters it
            self._seen[tap_id] = digest(line)
            self._touches.setdefault(touch, tap_id)
        self.recovered = len(self._seen)

    def count(self, name: str, n: int = 1):
        with self._counters_lock:
            self.counters[name] += n

    def submit(self, content_type: Optional[str], body: bytes) -> tuple[int, dict, dict]:
        """(status, response body, extra headers)."""
        try:
            check_content_type(content_type)
            report, line = parse_report(body)
            line_digest = digest(line)
            known = self._lookup(report.tap_id)
            if known is not None:
                return self._duplicate(report.tap_id, known, line_digest)
            self._check_touch(report)
            # Verified before counted: a forged flood naming a victim device must not
            # use up the victim's budget (per-IP limits are no help behind carrier NAT).
            verify_report(report, self.public_keys, self.require_known)
            allowed, wait = self.limiter.check(report.user_id)
            if not allowed:
                self.count("rejected_device_flood")
                log.warning("429 device %s flooding (retry in %.1f s)", report.user_id, wait)
                return 429, {"error": "device_flood", "detail": f"device {report.user_id} exceeded its report rate",
                             "tap_id": report.tap_id}, {"Retry-After": retry_after_header(wait)}
        except Rejection as rej:
            self.count(f"rejected_{rej.reason}")
            log.warning("%d %s: %s", rej.status, rej.reason, rej.detail)
            return rej.status, {"error": rej.reason, "detail": rej.detail}, {}

        touch = (report.user_id, report.nonce)
        with self._lock:
            known = self._seen.get(report.tap_id)
            other = self._touches.get(touch)
            if known is None and other is None:
                pending = _Pending(line_digest)
                self._seen[report.tap_id] = pending
                self._touches[touch] = report.tap_id
        if known is not None:
            return self._duplicate(report.tap_id, known, line_digest)
        if other is not None:
            return self._touch_conflict(report, other)
        try:
            self.sink.append(line)
        except Exception as exc:  # noqa: BLE001 - any sink failure means "not stored": say so
            with self._lock:
                del self._seen[report.tap_id]
                del self._touches[touch]
            pending.done.set()
            self.count("rejected_spool_unavailable")
            log.error("503 spool write failed for %s: %s", report.tap_id, exc)
            return 503, {"error": "spool_unavailable", "detail": str(exc), "tap_id": report.tap_id}, {"Retry-After": "1"}
        with self._lock:
            self._seen[report.tap_id] = line_digest
        pending.stored = True
        pending.done.set()
        self.count("accepted")
        return 201, {"status": "accepted", "tap_id": report.tap_id}, {}

    def _lookup(self, tap_id: str):
        with self._lock:
            return self._seen.get(tap_id)

    def _check_touch(self, report):
        with self._lock:
            other = self._touches.get((report.user_id, report.nonce))
        if other is not None and other != report.tap_id:
            raise Rejection(409, "touch_already_reported",
                            f"user {report.user_id} already reported touch {report.nonce} as {other}")

    def _touch_conflict(self, report, other: str) -> tuple[int, dict, dict]:
        self.count("rejected_touch_already_reported")
        detail = f"user {report.user_id} already reported touch {report.nonce} as {other}"
        log.warning("409 touch_already_reported: %s", detail)
        return 409, {"error": "touch_already_reported", "detail": detail, "tap_id": report.tap_id}, {}

    def _duplicate(self, tap_id: str, known, line_digest: bytes) -> tuple[int, dict, dict]:
        if isinstance(known, _Pending):
            known.done.wait(30)
            if not known.stored:
                self.count("rejected_spool_unavailable")
                return 503, {"error": "spool_unavailable", "detail": "concurrent copy failed to spool", "tap_id": tap_id}, {"Retry-After": "1"}
            known = known.digest
        if known == line_digest:
            self.count("duplicates")
            return 200, {"status": "duplicate", "tap_id": tap_id}, {}
        self.count("rejected_tap_id_conflict")
        log.warning("409 tap_id %s already accepted with different content", tap_id)
        return 409, {"error": "tap_id_conflict", "detail": "another report with this tap_id was accepted", "tap_id": tap_id}, {}

    def seen_count(self) -> int:
        return len(self._seen)


class _Handler(BaseHTTPRequestHandler):
    server_version = "tapfollow-gateway/1"
    protocol_version = "HTTP/1.1"
    timeout = 15  # seconds a client may stall mid-request before its socket is closed
    gateway: "Gateway"

    def setup(self):
        super().setup()
        # headers and body leave in two writes; with Nagle on, the body waits for
        # the client's delayed ACK (~40 ms per request on keep-alive connections)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # the access log would drown the decisions we log
        pass

    def _send(self, status: int, body: dict, headers: Optional[dict] = None, close: bool = False):
        data = json.dumps(body, sort_keys=True).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/healthz":
            self._send(200, self.gateway.health())
        elif self.path == "/metrics":
            self._send(200, self.gateway.metrics())
        else:
            self._send(404, {"error": "not_found", "detail": f"no resource {self.path}"})

    def do_POST(self):
        gw = self.gateway
        if self.path != "/v1/taps":
            gw.count("rejected_not_found")
            return self._send(404, {"error": "not_found", "detail": f"no resource {self.path}"}, close=True)
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None:
            gw.count("rejected_length_required")
            return self._send(411, {"error": "length_required", "detail": "send the body with a Content-Length"}, close=True)
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            gw.count("rejected_malformed_json")
            return self._send(400, {"error": "malformed_json", "detail": f"bad Content-Length {length!r}"}, close=True)
        if length > gw.config.max_body:
            gw.count("rejected_body_too_large")
            log.warning("413 body of %d bytes > %d", length, gw.config.max_body)
            # the body is not read: closing the connection is cheaper than draining it
            return self._send(413, {"error": "body_too_large", "detail": f"body of {length} bytes exceeds {gw.config.max_body}"}, close=True)
        try:
            body = self.rfile.read(length)
        except (OSError, socket.timeout):
            gw.count("rejected_body_incomplete")
            self.close_connection = True
            return
        if len(body) < length:
            gw.count("rejected_body_incomplete")
            self.close_connection = True
            return
        status, payload, headers = gw.intake.submit(self.headers.get("Content-Type"), body)
        self._send(status, payload, headers)

    def do_PUT(self):
        self._method_not_allowed()

    do_DELETE = do_PATCH = do_PUT

    def _method_not_allowed(self):
        self.gateway.count("rejected_method_not_allowed")
        self._send(405, {"error": "method_not_allowed", "detail": f"{self.command} is not supported"},
                   {"Allow": "GET, POST"}, close=True)


class _Server(ThreadingHTTPServer):
    """One thread per connection, but a bounded number of them.

    Past ``max_connections`` a new connection gets an immediate 503 and is closed,
    so a connection flood costs a few bytes, not a thread (and memory) each.
    """
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    max_connections = 512
    on_overload = None

    def __init__(self, *args, **kwargs):
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        with self._active_lock:
            admitted = self._active < self.max_connections
            if admitted:
                self._active += 1
        if not admitted:
            if self.on_overload:
                self.on_overload()
            body = b'{"error": "overloaded", "detail": "too many open connections"}'
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                # Read what already arrived (never wait: this is the accept loop) so the close
                # below is less likely to reset the connection before the client reads the 503.
                request.setblocking(False)
                for _ in range(16):                    # at most 1 MiB, then close regardless
                    if not request.recv(65536):
                        break
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

    @property
    def active_connections(self) -> int:
        return self._active


class Gateway:
    """The whole service, startable in-process (tests, benchmark) or from the CLI."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.counters: Counter = Counter()
        self._counters_lock = threading.Lock()
        self.started_at = time.time()
        instance = config.instance_id or socket.gethostname()
        if config.kafka_bootstrap:
            from nfc_gateway.kafka_sink import KafkaTapSink, KafkaTweetSink
            self.tap_sink = KafkaTapSink(config.output_dir, config.kafka_bootstrap, config.taps_topic, instance)
            make_tweet_sink = lambda: KafkaTweetSink(config.output_dir, config.kafka_bootstrap, config.tweets_topic, instance)  # noqa: E731
        else:
            self.tap_sink = FileTapSink(config.output_dir)
            make_tweet_sink = lambda: FileTweetSink(config.output_dir, FirehoseState(config.output_dir))  # noqa: E731
        limiter = TokenBuckets(config.device_rate, config.device_burst)
        self.intake = TapIntake(self.tap_sink, config.public_keys, config.require_known_users, limiter,
                                self.counters, self._counters_lock)
        self.tweet_sink = make_tweet_sink() if config.firehose else None
        self.firehose = FirehoseReplay(config.firehose, self.tweet_sink, config.firehose_rate) if config.firehose else None
        handler = type("Handler", (_Handler,), {"gateway": self})
        self.httpd = _Server((config.host, config.port), handler)
        self.httpd.max_connections = config.max_connections
        self.httpd.on_overload = lambda: self.count("rejected_overloaded")
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def count(self, name: str, n: int = 1):
        with self._counters_lock:
            self.counters[name] += n

    def start(self) -> "Gateway":
        if self.firehose:
            self.firehose.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="http", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.firehose:
            self.firehose.stop()
            self.tweet_sink.close()
        self.tap_sink.close()

    def health(self) -> dict:
        out = {"status": "ok", "taps": self.tap_sink.health(), "uptime_s": round(time.time() - self.started_at, 3)}
        if self.firehose:
            out["firehose"] = self.firehose.status()
            if self.firehose.error:
                out["status"] = "degraded"
        return out

    def metrics(self) -> dict:
        with self._counters_lock:
            counters = dict(self.counters)
        out = {"counters": counters, "tap_ids_known": self.intake.seen_count(),
               "open_connections": self.httpd.active_connections,
               "tap_ids_recovered_at_start": self.intake.recovered}
        if self.firehose:
            out["firehose"] = self.firehose.status()
        return out


def run_gateway(config: GatewayConfig) -> int:
    import signal

    gateway = Gateway(config).start()
    print(json.dumps({"event": "serving", "url": gateway.url, "output": config.output_dir,
                      "recovered_tap_ids": gateway.intake.recovered}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    gateway.stop()
    print(json.dumps({"event": "stopped", "metrics": gateway.metrics()}), flush=True)
    return 0

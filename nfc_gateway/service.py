"""The gateway service: tap reports over HTTP and the firehose in, pipeline inputs out.

``python -m nfc_gateway serve --output DIR --users users.jsonl [--firehose FILE --rate N]
[--kafka-bootstrap HOST:PORT]`` starts:

* ``POST /v1/taps`` -- one tap report (the contract's fields) as a JSON body.
  Answers (body is JSON ``{"status"|"error", "reason", "detail", "tap_id"}``):

  ====  =================================================================
  201   accepted: the report is durable (fsynced, or in the Kafka spool)
  200   duplicate: this exact report was accepted before (safe retry)
  400   malformed JSON (also: not UTF-8, a lone surrogate, nesting too deep,
        a number too long), a contract field missing/wrong, or not valid HTTP
  404   unknown path; 405 wrong method; 411 no Content-Length (or chunked)
  408   the request (headers and body) was not complete within
        ``--request-timeout`` seconds of its first byte
  409   conflict: this user's report with this tap_id was accepted before with
        other content, or another report by this user of this touch (same
        nonce). Reports are known by (user_id, tap_id): another user's report
        under the same tap_id is no conflict, so colluders cannot pre-empt one
  413   body larger than ``--max-body``
  415   Content-Type is not application/json
  422   verification failed (bad proof / peer_proof, self tap, unknown user)
  429   this device (``device_flood``) or this client address (``client_flood``)
        sent too many reports, or this client address caused too many refusals
        (``client_flood``: a budget of refused requests per address), or it holds
        too many open connections (``too_many_connections``); ``Retry-After``
        says when to retry
  431   a header line too long, or too many header lines
  500   a bug: counted as ``internal_error``, no detail is shown
  503   the spool could not be written; or, at ``--max-connections``, this was
        the slowest unfinished connection and made room for a newcomer
        (``evicted``), or every connection has a request being decided
        (``overloaded``); retry later
  ====  =================================================================

* ``GET /healthz`` -- 200 ``{"status": "ok"}`` with the sinks' state, or 503
  ``{"status": "failing"}`` while the tap spool cannot be written (disk full);
  ``GET /metrics`` -- every counter (accepted, duplicates, each rejection reason,
  firehose progress) as JSON, or in Prometheus's text format for Prometheus
  (``?format=prometheus`` or its ``Accept`` header: :func:`prometheus_text`).
  Neither shows a filesystem path or an exception's text.

The order of checks is fixed so each answer is specific and cheap requests stay
cheap: size and type, then JSON and shape, then duplicate (so a retry of an
accepted report is never throttled), then the address's budget of refusals
(each refused request costs its address a token; once spent, 429 before any
Ed25519 check), then users and signatures (an unknown user is refused before
any signature is checked), then the flood limits (only verified reports count
against a device or a client address's store budget, so forgeries naming a
victim cannot use up its budget).

**Why aiohttp.** ``http.server`` is documented as not for production: one thread
per connection and a timeout per ``recv``, so 512 connections trickling a byte
every 8 s held every thread. The service now runs on aiohttp's asyncio server:
an idle or slow connection costs a few KB and no thread, its C HTTP parser
bounds header lines and counts (431), and the same package is an asyncio HTTP
*client*, which the planned web portal (server) and the async firehose client
need too: one stack for all three, where uvicorn or hypercorn would serve only
and need a second client library. What aiohttp does not do, this module adds on
its protocol (``_Connection``): a deadline for each whole request (headers and
body, from its first byte: a trickle cannot renew it), a cap on open connections
per client address (IPv6 by /64) besides the global one (where the slowest
unfinished connection is dropped for a newcomer), and JSON answers
counted by reason for what its parser refuses. Decisions that touch the disk
(``TapIntake.submit``) run on a small thread pool, so the event loop never waits
for an fsync.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, ContentLengthError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from nfc_gateway.firehose import FirehoseReplay
from nfc_gateway.ratelimit import TokenBuckets, report_cost, retry_after_header
from nfc_gateway.sinks import FileTapSink, FileTweetSink, FirehoseState
from nfc_gateway.validation import Rejection, check_content_type, digest, parse_report, verify_report

log = logging.getLogger("nfc_gateway.service")

#: a client address may hold this many devices' budgets when ``--client-rate`` is not given
CLIENT_DEVICES = 50
SERVER_NAME = "tapfollow-gateway/2"


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    output_dir: str = "gateway-out"
    public_keys: Optional[dict] = None       # the users registry: required (unknown users are always refused)
    require_known_users: bool = True         # kept for compatibility: unknown users are always refused now
    kafka_bootstrap: Optional[str] = None
    taps_topic: str = "taps"
    tweets_topic: str = "tweets"
    firehose: Optional[str] = None
    firehose_rate: float = 0.0
    device_rate: float = 1.0
    device_burst: int = 10
    client_rate: Optional[float] = None      # reports/s one client address may store; None: CLIENT_DEVICES devices' worth
    client_burst: Optional[int] = None
    max_body: int = 16 * 1024
    instance_id: Optional[str] = None
    max_connections: int = 1024              # when full, the connection longest without a finished request goes
    max_connections_per_client: int = 64
    refusal_rate: float = 1.0                # refused requests/s one client address may cause, sustained
    refusal_burst: int = 60                  # … and at once; past that its reports get 429 client_flood
    max_client_buckets: int = 100_000        # client addresses whose budgets are remembered (LRU beyond)
    request_timeout_s: float = 10.0          # whole request, headers and body, from its first byte
    idle_timeout_s: float = 15.0             # a keep-alive connection with no request in progress
    max_header_line: int = 8190
    max_headers: int = 40
    workers: int = 16


class _Pending:
    """A tap_id being spooled: a duplicate arriving meanwhile waits for its fate."""

    def __init__(self, line_digest: bytes):
        self.digest = line_digest
        self.done = threading.Event()
        self.stored = False


class TapIntake:
    """The decision for one POSTed body, independent of HTTP plumbing."""

    def __init__(self, sink, public_keys, require_known: bool, limiter: TokenBuckets, counters: Counter,
                 counters_lock: threading.Lock, client_limiter: Optional[TokenBuckets] = None,
                 refusal_limiter: Optional[TokenBuckets] = None):
        self.sink = sink
        self.public_keys = public_keys
        self.require_known = require_known
        self.limiter = limiter
        self.client_limiter = client_limiter
        self.refusal_limiter = refusal_limiter
        self.counters = counters
        self._counters_lock = counters_lock
        # (user_id, tap_id) -> digest (stored) or _Pending. Keyed by the reporter too: a
        # tap_id is only a name its reporter chose, and two colluders can sign a valid
        # report of their own under the tap_id a victim's phone will use. Keyed by tap_id
        # alone, that report would make the victim's genuine one a 409, which the phone
        # takes as final. The pipeline dedupes per (user_id, tap_id) the same way.
        self._seen: dict[tuple[str, str], object] = {}
        # One phone files one report per touch: (user_id, nonce) -> tap_id. The
        # tap_id is whatever its phone signed, so without this a phone could file the
        # same touch many times under fresh ids.
        self._touches: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for line in sink.existing():
            try:
                obj = json.loads(line)
                tap_id, touch = obj["tap_id"], (obj["user_id"], obj["nonce"])
                key = (obj["user_id"], tap_id)
                hash(key + touch)                        # a list or object there is not ours either
            except (ValueError, KeyError, TypeError):
                continue  # not ours to judge; the pipeline dead-letters it
            self._seen[key] = digest(line)
            self._touches.setdefault(touch, tap_id)
        self.recovered = len(self._seen)

    def count(self, name: str, n: int = 1):
        with self._counters_lock:
            self.counters[name] += n

    def submit(self, content_type: Optional[str], body: bytes, client: Optional[str] = None) -> tuple[int, dict, dict]:
        """(status, response body, extra headers). Never raises: a bug is a counted 500."""
        try:
            return self._submit(content_type, body, client)
        except Exception:  # noqa: BLE001 - the sender gets a 500 without internals; the log has the trace
            self.count("rejected_internal_error")
            log.exception("500 internal error on a tap report")
            return 500, {"error": "internal_error", "detail": "the gateway failed on this report; it was not stored"}, {}

    def refusals_spent(self, client: Optional[str]) -> tuple[bool, float]:
        """(this address has used up its budget of refused requests, seconds until it has one again)."""
        if self.refusal_limiter is None or client is None:
            return False, 0.0
        allowed, wait = self.refusal_limiter.peek(client)
        return not allowed, wait

    def charge_refusal(self, client: Optional[str]):
        """A refused request costs its client address one token of its refusal budget."""
        if self.refusal_limiter is not None and client is not None:
            self.refusal_limiter.check(client)

    def client_flooding(self, client: Optional[str], wait: float, tap_id: Optional[str] = None):
        self.count("rejected_client_flood")
        log.warning("429 client %s: too many refused requests (retry in %.1f s)", client, wait)
        body = {"error": "client_flood", "detail": "this network address sent too many refused requests"}
        if tap_id is not None:
            body["tap_id"] = tap_id
        return 429, body, {"Retry-After": retry_after_header(wait)}

    def _submit(self, content_type, body, client):
        # An address that has used up its budget of refusals is not given any more work that
        # could be refused (above all the Ed25519 checks), only the cheap answer to an
        # identical retry of a stored report.
        spent, spent_wait = self.refusals_spent(client)
        report = None
        try:
            check_content_type(content_type)
            try:
                report, line = parse_report(body)
            except UnicodeError:
                # "\ud800" is valid JSON but no Unicode string: it cannot be stored as UTF-8
                raise Rejection(400, "malformed_json", "a string holds a lone surrogate (not valid Unicode)") from None
            line_digest = digest(line)
            key = (report.user_id, report.tap_id)
            known = self._lookup(key)
            if known is not None:
                answer = self._duplicate(report.tap_id, known, line_digest, quiet=spent)
                if answer[0] == 409:
                    if spent:
                        return self.client_flooding(client, spent_wait, report.tap_id)
                    self.charge_refusal(client)
                return answer
            if spent:
                return self.client_flooding(client, spent_wait, report.tap_id)
            self._check_touch(report)
            # Verified before counted: a forged flood naming a victim device must not
            # use up the victim's budget (per-IP limits are no help behind carrier NAT).
            verify_report(report, self.public_keys, self.require_known)
            cost = report_cost(len(line))
        except Rejection as rej:
            if spent:
                return self.client_flooding(client, spent_wait, report.tap_id if report is not None else None)
            self.charge_refusal(client)
            self.count(f"rejected_{rej.reason}")
            log.warning("%d %s: %s", rej.status, rej.reason, rej.detail)
            return rej.status, {"error": rej.reason, "detail": rej.detail}, {}

        touch = (report.user_id, report.nonce)
        # Whether it is new, and the rate it is charged to, decided at once: concurrent copies
        # of one report are charged once (the first), the others answered as duplicates.
        refused = None
        with self._lock:
            known = self._seen.get(key)
            other = self._touches.get(touch)
            if known is None and other is None:
                refused = self._charge_rate(report, client, cost)
                if refused is None:
                    pending = _Pending(line_digest)
                    self._seen[key] = pending
                    self._touches[touch] = report.tap_id
        if refused is not None:
            return refused
        if known is not None:
            answer = self._duplicate(report.tap_id, known, line_digest)
            if answer[0] == 409:
                self.charge_refusal(client)
            return answer
        if other is not None:
            self.charge_refusal(client)
            return self._touch_conflict(report, other)
        try:
            self.sink.append(line)
        except Exception as exc:  # noqa: BLE001 - any sink failure means "not stored" (the spool promises it)
            with self._lock:
                del self._seen[key]
                del self._touches[touch]
            pending.done.set()
            self.count("rejected_spool_unavailable")
            log.error("503 spool write failed for %s: %s", report.tap_id, exc)
            return 503, {"error": "spool_unavailable", "detail": "the report could not be stored now; retry later",
                         "tap_id": report.tap_id}, {"Retry-After": "1"}
        with self._lock:
            self._seen[key] = line_digest
        pending.stored = True
        pending.done.set()
        self.count("accepted")
        return 201, {"status": "accepted", "tap_id": report.tap_id}, {}

    def _charge_rate(self, report, client: Optional[str], cost: float) -> Optional[tuple[int, dict, dict]]:
        """None if the client address and the device both have ``cost`` to spend, else the 429."""
        if self.client_limiter is not None and client is not None:
            allowed, wait = self.client_limiter.check(client, cost)
            if not allowed:
                self.count("rejected_client_flood")
                log.warning("429 client %s flooding (retry in %.1f s)", client, wait)
                return 429, {"error": "client_flood", "detail": "this network address exceeded its report rate",
                             "tap_id": report.tap_id}, {"Retry-After": retry_after_header(wait)}
        allowed, wait = self.limiter.check(report.user_id, cost)
        if not allowed:
            self.count("rejected_device_flood")
            log.warning("429 device %s flooding (retry in %.1f s)", report.user_id, wait)
            return 429, {"error": "device_flood", "detail": f"device {report.user_id} exceeded its report rate",
                         "tap_id": report.tap_id}, {"Retry-After": retry_after_header(wait)}
        return None

    def _lookup(self, key: tuple[str, str]):
        with self._lock:
            return self._seen.get(key)

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

    def _duplicate(self, tap_id: str, known, line_digest: bytes, quiet: bool = False) -> tuple[int, dict, dict]:
        """200 for an identical copy of what this reporter stored under this tap_id, 409 for a
        changed one (counted and logged unless ``quiet``: the caller answers 429 instead)."""
        if isinstance(known, _Pending):
            known.done.wait(30)
            if not known.stored:
                self.count("rejected_spool_unavailable")
                return 503, {"error": "spool_unavailable", "detail": "concurrent copy failed to spool", "tap_id": tap_id}, {"Retry-After": "1"}
            known = known.digest
        if known == line_digest:
            self.count("duplicates")
            return 200, {"status": "duplicate", "tap_id": tap_id}, {}
        if not quiet:
            self.count("rejected_tap_id_conflict")
            log.warning("409 tap_id %s already accepted from its reporter with different content", tap_id)
        return 409, {"error": "tap_id_conflict", "detail": "this user's report with this tap_id was accepted "
                                                          "with different content", "tap_id": tap_id}, {}

    def seen_count(self) -> int:
        return len(self._seen)


def client_key(peername) -> str:
    """Whom a connection counts against: its IPv4 address, or its IPv6 /64 (one subscriber's
    prefix: one host can take any number of addresses inside it)."""
    if not peername:
        return "unknown"
    host = str(peername[0]).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


_PHRASES = {400: "Bad Request", 408: "Request Timeout", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


def _raw_response(status: int, body: dict, headers: Optional[dict] = None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, for use outside a request."""
    data = json.dumps(body, sort_keys=True).encode("utf-8")
    lines = [f"HTTP/1.1 {status} {_PHRASES[status]}", "Content-Type: application/json",
             f"Content-Length: {len(data)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + data


_IDLE, _RECEIVING, _HANDLING = range(3)


class _Connection(RequestHandler):
    """aiohttp's HTTP/1.1 protocol plus what a hostile network needs: admission per
    client address, and a deadline for each whole request."""

    def __init__(self, manager, gateway: "Gateway", **kwargs):
        super().__init__(manager, **kwargs)
        self.gateway = gateway
        self.client: Optional[str] = None
        self.admitted = False
        self._state = _IDLE
        self._deadline = 0.0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._refused_transport = None
        self.half_closed = False
        self._payload = None
        self.deciding = False                            # its request is read and being decided/answered
        self.evicted = False
        self.answered = 0                                # requests it has completed

    # -- admission -------------------------------------------------------------------------
    def connection_made(self, transport):
        self.client = client_key(transport.get_extra_info("peername"))
        refusal = self.gateway._admit(self)
        if refusal is not None:
            self._refuse(transport, *refusal)
            return
        self.admitted = True
        super().connection_made(transport)

    def _refuse(self, transport, status: int, reason: str, detail: str):
        self.gateway.count(f"rejected_{reason}")
        transport.write(_raw_response(status, {"error": reason, "detail": detail}, {"Retry-After": "1"}))
        # half-close and give the client a moment to read the answer before its unread
        # request would turn our close into a reset; bounded: never more than a second
        self._refused_transport = transport
        self.gateway._refused.add(transport)
        if transport.can_write_eof():
            transport.write_eof()
        self.gateway._loop.call_later(1.0, transport.abort)

    def connection_lost(self, exc):
        if not self.admitted:
            self.gateway._refused.discard(self._refused_transport)
            self._refused_transport = None
            return
        self._cancel_timer()
        self.gateway._release(self)
        self.admitted = False
        super().connection_lost(exc)

    @property
    def idle_after_answer(self) -> bool:
        """A keep-alive connection between requests, having completed at least one."""
        return self.answered > 0 and self._state == _IDLE

    def evict(self):
        """Dropped to make room for a newcomer (the gateway is at ``--max-connections``): its slot
        is given back now, and it gets a 503 ``evicted`` if it is in the middle of a request (an
        idle one is closed silently, as by the idle timeout)."""
        self.gateway.count("rejected_evicted")
        log.debug("evicting the slowest connection, from %s", self.client)
        self.evicted = True
        self._cancel_timer()
        self.gateway._release(self)
        transport = self.transport
        if transport is None:
            return
        if self._state == _IDLE:
            self.force_close()
            return
        transport.write(_raw_response(503, {"error": "evicted", "detail": "the gateway is full and this connection "
                                            "was the slowest to send a request; retry"}, {"Retry-After": "1"}))
        self.force_close()                               # closes once the answer is flushed
        if transport.get_write_buffer_size():
            self._loop.call_later(1.0, transport.abort)

    # -- the whole-request deadline ----------------------------------------------------------
    def data_received(self, data: bytes):
        if not self.admitted:
            return                                       # a refused connection's request is dropped
        if data and self._state == _IDLE:
            # Bytes while a request is handled are its body or a pipelined next request: the
            # next one's clock starts when its handler does (``request_started``), or, if it is
            # still partial then, with its next bytes; if none come, the idle timeout ends it.
            self._start_request()
        super().data_received(data)

    def eof_received(self):
        """The client half-closed. Mid-request, its request may still be answered (a
        client may send and then shut down its side); idle, the connection just ends."""
        if not self.admitted or (self._state == _IDLE and not getattr(self, "_messages", None)):
            return None                                  # asyncio closes the transport
        self.half_closed = True
        if self._state == _HANDLING:
            self._body_ends_here()
        return True

    def _body_ends_here(self):
        """No more bytes will come: a body still short of its Content-Length fails now
        (``body_incomplete``) instead of waiting for the deadline."""
        payload = self._payload
        if payload is not None and not payload.is_eof():
            payload.set_exception(ContentLengthError("the client closed before the body was complete"))

    def more_requests_queued(self) -> bool:
        return bool(getattr(self, "_messages", None))

    def _start_request(self):
        self._state = _RECEIVING
        self._deadline = self._loop.time() + self.gateway.config.request_timeout_s
        self._timer = self._loop.call_at(self._deadline, self._on_deadline)

    def _cancel_timer(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def request_started(self, request) -> float:
        """The handler has the headers: it now reads the body itself, by this deadline."""
        self._cancel_timer()
        self._payload = request.content
        if self._state != _RECEIVING:                    # parsed from an earlier read: its clock starts now
            self._deadline = self._loop.time() + self.gateway.config.request_timeout_s
        self._state = _HANDLING
        if self.half_closed:
            self._body_ends_here()
        return self._deadline

    def request_finished(self):
        self._state = _IDLE
        self._payload = None
        self.deciding = False
        self.answered += 1
        self.gateway._finished_a_request(self)

    def _on_deadline(self):
        self._timer = None
        if self._state != _RECEIVING or self.transport is None:
            return
        self.gateway.count("rejected_request_timeout")
        self.gateway._refused_request(self.client)
        log.debug("408 request from %s not complete within %.1f s", self.client, self.gateway.config.request_timeout_s)
        transport = self.transport
        transport.write(_raw_response(408, {"error": "request_timeout",
                                            "detail": "the request was not complete in time"}))
        self.force_close()                               # closes once the 408 is flushed
        if transport.get_write_buffer_size():
            self._loop.call_later(1.0, transport.abort)  # a client that does not read is not waited for

    # -- what aiohttp's parser refuses ---------------------------------------------------------
    def handle_error(self, request, status: int = 500, exc=None, message=None):
        if status == 500:
            reason, detail = "internal_error", "the gateway failed on this request"
            log.error("500 on a request from %s", self.client, exc_info=exc)
        elif isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "header" in str(exc).lower()):
            status = 431
            reason = "too_many_headers" if "too many" in str(exc).lower() else "header_too_large"
            detail = (f"at most {self.gateway.config.max_headers} header lines of "
                      f"{self.gateway.config.max_header_line} bytes each")
        else:
            status, reason, detail = 400, "bad_http", "the request is not valid HTTP/1.1"
        self.gateway.count(f"rejected_{reason}")
        if status != 500:
            self.gateway._refused_request(self.client)
        response = self.gateway._json(status, {"error": reason, "detail": detail})
        response.force_close()
        return response


class _WebServer(web.Server):
    def __init__(self, handler, gateway: "Gateway", **kwargs):
        super().__init__(handler, **kwargs)
        self.gateway = gateway

    def __call__(self) -> RequestHandler:
        return _Connection(self, gateway=self.gateway, loop=self._loop, **self._kwargs)


class Gateway:
    """The whole service, startable in-process (tests, benchmark) or from the CLI."""

    def __init__(self, config: GatewayConfig):
        if config.public_keys is None:
            raise ValueError("the gateway needs a users registry (public_keys / --users): "
                             "reports of unknown users are always refused")
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
        client_limiter = TokenBuckets(config.client_rate or config.device_rate * CLIENT_DEVICES,
                                      config.client_burst or config.device_burst * CLIENT_DEVICES,
                                      max_keys=config.max_client_buckets)
        self.refusal_limiter = TokenBuckets(config.refusal_rate, config.refusal_burst,
                                            max_keys=config.max_client_buckets)
        self.intake = TapIntake(self.tap_sink, config.public_keys, True, limiter, self.counters,
                                self._counters_lock, client_limiter=client_limiter,
                                refusal_limiter=self.refusal_limiter)
        self.tweet_sink = make_tweet_sink() if config.firehose else None
        self.firehose = FirehoseReplay(config.firehose, self.tweet_sink, config.firehose_rate) if config.firehose else None
        self._sock = socket.create_server((config.host, config.port), backlog=1024)
        self._open = 0
        self._per_client: dict[str, int] = {}
        # admitted connections, longest without a finished request first (eviction order)
        self._conns: OrderedDict["_Connection", None] = OrderedDict()
        self._refused: set = set()               # refused connections, until their answer is read
        self._pool = ThreadPoolExecutor(config.workers, thread_name_prefix="intake")
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server = None
        self._web = None

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return self._open

    def connections_of(self, client: str) -> int:
        return self._per_client.get(client, 0)

    @property
    def connections_mid_request(self) -> int:
        """Open connections that have sent part of a request (read on the event loop's thread)."""
        for _ in range(100):
            try:
                return sum(1 for c in list(self._conns) if c._state != _IDLE)
            except RuntimeError:                         # changed while copied: copy again
                continue
        return -1

    def count(self, name: str, n: int = 1):
        with self._counters_lock:
            self.counters[name] += n

    # -- connection admission (event loop thread only) -------------------------------------------
    def _admit(self, conn: "_Connection"):
        """None to admit ``conn``, else (status, reason, detail) to refuse it.

        Past the per-address cap a newcomer is refused. Past the global cap, the oldest
        connection that has not completed a request (the slowest unfinished one: never
        answered, or mid-request since its last answer) is dropped to make room, so
        many addresses holding slow connections cannot lock anyone out: the slow ones
        are the ones that go. If there is none, the keep-alive connection idle longest
        goes. Only if every connection has a request being decided is the newcomer
        refused (503)."""
        client = conn.client
        if self._per_client.get(client, 0) >= self.config.max_connections_per_client:
            return 429, "too_many_connections", "this network address holds too many open connections"
        if self._open >= self.config.max_connections:
            victim = next((c for c in self._conns if not c.deciding and not c.idle_after_answer), None)
            if victim is None:
                victim = next((c for c in self._conns if not c.deciding), None)
            if victim is None:
                return 503, "overloaded", "too many open connections"
            victim.evict()
        self._open += 1
        self._per_client[client] = self._per_client.get(client, 0) + 1
        self._conns[conn] = None
        return None

    def _release(self, conn: "_Connection"):
        """Give ``conn``'s slot back (once: eviction gives it back before the close completes)."""
        if self._conns.pop(conn, False) is False:
            return
        self._open -= 1
        left = self._per_client.get(conn.client, 0) - 1
        if left > 0:
            self._per_client[conn.client] = left
        else:
            self._per_client.pop(conn.client, None)

    def _finished_a_request(self, conn: "_Connection"):
        if conn in self._conns:
            self._conns.move_to_end(conn)                # its wait for a finished request starts anew

    def _refused_request(self, client: Optional[str]):
        """A request refused by the HTTP layer also costs its address's refusal budget."""
        self.intake.charge_refusal(client)

    # -- HTTP --------------------------------------------------------------------------------------
    @staticmethod
    def _json(status: int, body: dict, headers: Optional[dict] = None, close: bool = False) -> web.Response:
        response = web.Response(status=status, body=json.dumps(body, sort_keys=True).encode("utf-8"),
                                content_type="application/json", headers=headers)
        response.headers["Server"] = SERVER_NAME           # not the stack's name and version
        if close:
            response.force_close()
        return response

    def _text(self, status: int, text: str, content_type: str) -> web.Response:
        response = web.Response(status=status, body=text.encode("utf-8"), headers={"Content-Type": content_type})
        response.headers["Server"] = SERVER_NAME
        return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection: _Connection = request.protocol
        deadline = connection.request_started(request)
        try:
            response = await self._route(request, deadline)
            if connection.half_closed and not connection.more_requests_queued():
                response.force_close()                   # nothing more can come: close after answering
            return response
        finally:
            connection.request_finished()

    async def _route(self, request: web.BaseRequest, deadline: float) -> web.StreamResponse:
        path, method = request.path, request.method
        connection: _Connection = request.protocol
        if method != "POST":
            connection.deciding = True                   # no body to wait for: it is answered now
        if path == "/v1/taps":
            if method == "POST":
                return await self._post_tap(request, deadline)
            return self._method_not_allowed(method, "POST", connection)
        if path in ("/healthz", "/metrics"):
            if method != "GET":
                return self._method_not_allowed(method, "GET", connection)
            if path == "/metrics":
                if wants_prometheus_text(request):
                    return self._text(200, prometheus_text(self.metrics()), PROMETHEUS_TEXT_TYPE)
                return self._json(200, self.metrics())
            health = await self._loop.run_in_executor(self._pool, self.health)
            return self._json(200 if health["status"] != "failing" else 503, health)
        self.count("rejected_not_found")
        self._refused_request(connection.client)
        return self._json(404, {"error": "not_found", "detail": "no such resource"}, close=method != "GET")

    def _method_not_allowed(self, method: str, allow: str, connection) -> web.Response:
        self.count("rejected_method_not_allowed")
        self._refused_request(connection.client)
        return self._json(405, {"error": "method_not_allowed", "detail": "this method is not supported here"},
                          {"Allow": allow}, close=True)

    async def _post_tap(self, request: web.BaseRequest, deadline: float) -> web.Response:
        connection: _Connection = request.protocol
        if request.headers.get("Transfer-Encoding") is not None or request.content_length is None:
            self.count("rejected_length_required")
            self._refused_request(connection.client)
            return self._json(411, {"error": "length_required", "detail": "send the body with a Content-Length"}, close=True)
        length = request.content_length
        if length > self.config.max_body:
            self.count("rejected_body_too_large")
            self._refused_request(connection.client)
            log.warning("413 body of %d bytes > %d", length, self.config.max_body)
            # the body is not read: closing the connection is cheaper than draining it
            return self._json(413, {"error": "body_too_large",
                                    "detail": f"body of {length} bytes exceeds {self.config.max_body}"}, close=True)
        try:
            async with asyncio.timeout(max(0.0, deadline - self._loop.time())):
                body = await request.read()
        except TimeoutError:
            self.count("rejected_request_timeout")
            self._refused_request(connection.client)
            return self._json(408, {"error": "request_timeout", "detail": "the request was not complete in time"},
                              close=True)
        except Exception:  # noqa: BLE001 - the client went away mid-body (or lied about its length)
            if not connection.evicted:                   # (an evicted one was answered and counted)
                self.count("rejected_body_incomplete")
                self._refused_request(connection.client)
            return self._json(400, {"error": "body_incomplete", "detail": "the body ended before its Content-Length"},
                              close=True)
        connection.deciding = True
        status, payload, headers = await self._loop.run_in_executor(
            self._pool, self.intake.submit, request.headers.get("Content-Type"), body, connection.client)
        return self._json(status, payload, headers)

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> "Gateway":
        if self.firehose:
            self.firehose.start()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run():
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._listen())
            except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="http", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    async def _listen(self):
        c = self.config
        self._web = _WebServer(self._handle, gateway=self, loop=self._loop,
                               keepalive_timeout=c.idle_timeout_s, lingering_time=0,
                               max_line_size=c.max_header_line, max_field_size=c.max_header_line,
                               max_headers=c.max_headers, access_log=None)
        self._server = await self._loop.create_server(self._web, sock=self._sock, backlog=1024)

    async def _close(self):
        self._server.close()
        await self._web.shutdown(2.0)
        for transport in list(self._refused):
            transport.abort()

    def stop(self):
        if self._loop is not None and self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(15)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(15)
                self._loop.close()
        self._sock.close()
        self._pool.shutdown(wait=True)
        if self.firehose:
            self.firehose.stop()
            self.tweet_sink.close()
        self.tap_sink.close()

    # -- health and metrics: public, so no paths and no exception texts ----------------------------
    def spool_writable(self) -> bool:
        spool = getattr(self.tap_sink, "log", None) or getattr(self.tap_sink, "wal", None)
        return spool.writable() if spool is not None else True

    def health(self) -> dict:
        writable = self.spool_writable()
        out = {"status": "ok" if writable else "failing", "taps": self.tap_sink.health(),
               "uptime_s": round(time.time() - self.started_at, 3)}
        out["taps"]["writable"] = writable
        if self.firehose:
            out["firehose"] = self.firehose.status()
            if self.firehose.error and writable:
                out["status"] = "degraded"
        return out

    def metrics(self) -> dict:
        with self._counters_lock:
            counters = dict(self.counters)
        out = {"counters": counters, "tap_ids_known": self.intake.seen_count(),
               "open_connections": self._open, "clients_connected": len(self._per_client),
               "tap_ids_recovered_at_start": self.intake.recovered}
        if self.firehose:
            out["firehose"] = self.firehose.status()
        return out


PROMETHEUS_TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROMETHEUS_PREFIX = "tapfollow_gateway"


def wants_prometheus_text(request) -> bool:
    """``/metrics?format=prometheus``, or an ``Accept`` that asks for Prometheus's text format
    (Prometheus sends ``application/openmetrics-text…,text/plain;version=0.0.4…``) and not JSON.
    Anything else, as before, gets the JSON body."""
    if request.query.get("format") == "prometheus":
        return True
    accept = request.headers.get("Accept", "")
    return ("openmetrics" in accept or "text/plain" in accept) and "application/json" not in accept


def prometheus_text(metrics: dict) -> str:
    """``Gateway.metrics()`` in Prometheus's text exposition format (version 0.0.4).

    Counters: ``rejected_<reason>`` -> ``tapfollow_gateway_rejected_total{reason=…}``, every other
    counter ``<name>`` -> ``tapfollow_gateway_<name>_total``; the firehose's progress counts ->
    ``tapfollow_gateway_firehose_<field>_total``; connection and tap-id figures are gauges. Counter
    names are the gateway's own (``[a-z_]``), so no label value needs escaping."""
    counters = metrics.get("counters", {})
    lines = [f"# HELP {PROMETHEUS_PREFIX}_rejected_total Requests and reports refused, by reason",
             f"# TYPE {PROMETHEUS_PREFIX}_rejected_total counter"]
    lines += [f'{PROMETHEUS_PREFIX}_rejected_total{{reason="{name[len("rejected_"):]}"}} {value}'
              for name, value in sorted(counters.items()) if name.startswith("rejected_")]
    plain = {name: value for name, value in counters.items() if not name.startswith("rejected_")}
    for name in ("accepted", "duplicates"):
        plain.setdefault(name, 0)
    firehose = metrics.get("firehose") or {}
    for field in ("read", "written", "not_json", "write_retries"):
        if field in firehose:
            plain[f"firehose_{field}"] = firehose[field]
    for name, value in sorted(plain.items()):
        lines += [f"# TYPE {PROMETHEUS_PREFIX}_{name}_total counter", f"{PROMETHEUS_PREFIX}_{name}_total {value}"]
    gauges = {name: metrics[name] for name in ("tap_ids_known", "open_connections", "clients_connected")
              if name in metrics}
    if firehose:
        gauges["firehose_done"] = int(bool(firehose.get("done")))
        gauges["firehose_failed"] = int(bool(firehose.get("error")))
    for name, value in sorted(gauges.items()):
        lines += [f"# TYPE {PROMETHEUS_PREFIX}_{name} gauge", f"{PROMETHEUS_PREFIX}_{name} {value}"]
    return "\n".join(lines) + "\n"


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

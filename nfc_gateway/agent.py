"""The tap agent: one phone (or a kiosk reader) turning NFC touches into tap reports.

Run it as ``python -m nfc_gateway agent --device usb:… | udp:HOST:PORT …`` (see
``nfc_gateway/README.md``). For each touch the agent brings up the LLCP link
with nfcpy, runs the handshake of ``nfc_gateway.protocol`` over SNEP (the
NFC-DEP Initiator asks with SNEP GET, the Target answers from a SNEP server on
``protocol.SERVICE_NAME``), and only for a completed, verified touch writes its
tap report and delivers it to the gateway (``nfc_gateway.delivery``).

Every outcome is one JSON line on stdout (``{"event": …}``), so a supervisor or a
test can follow the agent without parsing logs.

nfcpy pitfalls handled here: its loggers are pinned to INFO (its DEBUG output
logs every frame and slows the link enough to break timing); the SNEP server
thread is made a daemon and the link is always terminated, so the process
never hangs on exit; discovery alternates 1-second windows, so on the
emulated link one side is fixed as ``--role target`` (the listener, started
first) and the other as ``--role initiator``, and the agent keeps re-entering
discovery until its deadline rather than giving up after one window.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from schemas.parse import parse_line
from schemas.proofs import sign_report_of
from schemas.timefmt import format_rfc3339

from nfc_gateway import protocol
from nfc_gateway.delivery import GatewayClient, Outbox, deliver_with_outbox
from nfc_gateway.protocol import HandshakeError

log = logging.getLogger("nfc_gateway.agent")

# Bounds on one touch: a real touch finishes in well under a second; a peer that
# keeps the link up without finishing is cut off so the phone can touch again.
TOUCH_TIMEOUT_S = 5.0
SNEP_ANSWER_TIMEOUT_S = 2.0
NFCPY_MAX_SNEP_BYTES = 16 * 1024


def quiet_nfcpy():
    """Force nfcpy's loggers to INFO whatever the root level is (its DEBUG floods)."""
    for name in ("nfc", "nfc.clf", "nfc.dep", "nfc.llcp", "nfc.llcp.llc", "nfc.snep", "nfc.clf.udp"):
        logging.getLogger(name).setLevel(logging.INFO)


def emit(event: str, **fields):
    sys.stdout.write(json.dumps({"event": event, **fields}, sort_keys=True) + "\n")
    sys.stdout.flush()


DEFAULT_ACCURACY_M = 10


def build_report(touch: protocol.CompletedTouch, lat: float, lng: float, private_key,
                 accuracy_m: int = DEFAULT_ACCURACY_M) -> dict:
    """The contract's tap report for a verified touch, signed whole by this phone (``report_sig``).

    The phone signs its own tap_id, position, accuracy and time with the claim
    signatures (``schemas.proofs.report_bytes``), so nobody holding this report or
    the claims of the NFC link can file the partner's report or move this one.
    ``lat``/``lng`` are rounded to the 1e-7 degrees that are signed, ``ts`` to the
    millisecond, so the report says exactly what was signed.
    """
    accuracy_m = int(math.ceil(accuracy_m))
    report = {
        "tap_id": protocol.tap_id_for(touch.user_id, touch.nonce),
        "user_id": touch.user_id,
        "peer_user_id": touch.peer_user_id,
        "nonce": touch.nonce,
        "ts": format_rfc3339(touch.seen_at),
        "lat": round(lat, 7),
        "lng": round(lng, 7),
        "proof": touch.proof,
        "peer_proof": touch.peer_proof,
        "accuracy_m": accuracy_m,
    }
    parsed = parse_line("taps", json.dumps(report))  # raises InvalidRecord if we ever built a bad one
    report["report_sig"] = sign_report_of(private_key, parsed)
    return report


@dataclass
class AgentConfig:
    device: str
    role: Optional[str]                  # "initiator", "target" or None (alternate, for real phones)
    user_id: str
    private_key: object
    public_keys: dict
    lat: float
    lng: float
    gateway_url: Optional[str]
    outbox_dir: Optional[str] = None
    touches: int = 0                     # stop after this many link activations (0: run until deadline)
    timeout_s: float = 0.0               # stop after this long (0: forever)
    max_skew_s: float = protocol.DEFAULT_MAX_SKEW_S
    post_deadline_s: float = 30.0
    accuracy_m: int = DEFAULT_ACCURACY_M   # this phone's position accuracy, whole metres (signed)


@dataclass
class TouchOutcome:
    touch: Optional[protocol.CompletedTouch] = None
    error: Optional[HandshakeError] = None
    link_up: bool = False
    finished: threading.Event = field(default_factory=threading.Event)


class _TargetSnepServer:
    """SNEP server answering the handshake; built lazily so nfcpy imports only when used."""

    @staticmethod
    def create(llc, handshake: protocol.TargetHandshake, outcome: TouchOutcome):
        import ndef
        import nfc.snep

        class Server(nfc.snep.SnepServer):
            def __init__(self):
                # nfcpy's own limit only caps memory; ours is checked below, where
                # an oversized message can be refused and counted by name.
                super().__init__(llc, protocol.SERVICE_NAME, max_acceptable_length=NFCPY_MAX_SNEP_BYTES)
                # nfcpy's server thread is not a daemon: a link that never closes
                # cleanly would keep the process alive forever.
                self.daemon = True

            def process_get_request(self, records):
                try:
                    try:
                        size = len(b"".join(ndef.message_encoder(records)))
                    except Exception:  # noqa: BLE001 - ndeflib raises several types on odd records
                        raise HandshakeError("ndef_malformed", "received NDEF records cannot be re-encoded") from None
                    mime, payload = handshake.answer(records, size)
                except HandshakeError as exc:
                    outcome.error = outcome.error or exc
                    log.warning("touch refused: %s", exc)
                    # 0xC2 Bad Request for what we cannot read, 0xFF Reject for what we will not sign
                    return 0xC2 if exc.reason.startswith("ndef_") or exc.reason == "wrong_mime_type" else 0xFF
                if handshake.state == "done":
                    outcome.touch = handshake.result
                return [ndef.Record(mime, "", payload)]

            def process_put_request(self, records):
                outcome.error = outcome.error or HandshakeError("out_of_order", "SNEP PUT is not part of the handshake")
                return 0xC2

        return Server()


def _initiator_exchange(llc, handshake: protocol.InitiatorHandshake, outcome: TouchOutcome):
    """Runs in its own thread while nfcpy's run loop moves the PDUs."""
    import ndef
    import nfc.llcp
    import nfc.snep

    client = nfc.snep.SnepClient(llc, max_ndef_msg_recv_size=protocol.MAX_NDEF_BYTES)

    def ask(mime: str, payload: bytes, expect: str) -> protocol.Message:
        try:
            octets = client.get_octets(b"".join(ndef.message_encoder([ndef.Record(mime, "", payload)])),
                                       timeout=SNEP_ANSWER_TIMEOUT_S)
        except nfc.snep.SnepError as exc:
            raise HandshakeError("peer_refused", f"peer answered SNEP error 0x{exc.errno:02X} {exc.args[1]}") from None
        except nfc.llcp.Error as exc:
            raise HandshakeError("link_lost", f"LLCP error while waiting for the peer: {exc}") from None
        if octets is None:
            raise HandshakeError("link_lost", "no answer from the peer (link dropped or answer too large)")
        try:
            records = list(ndef.message_decoder(bytes(octets), known_types={}))
        except ndef.DecodeError as exc:
            raise HandshakeError("ndef_malformed", f"undecodable NDEF answer: {exc}") from None
        return protocol.decode_message(records, expect, len(octets))

    try:
        try:
            client.connect(protocol.SERVICE_NAME)
        except nfc.llcp.Error as exc:
            raise HandshakeError("peer_refused", f"peer has no tap service: {exc}") from None
        mime, payload = handshake.hello()
        hello = ask(mime, payload, protocol.MIME_HELLO)
        mime, payload = handshake.on_hello(hello)
        claim = ask(mime, payload, protocol.MIME_CLAIM)
        mime, payload = handshake.on_claim(claim)
        ack = ask(mime, payload, protocol.MIME_ACK)
        outcome.touch = handshake.on_ack(ack)
    except HandshakeError as exc:
        outcome.error = exc
    except Exception as exc:  # noqa: BLE001 - an nfcpy surprise must end the touch, not the agent
        log.exception("unexpected failure during the exchange")
        outcome.error = HandshakeError("link_lost", f"{type(exc).__name__}: {exc}")
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - the link may already be gone
            pass
        outcome.finished.set()


class TapAgent:
    def __init__(self, config: AgentConfig, clock: Callable[[], float] = time.time):
        self.cfg = config
        self.clock = clock
        self.counters: dict[str, int] = {}
        self.client = GatewayClient(config.gateway_url, deadline_s=config.post_deadline_s) if config.gateway_url else None
        self.outbox = Outbox(config.outbox_dir) if config.outbox_dir else None

    def count(self, name: str):
        self.counters[name] = self.counters.get(name, 0) + 1

    def _peer_key(self, user_id: str):
        return self.cfg.public_keys.get(user_id)

    def run(self) -> int:
        import nfc

        quiet_nfcpy()
        self._stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            import signal
            # nfcpy swallows KeyboardInterrupt and answers False, like a device error;
            # a flag checked by terminate() ends the link cleanly instead
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self._stop.set())
        self.flush_outbox()
        started = time.monotonic()
        deadline = started + self.cfg.timeout_s if self.cfg.timeout_s else None
        try:
            clf = nfc.ContactlessFrontend(self.cfg.device)
        except IOError as exc:
            emit("device_error", device=self.cfg.device, error=str(exc))
            return 1
        emit("listening", device=self.cfg.device, role=self.cfg.role or "auto", user_id=self.cfg.user_id)
        touches = 0
        try:
            while (deadline is None or time.monotonic() < deadline) and not self._stop.is_set():
                outcome, status = self._one_link(clf, deadline)
                if status is False and not outcome.link_up and not self._stop.is_set():
                    # nfcpy answers False only for a device error (unplugged, claimed by
                    # another driver); looping would spin on a dead reader
                    emit("device_error", device=self.cfg.device, error="the NFC device stopped responding")
                    return 1
                if not outcome.link_up:
                    continue
                touches += 1
                self._finish_touch(outcome)
                if self.cfg.touches and touches >= self.cfg.touches:
                    break
        finally:
            clf.close()
        emit("stopped", touches=touches, counters=self.counters)
        return 0

    def _one_link(self, clf, deadline) -> tuple[TouchOutcome, object]:
        outcome = TouchOutcome()
        role = self.cfg.role
        common = dict(user_id=self.cfg.user_id, private_key=self.cfg.private_key, peer_key=self._peer_key,
                      clock=self.clock, max_skew_s=self.cfg.max_skew_s)
        state = {}

        def on_startup(llc):
            # Both handshakes are prepared: with role=None nfcpy decides the
            # role per discovery window, and only then do we know which one runs.
            state["target"] = protocol.TargetHandshake(**common)
            state["server"] = _TargetSnepServer.create(llc, state["target"], outcome)
            return llc

        def on_connect(llc):
            import nfc.dep
            outcome.link_up = True
            state["link_up_at"] = time.monotonic()
            if isinstance(llc.mac, nfc.dep.Initiator):
                state["initiator"] = protocol.InitiatorHandshake(**common)
                threading.Thread(target=_initiator_exchange, name="tap-exchange", daemon=True,
                                 args=(llc, state["initiator"], outcome)).start()
            state["server"].start()  # the initiator answers nothing but must accept SNEP connects
            return True

        def terminate():
            now = time.monotonic()
            if self._stop.is_set() or (deadline is not None and now >= deadline):
                return True
            if outcome.link_up:
                if outcome.finished.is_set():
                    return True
                if now - state["link_up_at"] > TOUCH_TIMEOUT_S:
                    outcome.error = outcome.error or HandshakeError("touch_timeout", f"no complete exchange within {TOUCH_TIMEOUT_S:g} s")
                    return True
            return False

        llcp_options = {
            "on-startup": on_startup, "on-connect": on_connect,
            # LLCP's own encryption needs OpenSSL 1.x through ctypes, absent on
            # current systems; the claims are signed end to end anyway.
            "sec": False,
        }
        if role:
            llcp_options["role"] = role
        status = clf.connect(llcp=llcp_options, terminate=terminate)
        if "initiator" in state:
            # the link is down, so the exchange thread's sockets are closed; let it
            # record how it ended before the outcome is read
            outcome.finished.wait(SNEP_ANSWER_TIMEOUT_S + 1.0)
        return outcome, status

    def _finish_touch(self, outcome: TouchOutcome):
        touch = outcome.touch
        if touch is None:
            error = outcome.error or HandshakeError("link_lost", "link dropped before the exchange completed")
            self.count(f"rejected_{error.reason}")
            emit("touch_failed", reason=error.reason, detail=error.detail)
            return
        self.count("touches_completed")
        report = build_report(touch, self.cfg.lat, self.cfg.lng, self.cfg.private_key, self.cfg.accuracy_m)
        emit("touch_completed", tap_id=report["tap_id"], peer_user_id=touch.peer_user_id, nonce=touch.nonce)
        self._deliver(report)

    def _deliver(self, report: dict):
        if self.client is None:
            emit("report", report=report)
            return
        result = deliver_with_outbox(self.client, self.outbox, report)
        self.count("reports_delivered" if result.delivered else "reports_undelivered")
        emit("report_delivered" if result.delivered else "report_undelivered", tap_id=result.tap_id,
             status=result.status, attempts=result.attempts, detail=result.detail[:300])

    def flush_outbox(self):
        if self.outbox is None or self.client is None:
            return
        for report in self.outbox.pending():
            self._deliver(report)


def portal_signin_link(portal_base: str, user_id: str, private_key) -> str:
    """Sign the portal's single-use challenge with this phone's key (``schemas.signin``); the link to open."""
    from schemas.signin import fetch_signin_link
    return fetch_signin_link(portal_base, "subscriber", user_id, private_key)

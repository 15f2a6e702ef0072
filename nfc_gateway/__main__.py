"""Command line of the NFC gateway: ``python -m nfc_gateway {agent,serve,keygen} …``.

* ``agent``  -- the phone side: NFC touches in, tap reports out to the gateway.
* ``serve``  -- the gateway: tap reports over HTTP and the firehose in, Kafka
  topics or the contract's JSONL files out.
* ``firehose`` -- the live firehose client: one connection per partition in, the same
  sinks as ``serve`` out (``nfc_gateway.firehose_client``).
* ``keygen`` -- a new Ed25519 key for a user (private key file + users.jsonl line).
* ``login``  -- the phone signs the portal's sign-in challenge and prints the sign-in link.

Exit status 0 on success; 2 with a one-line reason on stderr for a bad argument,
an unreadable key store, or an invalid configuration.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value
    return parse


def _non_negative(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
        return value
    return parse


def _lat(text):
    value = float(text)
    if not -90 <= value <= 90:
        raise argparse.ArgumentTypeError(f"latitude {value} out of range [-90, 90]")
    return value


def _lng(text):
    value = float(text)
    if not -180 <= value <= 180:
        raise argparse.ArgumentTypeError(f"longitude {value} out of range [-180, 180]")
    return value


def _accuracy(text):
    from schemas.proofs import MAX_ACCURACY_M
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= MAX_ACCURACY_M:           # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"accuracy {text} m outside 0..{MAX_ACCURACY_M}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nfc_gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="run the tap agent on an NFC device")
    agent.add_argument("--device", required=True, help="nfcpy device path: usb[:vid:pid|:bus:dev], tty:…, or udp:HOST:PORT (emulated link)")
    agent.add_argument("--role", choices=("initiator", "target", "auto"), default="auto",
                       help="NFC-DEP role; on the emulated link run one side as target (start it first) and one as initiator")
    agent.add_argument("--user-id", required=True, help="this phone's user (Twitter id_str)")
    agent.add_argument("--key", required=True, help="file with base64 of this user's 32-byte Ed25519 seed")
    agent.add_argument("--keys", required=True, help="peers' public keys: users.jsonl[.gz] or JSON {user_id: pubkey}")
    agent.add_argument("--lat", type=_lat, required=True, help="this phone's latitude (WGS84)")
    agent.add_argument("--lng", type=_lng, required=True, help="this phone's longitude (WGS84)")
    agent.add_argument("--gateway", help="gateway base URL, e.g. http://127.0.0.1:8080 (without it reports go to stdout)")
    agent.add_argument("--outbox", help="directory keeping undelivered reports across restarts")
    agent.add_argument("--touches", type=_non_negative(int), default=0, help="stop after N touches (0: no limit)")
    agent.add_argument("--timeout", type=_non_negative(float), default=0.0, help="stop after S seconds (0: no limit)")
    agent.add_argument("--max-skew", type=_positive(float), default=10.0, help="refuse a touch whose time is this many seconds off our clock")
    agent.add_argument("--accuracy", type=_accuracy, default=None,
                       help="this phone's position accuracy in metres (default 10); rounded up to whole "
                            "metres and signed into each report as accuracy_m")
    agent.add_argument("--post-deadline", type=_positive(float), default=30.0, help="give up delivering a report after S seconds (it stays in the outbox)")

    serve = sub.add_parser("serve", help="run the gateway service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_non_negative(int), default=8080, help="0 picks a free port (printed on stdout)")
    serve.add_argument("--output", default="gateway-out", help="directory for taps.jsonl/tweets.jsonl (file mode) and the spool/offsets")
    serve.add_argument("--users", help="users.jsonl[.gz] or key map (required): reports are signature-checked, "
                                       "and reports naming users not in it are refused (422)")
    serve.add_argument("--require-known-users", action="store_true",
                       help="accepted for compatibility: unknown users are always refused now")
    serve.add_argument("--kafka-bootstrap", help="host:port[,…]: hand records to Kafka instead of JSONL files")
    serve.add_argument("--taps-topic", default="taps")
    serve.add_argument("--tweets-topic", default="tweets")
    serve.add_argument("--firehose", help="Twitter JSON lines to replay (a file, .gz, or - for stdin)")
    serve.add_argument("--rate", type=_non_negative(float), default=0.0, help="firehose records per second (0: as fast as possible)")
    serve.add_argument("--device-rate", type=_positive(float), default=1.0, help="sustained reports per second allowed per device")
    serve.add_argument("--device-burst", type=_positive(int), default=10, help="burst of reports allowed per device")
    serve.add_argument("--max-body", type=_positive(int), default=16 * 1024, help="largest accepted request body in bytes")
    serve.add_argument("--max-connections", type=_positive(int), default=1024,
                       help="open connections served at once; past it the slowest unfinished one is dropped "
                            "(503 only if every connection has a request being decided)")
    serve.add_argument("--max-connections-per-client", type=_positive(int), default=64,
                       help="open connections one client address (IPv6: its /64) may hold; more get 429")
    serve.add_argument("--client-rate", type=_positive(float), default=None,
                       help="reports/s one client address may store, one per started KiB (default: 50 devices' worth)")
    serve.add_argument("--client-burst", type=_positive(int), default=None, help="burst of reports per client address")
    serve.add_argument("--refusal-rate", type=_positive(float), default=1.0,
                       help="refused requests/s one client address may cause before its reports get 429 client_flood")
    serve.add_argument("--refusal-burst", type=_positive(int), default=60,
                       help="refused requests one client address may cause at once")
    serve.add_argument("--request-timeout", type=_positive(float), default=10.0,
                       help="seconds from a request's first byte until its headers and body must be in (else 408)")
    serve.add_argument("--idle-timeout", type=_positive(float), default=15.0,
                       help="seconds a keep-alive connection may sit idle before it is closed")
    serve.add_argument("--instance-id", default=None, help="names this gateway in Kafka keys/headers (default: hostname)")

    firehose = sub.add_parser("firehose", help="stream the live firehose (one connection per partition) to the sink")
    from nfc_gateway.firehose_client import add_arguments as add_firehose_arguments
    add_firehose_arguments(firehose)

    keygen = sub.add_parser("keygen", help="create a user's key pair")
    keygen.add_argument("--user-id", required=True)
    keygen.add_argument("--key-out", required=True, help="private key file to create (mode 0600; never overwritten)")
    keygen.add_argument("--users-out", help="append the user's users.jsonl line here")

    login = sub.add_parser("login", help="sign the portal's challenge with this phone's key; print the sign-in link")
    login.add_argument("--portal", required=True, help="the portal's base URL, e.g. http://127.0.0.1:8088")
    login.add_argument("--user-id", required=True, help="this phone's user (Twitter id_str)")
    login.add_argument("--key", required=True, help="file with base64 of this user's 32-byte Ed25519 seed")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "agent":
            return _agent(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "login":
            return _login(args)
        if args.command == "firehose":
            return _firehose(args)
    except ConfigError as exc:
        print(f"nfc_gateway {args.command}: {exc}", file=sys.stderr)
        return 2
    return 2


class ConfigError(Exception):
    pass


def _agent(args) -> int:
    from nfc_gateway.agent import AgentConfig, TapAgent
    from nfc_gateway.keys import KeyStoreError, load_private_key, load_public_keys

    if not args.user_id.isdigit():
        raise ConfigError(f"--user-id {args.user_id!r} is not a Twitter id_str")
    if args.device.startswith("udp") and args.role == "auto":
        raise ConfigError("on the emulated udp link give one agent --role target and the other --role initiator")
    try:
        key = load_private_key(args.key)
        keys = load_public_keys(args.keys)
    except KeyStoreError as exc:
        raise ConfigError(str(exc)) from None
    config = AgentConfig(
        device=args.device, role=None if args.role == "auto" else args.role, user_id=args.user_id,
        private_key=key, public_keys=keys, lat=args.lat, lng=args.lng, gateway_url=args.gateway,
        outbox_dir=args.outbox, touches=args.touches, timeout_s=args.timeout, max_skew_s=args.max_skew,
        post_deadline_s=args.post_deadline)
    if args.accuracy is not None:
        config.accuracy_m = int(math.ceil(args.accuracy))    # whole metres, never better than measured
    return TapAgent(config).run()


def _serve(args) -> int:
    from nfc_gateway.service import GatewayConfig, run_gateway
    from nfc_gateway.keys import KeyStoreError, load_public_keys

    if args.firehose and args.firehose != "-" and not os.access(args.firehose, os.R_OK):
        raise ConfigError(f"--firehose {args.firehose}: not a readable file")
    if not args.users:
        raise ConfigError("--users is required: the gateway refuses reports of users it does not know")
    try:
        keys = load_public_keys(args.users)
    except KeyStoreError as exc:
        raise ConfigError(str(exc)) from None
    config = GatewayConfig(
        host=args.host, port=args.port, output_dir=args.output, public_keys=keys,
        require_known_users=args.require_known_users, kafka_bootstrap=args.kafka_bootstrap,
        taps_topic=args.taps_topic, tweets_topic=args.tweets_topic, firehose=args.firehose,
        firehose_rate=args.rate, device_rate=args.device_rate, device_burst=args.device_burst,
        max_body=args.max_body, instance_id=args.instance_id, max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client, client_rate=args.client_rate,
        client_burst=args.client_burst, refusal_rate=args.refusal_rate, refusal_burst=args.refusal_burst,
        request_timeout_s=args.request_timeout, idle_timeout_s=args.idle_timeout)
    try:
        return run_gateway(config)
    except OSError as exc:
        raise ConfigError(f"cannot start: {exc}") from None


def _firehose(args) -> int:
    from nfc_gateway import firehose_client
    try:
        return firehose_client.run_from_args(args)
    except firehose_client.ConfigError as exc:
        raise ConfigError(str(exc)) from None


def _keygen(args) -> int:
    from nfc_gateway.keys import write_new_key

    if not args.user_id.isdigit():
        raise ConfigError(f"--user-id {args.user_id!r} is not a Twitter id_str")
    try:
        pubkey = write_new_key(args.key_out)
    except FileExistsError:
        raise ConfigError(f"{args.key_out} exists; refusing to overwrite a private key") from None
    line = json.dumps({"user_id": args.user_id, "pubkey": pubkey, "alerts_opt_in": False, "stats_opt_out": False})
    if args.users_out:
        with open(args.users_out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    print(line)
    return 0


def _login(args) -> int:
    from nfc_gateway.agent import portal_signin_link
    from nfc_gateway.keys import KeyStoreError, load_private_key
    from schemas.signin import SigninUnavailable

    if not args.user_id.isdigit():
        raise ConfigError(f"--user-id {args.user_id!r} is not a Twitter id_str")
    try:
        print(portal_signin_link(args.portal, args.user_id, load_private_key(args.key)))
    except (KeyStoreError, SigninUnavailable) as exc:
        raise ConfigError(str(exc)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())

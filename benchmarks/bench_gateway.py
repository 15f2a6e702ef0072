"""Throughput of the NFC gateway on loopback: accepted tap reports/s and firehose records/s.

    python benchmarks/bench_gateway.py [--reports 20000] [--clients 16] [--seconds 20]
                                       [--firehose-records 200000] [--kafka-records 20000] [--no-kafka]
                                       [--slow-connections 500]

* Taps: the gateway runs as its own process (``python -m nfc_gateway serve``,
  file sink, signatures verified against a users.jsonl); this process drives it
  with ``--clients`` threads, each on a keep-alive HTTP/1.1 connection, posting
  distinct signed reports until ``--reports`` are accepted or ``--seconds``
  pass. Every accepted report is fsynced before its 201 (group commit).
  The same run is repeated with ``--slow-connections`` (500) slow clients open:
  connections from 10 loopback addresses each trickling a byte of a request every
  2 s, re-opened as soon as the gateway cuts them at their request deadline (408).
* Firehose: ``--firehose-records`` v1.1-shaped lines (~0.9 KB each) replayed
  at full speed into ``tweets.jsonl`` (fsync per batch, offsets committed),
  and into a fresh Kafka topic when a broker answers at 127.0.0.1:9092.

Prints one line per measurement and a JSON summary at the end.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nfc_gateway.testing import signed_report, start_gateway, users_jsonl  # noqa: E402
from kafka_client import port_open  # noqa: E402

PAIRS = [("1001", "1002"), ("1002", "1001"), ("1003", "1004"), ("1004", "1003")]


def make_reports(n: int) -> list[bytes]:
    return [json.dumps(signed_report(*PAIRS[i % 4], seq=i)).encode() for i in range(n)]


class SlowClients:
    """``n`` slow connections spread over ``addresses`` loopback sources (127.0.1.x, so the
    per-client cap does not simply refuse them), each trickling one byte of a request
    every ``interval`` s; one cut by the gateway (408 at its deadline) is opened again, so
    ``n`` stay open for the whole measurement. Bounded: stops at ``stop()``."""

    def __init__(self, port: int, n: int, addresses: int = 10, interval: float = 2.0):
        self.port, self.n, self.addresses, self.interval = port, n, addresses, interval
        self.request = (b"POST /v1/taps HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 400\r\n\r\n")
        self.socks: list = [None] * n
        self.sent = [0] * n
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int):
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                            source_address=(f"127.0.1.{1 + i % self.addresses}", 0))
            sock.setblocking(False)
        except OSError:
            sock = None
        self.socks[i], self.sent[i] = sock, 0

    def start(self) -> "SlowClients":
        for i in range(self.n):
            self._open(i)
        self._thread.start()
        return self

    def open_count(self) -> int:
        return sum(1 for sock in self.socks if sock is not None)

    def _run(self):
        while not self._stop.wait(self.interval):
            for i, sock in enumerate(self.socks):
                if self._stop.is_set():
                    break
                try:
                    if sock is None:
                        raise OSError
                    try:
                        if sock.recv(4096) == b"":           # answered (408) and closed
                            raise OSError
                    except BlockingIOError:
                        pass
                    sock.send(self.request[self.sent[i] % len(self.request):][:1])
                    self.sent[i] += 1
                except OSError:
                    if sock is not None:
                        sock.close()
                    self.reopened += 1
                    self._open(i)

    def stop(self):
        self._stop.set()
        self._thread.join(30)
        for sock in self.socks:
            if sock is not None:
                sock.close()


def bench_taps(n: int, clients: int, seconds: float, workdir: Path, slow: int = 0, label: str = "taps") -> dict:
    users = workdir / "users.jsonl"
    users_jsonl(users)
    bodies = make_reports(n)
    out = workdir / f"{label}-out"
    proc, port = start_gateway(out, "--users", str(users), "--device-rate", "1000000000",
                               "--device-burst", "1000000000", stderr=subprocess.PIPE, log_level="ERROR")
    slow_clients = SlowClients(port, slow).start() if slow else None
    next_index = iter(range(n))
    lock = threading.Lock()
    accepted = [0]
    other = {}
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while time.monotonic() < deadline:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            t = time.perf_counter()
            conn.request("POST", "/v1/taps", body=bodies[i], headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - t)
            with lock:
                if response.status == 201:
                    accepted[0] += 1
                else:
                    other[response.status] = other.get(response.status, 0) + 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    slow_open = slow_clients.open_count() if slow_clients else 0
    if slow_clients:
        slow_clients.stop()
    proc.terminate()
    proc.wait(10)
    stored = sum(1 for _ in open(out / "taps.jsonl", "rb"))
    latencies.sort()
    pct = lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)  # noqa: E731
    return {"accepted": accepted[0], "other_statuses": other, "stored": stored, "seconds": round(elapsed, 3),
            "reports_per_s": round(accepted[0] / elapsed, 1), "clients": clients,
            "latency_ms_p50": pct(0.5), "latency_ms_p99": pct(0.99), "slow_connections": slow,
            "slow_open_at_end": slow_open, "slow_reopened": slow_clients.reopened if slow_clients else 0}


def write_firehose(path: Path, n: int) -> int:
    text = "Fireworks over the river tonight! " * 6
    with open(path, "wb") as handle:
        for i in range(n):
            tweet = {
                "created_at": "Wed Oct 10 20:19:24 +0000 2018", "id_str": str(1050118621198921728 + i),
                "text": text[:140], "lang": "en", "truncated": False,
                "user": {"id_str": str(10_000 + i % 5000), "screen_name": f"user{i % 5000}", "followers_count": i % 977},
                "coordinates": {"type": "Point", "coordinates": [139.7671 + (i % 100) * 1e-4, 35.6812]},
                "place": None, "entities": {"hashtags": [{"text": "hanabi", "indices": [0, 7]}], "urls": []},
                "timestamp_ms": str(1539202764000 + i),
            }
            handle.write(json.dumps(tweet).encode() + b"\n")
    return path.stat().st_size


def bench_firehose(path: Path, size: int, n: int, sink, label: str) -> dict:
    from nfc_gateway.firehose import FirehoseReplay
    started = time.monotonic()
    replay = FirehoseReplay(str(path), sink, rate=0).start()
    replay.done.wait()
    elapsed = time.monotonic() - started
    sink.close()
    if replay.error:
        raise RuntimeError(replay.error)
    return {"sink": label, "records": replay.written, "seconds": round(elapsed, 3),
            "records_per_s": round(replay.written / elapsed, 1), "mb_per_s": round(size / elapsed / 1e6, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--firehose-records", type=int, default=200000)
    parser.add_argument("--kafka-records", type=int, default=20000, help="firehose records for the Kafka run")
    parser.add_argument("--no-kafka", action="store_true")
    parser.add_argument("--slow-connections", type=int, default=500,
                        help="slow (trickling) connections held open during the second tap run (0: skip it)")
    args = parser.parse_args(argv)

    from nfc_gateway.sinks import FileTweetSink, FirehoseState
    summary = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        for label, slow in (("taps", 0), ("taps_under_slow_clients", args.slow_connections)):
            if label != "taps" and not slow:
                continue
            taps = bench_taps(args.reports, args.clients, args.seconds, work, slow=slow, label=label)
            summary[label] = taps
            print(f"taps with {slow} slow connections open: {taps['accepted']} accepted in {taps['seconds']} s = "
                  f"{taps['reports_per_s']} reports/s ({taps['clients']} clients, p50 {taps['latency_ms_p50']} ms, "
                  f"p99 {taps['latency_ms_p99']} ms, stored {taps['stored']}, other {taps['other_statuses']}"
                  + (f", slow open at end {taps['slow_open_at_end']}, re-opened {taps['slow_reopened']}" if slow else "")
                  + ")", flush=True)

        source = work / "firehose.jsonl"
        size = write_firehose(source, args.firehose_records)
        out = work / "fh-out"
        out.mkdir()
        files = bench_firehose(source, size, args.firehose_records, FileTweetSink(out, FirehoseState(out)), "file")
        summary["firehose_file"] = files
        print(f"firehose -> tweets.jsonl: {files['records_per_s']} records/s ({files['mb_per_s']} MB/s)", flush=True)

        if not args.no_kafka and port_open("127.0.0.1:9092"):
            from nfc_gateway.kafka_sink import KafkaTweetSink
            topic = f"nfcgw-bench-{uuid.uuid4().hex[:8]}"
            kafka_source = work / "firehose-kafka.jsonl"
            kafka_size = write_firehose(kafka_source, args.kafka_records)
            sink = KafkaTweetSink(str(work / "kafka-out"), "127.0.0.1:9092", topic, "bench")
            kafka = bench_firehose(kafka_source, kafka_size, args.kafka_records, sink, f"kafka:{topic}")
            summary["firehose_kafka"] = kafka
            from kafka_client import delete_topics
            delete_topics([topic], "127.0.0.1:9092")      # the broker is shared: leave nothing behind
            print(f"firehose -> Kafka topic {topic}: {kafka['records_per_s']} records/s ({kafka['mb_per_s']} MB/s)", flush=True)
        else:
            print("firehose -> Kafka: skipped (no broker at 127.0.0.1:9092)", flush=True)
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

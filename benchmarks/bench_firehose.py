"""Sustained records/s of the live firehose client, beside today's file replay, in one run.

    python benchmarks/bench_firehose.py [--records 100000] [--kafka-records 50000]
                                        [--partitions 2] [--kafka-bootstrap 127.0.0.1:39092]

The emulator (``nfc_gateway.firehose_emulator``, its own process, ``--rate 0``: as fast as
the client reads) serves ``bench_gateway``'s v1.1-shaped lines over loopback HTTP; the
client (``python -m nfc_gateway firehose``, its own process) writes them to
``tweets.jsonl`` (fsync and state commit per batch) and, with a broker, to a fresh Kafka
topic (one transaction per batch). Time runs from the client's ready line to the moment
its ``/metrics`` counts every record. The same lines then go through today's replay
(``serve --firehose FILE``'s ``FirehoseReplay``) into the same sinks, for the ratio.
Prints one line per figure and a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_gateway import bench_firehose, write_firehose  # noqa: E402
from kafka_client import port_open  # noqa: E402

TOKEN = "bench-token-" + uuid.uuid4().hex


def _ready(proc: subprocess.Popen, what: str) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} did not start")
    return json.loads(line)


def _records(metrics_url: str) -> int:
    with urllib.request.urlopen(metrics_url, timeout=30) as resp:
        text = resp.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("firehose_records_total")))


def bench_client(source: Path, n: int, size: int, partitions: int, out: Path, *sink_flags: str) -> dict:
    env = dict(os.environ, FIREHOSE_EMULATOR_TOKEN=TOKEN, BENCH_FIREHOSE_TOKEN=TOKEN)
    emulator = subprocess.Popen([sys.executable, "-m", "nfc_gateway.firehose_emulator", "--tweets", str(source),
                                 "--port", "0", "--partitions", str(partitions), "--rate", "0"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    client = None
    try:
        url = _ready(emulator, "the emulator")["url"]
        client = subprocess.Popen([sys.executable, "-m", "nfc_gateway", "--log-level", "WARNING", "firehose",
                                   "--url", url, "--token-env", "BENCH_FIREHOSE_TOKEN", "--partitions", str(partitions),
                                   "--output", str(out), "--metrics-port", "0", *sink_flags],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        metrics = _ready(client, "the client")["metrics"]
        started = time.monotonic()
        deadline = started + 1800
        while (done := _records(metrics)) < n:
            if time.monotonic() > deadline or client.poll() is not None:
                raise RuntimeError(f"client stopped at {done} of {n} records")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        for proc in (client, emulator):
            if proc is not None:
                proc.terminate()
                proc.wait(60)
    return {"records": n, "partitions": partitions, "seconds": round(elapsed, 3),
            "records_per_s": round(n / elapsed, 1), "mb_per_s": round(size / elapsed / 1e6, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records for the file runs")
    parser.add_argument("--kafka-records", type=int, default=50_000, help="records for the Kafka runs")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--kafka-bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--no-kafka", action="store_true")
    args = parser.parse_args(argv)
    from nfc_gateway.sinks import FileTweetSink, FirehoseState
    summary = {"load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-firehose-") as tmp:
        work = Path(tmp)
        source = work / "firehose.jsonl"
        size = write_firehose(source, args.records)
        live = bench_client(source, args.records, size, args.partitions, work / "live-files")
        print(f"emulator -> client -> tweets.jsonl: {live['records_per_s']} records/s ({live['mb_per_s']} MB/s)", flush=True)
        replay = bench_firehose(source, size, args.records, FileTweetSink(work / "replay", FirehoseState(work / "replay")), "file")
        print(f"replay (serve --firehose) -> tweets.jsonl: {replay['records_per_s']} records/s", flush=True)
        summary["files"] = {"live": live, "replay": replay, "ratio": round(live["records_per_s"] / replay["records_per_s"], 3)}

        if not args.no_kafka and port_open(args.kafka_bootstrap):
            from kafka_client import delete_topics
            from nfc_gateway.kafka_sink import KafkaTweetSink
            kafka_source = work / "firehose-kafka.jsonl"
            kafka_size = write_firehose(kafka_source, args.kafka_records)
            topics = [f"fh-bench-live-{uuid.uuid4().hex[:8]}", f"fh-bench-replay-{uuid.uuid4().hex[:8]}"]
            try:
                live_k = bench_client(kafka_source, args.kafka_records, kafka_size, args.partitions, work / "live-kafka",
                                      "--kafka-bootstrap", args.kafka_bootstrap, "--tweets-topic", topics[0])
                print(f"emulator -> client -> Kafka: {live_k['records_per_s']} records/s ({live_k['mb_per_s']} MB/s)", flush=True)
                sink = KafkaTweetSink(str(work / "replay-kafka"), args.kafka_bootstrap, topics[1], "bench")
                replay_k = bench_firehose(kafka_source, kafka_size, args.kafka_records, sink, f"kafka:{topics[1]}")
                print(f"replay (serve --firehose) -> Kafka: {replay_k['records_per_s']} records/s", flush=True)
            finally:
                delete_topics(topics, args.kafka_bootstrap)        # a shared broker: leave nothing behind
            summary["kafka"] = {"live": live_k, "replay": replay_k,
                                "ratio": round(live_k["records_per_s"] / replay_k["records_per_s"], 3)}
        else:
            print(f"Kafka: skipped (no broker at {args.kafka_bootstrap})", flush=True)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

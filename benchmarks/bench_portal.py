"""Page latency of the portal under 50 concurrent clients on a 10k-user world.

    .venv/bin/python -m benchmarks.bench_portal [--world DIR --output DIR] [--users 10000] [--hours 1]
        [--clients 50] [--requests 3000] [--subscribers 300]

Without ``--world``/``--output`` it generates a world (``pipelines.generate --users N --hours H``)
and runs the pipeline on it (DirectRunner), which takes a few minutes at 10k users. The
portal is started as its own process (``python -m portal serve``, uvicorn, one worker) over
that run; the world's users are given bench-owned keys (a copy of ``users.jsonl``: the
generator keeps no private keys), ``--subscribers`` of them sign in the way a phone does
(challenge, signature, the confirmation form), then ``--clients`` concurrent clients
(``httpx.AsyncClient``, keep-alive) each request subscriber pages in turn (near you with and
without a keyword, alerts, friends) and the marketer map, until ``--requests`` are done.

Prints p50/p90/p99 and max per page kind, the throughput, and the portal's load time. If the
run has no ``timeline/`` folder (issue #14's output), a timeline is derived from the world's
precise geotagged tweets (no compliance rules: a stand-in for the load only) and that is said.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import h3
import httpx

from schemas.proofs import new_keypair
from schemas.timefmt import format_rfc3339
from tests.portal.conftest import owned_key, rekeyed_world, sign_in_with, start_portal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare(world: str, out: str, root: str) -> tuple[str, list[str], bool]:
    """(the portal's world dir, user ids, whether a stand-in timeline was made)."""
    pworld = os.path.join(root, "world")
    users = rekeyed_world(world, pworld)
    standin = not os.path.isdir(os.path.join(out, "timeline"))
    if standin:
        from schemas.errors import InvalidRecord
        from schemas.parse import parse_line
        from schemas.records import Tweet
        folder = os.path.join(root, "timeline")
        os.makedirs(folder)
        with open(os.path.join(world, "tweets.jsonl")) as src, open(os.path.join(folder, "part-0.jsonl"), "w") as dst:
            for line in src:
                try:
                    tweet = parse_line("tweets", line)
                except InvalidRecord:
                    continue
                if isinstance(tweet, Tweet) and tweet.lat is not None and not tweet.coarse:
                    dst.write(json.dumps({"tweet_id": tweet.tweet_id, "author_id": tweet.author_id,
                                          "ts": format_rfc3339(tweet.ts), "text": tweet.text, "lat": tweet.lat,
                                          "lng": tweet.lng, "h3_cell": h3.latlng_to_cell(tweet.lat, tweet.lng, 9),
                                          "happening": None, "retracted": False}, ensure_ascii=False) + "\n")
    return pworld, users, standin


def merged_output(out: str, root: str, standin: bool) -> str:
    """The run's output folder, plus the stand-in timeline when the run has none."""
    if not standin:
        return out
    merged = os.path.join(root, "out")
    os.makedirs(merged)
    for name in os.listdir(out):
        os.symlink(os.path.abspath(os.path.join(out, name)), os.path.join(merged, name))
    os.symlink(os.path.join(root, "timeline"), os.path.join(merged, "timeline"))
    return merged


async def load(url: str, sessions: list[tuple[str, httpx.Cookies]], marketer: httpx.Cookies, clients: int,
               requests: int, seed: int) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {}
    left = [requests]
    rng = random.Random(seed)
    kinds = ("near", "near?q=", "alerts", "friends", "map")

    async def worker(i: int):
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            while left[0] > 0:
                left[0] -= 1
                kind = kinds[rng.randrange(len(kinds))]
                if kind == "map":
                    path, cookies = "/m/map", marketer
                else:
                    user, cookies = sessions[rng.randrange(len(sessions))]
                    path = f"/u/{user}/{kind.split('?')[0]}" + ("?q=%E6%B8%8B" if "?q" in kind else "")
                client.cookies = cookies
                started = time.perf_counter()
                reply = await client.get(path)
                elapsed = time.perf_counter() - started
                if reply.status_code != 200:
                    raise RuntimeError(f"{path}: {reply.status_code}")
                latencies.setdefault(kind, []).append(elapsed)
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world")
    parser.add_argument("--output")
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--subscribers", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench-portal-")
    try:
        world, out = args.world, args.output
        if not (world and out):
            world, out = os.path.join(root, "gen-world"), os.path.join(root, "gen-out")
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "pipelines.generate", "--output", world, "--users", str(args.users),
                            "--hours", str(args.hours)], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            subprocess.run([sys.executable, "-m", "pipelines.run", "--input", world, "--output", out], cwd=REPO,
                           check=True, stdout=subprocess.DEVNULL)
            print(f"world: {args.users} users, {args.hours} h, generated and run in {time.monotonic() - started:.0f} s")
        pworld, users, standin = prepare(world, out, root)
        marketer_key, marketer_pub = new_keypair(hashlib.sha256(b"bench/marketer").digest())
        with open(os.path.join(root, "marketers.json"), "w") as handle:
            json.dump({"bench": marketer_pub}, handle)
        started = time.monotonic()
        server = start_portal(root, merged_output(out, root, standin), pworld)
        load_s = time.monotonic() - started
        try:
            rng = random.Random(args.seed)
            chosen = rng.sample(users, min(args.subscribers, len(users)))
            sessions = [(u, sign_in_with(server.url, "subscriber", u, owned_key(u)[0]).cookies) for u in chosen]
            marketer = sign_in_with(server.url, "marketer", "bench", marketer_key).cookies
            started = time.monotonic()
            latencies = asyncio.run(load(server.url, sessions, marketer, args.clients, args.requests, args.seed))
            wall = time.monotonic() - started
        finally:
            server.proc.terminate()
            server.proc.wait(30)
        total = sum(len(v) for v in latencies.values())
        print(f"portal: loaded {server.loaded.get('loaded')} in {load_s:.1f} s (start to listening)"
              + ("; timeline: stand-in from the world's precise geotagged tweets (the run has no timeline/)"
                 if standin else ""))
        print(f"{args.clients} concurrent clients, {total} requests in {wall:.1f} s: {total / wall:.0f} req/s")
        print(f"{'page':<10}{'n':>7}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        every = [x for v in latencies.values() for x in v]
        for kind, values in sorted(latencies.items()) + [("all", every)]:
            print(f"{kind:<10}{len(values):>7}{pct(values, .5):>10.1f}{pct(values, .9):>10.1f}"
                  f"{pct(values, .99):>10.1f}{max(values) * 1000:>10.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

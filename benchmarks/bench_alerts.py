"""Cost of the geofenced alert fan-out against users x tweets, at 10k, 100k and 1M users.

    .venv/bin/python -m benchmarks.bench_alerts [--sizes 10000,100000,1000000]
        [--venues 100] [--chatter 1800] [--beam-sizes 10000] [--brute-cap-s 20] [--seed 1]

A synthetic batch, the same for every engine at a size: N users uniformly inside
the service area (``schemas.service_area``), 80 % opted in, each with one GPS
ping in the half hour before the tweets; N/10 mutual follows; a *fixed* tweet
load for every N: ``--venues`` happening spots with two rule-matching tweets
each (a concert, sale, festival or incident) plus ``--chatter`` geotagged
tweets that are no happening, all within one hour.

Each size runs in its own subprocess (so peak RSS, ``ru_maxrss``, is that
size's own; it includes the inputs held in memory, which are frozen out of the
cyclic GC before timing) and prints wall time of:

* ``core``: ``core.alerts.fan_out``, the one fan-out wiring the Beam step
  also hosts, here on ``LocalOps`` (happenings, H3 cell index, friends, per-user decisions, deletes);
* ``brute``: the users x happening-tweets join it replaces: every opted-in
  user's latest fresh location against every happening tweet with the exact
  distance (a lower bound of a brute-force fan-out: no dedupe, cap or friends).
  It stops after ``--brute-cap-s`` seconds and extrapolates linearly from the
  share of tweets done (marked ``~``);
* ``beam``: ``FanOutGeofencedAlerts`` on the DirectRunner (batch; Beam picks
  its FnApiRunner), at ``--beam-sizes`` only -- Python's local runner moves
  ~10^4 elements/s, so 1M users there is a capacity test, not a benchmark.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import random
import resource
import subprocess
import sys
import time

T0 = 1_764_000_000.0
BBOX = (35.52, 35.82, 139.56, 139.91)   # around schemas.service_area.TOKYO_23_WARDS
HAPPENING_TEXTS = ("渋谷で路上ライブなう", "タイムセール始まった", "花火きれい！", "駅前で火事、通れない")
CHATTER_TEXTS = ("ランチ美味しい", "今日は寒い", "coffee time", "電車遅れてる", "猫かわいい")


def make_batch(n_users: int, venues: int, chatter: int, seed: int):
    from schemas.records import Follow, Ping, Tweet, User
    from schemas.service_area import contains

    rnd = random.Random(seed)

    def spot():
        while True:
            lat, lng = rnd.uniform(BBOX[0], BBOX[1]), rnd.uniform(BBOX[2], BBOX[3])
            if contains(lat, lng):
                return lat, lng

    ids = [str(10_000_000 + i) for i in range(n_users)]
    users = [User(u, "k", rnd.random() < 0.8, False, None) for u in ids]
    pings = [Ping(u, T0 - rnd.uniform(0, 1500), *spot(), 8.0, "gps") for u in ids]
    follows = []
    for _ in range(n_users // 10):
        a, b = sorted(rnd.sample(ids, 2))
        follows.append(Follow(a, b, T0 - 86400, "%032x" % rnd.getrandbits(128), "c"))
    tweets = []
    for v in range(venues):
        lat, lng = spot()
        text = HAPPENING_TEXTS[v % len(HAPPENING_TEXTS)]
        for k in range(2):   # two tweets of one happening: one alert per user for both
            tweets.append(Tweet(str(900_000_000 + 2 * v + k), rnd.choice(ids), T0 + rnd.uniform(0, 3600),
                                f"{text} {v}-{k}", "ja", [], lat + rnd.uniform(-1e-4, 1e-4),
                                lng + rnd.uniform(-1e-4, 1e-4), False, None, None))
    for c in range(chatter):
        tweets.append(Tweet(str(800_000_000 + c), rnd.choice(ids), T0 + rnd.uniform(0, 3600),
                            f"{rnd.choice(CHATTER_TEXTS)} {c}", "ja", [], *spot(), False, None, None))
    return users, pings, follows, tweets


def settle():
    """Move the inputs out of the cyclic GC's sight, so every engine pays only for its own objects."""
    gc.collect()
    gc.freeze()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_core(n, args):
    from core.alerts import AlertParams, fan_out
    from core.locations import report_from_ping, report_from_tweet
    users, pings, follows, tweets = make_batch(n, args.venues, args.chatter, args.seed)
    params = AlertParams()
    settle()
    start = time.perf_counter()
    reports = [report_from_ping(p, params.max_accuracy_m) for p in pings] + [report_from_tweet(t) for t in tweets]
    alerts = fan_out(tweets, [], reports, follows, users, params)
    return {"seconds": time.perf_counter() - start, "alerts": len(alerts)}


def child_brute(n, args):
    from core.alerts import AlertParams
    from core.geo import distance_m
    from core.happenings import find_happenings
    from core.locations import current_location, report_from_ping, report_from_tweet
    users, pings, _follows, tweets = make_batch(n, args.venues, args.chatter, args.seed)
    params = AlertParams()
    happenings = find_happenings(tweets, params)
    opted = [u.user_id for u in users if u.alerts_opt_in]
    reports = {p.user_id: [report_from_ping(p, params.max_accuracy_m)] for p in pings}
    for t in tweets:
        reports[t.author_id].append(report_from_tweet(t))
    settle()
    start = time.perf_counter()
    done = pairs = 0
    for h in happenings:
        for uid in opted:
            here = current_location(reports[uid], h.ts, params.location_stale_s)
            if here is not None and uid != h.author_id and distance_m(h.lat, h.lng, here.lat, here.lng) <= h.radius_m:
                pairs += 1
        done += 1
        if time.perf_counter() - start > args.brute_cap_s:
            break
    elapsed = time.perf_counter() - start
    share = done / len(happenings)
    return {"seconds": elapsed / share, "extrapolated": done < len(happenings),
            "share_done": share, "pairs_within_radius": pairs}


def child_beam(n, args):
    import apache_beam as beam
    from apache_beam.transforms.window import TimestampedValue
    from schemas.records import Follow, Ping, TapReport, Tweet, TweetDelete
    from core.alerts import AlertParams
    from transforms.alerts import FanOutGeofencedAlerts
    users, pings, follows, tweets = make_batch(n, args.venues, args.chatter, args.seed)
    settle()
    start = time.perf_counter()
    with beam.Pipeline(runner="DirectRunner") as p:
        def create(label, items, record_type, when):
            return p | label >> beam.Create([TimestampedValue(x, when(x)) for x in items]).with_output_types(record_type)
        inputs = {"tweets": create("Tweets", tweets, Tweet, lambda t: t.ts),
                  "deletes": create("Deletes", [], TweetDelete, lambda d: d.ts),
                  "pings": create("Pings", pings, Ping, lambda x: x.ts),
                  "taps": create("Taps", [], TapReport, lambda x: x.ts),
                  "follows": create("Follows", follows, Follow, lambda f: f.established_at),
                  "users": p | "Users" >> beam.Create(users)}
        out = inputs | FanOutGeofencedAlerts(AlertParams())
        out["alerts"] | beam.combiners.Count.Globally() | beam.Map(lambda c: print(f"BEAM_ALERTS {c}", flush=True))
    return {"seconds": time.perf_counter() - start}


CHILDREN = {"core": child_core, "brute": child_brute, "beam": child_beam}


def run_child(kind, n, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_alerts", "--child", kind, "--n", str(n),
           "--venues", str(args.venues), "--chatter", str(args.chatter), "--seed", str(args.seed),
           "--brute-cap-s", str(args.brute_cap_s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    result = json.loads(lines[-1][len("RESULT "):])
    beam_counts = [l.split()[1] for l in proc.stdout.splitlines() if l.startswith("BEAM_ALERTS ")]
    if beam_counts:
        result["alerts"] = int(beam_counts[-1])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--beam-sizes", default="10000")
    parser.add_argument("--venues", type=int, default=100)
    parser.add_argument("--chatter", type=int, default=1800)
    parser.add_argument("--brute-cap-s", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](args.n, args)
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s]
    beam_sizes = {int(s) for s in args.beam_sizes.split(",") if s}
    print(f"fixed tweet load: {2 * args.venues} happening tweets at {args.venues} spots + {args.chatter} chatter, "
          f"one hour; wall seconds and peak RSS per size (own subprocess)")
    print(f"{'users':>9} | {'core s':>8} {'core MB':>8} {'alerts':>7} | {'brute s':>10} {'brute MB':>8} | "
          f"{'beam s':>8} {'beam MB':>8} | {'brute/core':>10}")
    for n in sizes:
        core = run_child("core", n, args)
        brute = run_child("brute", n, args)
        beam_result = run_child("beam", n, args) if n in beam_sizes else {}
        if "error" in core:
            print(f"{n:>9} | core failed: {core['error']}")
            continue
        brute_s = (f"{'~' if brute.get('extrapolated') else ''}{brute['seconds']:.1f}" if "seconds" in brute
                   else "failed")
        beam_s = f"{beam_result['seconds']:.1f}" if "seconds" in beam_result else "-"
        beam_mb = f"{beam_result['peak_rss_mb']:.0f}" if "peak_rss_mb" in beam_result else "-"
        ratio = f"{brute['seconds'] / core['seconds']:.1f}x" if "seconds" in brute else "-"
        print(f"{n:>9} | {core['seconds']:>8.2f} {core['peak_rss_mb']:>8.0f} {core['alerts']:>7} | "
              f"{brute_s:>10} {brute.get('peak_rss_mb', math.nan):>8.0f} | {beam_s:>8} {beam_mb:>8} | {ratio:>10}",
              flush=True)
        if beam_result.get("alerts") is not None and beam_result["alerts"] != core["alerts"]:
            print(f"  !! beam gave {beam_result['alerts']} alerts, core {core['alerts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

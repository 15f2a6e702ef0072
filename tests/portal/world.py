"""A small hand-made run for the portal's tests: every page's expected content is known.

Three subscribers with fixed keys; a timeline in Shibuya with a happening, a deleted tweet
(its retraction row), an old one and a far one; alerts with one retracted; one mutual
follow; a two-hour DP release of four cells (one whose interval spans zero); its ledger.
"""
from __future__ import annotations

import json
import os

import h3
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.proofs import new_keypair
from schemas.records import Statistic, arrow_schema
from schemas.timefmt import format_rfc3339, parse_rfc3339

NOW = parse_rfc3339("2026-11-20T09:00:00Z")          # 18:00 JST: the latest event of the run
SHIBUYA = (35.6595, 139.7005)
UENO = (35.7141, 139.7774)
TL_RES = 9

ALICE, BOB, CAROL = "1001", "1002", "1003"
SEEDS = {ALICE: b"a" * 32, BOB: b"b" * 32, CAROL: b"c" * 32}
MARKETER = "acme"
MARKETER_SEED = b"m" * 32


def key(account: str):
    return new_keypair(SEEDS[account] if account in SEEDS else MARKETER_SEED)[0]


def pubkey(account: str) -> str:
    return new_keypair(SEEDS[account] if account in SEEDS else MARKETER_SEED)[1]


def cell(lat_lng, res=TL_RES) -> str:
    return h3.latlng_to_cell(*lat_lng, res)


def tl(tweet_id, text, at, ts, happening=None, retracted=False, author="2001"):
    return {"tweet_id": tweet_id, "author_id": author, "ts": format_rfc3339(ts), "text": text,
            "lat": at[0], "lng": at[1], "h3_cell": cell(at), "happening": happening, "retracted": retracted}


TIMELINE = [
    tl("9001", "渋谷でライブ始まった #concert", SHIBUYA, NOW - 600, happening="concert"),
    tl("9002", "ハチ公前は人がいっぱい", (35.6590, 139.7010), NOW - 300),
    tl("9003", "this tweet was deleted", SHIBUYA, NOW - 200),
    tl("9004", "上野のパンダ", UENO, NOW - 100),                       # far: never near Alice
    tl("9005", "朝の渋谷", SHIBUYA, NOW - 5 * 3600),                   # too old for "recent"
    tl("9003", "this tweet was deleted", SHIBUYA, NOW - 200, retracted=True),
]
LIVE_NEAR_ALICE = ["9002", "9001"]      # newest first

ALERTS = [
    {"alert_id": "a1", "user_id": ALICE, "tweet_id": "9001", "ts": format_rfc3339(NOW - 590), "distance_m": 42.4,
     "reason": "nearby:concert:concert"},
    {"alert_id": "a2", "user_id": ALICE, "tweet_id": "9002", "ts": format_rfc3339(NOW - 290), "distance_m": 80.0,
     "reason": "nearby:burst:hachiko"},
    {"alert_id": "a2", "user_id": ALICE, "tweet_id": "9002", "ts": format_rfc3339(NOW - 290), "distance_m": 80.0,
     "reason": "retract:tweet_deleted"},
    {"alert_id": "b1", "user_id": BOB, "tweet_id": "9004", "ts": format_rfc3339(NOW - 90), "distance_m": 120.0,
     "reason": "nearby:sale:panda"},
]
FOLLOW_CELL = cell(SHIBUYA, 9)
FOLLOWS = [{"user_a": ALICE, "user_b": BOB, "established_at": format_rfc3339(NOW - 3000), "nonce": "ab" * 16,
            "h3_cell": FOLLOW_CELL}]

WINDOWS = [NOW - 7200, NOW - 3600]
MAP_CELLS = [cell(SHIBUYA, 8), cell(UENO, 8), cell((35.69, 139.70), 8), cell((35.68, 139.76), 8)]
# (value, ci) per cell, per window; the Ueno cell's interval spans zero in both
VALUES = {MAP_CELLS[0]: [(120.0, 30.0), (150.5, 30.0)], MAP_CELLS[1]: [(10.0, 30.0), (-5.0, 30.0)],
          MAP_CELLS[2]: [(60.0, 30.0), (70.0, 30.0)], MAP_CELLS[3]: [(200.0, 30.0), (210.0, 30.0)]}
BUDGET = 1.0


def statistics() -> list[Statistic]:
    return [Statistic(w, w + 3600, c, 8, "footfall", VALUES[c][i][0], "gaussian", 15.3, VALUES[c][i][1], 0.25, 1e-8)
            for i, w in enumerate(WINDOWS) for c in MAP_CELLS]


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(root: str) -> tuple[str, str]:
    """(world_dir, out_dir) of the hand-made run under ``root``."""
    world, out = os.path.join(root, "world"), os.path.join(root, "out")
    write_jsonl(os.path.join(world, "users.jsonl"), [
        {"user_id": u, "pubkey": pubkey(u), "alerts_opt_in": True, "stats_opt_out": False, "age_band": "20-29"}
        for u in (ALICE, BOB, CAROL)])
    write_jsonl(os.path.join(world, "pings.jsonl"), [
        {"user_id": ALICE, "ts": format_rfc3339(NOW - 60), "lat": SHIBUYA[0], "lng": SHIBUYA[1], "accuracy_m": 10.0,
         "source": "gps"},
        {"user_id": ALICE, "ts": format_rfc3339(NOW - 30), "lat": UENO[0], "lng": UENO[1], "accuracy_m": 900.0,
         "source": "cell"},                      # too coarse: places nobody, Alice stays in Shibuya
        {"user_id": BOB, "ts": format_rfc3339(NOW), "lat": UENO[0], "lng": UENO[1], "accuracy_m": 10.0, "source": "gps"},
        {"user_id": CAROL, "ts": format_rfc3339(NOW - 7200), "lat": SHIBUYA[0], "lng": SHIBUYA[1], "accuracy_m": 5.0,
         "source": "gps"},                       # stale: Carol has no location now
    ])
    write_jsonl(os.path.join(out, "timeline", "part-00000-of-00001.jsonl"), TIMELINE)
    write_jsonl(os.path.join(out, "alerts", "part-00000-of-00001.jsonl"), ALERTS)
    write_jsonl(os.path.join(out, "follows", "part-00000-of-00001.jsonl"), FOLLOWS)
    ledger = [{"date": "2026-11-20", "metric": "footfall", "window_start": format_rfc3339(w),
               "window_end": format_rfc3339(w + 3600), "epsilon": 0.25, "delta": 1e-8} for w in WINDOWS]
    write_jsonl(os.path.join(out, "privacy_ledger", "part-00000-of-00001.jsonl"), ledger)
    os.makedirs(os.path.join(out, "marketing"), exist_ok=True)
    schema = arrow_schema(Statistic)
    rows = [s._asdict() for s in statistics()]
    for row in rows:
        for f in ("window_start", "window_end"):
            row[f] = int(row[f] * 1000)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), os.path.join(out, "marketing", "part-0.parquet"))
    with open(os.path.join(out, "run_summary.json"), "w") as handle:
        json.dump({"privacy": {"budget_epsilon_per_user_day": BUDGET}}, handle)
    with open(os.path.join(root, "marketers.json"), "w") as handle:
        json.dump({MARKETER: pubkey(MARKETER)}, handle)
    return world, out

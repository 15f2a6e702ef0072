"""Bad input corpus: every kind of broken or hostile line mixed into a small generated world.

    .venv/bin/python -m benchmarks.bench_bad_inputs [--users 30] [--hours 1] [--bomb-mib 200]

Generates a clean world and runs the batch pipeline on it; then copies it, adds
every bad input below (lone surrogates in every kind of record, non-RFC 3339
timestamps, registry and tweet duplicates, pings of unknown users, the
adversary's malformed lines, an over-long line, a gzip bomb, a truncated
``.gz``, a UTF-8 BOM) and runs it again. It checks that every bad line is in
``deadletter/`` with its specific error, that nothing else is, and that every
good record's outputs (follows, alerts, marketing keys) equal the clean run's;
a plain file named ``.gz`` is tried on its own (exit 2, one line on stderr).
Prints ``bad inputs tried N / survived N / good records lost 0``.

Tap lines are built from the generator's own reports (whatever their current
format), so the corpus follows the report format as it changes.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import shutil
import sys
import tempfile
import time

START = "2026-11-20T17:00:00+09:00"
BAD_TIMESTAMPS = {
    "2026-W47-4T15:00:00Z": "is not an RFC 3339 timestamp",
    "20261119T150000Z": "is not an RFC 3339 timestamp",
    "2026-11-19T15Z": "is not an RFC 3339 timestamp",
    "2026-11-19T15:00Z": "is not an RFC 3339 timestamp",
    "2016-12-31T23:59:60Z": "is a leap second",
    "2026-11-19T15:00:00+24:00": "has an offset outside",
    "２０２６-11-19T15:00:00Z": "is not an RFC 3339 timestamp",
    "٢٠٢٦-11-19T15:00:00Z": "is not an RFC 3339 timestamp",
}
SURROGATE = "contains an unpaired UTF-16 surrogate"


def _lines(path):
    with open(path, encoding="utf-8") as handle:
        return [line for line in handle.read().splitlines() if line.strip()]


def _dump(obj) -> str:
    return json.dumps(obj)  # ASCII: a lone surrogate becomes the JSON escape "\ud800"


def _first(lines, test):
    return next(json.loads(line) for line in lines if test(json.loads(line)))


def bad_corpus(world: str) -> dict[str, list[tuple[str, str, str]]]:
    """kind -> [(label, line, expected error fragment)] built from the world's own lines."""
    from synthetic.adversary import MALFORMED
    users, pings, taps, tweets = (_lines(os.path.join(world, f"{k}.jsonl")) for k in ("users", "pings", "taps", "tweets"))
    user, ping, tap = json.loads(users[0]), json.loads(pings[0]), json.loads(taps[0])
    v1 = _first(tweets, lambda t: "created_at" in t and "user" in t)
    v2 = _first(tweets, lambda t: "data" in t and "includes" in t)
    corpus = {"users": [], "pings": [], "taps": [], "tweets": []}
    corpus["users"] += [
        ("age_band surrogate", _dump(dict(user, user_id="900000000000000001", age_band="\ud800")), f"age_band: {SURROGATE}"),
        ("unknown field surrogate", _dump(dict(user, user_id="900000000000000002", nickname="a\udfffb")), f"nickname: {SURROGATE}"),
        ("registry duplicate", users[1], "duplicate user_id"),
    ]
    corpus["pings"] += [(f"ts {ts}", _dump(dict(ping, ts=ts)), why) for ts, why in BAD_TIMESTAMPS.items()]
    corpus["pings"] += [
        ("source surrogate", _dump(dict(ping, source="gps\ud800")), f"source: {SURROGATE}"),
        ("unknown user", _dump(dict(ping, user_id="900000000000000003")), "is not in the user registry"),
        ("over-long line", _dump(dict(ping, pad="x" * (2 << 20))), "bytes exceeds the 1048576-byte limit"),
    ]
    corpus["taps"] += [
        ("tap_id surrogate", _dump(dict(tap, tap_id="\ud800")), f"tap_id: {SURROGATE}"),
        ("tap ts week date", _dump(dict(tap, ts="2026-W47-4T15:00:00Z")), "is not an RFC 3339 timestamp"),
        ("key surrogate", _dump(dict(tap, **{"x\ud800": 1})), SURROGATE),
    ]
    v1_user = dict(v1["user"], name="\ud83d")  # half an emoji
    v2_includes = dict(v2["includes"], users=[{"id": "1", "name": "\udc00"}])
    corpus["tweets"] += [
        ("v1.1 user.name surrogate", _dump(dict(v1, id_str="900000000000000004", user=v1_user)), f"user.name: {SURROGATE}"),
        ("v2 includes surrogate", _dump(dict(v2, includes=v2_includes)), f"includes.users[0].name: {SURROGATE}"),
        ("delete surrogate", _dump({"delete": {"status": {"id_str": "1", "user_id_str": "2\ud800"}}}),
         f"delete.status.user_id_str: {SURROGATE}"),
        ("scrub_geo surrogate", _dump({"scrub_geo": {"user_id_str": "\ud800", "up_to_status_id_str": "3"}}),
         f"scrub_geo.user_id_str: {SURROGATE}"),
        ("v1.1 wrong weekday", _dump(dict(v1, id_str="900000000000000005", created_at="Mon Nov 20 08:01:07 +0000 2026")),
         "is not a v1.1 date"),
        ("v2 week date", _dump(dict(v2, data=dict(v2["data"], created_at="2026-W47-5T08:00:00Z"))),
         "is not an RFC 3339 timestamp"),
        # a status (a repeated compliance message is used again, not a duplicate)
        ("duplicate tweet", next(line for line in tweets if "id_str" in json.loads(line)), "duplicate tweet id"),
        ("user_withheld without a time", _dump({"user_withheld": {"id_str": "2", "withheld_in_countries": ["DE"]}}),
         "user_withheld: no event time"),
    ]
    for kind, lines in MALFORMED.items():
        corpus[kind] += [(f"adversary {label}", line, "") for label, line in lines]
    return corpus


def _write_bad_world(clean: str, bad: str, bomb_mib: int) -> tuple[dict, list]:
    """The clean world plus the corpus; returns (corpus, [(label, source, error fragment)] for file damage)."""
    shutil.copytree(clean, bad)
    corpus = bad_corpus(clean)
    for kind, entries in corpus.items():
        path = os.path.join(bad, f"{kind}.jsonl")
        body = open(path, "rb").read()
        if kind == "users":
            body = b"\xef\xbb\xbf" + body  # a BOM at the start of a file is accepted
        extra = "".join(line + "\n" for _label, line, _why in entries).encode("utf-8", "surrogatepass")
        with open(path, "wb") as handle:
            handle.write(body + extra)
    damage = []
    # a gzip bomb: one huge line, next to the plain pings file
    with gzip.open(os.path.join(bad, "pings.jsonl.gz"), "wb", compresslevel=9) as handle:
        handle.write(b'{"user_id": "')
        block = b"1" * (1 << 20)
        for _ in range(bomb_mib):
            handle.write(block)
        handle.write(b'"}\n')
    damage.append(("gzip bomb", "pings.jsonl+pings.jsonl.gz", "bytes exceeds the 1048576-byte limit"))
    # a truncated .gz: the tail of a compressed copy of a few bad lines is lost
    data = gzip.compress(b'{"limit": {"track": 1}}\n' * 50)
    with open(os.path.join(bad, "tweets.jsonl.gz"), "wb") as handle:
        handle.write(data[: len(data) // 2])
    damage.append(("truncated .gz", "tweets.jsonl+tweets.jsonl.gz", "the gzip stream ends before its end marker"))
    return corpus, damage


def _outputs(out: str) -> dict:
    import pyarrow.parquet as pq
    from pipelines.sinks import read_jsonl_folder
    canon = lambda rows: sorted(json.dumps(r, sort_keys=True) for r in rows)  # noqa: E731
    table = pq.ParquetDataset(os.path.join(out, "marketing")).read().select(["window_start", "h3_cell", "metric"])
    return {
        "follows": canon(read_jsonl_folder(os.path.join(out, "follows"))),
        "alerts": canon(read_jsonl_folder(os.path.join(out, "alerts"))),
        "marketing": sorted(map(str, (tuple(r.values()) for r in table.to_pylist()))),
    }


def _quiet_run(argv) -> tuple[int, str]:
    from pipelines.run import run
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = run(argv)
    return code, stderr.getvalue()


def run_corpus(workdir: str, users: int = 30, hours: float = 1, bomb_mib: int = 200, seed: int = 5) -> dict:
    from pipelines.sinks import read_jsonl_folder
    from synthetic.world import write_world
    clean, bad = os.path.join(workdir, "clean"), os.path.join(workdir, "bad")
    write_world(clean, users=users, hours=hours, seed=seed, start=START)
    code, err = _quiet_run(["--input", clean, "--output", os.path.join(workdir, "clean_out")])
    assert code == 0, err
    baseline = _outputs(os.path.join(workdir, "clean_out"))
    clean_dead = read_jsonl_folder(os.path.join(workdir, "clean_out", "deadletter"))

    corpus, damage = _write_bad_world(clean, bad, bomb_mib)
    started = time.time()
    code, err = _quiet_run(["--input", bad, "--output", os.path.join(workdir, "bad_out")])
    seconds = time.time() - started
    assert code == 0, err
    dead = read_jsonl_folder(os.path.join(workdir, "bad_out", "deadletter"))
    results = []  # (label, survived, why)
    unmatched = list(dead)
    for kind, entries in corpus.items():
        for label, line, fragment in entries:
            hits = [d for d in unmatched if d["raw"] == line or (len(line) > 65536 and line.startswith(d["raw"][:1000]))]
            ok = len(hits) == 1 and fragment in hits[0]["error"] and hits[0]["source"].startswith(kind)
            if hits:
                unmatched.remove(hits[0])
            results.append((f"{kind}: {label}", ok, hits[0]["error"] if hits else "no dead letter"))
    for label, source, fragment in damage:
        hits = [d for d in unmatched if d["source"] == source and fragment in d["error"]]
        if hits:
            unmatched.remove(hits[0])
        results.append((label, len(hits) == 1, hits[0]["error"] if hits else "no dead letter"))

    # a plain file named .gz: exit 2 with one line, nothing half-run
    plain = os.path.join(workdir, "plain_gz")
    shutil.copytree(clean, plain)
    os.rename(os.path.join(plain, "taps.jsonl"), os.path.join(plain, "taps.jsonl.gz"))
    code, err = _quiet_run(["--input", plain, "--output", os.path.join(workdir, "plain_out")])
    lines = err.strip().splitlines()
    results.append(("plain file named .gz", code == 2 and len(lines) == 1 and "not gzip data" in lines[-1],
                    lines[-1] if lines else "no message"))

    got = _outputs(os.path.join(workdir, "bad_out"))
    lost = {name: len(set(baseline[name]) - set(got[name])) for name in baseline}
    extra = {name: len(set(got[name]) - set(baseline[name])) for name in baseline}
    return {
        "tried": len(results),
        "survived": sum(ok for _, ok, _ in results),
        "failures": [(label, why) for label, ok, why in results if not ok],
        "unexpected_dead_letters": unmatched,
        "clean_dead_letters": len(clean_dead),
        "good_records_lost": sum(lost.values()),
        "lost": lost,
        "extra": extra,
        "bad_run_s": round(seconds, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--hours", type=float, default=1)
    parser.add_argument("--bomb-mib", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        result = run_corpus(workdir, args.users, args.hours, args.bomb_mib)
    for label, why in result["failures"]:
        print(f"NOT SURVIVED {label}: {why}")
    for row in result["unexpected_dead_letters"]:
        print(f"UNEXPECTED dead letter {row['source']}: {row['error']}")
    print(f"clean world dead letters: {result['clean_dead_letters']}; bad run {result['bad_run_s']} s "
          f"(with a {args.bomb_mib} MiB gzip bomb line); outputs lost {result['lost']}, extra {result['extra']}")
    print(f"bad inputs tried {result['tried']} / survived {result['survived']} / "
          f"good records lost {result['good_records_lost']}")
    ok = (result["survived"] == result["tried"] and not result["good_records_lost"]
          and not result["unexpected_dead_letters"] and not result["clean_dead_letters"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

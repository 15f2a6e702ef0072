"""The whole pipeline on generated worlds, batch and streaming, on DirectRunner.

Runs ``pipelines.run.run`` in-process exactly as the CLI does, then reads the
output tree as a consumer would.
"""
import collections
import glob
import gzip
import json
import os
import re
import shutil

import pyarrow.parquet as pq
import pytest

from core.compliance import apply_retractions
from pipelines.run import run
from pipelines.sinks import read_jsonl_folder
from schemas.records import Alert, TimelineEntry
from synthetic.world import write_world

START = "2026-11-20T17:00:00+09:00"  # evening: happenings, taps and alerts in two hours


def _read_truth(world, name):
    with open(os.path.join(world, "truth", name), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _canonical(rows):
    return sorted(json.dumps(row, sort_keys=True, ensure_ascii=False) for row in rows)


def _run(world, out, *extra):
    assert run(["--input", world, "--output", out, *extra]) == 0
    with open(os.path.join(out, "run_summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def _marketing_keys(out):
    table = pq.ParquetDataset(os.path.join(out, "marketing")).read()
    rows = table.select(["window_start", "h3_cell", "metric"]).to_pylist()
    return sorted((str(r["window_start"]), r["h3_cell"], r["metric"]) for r in rows)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("world"))
    write_world(path, users=40, hours=2, seed=11, start=START)
    return path


@pytest.fixture(scope="module")
def adversarial_world(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("adversarial"))
    write_world(path, users=40, hours=2, seed=11, start=START, adversarial=True)
    return path


@pytest.fixture(scope="module")
def batch_out(world, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("batch"))
    return out, _run(world, out)


def test_batch_follows_equal_truth_and_nothing_is_rejected(world, batch_out):
    out, summary = batch_out
    assert _canonical(read_jsonl_folder(os.path.join(out, "follows"))) == _canonical(_read_truth(world, "follows.jsonl"))
    assert summary["stages"]["rejected"] == {"users": 0, "pings": 0, "taps": 0, "tweets": 0}
    manifest = json.load(open(os.path.join(world, "truth", "manifest.json")))
    for kind in ("users", "pings", "taps", "tweets"):
        assert summary["stages"]["read"][kind] == manifest["counts"][f"{kind}.jsonl"]


def test_nothing_a_compliance_message_withdrew_is_alerted_or_shown(world, batch_out):
    """truth/deleted.jsonl and truth/withdrawn.jsonl (synthetic.compliance) name what must never be alerted
    or on the timeline; every kind of message is in the world and counted as used."""
    withdrawn = _read_truth(world, "withdrawn.jsonl")
    gone = {row["tweet_id"] for row in _read_truth(world, "deleted.jsonl") + withdrawn}
    assert {row["kind"] for row in withdrawn} >= {"tweet_edit", "withheld", "drop", "scrub_geo", "user_protect",
                                                  "user_suspend", "user_delete", "user_withheld"}
    alerts = read_jsonl_folder(os.path.join(batch_out[0], "alerts"))
    timeline = read_jsonl_folder(os.path.join(batch_out[0], "timeline"))
    assert alerts and timeline
    assert not [a for a in alerts if a["tweet_id"] in gone]
    assert not [e for e in timeline if e["tweet_id"] in gone]
    used = batch_out[1]["compliance_used"]
    assert {"delete", "tweet_edit", "withheld", "drop", "undrop", "scrub_geo"} <= set(used) and min(used.values()) > 0


def test_outputs_follow_the_contract(batch_out):
    out, summary = batch_out
    for row in read_jsonl_folder(os.path.join(out, "follows")):
        assert set(row) == {"user_a", "user_b", "established_at", "nonce", "h3_cell"}
        assert row["user_a"] < row["user_b"] and row["established_at"].endswith("Z")
    alerts = read_jsonl_folder(os.path.join(out, "alerts"))
    assert alerts, "an evening world has happenings near opted-in users"
    for row in alerts:
        assert set(row) == {"alert_id", "user_id", "tweet_id", "ts", "distance_m", "reason"}
    schema = pq.ParquetDataset(os.path.join(out, "marketing")).schema
    assert {"window_start", "window_end", "h3_cell", "h3_res", "metric", "value"} <= set(schema.names)
    assert summary["privacy"]["max_epsilon_per_user_day"] <= summary["privacy"]["budget_epsilon_per_user_day"] + 1e-9


def test_every_input_line_ends_in_exactly_one_place(adversarial_world, tmp_path):
    """Bad lines of every kind go to deadletter/ with a reason; the counts add up."""
    out = str(tmp_path / "out")
    summary = _run(adversarial_world, out)
    stages = summary["stages"]
    invalid = collections.Counter(row["file"] for row in _read_truth(adversarial_world, "invalid_lines.jsonl"))
    attacks = _read_truth(adversarial_world, "tap_attacks.jsonl")
    # the touch dated 2099 is refused by ParseInputs already: its event time is ahead of the run's clock
    invalid["taps.jsonl"] += sum(1 for a in attacks if a["kind"] == "future_touch")
    for kind in ("users", "pings", "taps", "tweets"):
        assert stages["read"][kind] == stages["parsed"][kind] + stages["rejected"][kind]
        assert stages["rejected"][kind] == invalid[f"{kind}.jsonl"], kind
    dead = read_jsonl_folder(os.path.join(out, "deadletter"))
    assert len(dead) == stages["emitted"]["deadletter"]
    assert all(row["error"] and "raw" in row for row in dead)
    # Attack taps never make a follow: follows still equal the truth.
    assert _canonical(read_jsonl_folder(os.path.join(out, "follows"))) == \
        _canonical(_read_truth(adversarial_world, "follows.jsonl"))
    # Each tap report is used in a follow, recorded as a repeat touch, or dead-lettered.
    tap_dead = [row for row in dead if row["source"] == "taps" or row["error"].startswith("event time ")]
    assert len(tap_dead) >= len({a["tap_id"] for a in attacks if a["kind"] != "duplicate"})


def test_gzip_inputs_give_the_same_outputs(world, batch_out, tmp_path):
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for kind in ("users", "pings", "taps", "tweets"):
        with open(os.path.join(world, f"{kind}.jsonl"), "rb") as src, gzip.open(zipped / f"{kind}.jsonl.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    for name in os.listdir(world):  # the world's manifest (DP release schedule) comes along
        if name.endswith(".json"):
            shutil.copy(os.path.join(world, name), zipped / name)
    out = str(tmp_path / "out")
    summary = _run(str(zipped), out)
    assert summary["stages"]["read"] == batch_out[1]["stages"]["read"]
    for folder in ("follows", "alerts", "deadletter"):
        assert _canonical(read_jsonl_folder(os.path.join(out, folder))) == \
            _canonical(read_jsonl_folder(os.path.join(batch_out[0], folder)))


def test_streaming_gives_the_same_outputs_as_batch(world, batch_out, tmp_path):
    """Shuffled, out-of-order delivery in event time: the same follows, alerts and releases."""
    out = str(tmp_path / "stream")
    summary = _run(world, out, "--streaming", "--stream_disorder_s", "8")
    assert summary["mode"] == "streaming"
    for folder in ("follows", "deadletter"):
        assert _canonical(read_jsonl_folder(os.path.join(out, folder))) == \
            _canonical(read_jsonl_folder(os.path.join(batch_out[0], folder))), folder
    # alerts and timeline entries a later compliance message took back are retracted in streaming,
    # never written in batch (core.compliance): the same once the retractions are applied
    for folder, record in (("alerts", Alert), ("timeline", TimelineEntry)):
        kept = apply_retractions(record(**row) for row in read_jsonl_folder(os.path.join(out, folder)))
        assert _canonical(r._asdict() for r in kept) == \
            _canonical(read_jsonl_folder(os.path.join(batch_out[0], folder))), folder
    assert read_jsonl_folder(os.path.join(batch_out[0], "timeline")), "the batch run has a timeline"
    assert _marketing_keys(out) == _marketing_keys(batch_out[0])
    ledger = lambda o: _canonical(read_jsonl_folder(os.path.join(o, "privacy_ledger")))  # noqa: E731
    assert ledger(out) == ledger(batch_out[0])
    # one set of shards per hour of event time, named by the hour in UTC
    shard = re.compile(r"part-\[(\d{4}-\d\d-\d\dT\d\d)-00-00, \d{4}-\d\d-\d\dT\d\d-00-00\)-\d{5}-of-\d{5}\.(jsonl|parquet)")
    for folder in ("follows", "alerts", "marketing", "privacy_ledger"):
        names = os.listdir(os.path.join(out, folder))
        assert names and all(shard.fullmatch(name) for name in names), (folder, names)


def _copy_world(world, dest):
    os.makedirs(dest, exist_ok=True)
    for name in os.listdir(world):
        if os.path.isfile(os.path.join(world, name)):
            shutil.copy(os.path.join(world, name), os.path.join(dest, name))
    return dest


def test_damaged_compressed_and_over_long_inputs_are_dead_letters_not_crashes(world, batch_out, tmp_path):
    """Truncated .gz, a gzip bomb line, an over-long plain line, a BOM: exit 0, every line accounted for."""
    damaged = _copy_world(world, str(tmp_path / "damaged"))
    with open(os.path.join(world, "tweets.jsonl"), "rb") as handle:
        tweets = handle.read()
    whole = gzip.compress(tweets)
    os.remove(os.path.join(damaged, "tweets.jsonl"))
    with open(os.path.join(damaged, "tweets.jsonl.gz"), "wb") as handle:
        handle.write(whole[: len(whole) * 3 // 4])
    with open(os.path.join(world, "pings.jsonl"), "rb") as handle:
        pings = handle.read()
    os.remove(os.path.join(damaged, "pings.jsonl"))
    with gzip.open(os.path.join(damaged, "pings.jsonl.gz"), "wb", compresslevel=1) as handle:
        handle.write(pings)
        handle.write(b'{"user_id": "' + b"9" * (8 << 20) + b'"}\n')  # an 8 MiB line
    with open(os.path.join(world, "users.jsonl"), "rb") as handle:
        users = handle.read()
    with open(os.path.join(damaged, "users.jsonl"), "wb") as handle:
        handle.write(b"\xef\xbb\xbf" + users)
    with open(os.path.join(damaged, "taps.jsonl"), "ab") as handle:
        handle.write(b'{"tap_id": "' + b"x" * (2 << 20) + b'"}\n')
    out = str(tmp_path / "out")
    summary = _run(damaged, out)
    stages = summary["stages"]
    for kind in ("users", "pings", "taps", "tweets"):
        assert stages["read"][kind] == stages["parsed"][kind] + stages["rejected"][kind], kind
    assert stages["rejected"] == {"users": 0, "pings": 1, "taps": 1, "tweets": 1}
    dead = {row["source"]: row for row in read_jsonl_folder(os.path.join(out, "deadletter"))}
    assert dead["tweets.jsonl.gz"]["error"].startswith(
        "tweets.jsonl.gz: the gzip stream ends before its end marker (a truncated file): line ")
    assert re.fullmatch(r"line \d+ of 8388623 bytes exceeds the 1048576-byte limit \(not read whole; its first "
                        r"bytes are kept\)", dead["pings.jsonl.gz"]["error"])
    assert dead["taps.jsonl"]["error"].startswith("line ") and len(dead["taps.jsonl"]["raw"]) < 70_000
    read_tweets = stages["read"]["tweets"]
    assert 0 < read_tweets < batch_out[1]["stages"]["read"]["tweets"]  # the lost tail is the one dead letter
    # the BOM'd registry and the readable lines give the clean world's follows
    assert _canonical(read_jsonl_folder(os.path.join(out, "follows"))) == \
        _canonical(read_jsonl_folder(os.path.join(batch_out[0], "follows")))


def test_a_plain_file_named_gz_is_a_one_line_error(world, tmp_path, capsys):
    bad = _copy_world(world, str(tmp_path / "bad"))
    os.rename(os.path.join(bad, "tweets.jsonl"), os.path.join(bad, "tweets.jsonl.gz"))
    assert run(["--input", bad, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pipelines.run: error: --input ") and \
        "tweets.jsonl.gz: named .gz but not gzip data" in err[0]


def test_registry_duplicates_repeated_tweets_and_unknown_users_pings(world, batch_out, tmp_path):
    """An opted-out user's duplicate that opts in is not counted; a repeated tweet counts once."""
    dup = _copy_world(world, str(tmp_path / "dup"))
    with open(os.path.join(world, "pings.jsonl"), encoding="utf-8") as handle:
        pings = handle.read().splitlines()
    with open(os.path.join(world, "users.jsonl"), encoding="utf-8") as handle:
        users = handle.read().splitlines()
    pinger = json.loads(pings[0])["user_id"]
    (original,) = [line for line in users if json.loads(line)["user_id"] == pinger]
    assert json.loads(original)["stats_opt_out"] is False
    opted_out = json.dumps(dict(json.loads(original), stats_opt_out=True))
    with open(os.path.join(dup, "users.jsonl"), "w", encoding="utf-8") as handle:
        handle.write("\n".join([opted_out] + users) + "\n")  # opted out first, then the copy that is not
    with open(os.path.join(world, "tweets.jsonl"), encoding="utf-8") as handle:
        # statuses only: a repeated compliance message is used again (the same notice twice
        # withdraws nothing more), never a duplicate dead letter
        tweets = [line for line in handle.read().splitlines()
                  if "id_str" in json.loads(line) or "id" in json.loads(line).get("data", {})]
    stranger = json.dumps(dict(json.loads(pings[0]), user_id="424242"))
    with open(os.path.join(dup, "tweets.jsonl"), "a", encoding="utf-8") as handle:
        handle.write("\n".join(tweets[:5]) + "\n")
    with open(os.path.join(dup, "pings.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(stranger + "\n")
    out = str(tmp_path / "out")
    summary = _run(dup, out)
    assert summary["stages"]["rejected"] == {"users": 1, "pings": 1, "taps": 0, "tweets": 5}
    dead = read_jsonl_folder(os.path.join(out, "deadletter"))
    errors = collections.Counter(row["error"].split(":")[0] for row in dead)
    assert errors == {f"duplicate user_id {pinger}": 1, "user_id 424242 is not in the user registry": 1,
                      **{f"duplicate tweet id {json.loads(t).get('id_str') or json.loads(t)['data']['id']}": 1
                         for t in tweets[:5]}}
    assert [row["raw"] for row in dead if row["source"] == "pings.jsonl"] == [stranger]
    for folder in ("follows", "alerts"):
        assert _canonical(read_jsonl_folder(os.path.join(out, folder))) == \
            _canonical(read_jsonl_folder(os.path.join(batch_out[0], folder))), folder
    # the merged record is opted out: the user's contributions are dropped, not counted
    before = batch_out[1]["counters"].get("dp_opted_out_dropped", 0)
    assert summary["counters"]["dp_opted_out_dropped"] > before

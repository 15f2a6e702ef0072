"""The Flink job: the same steps as ``pipelines.run.build`` wires on Beam, on DataStreams.

Step for step as the Beam reference (``pipelines/run.py::build``):

1. sources (``flink_job.io``): the registry, read and merged at build time; the event
   lines, from the files (BATCH) or the Kafka topics (STREAMING; with the ``users`` topic
   from the launch snapshot on: the settings changes);
2. ParseEvents: each line judged once (``core.inputs``), routed to its record kind or a
   dead letter; tweets, pings and registry records keep their raw line (``with_raw``) for a
   later rejection;
   FollowRegistry (STREAMING from Kafka): the snapshot's entries, then the live registry
   records, folded per user (``core.registry.registry_over``): the users the fan-out and the
   statistics' RegistryGate take, a change from its ``updated_at``'s tick on;
3. DedupeTweets (``core.registry.FirstCopy``, keyed by tweet id, ordered by FlinkOps);
4. KeepRegisteredPings (``core.registry.registered_ping``);
5. ResolveMutualFollows (``flink_job.follows.resolve_follows``);
6. FanOutGeofencedAlerts: the location reports (``core.locations``) and
   ``core.alerts.fan_out_over`` on :class:`flink_job.ops.FlinkOps`;
7. ReleaseDpStatistics (``flink_job.dp_stats.release_statistics``);
8. sinks: follows and alerts (folders, or Kafka exactly once), the timeline (its folder), marketing Parquet, the
   privacy ledger, and every dead letter united into ``deadletter/``.

Every operator is named and has a stable uid (its stage path), so a savepoint taken from
one build restores into the next. :func:`configure` sets the runtime mode (BATCH for
files, STREAMING for Kafka), parallelism, checkpointing (EXACTLY_ONCE) and the state
backend; a streaming job also its own checkpoint tuning for backlogs and restart strategy
(:data:`BACKLOG_CHECKPOINTING`, :data:`STREAMING_RESTARTS`), a batch job the cluster's.
"""
from __future__ import annotations

import os

from pyflink.common import Configuration
from pyflink.datastream import CheckpointingMode, RuntimeExecutionMode

from core.alerts import fan_out_over
from core.config import RunConfig
from core.input_files import input_files, kafka_origins, origin_names
from core.locations import location_reports_over
from core.registry import (DUPLICATE_TWEETS, PINGS_UNKNOWN_USER, FirstCopy, effective_user, registered_ping,
                           registry_over)
from flink_job import io
from flink_job.config import JobSettings
from flink_job.dp_stats import release_statistics
from flink_job.follows import resolve_follows
from flink_job.ops import FlinkOps
from flink_job.ordered import assign_uids, recommended_configuration
from schemas.records import DeadLetter

DEAD = io.DEAD
MAX_PARALLELISM = 128
BATCH_SHUFFLE_MODE = "ALL_EXCHANGES_PIPELINED"
# Checkpoints of a streaming job behind a large backlog. An aligned barrier queues behind
# every buffer of backlog in the exchanges before it (the Python operators drain them
# slowly), so a checkpoint outlived the cluster's 2 min timeout, the job failed, restored,
# met the same backlog, and looped. A checkpoint may now take 5 min (a Kafka transaction
# lives from one checkpoint to the next one's commit: interval + duration must stay under
# io.KAFKA_TRANSACTION_TIMEOUT_MS, 10 min). Checkpoints stay aligned: with unaligned
# checkpoints (after 30 s of alignment) the TaskManager-kill test restored and finished with
# exact follows, alerts, ledger and dead letters, but some footfall statistics 0 instead of
# 1 -- presence contributions lost across the restore of in-flight data through the Python
# operators. Checkpoint failures stay intolerable (Flink's default, 0): a failed checkpoint
# restarts the job from the last completed one at once; tolerating them would let the job run
# on with a stale checkpoint and its Kafka transactions open until one succeeds.
BACKLOG_CHECKPOINTING = {
    "execution.checkpointing.timeout": "5 min",
}
# A streaming job restarts for as long as it takes a TaskManager to come back. The cluster's
# fixed delay (20 attempts, 2 s apart: infra/flink.sh) was spent in 40 s of "Could not
# acquire the minimum required resources" while a replacement TaskManager started on a busy
# 2-core machine, and the job FAILED after its TaskManager kill (seen with the fault test at
# load 45); exponential backoff up to 30 s, never giving up, reset after 10 quiet minutes.
STREAMING_RESTARTS = {
    "restart-strategy.type": "exponential-delay",
    "restart-strategy.exponential-delay.initial-backoff": "1 s",
    "restart-strategy.exponential-delay.max-backoff": "30 s",
    "restart-strategy.exponential-delay.backoff-multiplier": "2.0",
    "restart-strategy.exponential-delay.reset-backoff-threshold": "10 min",
    "restart-strategy.exponential-delay.attempts-before-reset-backoff": str(2 ** 31 - 1),
}


def configure(env, cfg: RunConfig, settings: JobSettings) -> None:
    """Runtime mode, parallelism, checkpointing, state backend and connector jars of the job."""
    env.set_runtime_mode(RuntimeExecutionMode.STREAMING if cfg.source == "kafka" else RuntimeExecutionMode.BATCH)
    if settings.parallelism:
        env.set_parallelism(settings.parallelism)
    # One max parallelism (key groups) for every operator: BATCH's adaptive scheduler refuses
    # a result whose consumers differ in it ("Consumers must have the same max parallelism"),
    # which an unchained keyed operator next to chained ones gave; and a savepoint rescales
    # only within it.
    env.set_max_parallelism(MAX_PARALLELISM)
    if settings.checkpointing_interval_ms:
        env.enable_checkpointing(settings.checkpointing_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    job = Configuration()
    job.set_string("state.backend.type", settings.state_backend)
    # the ordered hosts' bundle and state-cache sizes (flink_job.ordered measures why)
    for key, value in recommended_configuration().items():
        job.set_string(key, value)
    if cfg.source == "kafka":
        for key, value in {**BACKLOG_CHECKPOINTING, **STREAMING_RESTARTS}.items():
            job.set_string(key, value)
    else:
        # BATCH: every exchange pipelined, so the job is one region that starts its Python
        # workers once; with blocking exchanges each of ~25 keyed stages started its own,
        # one after another (most of a small run's time)
        job.set_string("execution.batch-shuffle-mode", BATCH_SHUFFLE_MODE)
        # the adaptive batch scheduler (Flink 2's default for BATCH) cannot schedule an
        # all-pipelined job (IllegalStateException in DefaultExecutionTopology)
        job.set_string("jobmanager.scheduler", "Default")
    env.configure(job)
    if settings.jars:
        env.add_jars(*(jar if "://" in jar else "file://" + os.path.abspath(jar) for jar in settings.jars))


def read_registry(cfg: RunConfig, settings: JobSettings, files: dict | None, origin: str):
    """(user_id -> RegistryEntry, the registry's dead letters): the users file, or the snapshot
    of the users topic the launcher took (a file of its lines), each user's latest verified
    settings change applied (``--registry_portal_pubkey``)."""
    paths = [settings.users_file] if settings.users_file else files["users"]
    entries, dead, _read = io.registry_from_lines(io.registry_lines(paths), origin, cfg.registry_portal_pubkey,
                                                  entries=True)
    return entries, dead


def _split_dead(ops, col, stage_name: str, counter_name: str):
    """A step's mixed outputs -> {'main': records, 'dead_letters': DeadLetter}, the dead ones counted."""
    dead_count = ops.counter(counter_name)

    def split(out):
        if isinstance(out, DeadLetter):
            dead_count.inc()
            yield DEAD, out
        else:
            yield "main", out
    return ops.tagged(col, split, ("main", DEAD), stage_name)


def parse_events(ops, events, origins: dict, cfg: RunConfig, stamp: bool) -> dict:
    """ParseEvents: lines -> {kind: records (tweets, pings with their raw line), 'dead_letters'}."""
    def parse(o, lines):
        judged = o.map(lines, io.judging(o, origins, cfg.max_event_future_s), "Judge")
        if stamp:
            judged = io.stamp_judged(judged, "ParseEvents/EventTime")
        return o.tagged(judged, io.routing(frozenset(("tweets", "pings", "users"))), io.OUTPUTS + (DEAD,), "Route")
    return ops.nested("ParseEvents", parse, events)


def follow_registry(ops, env, entries: dict, records, origin: str, cfg: RunConfig) -> dict:
    """FollowRegistry: the launch snapshot's entries (a checkpointed source of their own), then
    the registry records read live, folded per user -> {'users', 'dead_letters'}."""
    seeds = io.from_records(env, sorted(entries.values(), key=lambda entry: entry.user_id), "Registry", "Snapshot")
    return ops.nested("FollowRegistry", lambda o, live: registry_over(
        o, seeds, live, origin, cfg.registry_portal_pubkey, tick_s=cfg.alerts.stream_tick_s,
        allowed_lateness_s=cfg.alerts.allowed_lateness_s), records)


def dedupe_tweets(ops, tweets, origin: str, cfg: RunConfig) -> dict:
    """DedupeTweets: each tweet id once (``FirstCopy`` keyed by id), later copies dead letters."""
    def dedupe(o, pairs):
        keyed = o.map(pairs, lambda pair: (pair[0].tweet_id, pair), "ById")
        ordered = o.run_ordered(keyed, FirstCopy(origin, cfg.dedupe_horizon_s), "FirstCopy",
                                tick_s=cfg.alerts.stream_tick_s, allowed_lateness_s=cfg.dedupe_horizon_s,
                                step="dedupe")
        split = _split_dead(o, ordered["out"], "Split", DUPLICATE_TWEETS)
        return {"tweets": split["main"],
                DEAD: o.flatten([split[DEAD], ordered["late"]], "DeadLetters")}
    return ops.nested("DedupeTweets", dedupe, tweets)


def keep_registered_pings(ops, pings, registry: dict, origin: str) -> dict:
    """KeepRegisteredPings: a ping of a user not in the registry is a dead letter."""
    registered = {user_id: True for user_id in registry}

    def keep(o, pairs):
        judged = o.map(pairs, lambda pair: registered_ping(pair[0], pair[1], registered, origin), "KnownUser")
        split = _split_dead(o, judged, "Split", PINGS_UNKNOWN_USER)
        return {"pings": split["main"], DEAD: split[DEAD]}
    return ops.nested("KeepRegisteredPings", keep, pings)


def count_emitted(ops, col, name: str):
    """Pass-through counting ``emitted.<name>`` for the run summary (as Beam's CountEmitted)."""
    counter = ops.counter(f"emitted.{name}")

    def count(element):
        counter.inc()
        return element
    return ops.map(col, count, f"Count{name.title().replace('_', '')}")


def sources(env, ops, cfg: RunConfig, settings: JobSettings):
    """(registry entries, registry dead letters, event lines, origins, whether to stamp event times)."""
    if cfg.source == "kafka":
        origins = kafka_origins()
        entries, dead = read_registry(cfg, settings, None, origins["users"])
        events = io.kafka_events(env, cfg, settings.kafka_stop_at_latest, settings.kafka_idleness_ms, "Sources",
                                 settings.users_live_from)
        return entries, dead, events, origins, False
    files = input_files(cfg.input_dir)
    origins = origin_names(files)
    entries, dead = read_registry(cfg, settings, files, origins["users"])
    return entries, dead, io.file_events(env, files, "Sources"), origins, True


def build(env, cfg: RunConfig, settings: JobSettings, noise=None) -> dict:
    """Wire sources, the three business steps and the sinks onto ``env``; returns the inputs' origins.

    ``noise`` replaces the statistics' noise (code only, never a flag: the tests' job entry
    ``tests/flink/drivers/job_no_noise.py`` passes ``NoNoiseForTests`` to compare exact values)."""
    out = lambda folder: os.path.join(cfg.output_dir, folder)  # noqa: E731
    bounded = cfg.source != "kafka"
    ops = FlinkOps(env, bounded=bounded)
    entries, registry_dead, events_raw, origins, stamp = sources(env, ops, cfg, settings)
    registry = {user_id: effective_user(entry) for user_id, entry in entries.items()}
    # Streaming from Kafka, the registry is a changing input: the snapshot, then the users topic
    live_registry = cfg.source == "kafka" and settings.users_live_from is not None
    if not live_registry:
        users = io.from_records(env, sorted(registry.values()), "Registry", "Users")
    parsed = parse_events(ops, events_raw, origins, cfg, stamp)
    live_dead = []
    if live_registry:
        followed = follow_registry(ops, env, entries, parsed["users"], origins["users"], cfg)
        users, live_dead = followed["users"], [followed[DEAD]]
    tweets = dedupe_tweets(ops, parsed["tweets"], origins["tweets"], cfg)
    pings = keep_registered_pings(ops, parsed["pings"], registry, origins["pings"])
    events = dict(parsed, tweets=tweets["tweets"], pings=pings["pings"])

    follow_out = ops.nested("ResolveMutualFollows",
                            lambda o, taps: resolve_follows(o, taps, registry, cfg.follows), events["taps"])
    reports = ops.nested("LocationReports", lambda o, inputs: location_reports_over(o, inputs, cfg.alerts.max_accuracy_m),
                         {"pings": events["pings"], "tweets": events["tweets"], "taps": events["taps"]})
    alert_out = ops.nested("FanOutGeofencedAlerts", lambda o, inputs: fan_out_over(o, inputs, cfg.alerts), {
        "tweets": events["tweets"], "deletes": events["deletes"], "reports": reports,
        "follows": follow_out["follows"], "users": users})
    dp_inputs = {"pings": events["pings"], "tweets": events["tweets"], "taps": events["taps"],
                 "deletes": events["deletes"]}
    if live_registry:
        dp_inputs["registry_updates"] = users
    dp_out = ops.nested("ReleaseDpStatistics", lambda o, inputs: release_statistics(
        o, inputs, registry, cfg.dp, noise=noise, live=cfg.source == "kafka", compliance=cfg.alerts), dp_inputs)

    follows = count_emitted(ops, follow_out["follows"], "follows")
    alerts = count_emitted(ops, alert_out["alerts"], "alerts")
    if cfg.results_sink == "kafka":
        for name, records in (("follows", follows), ("alerts", alerts)):
            io.kafka_sink(records, name, cfg.kafka_bootstrap_servers, settings.transactional_id_prefix,
                          f"{name.title()}ToKafka")
    else:
        io.jsonl_sink(follows, out("follows"), "WriteFollows")
        io.jsonl_sink(alerts, out("alerts"), "WriteAlerts")
    # The local timeline (the portal's "near you") goes to its folder in every mode: no topic.
    io.jsonl_sink(count_emitted(ops, alert_out["timeline"], "timeline"), out("timeline"), "WriteTimeline")
    io.parquet_sink(count_emitted(ops, dp_out["statistics"], "statistics"), out("marketing"), "WriteMarketing")
    io.jsonl_sink(dp_out["ledger"], out("privacy_ledger"), "WriteLedger")

    dead_letters = ops.flatten([
        parsed[DEAD], io.from_records(env, registry_dead, "Registry", "DeadLetters"), *live_dead,
        tweets[DEAD], pings[DEAD], follow_out["dead_letters"], alert_out["dead_letters"]], "AllDeadLetters")
    io.jsonl_sink(count_emitted(ops, dead_letters, "dead_letters"), out("deadletter"), "WriteDeadLetters")
    assign_uids(env)
    return origins

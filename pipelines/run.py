"""The unified pipeline: ``python -m pipelines.run [--input DIR] [--output DIR] [Beam options…]``.

Sources -> ParseInputs -> ResolveMutualFollows -> FanOutGeofencedAlerts
                       -> ReleaseDpStatistics -> sinks (see README for the picture).

With no ``--input`` it generates the default synthetic world in-process (into
``OUTPUT/world/``) and runs on DirectRunner. ``--streaming`` replays the files as
an unbounded stream in event time; ``--source kafka`` reads the topics instead
(the Flink deployment). ``--engine flink`` runs the same steps as a native Flink
job instead (``pipelines.flink_engine``). Every Beam option passes through unchanged. Exit status
0 on success, 2 with a one-line reason on stderr for a bad argument, missing
input or invalid configuration.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from core.config import ConfigError, RunConfig, run_config
from pipelines import sinks, sources
from pipelines.dp_schedule import with_release_schedule
from pipelines.options import TapFollowOptions, bad_choice, help_text, unknown_flags
from pipelines.summary import counters_of, print_summary, write_summary
from schemas.records import DeadLetter, to_json_line
from transforms.alerts import FanOutGeofencedAlerts
from transforms.dp_stats import ReleaseDpStatistics
from transforms.follows import ResolveMutualFollows
from transforms.parse_inputs import ParseInputs
from transforms.registry import DedupeTweets, FollowRegistry, KeepRegisteredPings, MergeRegistry

OUTPUT_FOLDERS = ("follows", "alerts", "timeline", "marketing", "deadletter", "privacy_ledger")


def config_from(options: PipelineOptions) -> RunConfig:
    """The run's checked configuration (``core.config``), read once from the options,
    with its DP release schedule (flags, else the input's world.json).

    ``--engine flink``: Kafka is read streaming (``--streaming`` implied), files in batch."""
    standard = options.view_as(StandardOptions)
    project = options.view_as(TapFollowOptions)  # registers the project's flags before they are read
    streaming, runner = bool(standard.streaming), standard.runner
    if project.engine == "flink":
        streaming, runner = streaming or project.source == "kafka", "flink"
    return run_config(options.get_all_options(retain_unknown_options=True),
                      streaming=streaming, runner=runner, release_schedule=with_release_schedule)


def read_inputs(pipeline, cfg: RunConfig):
    """(users lines, event lines, origins, lines read per kind when the launcher itself read
    them -- the streaming replay -- else None: the pipeline's ``read.<kind>`` counters count)."""
    if cfg.source == "kafka":
        from kafka_client import snapshot_topic_with_ends
        from pipelines import kafka_io
        # The registry: its snapshot at launch, then (with the events) every record produced to
        # the users topic after it -- the portal's settings changes, new subscribers.
        snapshot, ends = snapshot_topic_with_ends(cfg.kafka_bootstrap_servers, "users")
        topics = {kind: kind for kind in ("users",) + tuple(sources.EVENT_KINDS)}
        users = pipeline | "UsersSnapshot" >> beam.Create([("users", line) for line in snapshot])
        events = pipeline | "ReadKafka" >> kafka_io.ReadRawFromKafka(
            topics, cfg.kafka_bootstrap_servers, cfg.kafka_expansion_service, skip_below={"users": ends})
        return users, events, sources.kafka_origins(), None
    files = sources.input_files(cfg.input_dir)
    if cfg.streaming:
        # The registry snapshot is taken at launch, like the replayed stream itself
        # (DirectRunner's streaming mode cannot run the SDF file reader); its settings
        # changes are replayed among the events, each at its updated_at.
        snapshot, changes = sources.split_registry(files, cfg.max_event_future_s)
        users = pipeline | "UsersSnapshot" >> beam.Create(snapshot)
        events, lines_read = sources.stream_from_files(pipeline, files, cfg.stream_disorder_s, cfg.stream_seed,
                                                       max_future_s=cfg.max_event_future_s, registry_changes=changes)
        lines_read["users"] += len(snapshot)
        return users, events, sources.origin_names(files), lines_read
    users = pipeline | "ReadUsers" >> sources.ReadKindFromFiles("users", files["users"])
    reads = [pipeline | f"Read{kind.title()}" >> sources.ReadKindFromFiles(kind, files[kind])
             for kind in sources.EVENT_KINDS]
    events = tuple(reads) | "AllEvents" >> beam.Flatten()
    return users, events, sources.origin_names(files), None


def build(pipeline, cfg: RunConfig, noise=None) -> tuple[dict[str, str], dict[str, int] | None]:
    """Wire sources, the three business steps and the sinks onto ``pipeline``; returns the inputs'
    origins and, when the launcher read the lines itself (the streaming replay), their counts.

    ``noise`` replaces the statistics' noise (code only, never a flag: tests and
    ``tools.same_outputs`` pass ``NoNoiseForTests`` to compare exact values)."""
    out = lambda folder: os.path.join(cfg.output_dir, folder)  # noqa: E731
    users_raw, events_raw, origins, lines_read = read_inputs(pipeline, cfg)
    parsed_users = users_raw | "ParseUsers" >> ParseInputs(origins, with_raw=("users",))
    # One record per user and per tweet id, and only registered users' pings, before any step uses them.
    registry = parsed_users["users"] | "MergeRegistry" >> MergeRegistry(origins["users"], cfg.registry_portal_pubkey)
    users = registry["users"]
    parsed = events_raw | "ParseEvents" >> ParseInputs(origins, with_raw=("tweets", "pings", "users"),
                                                       max_future_s=cfg.max_event_future_s)
    registry_dead = [registry["dead_letters"]]
    current_users = users
    if cfg.streaming:
        # The registry as a changing input: settings changes read while the job runs reach
        # the alerts (opt-in) and the statistics (opt-out) in the next event-time tick.
        followed = ({"entries": registry["entries"], "records": parsed["users"]}
                    | "FollowRegistry" >> FollowRegistry(origins["users"], cfg.registry_portal_pubkey,
                                                         cfg.alerts.stream_tick_s, cfg.alerts.allowed_lateness_s))
        current_users = followed["users"]
        registry_dead.append(followed["dead_letters"])
    tweets = parsed["tweets"] | "DedupeTweets" >> DedupeTweets(origins["tweets"], cfg.dedupe_horizon_s)
    pings = ({"pings": parsed["pings"], "users": users}
             | "KeepRegisteredPings" >> KeepRegisteredPings(origins["pings"]))
    events = dict(parsed, tweets=tweets["tweets"], pings=pings["pings"])

    follow_out = ({"taps": events["taps"], "users": users}
                  | "ResolveMutualFollows" >> ResolveMutualFollows(cfg.follows))
    alert_out = ({"tweets": events["tweets"], "deletes": events["deletes"], "pings": events["pings"],
                  "taps": events["taps"], "follows": follow_out["follows"], "users": current_users}
                 | "FanOutGeofencedAlerts" >> FanOutGeofencedAlerts(cfg.alerts))
    dp_inputs = {"pings": events["pings"], "tweets": events["tweets"], "taps": events["taps"], "users": users,
                 "deletes": events["deletes"]}
    if cfg.streaming:
        dp_inputs["registry_updates"] = current_users
    dp_out = (dp_inputs
              | "ReleaseDpStatistics" >> ReleaseDpStatistics(cfg.dp, noise=noise, live=cfg.source == "kafka",
                                                             compliance=cfg.alerts))

    follows = follow_out["follows"] | "CountFollows" >> sinks.CountEmitted("follows")
    alerts = alert_out["alerts"] | "CountAlerts" >> sinks.CountEmitted("alerts")
    if cfg.results_sink == "kafka":
        from pipelines import kafka_io
        for name, records in (("follows", follows), ("alerts", alerts)):
            (records | f"{name.title()}ToJson" >> beam.Map(to_json_line)
             | f"{name.title()}ToKafka" >> kafka_io.WriteLinesToKafka(
                 name, cfg.kafka_bootstrap_servers, cfg.kafka_expansion_service))
    else:
        follows | "WriteFollows" >> sinks.WriteJsonl(out("follows"), cfg.streaming)
        alerts | "WriteAlerts" >> sinks.WriteJsonl(out("alerts"), cfg.streaming)
    # The local timeline (the portal's "near you") goes to its folder in every mode: no topic.
    (alert_out["timeline"] | "CountTimeline" >> sinks.CountEmitted("timeline")
     | "WriteTimeline" >> sinks.WriteJsonl(out("timeline"), cfg.streaming))

    (dp_out["statistics"] | "CountStatistics" >> sinks.CountEmitted("statistics")
     | "WriteMarketing" >> sinks.WriteMarketingParquet(out("marketing"), cfg.streaming))
    dp_out["ledger"] | "WriteLedger" >> sinks.WriteJsonl(out("privacy_ledger"), cfg.streaming)

    dead_letters = ((parsed_users["dead_letters"], *registry_dead, events["dead_letters"],
                     tweets["dead_letters"], pings["dead_letters"],
                     follow_out["dead_letters"], alert_out["dead_letters"])
                    | "AllDeadLetters" >> beam.Flatten().with_output_types(DeadLetter))
    (dead_letters | "CountDeadLetters" >> sinks.CountEmitted("dead_letters")
     | "WriteDeadLetters" >> sinks.WriteJsonl(out("deadletter"), cfg.streaming))
    return origins, lines_read


# Prism splits a slow bundle's input at run time (dynamic splitting). A split Kafka
# restriction is then read by two bundles at once, and Prism (Beam 2.77) takes the
# read's watermark from the bundle it finished last, ignoring the split (its own
# "TODO what happens to output watermarks on splits?"): the later half moves the
# watermark past records the earlier half has yet to emit, and those arrive late
# (seen: late dead letters from alerts:cells, alerts missing). Streaming on a
# portable runner therefore asks Prism not to split; other runners ignore it.
PRISM_NO_SPLIT = "prism_disable_sdf_split"


def add_runner_experiments(options: PipelineOptions) -> None:
    """Streaming on a portable (Prism) runner: no dynamic splits, see PRISM_NO_SPLIT."""
    standard = options.view_as(StandardOptions)
    runner = (standard.runner or "").lower()
    if standard.streaming and ("portable" in runner or "prism" in runner):
        debug = options.view_as(DebugOptions)
        if not debug.lookup_experiment(PRISM_NO_SPLIT):
            debug.add_experiment(PRISM_NO_SPLIT)


def prepare_output(cfg: RunConfig) -> None:
    """A fresh output tree: stale shards from an earlier run would be read as this run's."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    for folder in OUTPUT_FOLDERS:
        shutil.rmtree(os.path.join(cfg.output_dir, folder), ignore_errors=True)
    summary = os.path.join(cfg.output_dir, "run_summary.json")
    if os.path.exists(summary):
        os.remove(summary)


def ensure_default_world(options: PipelineOptions) -> None:
    """No --input: generate the default synthetic world into OUTPUT/world/ and use it."""
    project = options.view_as(TapFollowOptions)
    if project.input is not None:
        return
    from synthetic.world import write_world
    world_dir = os.path.join(project.output, "world")
    print(f"No --input: generating a synthetic world ({project.world_users} users, "
          f"{project.world_hours} h, seed {project.world_seed}) into {world_dir}", file=sys.stderr)
    shutil.rmtree(world_dir, ignore_errors=True)
    write_world(world_dir, users=project.world_users, hours=project.world_hours, seed=project.world_seed,
                start=project.world_start, progress=lambda message: print(f"  {message}", file=sys.stderr))
    project.input = world_dir


def watch_job(result, retry_s: float = 5.0, sleep=time.sleep, stream_deadline_s: float | None = None) -> None:
    """Wait until the job ends, for as long as it runs; a failed job raises.

    A portable runner's job (Prism; Flink through Beam's job server) is followed on the job
    service's state stream, re-attached whenever it drops: seen on Prism after about 5
    minutes of a streaming job, grpc DEADLINE_EXCEEDED "Stream removed". Beam's own
    ``wait_until_finish`` is not used there: when its stream drops it raises *and* stops the
    LOOPBACK worker pool of this process (its cleanup), so the job would run on without
    workers. ``stream_deadline_s`` gives each attached stream a deadline (tests: a short one
    makes the stream drop for real); after a drop, while the job is not terminal, the launcher
    says so with the job id and watches again. Other runners' results are waited on with
    ``wait_until_finish``, and a failed wait is retried the same way while the job runs.
    Cancelling is how an unbounded job ends: that is said, and the summary still written."""
    from apache_beam.runners.portability.portable_runner import PipelineResult as PortableResult
    if isinstance(result, PortableResult):
        try:
            state = _follow_portable_job(result, retry_s, sleep, stream_deadline_s)
        except KeyboardInterrupt:   # Ctrl-C: the operator ends the job (its workers live here)
            print(f"\npipelines.run: cancelling the job {result._job_id}", file=sys.stderr)
            result.cancel()
            raise
        if state == PipelineState.FAILED:
            raise RuntimeError(f"the job {result._job_id} failed: {result._last_error_message()}")
        if state == PipelineState.CANCELLED:
            print("pipelines.run: the job was cancelled", file=sys.stderr)
        return
    lost = 0
    while True:
        try:
            result.wait_until_finish()
            return
        except Exception:  # noqa: BLE001 -- re-raised below unless the job runs on or was cancelled
            try:
                state = result.state
            except Exception:  # noqa: BLE001 -- the job service itself is gone: the first error says why
                state = PipelineState.UNKNOWN
            if state == PipelineState.CANCELLED:
                print("pipelines.run: the job was cancelled", file=sys.stderr)
                return
            if state in (PipelineState.UNKNOWN, PipelineState.UNRECOGNIZED) or PipelineState.is_terminal(state):
                raise
            lost += 1
            _say_lost(lost, "", state)
            sleep(retry_s)


def _say_lost(lost: int, job: str, state) -> None:
    print(f"pipelines.run: lost the job's state stream ({lost}x); the job{job} is {state}, "
          f"watching again", file=sys.stderr)


def _follow_portable_job(result, retry_s: float, sleep, stream_deadline_s: float | None):
    """The terminal state of a portable job, followed on (re-attached) state streams; the
    LOOPBACK workers of this process are stopped once the job has ended."""
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability.portable_runner import TERMINAL_STATES
    request = beam_job_api_pb2.GetJobStateRequest(job_id=result._job_id)
    # the stream the submission opened, first (unless every stream is to have a deadline)
    stream = (result._state_stream if stream_deadline_s is None
              else result._job_service.GetStateStream(request, timeout=stream_deadline_s))
    lost = 0

    def keep_messages():   # the job's messages, for the error of a failed job (as Beam keeps them)
        try:
            for message in result._message_stream:
                result._messages.append(message)
        except Exception:  # noqa: BLE001 -- the stream ended or dropped: the state stream decides
            pass
    threading.Thread(target=keep_messages, name="job-messages", daemon=True).start()
    try:
        while True:
            try:
                for response in stream:
                    result._state = result.runner_api_state_to_pipeline_state(response.state)
                    if response.state in TERMINAL_STATES:
                        return result._state
            except Exception as exc:  # noqa: BLE001 -- grpc's stream errors; the job's own state decides
                dropped = exc
            else:
                dropped = None   # the service closed the stream without a final state
            try:
                state = result.state                 # one GetState call
            except Exception:  # noqa: BLE001 -- no job service left: nothing more to follow
                if dropped is not None:
                    raise dropped
                raise
            if PipelineState.is_terminal(state):
                return state
            lost += 1
            _say_lost(lost, f" {result._job_id}", state)
            sleep(retry_s)
            stream = result._job_service.GetStateStream(request, timeout=stream_deadline_s)
    finally:
        result._cleanup()


def run(argv=None, flink_entry: str | None = None) -> int:
    """The launcher; exit status. ``flink_entry``: with ``--engine flink``, the job's module or
    script instead of ``flink_job`` (code only, never a flag: the tests' no-noise entry)."""
    started = time.time()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(help_text(), end="")
        return 0
    unknown = unknown_flags(argv)
    if unknown:
        what = (f"unknown option {unknown[0]}" if unknown[0].startswith("-")
                else f"unexpected argument {unknown[0]!r}: not the value of any option")
        print(f"pipelines.run: error: {what} (neither a project option nor a Beam option; see --help)",
              file=sys.stderr)
        return 2
    wrong = bad_choice(argv)
    if wrong:
        print(f"pipelines.run: error: {wrong}", file=sys.stderr)
        return 2
    options = PipelineOptions(argv)
    try:
        project = options.view_as(TapFollowOptions)
        for name in ("world_users", "world_hours"):
            if getattr(project, name) <= 0:
                raise ConfigError(f"--{name} must be > 0")
        if project.input is None and project.source == "files":
            ensure_default_world(options)
        if project.source == "files":
            sources.input_files(project.input)  # fail before building anything
        cfg = config_from(options)
        if not (project.engine == "flink" and project.flink_savepoint):
            prepare_output(cfg)   # a job resumed from its savepoint continues its outputs
    except ConfigError as exc:
        print(f"pipelines.run: error: {exc}", file=sys.stderr)
        return 2
    if project.engine == "flink":  # the same steps as a native Flink job: nothing Beam is built
        from pipelines import flink_engine
        return flink_engine.launch(cfg, options.get_all_options(retain_unknown_options=True), started,
                                   entry=flink_entry or flink_engine.JOB_ENTRY)
    add_runner_experiments(options)
    pipeline = beam.Pipeline(options=options)
    origins, lines_read = build(pipeline, cfg)
    result = pipeline.run()
    interrupted = False
    try:
        watch_job(result)
    except KeyboardInterrupt:   # the job is cancelled: its summary is still written, exit 130
        interrupted = True
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if lines_read is None:  # ParseInputs counted every line it was given (read.<kind>)
        counters = counters_of(result)
        lines_read = {kind: counters.get(f"read.{kind}", 0) for kind in sources.SOURCES}
    try:
        summary = write_summary(result, cfg, lines_read, origins, runner, wall_time_s=time.time() - started)
    except Exception as exc:  # noqa: BLE001 -- only after Ctrl-C: a runner may keep no metrics of a cancelled job
        if not interrupted:
            raise
        print(f"pipelines.run: interrupted; no run summary ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 130
    print_summary(summary)
    return 130 if interrupted else 0


def main() -> None:
    logging.getLogger().setLevel(logging.WARNING)
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()

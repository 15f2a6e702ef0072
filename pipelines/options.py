"""Command-line options of ``python -m pipelines.run``, read once at the edge.

Project options live in ``TapFollowOptions``; every Beam option (``--runner``,
``--streaming``, ``--flink_master`` …) passes through untouched. Each business
step declares its parameters as a frozen dataclass (``FollowParams``,
``AlertParams``, ``DpParams``); ``add_params_arguments`` turns every field into a
``--<prefix>_<field>`` flag with the dataclass default, and ``core.config``
builds the validated dataclasses back, so a new parameter needs no wiring here.
:func:`unknown_flags` makes a mistyped flag an error instead of a silent no-op.

``--engine flink`` runs the same steps as a native Flink job (``pipelines.flink_engine``);
it reuses the names of Beam's Flink flags (``--flink_master``, ``--parallelism``,
``--checkpointing_interval``) and adds ``--flink_state_backend`` and
``--flink_kafka_stop_at_latest``.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from apache_beam.options.pipeline_options import PipelineOptions

from core.config import DEFAULT_KAFKA_BOOTSTRAP, RESULTS_SINKS, SOURCES, STEP_PARAMS

ENGINES = ("beam", "flink")
FLINK_STATE_BACKENDS = ("hashmap", "rocksdb")


def _flag_type(annotation):
    if annotation is bool:
        return lambda text: {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()]
    return annotation


def add_params_arguments(parser, prefix: str, params_cls) -> None:
    hints = typing.get_type_hints(params_cls)
    for field in dataclasses.fields(params_cls):
        parser.add_argument(
            f"--{prefix}_{field.name}",
            dest=f"{prefix}_{field.name}",
            type=_flag_type(hints[field.name]),
            default=None,
            help=f"{params_cls.__name__}.{field.name} (default {field.default!r})",
        )


class TapFollowOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", default=None,
                            help="directory of users/pings/taps/tweets .jsonl[.gz]; "
                                 "default: a synthetic world generated in-process")
        parser.add_argument("--output", default="out", help="output directory (default ./out)")
        parser.add_argument("--engine", default="beam", choices=ENGINES,
                            help="beam: the Beam pipeline on --runner (default); flink: the same steps as a "
                                 "native Flink job on the session cluster at --flink_master (127.0.0.1:8081 "
                                 "when not given): files in batch mode, --source kafka streaming")
        parser.add_argument("--checkpointing_interval", type=int, default=None,
                            help="--engine flink: checkpoint every this many ms (default 10000 when streaming; "
                                 "batch needs none). Beam's FlinkRunner reads the same flag")
        parser.add_argument("--flink_state_backend", default="hashmap", choices=FLINK_STATE_BACKENDS,
                            help="--engine flink: where keyed state lives (default hashmap: the heap)")
        parser.add_argument("--flink_kafka_stop_at_latest", action="store_true", default=False,
                            help="--engine flink --source kafka: read the topics only up to what they held "
                                 "when the job started, then end (a bounded read in streaming mode)")
        parser.add_argument("--flink_detached", action="store_true", default=False,
                            help="--engine flink: print the job id and return once submitted "
                                 "(python -m pipelines.flink_engine status|stop|upgrade JOB_ID operate it)")
        parser.add_argument("--flink_savepoint", default=None,
                            help="--engine flink: start the job from this savepoint (a resume, an "
                                 "upgrade, a rescale with --parallelism)")
        parser.add_argument("--source", default="files", choices=SOURCES,
                            help="where events come from (default files)")
        parser.add_argument("--kafka_bootstrap_servers", default=DEFAULT_KAFKA_BOOTSTRAP)
        parser.add_argument("--kafka_expansion_service", default=None,
                            help="host:port of a running Beam expansion service, or a path "
                                 "to the expansion-service jar (default: $BEAM_KAFKA_EXPANSION_SERVICE, "
                                 "which infra/env.sh sets, else 127.0.0.1:8097)")
        parser.add_argument("--results_sink", default="files", choices=RESULTS_SINKS,
                            help="where follows and alerts go: output folders or Kafka topics (default files)")
        parser.add_argument("--stream_disorder_s", type=float, default=5.0,
                            help="--streaming from files: events are delivered shuffled "
                                 "within this many seconds of event time")
        parser.add_argument("--stream_seed", type=int, default=7,
                            help="--streaming from files: seed of the delivery shuffle")
        parser.add_argument("--max_event_future_s", type=float, default=300.0,
                            help="an event (ping, tap, tweet, delete) stamped more than this many seconds "
                                 "ahead of the worker's wall clock is a dead letter, in batch and "
                                 "streaming, and never moves the watermark (default 300)")
        parser.add_argument("--registry_portal_pubkey", default=None,
                            help="base64 Ed25519 public key of the portal (it prints registry_signing_pubkey "
                                 "when it starts): users records with updated_at are subscribers' settings "
                                 "changes and are used only when this key signed them; without it they are "
                                 "dead letters")
        parser.add_argument("--service_country", default=None,
                            help="the service's country (ISO 3166-1 alpha-2, default JP): tweets and "
                                 "users withheld there are never alerted or shown")
        parser.add_argument("--world_users", type=int, default=300,
                            help="size of the default synthetic world (no --input)")
        parser.add_argument("--world_hours", type=int, default=6)
        parser.add_argument("--world_seed", type=int, default=42)
        # Midday to evening in Tokyo: the hours with sales, concerts and crowds.
        parser.add_argument("--world_start", default="2026-11-20T12:00:00+09:00")
        for prefix, params_cls in STEP_PARAMS:
            add_params_arguments(parser, prefix, params_cls)


def help_text() -> str:
    """``python -m pipelines.run --help``: the project's options, with the defaults of every
    step's parameters, and the Beam options most runs use (Beam's own parser would list
    nothing: it only learns an options class when a view of it is asked for)."""
    from apache_beam.options.pipeline_options import StandardOptions
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.run", add_help=False,
        usage="python -m pipelines.run [--input DIR] [--output DIR] [project options] [Beam options]",
        description="The unified pipeline: tap-to-follow, geofenced alerts and DP statistics, batch or "
                    "streaming. With no --input it runs a synthetic world generated in-process.",
        epilog="Every other Beam option (--flink_master, --environment_type, --job_endpoint, "
               "--setup_file, ...) passes through unchanged; see README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    TapFollowOptions._add_argparse_args(parser.add_argument_group("project options"))
    StandardOptions._add_argparse_args(parser.add_argument_group("Beam options (a few of many)"))
    return parser.format_help()


def _beam_actions() -> dict[str, argparse.Action]:
    """Every flag a registered ``PipelineOptions`` subclass declares (Beam's and ours), with
    its argparse action (whether it takes a value)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, conflict_handler="resolve")
    pending, classes = [PipelineOptions], []
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in classes:
                classes.append(sub)
                pending.append(sub)
    for cls in classes:
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            continue   # two classes declaring one flag: it is known either way
    return {flag: action for action in parser._actions for flag in action.option_strings}


def unknown_flags(argv: list[str]) -> list[str]:
    """What of ``argv`` no options class takes: ``--flags`` none declares, single-dash options
    (``-x``) and words that are no flag's value. Beam drops all of these silently, so
    ``--engin flink`` or ``--alerts_radiusm 900`` would run a default job."""
    actions = _beam_actions()
    unknown, values_left = [], 0
    for arg in argv:
        if values_left and not arg.startswith("--"):   # the previous flag's value (may be "-1")
            values_left -= 1
            continue
        values_left = 0
        if arg == "--":
            continue
        if arg.startswith("--"):
            flag, has_value, _ = arg.partition("=")
            action = actions.get(flag)
            if action is None:
                unknown.append(flag)
            elif not has_value and action.nargs != 0:
                values_left = len(argv) if action.nargs in ("*", "+") else 1
        else:
            unknown.append(arg.partition("=")[0] if arg.startswith("-") else arg)
    return unknown


def bad_choice(argv: list[str]) -> str | None:
    """A one-line reason if a project option with fixed choices (``--engine``, ``--source``,
    ``--results_sink``, ``--flink_state_backend``) is given a value outside them, else None:
    argparse would print the whole usage before its own line."""
    parser = argparse.ArgumentParser(add_help=False)
    TapFollowOptions._add_argparse_args(parser)
    choices = {flag: action.choices for action in parser._actions if action.choices
               for flag in action.option_strings}
    for i, arg in enumerate(argv):
        flag, has_value, value = arg.partition("=")
        if flag not in choices:
            continue
        if not has_value:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if value not in choices[flag]:
            return f"{flag} {value!r}: must be one of {', '.join(choices[flag])}"
    return None


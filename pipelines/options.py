"""Command-line options of ``python -m pipelines.run``, read once at the edge.

Project options live in ``TapFollowOptions``; every Beam option (``--runner``,
``--streaming``, ``--flink_master`` …) passes through untouched. Each business
step declares its parameters as a frozen dataclass (``FollowParams``,
``AlertParams``, ``DpParams``); ``add_params_arguments`` turns every field into a
``--<prefix>_<field>`` flag with the dataclass default, and ``params_from``
builds the validated dataclass back, so a new parameter needs no wiring here.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from apache_beam.options.pipeline_options import PipelineOptions

from core.config import ConfigError


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


def params_from(options: PipelineOptions, prefix: str, params_cls):
    """The validated params dataclass; ConfigError with the dataclass's own message."""
    values = options.get_all_options(retain_unknown_options=True)
    given = {
        f.name: values[f"{prefix}_{f.name}"]
        for f in dataclasses.fields(params_cls)
        if values.get(f"{prefix}_{f.name}") is not None
    }
    try:
        return params_cls(**given)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--{prefix}_*: {exc}") from None


def _step_params():
    """(flag prefix, params dataclass) of every business step."""
    from core.alerts import AlertParams
    from core.dp_stats import DpParams
    from core.follows import FollowParams
    return (("follows", FollowParams), ("alerts", AlertParams), ("dp", DpParams))


class TapFollowOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", default=None,
                            help="directory of users/pings/taps/tweets .jsonl[.gz]; "
                                 "default: a synthetic world generated in-process")
        parser.add_argument("--output", default="out", help="output directory (default ./out)")
        parser.add_argument("--source", default="files", choices=("files", "kafka"),
                            help="where events come from (default files)")
        parser.add_argument("--kafka_bootstrap_servers", default="127.0.0.1:9092")
        parser.add_argument("--kafka_expansion_service", default=None,
                            help="host:port of a running Beam expansion service, or a path "
                                 "to the expansion-service jar (default: infra's jar)")
        parser.add_argument("--alerts_sink", default="files", choices=("files", "kafka"),
                            help="where alerts and follows go (default files)")
        parser.add_argument("--stream_disorder_s", type=float, default=5.0,
                            help="--streaming from files: events are delivered shuffled "
                                 "within this many seconds of event time")
        parser.add_argument("--stream_seed", type=int, default=7,
                            help="--streaming from files: seed of the delivery shuffle")
        parser.add_argument("--max_event_future_s", type=float, default=300.0,
                            help="an event (ping, tap, tweet, delete) stamped more than this many seconds "
                                 "ahead of the worker's wall clock is a dead letter, in batch and "
                                 "streaming, and never moves the watermark (default 300)")
        parser.add_argument("--world_users", type=int, default=300,
                            help="size of the default synthetic world (no --input)")
        parser.add_argument("--world_hours", type=int, default=6)
        parser.add_argument("--world_seed", type=int, default=42)
        # Midday to evening in Tokyo: the hours with sales, concerts and crowds.
        parser.add_argument("--world_start", default="2026-11-20T12:00:00+09:00")
        for prefix, params_cls in _step_params():
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

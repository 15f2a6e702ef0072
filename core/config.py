"""The one configuration layer of a run: every step's parameters, the values one step
derives from another's, the checks across steps, and the run's own settings.

Engine-neutral (no Beam, no launcher): the Beam launcher (``pipelines.options`` /
``pipelines.run.config_from``) and the next engine's launcher both build a
:class:`RunConfig` from plain flag values with :func:`run_config`.

* :data:`STEP_PARAMS`: each step's frozen parameter dataclass and its flag prefix
  (``--follows_*``, ``--alerts_*``, ``--dp_*``), validated by the dataclass itself.
* Derived: ``AlertParams.timeline_h3_res`` is ``DpParams.h3_res`` (the local timeline's
  cells are the statistics' cells) unless given; ``--service_country`` sets
  ``AlertParams.service_country`` (default ``JP``: withheld there, never alerted or shown).
* Derived: ``AlertParams.follow_known_after_s`` -- when a mutual follow counts for
  alerts -- comes from the follow step (a follow is emitted at most its touch's
  pending expiry plus the clock skew after ``established_at``); a value given by flag
  must not be earlier than that.
* Serialised: :meth:`RunConfig.to_dict` / :meth:`RunConfig.from_dict` (plain JSON values,
  each step's params as a nested dict, :func:`params_from_dict`): the Flink launcher
  writes the checked configuration as JSON and the job (another interpreter, another
  venv) reads back exactly the same :class:`RunConfig`, checked again on the way in.
* ``DEFAULT_KAFKA_BOOTSTRAP``: the Kafka bootstrap default, set once (``$KAFKA_BOOTSTRAP``,
  else 127.0.0.1:9092), for the launcher, ``kafka_client`` and ``pipelines.kafka_io``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

from core.alerts import AlertParams
from core.dp_stats import DpParams
from core.follows import FollowParams

DEFAULT_KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
STEP_PARAMS = (("follows", FollowParams), ("alerts", AlertParams), ("dp", DpParams))
SOURCES = ("files", "kafka")
RESULTS_SINKS = ("files", "kafka")


class ConfigError(ValueError):
    """A bad flag or configuration: ``pipelines.run`` prints it as one line and exits 2."""


def follow_known_after_s(follows: FollowParams) -> float:
    """How long after ``established_at`` a follow is surely known to the alert step: the follow
    is decided at its touch's deadline (touch time + pending expiry), and ``established_at``
    may precede the touch time by up to the clock skew."""
    return follows.pending_expiry_s + follows.max_clock_skew_s


def params_from_values(values: Mapping[str, Any], prefix: str, params_cls):
    """The validated params dataclass from flag values (``<prefix>_<field>``; None = default);
    ConfigError with the dataclass's own message."""
    given = {f.name: values[f"{prefix}_{f.name}"] for f in dataclasses.fields(params_cls)
             if values.get(f"{prefix}_{f.name}") is not None}
    try:
        return params_cls(**given)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--{prefix}_*: {exc}") from None


def check_fields(cls, values: Mapping[str, Any]) -> None:
    """ConfigError if ``values`` has a key the dataclass ``cls`` does not: a config written by
    another version is refused, never half read."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")


def params_from_dict(params_cls, values: Mapping[str, Any]):
    """A step's params dataclass back from ``dataclasses.asdict``'s dict (:func:`check_fields`)."""
    check_fields(params_cls, values)
    try:
        return params_cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{params_cls.__name__}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, as plain values, checked once (``__post_init__``)."""
    input_dir: Optional[str]
    output_dir: str
    streaming: bool
    source: str
    follows: FollowParams
    alerts: AlertParams
    dp: DpParams
    results_sink: str = "files"          # where follows and alerts go
    kafka_bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP
    kafka_expansion_service: Optional[str] = None
    stream_disorder_s: float = 5.0
    stream_seed: int = 7
    max_event_future_s: float = 300.0   # ParseInputs' rule on event times ahead of the run's clock
    runner: str = "DirectRunner"
    registry_portal_pubkey: Optional[str] = None   # base64 Ed25519 key that signs settings changes

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ConfigError(f"--source {self.source}: must be one of {', '.join(SOURCES)}")
        if self.results_sink not in RESULTS_SINKS:
            raise ConfigError(f"--results_sink {self.results_sink}: must be one of {', '.join(RESULTS_SINKS)}")
        if self.stream_disorder_s < 0:
            raise ConfigError(f"--stream_disorder_s must be >= 0, got {self.stream_disorder_s}")
        if not self.max_event_future_s >= 0:
            raise ConfigError(f"--max_event_future_s must be >= 0, got {self.max_event_future_s}")
        if self.source == "kafka" and not self.streaming:
            raise ConfigError("--source kafka reads unbounded topics: add --streaming")
        if self.streaming and self.source == "files" and "direct" not in self.runner.lower():
            raise ConfigError("--streaming from files replays a TestStream, which only DirectRunner runs; "
                              "on other runners use --source kafka")
        if self.registry_portal_pubkey is not None:
            from schemas.errors import InvalidRecord
            from schemas.proofs import decode_pubkey
            try:
                decode_pubkey(self.registry_portal_pubkey)
            except InvalidRecord as exc:
                raise ConfigError(f"--registry_portal_pubkey: {exc}") from None
        known_after = follow_known_after_s(self.follows)
        if self.alerts.follow_known_after_s < known_after:
            raise ConfigError(
                f"--alerts_follow_known_after_s {self.alerts.follow_known_after_s:g} is earlier than the follow "
                f"step can emit a follow ({known_after:g} s = --follows_pending_expiry_s + "
                "--follows_max_clock_skew_s): batch and streaming would alert differently")

    def to_dict(self) -> dict:
        """Plain JSON values: the run's settings, each step's params as a nested dict."""
        return {f.name: (dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
                for f in dataclasses.fields(self) for value in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        """The :class:`RunConfig` :meth:`to_dict` gave, checked again (``__post_init__``)."""
        check_fields(cls, values)
        steps = {prefix: params_from_dict(params_cls, values.get(prefix, {})) for prefix, params_cls in STEP_PARAMS}
        return cls(**{**values, **steps})

    @property
    def dedupe_horizon_s(self) -> float:
        """How long a tweet id is remembered: past every step's lateness bound (README), so a
        copy arriving later still is late data that no step uses."""
        return max(self.alerts.allowed_lateness_s, float(self.dp.late_count_horizon_s)) + 3600.0


def run_config(values: Mapping[str, Any], *, streaming: bool, runner: Optional[str], release_schedule=None) -> RunConfig:
    """The checked :class:`RunConfig` from flag values (names as the flags, without ``--``).

    ``release_schedule(dp, input_dir) -> DpParams`` sets the DP release schedule (the
    launcher's: flags, else the input's ``world.json``); None leaves ``dp`` as given."""
    follows = params_from_values(values, "follows", FollowParams)
    alerts = params_from_values(values, "alerts", AlertParams)
    if values.get("alerts_follow_known_after_s") is None:
        alerts = dataclasses.replace(alerts, follow_known_after_s=follow_known_after_s(follows))
    dp = params_from_values(values, "dp", DpParams)
    # The timeline's cell is the statistics' cell; --service_country is the short flag of the alert step's.
    derived = {"timeline_h3_res": dp.h3_res} if values.get("alerts_timeline_h3_res") is None else {}
    if values.get("service_country") is not None:
        derived["service_country"] = values["service_country"]
    try:
        alerts = dataclasses.replace(alerts, **derived)
    except ValueError as exc:
        raise ConfigError(f"--service_country: {exc}") from None
    settings = {name: values[name] for name in (
        "source", "results_sink", "kafka_bootstrap_servers", "kafka_expansion_service",
        "stream_disorder_s", "stream_seed", "max_event_future_s", "registry_portal_pubkey")
        if values.get(name) is not None}
    config = RunConfig(input_dir=values.get("input"), output_dir=values.get("output") or "out",
                       streaming=bool(streaming), follows=follows, alerts=alerts, dp=dp,
                       runner=runner or "DirectRunner", **{"source": "files", **settings})
    if release_schedule is not None:
        config = dataclasses.replace(config, dp=release_schedule(config.dp, config.input_dir))
    return config

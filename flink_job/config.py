"""The Flink job's configuration file: the run's checked ``RunConfig`` and the job's own settings.

The launcher (``pipelines.flink_engine``, in the project venv) writes it with
:func:`write_config`; the job (``python -m flink_job --config FILE``, in the PyFlink venv)
reads it back with :func:`read_config`. One JSON file, written and read here only, so the
two interpreters can never disagree on its layout::

    {"run": RunConfig.to_dict(), "flink": JobSettings as a dict}

No PyFlink import: the launcher imports this module to write the file.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

from core.config import ConfigError, RunConfig, check_fields

STATE_BACKENDS = ("hashmap", "rocksdb")
# A taps or pings partition with no record for this long stops holding the watermark back
# (``WatermarkStrategy.with_idleness``): a quiet topic must not stall every window. The
# firehose never goes idle this way (``flink_job.io.CLOCK_TOPIC`` says why).
DEFAULT_IDLENESS_MS = 10_000


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """What the job needs beyond the run's config: how Flink runs it and what it reads at build time."""
    job_name: str = "tapfollow"
    parallelism: Optional[int] = None             # None: the cluster's parallelism.default
    checkpointing_interval_ms: Optional[int] = None  # None: no checkpoints (batch needs none)
    state_backend: str = "hashmap"
    kafka_stop_at_latest: bool = False            # bounded Kafka read: up to the offsets at job start
    kafka_idleness_ms: int = DEFAULT_IDLENESS_MS
    users_file: Optional[str] = None              # Kafka: the users topic's snapshot, one line each
    # Kafka: where the live read of the users topic (the settings changes) starts, as
    # (partition, offset) pairs: the end offsets the snapshot saw (a partition not named: its
    # earliest). None: no live read, the registry is the snapshot alone.
    users_live_from: Optional[tuple] = None
    jars: tuple = ()                              # connector jars (absolute paths) for env.add_jars
    transactional_id_prefix: str = ""             # Kafka exactly-once sink; unique per job

    def __post_init__(self):
        if self.state_backend not in STATE_BACKENDS:
            raise ConfigError(f"--flink_state_backend {self.state_backend}: must be one of "
                              f"{', '.join(STATE_BACKENDS)}")
        if self.parallelism is not None and self.parallelism < 1:
            raise ConfigError(f"--parallelism {self.parallelism}: must be >= 1")
        if self.checkpointing_interval_ms is not None and self.checkpointing_interval_ms < 10:
            raise ConfigError(f"--checkpointing_interval {self.checkpointing_interval_ms}: must be >= 10 ms")
        if self.kafka_idleness_ms < 1:
            raise ConfigError(f"kafka_idleness_ms {self.kafka_idleness_ms}: must be >= 1")
        object.__setattr__(self, "jars", tuple(self.jars))
        if self.users_live_from is not None:   # JSON gives lists back
            object.__setattr__(self, "users_live_from",
                               tuple((int(partition), int(offset)) for partition, offset in self.users_live_from))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "JobSettings":
        check_fields(cls, values)
        return cls(**values)


def to_json(cfg: RunConfig, settings: JobSettings) -> str:
    return json.dumps({"run": cfg.to_dict(), "flink": dataclasses.asdict(settings)}, indent=2, sort_keys=True)


def from_json(text: str) -> tuple[RunConfig, JobSettings]:
    values = json.loads(text)
    return RunConfig.from_dict(values["run"]), JobSettings.from_dict(values.get("flink", {}))


def write_config(path: str, cfg: RunConfig, settings: JobSettings) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(to_json(cfg, settings) + "\n")


def read_config(path: str) -> tuple[RunConfig, JobSettings]:
    """(run config, job settings) from the launcher's file; ConfigError if it is not one."""
    try:
        with open(path, encoding="utf-8") as handle:
            return from_json(handle.read())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--config {path}: not a flink_job configuration ({exc})") from None

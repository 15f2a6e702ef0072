"""``python -m flink_job --config FILE``: build the Flink job from the launcher's config and run it.

``pipelines.flink_engine`` submits this module with ``flink run -pym flink_job`` (detached:
``execute`` returns once the job is submitted; the launcher watches it over REST). Run
directly in the PyFlink venv it executes on a local MiniCluster and returns when done.
"""
from __future__ import annotations

import argparse
import sys

from core.config import ConfigError


def main(argv=None, noise=None) -> int:
    """Build and execute the job. ``noise``: code only (a test entry passes NoNoiseForTests)."""
    parser = argparse.ArgumentParser(prog="python -m flink_job", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the launcher's JSON config (flink_job.config)")
    args = parser.parse_args(argv)
    from pyflink.datastream import StreamExecutionEnvironment

    from flink_job.config import read_config
    from flink_job.job import build, configure
    try:
        cfg, settings = read_config(args.config)
    except ConfigError as exc:
        print(f"flink_job: error: {exc}", file=sys.stderr)
        return 2
    env = StreamExecutionEnvironment.get_execution_environment()
    configure(env, cfg, settings)
    build(env, cfg, settings, noise=noise)
    env.execute(settings.job_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Test-only entry of the Flink job: ``flink_job``'s own main with the statistics' noise off.

``pipelines.flink_engine.launch(..., entry=<this file>)`` submits it instead of
``-pym flink_job`` (code only, never a flag), so the e2e tests compare exact statistic
values with the Beam run's ``NoNoiseForTests`` values.
"""
import sys

from core.dp_noise import NoNoiseForTests
from flink_job.__main__ import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], noise=NoNoiseForTests(for_tests_only=True)))

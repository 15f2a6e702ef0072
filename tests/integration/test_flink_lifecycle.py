"""The Flink job's lifecycle on the session cluster (issue #16), as the runbook gives it:

submit detached (``pipelines.run ... --flink_detached``: returns once the job runs) ->
``python -m pipelines.flink_engine upgrade JOB -- <new args>`` (stop with a savepoint,
resubmit from it) with a parameter that touches no state (the checkpoint interval) ->
``upgrade`` again at ``--parallelism 2`` (a rescale 1 -> 2) -> once the topics are read,
``stop --drain`` (the maximum watermark: every pending decision is made, as at the end of
a bounded read). What the three jobs committed together equals an uninterrupted run's
(the Beam reference, noise off): follows and alerts on Kafka each once, dead letters,
ledger and statistics. Each resumed job shows it restored from the savepoint taken.

One chain of three jobs on the small world (a Beam run, a topic load and three Flink
starts: about as long as two of ``test_flink_job``'s Kafka tests).
"""
from __future__ import annotations

import pytest

from pipelines import flink_engine
from pipelines import run as launcher
from tests.integration.conftest import topic_rows, wait_for
from tests.integration.test_flink_job import (NO_NOISE_ENTRY, SMALL_WORLD, _beam, _job_id, _load_topics,
                                              _running_with_a_checkpoint, _sources_read_to_end, _unbounded_args,
                                              _world, assert_kafka_results, assert_same_outputs)

pytestmark = pytest.mark.flink


def test_upgrade_and_rescale_from_savepoints_equal_an_uninterrupted_run(infra, tmp_path, capsys):
    world = _world(str(tmp_path / "world"), SMALL_WORLD)
    expected = _beam(world, str(tmp_path / "beam"))
    _load_topics(infra.bootstrap, world)
    out = str(tmp_path / "lifecycle")
    master = ["--flink_master", infra.flink_master]
    run_job = lambda argv: launcher.run(argv, flink_entry=NO_NOISE_ENTRY)  # noqa: E731
    savepoints = str(tmp_path / "savepoints")

    # submit detached: the launcher returns once the job is submitted
    assert run_job(_unbounded_args(infra, world, out, "--checkpointing_interval", "1000", "--flink_detached")) == 0
    jobs = [_job_id(capsys)]
    wait_for(lambda: _running_with_a_checkpoint(infra, jobs[-1]), 120, "the first job's first checkpoint")

    for change in (["--checkpointing_interval", "2000"], ["--checkpointing_interval", "2000", "--parallelism", "2"]):
        status = flink_engine.lifecycle(["upgrade", jobs[-1], *master, "--savepoint_dir", savepoints, "--",
                                         *_unbounded_args(infra, world, out, *change)], run_job=run_job)
        assert status == 0, f"upgrade of {jobs[-1]} exited {status}"
        old, new = jobs[-1], _job_id(capsys)
        wait_for(lambda: infra.rest(f"/jobs/{old}")["state"] == "FINISHED", 60,
                 f"job {old} to finish (stopped, not cancelled)")
        jobs.append(new)
        wait_for(lambda: _running_with_a_checkpoint(infra, new), 120, f"job {new} to run and checkpoint")
        restored = infra.rest(f"/jobs/{new}/checkpoints")["latest"]["restored"]
        assert restored and restored["is_savepoint"] and restored["external_path"].startswith(
            "file:" + savepoints), restored
    assert max(v["parallelism"] for v in infra.rest(f"/jobs/{jobs[-1]}")["vertices"]) == 2

    wait_for(lambda: _sources_read_to_end(infra.bootstrap), 180, "the last job to read every event topic")
    assert flink_engine.lifecycle(["stop", jobs[-1], *master, "--drain", "--savepoint_dir", savepoints]) == 0
    wait_for(lambda: infra.rest(f"/jobs/{jobs[-1]}")["state"] == "FINISHED", 60, "the drained job to finish")

    follows, alerts = topic_rows("follows", infra.bootstrap), topic_rows("alerts", infra.bootstrap)
    assert_kafka_results(follows, alerts, expected)        # each once: nothing lost or repeated
    assert_same_outputs(out, expected, folders=(), run={"input": world, "source": "kafka"})

"""The launcher keeps watching a running job when the runner's state stream drops (issue #16)."""
from __future__ import annotations

import pytest
from apache_beam.runners.runner import PipelineState

from pipelines.run import watch_job


class StreamRemoved(Exception):
    """What grpc raises out of wait_until_finish when Prism's state stream drops."""


class FakeResult:
    def __init__(self, waits, states):
        self._waits, self._states = list(waits), list(states)
        self.wait_calls = 0

    def wait_until_finish(self):
        self.wait_calls += 1
        outcome = self._waits.pop(0)
        if isinstance(outcome, Exception):
            raise outcome

    @property
    def state(self):
        return self._states.pop(0)


def test_a_dropped_state_stream_of_a_running_job_is_watched_again(capsys):
    result = FakeResult([StreamRemoved("DEADLINE_EXCEEDED Stream removed")] * 2 + [None],
                        [PipelineState.RUNNING, PipelineState.RUNNING])
    slept = []
    watch_job(result, retry_s=7.0, sleep=slept.append)
    assert result.wait_calls == 3 and slept == [7.0, 7.0]
    err = capsys.readouterr().err.splitlines()
    assert err == ["pipelines.run: lost the job's state stream (1x); the job is RUNNING, watching again",
                   "pipelines.run: lost the job's state stream (2x); the job is RUNNING, watching again"]


def test_a_cancelled_job_ends_the_watch_cleanly(capsys):
    watch_job(FakeResult([StreamRemoved("cancelled")], [PipelineState.CANCELLED]), sleep=lambda s: None)
    assert capsys.readouterr().err.strip() == "pipelines.run: the job was cancelled"


@pytest.mark.parametrize("state", [PipelineState.FAILED, PipelineState.DONE, PipelineState.UNKNOWN])
def test_a_failed_wait_of_a_job_that_is_not_running_raises(state):
    with pytest.raises(StreamRemoved):
        watch_job(FakeResult([StreamRemoved("boom")], [state]), sleep=lambda s: None)

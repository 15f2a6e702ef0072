"""The Flink launcher (``pipelines.flink_engine``, ``--engine flink``) without a cluster.

The job's configuration round-trips through JSON exactly (``RunConfig.to_dict`` /
``from_dict``, ``flink_job.config``); bad values exit 2 with one line; the submitted
command, the packed job and the REST watch behave as the launcher promises.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile

import pytest

from core.config import ConfigError, RunConfig, run_config
from flink_job.config import JobSettings, from_json, read_config, to_json, write_config
from pipelines import flink_engine
from pipelines.flink_engine import FlinkInstall

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**values) -> RunConfig:
    return run_config({"input": "/world", "output": "/out", **values}, streaming=False, runner=None)


def test_run_config_round_trips_through_json():
    cfg = _config(dp_epsilon_per_user_day=0.5, follows_pending_expiry_s=900.0, alerts_rules_path="",
                  dp_first_hour="2026-11-20T08:00:00Z", dp_last_hour="2026-11-20T10:00:00Z", source="files", kafka_expansion_service=None)
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.alerts.follow_known_after_s == 910.0       # the derived value travels, not re-derived
    assert isinstance(back.dp.h3_res, int) and isinstance(back.follows.max_clock_skew_s, float)


def test_a_config_from_another_version_is_refused_not_half_read():
    values = _config().to_dict()
    with pytest.raises(ConfigError, match="unknown field"):
        RunConfig.from_dict(dict(values, shiny_new_setting=1))
    with pytest.raises(ConfigError, match="DpParams: unknown field"):
        RunConfig.from_dict(dict(values, dp=dict(values["dp"], epsilon=1.0)))
    with pytest.raises(ConfigError, match="epsilon_per_user_day"):   # checked again on the way in
        RunConfig.from_dict(dict(values, dp=dict(values["dp"], epsilon_per_user_day=-1.0)))


def test_the_job_file_round_trips(tmp_path):
    cfg = _config()
    settings = JobSettings(job_name="j", parallelism=2, checkpointing_interval_ms=1000, state_backend="rocksdb",
                           kafka_stop_at_latest=True, users_file="/u", jars=["/a.jar", "/b.jar"],
                           transactional_id_prefix="tx")
    path = str(tmp_path / "job.json")
    write_config(path, cfg, settings)
    assert read_config(path) == (cfg, settings)
    assert from_json(to_json(cfg, settings))[1].jars == ("/a.jar", "/b.jar")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a flink_job configuration"):
        read_config(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("field, value, message", [
    ("state_backend", "memory", "--flink_state_backend memory"),
    ("parallelism", 0, "--parallelism 0"),
    ("checkpointing_interval_ms", 5, "--checkpointing_interval 5"),
])
def test_job_settings_are_checked(field, value, message):
    with pytest.raises(ConfigError, match=message):
        JobSettings(**{field: value})


def _run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.run", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize("args, reason", [
    (["--engine", "spark"], "--engine 'spark': must be one of beam, flink"),
    (["--engine=flink", "--flink_state_backend=memory"], "--flink_state_backend 'memory': must be one of"),
    (["--engine", "flink", "--dp_epsilon_per_user_day", "0"], "epsilon_per_user_day"),
    (["--engine", "flink", "--streaming"], "--streaming from files"),
])
def test_bad_flink_arguments_exit_2_with_one_line(tmp_path, args, reason):
    world = tmp_path / "world"
    world.mkdir()
    for kind in ("users", "pings", "taps", "tweets"):
        (world / f"{kind}.jsonl").write_text("")
    done = _run_cli(*args, "--input", str(world), "--output", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and reason in done.stderr, done.stderr


def test_no_pyflink_exits_2_saying_how_to_install_it(tmp_path):
    with pytest.raises(ConfigError, match="PyFlink is not installed: run make infra-up"):
        flink_engine.flink_install({"FLINK_HOME": str(tmp_path / "nowhere")}, env_script=str(tmp_path / "none.sh"))
    status = flink_engine.launch(_config(output=str(tmp_path / "out")), {}, 0.0,
                                 environ={"FLINK_HOME": str(tmp_path / "nowhere"), "PYFLINK_PYTHON": "/nope"})
    assert status == 2


def test_the_install_is_found_from_the_environment(tmp_path):
    home = tmp_path / "flink"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "flink").write_text("#!/bin/sh\n")
    (home / "bin" / "flink").chmod(0o755)
    found = flink_engine.flink_install({"FLINK_HOME": str(home), "PYFLINK_PYTHON": sys.executable,
                                        "FLINK_JOB_JARS": "/a.jar:/b.jar", "INFRA_CACHE": "/cache"},
                                       env_script=str(tmp_path / "none.sh"))
    assert found == FlinkInstall(str(home), sys.executable, ("/a.jar", "/b.jar"), "/cache/conf/flink")


@pytest.mark.parametrize("given, master", [
    (None, "127.0.0.1:8081"), ("[auto]", "127.0.0.1:8081"), ("[local]", "127.0.0.1:8081"),
    ("http://flink:8081/", "flink:8081"), ("10.0.0.5:18081", "10.0.0.5:18081"),
])
def test_flink_master(given, master):
    assert flink_engine.master_of({"flink_master": given}) == master


def test_settings_from_the_flags():
    streaming = dataclasses.replace(_config(), streaming=True, source="kafka")
    settings = flink_engine.job_settings({"parallelism": -1, "flink_kafka_stop_at_latest": True}, streaming,
                                         ("/a.jar",), "/snap")
    assert settings.parallelism is None                      # Beam's default -1: the cluster's
    assert settings.checkpointing_interval_ms == flink_engine.DEFAULT_STREAMING_CHECKPOINT_MS
    assert settings.kafka_stop_at_latest and settings.users_file == "/snap" and settings.jars == ("/a.jar",)
    other = flink_engine.job_settings({"parallelism": 2, "checkpointing_interval": 500,
                                       "flink_state_backend": "rocksdb"}, _config(), (), None)
    assert (other.parallelism, other.checkpointing_interval_ms, other.state_backend) == (2, 500, "rocksdb")
    assert other.transactional_id_prefix != settings.transactional_id_prefix    # unique per job
    assert flink_engine.job_settings({}, _config(), (), None).checkpointing_interval_ms is None   # batch


def test_the_submit_command_runs_the_module_or_a_test_script():
    install = FlinkInstall("/flink", "/venv/bin/python", (), "/conf")
    command = flink_engine.submit_command(install, "h:1", "flink_job", "/w/job.zip", "/w/job.json")
    assert command == ["/flink/bin/flink", "run", "-m", "h:1", "-d", "-pym", "flink_job", "-pyfs", "/w/job.zip",
                       "-pyclientexec", "/venv/bin/python", "-pyexec", "/venv/bin/python", "--config", "/w/job.json"]
    script = flink_engine.submit_command(install, "h:1", "/t/job_no_noise.py", "/z", "/c")
    assert script[5:7] == ["-py", "/t/job_no_noise.py"]


def test_the_job_zip_holds_the_core_schemas_and_the_job_only(tmp_path):
    names = zipfile.ZipFile(flink_engine.pack_job(str(tmp_path / "job.zip"))).namelist()
    assert {"flink_job/__main__.py", "flink_job/job.py", "core/inputs.py", "schemas/records.py"} <= set(names)
    assert {name.split("/")[0] for name in names} == {"core", "schemas", "flink_job"}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


class FakeRest:
    def __init__(self, states, counters=None, fail_on=None):
        self.states, self.counters_seen, self.cancelled = list(states), counters or {}, False
        self.fail_on = fail_on

    def state(self, job_id):
        if self.cancelled:
            return "CANCELED"
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if state == self.fail_on:
            raise KeyboardInterrupt
        return state

    def counters(self, job_id):
        return dict(self.counters_seen)

    def cancel(self, job_id):
        self.cancelled = True


def test_watch_waits_for_the_end_keeping_the_last_counters():
    rest = FakeRest(["CREATED", "RUNNING", "RUNNING", "FINISHED"], counters={"read.pings": 5})
    assert flink_engine.watch(rest, "j", counters_every_s=0, sleep=lambda s: None) == ("FINISHED", {"read.pings": 5})
    assert flink_engine.watch(FakeRest(["RUNNING", "FAILED"]), "j", sleep=lambda s: None)[0] == "FAILED"


def test_ctrl_c_cancels_the_job():
    rest = FakeRest(["RUNNING", "INTERRUPT"], fail_on="INTERRUPT")
    with pytest.raises(KeyboardInterrupt):
        flink_engine.watch(rest, "j", sleep=lambda s: None)
    assert rest.cancelled


def test_a_failed_jobs_reason_is_its_last_cause():
    rest = flink_engine.FlinkRest("h:1")
    rest.call = lambda path, method="GET": {"exceptionHistory": {"entries": [{"stacktrace": (
        "org.apache.flink.runtime.JobException: Recovery is suppressed\n\tat x\n"
        "Caused by: java.lang.RuntimeException: Python failed\n\tat y\n"
        "Caused by: ValueError: the real reason\n")}]}}
    assert rest.failure("j") == "Caused by: ValueError: the real reason"


def test_a_python_failure_is_its_own_error_line():
    trace = ("org.apache.flink.runtime.JobException: Recovery is suppressed\n"
             "Caused by: java.lang.RuntimeException: Error received from SDK harness: Traceback (most recent call last):\n"
             "Traceback (most recent call last):\n"
             '  File "/x/flink_job/io.py", line 152, in _read_path\n'
             "    for line in iter_lines(path):\n"
             "         ^^^^^^^^^^^^^^^^\n"
             "FileNotFoundError: [Errno 2] No such file or directory: '/w/pings.jsonl'\n"
             "\n\tat org.apache.beam.Something(X.java:1)\n")
    assert flink_engine.failure_reason(trace) == "FileNotFoundError: [Errno 2] No such file or directory: '/w/pings.jsonl'"


def test_counters_are_summed_by_name_over_operators_and_subtasks():
    rest = flink_engine.FlinkRest("h:1")
    metrics = {"v1": [{"id": "ParseEvents/Judge.tapfollow.read_pings"}, {"id": "numRecordsIn"}],
               "v2": [{"id": "A.tapfollow.read_pings"}, {"id": "B.tapfollow.emitted_alerts"},
                      {"id": "C.tapfollow.alerts_late_dropped_users"}]}
    values = {"ParseEvents/Judge.tapfollow.read_pings": 7, "A.tapfollow.read_pings": 3,
              "B.tapfollow.emitted_alerts": 2, "C.tapfollow.alerts_late_dropped_users": 1}

    def call(path, method="GET"):
        if path == "/jobs/j":
            return {"vertices": [{"id": "v1"}, {"id": "v2"}]}
        vertex = path.split("/")[4]
        if "?get=" not in path:
            return metrics[vertex]
        asked = path.split("?get=")[1].split("&")[0].split(",")
        return [{"id": name, "sum": values[name]} for name in asked]
    rest.call = call
    assert rest.counters("j") == {"alerts_late_dropped_users": 1, "emitted.alerts": 2, "read.pings": 10}


def test_no_cluster_at_the_master_exits_2_before_submitting(tmp_path, capsys):
    home = tmp_path / "flink"
    (home / "bin").mkdir(parents=True)
    flink = home / "bin" / "flink"
    ran = tmp_path / "ran"
    flink.write_text(f"#!/bin/sh\ntouch {ran}\n")   # must never be called
    flink.chmod(0o755)
    import socket
    with socket.socket() as probe:   # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status = flink_engine.launch(_config(output=str(tmp_path / "out")), {"flink_master": f"127.0.0.1:{port}"}, 0.0,
                                 environ={"FLINK_HOME": str(home), "PYFLINK_PYTHON": sys.executable,
                                          "FLINK_JOB_JARS": "", "INFRA_CACHE": str(tmp_path)})
    err = capsys.readouterr().err
    assert status == 2 and f"no Flink cluster answers at http://127.0.0.1:{port}" in err, err
    assert err.count("\n") == 1
    assert not ran.exists()


# ---- the lifecycle commands (python -m pipelines.flink_engine) ----------------------------

JOB = "0123456789abcdef0123456789abcdef"


def test_a_resume_submits_from_the_savepoint():
    install = FlinkInstall("/flink", "/venv/bin/python", (), "/conf")
    command = flink_engine.submit_command(install, "h:1", "flink_job", "/z", "/c", savepoint="file:/sp/savepoint-1")
    assert command[:8] == ["/flink/bin/flink", "run", "-m", "h:1", "-d", "-s", "file:/sp/savepoint-1", "-pym"]


class SavepointRest(flink_engine.FlinkRest):
    """Flink's REST answers to a stop with savepoint: in progress twice, then ``final``."""

    def __init__(self, final: dict):
        super().__init__("h:1")
        self.calls, self.final, self.polls = [], final, 0

    def call(self, path, method="GET", body=None):
        self.calls.append((method, path, body))
        if method == "POST":
            return {"request-id": "t1"}
        self.polls += 1
        if self.polls < 3:
            return {"status": {"id": "IN_PROGRESS"}}
        return {"status": {"id": "COMPLETED"}, "operation": self.final}


def test_stop_with_savepoint_waits_for_the_savepoint_and_returns_its_path():
    rest = SavepointRest({"location": "file:/sp/savepoint-abc"})
    assert rest.stop_with_savepoint(JOB, "/sp", drain=True, sleep=lambda s: None) == "file:/sp/savepoint-abc"
    assert rest.calls[0] == ("POST", f"/jobs/{JOB}/stop", {"drain": True, "targetDirectory": "/sp"})
    assert rest.calls[-1] == ("GET", f"/jobs/{JOB}/savepoints/t1", None)


def test_a_failed_savepoint_is_an_error_with_flinks_reason():
    rest = SavepointRest({"failure-cause": {"stack-trace": "java.lang.X: boom\nCaused by: java.io.IOException: disk full"}})
    with pytest.raises(RuntimeError, match="disk full"):
        rest.stop_with_savepoint(JOB, None, sleep=lambda s: None)


@pytest.mark.parametrize("argv, message", [
    (["stop", "not-a-job"], "32 hex digits"),
    (["upgrade", JOB], "arguments after --"),
    (["upgrade", JOB, "--", "--engine", "flink", "--flink_savepoint", "/x"], "give no --flink_savepoint"),
    (["restart", JOB], "invalid choice"),
])
def test_bad_lifecycle_commands_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        flink_engine.lifecycle(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_upgrade_stops_with_a_savepoint_then_submits_the_new_job_from_it_detached(monkeypatch):
    stopped = []

    def stop(self, job_id, target_dir=None, drain=False, **_):
        stopped.append((self.base, job_id, target_dir, drain))
        return "file:/sp/savepoint-1"
    monkeypatch.setattr(flink_engine.FlinkRest, "stop_with_savepoint", stop)
    submitted = []
    status = flink_engine.lifecycle(["upgrade", JOB, "--flink_master", "h:1", "--", "--engine", "flink",
                                     "--parallelism", "2", "--flink_detached"],
                                    run_job=lambda argv: submitted.append(argv) or 0)
    assert status == 0
    assert stopped == [("http://h:1", JOB, None, False)]
    assert submitted == [["--engine", "flink", "--parallelism", "2", "--flink_master", "h:1",
                          "--flink_savepoint", "file:/sp/savepoint-1", "--flink_detached"]]


def test_an_unreachable_cluster_is_one_line_and_exit_1(capsys):
    assert flink_engine.lifecycle(["status", JOB, "--flink_master", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pipelines.flink_engine: error: status {JOB} at 127.0.0.1:1")

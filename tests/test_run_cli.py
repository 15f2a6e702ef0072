"""The launcher's contract: exit 2 with a one-line reason for bad arguments and inputs."""
import subprocess
import sys

import pytest


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipelines.run", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _write_world(tmp_path, missing=None):
    for kind in ("users", "pings", "taps", "tweets"):
        if kind != missing:
            (tmp_path / f"{kind}.jsonl").write_text("")
    return str(tmp_path)


@pytest.mark.parametrize("args, reason", [
    (["--input", "/nonexistent/world"], "--input /nonexistent/world: not a directory"),
    (["--dp_epsilon_per_user_day", "0"], "epsilon"),
    (["--dp_epsilon_per_user_day", "-1"], "epsilon"),
    (["--follows_max_clock_skew_s", "-5"], "max_clock_skew_s"),
    (["--world_users", "0"], "--world_users must be > 0"),
    (["--stream_disorder_s", "-1"], "--stream_disorder_s must be >= 0"),
])
def test_bad_configuration_exits_2_with_one_line_reason(tmp_path, args, reason):
    if "--input" not in args:
        args = ["--input", _write_world(tmp_path)] + args
    done = run_cli(*args, "--output", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    reason_lines = [line for line in done.stderr.splitlines() if line.startswith("pipelines.run: error:")]
    assert len(reason_lines) == 1 and reason in reason_lines[0], done.stderr


def test_missing_input_file_is_named(tmp_path):
    done = run_cli("--input", _write_world(tmp_path, missing="taps"), "--output", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "missing taps.jsonl (or taps.jsonl.gz)" in done.stderr


def test_streaming_from_files_is_refused_on_flink(tmp_path):
    done = run_cli("--input", _write_world(tmp_path), "--output", str(tmp_path / "out"),
                   "--streaming", "--runner", "FlinkRunner")
    assert done.returncode == 2
    assert "use --source kafka" in done.stderr


def test_help_lists_project_step_and_beam_options_and_runs_nothing(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("usage: python -m pipelines.run [--input DIR] [--output DIR]")
    for flag in ("--input", "--source {files,kafka}", "--world_users", "--follows_replay_memory_s",
                 "--alerts_allowed_lateness_s", "--dp_epsilon_per_user_day", "--runner", "--streaming"):
        assert flag in text, flag
    assert "DpParams.epsilon_per_user_day (default 1.0)" in " ".join(text.split())
    assert list(tmp_path.iterdir()) == []            # no world generated, no output written
    assert result.stderr == ""                       # not even Beam's "apitools not found" (schemas/quiet.py)


def test_the_import_noise_filter_drops_that_one_message_only():
    code = ("import logging, schemas, apache_beam; "
            "logging.warning('apitools not found, and bigquery client libraries are not available (again)'); "
            "logging.warning('a real warning')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "WARNING:root:a real warning\n", result.stderr


@pytest.mark.parametrize("flag", ["--flink_parallelism", "--alerts_radius_m", "--alerts_sink"])
def test_an_unknown_flag_exits_2_naming_it(tmp_path, flag):
    """Beam drops flags it does not know: a typo (or a flag of a later version) would silently run
    a default DirectRunner job."""
    done = run_cli("--input", _write_world(tmp_path), "--output", str(tmp_path / "out"), flag, "x")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and f"unknown option {flag}" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_beam_options_still_pass(tmp_path):
    from pipelines.options import unknown_flags
    assert unknown_flags(["--runner=DirectRunner", "--streaming", "--flink_master", "h:1", "--environment_type",
                          "LOOPBACK", "--experiments=x", "--input", "d", "--dp_epsilon_per_user_day", "1",
                          "--results_sink", "kafka", "--alerts_burst_radius_m", "400", "--no_pipeline_type_check"]) == []

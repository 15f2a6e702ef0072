"""Unknown flags are errors, Beam's own pass (issue #16): Beam discards what it does not know, so
``--engin flink`` ran a default DirectRunner job without a word."""
from __future__ import annotations

import argparse

import pytest
from apache_beam.options import pipeline_options as beam_options
from hypothesis import given, settings, strategies as st

from pipelines.options import TapFollowOptions, _beam_actions, unknown_flags
from pipelines.run import run


def declared_flags(*classes) -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    for cls in classes:
        cls._add_argparse_args(parser)
    return {flag: action for action in parser._actions for flag in action.option_strings}


# Beam's own option classes, taken from its module (not a list of flags written here)
BEAM_CLASSES = [cls for cls in vars(beam_options).values()
                if isinstance(cls, type) and issubclass(cls, beam_options.PipelineOptions)
                and cls is not beam_options.PipelineOptions]
BEAM_FLAGS = declared_flags(*BEAM_CLASSES)
PROJECT_FLAGS = declared_flags(TapFollowOptions)
ALL_FLAGS = {**BEAM_FLAGS, **PROJECT_FLAGS}
REGISTERED = _beam_actions()      # every PipelineOptions subclass loaded in this process


def test_beam_declares_the_flags_the_contract_names():
    assert len(BEAM_CLASSES) > 15
    for flag in ("--runner", "--streaming", "--flink_master", "--environment_type", "--job_endpoint",
                 "--experiments", "--parallelism", "--checkpointing_interval", "--setup_file"):
        assert flag in ALL_FLAGS, flag


@pytest.mark.parametrize("flag", sorted(BEAM_FLAGS))
def test_every_flag_of_beams_option_classes_passes(flag):
    action = BEAM_FLAGS[flag]
    argv = [flag] if action.nargs == 0 else [flag, "x"]
    assert unknown_flags(argv) == []
    assert unknown_flags([f"{flag}=x"]) == []


def test_values_that_look_like_options_are_values():
    assert unknown_flags(["--dp_epsilon_per_user_day", "-1", "--stream_disorder_s", "-0.5",
                          "--experiments", "a", "--experiments=b", "--streaming", "--", "--runner=PrismRunner"]) == []


@pytest.mark.parametrize("argv, reason", [
    (["--engin", "flink"], "unknown option --engin "),
    (["--engine", "flink", "--flink_paralelism", "2"], "unknown option --flink_paralelism "),
    (["--streaming", "-x"], "unknown option -x "),
    (["--streaming", "true"], "unexpected argument 'true': not the value of any option"),
    (["out"], "unexpected argument 'out'"),
])
def test_an_unknown_flag_exits_2_with_one_line_and_runs_nothing(tmp_path, capsys, argv, reason):
    assert run(argv + ["--output", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert captured.err.startswith("pipelines.run: error: ") and reason in captured.err, captured.err
    assert not (tmp_path / "out").exists()


@settings(max_examples=200, deadline=None)
@given(flag=st.sampled_from(sorted(ALL_FLAGS)), data=st.data())
def test_a_typo_of_any_flag_is_rejected_unless_it_is_itself_a_flag(flag, data):
    """One character dropped, doubled or changed in a real flag name."""
    name = flag[2:]
    i = data.draw(st.integers(0, len(name) - 1))
    edit = data.draw(st.sampled_from(["drop", "double", "change"]))
    letter = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"))
    typo = "--" + {"drop": name[:i] + name[i + 1:], "double": name[:i] + name[i] + name[i:],
                   "change": name[:i] + letter + name[i + 1:]}[edit]
    if typo in ALL_FLAGS or typo in REGISTERED or typo == "--":
        return       # a typo that is itself some options class's flag (Beam's, ours, a plugin's)
    assert unknown_flags([typo, "1"])[0] == typo

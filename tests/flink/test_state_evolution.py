"""State schema evolution: keyed state written by the old code is read by the new code.

An upgrade (``python -m pipelines.flink_engine upgrade``, README runbook) restores the
processors' state from a savepoint into the new code's classes. That state is pickled
(``PICKLED_BYTE_ARRAY``: PyFlink's cloudpickle coder, classes by reference), so the rule
is: a state class may gain fields **with defaults**; the driver
(``drivers/state_evolution.py``) writes a real ordered-host state with PyFlink's own coder,
swaps ``core.dp_stats.DayState`` for a class with an added field, and reads the same bytes.
"""
from tests.flink.conftest import driver_path, run_driver


def test_old_state_reads_into_a_class_with_an_added_defaulted_field(pyflink_python):
    got = run_driver(pyflink_python, driver_path("state_evolution.py"), timeout=60)
    assert got["new_class"] is True
    assert (got["day_end"], got["used"], got["carried_over"]) == (7200.0, [2, 3, 1, 0], 0)
    assert got["host"] == [3600.0, 7199, {"3600000": ["pending"]}]
    # the processor runs on it as on the old class
    assert got["expire_before_end"] is True and got["expire_at_end"] is None and got["gc_time"] == 7200.0
    # and the rule is real: a field added without a default cannot read the old state
    assert "carried_over" in got["strict_error"], got["strict_error"]

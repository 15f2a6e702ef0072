"""The compliance gates on FlinkOps (tests/flink/drivers/compliance_fanout.py, a local MiniCluster):
the worlds of tests/compliance_scenarios.py give, in BATCH mode, exactly the covered world's outputs;
in STREAMING mode nothing about a covered tweet when its message comes first, and a retraction with
the same alert_id (a retracted timeline entry) when it comes after -- as on plain lists and Beam."""
import pytest

from schemas.records import Alert, TimelineEntry
from tests.compliance_scenarios import AFTER, BEFORE, check_streamed, expected, world
from tests.flink.conftest import driver_path, run_driver

TIMINGS = {"message_first": BEFORE, "message_after": AFTER}


@pytest.fixture(scope="module")
def gated(pyflink_python):
    # one driver process per mode: a STREAMING job after BATCH ones in one process (PyFlink's one
    # environment) failed with "Consumers must have the same max parallelism"
    result = {key: r for mode in ("batch", "streaming")
              for key, r in run_driver(pyflink_python, driver_path("compliance_fanout.py"), mode, timeout=300).items()}
    return {key: {"alerts": [Alert(**a) for a in r["alert"]], "timeline": [TimelineEntry(**e) for e in r["entry"]],
                  "dead": r["dead"]} for key, r in result.items()}


@pytest.mark.parametrize("timing", sorted(TIMINGS))
def test_batch_outputs_are_the_covered_worlds(gated, timing):
    scenarios, _messages, covered = world(TIMINGS[timing])
    r = gated[f"batch {timing}"]
    assert {"alerts": sorted(r["alerts"]), "timeline": sorted(r["timeline"])} == expected(scenarios, covered)
    assert r["dead"] == []


@pytest.mark.parametrize("timing", sorted(TIMINGS))
def test_streaming_suppresses_or_retracts_with_the_same_alert_id(gated, timing):
    scenarios, _messages, covered = world(TIMINGS[timing])
    r = gated[f"streaming {timing}"]
    check_streamed(r["alerts"], r["timeline"], scenarios, covered, TIMINGS[timing])
    assert r["dead"] == []

"""core.alerts.fan_out_over on FlinkOps (tests/flink/drivers/alerts_fanout.py, a local MiniCluster)
gives core.alerts.fan_out's alerts: exactly in BATCH mode; in STREAMING mode with shuffled
event-time input, the same once the late delete's retractions are applied, as on Beam."""
import pytest

from core.alerts import apply_retractions, is_retraction
from schemas.records import Alert
from tests.flink.conftest import driver_path, run_driver

T0 = 1_764_000_000.0


@pytest.fixture(scope="module")
def fanned(pyflink_python):
    result = run_driver(pyflink_python, driver_path("alerts_fanout.py"), "batch", "streaming", timeout=300)
    return {mode: {"got": [Alert(**a) for a in r["got"]], "want": [Alert(**a) for a in r["want"]],
                   "dead": r["dead"], "out_of_order": r["out_of_order"]} for mode, r in result.items()}


def test_batch_fan_out_equals_the_pure_one(fanned):
    r = fanned["batch"]
    assert sorted((a.user_id, a.tweet_id, a.reason) for a in r["want"]) == [
        ("2", "900", "nearby:concert:concert"), ("3", "900", "friend:concert:concert"),
        ("4", "900", "nearby:concert:concert"), ("5", "900", "nearby:concert:concert"),
        ("5", "902", "nearby:sale:sale")]
    assert sorted(r["got"]) == sorted(r["want"]) and r["dead"] == []


def test_streaming_fan_out_equals_batch_after_retractions(fanned):
    r = fanned["streaming"]
    assert r["out_of_order"] > 0
    assert sorted(apply_retractions(r["got"])) == sorted(r["want"]) and r["dead"] == []
    # the delete came after 901's alerts were written: each one retracted, same alert_id
    written = sorted(a for a in r["got"] if a.tweet_id == "901" and not is_retraction(a))
    retractions = sorted(a for a in r["got"] if is_retraction(a))
    assert written and retractions == sorted(a._replace(ts=T0 + 900, reason="retract:" + a.reason) for a in written)

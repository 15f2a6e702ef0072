"""flink_job.dp_stats.release_statistics on a local MiniCluster vs ``core.dp_stats.release_contributions``.

tests.test_dp_stats's hand-made world over 3 scheduled hours: one user opted out, one
unknown, one over the per-day hour cap (max_hours_per_day=1, two hours of data), one
hour with no data. BATCH and STREAMING (a paced source with watermarks) must release
exactly what the core releases on the same contributions, with zero noise; in streaming
a ping arriving after its hour was released is counted late and changes nothing.
"""
from __future__ import annotations

import json
import pickle

import pytest

from core import dp_bounding as bnd
from core.dp_stats import DpParams, release_contributions, to_contribution
from schemas.service_area import public_cells
from tests.flink.conftest import driver_path, run_driver
from core.alerts import AlertParams
from schemas.records import Tweet, User
from tests.test_dp_stats import (A, COMPLIANCE_WORLD, DELETED, KEPT, ON_TIME, ONE_CELL, OPTED_OUT, SCRUBBED,
                                 STREAM_PARAMS, T0, TAKEN_BACK, USERS, WORLD, ZERO, hours, ping)

PARAMS = DpParams(max_hours_per_day=1, **ONE_CELL, **hours(0, 2))   # hour 2 has no data
KINDS = {"pings": bnd.PING, "taps": bnd.TOUCH, "tweets": bnd.TWEET}
CLOCK = ping("1002", 3600 + 1800, A)     # hour 1: moves the watermark past hour 0's end
LATE = ping("1003", 40, A)   # hour 0, before 1003's other records: delivered after hour 0 was released


def on_time():
    records = [(name, r) for world in (WORLD, OPTED_OUT) for name, rs in world.items() for r in rs]
    return sorted(records + [("pings", CLOCK)], key=lambda nr: nr[1].ts)


def released(records, params):
    """(statistics, ledger, counts) the core releases from ``records`` ((name, record) pairs)."""
    public = frozenset(public_cells(params.h3_res))
    found = [to_contribution(r, KINDS[name], params.h3_res, public, params.max_accuracy_m, params.schedule())
             for name, r in records]
    return release_contributions([c for c in found if not isinstance(c, str)], {u.user_id: u for u in USERS},
                                 params, ZERO)


def expected(records):
    statistics, ledger, counts = released(records, PARAMS)
    assert counts["dp_opted_out_dropped"] and counts["dp_unknown_user_dropped"] and counts["dp_bounded_hours_dropped"]
    return sorted(json.dumps(list(s)) for s in statistics), sorted(json.dumps(row, sort_keys=True) for row in ledger)


def run_flink(pyflink_python, tmp_path, mode, records, params=PARAMS, compliance=None):
    spec = tmp_path / f"{mode}.pkl"
    spec.write_bytes(pickle.dumps({"mode": mode, "records": [r for _name, r in records],
                                   "registry": {u.user_id: u for u in USERS}, "params": params,
                                   "pace_s": 0.3, "compliance": compliance}))
    got = run_driver(pyflink_python, driver_path("dp_run.py"), str(spec), timeout=240)
    return (sorted(json.dumps(s) for s in got["statistics"]),
            sorted(json.dumps(row, sort_keys=True) for row in got["ledger"]))


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_release_equals_release_contributions(pyflink_python, tmp_path, mode):
    want_statistics, want_ledger = expected(on_time())
    assert len(want_ledger) == 3 * len(PARAMS.plan().metrics)     # every scheduled hour, data or not
    records = on_time() + ([("pings", LATE)] if mode == "streaming" else [])
    statistics, ledger = run_flink(pyflink_python, tmp_path, mode, records)
    assert ledger == want_ledger
    assert statistics == want_statistics
    if mode == "streaming":
        # the late ping would have changed hour 0 (its B cell) had it been released
        assert expected(on_time() + [("pings", LATE)])[0] != want_statistics


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_tweets_taken_back_by_compliance_messages_do_not_count(pyflink_python, tmp_path, mode):
    """As Beam's (tests/test_dp_stats.py): a deleted and a geo-scrubbed tweet are not in the
    statistics -- batch: never passed on; streaming: passed on, then withdrawn from hour 0
    before it is released -- exactly as if they had been taken out in advance."""
    params = DpParams(**STREAM_PARAMS, **hours(0, 3))
    world = [("pings", r) for r in COMPLIANCE_WORLD["pings"]] + [("tweets", t) for t in (KEPT, DELETED, SCRUBBED)]
    public = frozenset(public_cells(params.h3_res))
    found = [to_contribution(r, KINDS[name], params.h3_res, public, params.max_accuracy_m, params.schedule())
             for name, r in world if r not in (DELETED, SCRUBBED)]
    want, want_ledger, _ = release_contributions([c for c in found if not isinstance(c, str)],
                                                 {u.user_id: u for u in USERS}, params, ZERO)
    records = sorted(world + [("deletes", m) for m in TAKEN_BACK], key=lambda nr: nr[1].ts)
    statistics, ledger = run_flink(pyflink_python, tmp_path, mode, records, params, AlertParams())
    assert ledger == sorted(json.dumps(row, sort_keys=True) for row in want_ledger)
    assert statistics == sorted(json.dumps(list(s)) for s in want)


def _user_of(record) -> str:
    return record.author_id if isinstance(record, Tweet) else record.user_id


def test_a_registry_update_leaves_the_user_out_of_every_hour_released_after_it(pyflink_python, tmp_path):
    """Streaming with registry updates (``core.registry.registry_over``'s users, stamped here at
    their change): 1001 leaves the statistics in hour 1, so its hour 0 (released before) stays
    and its hours 1 and 3 are gone; 9999 opting back in changes nothing (an opt-in counts from
    the next launch), nor does 1003's alerts-only change."""
    params = DpParams(**STREAM_PARAMS, **hours(0, 3))
    left_at = T0 + 3600 + 1800
    updates = [("registry", {"at": T0 + 5, "user": User("9999", "k", True, False, "20-29")}),
               ("registry", {"at": T0 + 6, "user": User("1003", "k", True, False, None)}),
               ("registry", {"at": left_at, "user": User("1001", "k", False, True, "20-29")})]
    world = [("pings" if isinstance(r, type(ON_TIME[0])) else "tweets", r) for r in ON_TIME] + \
        [(name, r) for name, rs in OPTED_OUT.items() for r in rs]
    records = sorted(world + updates, key=lambda nr: nr[1]["at"] if isinstance(nr[1], dict) else nr[1].ts)
    kept = [(name, r) for name, r in world if not (_user_of(r) == "1001" and r.ts >= T0 + 3600)]
    want, want_ledger, counts = released(kept, params)
    # 1001 counts in hours 1 and 3 when it stays
    assert counts["dp_contributions_used"] and sorted(want) != sorted(released(world, params)[0])
    statistics, ledger = run_flink(pyflink_python, tmp_path, "streaming", records, params)
    assert ledger == sorted(json.dumps(row, sort_keys=True) for row in want_ledger)
    assert statistics == sorted(json.dumps(list(s)) for s in want)

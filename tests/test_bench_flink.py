"""The pure helpers of ``benchmarks.bench_flink`` (no services)."""
from __future__ import annotations

import pytest

from benchmarks import bench_flink as bf


def test_ready_times_is_a_running_maximum_over_event_time():
    # produced out of wall order for the same or earlier event time: each event time is ready
    # once everything at or before it has been produced
    times, ready = bf.ready_times([(1000, 10.0), (3000, 11.0), (2000, 12.0), (2000, 9.0), (4000, 13.0)])
    assert times == [1000, 2000, 3000, 4000]
    assert ready == [10.0, 12.0, 12.0, 13.0]


def test_ready_at_bisects_to_the_last_event_at_or_before():
    times, ready = bf.ready_times([(1000, 10.0), (2000, 11.0), (3000, 12.0)])
    assert bf.ready_at(times, ready, 999) is None
    assert bf.ready_at(times, ready, 1000) == 10.0
    assert bf.ready_at(times, ready, 2500) == 11.0
    assert bf.ready_at(times, ready, 10_000) == 12.0


def test_alert_latencies_leave_out_retractions_tail_and_early():
    from schemas.timefmt import format_rfc3339
    t0 = 1_790_000_000                       # seconds; event times below in ms from it
    produced = [((t0 + 1) * 1000, 100.0), ((t0 + 2) * 1000, 101.0), ((t0 + 3) * 1000, 102.0),
                ((t0 + 9) * 1000, 103.0)]
    alerts = [({"ts": format_rfc3339(t0 + 2.0), "reason": "nearby:concert:x"}, 106.5),   # ready 101.0
              ({"ts": t0 + 2.5, "reason": "friend:sale:y"}, 104.0),                      # ready 101.0
              ({"ts": format_rfc3339(t0 + 3.0), "reason": "retract:nearby:concert:x"}, 110.0),
              ({"ts": format_rfc3339(t0 + 8.5), "reason": "nearby:incident:z"}, 120.0),  # after the cutoff
              ({"ts": format_rfc3339(t0 + 0.5), "reason": "nearby:incident:z"}, 120.0)]  # before every event
    latencies, left = bf.alert_latencies(alerts, produced, cutoff_ms=(t0 + 8) * 1000)
    assert latencies == pytest.approx([5.5, 3.0])
    assert left == {"retractions": 1, "tail": 1, "before_first_event": 1}


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert bf.percentile(values, 50) == 50
    assert bf.percentile(values, 99) == 99
    assert bf.percentile(values, 100) == 100
    assert bf.percentile([7.0], 99) == 7.0
    assert bf.percentile([], 50) is None
    assert bf.percentile([3, 1, 2], 50) == 2


def test_rates():
    r = bf.rates(10_000, launched=100.0, first=120.0, last=150.0)
    assert (r["wall_s"], r["startup_s"]) == (50.0, 20.0)
    assert r["events_per_s"] == pytest.approx(200.0)
    assert r["steady_per_s"] == pytest.approx(10_000 / 30)
    assert bf.rates(10, 0.0, None, None)["events_per_s"] is None
    assert bf.rates(10, 0.0, 5.0, 5.0)["steady_per_s"] is None


def test_merge_in_event_time():
    merged = list(bf.merge_in_event_time({"pings": [("p1", 1), ("p2", 5)], "tweets": [("t1", 3), ("t2", None)],
                                          "taps": [("a1", 4)]}))
    assert [(ms, topic, line) for ms, topic, line in merged][:4] == \
        [(1, "pings", "p1"), (3, "tweets", "t1"), (0, "tweets", "t2"), (4, "taps", "a1")]
    assert sorted(line for _ms, _t, line in merged) == ["a1", "p1", "p2", "t1", "t2"]


def test_instance_env_moves_every_port_and_dir():
    env = bf.instance_env("/tmp/x", 20_000, environ={"PATH": "/bin", "INFRA_INSTANCE": "/other"})
    assert env["KAFKA_PORT"] == "29092" and env["FLINK_REST_PORT"] == "28081" and env["PRISM_JOB_PORT"] == "28073"
    assert set(bf.DEFAULT_PORTS) <= set(env)
    assert {env[f"INFRA_{n}_DIR"] for n in ("RUN", "DATA", "LOG", "CONF")} == \
        {"/tmp/x/run", "/tmp/x/data", "/tmp/x/log", "/tmp/x/conf"}
    assert env["FLINK_CONF_DIR"] == "/tmp/x/conf/flink"
    assert env["BEAM_KAFKA_EXPANSION_SERVICE"] == "127.0.0.1:28097"
    assert "INFRA_INSTANCE" not in env and env["PATH"] == "/bin"
    with pytest.raises(ValueError):
        bf.instance_env("/tmp/x", 0, environ={})


def test_markdown_block_is_one_table_row():
    tp = [{"engine": "flink", "events": 1000, "wall_s": 10.0, "startup_s": 5.0, "events_per_s": 100.0,
           "steady_per_s": 200.0, "follows": 3, "alerts": 4, "note": ""}]
    lat = [{"engine": "flink", "count": 9, "p50": 5.0, "p99": 9.9, "max": 10.0, "left_out": {}, "note": ""}]
    row = bf.markdown_block({"throughput": {"users": 200, "hours": 2}, "latency": {"users": 100, "hours": 1, "rate": 50}},
                            tp, lat, 10_000)
    assert row.startswith("| `bench_flink` |") and row.endswith("|") and "\n" not in row
    assert "100 events/s" in row and "p50 5.0 s / p99 9.9 s" in row
    assert len(bf.throughput_rows(tp)) == 2 and len(bf.latency_rows(lat)) == 2

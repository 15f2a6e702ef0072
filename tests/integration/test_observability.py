"""Observability (issue #16): Prometheus scrapes Flink's reporter and the gateway, and each alert
rule fires when provoked and clears when fixed.

* every rule of infra/prometheus/tapfollow-rules.yml, rendered as infra/prometheus.sh renders it,
  against promtool's rule engine (infra/prometheus/tapfollow-rules.test.yml: quiet, provoked, fixed);
* on a live Prometheus of the test's own (rules every second, alerts after 3 s) asked over its HTTP
  API: the gateway's rejections (a burst of bad requests, then none), and the Flink job alerts on
  the real session cluster (no job running; a job running; its TaskManager killed: restarts and a
  target down; a new TaskManager). The Flink job's own counters (dead letters, consumer lag) are
  provoked the same way by the soak test (tests/integration/test_soak.py), which runs that job.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest

from nfc_gateway.service import Gateway, GatewayConfig
from nfc_gateway.testing import PUBKEYS, post
from tests.integration.conftest import INFRA, wait_for
from tests.integration.prometheus_helpers import free_port, own_prometheus
from tests.integration.test_flink_smoke import _job_running, _submit_sql

pytestmark = pytest.mark.flink


def test_every_alert_rule_fires_when_provoked_and_clears_when_fixed(tmp_path):
    assert shutil.which("promtool"), "promtool missing: infra/install.sh installs Debian's prometheus"
    # the timing and thresholds tapfollow-rules.test.yml is written for (infra/prometheus.sh's defaults)
    env = dict(os.environ, INFRA_CONF_DIR=str(tmp_path), INFRA_LOG_DIR=str(tmp_path / "logs"),
               PROMETHEUS_EVAL_INTERVAL="15s", PROMETHEUS_ALERT_FOR="2m")
    for name in ("PROMETHEUS_DEAD_LETTER_RATE", "PROMETHEUS_CONSUMER_LAG", "PROMETHEUS_WATERMARK_LAG_S"):
        env.pop(name, None)
    done = subprocess.run(["bash", os.path.join(INFRA, "prometheus.sh"), "config"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.copy(os.path.join(INFRA, "prometheus", "tapfollow-rules.test.yml"), tmp_path / "prometheus")
    done = subprocess.run(["promtool", "test", "rules", str(tmp_path / "prometheus" / "tapfollow-rules.test.yml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_gateway_rejections_alert_fires_on_a_burst_and_clears_after_it(tmp_path):
    gateway_port = free_port()
    gateway = Gateway(GatewayConfig(port=gateway_port, output_dir=str(tmp_path / "gw"), public_keys=PUBKEYS)).start()
    try:
        with own_prometheus(str(tmp_path / "prom"), GATEWAY_PORT=gateway_port) as prometheus:
            wait_for(lambda: prometheus.up("gateway"), 60, "Prometheus scraping the gateway")
            assert not prometheus.alerts("firing").get("TapfollowGatewayRejectionRate")
            stop = threading.Event()

            def burst():       # bad requests, about 20 a second, until told to stop
                while not stop.wait(0.05):
                    post(gateway_port, b"{not json")
            sender = threading.Thread(target=burst, daemon=True)
            sender.start()
            try:
                wait_for(lambda: prometheus.firing("TapfollowGatewayRejectionRate"), 60, "the rejection alert")
                rejected = prometheus.value("sum(tapfollow_gateway_rejected_total)")
                assert rejected and rejected >= 10
            finally:
                stop.set()
                sender.join()
            wait_for(lambda: not prometheus.alerts("firing").get("TapfollowGatewayRejectionRate")
                     and not prometheus.alerts("pending").get("TapfollowGatewayRejectionRate"),
                     60, "the rejection alert to clear once the burst is over")
    finally:
        gateway.stop()


def test_flink_job_alerts_fire_and_clear_on_the_session_cluster(infra, tmp_path):
    for job in infra.rest("/jobs/overview")["jobs"]:        # a job left by an earlier test
        if job["state"] == "RUNNING":
            infra.rest(f"/jobs/{job['jid']}?mode=cancel", method="PATCH")
    # restarts come every few seconds while no TaskManager is there: rates over 10 s
    with own_prometheus(str(tmp_path / "prom"), PROMETHEUS_RATE_WINDOW="10s") as prometheus:
        wait_for(lambda: prometheus.up("flink-jobmanager") and prometheus.up("flink-taskmanager"), 60,
                 "Prometheus scraping Flink's JobManager and TaskManager reporters")
        wait_for(lambda: prometheus.firing("TapfollowJobNotRunning"), 60, "the job-not-running alert")
        job_id = _submit_sql(infra, tmp_path, "observability-probe")
        try:
            wait_for(lambda: _job_running(infra, job_id), 120, "the probe job running")
            wait_for(lambda: not prometheus.firing("TapfollowJobNotRunning"), 60, "job-not-running to clear")
            wait_for(lambda: infra.rest(f"/jobs/{job_id}/checkpoints")["counts"]["completed"] >= 1, 120,
                     "a completed checkpoint")
            infra.flink("kill-taskmanager")
            # without a TaskManager the job restarts again and again (fixed delay) until one comes
            wait_for(lambda: prometheus.firing("TapfollowTargetDown"), 60, "the target-down alert (TaskManager)")
            wait_for(lambda: prometheus.firing("TapfollowJobRestarting"), 60, "the job-restarting alert")
            infra.flink("start-taskmanager")
            wait_for(lambda: _job_running(infra, job_id), 120, "the probe job running again")
            wait_for(lambda: not prometheus.firing("TapfollowTargetDown"), 60, "target-down to clear")
            # no more restarts: the last one leaves the rate window
            wait_for(lambda: not prometheus.firing("TapfollowJobRestarting"), 60, "job-restarting to clear")
        finally:
            infra.rest(f"/jobs/{job_id}?mode=cancel", method="PATCH")
            infra.flink("start-taskmanager")    # a no-op unless it failed between the kill and the restart
        wait_for(lambda: prometheus.firing("TapfollowJobNotRunning"), 60, "job-not-running once cancelled")

"""A Prometheus of its own for a test or a benchmark (infra/prometheus.sh with short rule timing),
and the questions asked of its HTTP API (``/api/v1/query``, ``/api/v1/alerts``)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess

from benchmarks.bench_soak import PrometheusQuery

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMETHEUS_SH = os.path.join(REPO, "infra", "prometheus.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus(PrometheusQuery):
    def alerts(self, state: str = "firing") -> dict[str, list[dict]]:
        """Alerts by name in ``state`` (firing or pending)."""
        found: dict[str, list[dict]] = {}
        for alert in self.get("/api/v1/alerts")["alerts"]:
            if alert["state"] == state:
                found.setdefault(alert["labels"]["alertname"], []).append(alert)
        return found

    def firing(self, name: str) -> bool:
        return name in self.alerts("firing")

    def up(self, job: str) -> bool:
        return self.value(f'max(up{{job="{job}"}})') == 1.0


@contextlib.contextmanager
def own_prometheus(workdir: str, eval_interval: str = "1s", alert_for: str = "3s", **env):
    """A Prometheus of this test's own (its own port and directories) scraping the instance's
    targets (ports from infra/env.sh and ``env``), rules every ``eval_interval``, alerts after
    ``alert_for``; stopped (and checked stopped) on exit."""
    port = free_port()
    environ = dict(os.environ, PROMETHEUS_PORT=str(port), PROMETHEUS_EVAL_INTERVAL=eval_interval,
                   PROMETHEUS_ALERT_FOR=alert_for, INFRA_RUN_DIR=os.path.join(workdir, "run"),
                   INFRA_CONF_DIR=os.path.join(workdir, "conf"), INFRA_DATA_DIR=os.path.join(workdir, "data"),
                   INFRA_LOG_DIR=os.path.join(workdir, "logs"), **{k: str(v) for k, v in env.items()})

    def script(command: str) -> str:
        done = subprocess.run(["bash", PROMETHEUS_SH, command], env=environ, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout
    script("start")
    try:
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        script("stop")
        assert subprocess.run(["bash", PROMETHEUS_SH, "status"], env=environ, capture_output=True).returncode == 1

"""Session fixture for the streaming infrastructure: ``infra/up.sh`` once per test session,
``infra/down.sh`` at the end (which fails if any infra process is left running).

Set ``INFRA_KEEP_UP=1`` to leave the services running after the session (local dev).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass

import pytest

from pipelines.flink_engine import TERMINAL

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INFRA = os.path.join(REPO, "infra")
CACHE = os.environ.get("INFRA_CACHE", os.path.join(INFRA, ".cache"))


def _env_value(name: str) -> str:
    out = subprocess.run(["bash", "-c", f'source "{INFRA}/env.sh"; printf %s "${name}"'],
                         capture_output=True, text=True, check=True)
    return out.stdout


@dataclass(frozen=True)
class Infra:
    bootstrap: str
    expansion_service: str
    flink_rest: str
    flink_master: str
    flink_home: str
    flink_conf_dir: str
    prism_endpoint: str | None
    flink_job_server_jar: str | None
    up_seconds: float
    pyflink_python: str = ""       # infra/env.sh PYFLINK_PYTHON: the PyFlink venv's python
    flink_job_jars: tuple = ()     # infra/env.sh FLINK_JOB_JARS: connector jars for PyFlink jobs

    def rest(self, path: str, method: str = "GET"):
        req = urllib.request.Request(self.flink_rest + path, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def flink(self, *args: str) -> str:
        out = subprocess.run(["bash", os.path.join(INFRA, "flink.sh"), *args],
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    def portable_runner_args(self, streaming: bool = True) -> list[str]:
        """Beam options for the local portable runner (Prism job service)."""
        args = ["--runner=PortableRunner", f"--job_endpoint={self.prism_endpoint}",
                "--environment_type=LOOPBACK"]
        return args + (["--streaming"] if streaming else [])

    def flink_runner_args(self, streaming: bool = True, checkpoint_ms: int | None = None) -> list[str]:
        """Beam options for the Flink session cluster (needs the Beam job-server jar)."""
        args = ["--runner=FlinkRunner", f"--flink_master={self.flink_master}", "--flink_version=2.2",
                f"--flink_job_server_jar={self.flink_job_server_jar}",
                "--environment_type=LOOPBACK", "--parallelism=1"]
        if checkpoint_ms:
            args.append(f"--checkpointing_interval={checkpoint_ms}")
        return args + (["--streaming"] if streaming else [])


# Deadlines are sized for an idle machine and multiplied by this factor: CI's 2 cores
# may be shared with other jobs, and a JVM or a Beam job starts several times slower
# then. Waiting longer costs nothing when the condition comes true early.
SLOW_MACHINE_FACTOR = float(os.environ.get("TAPFOLLOW_DEADLINE_FACTOR", "4"))


def slow_machine(seconds: float) -> float:
    """A deadline of ``seconds`` on an idle machine, stretched for a busy one."""
    return seconds * SLOW_MACHINE_FACTOR


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what`` on timeout.

    ``timeout`` is the idle-machine figure; the wait allows ``slow_machine(timeout)``.
    """
    timeout = slow_machine(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def topic_rows(topic: str, bootstrap: str) -> list[dict]:
    """Every committed message of ``topic`` as JSON (``kafka_client`` reads ``read_committed``),
    up to the topic's end offsets: a transaction left open (the stable offset stuck below the
    end) is a ``TimeoutError``, never an empty or short read. (A read for a fixed 3 s once
    returned no follows on a busy CI machine.)"""
    import kafka_client
    return [json.loads(value) for value in kafka_client.snapshot_topic(bootstrap, topic, timeout_s=slow_machine(120))]


def _run(script: str, timeout: int = 600) -> str:
    out = subprocess.run(["bash", os.path.join(INFRA, script)], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"infra/{script} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


@pytest.fixture(scope="session")
def infra():
    if subprocess.run(["bash", "-c", "command -v java && command -v mvn"], capture_output=True).returncode:
        pytest.skip("java/mvn not available: the Flink/Kafka integration tests need them")
    _run("install.sh", timeout=1800)
    t0 = time.monotonic()
    print(_run("up.sh"))
    up_seconds = time.monotonic() - t0
    # What infra/env.sh exports to its scripts, for pipelines.kafka_io in this process.
    os.environ.setdefault("BEAM_KAFKA_EXPANSION_JAR", _env_value("EXPANSION_SERVICE_JAR"))
    prism_bin = _env_value("PRISM_BIN")
    jar = _env_value("FLINK_JOB_SERVER_JAR")
    rest_port = _env_value("FLINK_REST_PORT")
    info = Infra(
        bootstrap=_env_value("KAFKA_BOOTSTRAP"),
        expansion_service=f"127.0.0.1:{_env_value('EXPANSION_PORT')}",
        flink_rest=f"http://127.0.0.1:{rest_port}",
        flink_master=f"127.0.0.1:{rest_port}",
        flink_home=_env_value("FLINK_HOME"),
        flink_conf_dir=_env_value("INFRA_FLINK_CONF_DIR"),   # a second instance's own ($INFRA_CONF_DIR/flink)
        prism_endpoint=f"127.0.0.1:{_env_value('PRISM_JOB_PORT')}" if os.access(prism_bin, os.X_OK) else None,
        flink_job_server_jar=jar if os.path.exists(jar) else None,
        up_seconds=up_seconds,
        pyflink_python=_env_value("PYFLINK_PYTHON"),
        flink_job_jars=tuple(j for j in _env_value("FLINK_JOB_JARS").split(":") if j),
    )
    try:
        yield info
    finally:
        if os.environ.get("INFRA_KEEP_UP") != "1":
            out = subprocess.run(["bash", os.path.join(INFRA, "down.sh")], capture_output=True, text=True, timeout=300)
            print(out.stdout, out.stderr)
            assert out.returncode == 0, f"infra/down.sh left processes:\n{out.stdout}\n{out.stderr}"
            run_dir = os.path.join(CACHE, "run")
            assert not [f for f in os.listdir(run_dir) if f.endswith(".pid")], os.listdir(run_dir)


@pytest.fixture(autouse=True)
def _no_flink_job_left_running(request):
    """A test that used the cluster leaves no job on it: a job left running holds task slots
    and metrics, and the next test's job waits for slots while reading as RUNNING. The
    leftover is cancelled and the test that left it errors at teardown, naming it."""
    yield
    if "infra" not in request.fixturenames:
        return
    infra = request.getfixturevalue("infra")
    try:
        jobs = [j for j in infra.rest("/jobs/overview")["jobs"] if j["state"] not in TERMINAL]
    except OSError:
        return                       # the cluster is down (a test that stopped it says so itself)
    # a job the test cancelled may still be CANCELLING: waited for, not a leftover
    left = [j for j in jobs if j["state"] != "CANCELLING"]
    for job in left:
        infra.rest(f"/jobs/{job['jid']}?mode=cancel", method="PATCH")
    if jobs:
        wait_for(lambda: all(infra.rest(f"/jobs/{j['jid']}")["state"] in TERMINAL for j in jobs),
                 60, "the cancelled jobs to end")
    if left:
        pytest.fail("the test left Flink job(s) on the cluster (now cancelled): "
                    + ", ".join(f"{j['jid']} {j['name']!r} {j['state']}" for j in left), pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(request):
    """A broker for tests that need only Kafka: this infra instance's, if one already answers
    (``infra/kafka.sh start`` alone), else the one the whole ``infra`` fixture starts."""
    from kafka_client import port_open
    bootstrap = _env_value("KAFKA_BOOTSTRAP")
    if port_open(bootstrap):
        return bootstrap
    return request.getfixturevalue("infra").bootstrap

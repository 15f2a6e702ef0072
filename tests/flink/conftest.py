"""Fixtures for the Flink adapter's tests: they run driver scripts in the PyFlink venv.

``flink_job/`` runs only inside the PyFlink venv (apache-flink 2.2.1 with its own Beam),
never in the project venv, so a test here starts a driver script there as a subprocess;
the driver builds a job on a local MiniCluster and prints its results as JSON on its last
stdout line. No session cluster is needed: these tests are not marked ``flink``.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INFRA = os.path.join(REPO, "infra")
DRIVERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drivers")

# A MiniCluster job costs seconds on an idle machine; CI's 2 shared cores are slower.
SLOW_MACHINE_FACTOR = float(os.environ.get("TAPFOLLOW_DEADLINE_FACTOR", "4"))


def _env_value(name: str) -> str:
    """``$name`` as infra/env.sh sets it (an already-exported value wins, as in env.sh)."""
    out = subprocess.run(["bash", "-c", f'source "{INFRA}/env.sh"; printf %s "${name}"'],
                         capture_output=True, text=True, check=True)
    return out.stdout


@pytest.fixture(scope="session")
def pyflink_python() -> str:
    """The PyFlink venv's python (``PYFLINK_PYTHON`` from infra/env.sh); skip if absent.

    ``make test`` runs infra/install.sh first, so in CI the venv exists.
    """
    path = os.environ.get("PYFLINK_PYTHON") or _env_value("PYFLINK_PYTHON")
    if not path:
        pytest.skip("infra/env.sh sets no PYFLINK_PYTHON: the PyFlink venv is not configured")
    if not os.access(path, os.X_OK):
        pytest.skip(f"no PyFlink venv python at {path} (run infra/install.sh to build it)")
    return path


def driver_path(name: str) -> str:
    """The path of the driver script ``tests/flink/drivers/<name>``."""
    return os.path.join(DRIVERS, name)


def run_driver(pyflink_python: str, script_path: str, *args: str, timeout: float = 120,
               result_file: str | None = None) -> dict:
    """Run ``script_path`` in the PyFlink venv (PYTHONPATH = repo root) and return its JSON.

    The JSON is the driver's last stdout line, or the content of ``result_file`` when
    given (pass the same path to the driver in ``args``). ``timeout`` is for an idle
    machine and is stretched by ``TAPFOLLOW_DEADLINE_FACTOR``. Raises AssertionError with
    the driver's stderr when it fails or prints no JSON.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # Flink starts its Python workers as `python` (python.executable's default): the
    # venv's bin first on PATH makes that the venv's interpreter, not the caller's.
    env["PATH"] = os.path.dirname(pyflink_python) + os.pathsep + env.get("PATH", "")
    env["PYFLINK_CLIENT_EXECUTABLE"] = pyflink_python
    env.pop("VIRTUAL_ENV", None)
    try:
        proc = subprocess.run([pyflink_python, script_path, *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout * SLOW_MACHINE_FACTOR)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{script_path} ran over {timeout * SLOW_MACHINE_FACTOR:.0f}s; "
                             f"stderr:\n{(exc.stderr or b'')[-4000:]!r}") from exc
    tail = proc.stderr[-6000:]
    if proc.returncode != 0:
        raise AssertionError(f"{script_path} exited {proc.returncode}; stderr:\n{tail}")
    if result_file is not None:
        with open(result_file) as fh:
            return json.load(fh)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"{script_path} printed nothing; stderr:\n{tail}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{script_path}'s last stdout line is not JSON: {lines[-1][:500]!r}; "
                             f"stderr:\n{tail}") from exc

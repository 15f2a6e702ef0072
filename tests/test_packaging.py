"""Beam ships the project to workers with --setup_file: the sdist must carry every module."""
import glob
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("schemas", "core", "kafka_client", "transforms", "pipelines", "nfc_gateway", "synthetic")


def test_sdist_carries_every_module_of_every_package(tmp_path):
    # What Beam's stager runs for --setup_file.
    subprocess.run([sys.executable, "setup.py", "sdist", "--dist-dir", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    (archive,) = glob.glob(str(tmp_path / "*.tar.gz"))
    with tarfile.open(archive) as tar:
        shipped = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for package in PACKAGES:
        for path in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True):
            assert os.path.relpath(path, ROOT) in shipped, path


def test_beam_is_pinned_to_the_version_of_infra_jars():
    setup = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    env = open(os.path.join(ROOT, "infra", "env.sh"), encoding="utf-8").read()
    import apache_beam
    assert f'"apache-beam=={apache_beam.__version__}"' in setup
    assert f'BEAM_VERSION="${{BEAM_VERSION:-{apache_beam.__version__}}}"' in env

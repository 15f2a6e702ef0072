"""Packaging for the tap-to-follow / local-alerts / DP-statistics pipeline.

Beam ships this file to remote workers with ``--setup_file ./setup.py``; the
same file installs the project locally (``pip install -e .[test]``).
"""
from setuptools import find_packages, setup

# Pinned where a wrong version silently changes results or breaks workers:
# the Beam SDK must equal the job server / expansion-service jars in infra/,
# and h3 v4 renamed its whole API.
INSTALL_REQUIRES = [
    "apache-beam==2.77.0",
    "pyarrow>=16,<27",
    "h3>=4.1,<5",
    "cryptography>=42",
    "faker>=30",
    "nfcpy==1.0.4",
    "pipeline-dp==0.3.1",
    "python-dp==1.1.5",
    "confluent-kafka>=2.16,<3",   # librdkafka: the gateway's producer, tools and tests
    "aiohttp>=3.10,<4",           # the gateway's asyncio HTTP server (and the planned portal and firehose client)
]

TEST_REQUIRES = [
    "pytest>=8",
    "hypothesis>=6.100",
    "prometheus-client>=0.20",    # the reference parser of the Prometheus text format (tests of /metrics)
]

setup(
    name="tapfollow",
    version="0.1.0",
    description=(
        "One Apache Beam pipeline for NFC tap-to-follow, geofenced local alerts "
        "from the Twitter firehose, and user-level differentially private "
        "ultra-local statistics."
    ),
    python_requires=">=3.11",
    packages=find_packages(
        include=["schemas*", "core*", "kafka_client*", "transforms*", "pipelines*", "nfc_gateway*", "synthetic*"]
    ),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)

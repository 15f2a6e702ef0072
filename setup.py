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

# The portal (python -m portal): ASGI stack, server-side templates, the embedded store, metrics.
PORTAL_REQUIRES = [
    "starlette>=0.40,<2",
    "uvicorn>=0.30,<1",
    "jinja2>=3.1,<4",
    "python-multipart>=0.0.9",    # Starlette's form parsing
    "duckdb>=1.1,<3",
    "prometheus-client>=0.20",
]

# `make test` and `make run` install these (the portal's too: `make run` points at it).
TEST_REQUIRES = [
    "pytest>=8",
    "hypothesis>=6.100",
    "prometheus-client>=0.20",    # the reference parser of the Prometheus text format (tests of /metrics)
    "httpx>=0.27,<1",             # the portal's HTTP-level tests
    "selenium>=4.20,<5",          # the portal's browser tests (Debian's chromium + chromedriver: infra/browser.sh)
] + PORTAL_REQUIRES

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
        include=["schemas*", "core*", "kafka_client*", "transforms*", "pipelines*", "nfc_gateway*", "synthetic*",
                 "portal*"]
    ),
    package_data={"portal": ["templates/*.html"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "portal": PORTAL_REQUIRES},
)

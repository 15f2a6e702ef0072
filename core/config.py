"""The one configuration layer of a run (engine-neutral: no Beam, no launcher).

``DEFAULT_KAFKA_BOOTSTRAP``: the Kafka bootstrap default, set once (``$KAFKA_BOOTSTRAP``,
else 127.0.0.1:9092) for the launcher, ``kafka_client`` and the gateway's tools.
"""
from __future__ import annotations

import os

DEFAULT_KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")


class ConfigError(ValueError):
    """A bad flag or configuration: ``pipelines.run`` prints it as one line and exits 2."""

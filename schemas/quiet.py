"""Keep one misleading line out of every run's output.

Importing ``apache_beam`` logs, on the root logger, "apitools not found, and
bigquery client libraries are not available" (Beam 2.77's BigQuery client
stub). This project does not use BigQuery, so the line is only noise at the top
of every command's output. The filter drops exactly that message; every other
warning, Beam's included, still shows.
"""
from __future__ import annotations

import logging

_MESSAGE = "apitools not found, and bigquery client libraries are not available"


class _BeamImportNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and str(record.msg).startswith(_MESSAGE))


def install() -> None:
    """Idempotent: at most one such filter on the root logger."""
    root = logging.getLogger()
    if not any(isinstance(f, _BeamImportNoise) for f in root.filters):
        root.addFilter(_BeamImportNoise())

"""The DP release schedule of a run: which hours ``ReleaseDpStatistics`` publishes.

The released hours must never depend on the data (an hour released only because
somebody pinged in it tells that somebody was there), so they come from public
configuration only, in this order:

1. ``--dp_first_hour`` and ``--dp_last_hour`` (RFC 3339 hour starts, both included);
2. the ``world.json`` beside the input files (``synthetic.world`` writes it, and
   ``pipelines.run`` without ``--input`` generates such a world): every hour the
   world's period ``[start, end)`` touches;
3. otherwise the run is refused (exit 2): there is no data-independent way to
   guess the period of arbitrary input files, and guessing it from their
   timestamps is exactly the leak this avoids.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Tuple

from core.config import ConfigError
from schemas.timefmt import parse_rfc3339
from core import dp_accounting as acct
from core.dp_stats import DpParams

WORLD_MANIFEST = "world.json"


def world_period(input_dir: Optional[str]) -> Optional[Tuple[float, float]]:
    """[start, end) from ``input_dir/world.json``; None when there is none."""
    if not input_dir:
        return None
    path = os.path.join(input_dir, WORLD_MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            period = json.load(handle)["period"]
        return parse_rfc3339(period["start"], "period.start"), parse_rfc3339(period["end"], "period.end")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a world manifest ({exc}); fix it, or give --dp_first_hour "
                          f"and --dp_last_hour") from None


def with_release_schedule(dp: DpParams, input_dir: Optional[str]) -> DpParams:
    """``dp`` with its schedule set (flags first, then world.json); ConfigError if neither."""
    if dp.schedule() is not None:
        return dp
    period = world_period(input_dir)
    if period is None:
        raise ConfigError("no DP release schedule: give --dp_first_hour and --dp_last_hour (RFC 3339 "
                          "hour starts, e.g. 2026-11-20T03:00:00Z), or an --input with a world.json; "
                          "the released hours must not come from the data")
    try:
        return dp.with_schedule(*acct.schedule_of_period(*period))
    except ValueError as exc:
        raise ConfigError(f"{os.path.join(input_dir, WORLD_MANIFEST)}: {exc}") from None

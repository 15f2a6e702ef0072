"""The generator's parameters: defaults and the checks that reject a bad world request.

Kept apart from ``synthetic.world`` (which imports Beam through
``schemas.records``) so the command line can refuse bad arguments at once.
"""
from __future__ import annotations

import math
import os

from schemas.timefmt import parse_rfc3339

DEFAULT_USERS = 1000
DEFAULT_HOURS = 24
DEFAULT_SEED = 42
DEFAULT_START = "2026-11-20T00:00:00+09:00"
MAX_HOURS = 24 * 31


def check_params(users, hours, seed, start) -> float:
    """The window's start in epoch seconds; ValueError with a one-line reason for
    arguments no world can be built from."""
    if isinstance(users, bool) or not isinstance(users, int) or users < 2:
        raise ValueError(f"--users must be an integer >= 2 (a touch needs two people), got {users!r}")
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not math.isfinite(hours) or hours <= 0:
        raise ValueError(f"--hours must be > 0, got {hours!r}")
    if hours > MAX_HOURS:
        raise ValueError(f"--hours must be at most {MAX_HOURS} (one month), got {hours!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"--seed must be an integer, got {seed!r}")
    if isinstance(start, (int, float)) and not isinstance(start, bool):
        return float(start)
    return parse_rfc3339(start, "--start")  # InvalidRecord is a ValueError


def prepare_output_dir(out_dir: str) -> None:
    """Create ``out_dir`` and ``out_dir/truth``; OSError if they cannot be written."""
    truth = os.path.join(out_dir, "truth")
    os.makedirs(truth, exist_ok=True)
    for path in (out_dir, truth):
        if not os.access(path, os.W_OK):  # (always passes for root; makedirs above still fails on a bad path)
            raise PermissionError(f"output directory {path!r} is not writable")

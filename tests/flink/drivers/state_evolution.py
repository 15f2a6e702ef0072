"""Driver: keyed state written by the old code, read back by new code whose state class has
an added field (a job upgraded from a savepoint).

The ordered host's state (``flink_job.ordered._RunTicks``: ``[done_until, gc_at, {tick:
[messages]}, processor state]``) is a ``PICKLED_BYTE_ARRAY`` value: PyFlink stores it with
``CloudPickleCoderImpl`` (cloudpickle, importable classes by reference). Here the real coder
writes a state holding ``core.dp_stats.DayState``; the class is then replaced by one with an
added, defaulted field (what an upgrade ships); the same bytes are read back and run through
the real processor. Prints JSON: what was read.
"""
import json
import sys
from typing import NamedTuple, Optional

from pyflink.fn_execution.coder_impl_slow import CloudPickleCoderImpl
from pyflink.fn_execution.stream_slow import InputStream, OutputStream

import core.dp_bounding as bnd
import core.dp_stats as dp_stats


def encode(value) -> bytes:
    out = OutputStream()
    CloudPickleCoderImpl().encode_to_stream(value, out)
    return out.get()


def decode(data: bytes):
    return CloudPickleCoderImpl().decode_from_stream(InputStream(data))


def main() -> int:
    old = dp_stats.DayState(day_end=7200.0, used=bnd.DayUse(hours=2, presence=3, tweets=1, touches=0))
    held = [3600.0, 7199, {3600000: ["pending"]}, old]
    stored = encode(held)

    class DayState(NamedTuple):          # the upgrade: one field added, with a default
        day_end: Optional[float] = None
        used: bnd.DayUse = bnd.DayUse()
        carried_over: int = 0
    DayState.__module__, DayState.__qualname__ = dp_stats.DayState.__module__, "DayState"
    dp_stats.DayState = DayState

    back = decode(stored)
    state = back[3]

    class StrictDayState(NamedTuple):    # an added field without a default cannot read old state
        day_end: Optional[float]
        used: bnd.DayUse
        carried_over: int
    StrictDayState.__module__, StrictDayState.__qualname__ = dp_stats.DayState.__module__, "DayState"
    dp_stats.DayState = StrictDayState
    try:
        decode(stored)
        strict_error = None
    except TypeError as exc:
        strict_error = str(exc)
    dp_stats.DayState = DayState
    processor = dp_stats.SpendUserDay(max_hours=4, max_cells_per_day=10)
    print(json.dumps({
        "new_class": type(state) is DayState,
        "day_end": state.day_end, "used": list(state.used), "carried_over": state.carried_over,
        "host": back[:2] + [{str(k): v for k, v in back[2].items()}],
        "expire_before_end": processor.expire(state, 3600.0) is state,
        "expire_at_end": processor.expire(state, 7200.0),
        "gc_time": processor.gc_time(state),
        "strict_error": strict_error,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-device flood control: a token bucket per reporting device.

A person touches phones a few times a minute at most; a device sending more
than ``burst`` reports at once, or more than ``rate`` per second sustained, is
broken or hostile. ``check(key)`` answers whether one more report is allowed
now and, if not, after how many seconds it would be (the ``Retry-After``).
Idle buckets are dropped once full again, so memory follows active devices,
and at most ``max_keys`` buckets are ever held: past that, the least recently
used one is forgotten (it starts full again if its key comes back), so many
source addresses cannot grow the table without bound.
The same buckets, keyed by client address, bound what one network source may
store; ``cost`` charges a report by its size (``report_cost``: one token per
started KiB), so a bucket bounds bytes as well as reports. Keyed by client
address again, they bound the *refusals* one source may cause (``peek`` asks
without spending).
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Callable


class TokenBuckets:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 1_000_000):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # key -> (tokens, last refill), LRU order
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def check(self, key: str, cost: float = 1.0) -> tuple[bool, float]:
        """(allowed, seconds until allowed); consumes ``cost`` tokens when allowed.

        A cost above ``burst`` can never be allowed: the wait is then for a full bucket,
        and callers should refuse such requests outright."""
        now = self.clock()
        cost = min(float(cost), self.burst)
        with self._lock:
            tokens = self._tokens(key, now)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                allowed, wait = True, 0.0
            else:
                self._buckets[key] = (tokens, now)
                allowed, wait = False, (cost - tokens) / self.rate
            self._buckets.move_to_end(key)
            if now - self._last_sweep > self.burst / self.rate:
                self._sweep(now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)           # the least recently used bucket
        return allowed, wait

    def peek(self, key: str, cost: float = 1.0) -> tuple[bool, float]:
        """What ``check`` would answer, without spending anything or adding a bucket."""
        now = self.clock()
        cost = min(float(cost), self.burst)
        with self._lock:
            tokens = self._tokens(key, now)
        return (True, 0.0) if tokens >= cost else (False, (cost - tokens) / self.rate)

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def _sweep(self, now: float):
        full_after = self.burst / self.rate
        self._buckets = OrderedDict((k, v) for k, v in self._buckets.items() if now - v[1] < full_after)
        self._last_sweep = now

    def __len__(self):
        return len(self._buckets)


def retry_after_header(wait_s: float) -> str:
    """HTTP Retry-After is whole seconds; round up so a client that obeys is let in."""
    return str(max(1, math.ceil(wait_s)))


def report_cost(line_bytes: int, unit: int = 1024) -> int:
    """Tokens one stored report costs: one per started ``unit`` bytes of its line."""
    return max(1, -(-line_bytes // unit))

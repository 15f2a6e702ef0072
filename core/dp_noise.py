"""Noise for the marketing statistics, from Google's DP library (through ``python-dp``).

``SecureGaussianNoise`` is the only noise the pipeline uses: each draw comes
from ``pydp``'s ``GaussianMechanism`` (Google's C++ differential-privacy
library), which samples with a cryptographically secure generator and a
discretised Gaussian that is safe against floating-point attacks (Mironov
2012) — never Python's ``random`` or NumPy. The accountant
(``core.dp_accounting``) decides the standard deviation; this module
only draws it.

Tests need reproducible values (e.g. "opted-out users change nothing"), so
``NoNoiseForTests`` exists. It is deliberately impossible to pick by accident:
it is not a ``DpParams`` field and therefore never a command-line flag; it
must be passed as an object to ``ReleaseDpStatistics(params, noise=...)``; its
constructor refuses to run unless told ``for_tests_only=True``; and every row
it touches says ``mechanism="none (TEST ONLY: not private)"``.
"""
from __future__ import annotations

from typing import Callable, Dict

# z such that P(|N(0, 1)| <= z) = 0.95.
Z95 = 1.959963984540054


def ci95_halfwidth(stddev: float) -> float:
    """Half-width of the 95 % interval of Gaussian noise of this standard deviation."""
    return Z95 * stddev


class SecureGaussianNoise:
    """Gaussian noise of a given standard deviation, drawn by Google's DP library."""

    mechanism = "gaussian"

    def __init__(self):
        self._mechanisms: Dict[float, object] = {}

    def __getstate__(self):
        # pydp mechanisms are native objects that cannot be pickled; each worker makes its own.
        return {}

    def __setstate__(self, state):
        self._mechanisms = {}

    def sampler(self, stddev: float) -> Callable[[float], float]:
        """A function value -> value + N(0, stddev²), one fresh secure draw per call."""
        if not stddev > 0:
            raise ValueError(f"noise stddev must be > 0, got {stddev}")
        mechanism = self._mechanisms.get(stddev)
        if mechanism is None:
            from pydp.algorithms.numerical_mechanisms import GaussianMechanism
            mechanism = GaussianMechanism.create_from_standard_deviation(stddev)
            self._mechanisms[stddev] = mechanism
        # float(): the library returns an int when given an int.
        return lambda value: float(mechanism.add_noise(float(value)))


class NoNoiseForTests:
    """Adds nothing. Only for tests that compare exact values; never private."""

    mechanism = "none (TEST ONLY: not private)"

    def __init__(self, *, for_tests_only: bool = False):
        if for_tests_only is not True:
            raise RuntimeError(
                "NoNoiseForTests releases exact counts; construct it only in tests, "
                "with for_tests_only=True")

    def sampler(self, stddev: float) -> Callable[[float], float]:
        return float

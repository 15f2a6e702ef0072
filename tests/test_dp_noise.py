"""Noise: the library's draws have the declared scale; the test-only backend is hard to misuse.

Tolerances. With n draws of N(0, σ²), the sample standard deviation has
relative standard error 1/sqrt(2n) (0.5 % at n = 20 000) and the sample excess
kurtosis standard error sqrt(24/n) (0.035). A 3 % band on σ is 6 standard
errors (a false alarm about once in 10⁹ runs) yet catches every plausible bug
(σ² instead of σ, a Laplace scale b = σ gives sqrt(2)·σ, a sensitivity
forgotten); a ±0.3 band on the excess kurtosis (Laplace has 3) tells a
Gaussian from a Laplace.
"""
import math
import pickle
import statistics

import pytest

from core.dp_noise import NoNoiseForTests, SecureGaussianNoise, ci95_halfwidth

N = 20_000


@pytest.mark.parametrize("stddev", [1.0, 32.7242219628738, 250.0])
def test_library_noise_has_the_declared_stddev(stddev):
    add_noise = SecureGaussianNoise().sampler(stddev)
    draws = [add_noise(0.0) for _ in range(N)]
    mean = statistics.fmean(draws)
    sd = statistics.pstdev(draws)
    assert abs(mean) < 5 * stddev / math.sqrt(N)
    assert sd == pytest.approx(stddev, rel=0.03)
    kurtosis = statistics.fmean(((x - mean) / sd) ** 4 for x in draws) - 3.0
    assert abs(kurtosis) < 0.3
    inside = sum(1 for x in draws if abs(x) <= ci95_halfwidth(stddev)) / N
    assert inside == pytest.approx(0.95, abs=0.01)  # binomial SE 0.0015


def test_noise_is_added_to_the_value_and_fresh_each_draw():
    add_noise = SecureGaussianNoise().sampler(1.0)
    draws = {add_noise(100) for _ in range(50)}
    assert len(draws) == 50
    assert all(isinstance(x, float) and 90 < x < 110 for x in draws)


def test_secure_noise_pickles_for_workers_even_after_use():
    noise = SecureGaussianNoise()
    noise.sampler(3.0)(0.0)
    copy = pickle.loads(pickle.dumps(noise))
    assert copy.sampler(3.0)(0.0) != 0.0


def test_zero_noise_needs_an_explicit_test_only_opt_in_and_says_so():
    with pytest.raises(RuntimeError, match="only in tests"):
        NoNoiseForTests()
    with pytest.raises(RuntimeError):
        NoNoiseForTests(for_tests_only="yes")
    noise = NoNoiseForTests(for_tests_only=True)
    assert noise.sampler(10.0)(7) == 7.0
    assert "TEST ONLY" in noise.mechanism


def test_secure_noise_refuses_no_noise():
    with pytest.raises(ValueError, match="must be > 0"):
        SecureGaussianNoise().sampler(0.0)


def test_ci95_halfwidth():
    assert ci95_halfwidth(10.0) == pytest.approx(19.59964, rel=1e-6)

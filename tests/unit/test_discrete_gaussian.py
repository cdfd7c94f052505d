"""The discrete Gaussian sampler draws N_Z(0, sigma^2) deterministically from its key; the KLS bound, the effective
noise multiplier and the integer sensitivities are what tffprod.privacy.discrete_gaussian says they are."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from scipy import special

from tffprod.privacy.discrete_gaussian import (MAX_SIGMA, effective_noise_multiplier, integer_sensitivity, kls_epsilon,
                                               sample, share_sigma)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
# A goodness-of-fit test on the fixed key's draws: with a correct sampler, p below this has this probability.
P_FLOOR = 1e-4


def discrete_gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """P(x) for x in ``support``, normalized by summing exp(-x^2 / (2 sigma^2)) over |x| <= 40 sigma + 10."""
    wide = np.arange(-math.ceil(40 * sigma) - 10, math.ceil(40 * sigma) + 11)
    norm = math.fsum(np.exp(-(wide.astype(np.float64) ** 2) / (2 * sigma**2)))
    return np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma**2)) / norm


@pytest.mark.parametrize("sigma", [1.0, 3.5, 40.0])
def test_the_draws_follow_the_discrete_gaussian_pmf(sigma):
    draws = sample(KEY, 200_000, sigma)
    assert draws.dtype == np.int64 and draws.shape == (200_000,)
    # The central bins (expected count >= 20) each on their own, the two tails lumped into the outermost bins.
    support = np.arange(-math.ceil(8 * sigma), math.ceil(8 * sigma) + 1)
    high = int(support[discrete_gaussian_pmf(sigma, support) * draws.size >= 20].max())
    bins = np.arange(-high, high + 1)
    probs = discrete_gaussian_pmf(sigma, bins)
    probs[[0, -1]] = (1 - probs[1:-1].sum()) / 2  # P(X <= -high) = P(X >= high)
    observed = np.bincount(np.clip(draws, -high, high) + high, minlength=bins.size)
    expected = probs * draws.size
    statistic = float(((observed - expected) ** 2 / expected).sum())
    p = float(special.chdtrc(bins.size - 1, statistic))
    assert p > P_FLOOR, f"sigma={sigma}: chi-square p={p:.2e} over {bins.size} bins"


def test_mean_and_variance_at_a_large_sigma():
    sigma, n = 1e5, 200_000
    draws = sample(KEY, n, sigma).astype(np.float64)
    assert abs(draws.mean()) < 5 * sigma / math.sqrt(n)
    assert abs(draws.var() / sigma**2 - 1) < 5 * math.sqrt(2 / n)


def test_the_largest_sigma_is_supported():
    draws = sample(KEY, 20_000, MAX_SIGMA).astype(np.float64)
    assert abs(draws.std() / MAX_SIGMA - 1) < 0.05


def test_same_key_same_draws_other_key_other_draws():
    first = sample(KEY, 5_000, 3.5)
    assert np.array_equal(first, sample(KEY, 5_000, 3.5))
    assert np.array_equal(first[:1234], sample(KEY, 1234, 3.5))  # a shorter request is a prefix
    assert (first != sample(OTHER_KEY, 5_000, 3.5)).mean() > 0.5
    assert sample(KEY, 0, 2.0).shape == (0,)


@pytest.mark.parametrize("sigma", [0.99, 0, -1.0, math.nan, math.inf, MAX_SIGMA * 1.01, True, "3"])
def test_sigma_out_of_range_is_refused(sigma):
    with pytest.raises(ValueError, match="sigma must be a number in"):
        sample(KEY, 10, sigma)


def test_bad_key_or_count_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        sample(KEY[:31], 10, 2.0)
    with pytest.raises(ValueError, match="count"):
        sample(KEY, -1, 2.0)


def test_kls_epsilon_is_the_gaussian_one_when_tau_underflows():
    l2, l1 = integer_sensitivity(clip=1.0, scale=2.0**10, dim=1000)
    for s, n in ((40.0, 2), (1e4, 7), (3e6, 100)):
        assert kls_epsilon(s, n, l2, l1) == l2 / (math.sqrt(n) * s)
        assert effective_noise_multiplier(s, n, l2, l1) == 1 / (l2 / (math.sqrt(n) * s))


def test_kls_epsilon_is_larger_for_a_small_share_sigma():
    s, n, l2, l1 = 0.6, 5, 3.0, 9.0
    tau = 10 * sum(math.exp(-2 * math.pi**2 * s**2 * k / (k + 1)) for k in range(1, n))
    gaussian = l2 / (math.sqrt(n) * s)
    expected = min(math.sqrt(gaussian**2 + 2 * tau * l1), gaussian + tau * l1)
    assert tau > 0.01
    assert kls_epsilon(s, n, l2, l1) == pytest.approx(expected, rel=1e-12)
    assert kls_epsilon(s, n, l2, l1) > gaussian * 1.001
    assert kls_epsilon(s, 1, l2, l1) == l2 / s  # one share: tau is an empty sum


@pytest.mark.parametrize("args", [(0.49, 5, 3.0, 9.0), (1.0, 0, 3.0, 9.0), (1.0, 2, 0.0, 9.0), (1.0, 2, 3.0, -1.0),
                                  (math.nan, 2, 3.0, 9.0), (1.0, 2.0, 3.0, 9.0)])
def test_kls_epsilon_refuses_bad_arguments(args):
    with pytest.raises(ValueError):
        kls_epsilon(*args)


def test_the_effective_noise_multiplier_composes_as_zcdp_in_dp_accounting():
    clip, scale, dim, shares, rounds, delta = 1.0, 2.0**12, 10_000, 4, 250, 1e-5
    s = share_sigma(1.1, clip, scale, dim, shares)
    l2, l1 = integer_sensitivity(clip, scale, dim)
    z_eff = effective_noise_multiplier(s, shares, l2, l1)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z_eff), rounds))
    # Independently: one round is (eps^2 / 2)-zCDP with eps = l2 / (sqrt(n) s); zCDP composes by adding rho.
    rho = rounds * (l2 / (math.sqrt(shares) * s)) ** 2 / 2
    reference = dp_accounting.rdp.RdpAccountant()
    reference.compose(dp_accounting.GaussianDpEvent(1 / math.sqrt(2 * rho)))
    assert accountant.get_epsilon(delta) == pytest.approx(reference.get_epsilon(delta), rel=1e-6)
    assert z_eff == pytest.approx(1.1, rel=1e-12)  # the sum's stddev is 1.1 * l2


@pytest.mark.parametrize("clip, scale, dim", [(1.0, 3.0, 1), (0.5, 0.7, 7), (2.0, 40.0, 100), (1e-3, 1.0, 30)])
def test_integer_sensitivity_bounds_the_rounded_difference(clip, scale, dim):
    rng = np.random.default_rng(dim)
    trials = 4_000
    base = rng.normal(scale=50.0, size=(trials, dim))
    # Half the trials put every coordinate of scale * base just below a rounding boundary, the worst case.
    base[::2] = (np.floor(base[::2] * scale) + 0.5 - 1e-9) / scale
    direction = rng.normal(size=(trials, dim))
    direction[::2] = np.abs(direction[::2])
    update = direction / np.linalg.norm(direction, axis=1, keepdims=True) * clip * rng.uniform(0.5, 1, (trials, 1))
    diff = np.rint(scale * (base + update)) - np.rint(scale * base)
    l2, l1 = integer_sensitivity(clip, scale, dim)
    assert l2 == clip * scale + math.sqrt(dim) and l1 == min(math.sqrt(dim) * l2, l2**2)
    assert np.linalg.norm(diff, axis=1).max() <= l2
    assert np.abs(diff).sum(axis=1).max() <= l1


def test_share_sigma_splits_the_stddev_over_the_shares():
    l2, _ = integer_sensitivity(1.0, 100.0, 64)
    assert share_sigma(0.8, 1.0, 100.0, 64, 9) == pytest.approx(0.8 * l2 / 3, rel=1e-15)
    with pytest.raises(ValueError):
        share_sigma(0.8, 1.0, 100.0, 64, 0)
    with pytest.raises(ValueError):
        integer_sensitivity(1.0, 0.0, 64)

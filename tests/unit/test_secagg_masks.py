"""Masks: the PRG is deterministic, separated by seed and label, in range and uniform mod 2**bits; the modular
arithmetic is exact up to 62 bits. :func:`assert_uniform` is the chi-square check the protocol tests use too."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tffprod.privacy.secagg import SecAggError, add_mod, prg, sub_mod
from tffprod.privacy.secagg.masks import check_vector

SEED = bytes(range(32))
# A uniformity check wrongly fails a uniform vector with probability at most this.
FALSE_FAILURE = 1e-6


def chi_square_p_bound(counts: np.ndarray) -> float:
    """An upper bound of the chi-square test's p-value for ``counts`` against equal expected counts.

    The statistic's tail is computed exactly for the smallest even number of degrees of freedom that is at
    least ``len(counts) - 1`` (the chi-square law with more degrees of freedom has the heavier tail), from
    P(chi2_2m > x) = exp(-x/2) * sum_{k<m} (x/2)**k / k!.
    """
    expected = counts.sum() / len(counts)
    statistic = float(((counts - expected) ** 2).sum() / expected)
    m = math.ceil((len(counts) - 1) / 2)
    term = total = math.exp(-statistic / 2)
    for k in range(1, m):
        term *= statistic / 2 / k
        total += term
    return min(1.0, total)


def bucket_counts(values: np.ndarray, bits: int, buckets_log2: int = 8) -> np.ndarray:
    """How many ``values`` (below 2**bits) fall in each of 2**min(bits, buckets_log2) equal buckets (top bits)."""
    used = min(bits, buckets_log2)
    return np.bincount((values >> np.uint64(bits - used)).astype(np.int64), minlength=2**used)


def assert_uniform(values: np.ndarray, bits: int) -> None:
    """Fails if the chi-square test rejects "uniform mod 2**bits" at level :data:`FALSE_FAILURE`."""
    assert values.dtype == np.uint64 and int(values.max()) < 2**bits
    p = chi_square_p_bound(bucket_counts(values, bits))
    assert p > FALSE_FAILURE, f"not uniform mod 2**{bits}: chi-square p-value <= {p:.3g}"


def test_the_p_value_bound_matches_known_quantiles_and_rejects_skew() -> None:
    assert chi_square_p_bound(np.full(256, 100)) == 1.0
    # chi2 with 2 degrees of freedom: P(> x) = exp(-x/2) exactly.
    assert chi_square_p_bound(np.array([150, 50, 100])) == pytest.approx(math.exp(-50 / 2))
    # The 1 - 1e-6 quantile of chi2 with 256 degrees of freedom is about 379.5 (Wilson-Hilferty).
    z, df = 4.7534, 256
    quantile = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    assert 0.5e-6 < chi_square_p_bound(_counts_with_statistic(quantile, 257)) < 2e-6
    skewed = prg(SEED, 1 << 15, 20) >> np.uint64(1)  # the top half of the range is never hit
    with pytest.raises(AssertionError, match="not uniform"):
        assert_uniform(skewed, 20)


def _counts_with_statistic(statistic: float, buckets: int) -> np.ndarray:
    """Counts over ``buckets`` (expected 10**6 each) whose chi-square statistic is ``statistic``."""
    expected = 10**6
    counts = np.full(buckets, float(expected))
    shift = math.sqrt(statistic * expected / 2)
    counts[0] += shift
    counts[1] -= shift
    return counts


@pytest.mark.parametrize("bits", [1, 3, 8, 20, 32, 62])
def test_prg_output_is_in_range_and_uniform(bits: int) -> None:
    values = prg(SEED, 1 << 15, bits, label=b"uniformity")
    assert values.dtype == np.uint64 and values.shape == (1 << 15,) and values.flags.writeable
    assert_uniform(values, bits)
    assert int(values.max()) == 2**bits - 1 or bits > 16  # small moduli: every value occurs


def test_prg_is_a_function_of_seed_and_label_only() -> None:
    first = prg(SEED, 1000, 40, label=b"a")
    assert np.array_equal(first, prg(SEED, 1000, 40, label=b"a"))
    assert np.array_equal(first[:10], prg(SEED, 10, 40, label=b"a"))  # a prefix of the same stream
    for other in (prg(SEED, 1000, 40, label=b"b"), prg(bytes(31) + b"\x01", 1000, 40, label=b"a")):
        assert np.count_nonzero(first == other) < 5
    # Fewer bits keep the low bits of the same 64-bit words.
    assert np.array_equal(prg(SEED, 1000, 12, label=b"a"), first & np.uint64(2**12 - 1))
    assert prg(SEED, 0, 40).shape == (0,)


@pytest.mark.parametrize(("seed", "length", "bits", "match"), [
    (bytes(31), 4, 8, "32 bytes"), ("x" * 32, 4, 8, "32 bytes"), (SEED, -1, 8, "length"),
    (SEED, 4, 0, "bits"), (SEED, 4, 63, "bits"), (SEED, 4, True, "bits"),
])
def test_prg_refuses_bad_arguments(seed, length, bits, match: str) -> None:
    with pytest.raises(SecAggError, match=match):
        prg(seed, length, bits)


@pytest.mark.parametrize("bits", [1, 2, 31, 61, 62])
def test_modular_sums_and_differences_are_exact(bits: int) -> None:
    top = 2**bits - 1
    rng = np.random.default_rng(bits)
    a = np.concatenate([rng.integers(0, top, 500, dtype=np.uint64, endpoint=True),
                        np.array([0, top, top, 0], dtype=np.uint64)])
    b = np.concatenate([rng.integers(0, top, 500, dtype=np.uint64, endpoint=True),
                        np.array([top, top, 0, 0], dtype=np.uint64)])
    total, difference = add_mod(a, b, bits), sub_mod(a, b, bits)
    assert [int(v) for v in total] == [(int(x) + int(y)) % 2**bits for x, y in zip(a, b)]
    assert [int(v) for v in difference] == [(int(x) - int(y)) % 2**bits for x, y in zip(a, b)]
    assert np.array_equal(sub_mod(total, b, bits), a) and np.array_equal(add_mod(difference, b, bits), a)


def test_a_vector_is_checked_for_type_shape_and_range_without_echoing_it() -> None:
    good = np.array([0, 5, 255], dtype=np.uint64)
    assert check_vector(good, 3, 8, "site-a") is good
    cases = [(good.astype(np.int64), "not a numpy uint64 array"), ([0, 5, 255], "not a numpy uint64 array"),
             (good[:2], r"shape \(2,\), expected \(3,\)"), (good.reshape(3, 1), "shape"),
             (np.array([0, 5, 256], dtype=np.uint64), r"entries outside 0..2\*\*8-1")]
    for values, match in cases:
        with pytest.raises(SecAggError, match=f"participant 'site-a': the input .*{match}") as caught:
            check_vector(values, 3, 8, "site-a")
        assert "256" not in str(caught.value) and "255" not in str(caught.value)

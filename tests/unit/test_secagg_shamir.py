"""Shamir sharing over GF(2**521 - 1): any t shares recover a 32-byte secret, fewer do not, bad shares are refused."""

from __future__ import annotations

import itertools
import secrets

import pytest

from tffprod.privacy.secagg import SecAggError, combine, split
from tffprod.privacy.secagg.shamir import PRIME, SHARE_BYTES

XS = [1, 2, 3, 4, 5]


def test_the_field_is_the_mersenne_prime_above_every_secret() -> None:
    assert PRIME == 2**521 - 1 and PRIME > 2**256 and SHARE_BYTES == 66
    assert all(pow(a, PRIME - 1, PRIME) == 1 for a in (2, 3, 5, 7, 2**300 + 1))  # Fermat: a prime, as far as it sees


@pytest.mark.parametrize("threshold", [1, 2, 3, 4, 5])
def test_every_subset_of_threshold_shares_and_more_recovers_the_secret(threshold: int) -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, threshold, XS)
    assert sorted(shares) == XS and all(0 <= y < PRIME for y in shares.values())
    for size in range(threshold, len(XS) + 1):
        for subset in itertools.combinations(XS, size):
            assert combine({x: shares[x] for x in subset}, threshold) == secret


@pytest.mark.parametrize("threshold", [2, 3, 5])
def test_fewer_than_threshold_shares_are_refused(threshold: int) -> None:
    shares = split(secrets.token_bytes(32), threshold, XS)
    for subset in itertools.combinations(XS, threshold - 1):
        with pytest.raises(SecAggError, match=f"{threshold - 1} shares cannot recover a secret shared {threshold}"):
            combine({x: shares[x] for x in subset}, threshold)


def test_edge_secrets_and_sparse_x_coordinates() -> None:
    xs = [1, 7, 1000, 2**40]
    for secret in (bytes(32), b"\xff" * 32, b"\x00" * 31 + b"\x01"):
        shares = split(secret, 3, xs)
        assert combine({x: shares[x] for x in xs[1:]}, 3) == secret


def test_threshold_one_gives_everyone_the_secret_and_higher_thresholds_hide_it() -> None:
    secret = secrets.token_bytes(32)
    assert set(split(secret, 1, XS).values()) == {int.from_bytes(secret, "big")}
    shares = split(secret, 2, XS)
    assert int.from_bytes(secret, "big") not in shares.values()
    assert split(secret, 2, XS) != shares  # fresh coefficients each time


def test_a_share_off_the_polynomial_is_caught_when_there_are_spare_shares() -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, 3, XS)
    bad = dict(shares)
    bad[4] = (bad[4] + 1) % PRIME
    with pytest.raises(SecAggError, match="x=4 does not lie on the polynomial"):
        combine(bad, 3)
    # With exactly t shares nothing can be cross-checked, but the result is no 32-byte secret (whp).
    with pytest.raises(SecAggError, match="do not combine to a 32-byte secret"):
        combine({x: bad[x] for x in (1, 2, 4)}, 3)


@pytest.mark.parametrize(("secret", "threshold", "xs", "match"), [
    (b"short", 2, XS, "must be 32 bytes"),
    (bytes(33), 2, XS, "must be 32 bytes"),
    (bytes(32), 0, XS, "threshold must be a whole number in 1..5"),
    (bytes(32), 6, XS, "threshold must be a whole number in 1..5"),
    (bytes(32), True, XS, "threshold"),
    (bytes(32), 2, [0, 1, 2], "x-coordinate must be a whole number in 1..p-1"),
    (bytes(32), 2, [1, PRIME], "x-coordinate"),
    (bytes(32), 2, [1, 2, 2], "not distinct"),
])
def test_split_refuses_bad_arguments(secret: bytes, threshold: int, xs: list[int], match: str) -> None:
    with pytest.raises(SecAggError, match=match):
        split(secret, threshold, xs)


def test_combine_refuses_malformed_shares() -> None:
    shares = split(bytes(32), 2, XS)
    with pytest.raises(SecAggError, match="x=2 is not an element"):
        combine({1: shares[1], 2: PRIME}, 2)
    with pytest.raises(SecAggError, match="x=2 is not an element"):
        combine({1: shares[1], 2: -1}, 2)
    with pytest.raises(SecAggError, match="x-coordinate"):
        combine({0: 5, 1: shares[1]}, 2)
    with pytest.raises(SecAggError, match="threshold"):
        combine(shares, 0)

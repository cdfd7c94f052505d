"""t-of-n Shamir secret sharing of 32-byte secrets over GF(p), p = 2**521 - 1.

A secret s (a 256-bit integer, big-endian) is the constant term of a random polynomial f of
degree t - 1 over GF(p); a share is ``(x, f(x))`` for a non-zero x (in a round: the holder's index
+ 1). Any t shares determine f(0) = s by Lagrange interpolation; any t - 1 of them are uniformly
distributed and independent of s. p is a Mersenne prime larger than every 256-bit secret, and the
random coefficients come from :mod:`secrets`. More than t shares are checked against one another:
shares that do not lie on one polynomial of degree t - 1 are refused rather than combined.
"""

from __future__ import annotations

import secrets
from typing import Mapping, Sequence

from tffprod.privacy.secagg.errors import SecAggError

__all__ = ["PRIME", "SECRET_BYTES", "SHARE_BYTES", "combine", "split"]

PRIME = 2**521 - 1
SECRET_BYTES = 32
# A share value (an element of GF(p)) as big-endian bytes.
SHARE_BYTES = (PRIME.bit_length() + 7) // 8


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Share ``secret`` among the points ``xs`` so that any ``threshold`` shares recover it.

    Args:
        secret: exactly 32 bytes.
        threshold: how many shares recover the secret (1 <= threshold <= len(xs)).
        xs: the distinct, non-zero x-coordinates of the shares (below p).

    Returns:
        ``{x: f(x)}`` for every x of ``xs``.

    Raises:
        SecAggError: ``secret`` is not 32 bytes, ``threshold`` is out of range, or ``xs`` are not valid points.
    """
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise SecAggError(f"a shared secret must be {SECRET_BYTES} bytes")
    points = _check_points(xs)
    _check_threshold(threshold, len(points))
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x) for x in points}


def combine(shares: Mapping[int, int], threshold: int) -> bytes:
    """The 32-byte secret that ``shares`` (``{x: f(x)}``, at least ``threshold`` of them) are shares of.

    The first ``threshold`` shares (by x) are interpolated at 0; any further share must lie on the
    same polynomial.

    Raises:
        SecAggError: fewer than ``threshold`` shares, malformed shares, shares of different polynomials,
            or a result that is not a 32-byte secret (shares of something else).
    """
    points = _check_points(list(shares))
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise SecAggError(f"the threshold must be a positive whole number, got {threshold!r}")
    if len(points) < threshold:
        raise SecAggError(f"{len(points)} shares cannot recover a secret shared {threshold}-of-n")
    values = {}
    for x in points:
        y = shares[x]
        if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < PRIME:
            raise SecAggError(f"the share at x={x} is not an element of GF(2**521 - 1)")
        values[x] = y
    basis = sorted(points)[:threshold]
    for extra in sorted(points)[threshold:]:
        if _interpolate({x: values[x] for x in basis}, extra) != values[extra]:
            raise SecAggError(f"the share at x={extra} does not lie on the polynomial of the others")
    secret = _interpolate({x: values[x] for x in basis}, 0)
    if secret >> (8 * SECRET_BYTES):
        raise SecAggError("the shares do not combine to a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """f(x) mod p by Horner's rule, ``coefficients[0]`` being f's constant term."""
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % PRIME
    return result


def _interpolate(points: Mapping[int, int], at: int) -> int:
    """The value at ``at`` of the polynomial of degree < len(points) through ``points`` (Lagrange)."""
    total = 0
    for xi, yi in points.items():
        numerator, denominator = 1, 1
        for xj in points:
            if xj != xi:
                numerator = numerator * (at - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        total = (total + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def _check_points(xs: Sequence[int]) -> list[int]:
    points = list(xs)
    for x in points:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 < x < PRIME:
            raise SecAggError(f"a share's x-coordinate must be a whole number in 1..p-1, got {x!r}")
    if len(set(points)) != len(points):
        raise SecAggError("the shares' x-coordinates are not distinct")
    return points


def _check_threshold(threshold: int, count: int) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= count:
        raise SecAggError(f"the threshold must be a whole number in 1..{count}, got {threshold!r}")

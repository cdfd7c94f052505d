"""The discrete Gaussian: a keyed sampler and the privacy of a sum of noise shares across sites.

The discrete Gaussian N_Z(0, sigma^2) puts mass proportional to exp(-x^2 / (2 sigma^2)) on each
integer x. Its variance is at most sigma^2 and, for sigma >= 1, equal to it up to a relative error
below 1e-6 (Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for Differential Privacy", CKS).

Sampler (CKS Algorithm 3). With t = floor(sigma) + 1, propose Y from the discrete Laplace law
P(y) proportional to exp(-|y| / t), drawn as G1 - G2 for independent geometric G with
P(G >= k) = exp(-k / t), each by inverse CDF: G = floor(-t log(1 - U)). Accept Y with probability
exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2)); accepted values are exactly N_Z(0, sigma^2), and about
three in four proposals are accepted for large sigma (one in two at sigma = 1). Every uniform U is
the top 53 bits of a 64-bit word of the ChaCha20 keystream of the caller's key; proposal j reads
words 3j, 3j + 1, 3j + 2, so the draws are a function of the key and sigma, and the first m draws of a
longer request are the draws of a request for m. The output is an integer, so the low-bit attack
on floating-point samplers (Mironov 2012) does not apply; the acceptance probabilities and the
inverse CDF are computed in float64, so the law is exact only up to float64 rounding.

Privacy of the sum (Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation", KLS). If each of n sites adds an independent
N_Z(0, s^2) vector to an integer query of L2 sensitivity l2 and L1 sensitivity l1 (s >= 1/2), the
sum satisfies (epsilon^2 / 2)-concentrated DP: the Renyi divergence of order alpha is at most
alpha epsilon^2 / 2 for every alpha >= 1, where

    epsilon = min( sqrt(l2^2 / (n s^2) + 2 tau l1),  l2 / (sqrt(n) s) + tau l1 ),
    tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k / (k + 1)).

(The first term's tau coefficient is taken as 2, the larger of the statements we found, so the bound
errs on the safe side; this matters only for small s: tau is below 1e-150 from s = 6 and underflows
to exactly 0 from s = 8.7, where epsilon is the continuous Gaussian's l2 / (sqrt(n) s). tffprod's
shares are in the hundreds of thousands.) A continuous Gaussian with noise multiplier z has the
Renyi curve alpha / (2 z^2), so z_eff = 1 / epsilon accounts a round as dp_accounting's
``GaussianDpEvent(z_eff)``.

TF-free: ``cryptography`` and NumPy.
"""

from __future__ import annotations

import math

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["MAX_SIGMA", "effective_noise_multiplier", "integer_sensitivity", "kls_epsilon", "sample",
           "share_sigma"]

MAX_SIGMA = 2.0**40
KEY_BYTES = 32
# cryptography's 16-byte ChaCha20 nonce: the 32-bit block counter (from 0), then a 12-byte nonce that
# separates this stream from other uses of one key (tffprod.privacy.noise uses 12 zero bytes).
_NONCE = bytes(4) + b"tffprod-dgau"
_MAX_BATCH = 1 << 20  # proposals per keystream read: bounds the memory of a large request


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _acceptance_rate(sigma: float, t: float) -> float:
    """The probability that one proposal is accepted (theta(sigma) approximated by sqrt(2 pi) sigma)."""
    p = math.exp(-1.0 / t)
    return math.exp(-sigma**2 / (2 * t**2)) * math.sqrt(2 * math.pi) * sigma * (1 - p) / (1 + p)


def sample(key: bytes, count: int, sigma: float) -> np.ndarray:
    """``count`` independent draws of N_Z(0, sigma^2), determined by ``key``.

    Args:
        key: 32 bytes, the ChaCha20 key.
        count: how many draws (>= 0).
        sigma: the scale, 1 <= sigma <= 2**40.

    Returns:
        A new ``int64`` vector.

    Raises:
        ValueError: a key that is not 32 bytes, a negative count, or sigma out of range.
    """
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"the discrete Gaussian key must be {KEY_BYTES} bytes")
    count = _check_count("count", count, 0)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 1 <= sigma <= MAX_SIGMA:
        raise ValueError(f"sigma must be a number in [1, 2**40], got {sigma!r}")
    sigma = float(sigma)
    t = math.floor(sigma) + 1.0
    centre, two_var = sigma * sigma / t, 2.0 * sigma * sigma
    rate = _acceptance_rate(sigma, t)
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        need = count - filled
        batch = min(_MAX_BATCH, math.ceil(need / rate * 1.02) + 32)
        words = np.frombuffer(encryptor.update(bytes(24 * batch)), dtype="<u8").reshape(batch, 3)
        uniform = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53  # in [0, 1)
        geometric = np.floor(-t * np.log1p(-uniform[:, :2]))  # 1 - U is in (0, 1]: the log is finite
        proposal = geometric[:, 0] - geometric[:, 1]
        accepted = proposal[uniform[:, 2] < np.exp(-((np.abs(proposal) - centre) ** 2) / two_var)]
        take = min(need, accepted.size)
        out[filled:filled + take] = accepted[:take]
        filled += take
    return out


def kls_epsilon(share_sigma: float, shares: int, l2: float, l1: float) -> float:
    """The KLS epsilon: the sum of ``shares`` N_Z(0, share_sigma^2) vectors is (epsilon^2 / 2)-zCDP.

    Args:
        share_sigma: each share's scale s (>= 1/2, the theorem's hypothesis).
        shares: the number n of independent shares in the sum (>= 1).
        l2: the integer query's L2 sensitivity (> 0).
        l1: its L1 sensitivity (> 0).

    Raises:
        ValueError: an argument out of range.
    """
    s = _check_positive("share_sigma", share_sigma)
    if s < 0.5:
        raise ValueError(f"share_sigma must be >= 1/2 (the KLS bound's hypothesis), got {share_sigma!r}")
    n = _check_count("shares", shares, 1)
    l2, l1 = _check_positive("l2", l2), _check_positive("l1", l1)
    tau = 10.0 * math.fsum(math.exp(-2.0 * math.pi**2 * s * s * k / (k + 1)) for k in range(1, n))
    gaussian = l2 / (math.sqrt(n) * s)
    if tau == 0.0:  # underflow: both terms are the continuous Gaussian's l2 / (sqrt(n) s)
        return gaussian
    return min(math.sqrt(l2 * l2 / (n * s * s) + 2.0 * tau * l1), gaussian + tau * l1)


def effective_noise_multiplier(share_sigma: float, shares: int, l2: float, l1: float) -> float:
    """1 / :func:`kls_epsilon`: the multiplier z of the continuous Gaussian with the same Renyi DP bound."""
    return 1.0 / kls_epsilon(share_sigma, shares, l2, l1)


def integer_sensitivity(clip: float, scale: float, dim: int) -> tuple[float, float]:
    """(l2, l1) of a rounded, scaled sum of clipped vectors when one contributor is added or removed.

    One contributor moves the scaled sum by at most ``clip * scale`` in L2 norm, and rounding each
    coordinate to the nearest integer moves each coordinate's difference by less than 1: l2 =
    clip * scale + sqrt(dim). The difference is an integer vector, so its L1 norm is at most
    sqrt(dim) times and at most the square of its L2 norm: l1 = min(sqrt(dim) * l2, l2**2).

    Args:
        clip: the L2 bound of one contributor's vector (> 0).
        scale: the quantization scale (> 0).
        dim: the number of coordinates (>= 1).
    """
    clip, scale = _check_positive("clip", clip), _check_positive("scale", scale)
    root = math.sqrt(_check_count("dim", dim, 1))
    l2 = clip * scale + root
    return l2, min(root * l2, l2 * l2)


def share_sigma(noise_multiplier: float, clip: float, scale: float, dim: int, shares: int) -> float:
    """Each of ``shares`` sites' scale, so that the sum's stddev is noise_multiplier * l2 (l2 of
    :func:`integer_sensitivity`): noise_multiplier * l2 / sqrt(shares)."""
    noise_multiplier = _check_positive("noise_multiplier", noise_multiplier)
    l2, _ = integer_sensitivity(clip, scale, dim)
    return noise_multiplier * l2 / math.sqrt(_check_count("shares", shares, 1))

"""Gaussian noise from a cryptographically secure source, reproducible only by whoever holds the key.

A site draws the noise of a release from ChaCha20's keystream under a key derived (HMAC-SHA256)
from its own secret and the release's digest. So the noise is unpredictable to anyone without the
site's secret, and the identical request again (a resumed coordinator) gets the identical noise:
repeating a request never lets a coordinator average the noise away.

Uniforms take 53 bits of the stream each and Box-Muller turns pairs of them into normals, in
float64. (Floating-point samplers of continuous distributions have known weaknesses in their least
significant bits, Mironov 2012; the noise is added in float64 and the release is float32, which
drops the lowest 29 bits of each value.)

TF-free: ``cryptography`` and NumPy.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["derive_key", "standard_normal"]

_DOMAIN = b"tffprod.site-noise/1\0"
_NONCE = b"\0" * 16  # one key per release, so a fixed nonce never repeats a keystream


def derive_key(secret: bytes, label: bytes) -> bytes:
    """The 32-byte stream key for ``label`` (e.g. a release digest) under ``secret``."""
    return hmac.new(secret, _DOMAIN + label, hashlib.sha256).digest()


def standard_normal(key: bytes, count: int) -> np.ndarray:
    """``count`` independent N(0, 1) draws (float64) from the keystream of ``key``."""
    if len(key) != 32:
        raise ValueError("the noise key must be 32 bytes")
    pairs = (count + 1) // 2
    stream = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor().update(bytes(16 * pairs))
    words = np.frombuffer(stream, dtype="<u8") >> np.uint64(11)  # 53 random bits each
    uniform = words.astype(np.float64) * 2.0**-53  # in [0, 1)
    u1, u2 = 1.0 - uniform[:pairs], uniform[pairs:]  # u1 in (0, 1]: log is finite
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]

"""Masks: vectors of integers modulo 2**bits, expanded from 32-byte seeds, and their arithmetic.

Inputs, masks and masked inputs are numpy ``uint64`` vectors whose entries are below 2**bits
(1 <= bits <= 62). :func:`prg` expands a seed with the ChaCha20 keystream (key = the seed, nonce
derived from a label, block counter from 0) read as little-endian 64-bit words, each masked to its
low ``bits`` bits: exactly uniform, since 2**bits divides 2**64. Sums and differences of two such
vectors stay below 2**63, so :func:`add_mod` and :func:`sub_mod` never overflow uint64.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from tffprod.privacy.secagg.errors import SecAggError, who

__all__ = ["MAX_BITS", "add_mod", "check_bits", "check_vector", "prg", "sub_mod"]

MAX_BITS = 62
SEED_BYTES = 32
_NONCE_DOMAIN = b"tffprod-secagg-v1 prg nonce\x00"


def check_bits(bits: int) -> int:
    """``bits`` if it is a whole number in 1..62, else SecAggError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise SecAggError(f"bits must be a whole number in 1..{MAX_BITS}, got {bits!r}")
    return bits


def prg(seed: bytes, length: int, bits: int, *, label: bytes = b"") -> np.ndarray:
    """``length`` integers uniform modulo 2**bits, determined by ``seed`` and ``label``.

    Args:
        seed: 32 bytes (the ChaCha20 key).
        length: how many integers (>= 0).
        bits: their modulus is 2**bits (1..62).
        label: separates streams of one seed (it selects the nonce).

    Returns:
        A new, writable ``uint64`` vector.

    Raises:
        SecAggError: a seed that is not 32 bytes, a negative length, or bits out of range.
    """
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise SecAggError(f"a mask seed must be {SEED_BYTES} bytes")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise SecAggError(f"a mask length must be a whole number >= 0, got {length!r}")
    modulus_mask = np.uint64((1 << check_bits(bits)) - 1)
    # ChaCha20's 16-byte "nonce" in cryptography is the 32-bit little-endian block counter, then the nonce.
    nonce = bytes(4) + hashlib.sha256(_NONCE_DOMAIN + label).digest()[:12]
    encryptor = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64) & modulus_mask


def check_vector(values: object, length: int, bits: int, owner: str, what: str = "input") -> np.ndarray:
    """``values`` if it is a ``uint64`` vector of ``length`` entries below 2**bits, else SecAggError.

    Args:
        values: the vector to check.
        length: the expected number of entries.
        bits: the entries' modulus is 2**bits.
        owner: the participant the vector is from (named in the error).
        what: what the vector is (named in the error).
    """
    if not isinstance(values, np.ndarray) or values.dtype != np.uint64:
        raise SecAggError(f"participant {who(owner)}: the {what} is not a numpy uint64 array")
    if values.shape != (length,):
        raise SecAggError(f"participant {who(owner)}: the {what} has shape {values.shape}, expected ({length},)")
    if length and int(values.max()) >> check_bits(bits):
        raise SecAggError(f"participant {who(owner)}: the {what} has entries outside 0..2**{bits}-1")
    return values


def add_mod(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """``(a + b) mod 2**bits`` for uint64 vectors with entries below 2**bits."""
    return (a + b) & np.uint64((1 << check_bits(bits)) - 1)


def sub_mod(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """``(a - b) mod 2**bits`` for uint64 vectors with entries below 2**bits (computed as a + (2**bits - b))."""
    modulus = np.uint64(1 << check_bits(bits))
    return (a + (modulus - b)) & (modulus - np.uint64(1))

"""Codec: a release's tensors as one vector of integers modulo 2**bits, and a sum of such vectors back.

A :class:`Layout` lists the release's tensors (slots) in order. :func:`encode` quantizes each one,
flattened in C order: a "dp" slot (a DP-bounded float tensor) as rint(x * scale), a "fixed" slot
(another float tensor, e.g. a metric sum) as rint(x * fixed_scale), an "int" slot as it is; and
concatenates them into one int64 vector. The caller adds integer noise at ``Layout.dp_positions``
(the distributed discrete Gaussian of Kairouz, Liu, Steinke 2021) and :func:`reduce` maps the
result into Z / 2**bits (two's complement: -v becomes 2**bits - v). Sites mask these vectors and the
coordinator unmasks only their sum mod 2**bits (Bonawitz et al. 2017); :func:`decode` lifts each
entry of that sum to its representative in [-2**(bits-1), 2**(bits-1)) and divides dp and fixed
slots by their scale.

Reduction mod 2**bits commutes with addition, and the lift inverts it on [-2**(bits-1),
2**(bits-1)): the decoded sum is the exact sum of the sites' integers (noise included) whenever that
sum lies in this interval, and wraps around otherwise. Choosing bits and scale so that it does is
the caller's job; :func:`encode` refuses any single quantized value of magnitude 2**(bits-2) or
more, which would leave no room for a few more sites. Rounding moves each site's value by at most
1 / (2 * scale) (1 / (2 * fixed_scale) for fixed slots), so a sum over k sites decodes to within
k / (2 * scale) of the sum of their tensors, plus the rounding to the slot's float dtype.

Independent of the masking (:mod:`tffprod.privacy.secagg.masks`): vectors are ``uint64`` with
entries below 2**bits, as the masks module takes them. Refusals raise :class:`SecAggError` (a
``ValueError``) with one line naming the slot by index, kind, dtype and shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tffprod.privacy.secagg.errors import SecAggError

__all__ = ["KINDS", "Layout", "Slot", "decode", "encode", "reduce"]

KINDS = ("dp", "fixed", "int")
MIN_BITS, MAX_BITS = 8, 62


@dataclass(frozen=True)
class Slot:
    """One tensor of a release: its numpy dtype name, shape and kind ("dp", "fixed" or "int")."""

    dtype: str
    shape: tuple[int, ...]
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SecAggError(f"a slot's kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        try:
            if not isinstance(self.dtype, str):
                raise TypeError(self.dtype)
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise SecAggError(f"a slot's dtype must name a numpy dtype, got {self.dtype!r}") from None
        if dtype.kind not in ("iu" if self.kind == "int" else "f"):
            raise SecAggError(f"a {self.kind} slot needs {'an integer' if self.kind == 'int' else 'a float'} dtype, "
                              f"got {dtype.name}")
        shape = tuple(self.shape)
        if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 for n in shape):
            raise SecAggError(f"a slot's shape must be whole numbers >= 0, got {self.shape!r}")
        object.__setattr__(self, "dtype", dtype.name)
        object.__setattr__(self, "shape", tuple(int(n) for n in shape))

    @property
    def size(self) -> int:
        """The number of coordinates."""
        return math.prod(self.shape)

    def describe(self, index: int) -> str:
        """How error messages name this slot: ``slot 2 (dp float32 (3, 4))``."""
        return f"slot {index} ({self.kind} {self.dtype} {self.shape})"


@dataclass(frozen=True)
class Layout:
    """The slots of a release, in the order of the packed vector."""

    slots: tuple[Slot, ...]

    def __post_init__(self) -> None:
        slots = tuple(self.slots)
        if not all(isinstance(slot, Slot) for slot in slots):
            raise SecAggError("a layout's slots must be Slot objects")
        object.__setattr__(self, "slots", slots)

    @property
    def length(self) -> int:
        """The total number of coordinates (the packed vector's length)."""
        return sum(slot.size for slot in self.slots)

    @property
    def dp_positions(self) -> np.ndarray:
        """The packed vector's indices of the "dp" slots' coordinates, in order (int64)."""
        offsets = np.cumsum([0] + [slot.size for slot in self.slots])
        ranges = [np.arange(offsets[i], offsets[i + 1]) for i, slot in enumerate(self.slots) if slot.kind == "dp"]
        return np.concatenate(ranges).astype(np.int64) if ranges else np.zeros(0, dtype=np.int64)

    @property
    def dp_size(self) -> int:
        """The number of "dp" coordinates."""
        return sum(slot.size for slot in self.slots if slot.kind == "dp")


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise SecAggError(f"bits must be a whole number in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return bits


def _check_scale(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise SecAggError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _quantize(index: int, slot: Slot, array: object, factor: float, limit: int) -> np.ndarray:
    """One slot's integers (flat int64), or SecAggError naming the slot."""
    name = slot.describe(index)
    if not isinstance(array, (np.ndarray, np.generic)):
        raise SecAggError(f"{name}: got a {type(array).__name__}, not a numpy array")
    if array.dtype != np.dtype(slot.dtype):
        raise SecAggError(f"{name}: the array has dtype {array.dtype}")
    if array.shape != slot.shape:
        raise SecAggError(f"{name}: the array has shape {array.shape}")
    flat = np.asarray(array).reshape(-1)
    if slot.kind == "int":
        if flat.size and (int(flat.min()) <= -limit or int(flat.max()) >= limit):
            raise SecAggError(f"{name}: a value's magnitude reaches 2**{limit.bit_length() - 1}")
        return flat.astype(np.int64)
    if not np.isfinite(flat).all():
        raise SecAggError(f"{name}: the array has a non-finite value")
    with np.errstate(over="ignore"):
        quantized = np.rint(flat.astype(np.float64) * factor)
    if flat.size and float(np.abs(quantized).max()) >= limit:
        raise SecAggError(f"{name}: a quantized value's magnitude reaches 2**{limit.bit_length() - 1}")
    return quantized.astype(np.int64)


def encode(arrays: Sequence[np.ndarray], layout: Layout, *, scale: float, fixed_scale: float,
           bits: int) -> np.ndarray:
    """The release's quantized integers in layout order (int64, not reduced mod 2**bits).

    Args:
        arrays: one numpy array (or numpy scalar) per slot, of the slot's dtype and shape.
        layout: the slots.
        scale: dp slots become rint(x * scale).
        fixed_scale: fixed slots become rint(x * fixed_scale).
        bits: the modulus is 2**bits (8..62); every magnitude must stay below 2**(bits-2).

    Raises:
        SecAggError: a wrong number of arrays, or an array of the wrong type, dtype or shape, with a
            non-finite value, or with a quantized magnitude of 2**(bits-2) or more.
    """
    limit = 1 << (_check_bits(bits) - 2)
    scales = {"dp": _check_scale("scale", scale), "fixed": _check_scale("fixed_scale", fixed_scale), "int": 1.0}
    if len(arrays) != len(layout.slots):
        raise SecAggError(f"got {len(arrays)} arrays for a layout of {len(layout.slots)} slots")
    out = np.empty(layout.length, dtype=np.int64)
    offset = 0
    for index, (slot, array) in enumerate(zip(layout.slots, arrays)):
        out[offset:offset + slot.size] = _quantize(index, slot, array, scales[slot.kind], limit)
        offset += slot.size
    return out


def reduce(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (a 1-D int64 vector) modulo 2**bits, in two's complement, as a new uint64 vector."""
    mask = np.uint64((1 << _check_bits(bits)) - 1)
    if not isinstance(values, np.ndarray) or values.dtype != np.int64 or values.ndim != 1:
        raise SecAggError("the values to reduce must be a 1-D numpy int64 array")
    return np.ascontiguousarray(values).view(np.uint64) & mask


def decode(total: np.ndarray, layout: Layout, *, scale: float, fixed_scale: float, bits: int) -> list[np.ndarray]:
    """The tensors of a sum mod 2**bits of encoded, reduced vectors: one array per slot, of its dtype and shape.

    Raises:
        SecAggError: ``total`` is not a uint64 vector of ``layout.length`` entries below 2**bits, or an
            int slot's sum does not fit its dtype, or a float slot's sum overflows its dtype.
    """
    modulus = 1 << _check_bits(bits)
    scales = {"dp": _check_scale("scale", scale), "fixed": _check_scale("fixed_scale", fixed_scale)}
    if not isinstance(total, np.ndarray) or total.dtype != np.uint64 or total.shape != (layout.length,):
        raise SecAggError(f"the sum must be a numpy uint64 array of shape ({layout.length},)")
    if total.size and int(total.max()) >= modulus:
        raise SecAggError(f"the sum has entries outside 0..2**{bits}-1")
    centred = total.astype(np.int64)  # entries below 2**62: exact
    centred[centred >= modulus >> 1] -= modulus
    tensors, offset = [], 0
    for index, slot in enumerate(layout.slots):
        part = centred[offset:offset + slot.size]
        offset += slot.size
        if slot.kind == "int":
            info = np.iinfo(slot.dtype)
            if part.size and (int(part.min()) < info.min or int(part.max()) > info.max):
                raise SecAggError(f"{slot.describe(index)}: the sum does not fit {slot.dtype}")
            values = part.astype(slot.dtype)
        else:
            with np.errstate(over="ignore"):
                values = (part.astype(np.float64) / scales[slot.kind]).astype(slot.dtype)
            if not np.isfinite(values).all():
                raise SecAggError(f"{slot.describe(index)}: the sum overflows {slot.dtype}")
        tensors.append(values.reshape(slot.shape))
    return tensors

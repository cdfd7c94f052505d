"""The codec: a release's tensors survive encode, reduce and decode; the sum of sites' reduced vectors mod 2**bits
decodes to the sum of their tensors; noise goes where ``dp_positions`` says; bad input is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from tffprod.privacy.secagg import SecAggError, add_mod
from tffprod.privacy.secagg.codec import Layout, Slot, decode, encode, reduce

BITS, SCALE, FIXED_SCALE = 40, 2.0**12, 2.0**8
SCALES = {"scale": SCALE, "fixed_scale": FIXED_SCALE, "bits": BITS}
LAYOUT = Layout((Slot("float32", (3, 4), "dp"), Slot("float32", (), "fixed"), Slot("int64", (), "int"),
                 Slot("float32", (5,), "dp"), Slot("float32", (), "fixed"), Slot("int64", (), "int")))


def release(seed: int) -> list[np.ndarray]:
    """One site's tensors for LAYOUT, with negative values in every slot kind."""
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=3.0, size=(3, 4)).astype(np.float32), np.float32(-rng.uniform(0, 1e4)),
            np.int64(-rng.integers(1, 10**9)), rng.normal(scale=3.0, size=5).astype(np.float32),
            np.float32(rng.uniform(-1, 1)), np.int64(rng.integers(0, 10**10))]


def check_close(decoded: list[np.ndarray], expected: list[np.ndarray], sites: int) -> None:
    """Within sites / (2 * scale) (rounding at each site) plus the float32 rounding; int slots exact."""
    assert len(decoded) == len(LAYOUT.slots)
    for slot, got, want in zip(LAYOUT.slots, decoded, expected):
        assert got.dtype == np.dtype(slot.dtype) and got.shape == slot.shape
        if slot.kind == "int":
            assert got == want
            continue
        tolerance = sites / (2 * (SCALE if slot.kind == "dp" else FIXED_SCALE))
        assert np.all(np.abs(got.astype(np.float64) - want) <= tolerance + np.spacing(np.abs(got)))


def test_round_trip_keeps_every_slot_and_its_dtype():
    arrays = release(0)
    values = encode(arrays, LAYOUT, **SCALES)
    assert values.dtype == np.int64 and values.shape == (LAYOUT.length,) == (12 + 1 + 1 + 5 + 1 + 1,)
    reduced = reduce(values, BITS)
    assert reduced.dtype == np.uint64 and int(reduced.max()) < 2**BITS
    assert reduced[12] == 2**BITS + values[12] and values[12] < 0  # a negative fixed slot, two's complement
    decoded = decode(reduced, LAYOUT, **SCALES)
    check_close(decoded, [np.asarray(a, dtype=np.float64) if a.dtype.kind == "f" else a for a in arrays], sites=1)
    assert decoded[2] == arrays[2] < 0


def test_the_sum_of_three_sites_decodes_to_the_sum_of_their_tensors():
    sites = [release(seed) for seed in (1, 2, 3)]
    total = np.zeros(LAYOUT.length, dtype=np.uint64)
    for arrays in sites:
        total = add_mod(total, reduce(encode(arrays, LAYOUT, **SCALES), BITS), BITS)
    decoded = decode(total, LAYOUT, **SCALES)
    expected = [sum(np.asarray(site[i], dtype=np.float64 if slot.kind != "int" else np.int64) for site in sites)
                for i, slot in enumerate(LAYOUT.slots)]
    check_close(decoded, expected, sites=3)
    # Exactly: the sum of the sites' quantized integers, divided by the scale.
    quantized = sum(encode(arrays, LAYOUT, **SCALES) for arrays in sites)
    assert np.array_equal(decoded[3], (quantized[14:19] / SCALE).astype(np.float32))


def test_noise_added_at_the_dp_positions_lands_in_the_dp_slots_only():
    assert np.array_equal(LAYOUT.dp_positions, np.r_[0:12, 14:19]) and LAYOUT.dp_size == 17
    assert LAYOUT.dp_positions.dtype == np.int64
    arrays = release(4)
    values = encode(arrays, LAYOUT, **SCALES)
    noise = np.random.default_rng(5).integers(-10**6, 10**6, size=LAYOUT.dp_size)
    values[LAYOUT.dp_positions] += noise
    decoded = decode(reduce(values, BITS), LAYOUT, **SCALES)
    clean = decode(reduce(encode(arrays, LAYOUT, **SCALES), BITS), LAYOUT, **SCALES)
    assert np.allclose(decoded[0] - clean[0], noise[:12].reshape(3, 4) / SCALE, atol=1e-3)
    assert np.allclose(decoded[3] - clean[3], noise[12:] / SCALE, atol=1e-3)
    for i in (1, 2, 4, 5):
        assert decoded[i] == clean[i]
    assert Layout((Slot("int64", (2,), "int"),)).dp_positions.shape == (0,)


def test_the_extremes_of_62_bits_round_trip():
    layout = Layout((Slot("int64", (4,), "int"),))
    edge = 2**60 - 1
    arrays = [np.array([edge, -edge, 0, -1], dtype=np.int64)]
    decoded = decode(reduce(encode(arrays, layout, scale=1.0, fixed_scale=1.0, bits=62), 62), layout,
                     scale=1.0, fixed_scale=1.0, bits=62)
    assert np.array_equal(decoded[0], arrays[0])


def refusal(arrays, layout=LAYOUT, **overrides) -> str:
    with pytest.raises(SecAggError) as caught:
        encode(arrays, layout, **{**SCALES, **overrides})
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_non_finite_values_are_refused_naming_the_slot():
    arrays = release(6)
    arrays[3] = arrays[3].copy()
    arrays[3][2] = np.nan
    assert refusal(arrays) == "slot 3 (dp float32 (5,)): the array has a non-finite value"
    arrays = release(6)
    arrays[1] = np.float32(np.inf)
    assert refusal(arrays).startswith("slot 1 (fixed float32 ()):")


def test_wrong_dtype_shape_type_or_count_is_refused():
    arrays = release(7)
    arrays[0] = arrays[0].astype(np.float64)
    assert refusal(arrays) == "slot 0 (dp float32 (3, 4)): the array has dtype float64"
    arrays = release(7)
    arrays[2] = np.int32(5)
    assert "slot 2 (int int64 ())" in refusal(arrays)
    arrays = release(7)
    arrays[3] = arrays[3][:4]
    assert refusal(arrays) == "slot 3 (dp float32 (5,)): the array has shape (4,)"
    arrays = release(7)
    arrays[4] = 0.5
    assert refusal(arrays) == "slot 4 (fixed float32 ()): got a float, not a numpy array"
    assert "5 arrays" in refusal(release(7)[:5])


def test_a_magnitude_of_a_quarter_of_the_range_is_refused():
    limit = 2 ** (BITS - 2)
    arrays = release(8)
    arrays[3] = np.array([0, 0, 0, 0, -limit / SCALE], dtype=np.float32)
    assert refusal(arrays) == f"slot 3 (dp float32 (5,)): a quantized value's magnitude reaches 2**{BITS - 2}"
    lone = Layout((Slot("float32", (2,), "dp"),))  # a value that overflows to inf once scaled
    message = refusal([np.array([0, 1e38], dtype=np.float32)], lone, scale=1e300)
    assert message == f"slot 0 (dp float32 (2,)): a quantized value's magnitude reaches 2**{BITS - 2}"
    arrays = release(8)
    arrays[5] = np.int64(limit)
    assert refusal(arrays) == f"slot 5 (int int64 ()): a value's magnitude reaches 2**{BITS - 2}"
    arrays[5] = np.int64(limit - 1)
    assert encode(arrays, LAYOUT, **SCALES)[-1] == limit - 1


def test_bad_bits_scales_slots_and_sums_are_refused():
    for bits in (7, 63, 40.0):
        assert "bits" in refusal(release(9), bits=bits)
    assert "scale" in refusal(release(9), scale=0.0)
    assert "fixed_scale" in refusal(release(9), fixed_scale=float("nan"))
    for args in (("float32", (2,), "noise"), ("int64", (2,), "dp"), ("float32", (2,), "int"), ("nope", (2,), "dp"),
                 ("float32", (-1,), "dp"), (None, (2,), "dp")):
        with pytest.raises(SecAggError):
            Slot(*args)
    assert Slot("f4", [2, 3], "dp") == Slot("float32", (2, 3), "dp")
    total = reduce(encode(release(9), LAYOUT, **SCALES), BITS)
    with pytest.raises(SecAggError, match="outside"):
        decode(total | np.uint64(2**BITS), LAYOUT, **SCALES)
    with pytest.raises(SecAggError, match="uint64"):
        decode(total.astype(np.int64), LAYOUT, **SCALES)
    with pytest.raises(SecAggError, match="int64"):
        reduce(total, BITS)
    small = Layout((Slot("int32", (), "int"),))
    big = reduce(encode([np.int32(2**31 - 1)], small, **SCALES), BITS)
    with pytest.raises(SecAggError, match="slot 0 .* does not fit int32"):
        decode(add_mod(big, big, BITS), small, **SCALES)

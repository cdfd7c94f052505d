"""The coordinator merges partials in NumPy only where TFF's ``merge`` is provably a leaf-by-leaf sum, and
then gets exactly TFF's bits (real TFF computations, run in TFF's local C++ runtime for comparison)."""

from __future__ import annotations

import numpy as np
import pytest

from tffprod.examples import digits, fraud
from tffprod.privacy.config import DPConfig
from tests.helpers.tff_values import value_of


def random_partial(type_spec, rng: np.random.Generator):
    def leaf(t):
        dtype, shape = np.dtype(t.dtype), tuple(t.shape)
        if np.issubdtype(dtype, np.integer):
            return rng.integers(-1000, 1000, size=shape).astype(dtype)
        return (rng.standard_normal(size=shape) * 10).astype(dtype)

    return value_of(type_spec, leaf)


def processes():
    from tffprod.training.process import build_training_process
    from tffprod.training.user_level import build_user_level_process

    yield "fedavg", build_training_process(digits.task, DPConfig(), fmt="tfrecord", seed=0, clients_per_round=3)
    yield "dp", build_training_process(digits.task, DPConfig(mechanism="gaussian_fixed", noise_multiplier=1.0,
                                                             clip=1.0, delta=1e-5),
                                       fmt="tfrecord", seed=0, clients_per_round=3)
    yield "user-level", build_user_level_process(fraud.task, fmt="csv", clip=1.0, noise_stddev=0.0,
                                                 expected_users=10.0)


@pytest.mark.parametrize("kind", ["fedavg", "dp", "user-level"])
def test_the_numpy_merge_of_three_partials_is_tffs_merge_bit_for_bit(kind: str) -> None:
    import tensorflow_federated as tff

    from tffprod.training.merge import leafwise_sum

    process = dict(processes())[kind]
    form = tff.backends.native.compile_to_mergeable_comp_form(process.next)
    merge = leafwise_sum(form.merge)
    assert merge is not None, f"{kind}: merge is not recognised as a leaf-by-leaf sum"
    partial_type = form.up_to_merge.type_signature.result
    rng = np.random.default_rng(7)
    partials = [random_partial(partial_type, rng) for _ in range(3)]
    ctx = tff.backends.native.create_sync_local_cpp_execution_context()
    expected = partials[0]
    for partial in partials[1:]:
        expected = ctx.invoke(form.merge, tff.structure.Struct.unnamed(expected, partial))
    got = merge(partials, partial_type)
    flat_expected = tff.structure.flatten(tff.structure.from_container(expected, recursive=True))
    flat_got = tff.structure.flatten(got)
    assert len(flat_got) == len(flat_expected) > 0
    for a, b in zip(flat_got, flat_expected):
        b = np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_a_merge_that_is_not_a_leafwise_sum_is_left_to_tff() -> None:
    import tensorflow as tf
    import tensorflow_federated as tff

    from tffprod.training.merge import leafwise_sum

    pair = tff.StructType([tff.TensorType(np.float32, [3]), tff.TensorType(np.float32, [3])])
    both = tff.StructType([pair, pair])

    @tff.tensorflow.computation(both)
    def product(a, b):
        return a[0] * b[0], a[1] * b[1]

    @tff.tensorflow.computation(both)
    def crossed(a, b):  # each sum adds a leaf to another leaf's partner
        return a[0] + b[1], a[1] + b[0]

    @tff.tensorflow.computation(both)
    def largest(a, b):
        return tf.maximum(a[0], b[0]), tf.maximum(a[1], b[1])

    @tff.tensorflow.computation(both)
    def summed(a, b):
        return a[0] + b[0], tf.identity(b[1]) + a[1]

    assert leafwise_sum(product) is None and leafwise_sum(crossed) is None and leafwise_sum(largest) is None
    assert leafwise_sum(summed) is not None  # operands in either order, through Identity

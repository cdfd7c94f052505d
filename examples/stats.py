"""Federated statistics computed where the data lives: custom computations for ``run_federated``.

Each builder returns a ``tff.Computation`` over ``{str}@CLIENTS`` (one dataset
reference per client). A client opens its dataset at its site, reduces it to a
few numbers there, and only the sums over clients reach the coordinator.
Importing this module does not import TensorFlow; the builders do.

Example:
    >>> from tffprod import create_backend, run_federated
    >>> from tffprod.examples import fraud, stats
    >>> mean = stats.feature_mean(fraud.SCHEMA, "csv", "amount")
    >>> run_federated(mean, ["bank-a/train", "bank-b/train"], registry=registry,
    ...               backend=create_backend("local")).value
    4.02...
"""

from __future__ import annotations

from typing import Any

from tffprod import Schema, SpecError


def _column(schema: Schema, name: str):
    for column in schema.columns:
        if column.name == name:
            return column
    raise SpecError(f"the schema has no column {name!r}; it has {', '.join(c.name for c in schema.columns)}")


def feature_mean(schema: Schema, fmt: str, feature: str) -> Any:
    """The mean of a scalar numeric feature over every example of every client.

    Each client sums the feature and counts its examples at its site; both are
    summed over clients (``tff.federated_sum``) and divided at SERVER, so larger
    datasets weigh more (the mean of the union).

    Args:
        schema: the datasets' schema (it must hold ``feature``).
        fmt: the datasets' format, ``"tfrecord"`` or ``"csv"``.
        feature: a scalar ``float32`` or ``int64`` column (a feature or the label).

    Returns:
        A computation ``{str}@CLIENTS -> float64@SERVER`` (NaN when there are no examples).

    Raises:
        SpecError: no such column, or it is not a numeric scalar.
    """
    column = _column(schema, feature)
    if column.dtype == "string" or column.shape != ():
        raise SpecError(f"feature {feature!r} is {column.dtype}{list(column.shape)}; the mean needs a numeric scalar")

    import numpy as np
    import tensorflow as tf
    import tensorflow_federated as tff

    from tffprod import read_examples

    @tff.tensorflow.computation(np.str_)
    def sum_and_count(ref):
        def add(acc, row):
            return acc[0] + tf.cast(row[feature], tf.float64), acc[1] + 1

        zero = (tf.constant(0.0, tf.float64), tf.constant(0, tf.int64))
        return read_examples(ref, schema, fmt).reduce(zero, add)

    @tff.tensorflow.computation(np.float64, np.int64)
    def divide(total, count):
        return total / tf.cast(count, tf.float64)

    @tff.federated_computation(tff.FederatedType(np.str_, tff.CLIENTS))
    def mean(refs):
        sums = tff.federated_map(sum_and_count, refs)
        return tff.federated_map(divide, (tff.federated_sum(sums[0]), tff.federated_sum(sums[1])))

    return mean


def label_histogram(schema: Schema, fmt: str, num_classes: int) -> Any:
    """How many examples hold each class, summed over clients.

    Args:
        schema: the datasets' schema; its label must be a scalar ``int64`` class id.
        fmt: the datasets' format, ``"tfrecord"`` or ``"csv"``.
        num_classes: labels are ``0 .. num_classes - 1``; a label outside fails that client's part.

    Returns:
        A computation ``{str}@CLIENTS -> int64[num_classes]@SERVER``.

    Raises:
        SpecError: the label is not a scalar int64, or ``num_classes`` is not positive.
    """
    label = schema.label
    if label.dtype != "int64" or label.shape != ():
        raise SpecError(f"label {label.name!r} is {label.dtype}{list(label.shape)}; a histogram needs a scalar int64")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise SpecError(f"num_classes must be a positive integer, got {num_classes!r}")

    import numpy as np
    import tensorflow as tf
    import tensorflow_federated as tff

    from tffprod import read_examples

    @tff.tensorflow.computation(np.str_)
    def count(ref):
        classes = tf.range(num_classes, dtype=tf.int64)

        def add(acc, row):
            y = row[label.name]
            checks = [tf.debugging.assert_non_negative(y, message="label below 0"),
                      tf.debugging.assert_less(y, tf.constant(num_classes, tf.int64),
                                               message=f"label not below num_classes={num_classes}")]
            with tf.control_dependencies(checks):
                return acc + tf.cast(tf.equal(classes, y), tf.int64)

        return read_examples(ref, schema, fmt).reduce(tf.zeros([num_classes], tf.int64), add)

    @tff.federated_computation(tff.FederatedType(np.str_, tff.CLIENTS))
    def histogram(refs):
        return tff.federated_sum(tff.federated_map(count, refs))

    return histogram

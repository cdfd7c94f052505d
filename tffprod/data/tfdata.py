"""Open a dataset reference with tf.data, inside a TFF computation at the site.

The coordinator only ever sends the reference (a string); the file is opened
by whatever executor runs the computation (shared/design/tff-0.87-facts.md
section 3). All datasets of one session share the task's schema and one format; each format
(:mod:`tffprod.data.formats`) builds its own tf.data reader.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffprod.data.formats import get_format
from tffprod.data.schema import Feature, Schema

_TF_DTYPES = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}


def read_examples(ref, schema: Schema, fmt: str) -> tf.data.Dataset:
    """Dataset of dicts column name -> value, one per example (read by the format's ``tf_dataset``).

    Raises:
        DatasetError: ``fmt`` is not a registered format (:data:`tffprod.data.formats.FORMATS`).
    """
    return get_format(fmt).tf_dataset(ref, schema)


def to_model_input(schema: Schema):
    """Map an example dict to the (features, label) pair Keras and TFF expect."""

    def split(row):
        features = collections.OrderedDict((f.name, row[f.name]) for f in schema.features)
        return features, row[schema.label.name]

    return split


def element_spec(schema: Schema) -> tuple[Any, Any]:
    """The batched (features, label) TensorSpecs a task's model consumes."""

    def spec(c: Feature) -> tf.TensorSpec:
        return tf.TensorSpec([None, *c.shape], _TF_DTYPES[c.dtype], name=c.name)

    return collections.OrderedDict((f.name, spec(f)) for f in schema.features), spec(schema.label)


def training_dataset_computation(schema: Schema, fmt: str, *, batch_size: int, epochs: int, seed: int):
    """A ``tff.tensorflow.computation`` from a reference string to a batched, shuffled dataset."""

    @tff.tensorflow.computation(np.str_)
    def open_dataset(ref):
        ds = read_examples(ref, schema, fmt).map(to_model_input(schema))
        return ds.shuffle(1024, seed=seed).repeat(epochs).batch(batch_size)

    return open_dataset


def evaluation_dataset_computation(schema: Schema, fmt: str, *, batch_size: int):
    """A ``tff.tensorflow.computation`` from a reference string to a batched dataset, in file order."""

    @tff.tensorflow.computation(np.str_)
    def open_dataset(ref):
        return read_examples(ref, schema, fmt).map(to_model_input(schema)).batch(batch_size)

    return open_dataset

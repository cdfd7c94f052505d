"""Open a dataset reference with tf.data, inside a TFF computation at the site.

The coordinator only ever sends the reference (a string); the file is opened
by whatever executor runs the computation (shared/design/tff-0.87-facts.md
section 3). All datasets of one session share the task's schema and one format.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffprod.data.schema import Feature, Schema

_TF_DTYPES = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}


def _example_parser(schema: Schema):
    spec = {c.name: tf.io.FixedLenFeature(c.shape, _TF_DTYPES[c.dtype]) for c in schema.columns}

    def parse(record):
        return tf.io.parse_single_example(record, spec)

    return parse


def _read_tfrecord(ref, schema: Schema) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(ref).map(_example_parser(schema))


def _read_csv(ref, schema: Schema) -> tf.data.Dataset:
    """Numeric CSV with a header; columns are found by name, in any order."""
    header = tf.strings.split(
        tf.strings.strip(tf.data.TextLineDataset(ref).take(1).get_single_element()), ","
    )
    header = tf.strings.strip(header)
    index = {
        c.name: tf.reshape(tf.where(tf.equal(header, c.name)), [-1])[0] for c in schema.columns
    }

    def parse(line):
        fields = tf.strings.strip(tf.strings.split(line, ","))
        row = {}
        for c in schema.columns:
            raw = tf.gather(fields, index[c.name])
            row[c.name] = raw if c.dtype == "string" else tf.strings.to_number(raw, _TF_DTYPES[c.dtype])
        return row

    lines = tf.data.TextLineDataset(ref).skip(1)
    return lines.filter(lambda l: tf.strings.length(tf.strings.strip(l)) > 0).map(parse)


def read_examples(ref, schema: Schema, fmt: str) -> tf.data.Dataset:
    """Dataset of dicts column name -> value, one per example."""
    return _read_tfrecord(ref, schema) if fmt == "tfrecord" else _read_csv(ref, schema)


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

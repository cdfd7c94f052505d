"""The example tasks' models read what ``prepare`` writes (moved from unit/test_examples.py: TensorFlow)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tffprod.data.files import detect_format
from tffprod.data.schema import Schema
from tffprod.examples import digits, fraud

pytestmark = pytest.mark.e2e


# --- the models read what prepare writes ---------------------------------------------------------


def tf_batches(path: Path, schema: Schema, batch_size: int):
    """A minimal tf.data reader for the test (the real pipeline lives elsewhere)."""
    import tensorflow as tf

    dtypes = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
    if detect_format(path) == "tfrecord":
        spec = {c.name: tf.io.FixedLenFeature(list(c.shape), dtypes[c.dtype]) for c in schema.columns}
        ds = tf.data.TFRecordDataset(str(path)).map(lambda r: tf.io.parse_single_example(r, spec))
    else:
        with open(path, newline="") as f:
            header = next(csv.reader(f))
        cols = sorted(schema.columns, key=lambda c: header.index(c.name))
        ds = tf.data.experimental.CsvDataset(
            str(path),
            record_defaults=[dtypes[c.dtype] for c in cols],
            header=True,
            select_cols=[header.index(c.name) for c in cols],
        ).map(lambda *values: {c.name: v for c, v in zip(cols, values)})
    label = schema.label.name
    return ds.map(lambda e: ({k: v for k, v in e.items() if k != label}, e[label])).batch(batch_size)


@pytest.mark.parametrize("module,classes", [(digits, 10), (fraud, 1)])
def test_models_run_on_prepared_files(module, classes: int, tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    kwargs = {"n_per_bank": 200} if module is fraud else {}
    paths = module.prepare(tmp_path, **kwargs)
    task = module.task
    model = task.model_fn()
    assert sorted(model.input_names) == sorted(f.name for f in task.schema.features)
    features, label = next(iter(tf_batches(next(iter(paths.values()))["train"], task.schema, task.batch_size)))
    predictions = model(features)
    assert predictions.shape == (task.batch_size, classes)
    loss = task.loss_fn()(label, predictions)
    assert bool(tf.math.is_finite(loss))
    for metric in task.metrics_fn():
        metric.update_state(label, predictions)
        assert bool(tf.math.is_finite(metric.result()))

"""Datasets: schemas, file formats, per-client splits, registration, and (in ``tfdata``) tf.data pipelines."""

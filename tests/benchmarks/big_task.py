"""A ~10M-parameter MLP on the digits schema: a task whose rounds are dominated by moving the model.

``pixels`` [64] -> 3125 relu -> 3125 relu -> 10 softmax has
64*3125 + 3125 + 3125*3125 + 3125 + 3125*10 + 10 = 10,003,135 float32 parameters (40.0 MB).
With one local epoch over a small file (``prepare`` writes ``EXAMPLES_PER_SITE`` examples per site)
and a batch that holds all of it, each client does a single SGD step per round, so local training
is a small part of a round and the model's trips (state out, partial sums back, merge) dominate.

Refer to it as ``tests.benchmarks.big_task:task`` (from the repository root). Its schema is the
digits schema, so site configs can declare its files with ``task = "tffprod.examples.digits:task"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tffprod.data.files import write_tfrecord
from tffprod.examples.digits import NUM_CLASSES, SCHEMA, loss_fn, metrics_fn
from tffprod.task import Optimizer, Task

HIDDEN = 3125
EXAMPLES_PER_SITE = 128
BATCH_SIZE = 128  # the whole per-site file is one batch: one step per round


def num_parameters(hidden: int = HIDDEN) -> int:
    return 64 * hidden + hidden + hidden * hidden + hidden + hidden * NUM_CLASSES + NUM_CLASSES


def model_fn() -> Any:
    """``pixels`` [64] -> HIDDEN relu -> HIDDEN relu -> 10 softmax."""
    import tensorflow as tf

    pixels = tf.keras.Input(shape=(64,), name="pixels")
    hidden = tf.keras.layers.Dense(HIDDEN, activation="relu")(pixels)
    hidden = tf.keras.layers.Dense(HIDDEN, activation="relu")(hidden)
    probs = tf.keras.layers.Dense(NUM_CLASSES, activation="softmax")(hidden)
    return tf.keras.Model(inputs={"pixels": pixels}, outputs=probs, name="big_mlp")


task = Task(
    name="big-mlp",
    model_fn=model_fn,
    schema=SCHEMA,
    loss_fn=loss_fn,
    metrics_fn=metrics_fn,
    batch_size=BATCH_SIZE,
    local_epochs=1,
    client_optimizer=Optimizer("sgd", 0.01),
    server_optimizer=Optimizer("sgd", 1.0),
)


def prepare(out_dir: str | Path, sites: Sequence[str], *, examples_per_site: int = EXAMPLES_PER_SITE,
            seed: int = 0) -> dict[str, Path]:
    """Write ``out_dir/SITE/small.tfrecord`` for each site: a few digits examples each (disjoint).

    Returns:
        ``{site: path}``.
    """
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    pixels = (images / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(labels))
    if examples_per_site * len(sites) > len(order):
        raise ValueError(f"{len(sites)} sites x {examples_per_site} examples exceed the {len(order)} digits")
    paths = {}
    for s, site in enumerate(sites):
        mine = order[s * examples_per_site:(s + 1) * examples_per_site]
        paths[site] = Path(out_dir) / site / "small.tfrecord"
        write_tfrecord(paths[site], ({"pixels": pixels[i], "digit": int(labels[i])} for i in mine), SCHEMA)
    return paths

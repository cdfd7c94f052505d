"""The workload of ``bench_vs_tff`` (issue 15): 32 float features, a binary label, a Keras MLP.

``task`` is the MLP 32 -> 64 relu -> 64 relu -> 1 sigmoid (6,337 parameters); ``task_1m`` the same
with two hidden layers of 1,024 (1,084,417 parameters). Both: batch 32, one local epoch, client SGD
(learning rate 0.1), server SGD 1.0, weighted FedAvg. ``prepare`` writes each site's 2,000 examples as
TFRecord; ``examples`` gives the very same examples as NumPy arrays (TFF's in-memory simulation).

Refer to the tasks by file (``/abs/path/vs_tff_task.py:task``): so a ``tffprod`` console script, which
does not have the repository root on its path, can load them too. TF-free until a model is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tffprod import Feature, Optimizer, Schema, Task, write_tfrecord

FEATURES = 32
EXAMPLES_PER_SITE = 2000
SMALL, LARGE = (64, 64), (1024, 1024)  # hidden layers
SCHEMA = Schema(features=(Feature("x", "float32", (FEATURES,)),), label=Feature("y", "int64"))
FILE = Path(__file__).resolve()


def num_parameters(hidden: Sequence[int]) -> int:
    """Weights and biases of 32 -> hidden... -> 1."""
    sizes = [FEATURES, *hidden, 1]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def _model_builder(hidden: Sequence[int]) -> Any:
    def model_fn() -> Any:
        import tensorflow as tf

        x = tf.keras.Input(shape=(FEATURES,), name="x")
        h = x
        for width in hidden:
            h = tf.keras.layers.Dense(width, activation="relu")(h)
        prob = tf.keras.layers.Dense(1, activation="sigmoid")(h)
        return tf.keras.Model(inputs={"x": x}, outputs=prob, name=f"mlp_{'_'.join(map(str, hidden))}")

    return model_fn


def loss_fn() -> Any:
    import tensorflow as tf

    return tf.keras.losses.BinaryCrossentropy()


def metrics_fn() -> list:
    import tensorflow as tf

    return [tf.keras.metrics.BinaryAccuracy()]


def _task(name: str, hidden: Sequence[int]) -> Task:
    return Task(name=name, model_fn=_model_builder(hidden), schema=SCHEMA, loss_fn=loss_fn, metrics_fn=metrics_fn,
                batch_size=32, local_epochs=1, client_optimizer=Optimizer("sgd", 0.1),
                server_optimizer=Optimizer("sgd", 1.0))


task = _task("vs-tff-mlp", SMALL)
task_1m = _task("vs-tff-mlp-1m", LARGE)


def task_path(attr: str = "task") -> str:
    """The task as a spec names it: by file, so any process can load it."""
    return f"{FILE}:{attr}"


def examples(site_index: int, n: int = EXAMPLES_PER_SITE) -> tuple[np.ndarray, np.ndarray]:
    """Site ``site_index``'s examples: ``x`` float32 [n, 32], ``y`` int64 [n] (a noisy linear rule)."""
    w = np.random.default_rng(0).standard_normal(FEATURES).astype(np.float32)
    rng = np.random.default_rng(1000 + site_index)
    x = (rng.standard_normal((n, FEATURES)) + 0.2 * site_index).astype(np.float32)
    y = (x @ w + rng.standard_normal(n) > 0).astype(np.int64)
    return x, y


def prepare(out_dir: Path, sites: Sequence[str], n: int = EXAMPLES_PER_SITE) -> dict[str, Path]:
    """Write ``out_dir/SITE/train.tfrecord`` (site i holds ``examples(i)``) and ``out_dir/schema.json``.

    Returns:
        ``{site: path}``.
    """
    paths = {}
    for i, site in enumerate(sites):
        x, y = examples(i, n)
        paths[site] = Path(out_dir) / site / "train.tfrecord"
        write_tfrecord(paths[site], ({"x": x[j], "y": int(y[j])} for j in range(n)), SCHEMA)
    (Path(out_dir) / "schema.json").write_text(json.dumps(SCHEMA.to_dict()))
    return paths

"""A centralized reference: the task's model trained on pooled data with plain Keras.

Only for comparison (the demo and the accuracy test): federated sessions never
pool data. Imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tffprod.task import Task


def train_centrally(task: Task, train_path: Path, test_path: Path, *, fmt: str, epochs: int,
                    seed: int = 0) -> dict[str, Any]:
    """Train the task's model for ``epochs`` passes over ``train_path``; evaluate on ``test_path``.

    Uses the task's batch size and its client optimizer's learning rate (SGD or
    Adam), so a pass here matches a round of FedAvg with one local epoch.

    Returns:
        The Keras evaluation metrics on the test file, by metric name.
    """
    import tensorflow as tf

    from tffprod.data.tfdata import read_examples, to_model_input

    tf.keras.utils.set_random_seed(seed)
    model = task.model_fn()
    opt = task.client_optimizer
    optimizer = (
        tf.keras.optimizers.Adam(opt.learning_rate)
        if opt.name == "adam"
        else tf.keras.optimizers.SGD(opt.learning_rate, momentum=opt.momentum)
    )
    model.compile(optimizer=optimizer, loss=task.loss_fn(), metrics=task.metrics_fn())

    def load(path, shuffle):
        ds = read_examples(str(path), task.schema, fmt).map(to_model_input(task.schema))
        if shuffle:
            ds = ds.shuffle(4096, seed=seed)
        return ds.batch(task.batch_size)

    model.fit(load(train_path, True), epochs=epochs, verbose=0)
    return {k: float(v) for k, v in model.evaluate(load(test_path, False), verbose=0, return_dict=True).items()}

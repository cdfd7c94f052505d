"""Handwritten digits at three hospitals: a small non-IID image task.

Uses scikit-learn's bundled 8x8 digits (no download). Each hospital sees mostly a
few digits (a label-skewed Dirichlet split with a floor, so every site holds every
digit at least a little). Refer to the task as ``tffprod.examples.digits:task``.

Example:
    >>> from tffprod.examples import digits
    >>> paths = digits.prepare("data/digits")
    >>> paths["hospital-a"]["train"]
    PosixPath('data/digits/hospital-a/train.tfrecord')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tffprod import Feature, Optimizer, Schema, SpecError, Task, write_tfrecord

SITES = ("hospital-a", "hospital-b", "hospital-c")
CENTRAL = "central"  # out_dir/central/ holds the union of all sites, for a centralized reference
SCHEMA = Schema(features=(Feature("pixels", "float32", (64,)),), label=Feature("digit", "int64"))
NUM_CLASSES = 10


def model_fn() -> Any:
    """A small functional Keras MLP: ``pixels`` [64] -> 32 relu -> 10 softmax."""
    import tensorflow as tf

    pixels = tf.keras.Input(shape=(64,), name="pixels")
    hidden = tf.keras.layers.Dense(32, activation="relu")(pixels)
    probs = tf.keras.layers.Dense(NUM_CLASSES, activation="softmax")(hidden)
    return tf.keras.Model(inputs={"pixels": pixels}, outputs=probs, name="digits_mlp")


def loss_fn() -> Any:
    import tensorflow as tf

    return tf.keras.losses.SparseCategoricalCrossentropy()


def metrics_fn() -> list:
    import tensorflow as tf

    return [tf.keras.metrics.SparseCategoricalAccuracy()]


task = Task(
    name="digits",
    model_fn=model_fn,
    schema=SCHEMA,
    loss_fn=loss_fn,
    metrics_fn=metrics_fn,
    batch_size=16,
    local_epochs=1,
    client_optimizer=Optimizer("sgd", 0.1),
    server_optimizer=Optimizer("sgd", 1.0),
)


def _site_shares(n_sites: int, rng: np.random.Generator, alpha: float) -> np.ndarray:
    """Per-class share of each site: ``[class, site]``, rows sum to 1.

    A Dirichlet(alpha) draw per class skews labels across sites; a floor of 5% per site
    keeps every class present everywhere.
    """
    floor = 0.05
    draws = rng.dirichlet([alpha] * n_sites, size=NUM_CLASSES)
    return floor + (1.0 - floor * n_sites) * draws


def _assign(labels: np.ndarray, shares: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Site index of each example: within each class, cut a shuffled list by the class's shares."""
    site = np.empty(len(labels), dtype=np.int64)
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(np.cumsum(shares[c])[:-1] * len(idx)).astype(int)
        for s, part in enumerate(np.split(idx, cuts)):
            site[part] = s
    return site


def _rows(pixels: np.ndarray, labels: np.ndarray, order: np.ndarray) -> list[dict[str, Any]]:
    return [{"pixels": pixels[i], "digit": int(labels[i])} for i in order]


def prepare(
    out_dir: str | Path,
    *,
    sites: Sequence[str] = SITES,
    test_fraction: float = 0.2,
    seed: int = 0,
    alpha: float = 0.5,
) -> dict[str, dict[str, Path]]:
    """Write per-site train/test TFRecord files with a label-skewed (non-IID) split.

    The test examples come from one global stratified split made before the site
    split, then go to sites with the same label skew as the training examples.
    ``out_dir/central/{train,test}.tfrecord`` hold the union, for a centralized baseline.

    Args:
        out_dir: directory to write into (created if needed).
        sites: site names; one sub-directory each.
        test_fraction: share of all examples held out for testing.
        seed: makes the split (and the files' bytes) reproducible.
        alpha: Dirichlet concentration; smaller is more skewed.

    Returns:
        ``{site: {"train": path, "test": path}}`` for each site (not ``central``).

    Raises:
        SpecError: bad site names or fractions.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    sites = tuple(sites)
    if not sites or len(set(sites)) != len(sites) or CENTRAL in sites or not all(sites):
        raise SpecError(f"sites must be distinct, non-empty names other than {CENTRAL!r}, got {list(sites)}")
    if not 0.0 < test_fraction < 1.0 or not alpha > 0:
        raise SpecError(f"need 0 < test_fraction < 1 and alpha > 0, got {test_fraction}, {alpha}")

    images, labels = load_digits(return_X_y=True)
    pixels = (images / 16.0).astype(np.float32)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    rng = np.random.default_rng(seed)
    shares = _site_shares(len(sites), rng, alpha)
    split = {"train": train_idx, "test": test_idx}
    assigned = {part: _assign(labels[idx], shares, rng) for part, idx in split.items()}

    out = Path(out_dir)
    paths: dict[str, dict[str, Path]] = {}
    for s, site in enumerate(sites):
        paths[site] = {}
        for part, idx in split.items():
            mine = rng.permutation(idx[assigned[part] == s])
            paths[site][part] = out / site / f"{part}.tfrecord"
            write_tfrecord(paths[site][part], _rows(pixels, labels, mine), SCHEMA)
    for part, idx in split.items():
        write_tfrecord(out / CENTRAL / f"{part}.tfrecord", _rows(pixels, labels, rng.permutation(idx)), SCHEMA)
    return paths

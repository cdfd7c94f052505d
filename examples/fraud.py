"""Card fraud at three banks: a synthetic tabular task with skewed base rates.

Each bank's transactions come from the same feature distributions (with mild
shifts) and the same hidden logistic rule, but a bank-specific intercept sets its
fraud rate (about 1%, 3% and 8%). Refer to the task as ``tffprod.examples.fraud:task``
(``fraud:user_task`` for user-level DP with one step per customer, as in ``make demo``).

With ``customers_per_bank``, each transaction also carries the ``customer_id`` of
one of that many customers of its bank (several transactions each; ids differ
across banks). Registered with ``--client-id customer_id`` (or ``client_id =
"customer_id"`` at the site), each customer is a client and DP protects every
customer, not only every bank (user-level DP). The column is not a model feature.

Example:
    >>> from tffprod.examples import fraud
    >>> paths = fraud.prepare("data/fraud", n_per_bank=2000)
    >>> paths["bank-c"]["test"]
    PosixPath('data/fraud/bank-c/test.csv')
    >>> paths = fraud.prepare("data/fraud-customers", customers_per_bank=200)   # + customer_id
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from tffprod import Feature, Optimizer, Schema, SpecError, Task, write_csv

FRAUD_RATES = {"bank-a": 0.01, "bank-b": 0.03, "bank-c": 0.08}
# Each feature with the rough scale the model divides it by (so inputs are near [0, 1]).
FEATURE_SCALES = {
    "amount": 10.0,  # log1p(dollars)
    "hour": 24.0,
    "merchant_risk": 1.0,
    "distance_km": 100.0,
    "foreign": 1.0,
    "card_age_days": 1000.0,
}
SCHEMA = Schema(
    features=tuple(Feature(name, "float32") for name in FEATURE_SCALES),
    label=Feature("is_fraud", "int64"),
)
TEST_FRACTION = 0.2
CUSTOMER_ID = "customer_id"
CUSTOMERS_PER_BANK = 200  # a good default for ``prepare(customers_per_bank=...)``
# The files' columns with customers: the model's, plus the client-id column.
CUSTOMER_SCHEMA = Schema(features=SCHEMA.features + (Feature(CUSTOMER_ID, "int64"),), label=SCHEMA.label)


def model_fn() -> Any:
    """One scalar ``Input`` per feature, rescaled, concatenated, 16 relu -> 1 sigmoid."""
    import tensorflow as tf

    inputs = {name: tf.keras.Input(shape=(), name=name) for name in FEATURE_SCALES}
    columns = [
        tf.keras.layers.Rescaling(1.0 / scale)(tf.keras.layers.Reshape((1,))(inputs[name]))
        for name, scale in FEATURE_SCALES.items()
    ]
    hidden = tf.keras.layers.Dense(16, activation="relu")(tf.keras.layers.Concatenate()(columns))
    prob = tf.keras.layers.Dense(1, activation="sigmoid")(hidden)
    return tf.keras.Model(inputs=inputs, outputs=prob, name="fraud_mlp")


def loss_fn() -> Any:
    import tensorflow as tf

    return tf.keras.losses.BinaryCrossentropy()


def metrics_fn() -> list:
    import tensorflow as tf

    return [tf.keras.metrics.BinaryAccuracy(), tf.keras.metrics.AUC()]


task = Task(
    name="fraud",
    model_fn=model_fn,
    schema=SCHEMA,
    loss_fn=loss_fn,
    metrics_fn=metrics_fn,
    batch_size=32,
    local_epochs=1,
    client_optimizer=Optimizer("sgd", 0.1),
    server_optimizer=Optimizer("sgd", 1.0),
)

# For user-level DP with one step per customer (``[sampling] user_update = "one_step"``): each sampled
# customer's step is clipped (the spec's ``[dp] clip``), so a large client rate only sets how much of the
# clip a step uses; the server's momentum acts on the noised sum, so it costs no privacy.
user_task = dataclasses.replace(task, name="fraud-user-dp", client_optimizer=Optimizer("sgd", 5.0),
                                server_optimizer=Optimizer("sgd", 1.0, momentum=0.8))


def _features(n: int, rng: np.random.Generator, shift: float) -> dict[str, np.ndarray]:
    """Draw ``n`` transactions; ``shift`` in [0, 1] nudges amounts and foreign use up."""
    hour = np.where(rng.random(n) < 0.85, rng.normal(14.0, 4.0, n), rng.uniform(0.0, 24.0, n)) % 24.0
    return {
        "amount": np.log1p(rng.lognormal(3.5 + 0.3 * shift, 1.1, n)),
        "hour": np.floor(hour),
        "merchant_risk": rng.beta(2.0, 6.0, n),
        "distance_km": rng.exponential(15.0, n),
        "foreign": (rng.random(n) < 0.05 + 0.1 * shift).astype(np.float64),
        "card_age_days": rng.exponential(700.0, n),
    }


def _logit(x: dict[str, np.ndarray]) -> np.ndarray:
    """The hidden rule (without intercept): what the model has to learn."""
    night = ((x["hour"] < 6) | (x["hour"] >= 23)).astype(np.float64)
    return (
        1.2 * (x["amount"] - 3.5)
        + 5.0 * (x["merchant_risk"] - 0.25)
        + 1.0 * np.log1p(x["distance_km"] / 15.0)
        + 1.5 * x["foreign"]
        + 1.2 * night
        - 1.0 * np.log1p(x["card_age_days"] / 100.0)
    )


def _intercept(logit: np.ndarray, rate: float) -> float:
    """The intercept at which the expected fraud rate over ``logit`` is ``rate`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def prepare(out_dir: str | Path, *, n_per_bank: int = 2000, seed: int = 0,
            customers_per_bank: int | None = None) -> dict[str, dict[str, Path]]:
    """Write ``out_dir/<bank>/train.csv`` and ``test.csv`` for each bank in ``FRAUD_RATES``.

    Labels are drawn from the hidden logistic rule, so they are noisy but learnable; each
    bank's test split is stratified on the label and holds ``TEST_FRACTION`` of its rows.

    Args:
        out_dir: directory to write into (created if needed).
        n_per_bank: transactions per bank (train + test).
        seed: makes the data (and the files' bytes) reproducible.
        customers_per_bank: if given, add a ``customer_id`` column: each transaction
            belongs to one of this many customers of its bank (ids ``(bank + 1) * 100000 + k``);
            the other columns are the same as without it.

    Returns:
        ``{bank: {"train": path, "test": path}}``.

    Raises:
        SpecError: ``n_per_bank`` is too small to hold out a test split.
    """
    from sklearn.model_selection import train_test_split

    if n_per_bank < 100:
        raise SpecError(f"n_per_bank must be at least 100, got {n_per_bank}")
    if customers_per_bank is not None and not 1 <= customers_per_bank <= n_per_bank // 2:
        raise SpecError(f"customers_per_bank must be between 1 and n_per_bank / 2 (several transactions each), "
                        f"got {customers_per_bank}")
    rng = np.random.default_rng(seed)
    customers = np.random.default_rng([seed, 1])  # its own stream: the other columns stay as without it
    schema = SCHEMA if customers_per_bank is None else CUSTOMER_SCHEMA
    out = Path(out_dir)
    paths: dict[str, dict[str, Path]] = {}
    for i, (bank, rate) in enumerate(FRAUD_RATES.items()):
        x = _features(n_per_bank, rng, shift=i / max(len(FRAUD_RATES) - 1, 1))
        logit = _logit(x)
        y = (rng.random(n_per_bank) < 1.0 / (1.0 + np.exp(-(logit + _intercept(logit, rate))))).astype(np.int64)
        rows = [{**{k: float(v[j]) for k, v in x.items()}, "is_fraud": int(y[j])} for j in range(n_per_bank)]
        if customers_per_bank is not None:
            # Every customer has at least one transaction; the rest go to customers at random.
            owner = np.concatenate([np.arange(customers_per_bank),
                                    customers.integers(0, customers_per_bank, n_per_bank - customers_per_bank)])
            customers.shuffle(owner)
            for j, row in enumerate(rows):
                row[CUSTOMER_ID] = (i + 1) * 100000 + int(owner[j])
        stratify = y if 2 <= y.sum() <= n_per_bank - 2 else None
        train, test = train_test_split(rows, test_size=TEST_FRACTION, stratify=stratify, random_state=seed + i)
        paths[bank] = {"train": out / bank / "train.csv", "test": out / bank / "test.csv"}
        write_csv(paths[bank]["train"], train, schema)
        write_csv(paths[bank]["test"], test, schema)
    return paths


def pool(paths: dict[str, dict[str, Path]], out_dir: str | Path) -> dict[str, Path]:
    """Write every bank's rows of each split into one file, ``out_dir/<split>.csv``: the data a
    centralized reference trains on (what no bank could do). Returns ``{split: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pooled = {}
    for split in ("train", "test"):
        lines: list[str] = []
        for bank in paths:
            header, *rows = Path(paths[bank][split]).read_text().splitlines(keepends=True)
            lines += ([header] if not lines else []) + rows
        pooled[split] = out / f"{split}.csv"
        pooled[split].write_text("".join(lines))
    return pooled

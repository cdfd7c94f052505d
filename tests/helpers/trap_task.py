"""The digits task with a wide first layer (128 relu units): room for a weight-trap attack to catch
single training examples (tests/e2e/test_site_noise.py). Same schema and data as ``examples.digits``."""

from __future__ import annotations

import dataclasses
from typing import Any

from tffprod.examples import digits

HIDDEN = 128


def model_fn() -> Any:
    import tensorflow as tf

    pixels = tf.keras.Input(shape=(64,), name="pixels")
    hidden = tf.keras.layers.Dense(HIDDEN, activation="relu")(pixels)
    probs = tf.keras.layers.Dense(digits.NUM_CLASSES, activation="softmax")(hidden)
    return tf.keras.Model(inputs={"pixels": pixels}, outputs=probs, name="digits_wide")


task = dataclasses.replace(digits.task, name="digits-wide", model_fn=model_fn)

"""``tffprod.Task``: what an ML engineer writes to define federated training.

A task names a Keras model builder, the schema the model consumes, the loss,
metrics and local training settings. Specs refer to a task as
``module:attribute`` (or ``path/to/file.py:attribute``). Nothing here imports
TensorFlow; the callables a task holds do, when they are called.
"""

from __future__ import annotations

import dataclasses
import os
import re
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from tffprod.config import fields
from tffprod.errors import SpecError, TaskLoadError
from tffprod.data.schema import Schema

OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A TFF optimizer, declared so it can be recorded: ``sgd`` (with momentum) or ``adam``."""

    name: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise SpecError(f"optimizer {self.name!r} is not one of {', '.join(OPTIMIZERS)}")
        if not self.learning_rate > 0:
            raise SpecError(f"optimizer learning_rate must be > 0, got {self.learning_rate!r}")

    def build(self) -> Any:
        """The ``tff.learning.optimizers.Optimizer`` this declares (imports TFF)."""
        import tensorflow_federated as tff

        if self.name == "adam":
            return tff.learning.optimizers.build_adam(learning_rate=self.learning_rate)
        return tff.learning.optimizers.build_sgdm(
            learning_rate=self.learning_rate, momentum=self.momentum or None
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# A hook for custom algorithms: called with the task, a TFF model function and the
# model aggregator tffprod chose (DP or not); returns a tff.learning.templates.LearningProcess
# over tf.data datasets. tffprod composes it with its dataset reader and routes it like FedAvg.
ProcessBuilder = Callable[["Task", Callable[[], Any], Any], Any]


@dataclasses.dataclass(frozen=True)
class Task:
    """A federated learning task.

    Attributes:
        name: short name, used for model versions unless the spec names one.
        model_fn: builds a fresh, uncompiled ``tf.keras.Model`` whose inputs are named
            after ``schema.features`` (a functional model with one ``Input(name=...)`` each).
        schema: the features the model reads and the label it predicts.
        loss_fn: builds the Keras loss.
        metrics_fn: builds the list of Keras metrics (may be empty).
        batch_size: client batch size.
        local_epochs: passes over a client's data per round.
        client_optimizer: the optimizer clients train with.
        server_optimizer: the optimizer that applies the averaged update.
        process_builder: optional hook replacing FedAvg (see ``ProcessBuilder``).
    """

    name: str
    model_fn: Callable[[], Any]
    schema: Schema
    loss_fn: Callable[[], Any]
    metrics_fn: Callable[[], list] = list
    batch_size: int = 32
    local_epochs: int = 1
    client_optimizer: Optimizer = Optimizer("sgd", 0.1)
    server_optimizer: Optimizer = Optimizer("sgd", 1.0)
    process_builder: Optional[ProcessBuilder] = None

    def __post_init__(self) -> None:
        if not isinstance(self.schema, Schema):
            raise TaskLoadError(f"task {self.name!r}: schema must be a tffprod.Schema")
        for field in ("batch_size", "local_epochs"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise TaskLoadError(f"task {self.name!r}: {field} must be a positive integer, got {value!r}")

    def summary(self) -> dict[str, Any]:
        """What the registry records about this task."""
        return {
            "name": self.name,
            "schema": self.schema.to_dict(),
            "batch_size": self.batch_size,
            "local_epochs": self.local_epochs,
            "client_optimizer": self.client_optimizer.to_dict(),
            "server_optimizer": self.server_optimizer.to_dict(),
            "custom_process": self.process_builder is not None,
        }


def load_task(path: str) -> Task:
    """Import the task that ``path`` names: ``package.module:attr`` or ``file.py:attr``.

    Raises:
        TaskLoadError: the module does not import, the attribute is missing, or it is no Task.
    """
    module_name, sep, attr = path.rpartition(":")
    if not sep or not module_name or not attr:
        raise TaskLoadError(f"task {path!r}: expected 'module:attribute' or 'file.py:attribute'")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise TaskLoadError(f"task {path!r}: file {module_name} does not exist")
            spec = importlib.util.spec_from_file_location(f"_tffprod_task_{file.stem}", file)
            if spec is None or spec.loader is None:
                raise TaskLoadError(f"task {path!r}: cannot import {module_name}: not a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except TaskLoadError:
        raise
    except Exception as e:  # any import-time failure of user code
        raise TaskLoadError(f"task {path!r}: cannot import {module_name}: {type(e).__name__}: {e}") from e
    task = getattr(module, attr, None)
    if task is None:
        raise TaskLoadError(f"task {path!r}: module {module_name} has no attribute {attr!r}")
    if not isinstance(task, Task):
        raise TaskLoadError(f"task {path!r}: {attr} is a {type(task).__name__}, not a tffprod.Task")
    return task


# ---------------------------------------------------------------- task paths

_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")


def task_path(key: str, value: Any) -> str:
    """Checks a task path (``package.module:attribute`` or ``file.py:attribute``) under ``key``."""
    fields.string(key, value)
    module, sep, attr = value.rpartition(":")
    is_file = module.endswith(".py")
    if not sep or not module or not _IDENTIFIER.match(attr) or not (is_file or _MODULE.match(module)):
        raise SpecError(f"{key!r} must look like 'package.module:attribute' or 'file.py:attribute', got {value!r}")
    return value


def resolve_task(task: str, source: Optional[str]) -> str:
    """Makes a relative ``file.py:attr`` task path absolute against the spec file's folder."""
    module, _, attr = task.rpartition(":")
    if source is None or not module.endswith(".py") or os.path.isabs(module):
        return task
    return f"{os.path.abspath(os.path.join(os.path.dirname(source), module))}:{attr}"

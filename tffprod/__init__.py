"""tffprod: production federated learning on TensorFlow Federated.

Importing this package is cheap: it never imports TensorFlow. The parts that
need TensorFlow import it when they are called.
"""

from tffprod.errors import (
    DatasetError,
    NotFoundError,
    RegistryError,
    SchemaMismatchError,
    SessionError,
    SpecError,
    TaskLoadError,
    TffprodError,
)
from tffprod.schema import Feature, Schema
from tffprod.task import Optimizer, Task, load_task

__version__ = "0.1.0"

__all__ = [
    "DatasetError",
    "Feature",
    "NotFoundError",
    "Optimizer",
    "RegistryError",
    "Schema",
    "SchemaMismatchError",
    "SessionError",
    "SpecError",
    "Task",
    "TaskLoadError",
    "TffprodError",
    "load_task",
]

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
from tffprod.spec import DPConfig, SessionSpec, load_spec
from tffprod.task import Optimizer, Task, load_task

__version__ = "0.1.0"

__all__ = [
    "DPConfig",
    "DatasetError",
    "Feature",
    "NotFoundError",
    "Optimizer",
    "RegistryError",
    "Schema",
    "SchemaMismatchError",
    "SessionError",
    "SessionSpec",
    "SpecError",
    "Task",
    "TaskLoadError",
    "TffprodError",
    "load_spec",
    "load_task",
]

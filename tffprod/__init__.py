"""tffprod: production federated learning on TensorFlow Federated.

Importing this package is cheap: it never imports TensorFlow. The parts that
need TensorFlow import it when they are called.
"""

from tffprod.config.reliability import ReliabilityConfig
from tffprod.errors import (
    AccessDeniedError,
    AuditError,
    CheckpointError,
    DatasetError,
    NotFoundError,
    PrivacyBudgetError,
    RegistryError,
    SchemaMismatchError,
    SessionError,
    SpecError,
    TaskLoadError,
    TffprodError,
)
from tffprod.data.schema import Feature, Schema
from tffprod.privacy.config import DPConfig
from tffprod.config.spec import SessionSpec, load_spec
from tffprod.task import Optimizer, Task, load_task

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "AuditError",
    "CheckpointError",
    "DPConfig",
    "DatasetError",
    "Feature",
    "NotFoundError",
    "Optimizer",
    "PrivacyBudgetError",
    "RegistryError",
    "ReliabilityConfig",
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

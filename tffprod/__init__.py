"""tffprod: production federated learning on TensorFlow Federated.

The public API, by who uses it (``tffprod.registry.Registry`` opens a registry; the site side is
``tffprod.executors``). Importing this package is cheap: it never imports TensorFlow, and the
names that run things (``train``, ``create_backend``, ...) import their modules on first use.

How the package is laid out, and the path of one round through it: README, "How it fits together".
"""

import importlib as _importlib
from typing import Any as _Any

# Define a task and its data.
from tffprod.data.schema import Feature, Schema
from tffprod.task import Optimizer, Task, load_task

# Configure a session.
from tffprod.privacy.config import DPConfig, SamplingConfig
from tffprod.config.reliability import ReliabilityConfig
from tffprod.sessions.spec import SessionSpec, load_spec

# Errors: every error tffprod raises on purpose (tffprod.errors draws the tree with exit codes).
from tffprod.errors import (
    AccessDeniedError,
    AuditError,
    CertError,
    CheckpointError,
    DatasetError,
    FederationError,
    GatewayError,
    KitError,
    NotFoundError,
    PlanError,
    PrivacyBudgetError,
    RegistryError,
    ReleaseRefusedError,
    SchemaMismatchError,
    SessionError,
    SiteCheckError,
    SiteError,
    SiteUnavailableError,
    SiteUnreachableError,
    SpecError,
    TaskLoadError,
    TffprodError,
    WorkerError,
)

__version__ = "0.1.0"

# Run, evaluate and export (coordinator): name -> the module that defines it, imported on first use.
_LAZY = {
    # data helpers
    "register_dataset": "tffprod.data.register",
    "write_csv": "tffprod.data.files",
    "write_tfrecord": "tffprod.data.files",
    "read_examples": "tffprod.data.tfdata",  # inside a custom federated computation (imports TF)
    # where site computations run
    "Backend": "tffprod.backends.base",
    "create_backend": "tffprod.backends",
    # run a session
    "plan_session": "tffprod.sessions.planning",
    "make_plan": "tffprod.sessions.approval",
    "write_plan": "tffprod.sessions.approval",
    "train": "tffprod.sessions.runner",
    "run_session": "tffprod.sessions.runner",
    "train_from_plan": "tffprod.sessions.runner",
    "resume_session": "tffprod.sessions.resume",
    "cancel_session": "tffprod.sessions.resume",
    "run_federated": "tffprod.sessions.analytics",
    # evaluate and export
    "evaluate_version": "tffprod.sessions.evaluate",
    "export_version": "tffprod.models.export",
}

__all__ = [  # sorted; tests/unit/test_public_api.py keeps it in step with the names above
    "AccessDeniedError", "AuditError", "Backend", "CertError", "CheckpointError", "DPConfig", "DatasetError", "Feature",
    "FederationError", "GatewayError", "KitError", "NotFoundError", "Optimizer", "PlanError", "PrivacyBudgetError",
    "RegistryError", "ReleaseRefusedError", "ReliabilityConfig", "SamplingConfig", "Schema", "SchemaMismatchError",
    "SessionError", "SessionSpec", "SiteCheckError", "SiteError", "SiteUnavailableError", "SiteUnreachableError",
    "SpecError", "Task",
    "TaskLoadError", "TffprodError", "WorkerError", "cancel_session", "create_backend", "evaluate_version",
    "export_version", "load_spec", "load_task", "make_plan", "plan_session", "read_examples", "register_dataset",
    "resume_session", "run_federated", "run_session", "train", "train_from_plan", "write_csv", "write_plan",
    "write_tfrecord",
]


def __getattr__(name: str) -> _Any:
    """Imports a run/evaluate/export name's module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tffprod' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

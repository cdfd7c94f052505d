"""A model version's lineage: everything needed to say where a model came from.

Built when a session registers a version and stored with it (``model_versions.lineage``):
the session and its rounds, the sites and dataset versions (with content hashes), the DP
parameters and unit of privacy, epsilon and delta, the SHA-256 of the task module's
source file, the tffprod / TFF / TF versions, and the metrics overall and per site.

TF-free: the task module is found with ``importlib.util.find_spec``, never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore

# Every key a complete lineage has (values may be None where they do not apply, e.g. epsilon
# without DP, but the key is always there).
REQUIRED = ("session", "sites", "datasets", "dp", "privacy_unit", "epsilon", "delta", "task", "versions",
            "metrics")
SESSION_KEYS = ("id", "name", "backend", "rounds_completed", "rounds_planned")
TASK_KEYS = ("path", "file", "sha256")
VERSION_KEYS = ("tffprod", "tensorflow_federated", "tensorflow")


def task_source_file(task_path: str) -> Path | None:
    """The source file of the module a task path (``module:attr`` or ``file.py:attr``) names.

    Returns None if it cannot be found (the module is not importable from here, or is not
    backed by a file). Nothing is imported except parent packages, as ``find_spec`` does.
    """
    module_name = task_path.rpartition(":")[0] or task_path
    if module_name.endswith(".py"):
        file = Path(module_name)
        return file.resolve() if file.is_file() else None
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    return Path(spec.origin).resolve()


def task_source(task_path: str) -> dict[str, Any]:
    """``{"path", "file", "sha256"}`` of a task's module source (file and hash None if not found)."""
    file = task_source_file(task_path)
    digest = hashlib.sha256(file.read_bytes()).hexdigest() if file is not None else None
    return {"path": task_path, "file": str(file) if file is not None else None, "sha256": digest}


def package_versions() -> dict[str, str | None]:
    """Installed tffprod, tensorflow-federated and tensorflow versions (from metadata; nothing imported)."""
    from tffprod.sites.admin import local_versions

    return local_versions()


def dp_enabled(dp: Mapping[str, Any]) -> bool:
    """Whether a version's DP settings name a mechanism other than ``none``."""
    return dp.get("mechanism") not in (None, "none")


def _dataset_entry(row: Mapping[str, Any], role: str) -> dict[str, Any]:
    return {"ref": row["ref"], "role": role, "site": row["site"], "name": row["name"], "version": row["version"],
            "content_hash": row["content_hash"], "num_examples": row["num_examples"]}


def build_lineage(
    registry: RegistryStore,
    *,
    session_id: str,
    datasets: Sequence[str],
    eval_datasets: Sequence[str] = (),
    dp: Mapping[str, Any],
    epsilon: float | None,
    delta: float | None,
    task_path: str,
    train_metrics: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The lineage of a version trained by ``session_id``.

    Args:
        registry: The open registry (reads the session and each dataset version).
        session_id: The session that trained the version.
        datasets: Refs of the training dataset versions (``SITE/NAME:VERSION``).
        eval_datasets: Refs of the datasets it was evaluated on.
        dp: The version's DP settings (the spec's [dp] table, with ``privacy`` when DP is on).
        epsilon: Privacy spent, or None without DP.
        delta: The delta of ``epsilon``, or None without DP.
        task_path: The spec's task path.
        train_metrics: The last round's training metrics.
        evaluation: ``{"overall", "datasets": {ref: metrics}}`` as ``evaluation.evaluate`` returns it.

    Returns:
        A dict with every key of :data:`REQUIRED`.
    """
    session = registry.get_session(session_id)
    train_rows = [registry.get_dataset(ref) for ref in datasets]
    eval_rows = [registry.get_dataset(ref) for ref in eval_datasets]
    per_site: dict[str, dict[str, Any]] = {}
    for ref, metrics in (evaluation or {}).get("datasets", {}).items():
        per_site.setdefault(ref.split("/", 1)[0], {})[ref] = metrics
    privacy = dict(dp).get("privacy") or {}
    return {
        "session": {key: session.get(key) for key in SESSION_KEYS},
        "sites": sorted({row["site"] for row in train_rows}),
        "datasets": [_dataset_entry(r, "train") for r in train_rows] + [_dataset_entry(r, "eval") for r in eval_rows],
        "dp": dict(dp),
        "privacy_unit": privacy.get("unit") if dp_enabled(dp) else None,
        "epsilon": epsilon,
        "delta": delta,
        "task": task_source(task_path),
        "versions": package_versions(),
        "metrics": {"train": dict(train_metrics), "overall": (evaluation or {}).get("overall"),
                    "per_site": per_site},
    }


def missing_fields(lineage: Mapping[str, Any] | None) -> list[str]:
    """What a lineage lacks to be complete (``[]`` when complete).

    Complete: every :data:`REQUIRED` key present, the session, task and version entries
    filled in, the task source hashed, and every dataset carrying its version and content hash.
    """
    if not lineage:
        return list(REQUIRED)
    missing = [key for key in REQUIRED if key not in lineage]
    session = lineage.get("session") or {}
    missing += [f"session.{k}" for k in SESSION_KEYS if session.get(k) is None]
    task = lineage.get("task") or {}
    missing += [f"task.{k}" for k in TASK_KEYS if not task.get(k)]
    versions = lineage.get("versions") or {}
    missing += [f"versions.{k}" for k in VERSION_KEYS if k not in versions]
    if not lineage.get("sites"):
        missing.append("sites")
    for entry in lineage.get("datasets") or []:
        missing += [f"datasets[{entry.get('ref')}].{k}" for k in ("version", "content_hash") if not entry.get(k)]
    if dp_enabled(lineage.get("dp") or {}) and (lineage.get("epsilon") is None or lineage.get("delta") is None):
        missing.append("epsilon/delta")
    return missing

"""Compiled plan computations, cached by content, so planning an unchanged session again is fast.

Compiling a session's site computations takes TensorFlow's import and about 15 s of TFF work. What
they compile to depends only on: the spec (all of it but its name), the task module's source, the
datasets' formats and schemas, the population the DP aggregator divides by, and the code and versions
of tffprod, TFF and TensorFlow. :func:`cache_key` hashes exactly that (None when the task's source
cannot be read: then nothing is cached). An entry is the plan's ``computations`` list and, beside it,
the coordinator's own computations compiled with them (:mod:`tffprod.training.coordinator`), which
``session run --plan`` uses instead of building the training process again. Each proto is checked
against its SHA-256 when read, and the coordinator's block as a whole against its own; a damaged or
unreadable file is a miss. TF-free.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

__all__ = ["DIRECTORY", "cache_key", "load", "load_coordinator", "store"]

DIRECTORY = "plan-cache"  # beside the artifacts (``artifacts/plan-cache``), where ``session plan`` keeps it


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """SHA-256 over tffprod's own Python sources (paths and bytes, in path order)."""
    import tffprod

    root = Path(tffprod.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(plan: Any) -> Optional[str]:
    """The key of ``plan``'s (a :class:`tffprod.sessions.planning.SessionPlan`) compiled computations."""
    from tffprod.models.lineage import task_source
    from tffprod.sites.admin import local_versions

    source = task_source(plan.spec.task)
    if source["sha256"] is None:
        return None
    spec = {k: v for k, v in plan.spec.to_dict().items() if k != "name"}
    content = {
        "spec": spec,
        "task_source": source["sha256"],
        "format": plan.fmt,
        "schemas": [[row["schema"] for row in plan.datasets], [row["schema"] for row in plan.eval_datasets]],
        "population": [plan.population.describe(), plan.population.expected_clients_per_round],
        "code": _code_digest(),
        "versions": local_versions(),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def load(directory: Path, key: str) -> Optional[list[dict[str, Any]]]:
    """The cached computations under ``key``, or None (absent, unreadable, or a proto off its hash)."""
    try:
        entries = json.loads((Path(directory) / f"{key}.json").read_text())["computations"]
        return entries if all(_intact(entry) for entry in entries) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_coordinator(directory: Path, key: str) -> Optional[dict[str, Any]]:
    """The coordinator's block under ``key`` as :func:`store` was given it, or None (absent, unreadable, or
    a proto or the block off its hash). A block may say instead why there are none (``unavailable``)."""
    try:
        block = json.loads((Path(directory) / f"{key}.json").read_text())["coordinator"]
        sealed = block.pop("sha256")
        if sealed != _digest(block) or not all(_intact(entry) for entry in block.get("computations", [])):
            return None
        return block
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store(directory: Path, key: str, computations: list[dict[str, Any]],
          coordinator: Optional[dict[str, Any]] = None) -> None:
    """Write ``computations`` (and the ``coordinator``'s block, sealed with its SHA-256) under ``key``
    (atomically; a cache that cannot be written is skipped)."""
    directory = Path(directory)
    document: dict[str, Any] = {"computations": computations}
    if coordinator is not None:
        document["coordinator"] = {**coordinator, "sha256": _digest(coordinator)}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(document))
        os.replace(tmp, directory / f"{key}.json")
    except OSError:
        return


def _intact(entry: dict[str, Any]) -> bool:
    """Whether an entry's proto has the SHA-256 it was stored with."""
    import base64

    return hashlib.sha256(base64.b64decode(entry["proto"])).hexdigest() == entry["sha256"]


def _digest(block: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(block, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

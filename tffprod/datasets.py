"""Registering datasets: validate a site's file against its schema, then record it.

TF-free: files are read by ``tffprod.datafiles``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from tffprod.datafiles import content_hash, detect_format, validate_file
from tffprod.errors import DatasetError, NotFoundError, SpecError
from tffprod.schema import Schema


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``SITE/NAME`` into its parts; raise NotFoundError on anything else."""
    site, sep, name = ref.partition("/")
    if not sep or not site or not name or "/" in name or ":" in name:
        raise NotFoundError(f"dataset reference {ref!r} is not of the form SITE/NAME")
    return site, name


def load_schema_file(path: str | Path) -> Schema:
    """Read a schema from a JSON file (``{"features": [...], "label": {...}}``)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise SpecError(f"schema file {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"schema file {path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    return Schema.from_dict(data)


def register_dataset(registry: Any, ref: str, path: str | Path, *, schema: Schema,
                     fmt: Optional[str] = None) -> dict:
    """Validate the file at ``path`` against ``schema`` and record it as dataset ``ref``.

    Returns the registry row (a new version only when the content or schema changed).

    Raises:
        DatasetError: the file is missing, corrupt, or does not match the schema.
    """
    site, name = parse_ref(ref)
    path = Path(path).resolve()
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    fmt = fmt or detect_format(path)
    num_examples = validate_file(path, fmt, schema)
    if num_examples == 0:
        raise DatasetError(f"{path}: holds no examples")
    return registry.add_dataset(
        site=site,
        name=name,
        path=str(path),
        format=fmt,
        schema=schema.to_dict(),
        num_examples=num_examples,
        content_hash=content_hash(path),
    )

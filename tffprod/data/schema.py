"""Feature schemas: what a task consumes and what a dataset holds.

Pure Python (no TensorFlow) so the CLI and the registry can use it cheaply.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from tffprod.errors import SchemaMismatchError, SpecError

DTYPES = ("float32", "int64", "string")


@dataclasses.dataclass(frozen=True)
class Feature:
    """One named column: its dtype and the shape of one example's value."""

    name: str
    dtype: str = "float32"
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SpecError(f"feature name must be a non-empty string, got {self.name!r}")
        if self.dtype not in DTYPES:
            raise SpecError(f"feature {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        shape = tuple(self.shape)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise SpecError(f"feature {self.name!r}: shape {list(shape)} must be positive integers")
        object.__setattr__(self, "shape", shape)

    @property
    def size(self) -> int:
        """Number of scalar values in one example's value."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Feature":
        unknown = set(data) - {"name", "dtype", "shape"}
        if unknown:
            raise SpecError(f"feature: unknown key(s) {', '.join(sorted(unknown))}")
        if "name" not in data:
            raise SpecError("feature: missing 'name'")
        return cls(name=data["name"], dtype=data.get("dtype", "float32"), shape=tuple(data.get("shape", ())))


@dataclasses.dataclass(frozen=True)
class Schema:
    """The features a model reads, by name, and the label it learns."""

    features: tuple[Feature, ...]
    label: Feature

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        names = [f.name for f in self.features] + [self.label.name]
        if not self.features:
            raise SpecError("schema needs at least one feature")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecError(f"schema names a column twice: {', '.join(dupes)}")

    @property
    def columns(self) -> tuple[Feature, ...]:
        """Features then the label: every column a data file must hold."""
        return self.features + (self.label,)

    def to_dict(self) -> dict[str, Any]:
        return {"features": [f.to_dict() for f in self.features], "label": self.label.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Schema":
        if not isinstance(data, Mapping) or "features" not in data or "label" not in data:
            raise SpecError("schema needs 'features' (a list) and 'label'")
        unknown = set(data) - {"features", "label"}
        if unknown:
            raise SpecError(f"schema: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(
            features=tuple(Feature.from_dict(f) for f in data["features"]),
            label=Feature.from_dict(data["label"]),
        )

    def check_provides(self, required: "Schema", *, what: str) -> None:
        """Raise SchemaMismatchError unless this schema holds every column ``required`` needs.

        Args:
            required: the schema a task consumes.
            what: how to name this schema's owner in the message (e.g. a dataset reference).
        """
        mine = {c.name: c for c in self.columns}
        if required.label.name != self.label.name:
            raise SchemaMismatchError(
                f"{what}: label is {self.label.name!r}, the task expects {required.label.name!r}"
            )
        for col in required.columns:
            have = mine.get(col.name)
            if have is None:
                raise SchemaMismatchError(f"{what}: has no column {col.name!r} that the task needs")
            if (have.dtype, have.shape) != (col.dtype, col.shape):
                raise SchemaMismatchError(
                    f"{what}: column {col.name!r} is {have.dtype}{list(have.shape)}, "
                    f"the task expects {col.dtype}{list(col.shape)}"
                )


def load_schema_file(path: str | Path) -> Schema:
    """Read a schema from a JSON file (``{"features": [...], "label": {...}}``)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise SpecError(f"schema file {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"schema file {path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    return Schema.from_dict(data)

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
    """One named input: its dtype and the shape of one example's value.

    A feature reads the file's column of its name, or, given ``columns``, a group of CSV columns as one
    vector (``shape`` is then ``(len(columns),)``, in that order, all of ``dtype``)::

        Feature("vitals", "float32", columns=("heart_rate", "systolic", "diastolic"))
    """

    name: str
    dtype: str = "float32"
    shape: tuple[int, ...] = ()
    columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SpecError(f"feature name must be a non-empty string, got {self.name!r}")
        if self.dtype not in DTYPES:
            raise SpecError(f"feature {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        shape = tuple(self.shape)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise SpecError(f"feature {self.name!r}: shape {list(shape)} must be positive integers")
        columns = (self.columns,) if isinstance(self.columns, str) else tuple(self.columns)
        if columns:
            if not all(isinstance(c, str) and c for c in columns):
                raise SpecError(f"feature {self.name!r}: columns must be non-empty strings, got {list(columns)}")
            twice = sorted({c for c in columns if columns.count(c) > 1})
            if twice:
                raise SpecError(f"feature {self.name!r}: columns name {', '.join(twice)} twice")
            if shape not in ((), (len(columns),)):
                raise SpecError(f"feature {self.name!r}: shape {list(shape)} does not fit its {len(columns)} "
                                f"columns (a group of columns is a vector of shape [{len(columns)}])")
            shape = (len(columns),)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "columns", columns)

    @property
    def sources(self) -> tuple[str, ...]:
        """The file's columns this feature reads: its ``columns``, or the one of its name."""
        return self.columns or (self.name,)

    @property
    def size(self) -> int:
        """Number of scalar values in one example's value."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    def to_dict(self) -> dict[str, Any]:
        """``columns`` only when it is a group, so a schema without groups reads as it always has."""
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        return {**out, "columns": list(self.columns)} if self.columns else out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Feature":
        unknown = set(data) - {"name", "dtype", "shape", "columns"}
        if unknown:
            raise SpecError(f"feature: unknown key(s) {', '.join(sorted(unknown))}")
        if "name" not in data:
            raise SpecError("feature: missing 'name'")
        columns = data.get("columns", ())
        if not isinstance(columns, (list, tuple)):
            raise SpecError(f"feature {data['name']!r}: columns must be a list of column names")
        return cls(name=data["name"], dtype=data.get("dtype", "float32"), shape=tuple(data.get("shape", ())),
                   columns=tuple(columns))


@dataclasses.dataclass(frozen=True)
class Schema:
    """The features a model reads, by name, and the label it learns."""

    features: tuple[Feature, ...]
    label: Feature

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if not self.features:
            raise SpecError("schema needs at least one feature")
        if self.label.columns:
            raise SpecError(f"label {self.label.name!r}: a label is one column, not a group")
        names = [f.name for f in self.columns]
        sources = [s for f in self.columns for s in f.sources]
        dupes = sorted({n for n in names if names.count(n) > 1} | {s for s in sources if sources.count(s) > 1})
        if dupes:
            raise SpecError(f"schema names a column twice: {', '.join(dupes)}")
        clash = sorted(f.name for f in self.features if f.columns and f.name in sources)
        if clash:
            raise SpecError(f"schema: group {clash[0]!r} has the name of a column it reads from the file; "
                            "name the group differently")

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
            if have.columns != col.columns:
                raise SchemaMismatchError(
                    f"{what}: feature {col.name!r} reads columns {', '.join(have.sources)}, "
                    f"the task's reads {', '.join(col.sources)}"
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

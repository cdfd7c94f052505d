"""What every data format provides, and the helpers the formats share (TF-free).

A format is one object registered by name in :data:`tffprod.data.formats.FORMATS`. The
format-independent work (picking the format, opening the file, the empty-file check, the
one-line errors for an unknown format or an unreadable file, sorting client ids) stays in
:mod:`tffprod.data.files` and :mod:`tffprod.data.clients`, which dispatch to the format here.

Every problem a format finds is a :class:`tffprod.errors.DatasetError` whose message is one
line naming the file, the example (or row) and what is wrong.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any, Callable, ClassVar, Iterable, Iterator, Mapping

from tffprod.data.schema import Feature, Schema
from tffprod.errors import DatasetError

__all__ = ["INT64_MAX", "INT64_MIN", "DataFormat", "count_problem", "row_values", "write_atomically"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class DataFormat(ABC):
    """A file format for datasets: reading, writing and splitting by client, without TensorFlow
    (only :meth:`tf_dataset` uses TensorFlow, imported when it is called)."""

    #: The format's name, as written in site configs, the registry and ``--format``.
    name: ClassVar[str]
    #: File suffixes (lower case, with the dot) :func:`tffprod.data.files.detect_format` maps to
    #: this format; the first is the one written (client shards) and suggested in messages.
    suffixes: ClassVar[tuple[str, ...]]

    def check_schema(self, path: Path, schema: Schema) -> None:
        """Refuse a schema the format cannot hold, before the file is opened (default: any schema).

        Raises:
            DatasetError: naming ``path`` and the column the format cannot hold.
        """
        return None

    @abstractmethod
    def open(self, path: Path) -> IO[Any]:
        """The file opened as the format reads it (bytes or text); ``OSError`` if it cannot be."""

    @abstractmethod
    def examples(self, path: Path, stream: IO[Any], schema: Schema) -> Iterator[dict[str, Any]]:
        """``{column: value}`` for each example of a non-empty ``stream``, checked against ``schema``.

        Values as :func:`tffprod.data.files.iter_examples` documents: a Python scalar for a
        scalar column, a flat list for a vector one, strings as ``bytes``.
        """

    @abstractmethod
    def write(self, path: Path, rows: Iterable[Mapping[str, Any]], schema: Schema) -> int:
        """Write ``rows`` (one mapping per example holding every schema column) atomically.

        Returns:
            The number of examples written.
        """

    @abstractmethod
    def client_rows(self, path: Path, stream: IO[Any], column: str) -> tuple[Any, Iterator[tuple[str, Any]]]:
        """The file's header (or None) and ``(client id, raw row)`` pairs, in file order.

        A raw row is the example as stored (record bytes, list of cells), to be copied as is by
        :meth:`write_shard`. The format owns ``stream`` and closes it when the pairs are
        exhausted or on an error.
        """

    @abstractmethod
    def write_shard(self, path: Path, header: Any, rows: list[Any]) -> None:
        """Write one client's raw rows (from :meth:`client_rows`) to ``path``, so it reads like the
        original file; ``OSError`` if it cannot."""

    @abstractmethod
    def tf_dataset(self, ref: Any, schema: Schema) -> Any:
        """A ``tf.data.Dataset`` of dicts column name -> value, one per example of the file ``ref``
        (a string tensor inside a TFF computation). TensorFlow is imported here, when called."""

    def tf_columns(self, refs: Any, schema: Schema) -> Any:
        """Every example of the files ``refs`` (a string vector) at once, as :meth:`tf_dataset` reads them:
        ``(columns, file)``, each of ``schema``'s columns as one tensor over all rows and each row's position
        in ``refs``; None where the format has no vectorized reader (callers then use :meth:`tf_dataset`)."""
        return None


# --- helpers the formats share ----------------------------------------------------------------


def count_problem(where: str, count: int, col: Feature) -> str:
    return f"{where}: has {count} value(s), shape {list(col.shape)} needs {col.size}"


def _flatten(value: Any) -> list[Any]:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, without importing numpy
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flatten(item)]
    return [value]


def row_values(path: Path, number: int, row: Mapping[str, Any], col: Feature) -> list[Any]:
    """The flat, type-checked values of one column of one row to be written."""
    where = f"{path}: example {number}: column {col.name!r}"
    if col.name not in row:
        raise DatasetError(f"{where}: missing from the row")
    values = _flatten(row[col.name])
    if len(values) != col.size:
        raise DatasetError(count_problem(where, len(values), col))
    for v in values:
        if col.dtype == "float32":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif col.dtype == "int64":
            ok = isinstance(v, int) and not isinstance(v, bool) and INT64_MIN <= v <= INT64_MAX
        else:
            ok = isinstance(v, (str, bytes))
        if not ok:
            raise DatasetError(f"{where}: {v!r} is not a {col.dtype}")
    if col.dtype == "float32":
        return [float(v) for v in values]
    if col.dtype == "string":
        return [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    return values


def write_atomically(path: Path, mode: str, write: Callable[[Any], int]) -> int:
    """Call ``write`` with a temp file next to ``path`` opened in ``mode``, then move it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text: dict[str, Any] = {} if "b" in mode else {"newline": "", "encoding": "utf-8"}
        with open(tmp, mode, **text) as stream:
            count = write(stream)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{path}: cannot write: {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count

"""Reading, validating, hashing and writing dataset files, without TensorFlow.

The registry checks data files when they are registered, and registry commands
must stay fast, so nothing here imports TensorFlow. The formats (``tfrecord``,
``csv``, ...) are registered in :mod:`tffprod.data.formats`; the functions here
pick the format by name (or by suffix) and do what is the same for every format.

Every problem is a :class:`tffprod.errors.DatasetError` whose message is one
line naming the file, the example (or row) and what is wrong.

String columns are returned as ``bytes`` by :func:`iter_examples` in every
format, as TensorFlow does; the writers accept ``str`` or ``bytes``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Union

from tffprod.data.formats import FORMATS, get_format
from tffprod.data.schema import Schema
from tffprod.errors import DatasetError

_CHUNK = 1 << 20

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["FORMATS", "PathLike", "content_hash", "detect_format", "iter_examples", "validate_file",
           "write_csv", "write_examples", "write_tfrecord"]


def detect_format(path: PathLike) -> str:
    """The format a file's suffix names (the suffixes of the formats in ``FORMATS``).

    Raises:
        DatasetError: the suffix is not one of them (.tfrecord, .tfrecords, .tfr, .csv, ...).
    """
    suffixes = {suffix: fmt.name for fmt in FORMATS.values() for suffix in fmt.suffixes}
    name = suffixes.get(Path(path).suffix.lower())
    if name is None:
        raise DatasetError(
            f"{path}: cannot tell the format from the suffix; use one of {', '.join(sorted(suffixes))}"
        )
    return name


def content_hash(path: PathLike) -> str:
    """``"sha256:<hex>"`` of the file's bytes, read in chunks.

    Raises:
        DatasetError: the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e.strerror or e}") from e
    return f"sha256:{digest.hexdigest()}"


def iter_examples(path: PathLike, fmt: str, schema: Schema) -> Iterator[dict[str, Any]]:
    """Read and check a data file, one example at a time.

    Args:
        path: the data file.
        fmt: one of ``FORMATS``.
        schema: the columns every example must hold.

    Yields:
        ``{column: value}`` for the schema's columns: a Python scalar for a scalar
        column, a flat list for a vector one; strings as ``bytes``.

    Raises:
        DatasetError: the format is unknown, the file is missing, empty or corrupt, or an
            example is off the schema.
    """
    path = Path(path)
    data_format = get_format(fmt, path)
    data_format.check_schema(path, schema)
    try:
        stream = data_format.open(path)
    except OSError as e:
        raise DatasetError(f"{path}: cannot open: {e.strerror or e}") from e
    with stream:
        if os.fstat(stream.fileno()).st_size == 0:
            raise DatasetError(f"{path}: file is empty")
        yield from data_format.examples(path, stream, schema)


def validate_file(path: PathLike, fmt: str, schema: Schema) -> int:
    """Check every example of a data file against ``schema``.

    Returns:
        The number of examples.

    Raises:
        DatasetError: one line naming the file, the example or row and the problem.
    """
    return sum(1 for _ in iter_examples(path, fmt, schema))


def write_examples(path: PathLike, fmt: str, rows: Iterable[Mapping[str, Any]], schema: Schema) -> int:
    """Write ``rows`` as a file of format ``fmt`` (atomically, via a temp file).

    Args:
        path: the file to write.
        fmt: one of ``FORMATS``.
        rows: one mapping per example holding every schema column; vector values may be
            nested lists or numpy arrays of the column's shape (where the format holds them).
        schema: the columns to write.

    Returns:
        The number of examples written.

    Raises:
        DatasetError: the format is unknown or cannot hold the schema, a row lacks a column or
            holds a value of the wrong type or size, or the file cannot be written.
    """
    path = Path(path)
    return get_format(fmt, path).write(path, rows, schema)


def write_tfrecord(path: PathLike, rows: Iterable[Mapping[str, Any]], schema: Schema) -> int:
    """Write ``rows`` as a TFRecord file of ``tf.train.Example`` (atomically, via a temp file).

    Args:
        path: the file to write.
        rows: one mapping per example holding every schema column; vector values may be
            nested lists or numpy arrays of the column's shape.
        schema: the columns to write.

    Returns:
        The number of examples written.

    Raises:
        DatasetError: a row lacks a column or holds a value of the wrong type or size.
    """
    return write_examples(path, "tfrecord", rows, schema)


def write_csv(path: PathLike, rows: Iterable[Mapping[str, Any]], schema: Schema) -> int:
    """Write ``rows`` as a CSV file with a header row (atomically, via a temp file).

    Args:
        path: the file to write.
        rows: one mapping per example holding every schema column (scalars only).
        schema: the columns to write; features first, then the label.

    Returns:
        The number of rows written.

    Raises:
        DatasetError: the schema has a vector column, or a row is off the schema.
    """
    return write_examples(path, "csv", rows, schema)

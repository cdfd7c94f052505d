"""Client-id columns: the distinct clients of a data file, and one shard of rows per client.

A client's index (what coordinators address it by) is its position in :func:`client_ids`.
TF-free, like :mod:`tffprod.data.files`; each format (:mod:`tffprod.data.formats`) reads its
client-id column and writes its shards.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

from tffprod.data.files import PathLike
from tffprod.data.formats import get_format
from tffprod.errors import DatasetError, SpecError

_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _sorted_ids(ids: Iterable[str]) -> list[str]:
    """Client ids in their canonical order: numeric when every id is an integer, else by text."""
    ids = set(ids)
    if all(_is_integer(i) for i in ids):
        return sorted(ids, key=lambda i: (int(i), i))
    return sorted(ids)


def _is_integer(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _client_rows(path: PathLike, fmt: str, column: str) -> tuple[Any, Iterator[tuple[str, Any]]]:
    """The file's header (the format's; None for TFRecord) and ``(client id, raw row)`` pairs, in
    file order. A raw row is the example as stored (a TFRecord record's bytes, a CSV row's cells).
    """
    path = Path(path)
    data_format = get_format(fmt, path)
    try:
        stream = data_format.open(path)
    except OSError as e:
        raise DatasetError(f"{path}: cannot open: {e.strerror or e}") from e
    return data_format.client_rows(path, stream, column)


def client_ids(path: PathLike, fmt: str, column: str) -> list[str]:
    """The distinct client ids in column ``column``, in canonical order (numeric if all are integers).

    A client's index (what coordinators address it by) is its position in this list.

    Raises:
        DatasetError: the file cannot be read, the column is missing, or a row's id is empty
            or not one int64 / string value.
    """
    _, rows = _client_rows(path, fmt, column)
    ids = _sorted_ids(key for key, _ in rows)
    if not ids:
        raise DatasetError(f"{path}: holds no examples")
    return ids


def split_by_client(path: PathLike, fmt: str, column: str, out_dir: PathLike) -> list[Path]:
    """Write each client's rows of ``path`` to its own file in ``out_dir`` (the client's index order).

    Records are copied byte for byte (TFRecord) or cell for cell (CSV, with the header), so
    every shard reads like the original file. An existing ``out_dir`` is taken as already
    written (name it after the file's content hash); a new one appears atomically.
    Holds the file's rows in memory while splitting.

    Returns:
        The shard of client ``i`` at position ``i``.

    Raises:
        DatasetError: as :func:`client_ids`, or a shard cannot be written.
    """
    out = Path(out_dir)
    data_format = get_format(fmt, path)
    suffix = data_format.suffixes[0]
    if out.is_dir():
        shards = sorted(out.glob(f"*{suffix}"))
        return shards
    header, rows = _client_rows(path, fmt, column)
    by_client: dict[str, list[Any]] = {}
    for key, row in rows:
        by_client.setdefault(key, []).append(row)
    ids = _sorted_ids(by_client)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        width = max(5, len(str(len(ids))))
        for i, key in enumerate(ids):
            data_format.write_shard(tmp / f"{i:0{width}d}{suffix}", header, by_client[key])
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not out.is_dir():  # another process may have won the race
            raise DatasetError(f"{out}: cannot write client shards: {e.strerror or e}") from e
    return sorted(out.glob(f"*{suffix}"))


def check_client_id(column: Any, *, what: str = "client_id") -> str:
    """A client-id column name: letters, digits, '_', '.', '-' (it travels inside references).

    Raises:
        SpecError: anything else.
    """
    if not isinstance(column, str) or not _COLUMN.match(column):
        raise SpecError(f"{what} must be a column name of letters, digits, '_', '.' and '-', got {column!r}")
    return column

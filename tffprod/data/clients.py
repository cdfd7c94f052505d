"""Client-id columns: the distinct clients of a data file, and one shard of rows per client.

A client's index (what coordinators address it by) is its position in :func:`client_ids`.
TF-free, like :mod:`tffprod.data.files`, whose TFRecord framing it reuses.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

from tffprod.data.files import FORMATS, PathLike, _write_record, open_data, parse_examples
from tffprod.errors import DatasetError, SpecError

_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _client_key(value: Any) -> str:
    return str(value) if isinstance(value, int) else value.decode("utf-8", errors="backslashreplace")


def _sorted_ids(ids: Iterable[str]) -> list[str]:
    """Client ids in their canonical order: numeric when every id is an integer, else by text."""
    ids = set(ids)
    if all(_is_integer(i) for i in ids):
        return sorted(ids, key=lambda i: (int(i), i))
    return sorted(ids)


def _is_integer(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _client_rows(path: PathLike, fmt: str, column: str) -> tuple[list[str] | None, Iterator[tuple[str, Any]]]:
    """The CSV header (None for TFRecord) and ``(client id, raw row)`` pairs, in file order.

    A raw row is the record's bytes (TFRecord) or its list of cells (CSV), copied as is.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise DatasetError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    try:
        stream = open_data(path, fmt)
    except OSError as e:
        raise DatasetError(f"{path}: cannot open: {e.strerror or e}") from e
    if fmt == "csv":
        reader = csv.reader(stream)
        try:
            header = next(reader)
        except (StopIteration, csv.Error, UnicodeDecodeError):
            stream.close()
            raise DatasetError(f"{path}: header row: missing or unreadable") from None
        names = [name.strip() for name in header]
        if column not in names:
            stream.close()
            raise DatasetError(f"{path}: header row: missing client-id column {column!r} "
                               f"(header has {', '.join(names)})")
        index = names.index(column)

        def csv_rows() -> Iterator[tuple[str, Any]]:
            with stream:
                for number, row in enumerate(reader, start=1):
                    if len(row) != len(header):
                        raise DatasetError(f"{path}: row {number}: has {len(row)} cells, the header has "
                                           f"{len(header)}")
                    value = row[index].strip()
                    if not value:
                        raise DatasetError(f"{path}: row {number}: client-id column {column!r} is empty")
                    yield value, row

        return header, csv_rows()

    def tfrecord_rows() -> Iterator[tuple[str, Any]]:
        with stream:
            for number, data, example in parse_examples(path, stream):
                where = f"{path}: example {number}: client-id column {column!r}"
                features = example.features.feature
                if column not in features:
                    raise DatasetError(f"{where}: missing")
                kind = features[column].WhichOneof("kind")
                if kind not in ("int64_list", "bytes_list"):
                    raise DatasetError(f"{where}: holds a {kind or 'feature with no value'}; "
                                       "a client id is an int64 or a string")
                values = list(getattr(features[column], kind).value)
                if len(values) != 1:
                    raise DatasetError(f"{where}: has {len(values)} values, a client id has one")
                yield _client_key(values[0]), data

    return None, tfrecord_rows()


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
    suffix = ".csv" if fmt == "csv" else ".tfrecord"
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
            shard = tmp / f"{i:0{width}d}{suffix}"
            if header is not None:  # CSV (a TFRecord file has no header)
                with open(shard, "w", newline="", encoding="utf-8") as stream:
                    writer = csv.writer(stream, lineterminator="\n")
                    writer.writerow(header)
                    writer.writerows(by_client[key])
            else:
                with open(shard, "wb") as stream:
                    for data in by_client[key]:
                        _write_record(stream, data)
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

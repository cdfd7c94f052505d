"""Reading, validating, hashing and writing dataset files, without TensorFlow.

The registry checks data files when they are registered, and registry commands
must stay fast, so nothing here imports TensorFlow (not even
``tensorflow.core.example.example_pb2``, which pulls in all of TF). Two formats:

* ``tfrecord``: TFRecord files of ``tf.train.Example``. The framing is read and
  written here; the Example messages are built at import time from a
  descriptor that is wire-compatible with ``tensorflow/core/example/*.proto``.
* ``csv``: a header row, then one example per row; scalar columns only.

Every problem is a :class:`tffprod.errors.DatasetError` whose message is one
line naming the file, the example (or row) and what is wrong.

String columns are returned as ``bytes`` by :func:`iter_examples` in both
formats, as TensorFlow does; the writers accept ``str`` or ``bytes``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import struct
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterable, Iterator, Mapping, Union

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from tffprod.errors import DatasetError
from tffprod.data.schema import Feature, Schema

FORMATS = ("tfrecord", "csv")
_SUFFIXES = {".tfrecord": "tfrecord", ".tfrecords": "tfrecord", ".tfr": "tfrecord", ".csv": "csv"}
_KIND = {"float32": "float_list", "int64": "int64_list", "string": "bytes_list"}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CHUNK = 1 << 20

PathLike = Union[str, "os.PathLike[str]"]


# --- tf.train.Example, built without TensorFlow ----------------------------------------------


def _example_class() -> type:
    """Build ``Example`` in a private pool (so it never clashes with TF's own, if TF is loaded)."""
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="tffprod/example.proto", package="tffprod.example", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> descriptor_pb2.DescriptorProto:
        msg = descriptor_pb2.DescriptorProto(name=name)
        for field_name, number, label, ftype, type_name in fields:
            field = msg.field.add(name=field_name, number=number, label=label, type=ftype)
            if type_name:
                field.type_name = type_name
        return msg

    rep, opt = f.LABEL_REPEATED, f.LABEL_OPTIONAL
    file.message_type.append(message("BytesList", ("value", 1, rep, f.TYPE_BYTES, "")))
    file.message_type.append(message("FloatList", ("value", 1, rep, f.TYPE_FLOAT, "")))
    file.message_type.append(message("Int64List", ("value", 1, rep, f.TYPE_INT64, "")))
    feature = message(
        "Feature",
        ("bytes_list", 1, opt, f.TYPE_MESSAGE, ".tffprod.example.BytesList"),
        ("float_list", 2, opt, f.TYPE_MESSAGE, ".tffprod.example.FloatList"),
        ("int64_list", 3, opt, f.TYPE_MESSAGE, ".tffprod.example.Int64List"),
    )
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    file.message_type.append(feature)
    features = message("Features", ("feature", 1, rep, f.TYPE_MESSAGE, ".tffprod.example.Features.FeatureEntry"))
    entry = message(
        "FeatureEntry",
        ("key", 1, opt, f.TYPE_STRING, ""),
        ("value", 2, opt, f.TYPE_MESSAGE, ".tffprod.example.Feature"),
    )
    entry.options.map_entry = True
    features.nested_type.append(entry)
    file.message_type.append(features)
    file.message_type.append(message("Example", ("features", 1, opt, f.TYPE_MESSAGE, ".tffprod.example.Features")))

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    # proto3 packs repeated scalars by default, as TF's feature.proto asks with [packed = true].
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tffprod.example.Example"))


Example = _example_class()


# --- TFRecord framing ------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), table-driven, pure Python."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC TFRecord stores: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _read_records(path: Path, stream: IO[bytes]) -> Iterator[bytes]:
    """Yield the payload of each TFRecord frame; raise DatasetError on a truncated or garbled frame.

    The length's CRC is checked (8 bytes a frame, cheap), which catches garbage and
    damaged length fields. The payload's CRC is NOT checked: no crc32c library is
    installed and the pure-Python one runs at roughly 10 MB/s, too slow for large
    files; a damaged payload is still caught when it fails to parse or to match the schema.
    """
    size = os.fstat(stream.fileno()).st_size
    number = 0
    while True:
        offset = stream.tell()
        header = stream.read(12)
        if not header:
            return
        number += 1
        where = f"{path}: example {number} (byte {offset})"
        if len(header) < 12:
            raise DatasetError(f"{where}: truncated frame header ({len(header)} of 12 bytes)")
        length, length_crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != length_crc:
            raise DatasetError(f"{where}: bad frame: length checksum mismatch (not a TFRecord file, or corrupt)")
        if offset + 12 + length + 4 > size:
            need, have = length + 16, size - offset
            raise DatasetError(f"{where}: truncated record: frame needs {need} bytes, {have} remain")
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) < length or len(footer) < 4:
            raise DatasetError(f"{where}: truncated record")
        yield data


def _write_record(stream: BinaryIO, data: bytes) -> None:
    header = struct.pack("<Q", len(data))
    stream.write(header + struct.pack("<I", masked_crc32c(header)))
    stream.write(data + struct.pack("<I", masked_crc32c(data)))


# --- public API ------------------------------------------------------------------------------


def detect_format(path: PathLike) -> str:
    """The format a file's suffix names.

    Raises:
        DatasetError: the suffix is not one of .tfrecord, .tfrecords, .tfr or .csv.
    """
    fmt = _SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise DatasetError(
            f"{path}: cannot tell the format from the suffix; use one of {', '.join(sorted(_SUFFIXES))}"
        )
    return fmt


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
        DatasetError: the file is missing, empty or corrupt, or an example is off the schema.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise DatasetError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        _check_csv_schema(path, schema)
    try:
        stream = open_data(path, fmt)
    except OSError as e:
        raise DatasetError(f"{path}: cannot open: {e.strerror or e}") from e
    with stream:
        if os.fstat(stream.fileno()).st_size == 0:
            raise DatasetError(f"{path}: file is empty")
        if fmt == "tfrecord":
            yield from _iter_tfrecord(path, stream, schema)
        else:
            yield from _iter_csv(path, stream, schema)


def validate_file(path: PathLike, fmt: str, schema: Schema) -> int:
    """Check every example of a data file against ``schema``.

    Returns:
        The number of examples.

    Raises:
        DatasetError: one line naming the file, the example or row and the problem.
    """
    return sum(1 for _ in iter_examples(path, fmt, schema))


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
    path = Path(path)

    def write(stream: Any) -> int:
        count = 0
        for count, row in enumerate(rows, start=1):
            example = Example()
            for col in schema.columns:
                values = _row_values(path, count, row, col)
                getattr(example.features.feature[col.name], _KIND[col.dtype]).value.extend(values)
            _write_record(stream, example.SerializeToString(deterministic=True))
        return count

    return _write_atomically(path, "wb", write)


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
    path = Path(path)
    _check_csv_schema(path, schema)

    def write(stream: Any) -> int:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow([c.name for c in schema.columns])
        count = 0
        for count, row in enumerate(rows, start=1):
            cells = []
            for col in schema.columns:
                (value,) = _row_values(path, count, row, col)
                if col.dtype == "float32":
                    cells.append(format(value, ".9g"))  # enough digits to round-trip a float32
                elif col.dtype == "string":
                    cells.append(value.decode("utf-8") if isinstance(value, bytes) else value)
                else:
                    cells.append(str(value))
            writer.writerow(cells)
        return count

    return _write_atomically(path, "w", write)


# --- helpers ---------------------------------------------------------------------------------


def open_data(path: Path, fmt: str) -> IO[Any]:
    """A data file opened as its format is read: bytes (TFRecord) or text (CSV, BOM skipped)."""
    if fmt == "tfrecord":
        return open(path, "rb")
    return open(path, newline="", encoding="utf-8-sig")


def parse_examples(path: Path, stream: IO[bytes]) -> Iterator[tuple[int, bytes, Any]]:
    """``(number, record bytes, tf.train.Example)`` for each record of a TFRecord stream, from 1.

    Raises:
        DatasetError: a record that is not a ``tf.train.Example`` (or a broken frame).
    """
    for number, data in enumerate(_read_records(path, stream), start=1):
        example = Example()
        try:
            example.ParseFromString(data)
        except DecodeError as e:
            raise DatasetError(f"{path}: example {number}: unparseable record, not a tf.train.Example: {e}") from e
        yield number, data, example


def _iter_tfrecord(path: Path, stream: IO[bytes], schema: Schema) -> Iterator[dict[str, Any]]:
    for number, _, example in parse_examples(path, stream):
        features = example.features.feature
        out: dict[str, Any] = {}
        for col in schema.columns:
            where = f"{path}: example {number}: column {col.name!r}"
            if col.name not in features:
                raise DatasetError(f"{where}: missing")
            kind = features[col.name].WhichOneof("kind")
            if kind != _KIND[col.dtype]:
                held = kind or "feature with no value"
                raise DatasetError(f"{where}: holds a {held}, schema says {col.dtype} ({_KIND[col.dtype]})")
            values = list(getattr(features[col.name], kind).value)
            if len(values) != col.size:
                raise DatasetError(_count_problem(where, len(values), col))
            out[col.name] = values if col.shape else values[0]
        yield out


def _iter_csv(path: Path, stream: Any, schema: Schema) -> Iterator[dict[str, Any]]:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetError(f"{path}: file is empty") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: header row: unreadable CSV: {e}") from e
    index = {name.strip(): i for i, name in enumerate(header)}
    for col in schema.columns:
        if col.name not in index:
            raise DatasetError(f"{path}: header row: missing column {col.name!r} (header has {', '.join(header)})")
    number = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except (csv.Error, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: row {number + 1} (line {reader.line_num}): unreadable CSV: {e}") from e
        number += 1
        where = f"{path}: row {number} (line {reader.line_num})"
        if len(row) != len(header):
            raise DatasetError(f"{where}: has {len(row)} cells, the header has {len(header)}")
        yield {col.name: _parse_cell(where, col, row[index[col.name]]) for col in schema.columns}
    if number == 0:
        raise DatasetError(f"{path}: has a header but no rows")


def _parse_cell(where: str, col: Feature, text: str) -> Any:
    if col.dtype == "string":
        return text.encode("utf-8")
    try:
        value: Any = float(text) if col.dtype == "float32" else int(text)
    except ValueError:
        raise DatasetError(f"{where}: column {col.name!r}: {text!r} is not a {col.dtype}") from None
    if col.dtype == "int64" and not _INT64_MIN <= value <= _INT64_MAX:
        raise DatasetError(f"{where}: column {col.name!r}: {text} is out of the int64 range")
    return value


def _check_csv_schema(path: Path, schema: Schema) -> None:
    for col in schema.columns:
        if col.shape:
            raise DatasetError(
                f"{path}: column {col.name!r} has shape {list(col.shape)}; "
                "CSV holds scalar columns only, vector features need TFRecord"
            )


def _count_problem(where: str, count: int, col: Feature) -> str:
    return f"{where}: has {count} value(s), shape {list(col.shape)} needs {col.size}"


def _flatten(value: Any) -> list[Any]:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, without importing numpy
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flatten(item)]
    return [value]


def _row_values(path: Path, number: int, row: Mapping[str, Any], col: Feature) -> list[Any]:
    """The flat, type-checked values of one column of one row to be written."""
    where = f"{path}: example {number}: column {col.name!r}"
    if col.name not in row:
        raise DatasetError(f"{where}: missing from the row")
    values = _flatten(row[col.name])
    if len(values) != col.size:
        raise DatasetError(_count_problem(where, len(values), col))
    for v in values:
        if col.dtype == "float32":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif col.dtype == "int64":
            ok = isinstance(v, int) and not isinstance(v, bool) and _INT64_MIN <= v <= _INT64_MAX
        else:
            ok = isinstance(v, (str, bytes))
        if not ok:
            raise DatasetError(f"{where}: {v!r} is not a {col.dtype}")
    if col.dtype == "float32":
        return [float(v) for v in values]
    if col.dtype == "string":
        return [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    return values


def _write_atomically(path: Path, mode: str, write: Any) -> int:
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

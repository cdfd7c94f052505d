"""``tfrecord``: TFRecord files of ``tf.train.Example``, without TensorFlow.

The framing is read and written here; the Example messages are built (on first use) from a
descriptor that is wire-compatible with ``tensorflow/core/example/*.proto``. Not even
``tensorflow.core.example.example_pb2`` is imported: it pulls in all of TF. protobuf itself is
imported on first use too, so that listing the formats (``tffprod --help``) stays cheap.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterable, Iterator, Mapping

from tffprod.data.formats.base import DataFormat, count_problem, row_values, write_atomically
from tffprod.data.schema import Schema
from tffprod.errors import DatasetError

_KIND = {"float32": "float_list", "int64": "int64_list", "string": "bytes_list"}


# --- tf.train.Example, built without TensorFlow ----------------------------------------------


@functools.cache
def example_class() -> type:
    """Build ``Example`` in a private pool (so it never clashes with TF's own, if TF is loaded)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]

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


def read_records(path: Path, stream: IO[bytes]) -> Iterator[bytes]:
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


def write_record(stream: BinaryIO, data: bytes) -> None:
    header = struct.pack("<Q", len(data))
    stream.write(header + struct.pack("<I", masked_crc32c(header)))
    stream.write(data + struct.pack("<I", masked_crc32c(data)))


def parse_examples(path: Path, stream: IO[bytes]) -> Iterator[tuple[int, bytes, Any]]:
    """``(number, record bytes, tf.train.Example)`` for each record of a TFRecord stream, from 1.

    Raises:
        DatasetError: a record that is not a ``tf.train.Example`` (or a broken frame).
    """
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    example_type = example_class()
    for number, data in enumerate(read_records(path, stream), start=1):
        example = example_type()
        try:
            example.ParseFromString(data)
        except DecodeError as e:
            raise DatasetError(f"{path}: example {number}: unparseable record, not a tf.train.Example: {e}") from e
        yield number, data, example


def _client_key(value: Any) -> str:
    return str(value) if isinstance(value, int) else value.decode("utf-8", errors="backslashreplace")


# --- the format --------------------------------------------------------------------------------


PARSE_BATCH = 256  # records the tf.data reader parses at once


class TFRecordFormat(DataFormat):
    """TFRecord files of ``tf.train.Example``: any schema, vector columns included."""

    name = "tfrecord"
    suffixes = (".tfrecord", ".tfrecords", ".tfr")

    def check_schema(self, path: Path, schema: Schema) -> None:
        for col in schema.columns:
            if col.columns:
                raise DatasetError(f"{path}: feature {col.name!r} is a group of columns, which is for CSV; a "
                                   f"TFRecord example holds the vector as one feature of shape {list(col.shape)}")

    def open(self, path: Path) -> IO[Any]:
        return open(path, "rb")

    def examples(self, path: Path, stream: IO[Any], schema: Schema) -> Iterator[dict[str, Any]]:
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
                    raise DatasetError(count_problem(where, len(values), col))
                out[col.name] = values if col.shape else values[0]
            yield out

    def write(self, path: Path, rows: Iterable[Mapping[str, Any]], schema: Schema) -> int:
        example_type = example_class()

        def write(stream: Any) -> int:
            count = 0
            for count, row in enumerate(rows, start=1):
                example = example_type()
                for col in schema.columns:
                    values = row_values(path, count, row, col)
                    getattr(example.features.feature[col.name], _KIND[col.dtype]).value.extend(values)
                write_record(stream, example.SerializeToString(deterministic=True))
            return count

        return write_atomically(path, "wb", write)

    def client_rows(self, path: Path, stream: IO[Any], column: str) -> tuple[Any, Iterator[tuple[str, Any]]]:
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

        return None, tfrecord_rows()  # a TFRecord file has no header

    def write_shard(self, path: Path, header: Any, rows: list[Any]) -> None:
        with open(path, "wb") as stream:
            for data in rows:
                write_record(stream, data)

    def tf_dataset(self, ref: Any, schema: Schema) -> Any:
        import tensorflow as tf

        spec = {c.name: tf.io.FixedLenFeature(c.shape, tf.as_dtype(c.dtype)) for c in schema.columns}

        def parse(records):
            return tf.io.parse_example(records, spec)

        # Records parsed PARSE_BATCH at a time, then unbatched: the same examples in the same order as one
        # by one, about 3x faster.
        return tf.data.TFRecordDataset(ref).batch(PARSE_BATCH).map(parse).unbatch()


TFRECORD = TFRecordFormat()

"""Tests for tffprod.data.files: TF-free reading, validation, hashing and writing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tffprod.data.files import (
    FORMATS,
    content_hash,
    detect_format,
    iter_examples,
    validate_file,
    write_csv,
    write_tfrecord,
)
from tffprod.data.formats.tfrecord import crc32c, write_record
from tffprod.errors import DatasetError
from tffprod.data.schema import Feature, Schema
from tests.helpers.records import VECTOR, vector_rows

SCALAR = Schema(
    features=(Feature("amount", "float32"), Feature("merchant", "string")),
    label=Feature("is_fraud", "int64"),
)


def scalar_rows(n: int = 5) -> list[dict]:
    return [{"amount": 0.1 * i, "merchant": f"shop, \"{i}\"", "is_fraud": i % 2} for i in range(n)]


@pytest.fixture
def tfrecord(tmp_path: Path) -> Path:
    path = tmp_path / "data.tfrecord"
    write_tfrecord(path, vector_rows(), VECTOR)
    return path


def assert_one_line_error(excinfo: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


# --- formats, hashing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,fmt",
    [("a.tfrecord", "tfrecord"), ("a.TFRecords", "tfrecord"), ("x/a.tfr", "tfrecord"), ("a.csv", "csv")],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt
    assert fmt in FORMATS


def test_detect_format_unknown_suffix() -> None:
    with pytest.raises(DatasetError, match=r"a\.parquet: cannot tell the format.*\.csv"):
        detect_format("a.parquet")


def test_content_hash(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1_000_000)  # several chunks
    import hashlib

    assert content_hash(path) == "sha256:" + hashlib.sha256(b"abc" * 1_000_000).hexdigest()
    with pytest.raises(DatasetError, match="cannot read"):
        content_hash(tmp_path / "missing.csv")


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


# --- round trips --------------------------------------------------------------------------------


def test_tfrecord_round_trip(tfrecord: Path) -> None:
    assert validate_file(tfrecord, "tfrecord", VECTOR) == 5
    got = list(iter_examples(tfrecord, "tfrecord", VECTOR))
    assert got[2] == {
        "pixels": pytest.approx([2.0, 0.5, -2.0, 3.25, 4.0, 1e-3]),
        "site": "hôpital-2".encode(),
        "digit": 2 * 10**12 - 3,
    }
    assert not list(tfrecord.parent.glob(".*.tmp"))


def test_tfrecord_accepts_numpy_values(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    path = tmp_path / "np.tfrecord"
    rows = [{"pixels": np.arange(6, dtype=np.float32).reshape(2, 3), "site": b"a", "digit": np.int64(7)}]
    assert write_tfrecord(path, rows, VECTOR) == 1
    (got,) = iter_examples(path, "tfrecord", VECTOR)
    assert got == {"pixels": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "site": b"a", "digit": 7}


def test_tfrecord_is_deterministic(tmp_path: Path) -> None:
    write_tfrecord(tmp_path / "a.tfrecord", vector_rows(), VECTOR)
    write_tfrecord(tmp_path / "b.tfrecord", vector_rows(), VECTOR)
    assert content_hash(tmp_path / "a.tfrecord") == content_hash(tmp_path / "b.tfrecord")


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    assert write_csv(path, scalar_rows(), SCALAR) == 5
    assert path.read_text().splitlines()[0] == "amount,merchant,is_fraud"
    assert validate_file(path, "csv", SCALAR) == 5
    got = list(iter_examples(path, "csv", SCALAR))
    assert got[3] == {"amount": pytest.approx(0.3), "merchant": b'shop, "3"', "is_fraud": 1}


def test_csv_extra_columns_and_any_order_allowed(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("note,is_fraud,merchant,amount\nhello,1,m,2.5\n,0,n,-1e3\n")
    assert list(iter_examples(path, "csv", SCALAR)) == [
        {"amount": 2.5, "merchant": b"m", "is_fraud": 1},
        {"amount": -1000.0, "merchant": b"n", "is_fraud": 0},
    ]


def test_writers_reject_rows_off_schema(tmp_path: Path) -> None:
    path = tmp_path / "bad.tfrecord"
    rows = vector_rows(3)
    rows[1]["pixels"] = [1.0, 2.0]
    with pytest.raises(DatasetError) as excinfo:
        write_tfrecord(path, rows, VECTOR)
    assert_one_line_error(excinfo, path, "example 2", "'pixels'", "2 value(s)", "needs 6")
    assert not path.exists() and not list(tmp_path.iterdir())  # no partial file left behind
    with pytest.raises(DatasetError, match="example 1: column 'digit': 1.5 is not a int64"):
        write_tfrecord(path, [{**vector_rows(1)[0], "digit": 1.5}], VECTOR)
    with pytest.raises(DatasetError, match="example 1: column 'is_fraud': missing from the row"):
        write_csv(tmp_path / "bad.csv", [{"amount": 1.0, "merchant": "m"}], SCALAR)
    with pytest.raises(DatasetError, match="read the vector from 6 columns"):
        write_csv(tmp_path / "bad.csv", vector_rows(), VECTOR)


# --- corruption: TFRecord -----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.tfrecord"
    with pytest.raises(DatasetError) as excinfo:
        validate_file(path, "tfrecord", VECTOR)
    assert_one_line_error(excinfo, path, "cannot open")


@pytest.mark.parametrize("fmt,schema", [("tfrecord", VECTOR), ("csv", SCALAR)])
def test_empty_file(tmp_path: Path, fmt: str, schema: Schema) -> None:
    path = tmp_path / f"empty.{fmt}"
    path.write_bytes(b"")
    with pytest.raises(DatasetError) as excinfo:
        validate_file(path, fmt, schema)
    assert_one_line_error(excinfo, path, "file is empty")


def test_truncated_tfrecord(tfrecord: Path) -> None:
    data = tfrecord.read_bytes()
    tfrecord.write_bytes(data[:-7])
    with pytest.raises(DatasetError) as excinfo:
        validate_file(tfrecord, "tfrecord", VECTOR)
    assert_one_line_error(excinfo, tfrecord, "example 5", "truncated record")


def test_truncated_tfrecord_header(tfrecord: Path) -> None:
    tfrecord.write_bytes(tfrecord.read_bytes() + b"\x01\x02\x03")
    with pytest.raises(DatasetError) as excinfo:
        validate_file(tfrecord, "tfrecord", VECTOR)
    assert_one_line_error(excinfo, tfrecord, "example 6", "truncated frame header")


def test_flipped_length_bytes(tfrecord: Path) -> None:
    data = bytearray(tfrecord.read_bytes())
    first = int.from_bytes(data[:8], "little") + 16
    data[first + 1] ^= 0x01  # the second record's length, off by 256
    tfrecord.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as excinfo:
        validate_file(tfrecord, "tfrecord", VECTOR)
    assert_one_line_error(excinfo, tfrecord, "example 2", "bad frame", "length checksum mismatch")


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.tfrecord"
    path.write_bytes(os.urandom(100))
    with pytest.raises(DatasetError) as excinfo:
        validate_file(path, "tfrecord", VECTOR)
    assert_one_line_error(excinfo, path, "example 1", "bad frame")


def test_garbage_payload_in_a_valid_frame(tmp_path: Path) -> None:
    path = tmp_path / "garbage.tfrecord"
    with open(path, "wb") as stream:
        write_record(stream, b"\x0a\xff\xff\xff\xff\x0f")  # field 1, length far beyond the payload
    with pytest.raises(DatasetError) as excinfo:
        validate_file(path, "tfrecord", VECTOR)
    assert_one_line_error(excinfo, path, "example 1", "unparseable record")


def test_csv_file_is_not_a_tfrecord(tmp_path: Path) -> None:
    path = tmp_path / "data.tfrecord"
    write_csv(path, scalar_rows(), SCALAR)
    with pytest.raises(DatasetError, match="bad frame"):
        validate_file(path, "tfrecord", SCALAR)


def test_wrong_dtype(tfrecord: Path) -> None:
    as_float = Schema(features=VECTOR.features, label=Feature("digit", "float32"))
    with pytest.raises(DatasetError) as excinfo:
        validate_file(tfrecord, "tfrecord", as_float)
    assert_one_line_error(excinfo, tfrecord, "example 1", "'digit'", "int64_list", "schema says float32")


def test_missing_column(tfrecord: Path) -> None:
    more = Schema(features=VECTOR.features + (Feature("age", "int64"),), label=VECTOR.label)
    with pytest.raises(DatasetError) as excinfo:
        validate_file(tfrecord, "tfrecord", more)
    assert_one_line_error(excinfo, tfrecord, "example 1", "'age'", "missing")


def test_wrong_vector_length(tfrecord: Path) -> None:
    longer = Schema(features=(Feature("pixels", "float32", (7,)), VECTOR.features[1]), label=VECTOR.label)
    with pytest.raises(DatasetError) as excinfo:
        validate_file(tfrecord, "tfrecord", longer)
    assert_one_line_error(excinfo, tfrecord, "example 1", "'pixels'", "has 6 value(s)", "shape [7] needs 7")


# --- corruption: CSV ----------------------------------------------------------------------------


def test_csv_bad_number(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("amount,merchant,is_fraud\n1.5,a,0\n2.x,b,1\n")
    with pytest.raises(DatasetError) as excinfo:
        validate_file(path, "csv", SCALAR)
    assert_one_line_error(excinfo, path, "row 2 (line 3)", "'amount'", "'2.x' is not a float32")


def test_csv_float_in_int_column(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("amount,merchant,is_fraud\n1.5,a,1.0\n")
    with pytest.raises(DatasetError, match=r"row 1 \(line 2\): column 'is_fraud': '1.0' is not a int64"):
        validate_file(path, "csv", SCALAR)


def test_csv_missing_header_column(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("amount,is_fraud\n1.5,0\n")
    with pytest.raises(DatasetError) as excinfo:
        validate_file(path, "csv", SCALAR)
    assert_one_line_error(excinfo, path, "header row", "missing column 'merchant'")


def test_csv_ragged_row(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("amount,merchant,is_fraud\n1.5,a,0\n1.5,a\n")
    with pytest.raises(DatasetError, match="row 2 .*has 2 cells, the header has 3"):
        validate_file(path, "csv", SCALAR)


def test_csv_header_only(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("amount,merchant,is_fraud\n")
    with pytest.raises(DatasetError, match="has a header but no rows"):
        validate_file(path, "csv", SCALAR)


def test_csv_vector_schema(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("pixels,site,digit\n1,a,0\n")
    with pytest.raises(DatasetError) as excinfo:
        validate_file(path, "csv", VECTOR)
    assert_one_line_error(excinfo, path, "'pixels'", "shape [2, 3]", "read the vector from 6 columns",
                          "or use TFRecord")


def test_unknown_format(tfrecord: Path) -> None:
    with pytest.raises(DatasetError, match="unknown format 'parquet'"):
        validate_file(tfrecord, "parquet", VECTOR)


# --- no TensorFlow ------------------------------------------------------------------------------


def test_import_does_not_load_tensorflow() -> None:
    code = ("import sys, tffprod.data.files, tffprod.data.clients, tffprod.data.formats; "
            "print(sorted(m for m in sys.modules if m.startswith('tensorflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Every registered data format passes the same cases: write and read back, hashing, detection by
suffix, validation of good and damaged files, splitting by a client-id column, unknown names.

A new format is one module in ``tffprod/data/formats/`` and one entry in ``FORMATS``; these cases
then run for it too. They go through the format-independent entry points (``tffprod.data.files``,
``tffprod.data.clients``), so they also prove those dispatch to the registry. The cases run for a
fake format too (JSON lines, registered here with monkeypatch): the plug-point works for a format
the product code has never heard of. TF-free (the tf.data readers are checked in tests/e2e).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping

import pytest

from tffprod.data.clients import client_ids, split_by_client
from tffprod.data.files import content_hash, detect_format, iter_examples, validate_file, write_examples
from tffprod.data.formats import FORMATS, DataFormat, get_format
from tffprod.data.formats.base import row_values, write_atomically
from tffprod.data.schema import Feature, Schema
from tffprod.errors import DatasetError

TENSORFLOW = ("tensorflow", "tensorflow_federated")


# --- a format the product code does not know ------------------------------------------------------


class JsonLines(DataFormat):
    """One JSON object per line (strings as text, vectors as flat lists): small, but complete."""

    name = "fake-jsonl"
    suffixes = (".jsonl", ".ndjson")

    def open(self, path: Path) -> IO[Any]:
        return open(path, "rb")

    def _records(self, path: Path, stream: IO[Any]) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
        for number, line in enumerate(stream, start=1):
            try:
                record = json.loads(line)
            except ValueError as e:  # UnicodeDecodeError too
                raise DatasetError(f"{path}: line {number}: not a JSON object: {e}") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{path}: line {number}: not a JSON object")
            yield number, line, record

    def examples(self, path: Path, stream: IO[Any], schema: Schema) -> Iterator[dict[str, Any]]:
        for number, _, record in self._records(path, stream):
            out = {}
            for col in schema.columns:
                if col.name not in record:
                    raise DatasetError(f"{path}: line {number}: column {col.name!r}: missing")
                value = record[col.name]
                out[col.name] = value.encode("utf-8") if col.dtype == "string" else value
            yield out

    def write(self, path: Path, rows: Iterable[Mapping[str, Any]], schema: Schema) -> int:
        def write(stream: Any) -> int:
            count = 0
            for count, row in enumerate(rows, start=1):
                record = {}
                for col in schema.columns:
                    values = [v.decode("utf-8") if isinstance(v, bytes) else v
                              for v in row_values(path, count, row, col)]
                    record[col.name] = values if col.shape else values[0]
                stream.write(json.dumps(record, sort_keys=True).encode("utf-8") + b"\n")
            return count

        return write_atomically(path, "wb", write)

    def client_rows(self, path: Path, stream: IO[Any], column: str) -> tuple[Any, Iterator[tuple[str, Any]]]:
        def rows() -> Iterator[tuple[str, Any]]:
            with stream:
                for number, line, record in self._records(path, stream):
                    if column not in record:
                        raise DatasetError(f"{path}: line {number}: client-id column {column!r}: missing")
                    yield str(record[column]), line

        return None, rows()

    def write_shard(self, path: Path, header: Any, rows: list[Any]) -> None:
        with open(path, "wb") as stream:
            stream.writelines(rows)

    def tf_dataset(self, ref: Any, schema: Schema) -> Any:
        raise NotImplementedError("a test format")


FAKE = JsonLines.name
NAMES = [*FORMATS, FAKE]  # the registered formats, then the fake one


@pytest.fixture(params=NAMES)
def fmt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each format's name in turn; the fake one is registered for the test."""
    if request.param == FAKE:
        monkeypatch.setitem(FORMATS, FAKE, JsonLines())
    return request.param


@pytest.fixture(autouse=True, scope="module")
def no_tensorflow():
    """These cases never import TensorFlow (they run with the unit tests)."""
    before = [name for name in TENSORFLOW if name in sys.modules]
    yield
    imported = [name for name in TENSORFLOW if name in sys.modules and name not in before]
    assert not imported, f"the format contract imported {', '.join(imported)}"


# --- data ---------------------------------------------------------------------------------------

CLIENTS = [7, 3, 12, 7, 100, 3, 3]


def schema(id_dtype: str = "int64") -> Schema:
    """Scalar columns of every dtype (what every format must hold), one of them the client id."""
    return Schema(
        features=(Feature("amount", "float32"), Feature("merchant", "string"), Feature("cid", id_dtype),
                  Feature("ts", "int64")),
        label=Feature("is_fraud", "int64"),
    )


def client_id(cid: int, id_dtype: str) -> Any:
    return cid if id_dtype == "int64" else f"c-{cid}"


def rows(id_dtype: str = "int64") -> list[dict[str, Any]]:
    # Floats exact in float32, strings with the CSV specials and non-ASCII, int64s beyond 2**53.
    return [{"amount": 0.5 * i - 1.25, "merchant": f'shop, "{i}" ü', "cid": client_id(cid, id_dtype),
             "ts": 1_700_000_000_000_000_000 + i, "is_fraud": i % 2}
            for i, cid in enumerate(CLIENTS)]


def read_back(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` as ``iter_examples`` returns it: strings as bytes."""
    return {key: value.encode("utf-8") if isinstance(value, str) else value for key, value in row.items()}


def data_file(folder: Path, fmt: str, name: str = "data") -> Path:
    return folder / f"{name}{FORMATS[fmt].suffixes[0]}"


def written(folder: Path, fmt: str, name: str = "data", id_dtype: str = "int64") -> Path:
    path = data_file(folder, fmt, name)
    assert write_examples(path, fmt, rows(id_dtype), schema(id_dtype)) == len(CLIENTS)
    return path


def assert_one_line(excinfo: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


# --- the registry -------------------------------------------------------------------------------


def test_the_registry_holds_the_documented_formats_in_a_stable_order() -> None:
    assert list(FORMATS) == ["tfrecord", "csv"]
    assert all(isinstance(f, DataFormat) and f.name == name for name, f in FORMATS.items())
    assert ", ".join(FORMATS) == "tfrecord, csv"  # what the messages list


def test_no_suffix_names_two_formats(fmt: str) -> None:
    suffixes = [suffix for f in FORMATS.values() for suffix in f.suffixes]
    assert len(suffixes) == len(set(suffixes))
    assert all(s.startswith(".") and s == s.lower() for s in FORMATS[fmt].suffixes)


# --- every format -------------------------------------------------------------------------------


@pytest.mark.parametrize("id_dtype", ["int64", "string"])
def test_rows_written_with_a_schema_read_back_identically(fmt: str, id_dtype: str, tmp_path: Path) -> None:
    path = written(tmp_path, fmt, id_dtype=id_dtype)
    assert list(iter_examples(path, fmt, schema(id_dtype))) == [read_back(row) for row in rows(id_dtype)]
    assert validate_file(path, fmt, schema(id_dtype)) == len(CLIENTS)


def test_the_content_hash_is_stable_across_rewrites_and_changes_with_a_row(fmt: str, tmp_path: Path) -> None:
    first = content_hash(written(tmp_path, fmt, "a"))
    assert first.startswith("sha256:")
    assert content_hash(written(tmp_path, fmt, "b")) == first  # another file, the same rows
    assert content_hash(written(tmp_path, fmt, "a")) == first  # the same file written again
    for column, value in [("amount", 99.5), ("merchant", "shop, \"x\""), ("is_fraud", 1)]:
        changed = rows()
        changed[-1] = {**changed[-1], column: value}
        path = data_file(tmp_path, fmt, f"changed-{column}")
        write_examples(path, fmt, changed, schema())
        assert content_hash(path) != first, column


def test_the_format_is_detected_by_its_suffixes(fmt: str, tmp_path: Path) -> None:
    for suffix in FORMATS[fmt].suffixes:
        assert detect_format(tmp_path / f"data{suffix}") == fmt
        assert detect_format(f"dir/DATA{suffix.upper()}") == fmt
    assert detect_format(written(tmp_path, fmt)) == fmt


def test_an_unknown_suffix_lists_every_format_suffix(fmt: str) -> None:
    with pytest.raises(DatasetError) as excinfo:
        detect_format("data.unknown-suffix")
    assert_one_line(excinfo, Path("data.unknown-suffix"), "cannot tell the format from the suffix",
                    *FORMATS[fmt].suffixes)


def test_a_good_file_validates(fmt: str, tmp_path: Path) -> None:
    assert validate_file(written(tmp_path, fmt), fmt, schema()) == len(CLIENTS)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_file_is_one_line_naming_it(fmt: str, damage: str, tmp_path: Path) -> None:
    path = written(tmp_path, fmt)
    data = path.read_bytes()
    if damage == "truncated":  # cut inside the last example
        path.write_bytes(data[:-3])
    elif damage == "garbage":
        path.write_bytes(b"\xff\xfe\x00\x01 not a data file \x80\x81" * 8)
    else:
        path.write_bytes(b"")
    with pytest.raises(DatasetError) as excinfo:
        validate_file(path, fmt, schema())
    assert_one_line(excinfo, path)


def test_a_missing_file_is_one_line_naming_it(fmt: str, tmp_path: Path) -> None:
    path = data_file(tmp_path, fmt, "missing")
    with pytest.raises(DatasetError) as excinfo:
        validate_file(path, fmt, schema())
    assert_one_line(excinfo, path, "cannot open")


def test_a_row_off_the_schema_is_refused_when_written(fmt: str, tmp_path: Path) -> None:
    path = data_file(tmp_path, fmt)
    bad = rows()
    bad[2] = {**bad[2], "is_fraud": "yes"}
    with pytest.raises(DatasetError) as excinfo:
        write_examples(path, fmt, bad, schema())
    assert_one_line(excinfo, path, "example 3", "'is_fraud'", "is not a int64")
    assert not path.exists() and list(tmp_path.iterdir()) == []  # nothing half-written is left


@pytest.mark.parametrize("id_dtype", ["int64", "string"])
def test_splitting_by_client_gives_each_client_a_shard_of_its_rows(fmt: str, id_dtype: str,
                                                                   tmp_path: Path) -> None:
    path = written(tmp_path, fmt, id_dtype=id_dtype)
    want_ids = [str(client_id(cid, id_dtype)) for cid in (3, 7, 12, 100)]  # numeric order when all are integers
    if id_dtype == "string":
        want_ids.sort()
    assert client_ids(path, fmt, "cid") == want_ids

    shards = split_by_client(path, fmt, "cid", tmp_path / "shards")
    assert len(shards) == len(want_ids)
    for key, shard in zip(want_ids, shards):
        assert detect_format(shard) == fmt
        want = [read_back(row) for row in rows(id_dtype) if str(row["cid"]) == key]  # in file order
        assert list(iter_examples(shard, fmt, schema(id_dtype))) == want
        assert client_ids(shard, fmt, "cid") == [key]
    assert split_by_client(path, fmt, "cid", tmp_path / "shards") == shards  # written once


def test_a_missing_client_id_column_is_one_line_naming_the_file(fmt: str, tmp_path: Path) -> None:
    path = written(tmp_path, fmt)
    with pytest.raises(DatasetError) as excinfo:
        client_ids(path, fmt, "nope")
    assert_one_line(excinfo, path, "client-id column 'nope'")


# --- names --------------------------------------------------------------------------------------


def test_an_unknown_format_name_is_one_line_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"^unknown format 'parquet'; expected one of tfrecord, csv$"):
        get_format("parquet")
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    calls = {
        "validate_file": lambda: validate_file(path, "parquet", schema()),
        "iter_examples": lambda: list(iter_examples(path, "parquet", schema())),
        "write_examples": lambda: write_examples(path, "parquet", rows(), schema()),
        "client_ids": lambda: client_ids(path, "parquet", "cid"),
        "split_by_client": lambda: split_by_client(path, "parquet", "cid", tmp_path / "shards"),
    }
    for name, call in calls.items():
        with pytest.raises(DatasetError) as excinfo:
            call()
        assert str(excinfo.value) == f"{path}: unknown format 'parquet'; expected one of tfrecord, csv", name


def test_a_registered_format_is_picked_up_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The plug-point: registering a format is all it takes for detection, validation and the messages."""
    path = tmp_path / "data.ndjson"
    with pytest.raises(DatasetError, match="cannot tell the format from the suffix"):
        detect_format(path)
    with pytest.raises(DatasetError, match=f"unknown format '{FAKE}'"):
        validate_file(path, FAKE, schema())

    monkeypatch.setitem(FORMATS, FAKE, JsonLines())
    assert detect_format(path) == FAKE
    path.write_text('{"amount": 1.5, "merchant": "m", "cid": 4, "ts": 0, "is_fraud": 1}\n', encoding="utf-8")
    assert validate_file(path, detect_format(path), schema()) == 1
    path.write_text('{"amount": 1.5, "merch', encoding="utf-8")
    with pytest.raises(DatasetError, match="not a JSON object"):
        validate_file(path, FAKE, schema())
    with pytest.raises(DatasetError, match=f"expected one of tfrecord, csv, {FAKE}$"):
        get_format("parquet")


def test_the_cli_offers_every_registered_format() -> None:
    from tffprod.cli.datasets import register

    (option,) = [p for p in register.params if p.name == "fmt"]
    assert list(option.type.choices) == list(FORMATS)

"""``csv``: a header row, then one example per row; scalar columns, or groups of them read as one vector
(``Feature(columns=...)``). TF-free but for the ``tf_`` readers."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping

from tffprod.data.formats.base import INT64_MAX, INT64_MIN, DataFormat, row_values, write_atomically
from tffprod.data.schema import Feature, Schema
from tffprod.errors import DatasetError


def _parse_cell(where: str, col: Feature, source: str, text: str) -> Any:
    if col.dtype == "string":
        return text.encode("utf-8")
    try:
        value: Any = float(text) if col.dtype == "float32" else int(text)
    except ValueError:
        raise DatasetError(f"{where}: column {source!r}: {text!r} is not a {col.dtype}") from None
    if col.dtype == "int64" and not INT64_MIN <= value <= INT64_MAX:
        raise DatasetError(f"{where}: column {source!r}: {text} is out of the int64 range")
    return value


def _parse_value(where: str, col: Feature, row: list[str], index: Mapping[str, int]) -> Any:
    """One feature's value from a row: a scalar, or a group's list in its columns' order."""
    values = [_parse_cell(where, col, source, row[index[source]]) for source in col.sources]
    return values if col.columns else values[0]


PARSE_BATCH = 256  # lines the tf.data reader parses at once


class CSVFormat(DataFormat):
    """CSV with a header row; columns are found by name, in any order; a vector feature is a group of
    scalar columns."""

    name = "csv"
    suffixes = (".csv",)

    def check_schema(self, path: Path, schema: Schema) -> None:
        for col in schema.columns:
            if col.shape and not col.columns:
                raise DatasetError(
                    f"{path}: column {col.name!r} has shape {list(col.shape)}; a CSV cell holds one value: read "
                    f"the vector from {col.size} columns (Feature(..., columns=[...])) or use TFRecord"
                )

    def open(self, path: Path) -> IO[Any]:
        """Text, BOM skipped."""
        return open(path, newline="", encoding="utf-8-sig")

    def examples(self, path: Path, stream: IO[Any], schema: Schema) -> Iterator[dict[str, Any]]:
        reader = csv.reader(stream)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{path}: file is empty") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: header row: unreadable CSV: {e}") from e
        index = {name.strip(): i for i, name in enumerate(header)}
        for col in schema.columns:
            for source in col.sources:
                if source not in index:
                    raise DatasetError(f"{path}: header row: missing column {source!r} "
                                       f"(header has {', '.join(header)})")
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
            yield {col.name: _parse_value(where, col, row, index) for col in schema.columns}
        if number == 0:
            raise DatasetError(f"{path}: has a header but no rows")

    def write(self, path: Path, rows: Iterable[Mapping[str, Any]], schema: Schema) -> int:
        """Features first (a group as its columns), then the label; a vector feature must be a group."""
        self.check_schema(path, schema)

        def write(stream: Any) -> int:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow([source for c in schema.columns for source in c.sources])
            count = 0
            for count, row in enumerate(rows, start=1):
                cells = []
                for col in schema.columns:
                    for value in row_values(path, count, row, col):
                        if col.dtype == "float32":
                            cells.append(format(value, ".9g"))  # enough digits to round-trip a float32
                        elif col.dtype == "string":
                            cells.append(value.decode("utf-8") if isinstance(value, bytes) else value)
                        else:
                            cells.append(str(value))
                writer.writerow(cells)
            return count

        return write_atomically(path, "w", write)

    def client_rows(self, path: Path, stream: IO[Any], column: str) -> tuple[Any, Iterator[tuple[str, Any]]]:
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

    def write_shard(self, path: Path, header: Any, rows: list[Any]) -> None:
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)

    def tf_dataset(self, ref: Any, schema: Schema) -> Any:
        """Numeric CSV with a header; columns are found by name, in any order. Lines are parsed
        :data:`PARSE_BATCH` at a time with vectorized string ops, then unbatched: the same examples in
        the same order as parsing line by line, several times faster."""
        import tensorflow as tf

        header = tf.strings.split(
            tf.strings.strip(tf.data.TextLineDataset(ref).take(1).get_single_element()), ","
        )
        header = tf.strings.strip(header)
        index = {
            c.name: tf.stack([tf.reshape(tf.where(tf.equal(header, source)), [-1])[0] for source in c.sources])
            for c in schema.columns
        }

        def parse(lines):
            lines = tf.boolean_mask(lines, tf.strings.length(tf.strings.strip(lines)) > 0)  # blank lines out
            cells = tf.strings.strip(tf.strings.split(lines, ",")).to_tensor()  # [lines, cells]
            rows = {}
            for c in schema.columns:
                raw = tf.gather(cells, index[c.name], axis=1)  # [lines, 1], or a group's [lines, len(columns)]
                raw = raw if c.columns else raw[:, 0]
                rows[c.name] = raw if c.dtype == "string" else tf.strings.to_number(raw, tf.as_dtype(c.dtype))
            return rows

        return tf.data.TextLineDataset(ref).skip(1).batch(PARSE_BATCH).map(parse).unbatch()

    def tf_columns(self, refs: Any, schema: Schema) -> Any:
        """The rows of many small files in one pass of vectorized string ops (no per-line dataset):
        each file is read whole, split into stripped lines (its first is its header; blank lines are
        skipped) and cells, and each column gathered by its position in the row's own file's header,
        exactly as :meth:`tf_dataset` parses one file. A file missing a column fails the computation."""
        import tensorflow as tf

        contents = tf.map_fn(tf.io.read_file, refs, fn_output_signature=tf.string)
        lines = tf.strings.split(contents, "\n")  # [files, lines], ragged
        text = tf.strings.strip(lines.values)
        file = lines.value_rowids()
        first = tf.equal(tf.range(tf.size(text, out_type=tf.int64)), tf.gather(lines.row_starts(), file))
        keep = tf.logical_and(tf.logical_not(first), tf.strings.length(text) > 0)
        rows, file = tf.boolean_mask(text, keep), tf.boolean_mask(file, keep)
        headers = tf.strings.split(tf.gather(text, lines.row_starts()), ",")
        # [files, header cells + 1]: a last cell no column is named, so that no files at all (a site that
        # sampled no user this round) still has a header axis to search
        headers = tf.pad(tf.strings.strip(headers).to_tensor(), [[0, 0], [0, 1]])
        cells = tf.strings.strip(tf.strings.split(rows, ",")).to_tensor()  # [rows, cells]
        columns = {}
        for c in schema.columns:
            positions = []
            for source in c.sources:
                named = tf.equal(headers, source)
                found = tf.debugging.assert_equal(tf.reduce_all(tf.reduce_any(named, axis=1)), True,
                                                  message=f"a file has no column {source!r}")
                with tf.control_dependencies([found]):
                    positions.append(tf.gather(tf.argmax(tf.cast(named, tf.int32), axis=1), file))
            raw = tf.gather(cells, tf.stack(positions, axis=1), batch_dims=1)  # [rows, 1 or len(columns)]
            raw = raw if c.columns else raw[:, 0]
            columns[c.name] = raw if c.dtype == "string" else tf.strings.to_number(raw, tf.as_dtype(c.dtype))
        return columns, file


CSV = CSVFormat()

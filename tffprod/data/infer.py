"""A data file's schema, read off its rows (``tffprod dataset infer-schema``), and a task to start from. TF-free.

CSV: a column whose every cell is an integer is ``int64``, one whose every cell is a number is
``float32``, any other is ``string``. TFRecord: each feature's kind gives its dtype, and its value count,
the same in every example, its shape (``()`` for one value), in name order. The first ``max_rows``
examples decide. With ``group``, the numeric CSV columns become one float32 vector feature of that name
(a group of columns) instead of one scalar feature each.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from tffprod.data.files import detect_format
from tffprod.data.formats import get_format
from tffprod.data.schema import Feature, Schema
from tffprod.errors import DatasetError

__all__ = ["Inferred", "infer_schema", "task_skeleton"]

MAX_ROWS = 10_000
_KINDS = {"float_list": "float32", "int64_list": "int64", "bytes_list": "string"}


@dataclasses.dataclass(frozen=True)
class Inferred:
    """What :func:`infer_schema` found.

    Attributes:
        schema: the label and every other column (but the client-id column) as features.
        format: ``csv`` or ``tfrecord``.
        rows: examples read (at most ``max_rows``).
        label_values: the label's distinct values when it has at most 100 of them (else None).
    """

    schema: Schema
    format: str
    rows: int
    label_values: Optional[tuple[Any, ...]]


def infer_schema(path: str | Path, *, label: str, fmt: Optional[str] = None, client_id: Optional[str] = None,
                 max_rows: int = MAX_ROWS, group: Optional[str] = None) -> Inferred:
    """Infer the schema of the data file at ``path`` from its first ``max_rows`` examples.

    Raises:
        DatasetError: the file cannot be read, has no examples, has no column ``label`` (or ``client_id``),
            or a column's values do not fit one dtype and shape (named, with the example); ``group`` for a
            file that is not CSV, or one without numeric columns.
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    get_format(fmt, path)  # an unknown format is one line
    if group is not None and fmt != "csv":
        raise DatasetError(f"{path}: a group of columns is for CSV; a {fmt} file holds a vector as one feature")
    columns: dict[str, list[Any]] = {}
    rows = 0
    reader: Callable[[Path, int], Iterator[dict[str, Any]]] = _csv_rows if fmt == "csv" else _tfrecord_rows
    for row in reader(path, max_rows):
        rows += 1
        for name, value in row.items():
            columns.setdefault(name, []).append(value)
    if rows == 0:
        raise DatasetError(f"{path}: has no examples to infer a schema from")
    for wanted, what in ((label, "label"), (client_id, "client-id")):
        if wanted is not None and wanted not in columns:
            raise DatasetError(f"{path}: no {what} column {wanted!r} (it has {', '.join(columns)})")
    infer: Callable[[Path, str, list[Any]], Feature] = _csv_feature if fmt == "csv" else _tfrecord_feature
    features = tuple(infer(path, name, values) for name, values in columns.items() if name not in (label, client_id))
    if not features:
        raise DatasetError(f"{path}: has no column besides the label to use as a feature")
    if group is not None:
        features = _grouped(path, features, group)
    label_feature = infer(path, label, columns[label])
    if label_feature.shape:
        raise DatasetError(f"{path}: label {label!r} holds {label_feature.size} values per example; a label is one")
    values = sorted({_scalar(v) for v in columns[label]}, key=str)
    return Inferred(Schema(features=features, label=label_feature), fmt, rows, tuple(values) if len(values) <= 100
                    else None)


def _grouped(path: Path, features: tuple[Feature, ...], group: str) -> tuple[Feature, ...]:
    """The numeric features as one float32 vector named ``group`` (in the file's column order), then the rest."""
    numeric = [f.name for f in features if f.dtype != "string"]
    if not numeric:
        raise DatasetError(f"{path}: has no numeric column to group as {group!r}")
    if group in {f.name for f in features}:
        raise DatasetError(f"{path}: --group {group!r} is the name of a column; name the group differently")
    return (Feature(group, "float32", columns=tuple(numeric)),) + tuple(f for f in features if f.dtype == "string")


def _scalar(value: Any) -> Any:
    """A label cell as a number where it is one (CSV cells are text; TFRecord values come as (kind, [v]))."""
    value = value[1][0] if isinstance(value, tuple) else value
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value)
            except ValueError:
                continue
    return value


def _csv_rows(path: Path, max_rows: int) -> Iterator[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.reader(stream)
            header = [name.strip() for name in next(reader, [])]
            if not header or not all(header) or len(set(header)) != len(header):
                raise DatasetError(f"{path}: header row: needs distinct, non-empty column names, got {header}")
            for number, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DatasetError(f"{path}: row {number}: has {len(row)} cells, the header has {len(header)}")
                yield {name: cell.strip() for name, cell in zip(header, row)}
                max_rows -= 1
                if max_rows == 0:
                    return
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read as CSV: {e}") from None


def _csv_feature(path: Path, name: str, cells: list[Any]) -> Feature:
    empty = next((i for i, cell in enumerate(cells) if not cell), None)
    if empty is not None:
        raise DatasetError(f"{path}: column {name!r} is empty in example {empty + 1}; fill or drop it")
    for dtype, parse in (("int64", int), ("float32", float)):
        try:
            if all(math.isfinite(parse(cell)) for cell in cells):
                return Feature(name, dtype)
        except ValueError:
            continue
    return Feature(name, "string")


def _tfrecord_rows(path: Path, max_rows: int) -> Iterator[dict[str, Any]]:
    from tffprod.data.formats.tfrecord import parse_examples

    try:
        stream = open(path, "rb")
    except OSError as e:
        raise DatasetError(f"{path}: cannot open: {e.strerror or e}") from None
    with stream:
        for number, _, example in parse_examples(path, stream):
            row = {}
            for name, feature in sorted(example.features.feature.items()):  # a map: no order of its own
                kind = feature.WhichOneof("kind")
                row[name] = (kind, list(getattr(feature, kind).value) if kind else [])
            yield row
            if number >= max_rows:
                return


def _tfrecord_feature(path: Path, name: str, values: list[Any]) -> Feature:
    kinds = {kind for kind, _ in values}
    sizes = {len(v) for _, v in values}
    if len(kinds) != 1 or None in kinds:
        raise DatasetError(f"{path}: feature {name!r} holds {' and '.join(sorted(map(str, kinds)))} in different "
                           "examples; a feature has one kind")
    if len(sizes) != 1 or 0 in sizes:
        raise DatasetError(f"{path}: feature {name!r} holds {min(sizes)} to {max(sizes)} values per example; "
                           "a feature has one fixed size")
    (size,) = sizes
    return Feature(name, _KINDS[kinds.pop()], () if size == 1 else (size,))


def _feature_source(feature: Feature) -> str:
    """One ``Feature(...)`` line of the skeleton's schema; a group's columns eight to a line."""
    if not feature.columns:
        shape = f", {feature.shape!r}" if feature.shape else ""
        return f"        Feature({feature.name!r}, {feature.dtype!r}{shape}),\n"
    names = [repr(c) for c in feature.columns]
    lines = "".join(f"            {', '.join(names[i:i + 8])},\n" for i in range(0, len(names), 8))
    return f"        Feature({feature.name!r}, {feature.dtype!r}, columns=(\n{lines}        )),\n"


def task_skeleton(inferred: Inferred, *, path: str | Path) -> str:
    """Python source of a task module for the schema: a small Keras MLP over the numeric features (string
    features are listed, left out of the model), and the loss the label suggests."""
    schema = inferred.schema
    numeric = [f for f in schema.features if f.dtype != "string"]
    strings = [f.name for f in schema.features if f.dtype == "string"]
    values = inferred.label_values
    if schema.label.dtype == "int64" and values is not None and set(values) <= {0, 1}:
        head, loss, metrics = ('tf.keras.layers.Dense(1, activation="sigmoid")', "BinaryCrossentropy()",
                               "[tf.keras.metrics.BinaryAccuracy(), tf.keras.metrics.AUC()]")
    elif schema.label.dtype == "int64" and values is not None and min(values) >= 0:
        head, loss, metrics = (f'tf.keras.layers.Dense({int(max(values)) + 1}, activation="softmax")',
                               "SparseCategoricalCrossentropy()", "[tf.keras.metrics.SparseCategoricalAccuracy()]")
    else:
        head, loss, metrics = ("tf.keras.layers.Dense(1)", "MeanSquaredError()",
                               "[tf.keras.metrics.MeanAbsoluteError()]")
    if not numeric:
        raise DatasetError(f"{path}: no numeric feature for a model to read (string columns need encoding first)")
    features = "".join(_feature_source(f) for f in numeric)
    left_out = f"# String columns, left out (encode them as numbers to use them): {', '.join(strings)}\n" \
        if strings else ""
    return f'''"""A task for {Path(path).name} (written by `tffprod dataset infer-schema`; adapt the model).

Register the data with: tffprod dataset register SITE/NAME {path} --task THIS_FILE.py:task
"""

from tffprod import Feature, Optimizer, Schema, Task

SCHEMA = Schema(
    features=(
{features}    ),
    label=Feature({schema.label.name!r}, {schema.label.dtype!r}),
)
{left_out}

def model_fn():
    """Every feature, as floats, layer-normalized, into a small MLP."""
    import tensorflow as tf

    inputs = {{f.name: tf.keras.Input(shape=f.shape, name=f.name, dtype=f.dtype) for f in SCHEMA.features}}
    columns = [tf.keras.layers.Reshape((-1,))(tf.cast(x, tf.float32)) for x in inputs.values()]
    x = columns[0] if len(columns) == 1 else tf.keras.layers.Concatenate()(columns)
    x = tf.keras.layers.LayerNormalization()(x)
    x = tf.keras.layers.Dense(32, activation="relu")(x)
    return tf.keras.Model(inputs=inputs, outputs={head}(x))


def loss_fn():
    import tensorflow as tf

    return tf.keras.losses.{loss}


def metrics_fn():
    import tensorflow as tf

    return {metrics}


task = Task(name={Path(path).stem.replace('-', '_')!r}, model_fn=model_fn, schema=SCHEMA, loss_fn=loss_fn,
            metrics_fn=metrics_fn, batch_size=32, local_epochs=1, client_optimizer=Optimizer("sgd", 0.05),
            server_optimizer=Optimizer("sgd", 1.0))
'''

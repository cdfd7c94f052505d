"""``tffprod dataset infer-schema``: schemas read off CSV and TFRecord files, and its one-line errors (TF-free)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tffprod import Feature, Schema, write_csv, write_tfrecord
from tffprod.cli.main import cli
from tffprod.data.infer import infer_schema, task_skeleton
from tffprod.errors import DatasetError

VISITS = Schema(features=(Feature("age", "int64"), Feature("bmi", "float32"), Feature("ward", "string")),
                label=Feature("readmitted", "int64"))


@pytest.fixture
def visits(tmp_path: Path) -> Path:
    rows = [{"age": 30 + i, "bmi": 20.5 + i / 3, "ward": f"w{i % 3}", "readmitted": i % 2, "patient": 100 + i // 2}
            for i in range(12)]
    path = tmp_path / "visits.csv"
    write_csv(path, rows, Schema(features=VISITS.features + (Feature("patient", "int64"),), label=VISITS.label))
    return path


def test_a_csv_files_columns_get_the_narrowest_dtype_their_cells_fit(visits: Path) -> None:
    inferred = infer_schema(visits, label="readmitted", client_id="patient")
    assert inferred.schema == VISITS and inferred.format == "csv" and inferred.rows == 12
    assert inferred.label_values == (0, 1)
    with_patient = infer_schema(visits, label="readmitted", max_rows=3)
    assert [f.name for f in with_patient.schema.features] == ["age", "bmi", "ward", "patient"]
    assert with_patient.rows == 3


def test_a_tfrecord_files_features_get_their_kind_and_fixed_size(tmp_path: Path) -> None:
    schema = Schema(features=(Feature("pixels", "float32", (4,)), Feature("site", "string")),
                    label=Feature("digit", "int64"))
    path = tmp_path / "d.tfrecord"
    write_tfrecord(path, [{"pixels": [0.1 * i] * 4, "site": "a", "digit": i % 10} for i in range(5)], schema)
    inferred = infer_schema(path, label="digit")
    assert inferred.schema == schema and inferred.format == "tfrecord"


def test_the_cli_prints_the_schema_json_that_register_reads(visits: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["dataset", "infer-schema", str(visits), "--label", "readmitted",
                                      "--client-id", "patient"])
    assert result.exit_code == 0, result.output
    assert Schema.from_dict(json.loads(result.output)) == VISITS
    task = tmp_path / "visits_task.py"
    written = CliRunner().invoke(cli, ["dataset", "infer-schema", str(visits), "--label", "readmitted",
                                       "--client-id", "patient", "--task", str(task)])
    assert written.exit_code == 0 and f"--task {task}:task" in written.output
    source = task.read_text()
    assert "Feature('age', 'int64')" in source
    assert "String columns, left out (encode them as numbers to use them): ward" in source
    assert 'Dense(1, activation="sigmoid")' in source and "BinaryCrossentropy()" in source
    again = CliRunner().invoke(cli, ["dataset", "infer-schema", str(visits), "--label", "readmitted", "--task",
                                     str(task)])
    assert again.exit_code != 0 and "already exists" in again.output and task.read_text() == source


@pytest.mark.parametrize("text, args, problem", [
    ("a,b\n1,2\n", ["--label", "y"], "no label column 'y' (it has a, b)"),
    ("a,y\n1,0\n,1\n", ["--label", "y"], "column 'a' is empty in example 2"),
    ("a,y\n1,0\n1,2,3\n", ["--label", "y"], "row 3: has 3 cells, the header has 2"),
    ("a,y\n", ["--label", "y"], "has no examples to infer a schema from"),
    ("y\n1\n", ["--label", "y"], "has no column besides the label"),
    ("a,a,y\n1,2,0\n", ["--label", "y"], "needs distinct, non-empty column names"),
])
def test_bad_files_are_one_line_errors(tmp_path: Path, text: str, args: list[str], problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        infer_schema(path, label=args[1])
    result = CliRunner().invoke(cli, ["dataset", "infer-schema", str(path), *args])
    assert result.exit_code == DatasetError.exit_code and len(result.output.strip().splitlines()) == 1


def test_the_skeleton_picks_the_loss_the_label_suggests(tmp_path: Path) -> None:
    for labels, head in (([0, 1, 2, 4], "Dense(5, activation=\"softmax\")"), ([0.5, 1.5], "Dense(1)")):
        path = tmp_path / f"l{len(labels)}.csv"
        path.write_text("x,y\n" + "".join(f"{i},{v}\n" for i, v in enumerate(labels)))
        assert head in task_skeleton(infer_schema(path, label="y"), path=path)

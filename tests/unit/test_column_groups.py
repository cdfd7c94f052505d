"""A group of CSV columns read as one vector feature (``Feature(columns=...)``): the schema's rules, CSV
reading and writing, the formats that refuse it, and ``dataset infer-schema --group`` (TF-free)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tffprod import Feature, Schema
from tffprod.cli.main import cli
from tffprod.data.files import iter_examples, validate_file, write_csv, write_tfrecord
from tffprod.data.infer import infer_schema, task_skeleton
from tffprod.errors import DatasetError, SchemaMismatchError, SpecError

VITALS = ("heart_rate", "systolic", "diastolic")
GROUPED = Schema(features=(Feature("vitals", "float32", columns=VITALS), Feature("ward", "string")),
                 label=Feature("readmitted", "int64"))


def grouped_rows(n: int = 4) -> list[dict]:
    return [{"vitals": [60.0 + i, 120.5 + i, 80.25 - i], "ward": f"w{i}", "readmitted": i % 2} for i in range(n)]


def test_a_group_is_a_vector_of_its_columns_in_order() -> None:
    feature = GROUPED.features[0]
    assert feature.shape == (3,) and feature.size == 3 and feature.sources == VITALS
    assert Feature("age").sources == ("age",)
    assert Feature("vitals", "float32", (3,), columns=list(VITALS)) == feature  # shape may be given, if it fits


def test_a_schema_with_groups_round_trips_and_one_without_reads_as_before() -> None:
    data = GROUPED.to_dict()
    assert data["features"][0]["columns"] == list(VITALS) and data["features"][0]["shape"] == [3]
    assert Schema.from_dict(json.loads(json.dumps(data))) == GROUPED
    plain = Schema(features=(Feature("x", "float32", (2,)),), label=Feature("y", "int64"))
    assert "columns" not in json.dumps(plain.to_dict())  # registered schemas and plan keys do not change


@pytest.mark.parametrize("build,fragment", [
    (lambda: Feature("v", columns=("a", "b"), shape=(3,)), "shape [3] does not fit its 2 columns"),
    (lambda: Feature("v", columns=("a", "a")), "columns name a twice"),
    (lambda: Feature("v", columns=("a", "")), "columns must be non-empty strings"),
    (lambda: Schema(features=(Feature("v", columns=("a", "b")), Feature("a")), label=Feature("y")),
     "names a column twice: a"),
    (lambda: Schema(features=(Feature("v", columns=("a", "b")), Feature("w", columns=("b", "c"))),
                    label=Feature("y")), "names a column twice: b"),
    (lambda: Schema(features=(Feature("a", columns=("a", "b")),), label=Feature("y")),
     "group 'a' has the name of a column it reads"),
    (lambda: Schema(features=(Feature("x"),), label=Feature("y", columns=("p", "q"))), "a label is one column"),
    (lambda: Schema.from_dict({"features": [{"name": "v", "columns": "abc"}], "label": {"name": "y"}}),
     "columns must be a list"),
])
def test_bad_groups_are_one_line_spec_errors(build, fragment: str) -> None:
    with pytest.raises(SpecError) as error:
        build()
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_csv_writes_a_group_as_its_columns_and_reads_it_back_as_a_vector(tmp_path: Path) -> None:
    path = tmp_path / "visits.csv"
    assert write_csv(path, grouped_rows(), GROUPED) == 4
    assert path.read_text().splitlines()[0] == "heart_rate,systolic,diastolic,ward,readmitted"
    assert validate_file(path, "csv", GROUPED) == 4
    assert list(iter_examples(path, "csv", GROUPED))[2] == {"vitals": [62.0, 122.5, 78.25], "ward": b"w2",
                                                          "readmitted": 0}


def test_a_group_reads_its_columns_by_name_in_any_order_among_others(tmp_path: Path) -> None:
    path = tmp_path / "visits.csv"
    path.write_text("diastolic,note,readmitted,ward,systolic,heart_rate\n70,x,1,a,110,55.5\n")
    assert list(iter_examples(path, "csv", GROUPED)) == [{"vitals": [55.5, 110.0, 70.0], "ward": b"a",
                                                          "readmitted": 1}]


@pytest.mark.parametrize("text,fragment", [
    ("heart_rate,diastolic,ward,readmitted\n1,2,a,0\n", "header row: missing column 'systolic'"),
    ("heart_rate,systolic,diastolic,ward,readmitted\n1,high,3,a,0\n", "row 1 (line 2): column 'systolic': 'high'"),
])
def test_a_groups_missing_or_bad_column_is_named(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "visits.csv"
    path.write_text(text)
    with pytest.raises(DatasetError) as error:
        validate_file(path, "csv", GROUPED)
    assert fragment in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_tfrecord_refuses_a_group_and_says_how_it_holds_a_vector(tmp_path: Path) -> None:
    path = tmp_path / "visits.tfrecord"
    plain = Schema(features=(Feature("vitals", "float32", (3,)), Feature("ward", "string")),
                   label=GROUPED.label)
    write_tfrecord(path, grouped_rows(), plain)
    with pytest.raises(DatasetError, match="a TFRecord example holds the vector as one feature of shape \\[3\\]"):
        validate_file(path, "tfrecord", GROUPED)


def test_a_dataset_whose_group_reads_other_columns_does_not_provide_the_tasks() -> None:
    other = Schema(features=(Feature("vitals", "float32", columns=("heart_rate", "diastolic", "systolic")),
                             Feature("ward", "string")), label=GROUPED.label)
    with pytest.raises(SchemaMismatchError, match="reads columns heart_rate, diastolic, systolic, the task's reads "
                                                  "heart_rate, systolic, diastolic"):
        other.check_provides(GROUPED, what="a/visits")
    GROUPED.check_provides(GROUPED, what="a/visits")


@pytest.fixture
def labs(tmp_path: Path) -> Path:
    path = tmp_path / "labs.csv"
    names = [f"lab_{i:02d}" for i in range(30)]
    lines = [",".join(["patient", *names, "ward", "outcome"])]
    lines += [",".join([str(100 + r // 3), *(f"{0.1 * r + i}" for i in range(30)), f"w{r % 2}", str(r % 2)])
              for r in range(9)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_infer_schema_groups_the_numeric_columns_in_file_order(labs: Path) -> None:
    inferred = infer_schema(labs, label="outcome", client_id="patient", group="labs")
    group, ward = inferred.schema.features
    assert group == Feature("labs", "float32", columns=tuple(f"lab_{i:02d}" for i in range(30)))
    assert ward == Feature("ward", "string")
    rows = list(iter_examples(labs, "csv", inferred.schema))
    assert len(rows) == 9 and rows[4]["labs"][:2] == [pytest.approx(0.4), pytest.approx(1.4)]


@pytest.mark.parametrize("args,fragment", [
    (["--group", "ward"], "--group 'ward' is the name of a column"),
    (["--group", "labs", "--format", "tfrecord"], "a group of columns is for CSV"),
])
def test_infer_schema_group_errors_are_one_line(labs: Path, args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(cli, ["dataset", "infer-schema", str(labs), "--label", "outcome", *args])
    assert result.exit_code != 0 and fragment in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_cli_prints_a_grouped_schema_and_a_task_with_one_input(labs: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["dataset", "infer-schema", str(labs), "--label", "outcome", "--client-id",
                                      "patient", "--group", "labs"])
    assert result.exit_code == 0, result.output
    schema = Schema.from_dict(json.loads(result.output))
    assert [f.name for f in schema.features] == ["labs", "ward"] and schema.features[0].shape == (30,)
    source = task_skeleton(infer_schema(labs, label="outcome", client_id="patient", group="labs"), path=labs)
    namespace: dict = {}
    exec(compile(source, "labs_task.py", "exec"), namespace)  # valid Python; the string column is left out
    assert namespace["SCHEMA"] == Schema(features=schema.features[:1], label=schema.label)
    assert "'lab_00', 'lab_01', 'lab_02', 'lab_03', 'lab_04', 'lab_05', 'lab_06', 'lab_07',\n" in source

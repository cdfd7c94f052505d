"""Bad input through the CLI: one clear ``Error:`` line, the error's exit code, an untouched registry.

Every case fails in validation, before training: TensorFlow is made unimportable
for each test here (``sys.modules[name] = None``), so a case that reached it
would end in an uncaught ImportError instead of the expected exit code.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import sqlite3
import struct
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tffprod.errors import (
    DatasetError,
    NotFoundError,
    SchemaMismatchError,
    SpecError,
    TaskLoadError,
    TffprodError,
)

DIGITS_TASK = "tffprod.examples.digits:task"
FRAUD_TASK = "tffprod.examples.fraud:task"
TF_MODULES = ("tensorflow", "tensorflow_federated", "tensorflow_privacy", "keras")
BASE_SPEC: dict[str, Any] = {
    "name": "digits-fl",
    "task": DIGITS_TASK,
    "datasets": ["hospital-a/train", "hospital-b/train"],
    "rounds": 2,
}
DROP = object()  # spec(key=DROP) leaves the key out


@pytest.fixture(autouse=True)
def no_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import tensorflow`` (and TFF, ...) raises ImportError for the length of each test."""
    for name in TF_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


# ---------------------------------------------------------------- helpers


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # strings and arrays of strings are the same in JSON and TOML


def write_spec(path: Path, *, dp: dict | None = None, **overrides: Any) -> Path:
    """A spec file: ``BASE_SPEC`` with ``overrides`` (values may be invalid on purpose)."""
    fields = {**BASE_SPEC, **overrides}
    lines = [f"{key} = {toml_value(value)}" for key, value in fields.items() if value is not DROP]
    if dp is not None:
        lines += ["", "[dp]"] + [f"{key} = {toml_value(value)}" for key, value in dp.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def dump(registry: str) -> str:
    """Every table of the registry, as SQL."""
    conn = sqlite3.connect(registry)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def count(registry: str, table: str) -> int:
    conn = sqlite3.connect(registry)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def frame_offsets(data: bytes) -> list[int]:
    """Start offset of each TFRecord frame (read from the length headers)."""
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 16 + struct.unpack_from("<Q", data, offset)[0]
    return offsets


def assert_clean_failure(result, error: type[TffprodError], *named: str) -> str:
    """One ``Error: ...`` line on stderr naming ``named``, nothing on stdout, the error's exit code."""
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}\n{result.output}"
    assert result.exit_code == error.exit_code, f"exit {result.exit_code}, want {error.exit_code}: {result.output}"
    assert result.stdout == ""
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"want one line, got:\n{result.stderr}"
    assert lines[0].startswith("Error: ")
    for text in named:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


class Registry:
    """A registry file with known datasets, and a check that a command left it alone."""

    def __init__(self, run_cli, path: str) -> None:
        self.run_cli, self.path = run_cli, path
        self.before: str | None = None

    def register(self, ref: str, data: Path, *options: Any) -> None:
        result = self.run_cli("dataset", "register", ref, data, *options, "--registry", self.path)
        assert result.exit_code == 0, result.output

    def snapshot(self) -> None:
        self.before = dump(self.path)
        assert 'INSERT INTO "datasets"' in self.before  # a real registry, not an empty file

    def run(self, *args: Any):
        """Run a command that must fail and leave the registry as the last snapshot."""
        assert self.before is not None, "snapshot() first"
        result = self.run_cli(*args, "--registry", self.path)
        assert dump(self.path) == self.before, "the registry changed"
        assert count(self.path, "sessions") == 0
        return result

    def session_run(self, spec: Path):
        return self.run("session", "run", "--spec", spec)


@pytest.fixture
def registry(run_cli, registry_path: str, digits_data, fraud_data) -> Registry:
    """hospital-a/train and hospital-b/train (digits, TFRecord); bank-a/train (fraud, CSV)."""
    reg = Registry(run_cli, registry_path)
    reg.register("hospital-a/train", digits_data["hospital-a"]["train"], "--task", DIGITS_TASK)
    reg.register("hospital-b/train", digits_data["hospital-b"]["train"], "--task", DIGITS_TASK)
    reg.register("bank-a/train", fraud_data["bank-a"]["train"], "--task", FRAUD_TASK)
    reg.snapshot()
    return reg


# ---------------------------------------------------------------- the ground rules


def test_exit_codes() -> None:
    """Scripts depend on these numbers; the cases below compare with the classes' own."""
    assert (SpecError.exit_code, TaskLoadError.exit_code) == (2, 2)
    assert NotFoundError.exit_code == 3
    assert (DatasetError.exit_code, SchemaMismatchError.exit_code) == (4, 4)


def test_tensorflow_is_blocked() -> None:
    import importlib

    for name in ("tensorflow", "tensorflow_federated"):
        with pytest.raises(ImportError):
            importlib.import_module(name)


def test_base_spec_passes_validation(registry: Registry, tmp_path: Path) -> None:
    """Each case below changes one thing in a spec that is otherwise valid."""
    from tffprod.registry import Registry as Store
    from tffprod.session import plan_session
    from tffprod.spec import load_spec

    spec = load_spec(write_spec(tmp_path / "spec.toml"))
    with Store.open(registry.path) as store:
        plan = plan_session(spec, registry=store)
    assert [row["ref"] for row in plan.datasets] == ["hospital-a/train:1", "hospital-b/train:1"]
    assert plan.fmt == "tfrecord"
    assert dump(registry.path) == registry.before


# ---------------------------------------------------------------- malformed specs


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"epochs": 5}, ["unknown key 'epochs'"]),
        ({"noise_multiplier": 1.0}, ["unknown key 'noise_multiplier'", "[dp]"]),
        ({"rounds": "ten"}, ["'rounds' must be an integer", "'ten'"]),
        ({"datasets": "hospital-a/train"}, ["'datasets' must be an array"]),
        ({"rounds": 0}, ["'rounds' must be an integer >= 1"]),
        ({"backend": "cloud"}, ["'backend' must be one of"]),
        ({"datasets": DROP}, ["missing required key 'datasets'"]),
        ({"task": DROP}, ["missing required key 'task'"]),
        ({"datasets": ["hospital-a"]}, ["'hospital-a' is not a dataset ref"]),
        ({"task": "tffprod.examples.digits"}, ["'task' must look like"]),
    ],
    ids=["unknown-key", "dp-key-at-top", "wrong-type", "string-not-array", "out-of-range", "bad-choice",
         "missing-datasets", "missing-task", "bad-ref", "bad-task-path"],
)
def test_malformed_spec(registry: Registry, tmp_path: Path, overrides: dict, named: list[str]) -> None:
    spec = write_spec(tmp_path / "spec.toml", **overrides)
    assert_clean_failure(registry.session_run(spec), SpecError, str(spec), *named)


@pytest.mark.parametrize(
    "dp, named",
    [
        ({"mechanism": "gaussian_fixed", "noise_multiplier": 0.5, "clip": 1.0, "delta": 1e-5, "epsilon": 3.0},
         ["unknown key 'dp.epsilon'"]),
        ({"mechanism": "gaussian_fixed", "noise_multiplier": 0.5, "delta": 1e-5}, ["missing required key 'dp.clip'"]),
        ({"mechanism": "gaussian_fixed", "noise_multiplier": 0.5, "clip": "big", "delta": 1e-5},
         ["'dp.clip' must be a number"]),
        ({"mechanism": "laplace"}, ["'dp.mechanism' must be one of"]),
    ],
    ids=["unknown-dp-key", "missing-dp-key", "wrong-dp-type", "unknown-mechanism"],
)
def test_malformed_dp_table(registry: Registry, tmp_path: Path, dp: dict, named: list[str]) -> None:
    spec = write_spec(tmp_path / "spec.toml", dp=dp)
    assert_clean_failure(registry.session_run(spec), SpecError, str(spec), *named)


def test_invalid_toml(registry: Registry, tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "digits-fl\ntask = "tffprod.examples.digits:task"\n')
    assert_clean_failure(registry.session_run(spec), SpecError, str(spec), "invalid TOML")


def test_missing_spec_file(registry: Registry, tmp_path: Path) -> None:
    spec = tmp_path / "no-such-spec.toml"
    assert_clean_failure(registry.session_run(spec), SpecError, str(spec), "cannot read spec")


def test_bad_spec_does_not_create_a_registry(run_cli, registry_path: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.toml", rounds="ten")
    result = run_cli("session", "run", "--spec", spec, "--registry", registry_path)
    assert_clean_failure(result, SpecError, "'rounds' must be an integer")
    assert not Path(registry_path).exists()


# ---------------------------------------------------------------- task paths that do not load


@pytest.fixture
def broken_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tffprod_test_broken_task`` on sys.path, and ``broken_task.py`` beside the spec: both raise ImportError."""
    body = "raise ImportError(\"No module named 'torchvision'\")\n"
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "tffprod_test_broken_task.py").write_text(body)
    (tmp_path / "broken_task.py").write_text(body)
    monkeypatch.syspath_prepend(str(modules))
    yield tmp_path
    sys.modules.pop("tffprod_test_broken_task", None)


@pytest.mark.parametrize(
    "task, named",
    [
        ("tffprod_no_such_module:task", ["cannot import tffprod_no_such_module", "ModuleNotFoundError"]),
        ("tffprod_test_broken_task:task", ["cannot import tffprod_test_broken_task", "ImportError", "torchvision"]),
        ("broken_task.py:task", ["broken_task.py", "ImportError", "torchvision"]),
        ("missing_file.py:task", ["missing_file.py does not exist"]),
        ("tffprod.examples.digits:no_such_task", ["has no attribute 'no_such_task'"]),
        ("tffprod.examples.digits:SCHEMA", ["SCHEMA is a Schema, not a tffprod.Task"]),
        ("tffprod.examples.digits:NUM_CLASSES", ["NUM_CLASSES is a int, not a tffprod.Task"]),
    ],
    ids=["module-missing", "module-raises-importerror", "file-raises-importerror", "file-missing",
         "attribute-missing", "attribute-not-a-task", "attribute-an-int"],
)
def test_task_that_does_not_load(registry: Registry, broken_modules: Path, task: str, named: list[str]) -> None:
    spec = write_spec(broken_modules / "spec.toml", task=task)
    line = assert_clean_failure(registry.session_run(spec), TaskLoadError, *named)
    assert task.split(":")[1] in line


def test_task_path_naming_a_function_is_refused_without_calling_it(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "factory.py").write_text("def make_task():\n    raise RuntimeError('must not be called')\n")
    spec = write_spec(tmp_path / "spec.toml", task="factory.py:make_task")
    assert_clean_failure(registry.session_run(spec), TaskLoadError, "make_task", "not a tffprod.Task")


@pytest.mark.parametrize(
    "task, error, named",
    [
        ("tffprod_no_such_module:task", TaskLoadError, ["cannot import tffprod_no_such_module"]),
        ("tffprod.examples.digits:SCHEMA", TaskLoadError, ["not a tffprod.Task"]),
    ],
    ids=["module-missing", "attribute-not-a-task"],
)
def test_register_with_a_task_that_does_not_load(registry: Registry, digits_data, task: str, error, named) -> None:
    result = registry.run("dataset", "register", "hospital-c/train", digits_data["hospital-c"]["train"], "--task", task)
    assert_clean_failure(result, error, *named)


def test_register_with_an_unreadable_schema_file(registry: Registry, digits_data, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"features": [')
    result = registry.run("dataset", "register", "hospital-c/train", digits_data["hospital-c"]["train"],
                          "--schema", schema)
    assert_clean_failure(result, SpecError, str(schema), "invalid JSON")


# ---------------------------------------------------------------- datasets the spec names


@pytest.mark.parametrize(
    "overrides, missing",
    [
        ({"datasets": ["hospital-a/train", "hospital-z/visits"]}, "hospital-z/visits"),
        ({"datasets": ["hospital-a/train:7"]}, "hospital-a/train:7"),
        ({"eval_datasets": ["hospital-a/test"]}, "hospital-a/test"),
    ],
    ids=["unknown-site", "unknown-version", "unknown-eval-dataset"],
)
def test_unknown_dataset(registry: Registry, tmp_path: Path, overrides: dict, missing: str) -> None:
    spec = write_spec(tmp_path / "spec.toml", **overrides)
    assert_clean_failure(registry.session_run(spec), NotFoundError, f"unknown dataset '{missing}'")


def test_dataset_schema_does_not_match_the_task(registry: Registry, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.toml", datasets=["hospital-a/train", "bank-a/train"])
    assert_clean_failure(registry.session_run(spec), SchemaMismatchError, "bank-a/train:1", "'is_fraud'", "'digit'")


def test_dataset_lacks_a_column_the_task_needs(registry: Registry, fraud_data, tmp_path: Path) -> None:
    schema = tmp_path / "subset.json"
    schema.write_text(json.dumps({
        "features": [{"name": "amount", "dtype": "float32"}, {"name": "hour", "dtype": "float32"}],
        "label": {"name": "is_fraud", "dtype": "int64"},
    }))
    registry.register("bank-b/train", fraud_data["bank-b"]["train"], "--schema", schema)
    registry.snapshot()
    spec = write_spec(tmp_path / "spec.toml", task=FRAUD_TASK, datasets=["bank-a/train", "bank-b/train"])
    assert_clean_failure(registry.session_run(spec), SchemaMismatchError, "bank-b/train:1", "'merchant_risk'")


# ---------------------------------------------------------------- corrupt files at registration


def truncated_record(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.write_bytes(data[:-10])


def truncated_header(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: frame_offsets(data)[-1] + 5])


def garbage(source: Path, target: Path) -> None:
    target.write_bytes(random.Random(0).randbytes(4096))


def csv_with_a_word(source: Path, target: Path) -> None:
    lines = source.read_text().splitlines()
    cells = lines[3].split(",")
    cells[0] = "twelve"
    lines[3] = ",".join(cells)
    target.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "corrupt, source, suffix, task, ref, named",
    [
        (truncated_record, "digits", ".tfrecord", DIGITS_TASK, "hospital-a/train", ["truncated record"]),
        (truncated_header, "digits", ".tfrecord", DIGITS_TASK, "hospital-a/train", ["truncated frame header"]),
        (garbage, "digits", ".tfrecord", DIGITS_TASK, "hospital-d/train", ["length checksum mismatch"]),
        (csv_with_a_word, "fraud", ".csv", FRAUD_TASK, "bank-a/train", ["row 3", "'twelve' is not a float32"]),
    ],
    ids=["truncated-tfrecord", "truncated-tfrecord-header", "garbage-bytes", "csv-non-number"],
)
def test_corrupt_file_at_registration(registry: Registry, digits_data, fraud_data, tmp_path: Path,
                                      corrupt, source: str, suffix: str, task: str, ref: str, named: list[str]) -> None:
    good = digits_data["hospital-c"]["train"] if source == "digits" else fraud_data["bank-c"]["train"]
    bad = tmp_path / f"bad{suffix}"
    corrupt(good, bad)
    assert bad.read_bytes() != good.read_bytes()
    result = registry.run("dataset", "register", ref, bad, "--task", task)
    assert_clean_failure(result, DatasetError, str(bad), *named)


# ---------------------------------------------------------------- files changed after registration


def append_a_record(path: Path) -> None:
    data = path.read_bytes()
    offsets = frame_offsets(data)
    path.write_bytes(data + data[offsets[0]:offsets[1]])  # still a valid file, with new content


@pytest.mark.parametrize(
    "change, key, named",
    [
        (append_a_record, "datasets", "changed since it was registered"),
        (append_a_record, "eval_datasets", "changed since it was registered"),
        (Path.unlink, "datasets", "is missing"),
    ],
    ids=["modified", "modified-eval-dataset", "deleted"],
)
def test_file_changed_after_registration(registry: Registry, digits_data, tmp_path: Path, change, key: str,
                                         named: str) -> None:
    data = tmp_path / "data" / "hospital-c.tfrecord"
    data.parent.mkdir()
    shutil.copyfile(digits_data["hospital-c"]["train"], data)
    registry.register("hospital-c/train", data, "--task", DIGITS_TASK)
    registry.snapshot()
    change(data)
    spec = write_spec(tmp_path / "spec.toml", **{key: ["hospital-a/train", "hospital-c/train"]})
    assert_clean_failure(registry.session_run(spec), DatasetError, "hospital-c/train:1", str(data), named)


# ---------------------------------------------------------------- formats that do not mix


def fraud_as_tfrecord(source: Path, target: Path) -> None:
    from tffprod.datafiles import write_tfrecord
    from tffprod.examples import fraud

    with source.open(newline="") as f:
        rows = [{k: (int(v) if k == "is_fraud" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    write_tfrecord(target, rows, fraud.SCHEMA)


@pytest.mark.parametrize(
    "overrides",
    [{"datasets": ["bank-a/train", "bank-b/train"]}, {"datasets": ["bank-a/train"], "eval_datasets": ["bank-b/train"]}],
    ids=["training", "training-and-eval"],
)
def test_datasets_mixing_formats(registry: Registry, fraud_data, tmp_path: Path, overrides: dict) -> None:
    tfrecord = tmp_path / "bank-b.tfrecord"
    fraud_as_tfrecord(fraud_data["bank-b"]["train"], tfrecord)
    registry.register("bank-b/train", tfrecord, "--task", FRAUD_TASK)
    registry.snapshot()
    spec = write_spec(tmp_path / "spec.toml", task=FRAUD_TASK, name="fraud-fl", **overrides)
    assert_clean_failure(registry.session_run(spec), DatasetError, "share a format", "csv", "tfrecord")

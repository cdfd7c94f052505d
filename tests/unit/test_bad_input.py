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
    from tffprod.sessions.planning import plan_session
    from tffprod.sessions.spec import load_spec

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
        ({"rounds": 0}, ["'rounds' must be an integer between 1 and 1000000"]),
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
    from tffprod.data.files import write_tfrecord
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


# ---------------------------------------------------------------- property tests: random and mutated documents
#
# Hypothesis throws random TOML/JSON documents (random keys, wrong types, huge numbers, NaN,
# unicode, nesting) and mutations of valid ones at each parser. Every input must either parse or
# fail with one line from a TffprodError subclass, and leave the disk as it was. Derandomized, so
# CI sees the same inputs every run.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

KEYS = st.one_of(st.sampled_from(["name", "task", "datasets", "rounds", "dp", "mechanism", "path", "tls", "cert",
                                  "listen", "coordinators", "identity", "token_sha256", "worker", "port", "budget",
                                  "epsilon", "delta", "format", "schema", "catalog", "computations"]),
                 st.text(min_size=1, max_size=12))
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-2**63, 2**63 - 1),
    st.sampled_from([0, -1, 2**63 - 1, -2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "hospital-a/train", "tffprod.examples.digits:task", "127.0.0.1:0", "\u202e\u0000x",
                     "../../etc/passwd", "x" * 300]),
)
DOCUMENT_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner,
                                                                                                  max_size=4),
                               max_leaves=20)


def toml_inline(value: Any) -> str:
    """Any value from ``DOCUMENT_VALUES`` as TOML (tables inline, so any nesting can be written)."""
    from tffprod.config.toml import toml_string, toml_value

    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_inline(v) for v in value) + "]"
    return toml_value(value)


def toml_text(document: dict) -> str:
    return "".join(f"{toml_inline_key(k)} = {toml_inline(v)}\n" for k, v in document.items())


def toml_inline_key(key: str) -> str:
    from tffprod.config.toml import toml_string

    return toml_string(key)


def mutated(valid: dict) -> st.SearchStrategy:
    """``valid`` with one change at any depth: a value replaced, a key dropped or a key added."""

    def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
        out = [prefix]
        if isinstance(doc, dict):
            for k, v in doc.items():
                out += paths(v, prefix + (k,))
        elif isinstance(doc, list):
            for i, v in enumerate(doc):
                out += paths(v, prefix + (i,))
        return out

    def apply(path: tuple, action: str, key: str, value: Any) -> dict:
        doc = json.loads(json.dumps(valid))
        if not path:
            doc[key] = value
            return doc
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if action == "drop":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent[path[-1]], dict):
            parent[path[-1]][key] = value
        else:
            parent[path[-1]] = value
        return doc

    return st.builds(apply, st.sampled_from(paths(valid)), st.sampled_from(["replace", "drop", "add"]), KEYS,
                     DOCUMENT_VALUES)


def assert_one_line(error: BaseException, *named: str) -> None:
    assert isinstance(error, TffprodError), f"{type(error).__name__}: {error}"
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text, repr(text)
    for name in named:
        assert name in text, f"{name!r} not in {text!r}"


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: proof that nothing was written."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def deep_toml(depth: int) -> str:
    return "x = " + "[" * depth + "]" * depth + "\n"


# -- session specs

VALID_SPEC = {**BASE_SPEC, "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": 0.5, "clip": 1.0,
                                  "delta": 1e-5}}


@PROPERTY
@given(document=st.dictionaries(KEYS, DOCUMENT_VALUES, max_size=8) | mutated(VALID_SPEC))
def test_any_spec_document_loads_or_fails_in_one_line(tmp_path: Path, document: dict) -> None:
    from tffprod.sessions.spec import SessionSpec, load_spec

    path = tmp_path / "spec.toml"
    path.write_text(toml_text(document), encoding="utf-8")
    try:
        assert isinstance(load_spec(path), SessionSpec)
    except Exception as e:  # noqa: BLE001 - the property: only a one-line TffprodError
        assert_one_line(e, str(path))


@settings(PROPERTY, max_examples=60)
@given(document=mutated(VALID_SPEC))
def test_session_plan_with_a_mutated_spec_exits_cleanly_and_writes_nothing(run_cli, tmp_path: Path,
                                                                         document: dict) -> None:
    """The CLI: a failure is one ``Error:`` line, no traceback, and no registry is created."""
    spec, registry = tmp_path / "spec.toml", tmp_path / "never-created.db"
    spec.write_text(toml_text(document), encoding="utf-8")
    result = run_cli("session", "plan", "--spec", spec, "--out", tmp_path / "plan.json", "--registry", registry)
    assert result.exit_code != 0  # the datasets are not registered anywhere: no spec can pass
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert not (tmp_path / "plan.json").exists()
    assert not registry.exists() or count(str(registry), "sessions") == 0


def test_a_spec_nested_too_deeply_is_a_spec_error(tmp_path: Path) -> None:
    from tffprod.sessions.spec import load_spec

    path = tmp_path / "spec.toml"
    path.write_text(deep_toml(5000))
    with pytest.raises(SpecError):
        load_spec(path)


# -- site configs


@pytest.fixture
def site_folder(tmp_path: Path) -> tuple[Path, dict]:
    """A folder with everything a TLS site config names (the config checks the files exist)."""
    from tffprod.executors.config import hash_token

    folder = tmp_path / "site"
    (folder / "certs").mkdir(parents=True)
    for name in ("site.crt", "site.key", "ca.crt"):
        (folder / "certs" / name).write_text("-----BEGIN CERTIFICATE-----\n")
    (folder / "data").mkdir()
    (folder / "data" / "train.csv").write_text("x,y\n1.0,0\n")
    (folder / "schema.json").write_text(json.dumps({"features": [{"name": "x", "dtype": "float32"}],
                                                    "label": {"name": "y", "dtype": "int64"}}))
    valid = {
        "name": "site-a", "listen": "0.0.0.0:7001", "state_dir": "state", "computations": "approved",
        "federations": ["hospitals"],
        "tls": {"cert": "certs/site.crt", "key": "certs/site.key", "ca": "certs/ca.crt"},
        "coordinators": [{"identity": "coordinator", "token_sha256": hash_token("t")}],
        "worker": {"port": 0, "max_message_mb": 100, "max_restarts": 3, "restart_window_s": 60},
        "datasets": {"train": {"path": "data/train.csv", "schema_file": "schema.json",
                               "budget": {"epsilon": 8.0, "delta": 1e-5}}},
    }
    return folder, valid


def test_the_site_config_the_mutations_start_from_is_valid(site_folder) -> None:
    from tffprod.executors.config import load_site_config

    folder, valid = site_folder
    (folder / "site.toml").write_text(toml_text(valid))
    assert load_site_config(folder / "site.toml").name == "site-a"


@PROPERTY
@given(data=st.data())
def test_any_site_config_loads_or_fails_in_one_line(site_folder, data) -> None:
    from tffprod.executors.config import SiteConfig, load_site_config

    folder, valid = site_folder
    document = data.draw(st.dictionaries(KEYS, DOCUMENT_VALUES, max_size=8) | mutated(valid) | mutated(valid))
    path = folder / "site.toml"
    path.write_text(toml_text(document), encoding="utf-8")
    before = tree(folder)
    try:
        assert isinstance(load_site_config(path), SiteConfig)
    except Exception as e:  # noqa: BLE001
        assert_one_line(e, str(path))
    assert tree(folder) == before, "loading a site config wrote files"


@pytest.mark.parametrize("text", [deep_toml(5000), "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n"],
                         ids=["arrays", "inline-tables"])
def test_a_site_config_nested_too_deeply_is_a_spec_error(tmp_path: Path, text: str) -> None:
    from tffprod.executors.config import load_site_config

    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_site_config(path)
    assert_one_line(info.value, str(path), "nested too deeply")


# -- tokens


@PROPERTY
@given(token=st.text() | st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")) | SCALARS)
def test_any_token_hashes_or_fails_in_one_line(token: Any) -> None:
    from tffprod.executors.config import hash_token

    try:
        digest = hash_token(token)
    except Exception as e:  # noqa: BLE001
        assert_one_line(e)
    else:
        assert isinstance(token, str) and token and len(digest) == 64


# -- a site's catalog, as the coordinator reads it


VALID_INFO = {
    "site": "site-a",
    "versions": {"tffprod": "0.1.0", "tensorflow_federated": "0.87.0", "tensorflow": "2.14.1"},
    "catalog": [{"name": "train", "format": "tfrecord", "schema": {"features": []}, "num_examples": 10,
                 "content_hash": "sha256:" + "0" * 64, "budget": {"epsilon": 8.0, "delta": 1e-5},
                 "client_id": None, "num_clients": 1}],
    "health": {"worker": "up", "uptime_s": 1.0},
    "computations": "approved",
}
JSON_VALUES = st.recursive(SCALARS | st.none() | st.integers(-10**400, 10**400),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                           max_leaves=20)


@PROPERTY
@given(info=JSON_VALUES | mutated(VALID_INFO) | mutated(VALID_INFO))
def test_any_site_info_document_is_read_or_refused_in_one_line(info: Any) -> None:
    """What ``site check`` and ``site sync`` read from a site: checked before anything is written."""
    from tffprod.errors import SiteCheckError
    from tffprod.sites.admin import _site_budget, check_info

    try:
        catalog = check_info("site-a", info)
        for entry in catalog:
            _site_budget("site-a", entry)
            assert isinstance(entry["name"], str) and isinstance(entry["num_examples"], int)
    except SiteCheckError as e:
        assert_one_line(e, "site site-a")


def test_the_site_info_the_mutations_start_from_is_valid() -> None:
    from tffprod.sites.admin import check_info

    assert check_info("site-a", VALID_INFO) == VALID_INFO["catalog"]


@pytest.mark.parametrize("info, named", [
    ([], "expected an object"),
    ({"catalog": {"train": {}}}, "'catalog' must be a list"),
    ({"catalog": [{"name": "train"}]}, "catalog[0].format must be a str"),
    ({"catalog": [{**VALID_INFO["catalog"][0], "name": "../x"}]}, "catalog[0].name must be a unique dataset name"),
    ({"catalog": [{**VALID_INFO["catalog"][0], "name": "train\n"}]}, "catalog[0].name"),
    ({"catalog": [{**VALID_INFO["catalog"][0], "num_examples": True}]}, "catalog[0].num_examples must be a int"),
    ({"catalog": [{**VALID_INFO["catalog"][0], "num_clients": "3"}]}, "catalog[0].num_clients"),
    ({"catalog": VALID_INFO["catalog"] * 2}, "unique"),
    ({"health": "up"}, "'health' must be an object"),
], ids=["list", "catalog-object", "missing-format", "bad-name", "newline-name", "bool-count", "string-clients",
        "duplicate", "health-string"])
def test_a_malformed_site_info_document_names_the_field(info: Any, named: str) -> None:
    from tffprod.errors import SiteCheckError
    from tffprod.sites.admin import check_info

    with pytest.raises(SiteCheckError) as error:
        check_info("site-a", info)
    assert_one_line(error.value, "site site-a", named)


def test_a_budget_too_large_for_a_float_is_a_site_check_error() -> None:
    from tffprod.errors import SiteCheckError
    from tffprod.sites.admin import _site_budget

    with pytest.raises(SiteCheckError) as error:
        _site_budget("site-a", {"name": "train", "budget": {"epsilon": 10**400, "delta": 1e-5}})
    assert_one_line(error.value, "site site-a", "invalid budget")


# -- certificates and keys


@pytest.fixture(scope="module")
def ca_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A real CA, a certificate it issued, an expired one, and one from another CA (PEM bytes)."""
    import datetime

    from tffprod.security.certs import init_ca, issue

    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    issue("site-a", ca_dir=root / "ca", out_dir=root / "out")
    now = datetime.datetime.now(datetime.timezone.utc)
    issue("expired", ca_dir=root / "ca", out_dir=root / "old", not_before=now - datetime.timedelta(days=30),
          not_after=now - datetime.timedelta(days=1))
    init_ca(root / "other", name="other-ca")
    return {"ca.key": (root / "ca" / "ca.key").read_bytes(), "ca.crt": (root / "ca" / "ca.crt").read_bytes(),
            "site.crt": (root / "out" / "site-a.crt").read_bytes(),
            "site.key": (root / "out" / "site-a.key").read_bytes(),
            "expired.crt": (root / "old" / "expired.crt").read_bytes(),
            "other.key": (root / "other" / "ca.key").read_bytes()}


def pem_mutations(pem: bytes) -> st.SearchStrategy:
    """Garbage, truncations, flipped bytes and re-wrapped base64 of a real PEM file."""
    def cut(n: int) -> bytes:
        return pem[:n]

    def flip(i: int, bit: int) -> bytes:
        out = bytearray(pem)
        out[i] ^= 1 << bit
        return bytes(out)

    return st.one_of(
        st.binary(max_size=600),
        st.integers(0, len(pem) - 1).map(cut),
        st.builds(flip, st.integers(0, len(pem) - 1), st.integers(0, 7)),
        st.builds(lambda junk: b"-----BEGIN CERTIFICATE-----\n" + junk + b"\n-----END CERTIFICATE-----\n",
                  st.binary(max_size=300)),
    )


@PROPERTY
@given(data=st.data())
def test_any_certificate_file_is_described_or_refused_in_one_line(ca_files, tmp_path: Path, data) -> None:
    from tffprod.errors import CertError
    from tffprod.security.certs import describe, identity_of

    pem = data.draw(pem_mutations(ca_files["site.crt"]) | pem_mutations(ca_files["ca.crt"]))
    path = tmp_path / "cert.pem"
    path.write_bytes(pem)
    try:
        info = describe(path)
        assert identity_of(pem) == info["subject"]
    except CertError as e:
        assert_one_line(e)


@settings(PROPERTY, max_examples=100)
@given(data=st.data())
def test_issuing_from_a_damaged_ca_fails_in_one_line_and_writes_nothing(ca_files, tmp_path: Path, data) -> None:
    """A CA folder whose key or certificate is garbage, truncated, flipped or from another CA."""
    import uuid

    from tffprod.errors import CertError
    from tffprod.security.certs import issue

    which = data.draw(st.sampled_from(["ca.key", "ca.crt"]))
    damaged = data.draw(pem_mutations(ca_files[which]) | st.just(ca_files["other.key"] if which == "ca.key"
                                                                 else ca_files["expired.crt"]))
    ca = tmp_path / f"ca-{uuid.uuid4().hex}"
    ca.mkdir()
    for name in ("ca.key", "ca.crt"):
        (ca / name).write_bytes(damaged if name == which else ca_files[name])
    out = tmp_path / f"out-{uuid.uuid4().hex}"
    try:
        issue("site-b", ca_dir=ca, out_dir=out)
    except CertError as e:
        assert_one_line(e)
        assert not out.exists() or not any(out.iterdir()), "a failed issue left files behind"
    else:  # a mutation the PEM survives (a flipped bit in the base64 padding, say): a real certificate
        assert (out / "site-b.crt").is_file() and (out / "site-b.key").is_file()


def test_an_expired_certificate_is_described_with_its_dates(ca_files, tmp_path: Path) -> None:
    import datetime

    from tffprod.security.certs import describe

    path = tmp_path / "expired.crt"
    path.write_bytes(ca_files["expired.crt"])
    info = describe(path)
    assert datetime.datetime.fromisoformat(info["not_after"]) < datetime.datetime.now(datetime.timezone.utc)


# -- plans


def valid_plan() -> dict:
    """A minimal plan that ``load_plan`` verifies: one train site computation with its release terms."""
    from tests.helpers.site_plans import computation_entry, site_computation
    from tffprod.protocol.plan_document import PLAN_FORMAT, canonical_id

    body = {
        "format": PLAN_FORMAT,
        "session": {"name": "s", "rounds": 2, "seed": 0},
        "privacy": {},
        "datasets": [{"site": "site-a", "name": "train", "content_hash": "sha256:" + "0" * 64, "role": "train"}],
        "computations": [computation_entry(site_computation())],
    }
    return {**body, "plan_id": canonical_id(body)}


def test_the_plan_the_mutations_start_from_is_valid(tmp_path: Path) -> None:
    from tffprod.protocol.plan_document import load_plan

    path = tmp_path / "plan.json"
    path.write_text(json.dumps(valid_plan()))
    assert load_plan(path).plan_id == valid_plan()["plan_id"]


@PROPERTY
@given(document=JSON_VALUES | mutated(valid_plan()), reseal=st.booleans())
def test_any_plan_loads_or_fails_in_one_line(tmp_path: Path, document: Any, reseal: bool) -> None:
    """Mutated plans, half of them with a recomputed plan id (so the checks behind the id are reached)."""
    from tffprod.protocol.plan_document import Plan, canonical_id, load_plan
    from tffprod.errors import PlanError

    if reseal and isinstance(document, dict):
        body = {k: v for k, v in document.items() if k != "plan_id"}
        document = {**body, "plan_id": canonical_id(body)}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    try:
        assert isinstance(load_plan(path), Plan)
    except PlanError as e:
        assert_one_line(e, str(path))


@pytest.mark.parametrize("shape", [False, 3, "2", None, {"a": 1}])
def test_a_pinned_leaf_whose_shape_is_not_a_list_is_a_plan_error(tmp_path: Path, shape: Any) -> None:
    """Found by the property above: a resealed plan with ``"shape": false`` on a pinned leaf was a TypeError."""
    from tffprod.errors import PlanError
    from tffprod.protocol.plan_document import canonical_id, load_plan

    body = {k: v for k, v in valid_plan().items() if k != "plan_id"}
    body["computations"][0]["state"]["pinned"][0]["shape"] = shape
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**body, "plan_id": canonical_id(body)}), encoding="utf-8")
    with pytest.raises(PlanError) as error:
        load_plan(path)
    assert_one_line(error.value, str(path))


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"a": ' * 50000 + "1" + "}" * 50000, "\ufeff{}",
                                  "", "null"], ids=["deep-arrays", "deep-objects", "bom", "empty", "null"])
def test_an_unreadable_plan_is_a_plan_error(tmp_path: Path, text: str) -> None:
    from tffprod.errors import PlanError
    from tffprod.protocol.plan_document import load_plan

    path = tmp_path / "plan.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert_one_line(info.value, str(path))

"""CLI tests against real SQLite registries and real example data files.

Nothing in this file imports TensorFlow, and the commands it runs must not
either: registry commands answer quickly. The subprocess tests prove it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from tffprod.cli.main import cli
from tffprod.errors import NotFoundError

DIGITS_TASK = "tffprod.examples.digits:task"
FRAUD_TASK = "tffprod.examples.fraud:task"
TOP_LEVEL_COMMANDS = {"init", "dataset", "session", "model", "eval", "demo"}
# A schema written by hand: only some of the fraud CSV's columns.
FRAUD_SUBSET_SCHEMA = {
    "features": [
        {"name": "amount", "dtype": "float32", "shape": []},
        {"name": "hour", "dtype": "float32", "shape": []},
    ],
    "label": {"name": "is_fraud", "dtype": "int64", "shape": []},
}
DIGITS_SCHEMA = {
    "features": [{"name": "pixels", "dtype": "float32", "shape": [64]}],
    "label": {"name": "digit", "dtype": "int64", "shape": []},
}
TF_MODULES = ("tensorflow", "tensorflow_federated", "tensorflow_privacy")


# ---------------------------------------------------------------- helpers


def tfrecord_frames(path: Path) -> int:
    """Counts TFRecord frames by walking the length headers (independent of tffprod's reader)."""
    data = path.read_bytes()
    offset = count = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 8 + 4 + length + 4
        count += 1
    assert offset == len(data), f"{path} does not end on a frame boundary"
    return count


def csv_rows(path: Path) -> int:
    return len(path.read_text().splitlines()) - 1


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_rows(registry: str) -> list[tuple]:
    conn = sqlite3.connect(registry)
    try:
        return conn.execute(
            "SELECT site, name, version, num_examples FROM datasets ORDER BY site, name, version"
        ).fetchall()
    finally:
        conn.close()


def ok(result) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    assert result.exception is None, result.exception
    return result.stdout


def one_error_line(result, exit_code: int) -> str:
    """The one ``Error: ...`` line of a command that must have failed cleanly."""
    assert result.exit_code == exit_code, f"exit {result.exit_code} (want {exit_code}): {result.output}"
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def walk(command: click.Command, path: tuple[str, ...] = ()):
    """Every command and group under ``command`` (itself included), with its path."""
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from walk(command.commands[name], path + (name,))


ALL_COMMANDS = list(walk(cli))


# ---------------------------------------------------------------- help: docs that cannot drift


def test_help_lists_every_command(run_cli) -> None:
    out = ok(run_cli("--help"))
    listed = out.split("Commands:", 1)[1]
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert names == set(cli.commands)
    assert TOP_LEVEL_COMMANDS <= names


@pytest.mark.parametrize(
    "path, command", ALL_COMMANDS, ids=[" ".join(("tffprod",) + p) for p, _ in ALL_COMMANDS]
)
def test_every_command_has_help_with_an_example(run_cli, path: tuple[str, ...], command: click.Command) -> None:
    out = ok(run_cli(*path, "--help"))
    invocation = " ".join(("tffprod",) + path)
    assert out.startswith(f"Usage: {invocation} ")
    assert command.help and command.help.strip(), "no help text"
    assert command.get_short_help_str().strip(), "no short help"
    first_paragraph = command.help.strip().split("\n\n")[0]
    assert " ".join(first_paragraph.split()) in " ".join(out.split())
    lines = out.splitlines()
    # "Example:" alone on its line (kept by click's \b), then indented invocations of this command.
    assert any(line.strip() == "Example:" for line in lines), f"no 'Example:' block:\n{out}"
    start = next(i for i, line in enumerate(lines) if line.strip() == "Example:") + 1
    examples = []
    for line in lines[start:]:
        if not line.strip():
            break
        examples.append(line.strip())
    assert examples and examples[0].startswith(invocation), (
        f"the example should start with {invocation!r}, got {examples}"
    )
    if isinstance(command, click.Group):
        listed = out.split("Commands:", 1)[1]
        names = {line.split()[0] for line in listed.splitlines() if line.strip()}
        assert names == set(command.commands)


def test_version(run_cli) -> None:
    from tffprod import __version__

    assert ok(run_cli("--version")).strip() == f"tffprod, version {__version__}"


# ---------------------------------------------------------------- init


def test_init_creates_a_registry(run_cli, registry_path: str) -> None:
    out = ok(run_cli("init", "--registry", registry_path))
    assert out.strip() == f"registry ready: {registry_path}"
    conn = sqlite3.connect(registry_path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert {"sites", "datasets", "sessions", "rounds", "model_versions", "evaluations"} <= tables
    # Again: an existing registry is fine, and --json says where it is.
    assert json.loads(ok(run_cli("init", "--registry", registry_path, "--json"))) == {"registry": registry_path}


# ---------------------------------------------------------------- dataset register / list / show


def test_register_with_task(run_cli, registry_path: str, digits_data) -> None:
    path = digits_data["hospital-a"]["train"]
    out = ok(run_cli("dataset", "register", "hospital-a/train", path, "--task", DIGITS_TASK,
                     "--registry", registry_path))
    n = tfrecord_frames(path)
    assert out.startswith(f"registered hospital-a/train:1: {n} examples (tfrecord, sha256:")
    assert dataset_rows(registry_path) == [("hospital-a", "train", 1, n)]
    row = json.loads(ok(run_cli("dataset", "show", "hospital-a/train", "--registry", registry_path, "--json")))
    assert row["schema"] == DIGITS_SCHEMA
    assert row["path"] == str(path.resolve())


def test_register_with_schema_file(run_cli, registry_path: str, fraud_data, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(FRAUD_SUBSET_SCHEMA))
    path = fraud_data["bank-a"]["train"]
    result = run_cli("dataset", "register", "bank-a/train", path, "--schema", schema,
                     "--registry", registry_path, "--json")
    row = json.loads(ok(result))
    assert row["ref"] == "bank-a/train:1"
    assert row["format"] == "csv"
    assert row["num_examples"] == csv_rows(path)
    assert row["schema"] == FRAUD_SUBSET_SCHEMA
    assert row["content_hash"] == sha256(path)


def test_register_needs_exactly_one_schema_source(run_cli, registry_path: str, fraud_data, tmp_path: Path) -> None:
    path = fraud_data["bank-a"]["train"]
    neither = run_cli("dataset", "register", "bank-a/train", path, "--registry", registry_path)
    assert neither.exit_code == 2 and "exactly one of --schema" in neither.stderr
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(FRAUD_SUBSET_SCHEMA))
    both = run_cli("dataset", "register", "bank-a/train", path, "--schema", schema, "--task", FRAUD_TASK,
                   "--registry", registry_path)
    assert both.exit_code == 2 and "exactly one of --schema" in both.stderr
    assert not Path(registry_path).exists() or dataset_rows(registry_path) == []


def test_reregistering_keeps_the_version_until_the_file_changes(run_cli, registry_path: str, fraud_data,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    shutil.copyfile(fraud_data["bank-a"]["train"], path)
    n = csv_rows(path)
    register = ("dataset", "register", "bank-a/train", path, "--task", FRAUD_TASK,
                "--registry", registry_path, "--json")

    first = json.loads(ok(run_cli(*register)))
    again = json.loads(ok(run_cli(*register)))
    assert (first["ref"], again["ref"]) == ("bank-a/train:1", "bank-a/train:1")
    assert again == first
    assert dataset_rows(registry_path) == [("bank-a", "train", 1, n)]

    with path.open("a") as f:  # one more (valid) row: new content
        f.write(path.read_text().splitlines()[-1] + "\n")
    changed = json.loads(ok(run_cli(*register)))
    assert changed["ref"] == "bank-a/train:2"
    assert changed["num_examples"] == n + 1
    assert changed["content_hash"] == sha256(path) != first["content_hash"]
    assert dataset_rows(registry_path) == [("bank-a", "train", 1, n), ("bank-a", "train", 2, n + 1)]

    latest = json.loads(ok(run_cli("dataset", "list", "--registry", registry_path, "--json")))
    assert [d["ref"] for d in latest] == ["bank-a/train:2"]
    old = json.loads(ok(run_cli("dataset", "show", "bank-a/train:1", "--registry", registry_path, "--json")))
    assert (old["num_examples"], old["content_hash"]) == (n, first["content_hash"])


@pytest.fixture
def two_datasets(run_cli, registry_path: str, digits_data, fraud_data, tmp_path: Path) -> dict[str, Path]:
    """A registry holding hospital-a/train (digits, TFRecord) and bank-a/train (fraud CSV, hand schema)."""
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(FRAUD_SUBSET_SCHEMA))
    digits_path, fraud_path = digits_data["hospital-a"]["train"], fraud_data["bank-a"]["train"]
    ok(run_cli("dataset", "register", "hospital-a/train", digits_path, "--task", DIGITS_TASK,
               "--registry", registry_path))
    ok(run_cli("dataset", "register", "bank-a/train", fraud_path, "--schema", schema, "--registry", registry_path))
    return {"hospital-a/train:1": digits_path, "bank-a/train:1": fraud_path}


def test_dataset_list_json(run_cli, registry_path: str, two_datasets) -> None:
    rows = json.loads(ok(run_cli("dataset", "list", "--registry", registry_path, "--json")))
    assert [r["ref"] for r in rows] == ["bank-a/train:1", "hospital-a/train:1"]
    by_ref = {r["ref"]: r for r in rows}
    digits_row, fraud_row = by_ref["hospital-a/train:1"], by_ref["bank-a/train:1"]
    assert digits_row["num_examples"] == tfrecord_frames(two_datasets["hospital-a/train:1"])
    assert fraud_row["num_examples"] == csv_rows(two_datasets["bank-a/train:1"])
    for ref, row in by_ref.items():
        assert row["content_hash"] == sha256(two_datasets[ref])
    assert digits_row["schema"] == DIGITS_SCHEMA
    assert fraud_row["schema"] == FRAUD_SUBSET_SCHEMA
    assert (digits_row["format"], fraud_row["format"]) == ("tfrecord", "csv")

    only = json.loads(ok(run_cli("dataset", "list", "--site", "hospital-a", "--registry", registry_path, "--json")))
    assert [r["ref"] for r in only] == ["hospital-a/train:1"]


def test_dataset_list_text(run_cli, registry_path: str, two_datasets) -> None:
    lines = ok(run_cli("dataset", "list", "--registry", registry_path)).splitlines()
    assert lines[0].split() == ["REF", "FORMAT", "NUM_EXAMPLES", "CLIENT_ID", "NUM_CLIENTS", "REGISTERED_AT"]
    cells = [line.split() for line in lines[1:]]
    assert [c[3:5] for c in cells] == [["-", "1"]] * 2  # each dataset is one client (site-level)
    assert [c[:3] for c in cells] == [
        ["bank-a/train:1", "csv", str(csv_rows(two_datasets["bank-a/train:1"]))],
        ["hospital-a/train:1", "tfrecord", str(tfrecord_frames(two_datasets["hospital-a/train:1"]))],
    ]


def test_dataset_show_text_and_json(run_cli, registry_path: str, two_datasets) -> None:
    path = two_datasets["hospital-a/train:1"]
    text = ok(run_cli("dataset", "show", "hospital-a/train", "--registry", registry_path))
    fields = {line.split(None, 1)[0]: line.split(None, 1)[1]
              for line in text.splitlines() if len(line.split(None, 1)) == 2}
    assert fields["ref"] == "hospital-a/train:1"
    assert fields["path"] == str(path.resolve())
    assert fields["num_examples"] == str(tfrecord_frames(path))
    assert fields["content_hash"] == sha256(path)
    assert "  feature   pixels: float32[64]" in text.splitlines()
    assert "  label     digit: int64[]" in text.splitlines()

    row = json.loads(ok(run_cli("dataset", "show", "hospital-a/train:1", "--registry", registry_path, "--json")))
    assert row["ref"] == "hospital-a/train:1"
    assert row["num_examples"] == tfrecord_frames(path)
    assert row["content_hash"] == sha256(path)
    assert row["schema"] == DIGITS_SCHEMA


def test_registry_env_var_is_honoured(run_cli, digits_data, tmp_path: Path, monkeypatch) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    env_registry = str(tmp_path / "from-env.db")
    env = {"TFFPROD_REGISTRY": env_registry}

    assert ok(run_cli("init", env=env)).strip() == f"registry ready: {env_registry}"
    ok(run_cli("dataset", "register", "hospital-a/train", digits_data["hospital-a"]["train"],
               "--task", DIGITS_TASK, env=env))
    assert [r["ref"] for r in json.loads(ok(run_cli("dataset", "list", "--json", env=env)))] == ["hospital-a/train:1"]
    assert dataset_rows(env_registry)[0][:3] == ("hospital-a", "train", 1)
    assert not (workdir / "tffprod.db").exists()
    # --registry wins over the variable.
    other = str(tmp_path / "other.db")
    assert json.loads(ok(run_cli("dataset", "list", "--json", "--registry", other, env=env))) == []
    # Without either, the default ./tffprod.db is used.
    assert json.loads(ok(run_cli("dataset", "list", "--json"))) == []
    assert (workdir / "tffprod.db").exists()


# ---------------------------------------------------------------- sessions and models on an empty registry


def test_empty_registry_lists(run_cli, registry_path: str) -> None:
    ok(run_cli("init", "--registry", registry_path))
    assert json.loads(ok(run_cli("session", "list", "--json", "--registry", registry_path))) == []
    assert json.loads(ok(run_cli("model", "list", "--json", "--registry", registry_path))) == []
    assert json.loads(ok(run_cli("dataset", "list", "--json", "--registry", registry_path))) == []
    assert ok(run_cli("session", "list", "--registry", registry_path)).strip() == "(none)"
    assert ok(run_cli("model", "list", "--registry", registry_path)).strip() == "(none)"


@pytest.mark.parametrize(
    "args, named",
    [
        (("session", "show", "UNKNOWN"), "unknown session 'UNKNOWN'"),
        (("model", "show", "nope"), "unknown model version 'nope'"),
        (("model", "show", "nope:3"), "unknown model version 'nope:3'"),
        (("dataset", "show", "hospital-z/none"), "unknown dataset 'hospital-z/none'"),
    ],
)
def test_show_unknown_fails_with_one_line(run_cli, registry_path: str, args: tuple, named: str) -> None:
    ok(run_cli("init", "--registry", registry_path))
    line = one_error_line(run_cli(*args, "--registry", registry_path), NotFoundError.exit_code)
    assert named in line


# ---------------------------------------------------------------- TensorFlow stays out of registry commands

_PROBE = """
import json, sys
import click
from tffprod.cli.main import cli

registry, data = sys.argv[1], sys.argv[2]
commands = [
    ["init", "--registry", registry],
    ["dataset", "register", "hospital-a/train", data, "--task", "tffprod.examples.digits:task", "--registry", registry],
    ["dataset", "list", "--registry", registry, "--json"],
    ["dataset", "show", "hospital-a/train", "--registry", registry],
    ["session", "list", "--registry", registry, "--json"],
    ["session", "show", "s-unknown", "--registry", registry],
    ["session", "cancel", "s-unknown", "--registry", registry],
    ["model", "list", "--registry", registry, "--json"],
    ["audit", "list", "--registry", registry, "--json"],
    ["audit", "verify", "--registry", registry],
    ["--help"],
]
for args in commands:
    try:
        cli.main(args, prog_name="tffprod", standalone_mode=False)
    except (SystemExit, click.ClickException):  # the unknown session is expected
        pass
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {tf_modules!r})
    if loaded:
        print("IMPORTED-BY " + " ".join(args) + ": " + ", ".join(loaded[:5]), file=sys.stderr)
        sys.exit(7)
print("TF-FREE", file=sys.stderr)
"""


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TFFPROD_REGISTRY", None)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def test_registry_commands_do_not_import_tensorflow(digits_data, tmp_path: Path) -> None:
    registry = tmp_path / "registry.db"
    probe = _PROBE.replace("{tf_modules!r}", repr(set(TF_MODULES)))
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(registry), str(digits_data["hospital-a"]["train"])],
        capture_output=True, text=True, cwd=tmp_path, env=_subprocess_env(), timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "TF-FREE"
    # The commands really ran: the dataset is in the registry and was listed.
    assert dataset_rows(str(registry))[0][:3] == ("hospital-a", "train", 1)
    assert '"ref": "hospital-a/train:1"' in proc.stdout


def test_help_is_fast_and_does_not_import_tensorflow(tmp_path: Path, report_line) -> None:
    exe = Path(sys.executable).parent / "tffprod"
    assert exe.is_file(), f"{exe} is not installed (pip install -e .)"
    env = _subprocess_env()

    start = time.perf_counter()
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "Commands:" in proc.stdout
    report_line(f"[benchmark] `tffprod --help` took {elapsed:.3f} s (wall, fresh process)")

    # Python's own import log (-X importtime) names every module the process imported.
    traced = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path,
                            env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, timeout=60)
    assert traced.returncode == 0, traced.stderr
    imported = {line.rsplit("|", 1)[-1].strip()
                for line in traced.stderr.splitlines() if line.startswith("import time:")}
    assert {"click", "tffprod.cli.main"} <= imported, "the import log is not what we expect"
    assert not sorted(m for m in imported if m.split(".")[0] in TF_MODULES)


# ---------------------------------------------------------------- dataset register --budget-*


def budget_of(registry: str, ref: str) -> dict | None:
    from tffprod.registry import Registry

    site, name = ref.split("/")
    with Registry.open(registry) as opened:
        return opened.get_budget(site, name)


def test_register_with_a_budget(run_cli, registry_path: str, fraud_data) -> None:
    path = fraud_data["bank-a"]["train"]
    register = ("dataset", "register", "bank-a/train", path, "--task", FRAUD_TASK, "--registry", registry_path,
                "--budget-epsilon", "8", "--budget-delta", "1e-5")
    out = ok(run_cli(*register))
    assert out.splitlines()[1] == "budget of bank-a/train: epsilon 8, delta 1e-05"
    row = json.loads(ok(run_cli(*register[:-4], "--budget-epsilon", "4.5", "--budget-delta", "1e-6", "--json")))
    assert row["ref"] == "bank-a/train:1"  # same file: same version, the budget is replaced
    assert {k: row["budget"][k] for k in ("site", "name", "epsilon", "delta", "source")} == {
        "site": "bank-a", "name": "train", "epsilon": 4.5, "delta": 1e-6, "source": "coordinator"}
    assert budget_of(registry_path, "bank-a/train") == row["budget"]
    assert "budget" not in json.loads(ok(run_cli(*register[:-4], "--json")))  # no options: budget untouched
    assert budget_of(registry_path, "bank-a/train")["epsilon"] == 4.5


@pytest.mark.parametrize("given", [("--budget-epsilon", "8"), ("--budget-delta", "1e-5")])
def test_register_needs_both_budget_options_or_neither(run_cli, registry_path: str, fraud_data, given) -> None:
    result = run_cli("dataset", "register", "bank-a/train", fraud_data["bank-a"]["train"], "--task", FRAUD_TASK,
                     "--registry", registry_path, *given)
    assert result.exit_code == 2 and "give both --budget-epsilon and --budget-delta, or neither" in result.stderr
    assert not Path(registry_path).exists() or dataset_rows(registry_path) == []


@pytest.mark.parametrize("epsilon, delta, problem", [("0", "1e-5", "epsilon must be > 0"),
                                                     ("8", "1", "delta must be > 0 and < 1"),
                                                     ("nan", "1e-5", "epsilon must be a finite number")])
def test_register_refuses_a_budget_out_of_range(run_cli, registry_path: str, fraud_data, epsilon: str, delta: str,
                                                problem: str) -> None:
    result = run_cli("dataset", "register", "bank-a/train", fraud_data["bank-a"]["train"], "--task", FRAUD_TASK,
                     "--registry", registry_path, "--budget-epsilon", epsilon, "--budget-delta", delta)
    assert problem in one_error_line(result, 2)
    assert dataset_rows(registry_path) == []  # checked before anything was written


def test_register_cannot_override_a_site_budget(run_cli, registry_path: str, fraud_data) -> None:
    from tffprod.errors import DatasetError
    from tffprod.registry import Registry

    with Registry.open(registry_path) as registry:
        registry.set_budget("bank-a", "train", epsilon=2.0, delta=1e-6, source="site")
    result = run_cli("dataset", "register", "bank-a/train", fraud_data["bank-a"]["train"], "--task", FRAUD_TASK,
                     "--registry", registry_path, "--budget-epsilon", "8", "--budget-delta", "1e-5")
    line = one_error_line(result, DatasetError.exit_code)
    assert "bank-a/train: its budget (epsilon=2, delta=1e-06) is set by the site's config" in line
    assert dataset_rows(registry_path) == []
    assert (budget_of(registry_path, "bank-a/train")["epsilon"], budget_of(registry_path, "bank-a/train")["source"]) \
        == (2.0, "site")
    # Without budget options the dataset registers as before, under the site's budget.
    ok(run_cli("dataset", "register", "bank-a/train", fraud_data["bank-a"]["train"], "--task", FRAUD_TASK,
               "--registry", registry_path))
    assert budget_of(registry_path, "bank-a/train")["source"] == "site"


def test_session_run_ends_with_the_evaluation_and_says_no_dp_instead_of_none(capsys) -> None:
    from tffprod.cli.sessions import _report, train_metrics

    version = {"name": "m", "version": 2, "epsilon": None, "delta": None, "artifact_path": "/a",
               "metrics": {"train": {}, "eval": {"loss": 0.25, "binary_accuracy": 0.875, "num_examples": 8}}}
    _report({"id": "s-1", "status": "finished", "rounds_completed": 3, "model_version": version}, False)
    out = capsys.readouterr().out
    assert "model m:2  no DP  artifact /a" in out and "None" not in out
    assert "evaluation, all held-out data: loss 0.2500  binary_accuracy 0.8750\n" in out
    _report({"id": "s-1", "status": "finished", "rounds_completed": 3,
             "model_version": {**version, "epsilon": 1.23456, "delta": 1e-5}}, False)
    assert "epsilon 1.235 at delta 1e-05" in capsys.readouterr().out
    fedavg = {"client_work": {"train": {"loss": 0.5, "num_examples": 4}}, "finalizer": {}}
    one_step = {"client_work": {"loss": 0.5, "num_users": 2}}
    assert train_metrics(fedavg) == {"loss": 0.5, "num_examples": 4}
    assert train_metrics(one_step) == one_step["client_work"]
    custom = {"loss": 0.5, "rounds_seen": 3}  # a process without client work: its measurements whole
    for metrics in (fedavg, one_step, custom, {}):
        assert train_metrics(train_metrics(metrics)) == train_metrics(metrics)
    assert train_metrics(custom) == custom and train_metrics({}) == {}

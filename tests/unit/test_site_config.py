"""Site configs: strict validation, relative paths, token hashing, catalog building.

Fast: no TensorFlow, no processes. Data files are real, written with ``tffprod.data.files``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tffprod.data.files import write_csv, write_tfrecord
from tffprod.errors import DatasetError, SpecError
from tffprod.executors.config import (
    DatasetDecl,
    SiteConfig,
    TLSFiles,
    WorkerSettings,
    hash_token,
    load_site_config,
    write_site_config,
)
from tffprod.data.schema import Feature, Schema

VECTOR = Schema(features=(Feature("x", "float32", (3,)),), label=Feature("y", "int64"))
SCALAR = Schema(features=(Feature("a", "float32"), Feature("b", "int64")), label=Feature("y", "int64"))
TOKEN_HASH = hash_token("s3cret-token")

TASK_FILE = '''
from tffprod.data.schema import Feature, Schema
from tffprod.task import Task

task = Task(name="vec", model_fn=lambda: None, loss_fn=lambda: None,
            schema=Schema(features=(Feature("x", "float32", (3,)),), label=Feature("y", "int64")))
not_a_task = 42
'''


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    """A site folder with certificate files, a task file, a schema file and two real data files."""
    root = tmp_path / "site"
    (root / "certs").mkdir(parents=True)
    for name in ("site.crt", "site.key", "ca.crt"):
        (root / "certs" / name).write_text(f"-----PEM {name}-----\n")
    (root / "tasks").mkdir()
    (root / "tasks" / "vec.py").write_text(TASK_FILE)
    (root / "scalar.json").write_text(json.dumps(SCALAR.to_dict()))
    write_tfrecord(root / "data" / "train.tfrecord",
                   [{"x": [i, i + 1.0, i + 2.0], "y": i % 2} for i in range(5)], VECTOR)
    write_csv(root / "data" / "eval.csv", [{"a": 0.5 * i, "b": i, "y": i % 3} for i in range(7)], SCALAR)
    return root


def base(**overrides: Any) -> dict[str, Any]:
    """A valid mTLS config as plain data; ``overrides`` replace (or, as None, drop) top-level keys."""
    data: dict[str, Any] = {
        "name": "hospital-a",
        "listen": "0.0.0.0:7001",
        "state_dir": "state",
        "tls": {"cert": "certs/site.crt", "key": "certs/site.key", "ca": "certs/ca.crt"},
        "coordinators": [{"identity": "coordinator", "token_sha256": TOKEN_HASH}],
        "worker": {"port": 0, "max_message_mb": 1000, "max_restarts": 3, "restart_window_s": 60},
        "datasets": {
            "train": {"path": "data/train.tfrecord", "task": "tasks/vec.py:task"},
            "eval": {"path": "data/eval.csv", "format": "csv", "schema_file": "scalar.json"},
        },
    }
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def write(site_dir: Path, data: dict[str, Any], name: str = "site.toml") -> Path:
    return write_site_config(site_dir / name, data)


def load(site_dir: Path, data: dict[str, Any]) -> SiteConfig:
    return load_site_config(write(site_dir, data))


def error_of(site_dir: Path, data: dict[str, Any]) -> str:
    """The message of the SpecError loading ``data`` raises: one line, starting with the file."""
    path = write(site_dir, data)
    with pytest.raises(SpecError) as info:
        load_site_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


# ---------------------------------------------------------------- valid configs


def test_a_full_config_loads_with_paths_relative_to_its_folder(site_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(site_dir.parent)  # not the config's folder: paths must not depend on the cwd
    config = load(site_dir, base())
    assert config.name == "hospital-a"
    assert (config.listen, config.listen_host, config.listen_port) == ("0.0.0.0:7001", "0.0.0.0", 7001)
    assert config.state_dir == site_dir / "state"
    assert config.insecure_dev is False
    assert config.tls == TLSFiles(cert=site_dir / "certs/site.crt", key=site_dir / "certs/site.key",
                                  ca=site_dir / "certs/ca.crt")
    assert config.coordinators == {"coordinator": TOKEN_HASH}
    assert config.worker == WorkerSettings(port=0, max_message_mb=1000, max_restarts=3, restart_window_s=60.0)
    assert config.datasets == {
        "train": DatasetDecl(path=site_dir / "data/train.tfrecord", format="tfrecord", schema=VECTOR),
        "eval": DatasetDecl(path=site_dir / "data/eval.csv", format="csv", schema=SCALAR),
    }
    assert config.source == site_dir / "site.toml"


def test_defaults_and_a_plaintext_loopback_dev_site(site_dir: Path) -> None:
    data = base(tls=None, worker=None, state_dir=None, insecure_dev=True, listen="127.0.0.1:0")
    config = load(site_dir, data)
    assert config.insecure_dev and config.tls is None
    assert config.listen_port == 0
    assert config.state_dir == site_dir / "state"
    assert config.worker == WorkerSettings()


@pytest.mark.parametrize("listen", ["localhost:7001", "[::1]:7001", "127.0.0.2:0"])
def test_insecure_dev_accepts_every_loopback_address(site_dir: Path, listen: str) -> None:
    assert load(site_dir, base(tls=None, insecure_dev=True, listen=listen)).insecure_dev


def test_absolute_paths_stay_absolute(site_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "elsewhere" / "state"
    config = load(site_dir, base(state_dir=str(state)))
    assert config.state_dir == state


def test_a_task_module_path_gives_the_schema(site_dir: Path) -> None:
    datasets = {"train": {"path": "data/train.tfrecord", "task": "tffprod.examples.digits:task"}}
    config = load(site_dir, base(datasets=datasets))
    assert config.datasets["train"].schema.features[0].name == "pixels"


def test_token_sha256_is_stored_lowercase(site_dir: Path) -> None:
    coordinators = [{"identity": "c", "token_sha256": TOKEN_HASH.upper()}]
    assert load(site_dir, base(coordinators=coordinators)).coordinators == {"c": TOKEN_HASH}


# ---------------------------------------------------------------- every validation path


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # unknown keys, with a hint where one is close
        ({"lisen": "127.0.0.1:1"}, "unknown key 'lisen' (did you mean 'listen'?)"),
        ({"tls": {"cert": "certs/site.crt", "key": "certs/site.key", "ca": "certs/ca.crt", "crl": "x"}},
         "unknown key 'tls.crl'"),
        ({"worker": {"prot": 1}}, "unknown key 'worker.prot' (did you mean 'port'?)"),
        ({"coordinators": [{"identity": "c", "token_sha256": TOKEN_HASH, "token": "plain"}]},
         "unknown key 'coordinators[0].token'"),
        ({"datasets": {"train": {"pth": "data/train.tfrecord"}}},
         "unknown key 'datasets.train.pth' (did you mean 'path'?)"),
        # missing fields
        ({"name": None}, "missing required key 'name'"),
        ({"listen": None}, "missing required key 'listen'"),
        ({"coordinators": None}, "missing required key 'coordinators'"),
        ({"datasets": None}, "missing required key 'datasets'"),
        ({"tls": None}, "missing required table 'tls'"),
        ({"tls": {"cert": "certs/site.crt", "ca": "certs/ca.crt"}}, "missing required key 'tls.key'"),
        ({"coordinators": [{"identity": "c"}]}, "missing required key 'coordinators[0].token_sha256'"),
        ({"datasets": {"train": {"task": "tasks/vec.py:task"}}}, "missing required key 'datasets.train.path'"),
        # wrong types
        ({"name": 7}, "'name' must be a string, got integer 7"),
        ({"insecure_dev": "yes"}, "'insecure_dev' must be true or false, got string 'yes'"),
        ({"tls": "certs"}, "'tls' must be a table, got string 'certs'"),
        ({"worker": {"port": "7002"}}, "'worker.port' must be an integer, got string '7002'"),
        ({"worker": {"max_restarts": 1.5}}, "'worker.max_restarts' must be an integer, got float 1.5"),
        ({"worker": {"restart_window_s": True}}, "'worker.restart_window_s' must be a number, got boolean"),
        ({"worker": {"restart_window_s": 10**400}}, "'worker.restart_window_s' must be a number > 0, got 1000"),
        ({"coordinators": {"identity": "c"}}, "'coordinators' must be an array of tables"),
        ({"datasets": "data/train.tfrecord"}, "'datasets' must be a table"),
        ({"datasets": {"train": "data/train.tfrecord"}}, "'datasets.train' must be a table"),
        ({"state_dir": 3}, "'state_dir' must be a string, got integer 3"),
        # bad values
        ({"name": "Hospital A"}, "'name' must start with a lowercase letter or digit"),
        ({"listen": "127.0.0.1"}, "'listen' must be 'host:port'"),
        ({"listen": "127.0.0.1:70000"}, "'listen' must be 'host:port'"),
        ({"listen": ":7001"}, "'listen' must be 'host:port'"),
        ({"worker": {"port": 7001}}, "'worker.port' = 7001 is the port 'listen' uses"),
        ({"worker": {"port": 70000}}, "'worker.port' must be an integer between 0 and 65535, got 70000"),
        ({"worker": {"max_message_mb": 5000}}, "'worker.max_message_mb' must be an integer between 1 and 2047"),
        ({"worker": {"max_restarts": -1}}, "'worker.max_restarts' must be an integer >= 0"),
        ({"worker": {"restart_window_s": 0}}, "'worker.restart_window_s' must be a number > 0"),
        ({"worker": {"isolation": "chroot"}}, "'worker.isolation' must be \"netns\" (the default) or \"none\""),
        ({"computations": "any", "listen": "0.0.0.0:7001"},
         "'computations' = \"any\" runs any computation a coordinator sends and is refused unless 'listen' is a "
         "loopback address"),
        ({"coordinators": []}, "'coordinators' must name at least one coordinator"),
        ({"coordinators": [{"identity": "c", "token_sha256": "s3cret-token"}]},
         "'coordinators[0].token_sha256' must be 64 hex digits"),
        ({"coordinators": [{"identity": " c", "token_sha256": TOKEN_HASH}]},
         "'coordinators[0].identity' must be a certificate common name"),
        ({"coordinators": [{"identity": "c", "token_sha256": TOKEN_HASH}] * 2},
         "'coordinators[1].identity': coordinator 'c' is listed twice"),
        ({"datasets": {}}, "'datasets' must declare at least one dataset"),
        ({"datasets": {"bad/name": {"path": "data/train.tfrecord", "task": "tasks/vec.py:task"}}},
         "'datasets.bad/name': a dataset name holds only"),
        ({"datasets": {"train": {"path": "", "task": "tasks/vec.py:task"}}},
         "'datasets.train.path' must be a non-empty path"),
        ({"datasets": {"train": {"path": "data/train.tfrecord", "format": "parquet", "task": "tasks/vec.py:task"}}},
         "'datasets.train.format' must be one of 'tfrecord', 'csv', got 'parquet'"),
        ({"datasets": {"train": {"path": "data/train.bin", "task": "tasks/vec.py:task"}}},
         "'datasets.train.format' is needed: the suffix of 'train.bin' names no format"),
        ({"datasets": {"train": {"path": "data/train.tfrecord"}}},
         "'datasets.train' needs exactly one of 'task' or 'schema_file'"),
        ({"datasets": {"train": {"path": "data/train.tfrecord", "task": "tasks/vec.py:task",
                                 "schema_file": "scalar.json"}}},
         "'datasets.train' needs exactly one of 'task' or 'schema_file'"),
        ({"datasets": {"train": {"path": "data/train.tfrecord", "task": "no colon"}}},
         "'datasets.train.task' must look like 'package.module:attribute' or 'file.py:attribute'"),
        ({"datasets": {"train": {"path": "data/train.tfrecord", "task": "tasks/vec.py:not_a_task"}}},
         "'datasets.train.task': task "),
        ({"datasets": {"train": {"path": "data/train.tfrecord", "task": "no_such_module_xyz:task"}}},
         "'datasets.train.task': task 'no_such_module_xyz:task': cannot import no_such_module_xyz"),
        ({"datasets": {"train": {"path": "data/train.tfrecord", "schema_file": "missing.json"}}},
         "'datasets.train.schema_file': schema file "),
    ],
)
def test_a_bad_config_fails_with_one_line_naming_file_and_key(site_dir: Path, overrides: dict,
                                                             expected: str) -> None:
    assert expected in error_of(site_dir, base(**overrides))


def test_plaintext_is_refused_off_loopback(site_dir: Path) -> None:
    message = error_of(site_dir, base(tls=None, insecure_dev=True, listen="0.0.0.0:7001"))
    assert message.startswith("'insecure_dev' = true serves plaintext") and "'0.0.0.0:7001'" in message


def test_plaintext_and_tls_together_are_refused(site_dir: Path) -> None:
    message = error_of(site_dir, base(insecure_dev=True, listen="127.0.0.1:7001"))
    assert message == "'tls' and 'insecure_dev' = true contradict each other: remove one"


def test_a_missing_certificate_file_is_named(site_dir: Path) -> None:
    (site_dir / "certs" / "ca.crt").unlink()
    assert error_of(site_dir, base()) == f"'tls.ca': no such file {site_dir / 'certs' / 'ca.crt'}"


def test_a_bad_schema_file_is_named(site_dir: Path) -> None:
    (site_dir / "scalar.json").write_text("{not json")
    assert "'datasets.eval.schema_file': schema file" in error_of(site_dir, base())
    (site_dir / "scalar.json").write_text(json.dumps({"features": [], "label": {"name": "y"}}))
    assert "'datasets.eval.schema_file': schema needs at least one feature" in error_of(site_dir, base())


def test_invalid_toml_unreadable_and_missing_files(site_dir: Path) -> None:
    bad = site_dir / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(SpecError, match=rf"^{bad}: invalid TOML: "):
        load_site_config(bad)
    bad.write_bytes(b"name = '\xff'\n")
    with pytest.raises(SpecError, match=rf"^{bad}: not UTF-8 text"):
        load_site_config(bad)
    with pytest.raises(SpecError, match=r"nope\.toml: cannot read site config: No such file"):
        load_site_config(site_dir / "nope.toml")


# ---------------------------------------------------------------- tokens and writing


def test_hash_token_is_the_sha256_hex_of_the_token() -> None:
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_token("s3cret-token") == hashlib.sha256(b"s3cret-token").hexdigest()
    for bad in ("", None, b"abc"):
        with pytest.raises(SpecError, match="a bearer token must be a non-empty string"):
            hash_token(bad)  # type: ignore[arg-type]


def test_written_configs_read_back_the_same(site_dir: Path) -> None:
    data = base(insecure_dev=False, state_dir=site_dir / "var" / "state")  # a Path value is written as a string
    data["coordinators"].append({"identity": "backup coordinator", "token_sha256": hash_token("other")})
    data["datasets"]["with space"] = {"path": "data/eval.csv", "schema_file": "scalar.json"}
    with pytest.raises(SpecError):  # "with space" is not a valid dataset name, but it must be written quoted
        load(site_dir, data)
    text = (site_dir / "site.toml").read_text()
    assert '[datasets."with space"]' in text
    del data["datasets"]["with space"]
    config = load(site_dir, data)
    assert config.state_dir == site_dir / "var" / "state"
    assert config.coordinators["backup coordinator"] == hash_token("other")
    assert set(config.datasets) == {"train", "eval"}
    # The written file is plain TOML that tomllib reads back to the same data.
    import tomllib

    reread = tomllib.loads((site_dir / "site.toml").read_text())
    assert reread["state_dir"] == str(site_dir / "var" / "state")
    assert reread["worker"] == data["worker"] and reread["datasets"] == data["datasets"]


def test_writing_a_value_toml_cannot_hold_fails(site_dir: Path) -> None:
    with pytest.raises(SpecError, match=r"'worker.port': cannot write NoneType None as TOML"):
        write_site_config(site_dir / "x.toml", base(worker={"port": None}))
    assert not (site_dir / "x.toml").exists()


# ---------------------------------------------------------------- the catalog


def test_build_catalog_validates_and_hashes_every_file(site_dir: Path) -> None:
    catalog = load(site_dir, base()).build_catalog()
    assert set(catalog) == {"train", "eval"}
    train, eval_ = catalog["train"], catalog["eval"]
    assert (train.name, train.format, train.num_examples) == ("train", "tfrecord", 5)
    assert (eval_.name, eval_.format, eval_.num_examples) == ("eval", "csv", 7)
    assert Path(train.path) == site_dir / "data" / "train.tfrecord"
    assert train.schema == VECTOR.to_dict() and eval_.schema == SCALAR.to_dict()
    digest = hashlib.sha256((site_dir / "data" / "train.tfrecord").read_bytes()).hexdigest()
    assert train.content_hash == f"sha256:{digest}"


def test_a_corrupt_file_fails_the_catalog_naming_the_dataset(site_dir: Path) -> None:
    config = load(site_dir, base())
    data = site_dir / "data" / "train.tfrecord"
    data.write_bytes(data.read_bytes()[:-7])  # truncate the last record
    with pytest.raises(DatasetError) as info:
        config.build_catalog()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{site_dir / 'site.toml'}: dataset 'train': {data}: example 5")
    assert "truncated" in message


def test_a_file_off_its_schema_or_missing_fails_the_catalog(site_dir: Path) -> None:
    config = load(site_dir, base())
    (site_dir / "data" / "eval.csv").write_text("a,b,y\n1.0,notanint,2\n")
    with pytest.raises(DatasetError, match=r"dataset 'eval': .*eval\.csv: row 1 .*'notanint' is not a int64"):
        config.build_catalog()
    (site_dir / "data" / "eval.csv").unlink()
    with pytest.raises(DatasetError, match=r"dataset 'eval': .*eval\.csv: no such file$"):
        config.build_catalog()


def test_loading_a_config_does_not_import_tensorflow(site_dir: Path) -> None:
    import subprocess

    path = write(site_dir, base())
    probe = (
        "import sys\n"
        "from tffprod.executors.config import load_site_config\n"
        f"load_site_config({str(path)!r})\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_federated')]\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- privacy budgets


def with_budget(budget: Any, name: str = "train") -> dict[str, Any]:
    data = base()
    data["datasets"][name]["budget"] = budget
    return data


def test_a_dataset_budget_is_parsed_and_reaches_the_catalog(site_dir: Path) -> None:
    config = load(site_dir, with_budget({"epsilon": 8, "delta": 1e-5}))
    assert config.datasets["train"].budget == {"epsilon": 8.0, "delta": 1e-5}
    assert isinstance(config.datasets["train"].budget["epsilon"], float)
    assert config.datasets["eval"].budget is None
    catalog = config.build_catalog()
    assert catalog["train"].budget == {"epsilon": 8.0, "delta": 1e-5}
    assert catalog["train"].public()["budget"] == {"epsilon": 8.0, "delta": 1e-5}
    assert catalog["eval"].budget is None and catalog["eval"].public()["budget"] is None
    assert "path" not in catalog["train"].public()
    hash(config.datasets["train"])  # a declaration stays hashable


def test_the_documented_inline_table_form_loads(site_dir: Path) -> None:
    path = write(site_dir, base())
    text = path.read_text().replace('[datasets.eval]\n', '[datasets.eval]\nbudget = { epsilon = 2.5, delta = 1e-6 }\n')
    path.write_text(text)
    assert load_site_config(path).datasets["eval"].budget == {"epsilon": 2.5, "delta": 1e-6}


def test_a_written_budget_reads_back_the_same(site_dir: Path) -> None:
    config = load(site_dir, with_budget({"epsilon": 0.5, "delta": 1e-7}))
    assert config.datasets["train"].budget == {"epsilon": 0.5, "delta": 1e-7}


def test_a_catalog_entry_without_a_budget_still_constructs() -> None:
    from tffprod.executors.datarefs import CatalogEntry

    entry = CatalogEntry(name="a", path="/x", format="csv", schema={}, num_examples=1, content_hash="h")
    assert entry.budget is None and entry.public()["budget"] is None


@pytest.mark.parametrize(
    "budget, expected",
    [
        (8.0, "'datasets.train.budget' must be a table, got float 8.0"),
        ({"epsilon": 8.0}, "missing required key 'datasets.train.budget.delta'"),
        ({"delta": 1e-5}, "missing required key 'datasets.train.budget.epsilon'"),
        ({"epsilom": 8.0, "delta": 1e-5}, "unknown key 'datasets.train.budget.epsilom' (did you mean 'epsilon'?)"),
        ({"epsilon": 8.0, "delta": 1e-5, "rounds": 3}, "unknown key 'datasets.train.budget.rounds'"),
        ({"epsilon": "8", "delta": 1e-5}, "'datasets.train.budget.epsilon' must be a number, got string '8'"),
        ({"epsilon": True, "delta": 1e-5}, "'datasets.train.budget.epsilon' must be a number, got boolean True"),
        ({"epsilon": 8.0, "delta": [1e-5]}, "'datasets.train.budget.delta' must be a number, got array"),
        ({"epsilon": 0, "delta": 1e-5}, "'datasets.train.budget.epsilon' must be a number > 0, got 0"),
        ({"epsilon": -1.0, "delta": 1e-5}, "'datasets.train.budget.epsilon' must be a number > 0, got -1.0"),
        ({"epsilon": float("inf"), "delta": 1e-5}, "'datasets.train.budget.epsilon' must be a number > 0, got inf"),
        ({"epsilon": float("nan"), "delta": 1e-5}, "'datasets.train.budget.epsilon' must be a number > 0, got nan"),
        ({"epsilon": 8.0, "delta": 0}, "'datasets.train.budget.delta' must be a number > 0 and < 1, got 0"),
        ({"epsilon": 8.0, "delta": 1}, "'datasets.train.budget.delta' must be a number > 0 and < 1, got 1"),
        ({"epsilon": 8.0, "delta": 1.5}, "'datasets.train.budget.delta' must be a number > 0 and < 1, got 1.5"),
        ({"epsilon": 10**400, "delta": 1e-5}, "'datasets.train.budget.epsilon' must be a number > 0, got 1000"),
    ],
)
def test_a_bad_budget_fails_naming_its_key(site_dir: Path, budget: Any, expected: str) -> None:
    assert expected in error_of(site_dir, with_budget(budget))

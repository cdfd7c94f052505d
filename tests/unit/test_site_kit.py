"""``tffprod site kit``: what a site's startup kit holds, checked with independent tools (cryptography for
the certificate, the site's own config loader, uv.lock read as TOML, ``bash -n``), and bad input refused in
one line with nothing left behind. The kit here is made without its wheel (``build_wheel=False``) except
in the CLI test; tests/e2e/test_site_kit_install.py installs a whole kit and trains through it."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from tffprod.data.files import write_csv
from tffprod.data.schema import Feature, Schema
from tffprod.errors import KitError, SpecError
from tffprod.executors import kit_install
from tffprod.executors.config import load_site_config
from tffprod.executors.kit import coordinator_tokens, make_site_kit
from tffprod.security.certs import init_ca

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "a-coordinator-token-never-in-the-kit"
SECOND_HASH = "ab" * 32
SCHEMA = Schema(features=(Feature("age", "float32"), Feature("visits", "int64")), label=Feature("readmitted", "int64"))
KIT_FILES = {"README.txt", "certs/ca.crt", "certs/hospital-a.crt", "certs/hospital-a.key", "install.sh",
             "overrides.txt", "requirements.txt", "site.toml", "tffprod-site-hospital-a.service"}


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca", name="hospitals-ca")
    return tmp_path / "ca"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens" / "hospital-a"
    path.parent.mkdir()
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def kit(tmp_path: Path, ca: Path, token_file: Path):
    coordinators = coordinator_tokens(token_files=[f"coordinator={token_file}"],
                                      token_hashes=[f"backup-coordinator={SECOND_HASH.upper()}"])
    return make_site_kit("hospital-a", ca_dir=ca, out_dir=tmp_path / "kits" / "hospital-a", coordinators=coordinators,
                         hosts=["hospital-a.example.org", "10.0.0.7"], days=30, federations=["hospitals"],
                         build_wheel=False)


def fill_in(kit_dir: Path) -> Path:
    """What the operator does: a data file and its schema, named where site.toml says FILL-IN."""
    write_csv(kit_dir / "data" / "visits.csv",
              [{"age": 30.0 + i, "visits": i, "readmitted": i % 2} for i in range(6)], SCHEMA)
    (kit_dir / "schema.json").write_text(json.dumps(SCHEMA.to_dict()))
    config = kit_dir / "site.toml"
    text = config.read_text()
    values = re.findall(r'^\w+ = "([^"]*FILL-IN[^"]*)"', text, flags=re.M)
    assert values == ["data/FILL-IN.csv", "FILL-IN-schema.json"]  # the only values left to set
    config.write_text(text.replace('"data/FILL-IN.csv"', '"data/visits.csv"')
                      .replace('"FILL-IN-schema.json"', '"schema.json"'))
    return config


def test_the_kit_holds_its_files_and_the_key_is_private(kit) -> None:
    assert set(kit.files) == KIT_FILES
    assert {p.relative_to(kit.path).as_posix() for p in kit.path.rglob("*") if p.is_file()} == KIT_FILES
    assert (kit.path / "certs" / "hospital-a.key").stat().st_mode & 0o777 == 0o600
    assert os.access(kit.path / "install.sh", os.X_OK)
    assert [p.name for p in kit.path.parent.iterdir()] == ["hospital-a"]  # no staging folder left beside it
    for path in kit.path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path  # only the token's hash travels


def test_the_certificate_names_the_site_and_chains_to_the_federations_ca(kit, ca: Path) -> None:
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((kit.path / "certs" / "hospital-a.crt").read_bytes())
    assert (kit.path / "certs" / "ca.crt").read_bytes() == (ca / "ca.crt").read_bytes()
    cert.verify_directly_issued_by(ca_cert)  # raises unless the CA signed it
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-a"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hospital-a.example.org"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 30
    key = serialization.load_pem_private_key((kit.path / "certs" / "hospital-a.key").read_bytes(), password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.PEM, public) == \
        cert.public_key().public_bytes(serialization.Encoding.PEM, public)
    assert not (ca.parent / "kits" / "hospital-a" / "certs" / "ca.key").exists()  # the CA's key stays home


def test_site_toml_loads_with_the_sites_own_loader_once_filled_in(kit) -> None:
    with pytest.raises(SpecError, match="FILL-IN-schema.json"):  # as shipped, it says what is missing
        load_site_config(kit.path / "site.toml")
    config = load_site_config(fill_in(kit.path))
    assert (config.name, config.listen, config.computations, config.federations) == (
        "hospital-a", "0.0.0.0:7001", "approved", ("hospitals",))
    assert not config.insecure_dev and config.tls is not None
    assert config.tls.cert == kit.path / "certs" / "hospital-a.crt" and config.tls.ca == kit.path / "certs" / "ca.crt"
    assert dict(config.coordinators) == {"coordinator": hashlib.sha256(TOKEN.encode()).hexdigest(),
                                         "backup-coordinator": SECOND_HASH}
    assert config.state_dir == kit.path / "state"
    catalog = config.build_catalog()  # the filled-in dataset validates against its schema
    assert catalog["train"].num_examples == 6


def test_requirements_pin_the_lock_with_hashes_and_override_tffs_jax_pin(kit) -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {(p["name"], p["version"]) for p in lock["package"]}
    requirements = (kit.path / "requirements.txt").read_text()
    hashes = r"((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)"
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)(?: ;[^\\\n]*)? \\\n" + hashes, requirements, flags=re.M)
    requirement_lines = [line for line in requirements.splitlines() if line and not line[0].isspace()
                         and not line.startswith("#")]
    assert len(entries) == len(requirement_lines) > 50  # every requirement is pinned and has hashes
    pinned = {(name.lower(), version) for name, version, _ in entries}
    assert pinned <= locked
    names = {name for name, _ in pinned}
    assert {("tensorflow-federated", "0.87.0"), ("jax", "0.4.13"), ("jaxlib", "0.4.13")} <= pinned
    assert not names & {"pytest", "ruff", "mypy", "import-linter", "tffprod"}  # no dev tools; the wheel is apart
    overrides = (kit.path / "overrides.txt").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pin in pyproject["tool"]["uv"]["override-dependencies"]:
        block = re.search(rf"^{re.escape(pin)} \\\n((?:    --hash=sha256:[0-9a-f]{{64}}(?: \\)?\n)+)", overrides, re.M)
        assert block, pin
        assert block.group(0) in requirements  # the same hashes as the lock's
    assert "site hospital-a" in requirements.splitlines()[0]


def test_install_sh_is_valid_bash_and_the_unit_runs_site_serve_from_the_venv(kit) -> None:
    script = kit.path / "install.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert f"UV_VERSION={kit_install.UV_VERSION}\n" in text and "--require-hashes --override overrides.txt" in text
    assert "--compile-bytecode" in text and "WHEEL=tffprod-0.1.0-py3-none-any.whl" in text
    unit = (kit.path / "tffprod-site-hospital-a.service").read_text()
    prefix = "/opt/tffprod-site-hospital-a"
    for line in (f"ExecStart={prefix}/venv/bin/tffprod site serve --config {prefix}/site.toml",
                 f"WorkingDirectory={prefix}", "User=tffprod", "Restart=on-failure", "KillSignal=SIGTERM",
                 "KillMode=mixed", f"TimeoutStopSec={kit_install.TIMEOUT_STOP_S}"):
        assert f"\n{line}\n" in unit, line
    # install.sh writes the same unit for the folder it runs in
    assert kit_install.systemd_unit("hospital-a", kit_dir="${KIT_DIR}", user="tffprod") in text


def test_install_sh_says_in_one_line_what_is_missing(kit, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    no_python = subprocess.run(["bash", str(kit.path / "install.sh")], capture_output=True, text=True,
                               env={**env, "PYTHON": "python3.11-not-here"}, timeout=60)
    # build_wheel=False: the kit has no wheel, so install.sh stops before anything is installed
    assert no_python.returncode == 1 and no_python.stderr.strip().splitlines() == [
        f"install.sh: error: the kit is incomplete: {kit.path}/tffprod-0.1.0-py3-none-any.whl is missing"]
    (kit.path / "tffprod-0.1.0-py3-none-any.whl").write_bytes(b"")
    no_python = subprocess.run(["bash", str(kit.path / "install.sh")], capture_output=True, text=True,
                               env={**env, "PYTHON": "python3.11-not-here"}, timeout=60)
    assert no_python.returncode == 1 and no_python.stderr.strip().splitlines() == [
        "install.sh: error: no python3.11-not-here here: install Python 3.11 (e.g. apt-get install python3.11 "
        "python3.11-venv) or set PYTHON=/path/to/python3.11"]
    wrong = subprocess.run(["bash", str(kit.path / "install.sh")], capture_output=True, text=True,
                           env={**env, "PYTHON": shutil.which("bash") or "bash"}, timeout=60)
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1
    assert not (kit.path / ".uv").exists() and not (kit.path / "venv").exists()


def test_the_stop_timeout_covers_site_serves_graceful_stop() -> None:
    from tffprod.executors.serve import STOP_GRACE_S
    from tffprod.workers.process import WorkerProcess

    worker_stop_s = inspect.signature(WorkerProcess.stop).parameters["timeout_s"].default
    assert kit_install.TIMEOUT_STOP_S >= STOP_GRACE_S + worker_stop_s + 10


def test_the_makefile_bootstraps_uv_from_the_kit_s_requirements() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "$(PYTHON) executors/kit_install.py > .tools/uv-requirements.txt" in makefile
    assert "pip install --quiet --require-hashes --only-binary=:all: -r .tools/uv-requirements.txt" in makefile
    printed = subprocess.run([sys.executable, str(ROOT / "executors" / "kit_install.py")], capture_output=True,
                             text=True, check=True).stdout
    assert printed == kit_install.uv_requirements() + "\n"
    installed = (ROOT / ".tools" / "bin" / "uv")  # the one make installed from them
    assert subprocess.run([str(installed), "--version"], capture_output=True, text=True,
                          check=True).stdout.split()[1] == kit_install.UV_VERSION


def test_install_sh_installs_uv_only_from_a_wheel_with_a_listed_hash() -> None:
    """The e2e kit test installs it for real (pip checks the x86_64 wheel's hash); here, the file's form."""
    script = kit_install.install_script("hospital-a", wheel="w.whl", user="tffprod")
    requirements = script.split("<<'UV_REQUIREMENTS'\n", 1)[1].split("\nUV_REQUIREMENTS\n", 1)[0]
    lines = requirements.split(" \\\n")
    assert lines[0] == f"uv=={kit_install.UV_VERSION}"
    hashes = [re.fullmatch(r"    --hash=sha256:([0-9a-f]{64})", line).group(1) for line in lines[1:]]
    assert hashes == list(kit_install.UV_LINUX_WHEEL_SHA256) and len(set(hashes)) == len(hashes) >= 2
    (pip,) = [line for line in script.splitlines() if "-m pip install" in line]
    assert "--require-hashes" in pip and "--only-binary=:all:" in pip


def test_the_cli_writes_a_kit_with_its_wheel(run_cli, tmp_path: Path, ca: Path, token_file: Path) -> None:
    out = tmp_path / "kit"
    result = run_cli("site", "kit", "hospital-a", "--ca", ca, "--out", out, "--host", "hospital-a.example.org",
                     "--token-file", f"coordinator={token_file}", "--json")
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    wheel = out / "tffprod-0.1.0-py3-none-any.whl"
    assert made["kit"] == str(out) and made["wheel"] == wheel.name
    assert set(made["files"]) == KIT_FILES | {wheel.name}
    assert made["certificate"]["subject"] == "hospital-a" and made["certificate"]["sans"] == ["hospital-a.example.org"]
    assert made["coordinators"] == {"coordinator": hashlib.sha256(TOKEN.encode()).hexdigest()}
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f"./{wheel.name} \\\n    --hash=sha256:{digest}\n" in (out / "requirements.txt").read_text()
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = archive.read("tffprod/executors/kit.py")
    assert {"tffprod/executors/serve.py", "tffprod/executors/kit.py", "tffprod/cli/main.py",
            "tffprod/protocol/release.proto"} <= names
    assert shipped == (ROOT / "executors" / "kit.py").read_bytes()  # this tree's code, no stale build/lib


@pytest.mark.parametrize("args, exit_code, message", [
    (["Hospital A"], 2, "invalid site name 'Hospital A'"),
    (["ca"], 2, "invalid site name 'ca'"),
    (["hospital-a", "--ca", "{tmp}/no-such-ca"], 7, "CA directory {tmp}/no-such-ca does not exist"),
    (["hospital-a", "--token-file", "coordinator={tmp}/no-such-token"], 2, "cannot read token file"),
    (["hospital-a", "--token-file", "{tmp}/tokens/hospital-a"], 2, "give IDENTITY=FILE"),
    (["hospital-a", "--token-sha256", "coordinator=abc"], 2, "the hash must be 64 hex digits"),
    (["hospital-a", *["--token-sha256", f"coordinator={SECOND_HASH}"] * 2], 2, "'coordinator' is given twice"),
    (["hospital-a", "--listen", "everywhere"], 2, "site.toml: 'listen' must be 'host:port'"),
    (["hospital-a", "--federation", "Hospitals"], 2, "federation name 'Hospitals'"),
    (["hospital-a", "--host", "bad host"], 7, "invalid host 'bad host'"),
    (["hospital-a", "--user", "root user"], 2, "invalid user 'root user'"),
    (["hospital-a", "--source", "{tmp}"], 1, "is not a tffprod checkout"),
])
def test_bad_input_is_one_line_and_writes_nothing(run_cli, tmp_path: Path, ca: Path, token_file: Path,
                                                  args: list[str], exit_code: int, message: str) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    defaults = {"--ca": str(ca), "--out": str(tmp_path / "kits" / "hospital-a")}
    if not any(a.startswith("--token") for a in args):
        defaults["--token-file"] = f"coordinator={token_file}"
    argv = ["site", "kit", *args] + [x for k, v in defaults.items() if k not in args for x in (k, v)]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run_cli(*argv)
    assert result.exit_code == exit_code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message.format(tmp=tmp_path) in lines[0], lines
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written, no kits/


def test_a_taken_folder_is_kept_unless_forced_and_a_failed_build_keeps_it_too(run_cli, tmp_path: Path, ca: Path,
                                                                              token_file: Path) -> None:
    out = tmp_path / "kit"
    out.mkdir()
    (out / "mine.txt").write_text("the operator's")
    base = ["site", "kit", "hospital-a", "--ca", ca, "--out", out, "--token-file", f"coordinator={token_file}"]
    taken = run_cli(*base)
    assert taken.exit_code == 1 and taken.output.strip() == (
        f"Error: {out} exists and is not empty: choose another --out, or --force to replace it")
    # A checkout whose build fails: the kit is not made and the folder stays as it was, even with --force.
    broken = tmp_path / "broken-checkout"
    broken.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, broken / name)
    (broken / "setup.py").write_text("raise SystemExit('this checkout does not build')\n")
    for folder in ("tffprod", "executors", "registry", "cli", "examples", ".tools/bin"):
        (broken / folder).mkdir(parents=True)
    (broken / ".tools" / "bin" / "uv").symlink_to(ROOT / ".tools" / "bin" / "uv")  # the lock exports
    failed = run_cli(*base, "--force", "--source", broken)
    assert failed.exit_code == 1
    assert failed.output.strip().startswith("Error: building the tffprod wheel failed:"), failed.output
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken-checkout", "ca", "kit", "tokens"]
    forced = run_cli(*base, "--force")
    assert forced.exit_code == 0, forced.output
    assert not (out / "mine.txt").exists() and (out / "install.sh").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken-checkout", "ca", "kit", "tokens"]


def test_coordinator_tokens_need_at_least_one() -> None:
    with pytest.raises(SpecError, match="give the coordinators that may call the site"):
        coordinator_tokens()


def test_a_kit_needs_a_checkout(tmp_path: Path) -> None:
    from tffprod.executors.kit_packages import find_checkout

    with pytest.raises(KitError, match="is not a tffprod checkout"):
        find_checkout(tmp_path)
    assert find_checkout().root == ROOT  # this tffprod runs from the checkout (make's editable install)

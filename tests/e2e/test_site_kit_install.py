"""A site kit, end to end: ``tffprod site kit`` makes it, its ``install.sh`` installs it into a fresh folder
and venv from outside the checkout (uv from PyPI, the lock's pins with hashes, TFF's jax pin overridden),
the site runs from the installed venv exactly as its systemd unit says, a coordinator (the checkout's
tffprod) adds, syncs, plans, has the plan approved at the site, and trains through it; SIGTERM then stops
the site and its worker and leaves no process behind.

This also holds what tests/e2e/test_wheel_install.py checked: the installed code is the venv's, the
worker is the venv's ``worker_binary``, and ``site serve`` says how it stopped."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tffprod.examples import digits
from tffprod.executors.kit_install import TIMEOUT_STOP_S
from tffprod.security.certs import init_ca, issue

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TFFPROD = str(Path(sys.executable).with_name("tffprod"))  # the coordinator's: the checkout's venv
SITE = "hospital-a"


def site_env() -> dict[str, str]:
    """The site machine's environment: no venv, no checkout on PATH or PYTHONPATH."""
    checkout_bins = {str(ROOT / ".venv" / "bin"), str(Path(sys.executable).parent)}
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p not in checkout_bins)
    return env


def run(argv: list, *, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)
    assert proc.returncode == 0, f"{argv[:4]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def unit_value(unit: str, key: str) -> str:
    (value,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]
    return value


def test_a_kit_installs_in_a_fresh_venv_serves_trains_and_stops_cleanly(tmp_path: Path) -> None:
    times: dict[str, float] = {}
    start = time.monotonic()
    coordinator_env = {**os.environ, "TFFPROD_REGISTRY": str(tmp_path / "coordinator" / "tffprod.db")}
    (tmp_path / "coordinator").mkdir()

    # The federation's CA, the coordinator's certificate and its token for the site.
    init_ca(tmp_path / "pki" / "ca")
    coordinator = issue("coordinator", ca_dir=tmp_path / "pki" / "ca", out_dir=tmp_path / "pki" / "coordinator")
    token = tmp_path / "tokens" / SITE
    token.parent.mkdir()
    token.write_text(secrets.token_urlsafe(32) + "\n")

    # The kit, from the checkout's tffprod.
    made = json.loads(run([TFFPROD, "site", "kit", SITE, "--ca", tmp_path / "pki" / "ca", "--out", tmp_path / "kit",
                           "--host", "127.0.0.1", "--listen", "127.0.0.1:0", "--token-file", f"coordinator={token}",
                           "--json"], cwd=tmp_path, env=coordinator_env).stdout)
    assert made["wheel"] in made["files"] and "install.sh" in made["files"]
    times["kit"] = time.monotonic() - start

    # At the site: a fresh folder outside the checkout, one command.
    site_dir = tmp_path / "site-machine" / "opt" / f"tffprod-site-{SITE}"
    shutil.copytree(tmp_path / "kit", site_dir)
    env = site_env()
    begun = time.monotonic()
    installed = run([site_dir / "install.sh"], cwd=tmp_path, env=env, timeout=900)
    times["install"] = time.monotonic() - begun
    said = installed.stdout.strip().splitlines()
    assert said[-2] == (f"install.sh: next: in {site_dir}/site.toml, set the values marked FILL-IN (the datasets "
                        "this site serves); then")
    venv = site_dir / "venv"
    config_stamp = (venv / "pyvenv.cfg").stat().st_mtime_ns
    begun = time.monotonic()
    again = run(["bash", site_dir / "install.sh"], cwd=site_dir, env=env, timeout=300)  # idempotent
    times["install again"] = time.monotonic() - begun
    assert "making the site's venv" not in again.stdout and "installing uv" not in again.stdout
    assert (venv / "pyvenv.cfg").stat().st_mtime_ns == config_stamp
    where = run([venv / "bin" / "python", "-c", "import importlib.metadata as m, tffprod.executors.serve as s; "
                 "print(s.__file__, m.version('jaxlib'), m.version('tensorflow-federated'))"], cwd=tmp_path, env=env)
    module, jaxlib, tff = where.stdout.split()
    assert module.startswith(str(venv)), module  # the wheel's code, not the checkout's
    assert (jaxlib, tff) == ("0.4.13", "0.87.0")  # TFF's jaxlib pin overridden as the lock does

    # The unit install.sh wrote for this folder is what runs the site.
    unit = (site_dir / f"tffprod-site-{SITE}.service").read_text()
    assert unit_value(unit, "ExecStart") == f"{venv}/bin/tffprod site serve --config {site_dir}/site.toml"
    assert unit_value(unit, "WorkingDirectory") == str(site_dir)
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(["systemd-analyze", "verify", str(site_dir / f"tffprod-site-{SITE}.service")],
                                  capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0, verified.stderr

    # The operator fills in the dataset.
    paths = digits.prepare(tmp_path / "digits")
    (site_dir / "data").mkdir()
    shutil.copy(paths[SITE]["train"], site_dir / "data" / "train.tfrecord")
    (site_dir / "schema.json").write_text(json.dumps(digits.SCHEMA.to_dict()))
    config = site_dir / "site.toml"
    config.write_text(config.read_text().replace('"data/FILL-IN.csv"', '"data/train.tfrecord"')
                      .replace('"FILL-IN-schema.json"', '"schema.json"'))

    log = open(tmp_path / "site-serve.log", "w")
    site = subprocess.Popen(shlex.split(unit_value(unit, "ExecStart")), cwd=unit_value(unit, "WorkingDirectory"),
                            env={**env, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=log, text=True, start_new_session=True)
    log.close()
    try:
        line = site.stdout.readline()
        assert line.startswith(f"site {SITE} serving on 127.0.0.1:") and "(mTLS; 1 dataset)" in line, (
            line, site.poll(), (tmp_path / "site-serve.log").read_text()[-2000:])
        address = line.split()[4]
        workers = [p for p in psutil.Process(site.pid).children(recursive=True) if p.name() == "worker_binary"]
        assert len(workers) == 1 and workers[0].exe().startswith(str(venv))  # the installed TFF's worker
        times["site up"] = time.monotonic() - start

        # The coordinator: add, sync, plan; the site approves (its installed tffprod); train through it.
        ours = tmp_path / "coordinator"
        run([TFFPROD, "site", "add", SITE, "--address", address, "--ca", coordinator.ca_cert, "--cert",
             coordinator.cert, "--key", coordinator.key, "--token-file", token], cwd=ours, env=coordinator_env)
        synced = json.loads(run([TFFPROD, "site", "sync", SITE, "--json"], cwd=ours, env=coordinator_env).stdout)
        assert [(r["ref"], r["num_examples"]) for r in synced] == [(f"{SITE}/train:1", digits_count(paths))]
        (ours / "spec.toml").write_text(
            f'name = "kit-digits"\ntask = "tffprod.examples.digits:task"\ndatasets = ["{SITE}/train"]\n'
            'rounds = 2\nseed = 0\nmin_sites = 1\nround_timeout_s = 120.0\nbackend = "remote"\n')
        run([TFFPROD, "session", "plan", "--spec", "spec.toml", "--out", "kit.plan.json"], cwd=ours,
            env=coordinator_env)
        approved = run([venv / "bin" / "tffprod", "site", "approve", ours / "kit.plan.json", "--config", config],
                       cwd=site_dir, env=env)
        assert approved.stdout.startswith(f"site {SITE} approved plan ")
        trained = json.loads(run([TFFPROD, "session", "run", "--plan", "kit.plan.json", "--backend", "remote",
                                  "--json"], cwd=ours, env=coordinator_env).stdout)
        assert trained["status"] == "finished" and trained["rounds_completed"] == 2
        version = trained["model_version"]
        models = json.loads(run([TFFPROD, "model", "list", "--json"], cwd=ours, env=coordinator_env).stdout)
        assert [(m["name"], m["version"]) for m in models] == [(version["name"], version["version"])]
        audit = [json.loads(line) for line in (site_dir / "state" / "audit.jsonl").read_text().splitlines()]
        assert {line.get("release", {}).get("round") for line in audit} >= {1, 2}  # trained through this site
        times["trained"] = time.monotonic() - start

        # SIGTERM, as systemd stops the unit: the site and its worker stop within TimeoutStopSec, nothing is left.
        assert unit_value(unit, "KillSignal") == "SIGTERM"
        site_process = psutil.Process(site.pid)
        family = [site_process, *site_process.children(recursive=True)]
        stopping = time.monotonic()
        site.send_signal(signal.SIGTERM)
        assert site.wait(timeout=TIMEOUT_STOP_S) == 0, (tmp_path / "site-serve.log").read_text()[-2000:]
        times["stop"] = time.monotonic() - stopping
        assert site.stdout.read().strip() == f"site {SITE} stopped on SIGTERM; its worker is down"
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
        assert [p.pid for p in psutil.process_iter(["cmdline"])
                if str(site_dir) in " ".join(p.info["cmdline"] or [])] == []
    finally:
        if site.poll() is None:
            os.killpg(site.pid, signal.SIGKILL)
            site.wait()
        site.stdout.close()
    times["total"] = time.monotonic() - start
    print("\nsite kit: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))


def digits_count(paths: dict) -> int:
    """Examples in the site's training file (counted by the checkout's reader, independent of the site)."""
    from tffprod.data.files import validate_file

    return validate_file(paths[SITE]["train"], "tfrecord", digits.SCHEMA)

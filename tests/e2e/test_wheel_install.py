"""The wheel installs into a fresh venv (TFF's broken jaxlib pin overridden as the README says) and the
installed ``tffprod site serve`` starts a site, from outside the checkout, and stops without leftovers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers.site_serve import write_config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"  # installed by the Makefile, as the README's install steps use it


def build_wheel(out: Path) -> Path:
    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("tffprod", "executors", "registry", "cli", "examples"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("tffprod-*.whl")
    return wheel


def test_the_installed_wheel_serves_a_site_and_stops_cleanly(tmp_path: Path) -> None:
    assert UV.exists(), f"{UV} is missing: run make (it installs uv)"
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    overrides = tmp_path / "overrides.txt"
    overrides.write_text("jax==0.4.13\njaxlib==0.4.13\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    subprocess.run([str(UV), "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env, timeout=120)
    subprocess.run([str(UV), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    "--override", str(overrides), str(wheel)], check=True, env=env, timeout=900)
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import tffprod.executors.serve as m; print(m.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert where.startswith(str(venv)), where  # the wheel's code, not the checkout's

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    config = write_config(site_dir)
    proc = subprocess.Popen([str(venv / "bin" / "tffprod"), "site", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            cwd=site_dir, env=env, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("site dev-site serving on 127.0.0.1:"), (line, proc.poll())
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "worker_binary"]
        assert len(workers) == 1 and str(venv) in workers[0].exe()  # the installed TFF's worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert proc.stdout.read().strip() == "site dev-site stopped on SIGTERM; its worker is down"
        psutil.wait_procs(workers, timeout=10)
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

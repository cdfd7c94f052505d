"""A backend's temporary folder (worker logs, simulated sites' state, client shards) lives as long as the
backend object, then goes: sessions leave nothing in /tmp (TF-free: no worker is started)."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from tffprod.backends.local import LocalBackend


def test_the_local_backends_temporary_folder_goes_with_it(tmp_path: Path) -> None:
    backend = LocalBackend()
    folder = backend._logs()
    assert folder.is_dir() and folder.name.startswith("tffprod-workers-")
    (folder / "site-a.log").write_text("kept while the backend lives")
    backend.close()
    assert folder.is_dir()  # closed, not gone: a reopened backend finds its simulated sites' state
    del backend
    gc.collect()
    assert not folder.exists()
    given = LocalBackend(log_dir=tmp_path / "logs")
    assert given._logs() == tmp_path / "logs"
    del given
    gc.collect()
    assert tmp_path.exists()  # a folder the caller gave is the caller's


def test_a_process_that_exits_leaves_no_backend_folder_behind(tmp_path: Path) -> None:
    code = ("from tffprod.backends.local import LocalBackend\n"
            "backend = LocalBackend()\nprint(backend._logs())\n")
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"TMPDIR": str(env_tmp), "PATH": "/usr/bin:/bin"}).stdout.strip()
    assert out.startswith(str(env_tmp)) and not Path(out).exists()
    assert not list(env_tmp.iterdir()), list(env_tmp.iterdir())

"""An isolated worker's Unix socket fits the 107-byte limit however deep the temp folder is (TF-free: no
worker is started)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tffprod.workers.process import WorkerProcess


@pytest.mark.parametrize("depth", [1, 12])
def test_the_socket_path_fits_a_unix_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * depth)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    worker = WorkerProcess(name="w", isolated=True, log_path=tmp_path / "w.log")
    try:
        assert worker.socket_path is not None and len(os.fsencode(str(worker.socket_path))) <= 107
        assert worker.socket_path.parent.stat().st_mode & 0o777 == 0o700
    finally:
        worker.stop()

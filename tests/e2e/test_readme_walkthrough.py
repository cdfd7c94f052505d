"""The README's walk-through, run as written: a CSV file at three site processes (mTLS, approval) to an
evaluated, exported model that plain TensorFlow loads. The commands are the README's own ``sh`` blocks,
joined into one bash script (only the site ports change, to free ones)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Your own data: a CSV file at three sites, to an evaluated, exported model"


def walkthrough_script() -> str:
    """The section's ``sh`` blocks but the first (activating the venv, making the folder: done here)."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + len(SECTION))]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 11 and "activate" in blocks[0], "the README's walk-through changed shape"
    return "set -euo pipefail\n" + "\n".join(blocks[1:])


def free_ports(count: int) -> int:
    """A first port with ``count`` free consecutive ports from it (the walk-through counts up from 7101)."""
    for base in range(23000, 60000, 97):
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free consecutive ports")


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = walkthrough_script().replace("port=7101", f"port={free_ports(3)}")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "TFFPROD_REGISTRY")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # as `source activate` does
    scratch = tmp_path / "tmp"  # the commands' temporary folders, to check they leave none
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-4000:]

    assert re.search(r"session \S+ finished: 10 rounds", output), output[-3000:]
    assert "  privacy: no differential privacy\n" in output and "None" not in output  # no Python reprs
    evaluation = re.search(r"evaluation, all held-out data: .*binary_accuracy (\d\.\d+)", output)
    assert evaluation and float(evaluation.group(1)) > 0.5, output[-3000:]
    scores = re.search(r"fraud scores: \[(.*)\]", output)
    assert scores and len([float(s) for s in scores.group(1).split(",")]) == 5
    assert (tmp_path / "fraud-model" / "saved_model.pb").is_file()
    assert (tmp_path / "fraud-model" / "model_card.json").is_file()
    for bank in ("bank-a", "bank-b", "bank-c"):  # each site stopped on the walk-through's kill, and said so
        log = (tmp_path / "sites" / bank / "serve.log").read_text()
        assert f"site {bank} stopped on SIGTERM; its worker is down" in log, log[-2000:]
    assert not list(scratch.iterdir()), sorted(p.name for p in scratch.iterdir())  # no temporary folder left
    left = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info["cmdline"] for p in left]

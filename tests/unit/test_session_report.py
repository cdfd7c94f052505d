"""``tffprod session report``: PNG plots and report.md of a session recorded in a real registry file (no
TensorFlow: the report reads only the registry)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tffprod.registry import Registry

from ..helpers.recorded_sessions import ACCURACY, EPSILON, EVALUATION, LOSS, OVERALL, SITE_TIME, record_session

C0, C1 = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's first two line colours


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    return tmp_path / "tffprod.db"


def recorded(registry_file: Path, **kwargs) -> dict:
    with Registry.open(registry_file) as registry:
        return record_session(registry, registry_file.parent, **kwargs)


def report(run_cli, registry_file: Path, session_id: str, out: Path, *extra: str):
    return run_cli("session", "report", session_id, "--out", out, "--registry", registry_file, *extra)


def png(path: Path) -> np.ndarray:
    """The image as RGB floats in [0, 1], read back with matplotlib."""
    import matplotlib.image

    return matplotlib.image.imread(str(path))[:, :, :3]


def colour_mask(image: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.all(np.abs(image - np.array(rgb) / 255.0) < 0.06, axis=2)


def check_png(path: Path, *colours: tuple[int, int, int]) -> np.ndarray:
    """Size, not blank, and each line's colour drawn (it differs from the white background)."""
    image = png(path)
    height, width = image.shape[:2]
    assert width == 800 and height >= 280, image.shape
    assert image.std() > 0.05, f"{path.name} is (nearly) blank"
    background = np.all(image > 0.97, axis=2).mean()
    assert 0.5 < background < 0.99, f"{path.name}: {background:.2%} background"
    for rgb in colours:
        assert colour_mask(image, rgb).sum() > 150, f"{path.name}: no line in colour {rgb}"
    return image


def test_report_writes_plots_and_a_markdown_summary_from_the_registry(run_cli, registry_file, tmp_path) -> None:
    session = recorded(registry_file)
    sid = session["session"]["id"]
    out = tmp_path / "report"
    result = report(run_cli, registry_file, sid, out, "--json")
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)  # nothing but JSON, stderr included
    names = ["metrics.png", "epsilon.png", "site_time.png", "report.md"]
    assert written == {"session": sid, "out": str(out), "report": str(out / "report.md"),
                       "files": [str(out / n) for n in names]}
    assert sorted(p.name for p in out.iterdir()) == sorted(names)

    metrics = check_png(out / "metrics.png", C0)
    # The loss panel (top half): the line falls from round 1 to round 3, as the recorded loss does.
    top = colour_mask(metrics[: metrics.shape[0] // 2], C0)
    rows, cols = np.nonzero(top)
    left, right = rows[cols < np.percentile(cols, 10)].mean(), rows[cols > np.percentile(cols, 90)].mean()
    assert right - left > 100, (left, right)  # image rows grow downwards
    check_png(out / "epsilon.png", C0)
    check_png(out / "site_time.png", C0, C1)

    text = (out / "report.md").read_text()
    assert "None" not in text
    for image in ("metrics.png", "epsilon.png", "site_time.png"):
        assert f"]({image})" in text
    for n in (1, 2, 3):
        (line,) = [line for line in text.splitlines() if line.startswith(f"| {n} | ")]
        assert f"| {EPSILON[n - 1]:.4g} |" in line and f"| {LOSS[n - 1]:.4f} |" in line
        assert f"| {ACCURACY[n - 1]:.4f} |" in line
    assert "| 2 | 1/2 | 1 | 2.55 |" in text  # round 2: hospital-b timed out
    assert "| hospital-b | 3 | 2 | 1 (timeout) |" in text
    for ref, metrics_ in EVALUATION.items():
        (line,) = [line for line in text.splitlines() if line.startswith(f"| {ref} | {ref.split('/')[0]} | ")]
        assert f"| {metrics_['loss']:.4f} |" in line and f"| {metrics_['sparse_categorical_accuracy']:.4f} |" in line
    (line,) = [line for line in text.splitlines() if line.startswith("| all held-out data | ")]
    assert f"| {OVERALL['loss']:.4f} |" in line and f"| {OVERALL['sparse_categorical_accuracy']:.4f} |" in line
    for site in ("hospital-a", "hospital-b"):
        for split in ("train", "test"):
            assert f"| {site}/{split}:1 | " in text and f"`sha256:{site}-{split}`" in text
    lineage = session["version"]["lineage"]
    assert f"source sha256 `{lineage['task']['sha256']}`" in text and "- Model: flu:1, created " in text
    assert f"epsilon {EPSILON[-1]:.4g} at delta 1e-05" in text and "site dataset (site-level)" in text
    assert max(SITE_TIME["hospital-b"]) == 2.5 and "| 2.50 |" in text  # hospital-b's slowest round


def test_a_session_without_dp_plots_no_epsilon_and_says_no_dp(run_cli, registry_file, tmp_path) -> None:
    sid = recorded(registry_file, dp=False)["session"]["id"]
    out = tmp_path / "report"
    result = report(run_cli, registry_file, sid, out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"session {sid}: report written to {out / 'report.md'}"
    assert "None" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["metrics.png", "report.md", "site_time.png"]
    text = (out / "report.md").read_text()
    assert "None" not in text and "epsilon.png" not in text
    assert "- no DP: the session ran without differential privacy" in text and "- DP: no DP" in text
    assert "| round | sites ok | clients | time (s) | loss |" in text  # no epsilon column
    check_png(out / "metrics.png", C0)


def test_an_unfinished_session_reports_its_rounds_without_a_model_version(run_cli, registry_file, tmp_path) -> None:
    sid = recorded(registry_file, rounds=2, finish=False)["session"]["id"]
    out = tmp_path / "report"
    assert report(run_cli, registry_file, sid, out).exit_code == 0
    text = (out / "report.md").read_text()
    assert "- Rounds: 2 committed of 3 planned" in text and "No model version: the session did not finish" in text
    assert "No evaluation recorded" in text and "None" not in text
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| 1 | ") or
            line.startswith("| 2 | ")] == ["| 1", "| 2"]


def one_error_line(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, f"exit {result.exit_code} (want {exit_code}): {result.output}"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(run_cli, registry_file, tmp_path) -> None:
    sid = recorded(registry_file)["session"]["id"]
    out = tmp_path / "report"
    assert "unknown session 's-nope'" in one_error_line(report(run_cli, registry_file, "s-nope", out), 3)
    assert not out.exists()

    with Registry.open(registry_file) as registry:
        empty = registry.create_session(name="flu", spec={"name": "flu"}, task={}, backend="local",
                                        rounds_planned=3, datasets=[])["id"]
    line = one_error_line(report(run_cli, registry_file, empty, out), 6)
    assert f"session {empty} (pending) has no committed round yet: nothing to report" in line
    assert not out.exists()

    taken = tmp_path / "taken"
    taken.write_text("keep me")
    before = sorted(tmp_path.iterdir())
    assert f"{taken} is a file; --out needs a directory" in one_error_line(report(run_cli, registry_file, sid,
                                                                                   taken), 1)
    inside = one_error_line(report(run_cli, registry_file, sid, taken / "sub", "--json"), 1)
    assert f"{taken / 'sub'} is inside {taken}, which is a file" in inside
    assert taken.read_text() == "keep me" and sorted(tmp_path.iterdir()) == before


def test_session_report_does_not_import_tensorflow(registry_file, tmp_path) -> None:
    """In a fresh process, as a user runs it: the report is written without loading TensorFlow."""
    sid = recorded(registry_file)["session"]["id"]
    probe = ("import sys; from click.testing import CliRunner; from tffprod.cli.main import cli; "
             f"r = CliRunner().invoke(cli, ['session', 'report', {sid!r}, '--out', {str(tmp_path / 'out')!r}, "
             f"'--registry', {str(registry_file)!r}]); assert r.exit_code == 0, r.output; "
             "print(sorted(m for m in ('tensorflow', 'tensorflow_federated') if m in sys.modules))")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]" and (tmp_path / "out" / "report.md").is_file()
    assert took < 15, f"session report took {took:.1f} s"
    assert "tensorflow" not in sys.modules

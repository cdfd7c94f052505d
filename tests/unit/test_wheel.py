"""The wheel holds every module of the source tree, the ``.proto`` files and the ``tffprod`` command.

The package ``tffprod`` is assembled from sibling directories (``executors/`` is ``tffprod.executors``,
and so on), so a forgotten package would only show up once the wheel is installed somewhere else.
The build runs on a copy of the checkout in a temporary directory: it leaves no ``build/`` or
``*.egg-info`` in the repository, and no stale ``build/lib`` of an earlier build can fill a gap.
TF-free: nothing here imports tffprod.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# each source directory and where its files go in the wheel
SOURCE_ROOTS = {
    "tffprod": "tffprod",
    "executors": "tffprod/executors",
    "registry": "tffprod/registry",
    "cli": "tffprod/cli",
    "examples": "tffprod/examples",
}
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md")
SHIPPED = ("*.py", "*.proto")


def expected_files() -> set[str]:
    files = set()
    for source, target in SOURCE_ROOTS.items():
        for pattern in SHIPPED:
            for path in (ROOT / source).rglob(pattern):
                relative = path.relative_to(ROOT / source)
                if "__pycache__" not in relative.parts:
                    files.add(f"{target}/{relative.as_posix()}")
    return files


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    for name in BUILD_FILES:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    for name in SOURCE_ROOTS:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (wheel,) = out.glob("tffprod-*.whl")
    return wheel


def test_the_wheel_holds_every_module_the_protos_and_the_command(tmp_path: Path) -> None:
    expected = expected_files()
    assert "tffprod/protocol/release.proto" in expected and "tffprod/executors/serve.py" in expected

    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        names = set(wheel.namelist())
        (dist_info,) = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
        entry_points = configparser.ConfigParser()
        entry_points.read_string(wheel.read(f"{dist_info}/entry_points.txt").decode())

    assert sorted(expected - names) == []
    assert sorted(name for name in names if not name.startswith(("tffprod/", f"{dist_info}/"))) == []
    assert dict(entry_points["console_scripts"]) == {"tffprod": "tffprod.cli.main:cli"}

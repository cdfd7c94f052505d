"""What a site kit installs: the tffprod wheel and every dependency pinned, from one checkout.

A kit is made from a tffprod checkout (the folder with ``pyproject.toml`` and ``uv.lock``): by
default the one the running ``tffprod`` is imported from (an editable install, as ``make``
makes), else the one given. The wheel and the requirements come from the same tree, so they
agree:

- the wheel is built with ``python -m build --wheel --no-isolation`` from a copy of the checkout's
  package roots in a temporary folder (no ``build/`` is left in the checkout, and no stale
  ``build/lib`` of an earlier build can slip into the wheel);
- the requirements are the lock's, exported with ``uv export --frozen --no-dev`` with their hashes;
- the overrides are ``[tool.uv] override-dependencies`` of ``pyproject.toml`` (TFF 0.87.0 pins
  ``jaxlib==0.4.14``, which PyPI no longer serves), each with the lock's hashes, so that
  ``uv pip install --require-hashes`` accepts them.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Optional, Union

from tffprod.errors import KitError

PathLike = Union[str, "os.PathLike[str]"]

BUILD_FILES = ("pyproject.toml", "setup.py", "README.md")  # what setuptools reads besides the package roots
EXPORT = ("export", "--frozen", "--no-dev", "--no-emit-project", "--no-header", "--format", "requirements-txt")


@dataclasses.dataclass(frozen=True)
class Checkout:
    """A tffprod source tree: ``pyproject.toml`` (project ``tffprod``), ``setup.py`` and ``uv.lock``."""

    root: Path
    pyproject: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.pyproject["project"]["version"])

    @property
    def package_roots(self) -> list[str]:
        """The source folders ``[tool.setuptools.package-dir]`` maps into the package."""
        return sorted(set(self.pyproject["tool"]["setuptools"]["package-dir"].values()))

    @property
    def overrides(self) -> list[str]:
        """``[tool.uv] override-dependencies``: the pins the lock overrides (``jax==0.4.13``, ...)."""
        return list(self.pyproject.get("tool", {}).get("uv", {}).get("override-dependencies", []))

    @property
    def lock_sha256(self) -> str:
        return hashlib.sha256((self.root / "uv.lock").read_bytes()).hexdigest()


def find_checkout(source: Optional[PathLike] = None) -> Checkout:
    """The checkout a kit is made from: ``source``, or the one this ``tffprod`` is imported from.

    Raises:
        KitError: ``source`` is not a tffprod checkout, or (without ``source``) tffprod runs from an
            installed wheel.
    """
    if source is None:
        root = Path(__file__).resolve().parent.parent  # executors/ of a checkout, tffprod/executors/ of a wheel
        checkout = _checkout(root)
        if checkout is None:
            raise KitError(f"tffprod runs from an installed package ({root}), not a checkout: give --source, a "
                           "tffprod checkout (its uv.lock pins what the kit installs)")
        return checkout
    root = Path(source).expanduser().resolve()
    checkout = _checkout(root)
    if checkout is None:
        raise KitError(f"{source} is not a tffprod checkout: it needs pyproject.toml (project tffprod), setup.py, "
                       "uv.lock and the package folders")
    return checkout


def _checkout(root: Path) -> Optional[Checkout]:
    try:
        pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if pyproject.get("project", {}).get("name") != "tffprod":
        return None
    if not all((root / name).is_file() for name in (*BUILD_FILES, "uv.lock")):
        return None
    checkout = Checkout(root=root, pyproject=pyproject)
    try:
        if not checkout.package_roots or not all((root / name).is_dir() for name in checkout.package_roots):
            return None
    except (KeyError, TypeError, AttributeError):  # no [tool.setuptools.package-dir]
        return None
    return checkout


def build_wheel(checkout: Checkout, out_dir: Path) -> Path:
    """Build the tffprod wheel of ``checkout`` into ``out_dir``; returns its path.

    Raises:
        KitError: ``build`` or ``setuptools`` is missing here, or the build failed (its last line).
    """
    missing = [name for name in ("build", "setuptools") if importlib.util.find_spec(name) is None]
    if missing:
        raise KitError(f"building the tffprod wheel needs {' and '.join(missing)} in {sys.prefix} "
                       f"(pip install build setuptools)")
    with tempfile.TemporaryDirectory(prefix="tffprod-wheel-") as tmp:
        source, dist = Path(tmp) / "source", Path(tmp) / "dist"
        source.mkdir()
        for name in BUILD_FILES:
            shutil.copy2(checkout.root / name, source / name)
        for name in checkout.package_roots:
            shutil.copytree(checkout.root / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
                               str(source)], capture_output=True, text=True, env=env, timeout=600)
        wheels = sorted(dist.glob("tffprod-*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise KitError(f"building the tffprod wheel failed: {_last_line(proc.stderr or proc.stdout)}")
        target = out_dir / wheels[0].name
        shutil.move(str(wheels[0]), target)
    return target


def find_uv(checkout: Checkout) -> str:
    """The uv that exports the lock: the checkout's own (``make`` installs it), else ``uv`` on PATH.

    Raises:
        KitError: neither exists.
    """
    own = checkout.root / ".tools" / "bin" / "uv"
    if own.is_file() and os.access(own, os.X_OK):
        return str(own)
    found = shutil.which("uv")
    if found is None:
        raise KitError(f"exporting the pinned requirements needs uv: run make in {checkout.root}, or put uv on PATH")
    return found


def export_requirements(checkout: Checkout, uv: str) -> str:
    """The lock's requirements for the installed package (no dev tools, not tffprod itself), with hashes.

    Raises:
        KitError: uv failed (its last line).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    try:
        proc = subprocess.run([uv, *EXPORT, "--project", str(checkout.root)], capture_output=True, text=True,
                              env=env, cwd=checkout.root, timeout=120)
    except OSError as e:
        raise KitError(f"cannot run {uv}: {e.strerror or e}") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        raise KitError(f"uv export of {checkout.root / 'uv.lock'} failed: {_last_line(proc.stderr)}")
    return proc.stdout


def pinned_overrides(checkout: Checkout, requirements: str) -> str:
    """``overrides.txt``: each of the checkout's override pins as the lock has it, hashes included.

    Raises:
        KitError: the lock does not pin an override exactly.
    """
    entries = requirement_entries(requirements)
    out = []
    for pin in checkout.overrides:
        name, _, version = pin.partition("==")
        matching = [entry for entry in entries if entry.split(";")[0].split("\\")[0].strip() == f"{name}=={version}"]
        if not version or not matching:
            raise KitError(f"uv.lock does not pin {pin} ([tool.uv] override-dependencies in pyproject.toml): "
                           "run uv lock in the checkout")
        out.extend(matching)
    return "\n".join(out) + ("\n" if out else "")


def requirement_entries(text: str) -> list[str]:
    """The requirements of a ``uv export`` text, one string each with its continuation (hash) lines;
    comments dropped."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace() and entries:
            entries[-1].append(line.rstrip())
        else:
            entries.append([line.rstrip()])
    return ["\n".join(lines) for lines in entries]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"

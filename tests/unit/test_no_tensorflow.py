"""Every tffprod module the unit tests import loads without TensorFlow (the check tests/unit/conftest.py
makes at each test's end and at the session's end, here for the modules themselves, in a fresh process)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
# What unit tests import from: their own files, the helpers and the shared fixtures.
SOURCES = [*sorted((TESTS / "unit").glob("*.py")), *sorted((TESTS / "helpers").glob("*.py")), TESTS / "conftest.py"]


def imported_modules(path: Path) -> set[str]:
    """``tffprod`` modules (and ``from tffprod.x import y`` names) imported anywhere in ``path``, also in functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "tffprod")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "tffprod":
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


# Imports each name that is a module (``from tffprod.x import y``: y may be a module or an attribute of x).
PROBE = """
import importlib, importlib.util, json, sys
imported = []
for name in json.loads(sys.argv[1]):
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # the parent is a module: ``name`` is an attribute
        spec = None
    if spec is not None:
        importlib.import_module(name)
        imported.append(name)
print(json.dumps({"imported": imported,
                  "tensorflow": sorted(m for m in ("tensorflow", "tensorflow_federated") if m in sys.modules)}))
"""


def test_the_modules_unit_tests_import_load_without_tensorflow():
    modules = sorted(set().union(*(imported_modules(p) for p in SOURCES)))
    assert {"tffprod.cli.main", "tffprod.registry", "tffprod.sessions.spec"} <= set(modules)  # the walk found them
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(modules)], capture_output=True, text=True,
                         timeout=120, cwd=TESTS.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert len(result["imported"]) >= 20, result["imported"]
    assert result["tensorflow"] == [], f"importing these loaded TensorFlow: {result['imported']}"


def test_no_tensorflow_in_this_process(request: pytest.FixtureRequest):
    """In a unit-only run (``make test-fast``), nothing before this test loaded TensorFlow either."""
    import tffprod.cli.main  # noqa: F401
    import tffprod.registry  # noqa: F401

    unit = TESTS / "unit"
    if not all(unit in Path(str(item.path)).resolve().parents for item in request.session.items):
        pytest.skip("integration or e2e tests share this process: they may load TensorFlow")
    assert "tensorflow" not in sys.modules and "tensorflow_federated" not in sys.modules

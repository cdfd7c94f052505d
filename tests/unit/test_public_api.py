"""The curated public API: ``tffprod.__all__`` lists exactly what users import."""

import subprocess
import sys

import tffprod


def _defines(module: str, name: str) -> bool:
    """Whether ``module``'s source defines ``name`` at top level (read, not imported: some import TF)."""
    import ast
    import importlib.util
    from pathlib import Path

    origin = importlib.util.find_spec(module).origin
    for node in ast.parse(Path(origin).read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def test_all_names_exist_and_are_public():
    assert sorted(tffprod.__all__) == tffprod.__all__
    for name in tffprod.__all__:
        if name in tffprod._LAZY:
            assert _defines(tffprod._LAZY[name], name), f"{tffprod._LAZY[name]} does not define {name}"
        else:
            assert name in vars(tffprod), name


def test_a_lazy_name_is_imported_on_first_use_and_an_unknown_name_is_an_attribute_error():
    import pytest

    assert "write_csv" in dir(tffprod)
    assert tffprod.write_csv.__module__ == "tffprod.data.files"
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = tffprod.no_such_name


def test_no_unlisted_public_members():
    public = {n for n in dir(tffprod) if not n.startswith("_")}
    assert "train" in public, "dir(tffprod) lists the lazy names"
    modules = {n for n in public - set(tffprod._LAZY) if type(getattr(tffprod, n)).__name__ == "module"}
    assert public - modules == set(tffprod.__all__)


def test_import_is_cheap():
    code = ("import sys, tffprod; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'tensorflow', 'tensorflow_federated', 'sqlite_utils', 'dp_accounting'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _error_classes():
    import inspect

    import tffprod.errors

    return {name: cls for name, cls in inspect.getmembers(tffprod.errors, inspect.isclass)
            if issubclass(cls, tffprod.errors.TffprodError)}


def test_every_error_is_in_the_tree_with_its_exit_code_and_exported():
    import tffprod.errors

    tree = tffprod.errors.__doc__
    for name, cls in _error_classes().items():
        assert name in tffprod.__all__, name
        line = next((line for line in tree.splitlines() if f" {name} " in line), None)
        assert line is not None, f"{name} is missing from the tree in tffprod/errors.py"
        if cls.exit_code != 1:
            assert f" {cls.exit_code} " in line, f"{name}: the tree does not show exit code {cls.exit_code}"


def test_no_tffprod_error_is_defined_outside_the_errors_module():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    names = set(_error_classes())
    stray = []
    for folder in ("tffprod", "executors", "registry", "cli", "examples"):
        for path in (root / folder).rglob("*.py"):
            if path == root / "tffprod" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and any(ast.unparse(base).split(".")[-1] in names
                                                          for base in node.bases):
                    stray.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    assert stray == []


def test_examples_use_only_the_public_api():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    private = []
    for path in (root / "examples").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tffprod."):
                private.append(f"{path.name}:{node.lineno} {node.module}")
            if isinstance(node, ast.Import):
                private += [f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("tffprod.")]
    assert private == []

"""The architecture holds: no import cycle among tffprod's modules, and TensorFlow only where it is the point.

import-linter (``make check``) enforces the layers; these two properties it cannot see, so they are
computed here from the source: every ``import`` statement counts, also one inside a function, since
a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# pyproject.toml's package-dir mapping: import package -> source folder.
SOURCE_ROOTS = {"tffprod": "tffprod", "tffprod.executors": "executors", "tffprod.registry": "registry",
                "tffprod.cli": "cli", "tffprod.examples": "examples"}
TENSORFLOW = ("tensorflow", "tensorflow_federated", "tensorflow_privacy", "keras", "tf_keras")
# Modules whose point is TensorFlow: they may import it at module level (the rest import it where used).
TF_AT_MODULE_LEVEL = ("tffprod.training.", "tffprod.data.tfdata", "tffprod.backends.contexts")


@functools.lru_cache(maxsize=None)
def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    modules = {}
    for package, folder in SOURCE_ROOTS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _imported(module: str, path: Path, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        return [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
    return []


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body (``from p import m`` counts as m)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = _imported(name, path, node)
            if isinstance(node, ast.ImportFrom):
                *members, prefix = targets
                targets = [member if member in modules else prefix for member in members]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for node in graph:
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_no_module_imports_itself_back_through_others_even_inside_functions() -> None:
    modules = project_modules()
    assert len(modules) > 100, "the source roots moved: update SOURCE_ROOTS"
    assert cycles(import_graph(modules)) == []


def test_the_cycle_finder_finds_a_cycle_made_of_function_level_imports(tmp_path: Path) -> None:
    (tmp_path / "tffprod").mkdir()
    (tmp_path / "tffprod" / "__init__.py").write_text("")
    (tmp_path / "tffprod" / "a.py").write_text("from tffprod import b\n")
    (tmp_path / "tffprod" / "b.py").write_text("def f():\n    from tffprod.c import g\n")
    (tmp_path / "tffprod" / "c.py").write_text("def g():\n    import tffprod.a\n")
    (tmp_path / "tffprod" / "d.py").write_text("from tffprod.a import b\n")
    modules = {name: path for name, path in project_modules(tmp_path).items()}
    assert cycles(import_graph(modules)) == [["tffprod.a", "tffprod.b", "tffprod.c"]]


def module_level_imports(path: Path) -> list[str]:
    """Modules imported by top-level statements (also under ``if``/``try`` at top level, not in functions)."""
    names: list[str] = []
    pending = list(ast.parse(path.read_text(encoding="utf-8")).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
        elif isinstance(node, (ast.If, ast.Try)):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            pending += node.body + node.orelse + getattr(node, "finalbody", [])
            pending += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return names


TF_FREE_AT_IMPORT = sorted(name for name in project_modules()
                           if not name.startswith(TF_AT_MODULE_LEVEL) and not name.startswith("tffprod.examples."))


@pytest.mark.parametrize("module", TF_FREE_AT_IMPORT)
def test_tensorflow_is_imported_at_module_level_only_where_it_is_the_point(module: str) -> None:
    heavy = sorted({name for name in module_level_imports(project_modules()[module])
                    if name.split(".")[0] in TENSORFLOW})
    assert heavy == [], f"{module} imports {', '.join(heavy)} at module level; import it where it is used"


def test_the_module_level_scan_sees_imports_under_if_and_try_but_not_in_functions(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("import os\ntry:\n    import tensorflow as tf\nexcept ImportError:\n    pass\n"
                    "if TYPE_CHECKING:\n    import keras\ndef f():\n    import tensorflow_federated\n")
    assert sorted(module_level_imports(path)) == ["os", "tensorflow"]


def test_the_readme_tree_shows_every_subpackage_of_the_library() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## How it fits together"):]
    section = section[:section.index("\n## ", 1)]
    packages = sorted(path.parent.name for path in (ROOT / "tffprod").glob("*/__init__.py"))
    assert len(packages) >= 10
    missing = [name for name in packages if f"  {name}/ " not in section]
    assert missing == [], f"README 'How it fits together' does not show {missing}"

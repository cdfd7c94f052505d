"""``RegistryStore`` cannot drift from ``Registry``, nor from what the library calls.

mypy checks ``Registry`` against the Protocol structurally (``tffprod.registry.store`` ends with
a function returning a ``Registry`` as a ``RegistryStore``); these tests check the same at run
time, more strictly (the same parameter names, kinds and defaults), that every ``registry.X``
the library uses is in the Protocol, and that the rows the store returns hold exactly the keys
their TypedDicts declare.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from tffprod.registry import Registry, RegistryStore
from tffprod.registry.protocol import DatasetRow, ModelVersionRow, RoundRow, SessionRow, SiteRow

LIBRARY = Path(__file__).resolve().parents[2] / "tffprod"


def _members() -> dict[str, object]:
    """The Protocol's own members, by name: its methods and properties."""
    return {name: value for name, value in vars(RegistryStore).items()
            if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))}


def _parameters(function: object) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.fixture
def registry(tmp_path: Path):
    with Registry.open(tmp_path / "registry.db") as opened:
        yield opened


def test_an_open_registry_is_a_registry_store(registry):
    assert isinstance(registry, RegistryStore)


def test_every_method_of_the_protocol_is_on_registry_with_the_same_parameters():
    methods = {name: value for name, value in _members().items() if inspect.isfunction(value)}
    assert methods, "the Protocol lists no methods"
    for name, method in methods.items():
        implementation = getattr(Registry, name, None)
        assert callable(implementation), f"Registry has no method {name}"
        assert _parameters(implementation) == _parameters(method), f"Registry.{name} differs from RegistryStore.{name}"


def test_every_property_of_the_protocol_is_an_attribute_of_an_open_registry(registry):
    properties = [name for name, value in _members().items() if isinstance(value, property)]
    assert properties == ["path"]
    assert isinstance(registry.path, str)


def _registry_uses(path: Path) -> set[str]:
    """Names X of every ``registry.X`` and ``self.registry.X`` in a module."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        if (isinstance(owner, ast.Name) and owner.id == "registry") or (
                isinstance(owner, ast.Attribute) and owner.attr == "registry" and isinstance(owner.value, ast.Name)
                and owner.value.id == "self"):
            used.add(node.attr)
    return used


def test_the_protocol_lists_every_registry_member_the_library_uses():
    used = {name: path for path in sorted(LIBRARY.rglob("*.py")) for name in _registry_uses(path)}
    assert "get_session" in used  # the scan sees the library
    missing = {name: str(path.relative_to(LIBRARY)) for name, path in used.items() if name not in _members()}
    assert not missing, f"the library calls registry members that RegistryStore lacks: {missing}"


def _keys(row_type: type) -> set[str]:
    return set(row_type.__required_keys__) | set(row_type.__optional_keys__)


def test_rows_hold_exactly_the_keys_of_their_typeddicts(registry):
    site = registry.add_site("hospital-a", address="hospital-a.example:8443", info={"cert": "c.crt"})
    dataset = registry.add_dataset(site="hospital-a", name="visits", path="/data/visits.csv", format="csv",
                                   schema={"features": [], "label": "y"}, num_examples=10, content_hash="sha256:a")
    session = registry.create_session(name="flu", spec={}, task={"path": "m:task"}, backend="local",
                                      rounds_planned=1, datasets=[dataset["ref"]])
    round_row = registry.record_round(session["id"], round_num=1, metrics={}, participants=[], duration_s=0.1,
                                      epsilon=None)
    version = registry.add_model_version(name="flu", session_id=session["id"], artifact_path="/a", metrics={},
                                         dp={}, epsilon=None, delta=None, datasets=[dataset["ref"]], task={})
    for row, row_type in [(site, SiteRow), (dataset, DatasetRow), (session, SessionRow), (round_row, RoundRow),
                          (version, ModelVersionRow), (registry.get_site("hospital-a"), SiteRow),
                          (registry.get_dataset("hospital-a/visits"), DatasetRow),
                          (registry.get_session(session["id"]), SessionRow),
                          (registry.list_rounds(session["id"])[0], RoundRow),
                          (registry.get_model_version("flu"), ModelVersionRow)]:
        assert type(row) is dict  # a TypedDict is a plain dict at run time
        assert set(row) == _keys(row_type), f"{row_type.__name__}: {set(row) ^ _keys(row_type)}"

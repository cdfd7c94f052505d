"""Unit tests never import TensorFlow or TensorFlow Federated (``make test-fast`` runs only these).

Two checks enforce it: each unit test fails (at teardown) if TensorFlow was loaded while it ran, and a
session that ran only unit tests ends with a non-zero exit status if TensorFlow is in ``sys.modules``
at its end (which also catches an import at collection time, before any test ran).
Tests that need TensorFlow belong in tests/integration or tests/e2e.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TENSORFLOW = ("tensorflow", "tensorflow_federated")
UNIT = Path(__file__).resolve().parent


def tensorflow_loaded() -> list[str]:
    return [name for name in TENSORFLOW if name in sys.modules]


@pytest.fixture(autouse=True)
def no_tensorflow():
    """Fails the unit test during which TensorFlow was first imported (in this process)."""
    before = tensorflow_loaded()
    yield
    imported = [name for name in tensorflow_loaded() if name not in before]
    assert not imported, f"this unit test imported {', '.join(imported)}: move it to tests/integration or tests/e2e"


def _unit_only(session: pytest.Session) -> bool:
    items = getattr(session, "items", None) or []
    return bool(items) and all(UNIT in Path(str(item.path)).resolve().parents for item in items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    loaded = tensorflow_loaded()
    if not loaded or not _unit_only(session):
        return
    message = (f"tests/unit: {', '.join(loaded)} imported during a unit-only run "
               "(unit tests must not import TensorFlow; move the test to tests/integration or tests/e2e)")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message, red=True, bold=True)
    else:
        print(message, file=sys.stderr)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

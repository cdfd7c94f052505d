"""Unit tests never import TensorFlow or TensorFlow Federated (``make test-fast`` runs only these).

Checked twice. Each unit test fails at teardown if TensorFlow is in ``sys.modules``: always when it was
imported while the test ran, and in a run of unit tests only (``pytest tests/unit``, with or without
xdist) whenever it is there at all, which also catches an import at collection time. And a run of unit
tests only (without xdist) ends with a non-zero exit status if TensorFlow is loaded at its end, which
also catches session fixtures. Tests that need TensorFlow belong in tests/integration or tests/e2e.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TENSORFLOW = ("tensorflow", "tensorflow_federated")
UNIT = Path(__file__).resolve().parent
# Whether every test this process collected is a unit test (under xdist: this worker's collection).
_RUN = {"unit_only": False}


def tensorflow_loaded() -> list[str]:
    return [name for name in TENSORFLOW if name in sys.modules]


def pytest_collection_finish(session: pytest.Session) -> None:
    items = session.items
    _RUN["unit_only"] = bool(items) and all(UNIT in Path(str(item.path)).resolve().parents for item in items)


@pytest.fixture(autouse=True)
def no_tensorflow():
    """Fails the unit test during which TensorFlow was imported, and in a unit-only run any unit test that
    finds it loaded."""
    before = tensorflow_loaded()
    yield
    imported = [name for name in tensorflow_loaded() if name not in before]
    assert not imported, f"this unit test imported {', '.join(imported)}: move it to tests/integration or tests/e2e"
    if before and _RUN["unit_only"]:
        pytest.fail(f"{', '.join(before)} was loaded before this unit test ran (at collection, or by a fixture), "
                    "in a run of unit tests only", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    loaded = tensorflow_loaded()
    if not loaded or not _RUN["unit_only"]:
        return
    message = (f"tests/unit: {', '.join(loaded)} imported during a run of unit tests only "
               "(unit tests must not import TensorFlow; move the test to tests/integration or tests/e2e)")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write("\n")
        reporter.write_line(message, red=True, bold=True)
    else:
        print(message, file=sys.stderr)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

"""Integration tests: TensorFlow/TFF or real worker processes, but no whole session with site processes.

Every test in this folder carries the ``integration`` marker (also a file that forgets ``pytestmark``), so
``-m "not integration"`` leaves them out wherever they are collected from.
"""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)

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


@pytest.fixture(scope="module")
def worker_context(tmp_path_factory):
    """A TFF execution context on a real ``worker_binary`` of this module's own, stopped at its end (TFF's
    default context would start a worker that nothing ever stops)."""
    from tffprod.backends.contexts import channel_context, insecure_channel
    from tffprod.workers.process import WorkerProcess

    logs = tmp_path_factory.mktemp("worker")
    with WorkerProcess(name="test", log_path=logs / "worker.log") as worker:
        yield channel_context(insecure_channel(worker.address))

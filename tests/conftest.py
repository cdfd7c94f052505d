"""Shared fixtures: real registry files, real example data, and a CLI runner; the run's fault tally.

Everything here is TF-free, so tests that must stay fast (and must prove that
registry commands never import TensorFlow) can use it: tests/unit (no TensorFlow),
tests/integration (TensorFlow or real worker processes) and tests/e2e (whole sessions).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import pytest
from click.testing import CliRunner, Result


@pytest.fixture(autouse=True)
def _tffprod_logger_restored():
    """Undoes what an in-process ``session run``/``site serve`` does to the ``tffprod`` logger (cli/logs.py:
    a stderr handler, a level, ``propagate`` off), so no later test in the process inherits it (with
    ``propagate`` off, pytest also attaches its capture handlers to that logger: caplog would see a record
    twice once a test turns ``propagate`` back on)."""
    logger = logging.getLogger("tffprod")

    def pytests(handlers: list) -> list:  # pytest's capture handlers, attached and removed by pytest per phase
        return [h for h in handlers if type(h).__module__.startswith("_pytest.")]

    saved = ([h for h in logger.handlers if h not in pytests(logger.handlers)], logger.level, logger.propagate)
    yield
    logger.handlers[:] = [*saved[0], *pytests(logger.handlers)]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture(scope="session", autouse=True)
def no_orphaned_workers():
    """No ``worker_binary`` started by this test process outlives its tests, not even one orphaned to init
    (which the per-test checks, looking at this process's children, cannot see): every child started in
    the run inherits a marker in its environment, and the end of the session looks for live processes
    that carry it (e.g. TFF's default execution context, which starts a worker and never stops it)."""
    import os
    import time
    import uuid

    import psutil

    marker = os.environ["TFFPROD_TEST_RUN"] = uuid.uuid4().hex
    yield

    def left() -> list[int]:
        pids = []
        for proc in psutil.process_iter(["name"]):
            try:
                if proc.info["name"] == "worker_binary" and proc.status() != psutil.STATUS_ZOMBIE \
                        and proc.environ().get("TFFPROD_TEST_RUN") == marker:
                    pids.append(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return pids

    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    leaked = left()
    for pid in leaked:  # stop them anyway, so one failed run does not slow the next
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    assert not leaked, f"worker_binary processes outlived the tests that started them: {leaked}"


@pytest.fixture
def registry_path(tmp_path: Path) -> str:
    """Path of a registry file that does not exist yet (``tffprod init`` or any command creates it)."""
    return str(tmp_path / "registry.db")


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """``tffprod.examples.digits.prepare`` run once per test session: ``{site: {"train": path, "test": path}}``.

    Shared by every test: copy a file before changing it.
    """
    from tffprod.examples import digits

    return digits.prepare(tmp_path_factory.mktemp("digits"), seed=0)


@pytest.fixture(scope="session")
def fraud_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """``tffprod.examples.fraud.prepare`` run once per test session: ``{bank: {"train": path, "test": path}}``.

    Shared by every test: copy a file before changing it.
    """
    from tffprod.examples import fraud

    return fraud.prepare(tmp_path_factory.mktemp("fraud"), seed=0)


RunCli = Callable[..., Result]


@pytest.fixture
def run_cli() -> RunCli:
    """Invoke ``tffprod`` in-process: ``run_cli("dataset", "list", "--json", env={...})``.

    Arguments are converted with ``str`` (so paths can be passed as is). ``TFFPROD_REGISTRY``
    is unset unless ``env`` sets it, so the caller's environment cannot leak in. Returns the
    ``click.testing.Result`` (with separate ``stdout`` and ``stderr``) and asserts nothing.
    """
    from tffprod.cli.main import cli

    def invoke(*args: object, env: Optional[Mapping[str, Optional[str]]] = None,
               input: Optional[str] = None, catch_exceptions: bool = True) -> Result:
        argv: Sequence[str] = [str(a) for a in args]
        environment = {"TFFPROD_REGISTRY": None, **(env or {})}
        return CliRunner().invoke(cli, argv, env=environment, input=input, catch_exceptions=catch_exceptions,
                                  prog_name="tffprod")

    return invoke


@pytest.fixture
def report_line(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``report_line(text)``: a result line printed at the end of the run (from xdist workers too)."""
    return lambda text: request.node.user_properties.append(("summary_line", text))


# ---------------------------------------------------------------- the fault-injection tally (tests/e2e)

FAULT_TALLY = {"faults": 0, "completed": 0, "lost": 0, "double": 0}
SUMMARY_LINES: list[str] = []  # one-line results a suite reports as user property "summary_line"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Sums the ``fault_tally`` fixture's counts (tests/e2e/conftest.py) from the teardown reports, which
    reach this process from xdist workers too (so this hook lives here, in the conftest every run loads)."""
    if report.when != "teardown":
        return
    for name, counts in report.user_properties:
        if name == "fault_tally":
            for key, value in counts.items():
                FAULT_TALLY[key] += value
        elif name == "summary_line":
            SUMMARY_LINES.append(counts)


def pytest_terminal_summary(terminalreporter) -> None:
    for line in SUMMARY_LINES:
        terminalreporter.write_line(line)
    counts = FAULT_TALLY
    if counts["faults"]:
        terminalreporter.write_line(
            f"fault injection: {counts['faults']} faults injected, {counts['completed']} sessions completed, "
            f"{counts['lost']} rounds lost beyond the one in flight, {counts['double']} rounds double-counted")

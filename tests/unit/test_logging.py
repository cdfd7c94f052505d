"""Logging for the long-running commands: one handler on the ``tffprod`` logger, level from the flag or env."""

from __future__ import annotations

import io
import logging

import click
import pytest
from click.testing import CliRunner

from tffprod.cli.logs import configure_logging, log_level_option


@pytest.fixture
def tffprod_logger():
    logger = logging.getLogger("tffprod")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved


def test_configuring_twice_leaves_one_handler_that_writes_to_the_current_stderr(tffprod_logger, monkeypatch):
    configure_logging("warning")
    configure_logging("info")
    ours = [h for h in tffprod_logger.handlers if type(h).__name__ == "_StderrHandler"]
    assert len(ours) == 1 and tffprod_logger.level == logging.INFO
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    logging.getLogger("tffprod.training.router").warning("round %d: site %s unavailable", 3, "a")
    logging.getLogger("tffprod.sessions.rounds").debug("not shown at info")
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith(" WARNING tffprod.training.router: round 3: site a unavailable")


@pytest.mark.parametrize(("argv", "env", "level"), [
    ([], {}, logging.WARNING),
    ([], {"TFFPROD_LOG_LEVEL": "debug"}, logging.DEBUG),
    (["--log-level", "ERROR"], {"TFFPROD_LOG_LEVEL": "debug"}, logging.ERROR),
])
def test_the_level_comes_from_the_flag_then_the_environment(tffprod_logger, argv, env, level):
    @click.command()
    @log_level_option
    def command(log_level: str) -> None:
        configure_logging(log_level)

    result = CliRunner().invoke(command, argv, env=env)
    assert result.exit_code == 0, result.output
    assert tffprod_logger.level == level


def test_an_unknown_level_is_a_usage_error():
    @click.command()
    @log_level_option
    def command(log_level: str) -> None:
        raise AssertionError("not reached")

    result = CliRunner().invoke(command, ["--log-level", "loud"])
    assert result.exit_code == 2 and "'loud' is not one of" in result.output


@pytest.mark.parametrize("command", [["site", "serve"], ["session", "run"], ["session", "resume"]])
def test_the_long_running_commands_take_a_log_level(run_cli, command):
    result = run_cli(*command, "--help")
    assert result.exit_code == 0 and "--log-level" in result.output and "TFFPROD_LOG_LEVEL" in result.output

"""Logging for the long-running commands (``site serve``, ``session run``, ``session resume``).

The library only creates module loggers (``tffprod.*``); these commands attach one handler to the
``tffprod`` logger, on stderr, at the level of ``--log-level`` or ``TFFPROD_LOG_LEVEL``. Retries,
reconnects and quarantines are warnings or info; stdout stays the command's output.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

import click

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (a test runner may swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def log_level_option(fn: Callable) -> Callable:
    """``--log-level LEVEL`` (or ``TFFPROD_LOG_LEVEL``); default ``warning``."""
    return click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False), default="warning",
                        envvar="TFFPROD_LOG_LEVEL", show_default=True,
                        help="Log to stderr from this level on (env TFFPROD_LOG_LEVEL).")(fn)


def configure_logging(level: str) -> logging.Logger:
    """One handler on the ``tffprod`` logger at ``level``; calling it again replaces it."""
    logger = logging.getLogger("tffprod")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger

"""The one place where tffprod errors become CLI messages and exit codes."""

from __future__ import annotations

import contextlib
from typing import Iterator

import click

from tffprod.errors import TffprodError


class CommandError(click.ClickException):
    """A one-line error with the exit code of the tffprod error behind it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        # click annotates exit_code as a ClassVar, yet reads it from the instance (sys.exit(e.exit_code)).
        self.exit_code = exit_code  # type: ignore[misc]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn any ``TffprodError`` raised inside into a one-line ``Error: ...`` and its exit code."""
    try:
        yield
    except TffprodError as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CommandError(message, e.exit_code) from None
    except KeyboardInterrupt:
        raise CommandError("interrupted", 130) from None

"""Options shared by many commands, as decorators."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Mapping, Sequence

import click


def registry_option(fn: Callable) -> Callable:
    """``--registry PATH`` (or ``TFFPROD_REGISTRY``); default ``./tffprod.db``."""
    return click.option(
        "--registry",
        "registry_path",
        envvar="TFFPROD_REGISTRY",
        default="tffprod.db",
        show_default=True,
        type=click.Path(dir_okay=False),
        help="Registry database file (env TFFPROD_REGISTRY).",
    )(fn)


def output_options(fn: Callable) -> Callable:
    """``--json``: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def open_registry(path: str):
    """Open the registry (imports only sqlite code, never TensorFlow)."""
    from tffprod.registry import Registry

    return Registry.open(path)


def say(message: str, *, as_json: bool) -> None:
    """Tell a person on stderr what a long command is doing (not with --json: stdout and stderr stay data)."""
    if not as_json:
        click.echo(message, err=True)


def interactive() -> bool:
    """True when a person watches stderr (progress is shown only then)."""
    return sys.stderr.isatty()


def table(rows: Sequence[Mapping[str, Any]], columns: list[str]) -> None:
    """Print rows as a plain aligned text table."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())

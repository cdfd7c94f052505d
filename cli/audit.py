"""``tffprod audit``: the coordinator's hash-chained log of operator actions."""

from __future__ import annotations

from typing import Optional

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.options import emit_json, open_registry, output_options, registry_option, table
from tffprod.errors import AuditError


@click.group()
def audit() -> None:
    """Read and verify the coordinator's audit log of operator actions.

    \b
    Example:
        tffprod audit verify
        tffprod audit list --limit 20
    """


@audit.command("verify")
@click.option("--expect-head", metavar="HASH", help="A head hash noted earlier: it must still be in the chain.")
@registry_option
@output_options
def verify(expect_head: Optional[str], registry_path: str, as_json: bool) -> None:
    """Check every entry's hash, every link and the recorded head; name the first entry that fails.

    Detects an entry edited, inserted or deleted (also from the end). Someone
    able to rewrite the whole database can rebuild the chain: note the printed
    head elsewhere and check it later with --expect-head.

    \b
    Example:
        tffprod audit verify
        tffprod audit verify --expect-head 3f2a...e9 --json
    """
    with user_errors(), open_registry(registry_path) as registry:
        try:
            report = registry.verify_audit(expect_head=expect_head)
        except AuditError as e:
            if not as_json or e.report is None:
                raise
            report = e.report  # --json: the whole report on stdout, and still the exit code
    if as_json:
        emit_json(report)
        if not report["ok"]:
            raise SystemExit(AuditError.exit_code)
    else:
        head = report["head"]["hash"] if report["head"] else "none"
        click.echo(f"audit chain ok: {report['entries']} entries, head {head}")


@audit.command("list")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Only the newest N entries.")
@click.option("--action", help="Only entries of this action (e.g. dataset.register).")
@registry_option
@output_options
def list_(limit: Optional[int], action: Optional[str], registry_path: str, as_json: bool) -> None:
    """List audit entries, newest first.

    \b
    Example:
        tffprod audit list --limit 20
        tffprod audit list --action session.run --json
    """
    with user_errors(), open_registry(registry_path) as registry:
        rows = registry.list_audit(limit=limit, action=action)
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["seq", "at", "actor", "action", "subject"])

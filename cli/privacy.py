"""``tffprod privacy``: what privacy each dataset has spent and has left."""

from __future__ import annotations

from typing import Optional

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.options import emit_json, open_registry, output_options, registry_option


@click.group()
def privacy() -> None:
    """Privacy budgets and what sessions spent of them.

    \b
    Example:
        tffprod privacy report --json
    """


@privacy.command("report")
@click.option("--dataset", help="Only this dataset (SITE/NAME).")
@registry_option
@output_options
def report(dataset: Optional[str], registry_path: str, as_json: bool) -> None:
    """Show each dataset's budget, what sessions spent (epsilons add up), and what remains.

    The unit of privacy is one client: with datasets that hold no client-id
    column, a client is a whole dataset (site-level DP).

    \b
    Example:
        tffprod privacy report --dataset hospital-a/train
    """
    from tffprod.datasets import parse_ref

    with user_errors():
        site, name = parse_ref(dataset) if dataset else (None, None)
        with open_registry(registry_path) as registry:
            rows = registry.privacy_report(site=site, name=name)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("(no budgets and no DP sessions)")
        return
    for row in rows:
        budget, spent, left = row["budget"], row["spent"], row["remaining"]
        limit = f"budget eps {budget['epsilon']:.4g} delta {budget['delta']:.3g} ({budget['source']})" if budget \
            else "no budget"
        rest = f"  remaining eps {left['epsilon']:.4g}" if left else ""
        click.echo(f"{row['dataset']}: {limit}  spent eps {spent['epsilon']:.4g} delta {spent['delta']:.3g}{rest}"
                   f"  ({len(row['sessions'])} session(s); unit: the whole dataset)")

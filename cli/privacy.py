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

    The unit of privacy is one client: a customer or patient for a dataset
    with a client-id column, else the whole dataset (site-level DP). Spend is
    RDP; a PLD epsilon is shown beside it where sessions computed one.

    \b
    Example:
        tffprod privacy report --dataset hospital-a/train
    """
    from tffprod.data.register import parse_ref

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
        pld = f" (PLD {spent['epsilon_pld']:.4g})" if "epsilon_pld" in spent else ""
        click.echo(f"{row['dataset']}: {limit}  spent eps {spent['epsilon']:.4g}{pld} delta {spent['delta']:.3g}"
                   f"{rest}  ({len(row['sessions'])} session(s); unit: {row['unit']})")

"""``tffprod demo``: the whole product in one command."""

from __future__ import annotations

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.options import emit_json, interactive, output_options


@click.command()
@click.option("--workdir", required=True, type=click.Path(file_okay=False),
              help="Folder for data, registry, spec and model.")
@click.option("--rounds", default=25, show_default=True, type=click.IntRange(1, 1000), help="Training rounds.")
@click.option("--backend", type=click.Choice(["remote", "local"]), default="remote", show_default=True,
              help="remote: real site processes over mTLS; local: simulated sites.")
@output_options
def demo(workdir: str, rounds: int, backend: str, as_json: bool) -> None:
    """Three hospitals train a digits classifier with DP-FedAvg; evaluate, export, compare.

    By default each hospital runs as its own site process (gateway + worker,
    mutual TLS on loopback) with certificates the demo issues; all of them are
    stopped at the end, and their configs stay in WORKDIR/sites/.

    \b
    Example:
        tffprod demo --workdir ./demo
    """
    from pathlib import Path

    from tffprod.cli.progress import print_round
    from tffprod.dev.demo import run_demo
    from tffprod.registry import Registry

    watch = interactive() and not as_json
    with user_errors():
        summary = run_demo(
            Path(workdir),
            rounds=rounds,
            backend=backend,
            registry_factory=Registry.open,
            progress=print_round if watch else None,
            say=(lambda m: click.echo(m, err=True)) if watch else (lambda m: None),
        )
    if as_json:
        emit_json(summary)
        return
    click.echo(f"registry:       {summary['registry']}")
    click.echo(f"session spec:   {summary['spec']}")
    click.echo(f"model version:  {summary['model']} (session {summary['session_id']})")
    click.echo(f"SavedModel:     {summary['saved_model']}")
    for ds, acc in summary["per_site_accuracy"].items():
        click.echo(f"accuracy {ds:18} {acc:.4f}")
    click.echo(f"accuracy (all held-out, DP model):   {summary['accuracy']:.4f}")
    click.echo(f"accuracy (centralized reference):    {summary['central_accuracy']:.4f}")
    click.echo(f"privacy: epsilon {summary['epsilon']:.4g} at delta {summary['delta']:g} "
               "(site-level: each site is one client; with 3 sites every round, epsilon is large)")
    if summary.get("sites"):
        click.echo("start the same sites by hand (one terminal each), then repeat the training:")
        for config in summary["sites"].values():
            click.echo(f"  tffprod site serve --config {config}")
    click.echo("repeat the training:")
    for command in summary["repeat_commands"]:
        click.echo(f"  {command}")

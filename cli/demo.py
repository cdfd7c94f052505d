"""``tffprod demo``: the whole product in one command."""

from __future__ import annotations

from typing import Any, Optional

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.options import emit_json, output_options


@click.command()
@click.option("--workdir", required=True, type=click.Path(file_okay=False),
              help="Folder for data, registry, spec and model.")
@click.option("--rounds", default=60, show_default=True, type=click.IntRange(1, 1000),
              help="Rounds of the user-level DP session (the noise is calibrated to them).")
@click.option("--backend", type=click.Choice(["remote", "local"]), default="remote", show_default=True,
              help="remote: real site processes over mTLS; local: simulated sites.")
@output_options
def demo(workdir: str, rounds: int, backend: str, as_json: bool) -> None:
    """Three banks train a fraud model with user-level DP at epsilon <= 5; compare, evaluate, export.

    Every customer is protected: each round samples customers, each bank adds its
    share of the noise before anything leaves it, and the coordinator sees only the
    sum of the banks' releases (secure aggregation). By default each bank runs as its
    own site process (gateway + worker, mutual TLS on loopback) with certificates the
    demo issues; all of them are stopped at the end, and their configs stay in
    WORKDIR/sites/. Non-private FedAvg and a centralized model on the same data are
    trained for comparison. Takes a few minutes.

    \b
    Example:
        tffprod demo --workdir ./demo
    """
    from pathlib import Path

    from tffprod.cli.progress import round_progress
    from tffprod.dev.demo import run_demo
    from tffprod.registry import Registry

    with user_errors(), round_progress(as_json=as_json) as progress:
        summary = run_demo(
            Path(workdir),
            rounds=rounds,
            backend=backend,
            registry_factory=Registry.open,
            progress=progress,
            say=(lambda m: None) if as_json else (lambda m: click.echo(m, err=True)),
        )
    if as_json:
        emit_json(summary)
        return
    click.echo(f"registry:       {summary['registry']}")
    click.echo(f"session spec:   {summary['spec']}")
    click.echo(f"model version:  {summary['model']} (session {summary['session_id']})")
    click.echo(f"SavedModel:     {summary['saved_model']}")
    click.echo(f"held-out, per bank {'':19}{'accuracy':>8}  {'AUC':>6}")
    for dataset, metrics in summary["per_site"].items():
        click.echo(f"  {dataset:35}{_row(metrics)}")
    rows = {"user-level DP (this session)": summary,
            f"non-private FedAvg, {summary['baseline']['rounds']} rounds": summary["baseline"],
            f"centralized, {summary['central']['epochs']} epochs": summary["central"]}
    click.echo(f"held-out, all banks {'':18}{'accuracy':>8}  {'AUC':>6}")
    for label, metrics in rows.items():
        click.echo(f"  {label:35}{_row(metrics)}")
    click.echo(f"  (always answering 'not fraud' scores accuracy {summary['central']['majority_accuracy']:.4f}: "
               "compare AUC)")
    privacy = summary["privacy"]
    click.echo(f"privacy: epsilon {summary['epsilon']:.4g} at delta {summary['delta']:g} per {privacy['unit']} "
               f"(sampling rate {privacy['sampling_rate']:g}, noise multiplier {privacy['noise_multiplier']:g}, "
               f"clip {privacy['clip']:g})")
    against = privacy.get("against_coordinator") or {}
    if against.get("noise_placement") not in (None, "coordinator"):
        shown = _number(against.get("epsilon"))
        secure = against.get("secure_aggregation")
        click.echo(f"against the coordinator: each bank adds its share of the noise ({against['noise_placement']})"
                   + ("; the coordinator sees only the banks' sum (secure aggregation)" if secure else ""))
        click.echo(f"  one bank's own releases{' (were the others to collude with it)' if secure else ''}: "
                   f"epsilon {shown} at delta {summary['delta']:g}")
    if summary.get("sites"):
        click.echo("start the same sites by hand (one terminal each), then repeat the training:")
        for config in summary["sites"].values():
            click.echo(f"  tffprod site serve --config {config}")
    click.echo("repeat the training:")
    for command in summary["repeat_commands"]:
        click.echo(f"  {command}")


def _number(value: Optional[float], spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _row(metrics: dict[str, Any]) -> str:
    """``accuracy   AUC`` of a metrics dict, ``-`` where one is missing."""
    return f"{_number(metrics.get('accuracy'), '.4f'):>8}  {_number(metrics.get('auc'), '.4f'):>6}"

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
    RDP; a PLD epsilon is shown beside it where sessions computed one. Noised
    evaluation releases are charged too, and shown apart from training.

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
        evaluated = row["evaluations"]
        parts = f"{len(row['sessions'])} training session(s)" + (
            f", {len(evaluated)} noised evaluation(s) eps {spent['evaluation_epsilon']:.4g}" if evaluated else "")
        click.echo(f"{row['dataset']}: {limit}  spent eps {spent['epsilon']:.4g}{pld} delta {spent['delta']:.3g}"
                   f"{rest}  ({parts}; unit: {row['unit']})")


@privacy.command("calibrate")
@click.option("--epsilon", "target", required=True, type=float, help="The epsilon to meet (over the whole session).")
@click.option("--delta", required=True, type=float, help="The delta epsilon is stated for (e.g. 1e-5).")
@click.option("--rounds", required=True, type=int, help="Training rounds of the session.")
@click.option("--sampling-rate", type=float,
              help="Poisson sampling: each client's chance to train in a round ([sampling] client_rate).")
@click.option("--clients-per-round", type=int,
              help="Fixed sampling: this many clients a round ([sampling] clients_per_round); needs --clients.")
@click.option("--clients", type=int, help="How many clients the session draws from (with --clients-per-round).")
@click.option("--noise-multiplier", type=float,
              help="Find the largest Poisson sampling rate for this noise instead of the noise.")
@click.option("--accountant", type=click.Choice(["rdp", "pld"]), default="rdp", show_default=True,
              help="The accountant (sessions account with rdp; pld is reported beside it).")
@output_options
def calibrate(target: float, delta: float, rounds: int, sampling_rate: Optional[float],
              clients_per_round: Optional[int], clients: Optional[int], noise_multiplier: Optional[float],
              accountant: str, as_json: bool) -> None:
    """Find the noise multiplier (or the sampling rate) that meets a target epsilon.

    Uses the accountant sessions use (dp_accounting), so the spec's [dp] noise_multiplier found here
    spends at most EPSILON over ROUNDS rounds. Without sampling every client trains every round
    (site-level DP with one client per site: epsilon is large). The answer errs on the safe side.

    \b
    Example:
        tffprod privacy calibrate --epsilon 5 --delta 1e-5 --rounds 100 --sampling-rate 0.01
        tffprod privacy calibrate --epsilon 5 --delta 1e-5 --rounds 100 --clients-per-round 50 --clients 5000
        tffprod privacy calibrate --epsilon 5 --delta 1e-5 --rounds 100 --noise-multiplier 1.1
    """
    from tffprod.privacy.calibrate import noise_for, sampling_rate_for

    if (clients_per_round is None) != (clients is None):
        raise click.UsageError("--clients-per-round and --clients go together")
    if sampling_rate is not None and clients_per_round is not None:
        raise click.UsageError("give --sampling-rate or --clients-per-round, not both")
    if noise_multiplier is not None and (sampling_rate is not None or clients_per_round is not None):
        raise click.UsageError("--noise-multiplier finds the sampling rate: leave out --sampling-rate and "
                               "--clients-per-round")
    with user_errors():
        if noise_multiplier is not None:
            result = sampling_rate_for(target, delta=delta, rounds=rounds, noise_multiplier=noise_multiplier,
                                       accountant=accountant)
        elif clients_per_round is not None:
            assert clients is not None  # checked above
            result = noise_for(target, delta=delta, rounds=rounds, fixed_sample=(clients, clients_per_round),
                               accountant=accountant)
        else:
            result = noise_for(target, delta=delta, rounds=rounds, sampling_rate=sampling_rate or 1.0,
                               accountant=accountant)
    if as_json:
        emit_json(result.to_dict())
        return
    if result.fixed_sample:
        sampling = f"{result.fixed_sample[1]} of {result.fixed_sample[0]} clients a round"
    else:
        sampling = f"sampling rate {result.sampling_rate:.6g}"
    click.echo(f"noise_multiplier {result.noise_multiplier:.6g}, {sampling}: epsilon {result.epsilon:.6g} "
               f"(target {target:g}) at delta {delta:g} over {rounds} rounds ({accountant})")

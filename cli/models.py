"""``tffprod model`` and ``tffprod eval``: trained model versions."""

from __future__ import annotations

from typing import Optional

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.options import emit_json, open_registry, output_options, registry_option, say, table


@click.group()
def model() -> None:
    """List, inspect, alias, share and export trained model versions.

    \b
    Example:
        tffprod model list
        tffprod model alias digits-dp:1 production
        tffprod model export digits-dp@production --out ./digits-savedmodel --for hospital-a
    """


@model.command("list")
@click.argument("name", required=False)
@registry_option
@output_options
def list_(name: Optional[str], registry_path: str, as_json: bool) -> None:
    """List model versions (of NAME, if given).

    \b
    Example:
        tffprod model list --json
    """
    with user_errors(), open_registry(registry_path) as registry:
        rows = registry.list_model_versions(name)
    if as_json:
        emit_json(rows)
    else:
        for row in rows:
            row["aliases"] = ",".join(row["aliases"]) or "-"
        table(rows, ["name", "version", "aliases", "session_id", "epsilon", "delta", "created_at"])


@model.command("show")
@click.argument("ref")
@registry_option
@output_options
def show(ref: str, registry_path: str, as_json: bool) -> None:
    """Show a model version (REF is NAME, NAME:VERSION or NAME@ALIAS) with its lineage, access and evaluations.

    \b
    Example:
        tffprod model show digits-dp@production
    """
    with user_errors(), open_registry(registry_path) as registry:
        row = registry.get_model_version(ref)
        row["evaluations"] = registry.list_evaluations(row["name"], row["version"], kind=None)
    if as_json:
        emit_json(row)
        return
    from tffprod.cli.formatting import dp_line, metrics_line, privacy_line

    for key in ("name", "version", "session_id", "artifact_path", "created_at"):
        click.echo(f"{key:13} {row.get(key) if row.get(key) is not None else '-'}")
    click.echo(f"{'privacy':13} {privacy_line(row.get('epsilon'), row.get('delta'))}")
    click.echo(f"{'aliases':13} {', '.join(row['aliases']) or '-'}")
    click.echo(f"{'access':13} {', '.join(row['access']) or '- (nobody)'}")
    click.echo(f"{'datasets':13} {', '.join(row['datasets'])}")
    click.echo(f"{'dp':13} {dp_line(row['dp'] or {})}")
    for kind, metrics in (row["metrics"] or {}).items():
        if isinstance(metrics, dict):
            click.echo(f"{'metrics ' + kind:13} {metrics_line(metrics)}")
    lineage = row["lineage"]
    if lineage:
        session, task = lineage["session"], lineage["task"]
        click.echo("lineage")
        click.echo(f"  session      {session['id']} ({session['rounds_completed']} of "
                   f"{session['rounds_planned']} rounds, backend {session['backend']})")
        click.echo(f"  sites        {', '.join(lineage['sites'])}")
        for ds in lineage["datasets"]:
            click.echo(f"  {ds['role']:12} {ds['ref']} ({ds['num_examples']} examples, {ds['content_hash']})")
        click.echo(f"  privacy      {privacy_line(lineage['epsilon'], lineage['delta'], lineage['privacy_unit'])}")
        click.echo(f"  task         {task['path']} sha256 {task['sha256'] or '- (source not found)'}")
        click.echo("  versions     " + ", ".join(f"{k} {v}" for k, v in lineage["versions"].items()))
    else:
        click.echo("lineage       - (registered before lineage was recorded)")
    if row["evaluations"]:
        click.echo("evaluations")
    for ev in row["evaluations"]:
        where = ev["dataset"] if ev.get("kind") != "overall" else f"all ({ev['dataset']})"
        click.echo(f"  {where}: {metrics_line(ev['metrics'])}")


@model.command("export")
@click.argument("ref")
@click.option("--out", "out", required=True, type=click.Path(), help="Directory (or .keras file) to write.")
@click.option("--format", "fmt", type=click.Choice(["savedmodel", "keras"]), default="savedmodel", show_default=True)
@click.option("--for", "for_site", metavar="SITE",
              help="The site that receives the model: refused unless it is on the version's access list.")
@registry_option
@output_options
def export(ref: str, out: str, fmt: str, for_site: Optional[str], registry_path: str, as_json: bool) -> None:
    """Export a model version as a SavedModel (serving_default takes raw features by name) or a .keras file,
    with a model card (model_card.json and model_card.md) beside it.

    \b
    Example:
        tffprod model export digits-dp@production --out ./digits-savedmodel --for hospital-a
    """
    from tffprod.models.export import export_version

    with user_errors(), open_registry(registry_path) as registry:
        result = export_version(registry, ref, out, fmt=fmt, for_site=for_site)
    if as_json:
        emit_json(result)
    else:
        target = f" for {for_site}" if for_site else ""
        click.echo(f"exported {result['name']}:{result['version']} ({fmt}){target} to {result['path']}")


@model.command("eval-plan")
@click.argument("ref")
@click.option("--dataset", "datasets", multiple=True, required=True, help="SITE/NAME[:VERSION]; repeat for more.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The plan file to write (JSON).")
@click.option("--eval-noise-multiplier", type=float,
              help="Noise the metric sums at each site (stddev this x the bound); each dataset is charged the "
                   "release's epsilon. Needed for datasets with a privacy budget.")
@click.option("--eval-bound", type=float, help="The most one example adds to any metric sum (default 16.2).")
@click.option("--delta", type=float, help="The delta of the evaluation's epsilon (default 1e-5).")
@registry_option
@output_options
def eval_plan(ref: str, datasets: tuple[str, ...], out_path: str, eval_noise_multiplier: Optional[float],
              eval_bound: Optional[float], delta: Optional[float], registry_path: str, as_json: bool) -> None:
    """Write an evaluation plan of model version REF on datasets, for their sites to approve.

    Sites that require approval evaluate only what they approved: review it with
    'tffprod site plan show PLAN', approve it with 'tffprod site approve PLAN', then run
    'tffprod eval REF --dataset ... --backend remote --plan PLAN'. Each dataset is evaluated once.
    A site refuses to release un-noised metrics of a dataset with a privacy budget: give
    --eval-noise-multiplier, and the site noises them and charges the dataset's budget.

    \b
    Example:
        tffprod model eval-plan digits-dp:1 --dataset hospital-a/test --out eval.plan.json
    """
    import os

    with user_errors(), open_registry(registry_path) as registry:
        from tffprod.sessions.approval import make_eval_plan, write_plan

        document = make_eval_plan(registry, ref, list(datasets), eval_noise_multiplier=eval_noise_multiplier,
                                  eval_bound=eval_bound, delta=delta)
        write_plan(document, out_path)
        evaluation = document["privacy"].get("evaluation")
        summary = {"plan_id": document["plan_id"], "path": out_path, "model": document["model"],
                   "evaluation_epsilon": evaluation["epsilon"] if evaluation else None,
                   "sites": sorted({d["site"] for d in document["datasets"]}),
                   "computations": {c["role"]: c["sha256"] for c in document["computations"]}}
        registry.record_action("model.eval-plan", document["plan_id"], {**summary, "path": os.path.abspath(out_path)})
    if as_json:
        emit_json(summary)
        return
    noised = (f"metrics noised at each site, epsilon {evaluation['epsilon']:.4g} at delta "
              f"{document['privacy']['delta']:g} per dataset" if evaluation else "metrics un-noised")
    click.echo(f"wrote evaluation plan {document['plan_id'][:16]} to {out_path}: {ref} on {', '.join(datasets)} "
               f"({noised}); "
               f"have {', '.join(summary['sites'])} approve it ('tffprod site approve'), then run "
               f"'tffprod eval {ref} --backend remote --plan {out_path}' with the same datasets")


@model.command("alias")
@click.argument("ref")
@click.argument("alias")
@click.option("--remove", is_flag=True, help="Remove ALIAS from model NAME (REF is then just NAME).")
@registry_option
@output_options
def alias(ref: str, alias: str, remove: bool, registry_path: str, as_json: bool) -> None:
    """Point ALIAS at the version REF names (moving it from another version), or --remove it.

    \b
    Example:
        tffprod model alias digits-dp:3 production
        tffprod model alias digits-dp production --remove
    """
    from tffprod.models.access import remove_alias, set_alias

    with user_errors(), open_registry(registry_path) as registry:
        row = remove_alias(registry, ref.split(":")[0].split("@")[0], alias) if remove \
            else set_alias(registry, ref, alias)
    if as_json:
        emit_json(row)
    elif remove:
        click.echo(f"removed alias {alias} (was {row['name']}:{row['version']})")
    else:
        click.echo(f"{row['name']}@{alias} -> {row['name']}:{row['version']}")


@model.command("access")
@click.argument("ref")
@click.option("--allow", multiple=True, metavar="PRINCIPAL", help="site:NAME or federation:NAME; repeat for more.")
@click.option("--revoke", multiple=True, metavar="PRINCIPAL", help="site:NAME or federation:NAME; repeat for more.")
@registry_option
@output_options
def access(ref: str, allow: tuple[str, ...], revoke: tuple[str, ...], registry_path: str, as_json: bool) -> None:
    """Show or edit who may receive a model version (export --for, eval): sites and federations.

    \b
    Example:
        tffprod model access digits-dp:1 --allow site:hospital-d --revoke site:hospital-c
    """
    from tffprod.models.access import set_access

    with user_errors(), open_registry(registry_path) as registry:
        row = set_access(registry, ref, allow=allow, revoke=revoke) if allow or revoke \
            else registry.get_model_version(ref)
    if as_json:
        emit_json({"name": row["name"], "version": row["version"], "access": row["access"]})
    else:
        click.echo(f"{row['name']}:{row['version']} may be received by: {', '.join(row['access']) or 'nobody'}")


@click.command("eval")
@click.argument("ref")
@click.option("--dataset", "datasets", multiple=True, required=True, help="SITE/NAME[:VERSION]; repeat for more.")
@click.option("--backend", type=click.Choice(["local", "remote"]), default="local", show_default=True)
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False),
              help="An evaluation plan the sites approved ('tffprod model eval-plan'); needed at sites that "
                   "require approval.")
@registry_option
@output_options
def eval_command(ref: str, datasets: tuple[str, ...], backend: str, plan_path: str | None, registry_path: str,
                 as_json: bool) -> None:
    """Evaluate model version REF (NAME, NAME:VERSION or NAME@ALIAS) on datasets, each at its own site,
    and record the results per dataset and overall. Each dataset's site must be on the version's access list.
    Sites that require approval evaluate only through an evaluation plan they approved (--plan).

    \b
    Example:
        tffprod eval digits-dp@production --dataset hospital-a/test --dataset hospital-b/test
        tffprod eval digits-dp:1 --dataset hospital-a/test --backend remote --plan eval.plan.json
    """
    from tffprod.backends import create_backend
    from tffprod.sessions.evaluate import evaluate_version

    with user_errors(), open_registry(registry_path) as registry:
        result = evaluate_version(registry, ref, datasets, backend=create_backend(backend, registry=registry),
                                  plan_path=plan_path, say=lambda message: say(message, as_json=as_json))
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['model']}:{result['version']}")
    for ds, metrics in result["datasets"].items():
        click.echo(f"  {ds:24} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    click.echo(f"  {'overall':24} "
               + "  ".join(f"{k} {v:.4f}" for k, v in result["overall"].items() if isinstance(v, float)))
    for ds, reason in result["errors"].items():
        click.echo(f"  {ds:24} not evaluated: {reason}")

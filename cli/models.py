"""``tffprod model`` and ``tffprod eval``: trained model versions."""

from __future__ import annotations

from typing import Optional

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.options import emit_json, open_registry, output_options, registry_option, table


@click.group()
def model() -> None:
    """List, inspect and export trained model versions.

    \b
    Example:
        tffprod model list
        tffprod model export digits-dp:1 --out ./digits-savedmodel
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
        table(rows, ["name", "version", "session_id", "epsilon", "delta", "created_at"])


@model.command("show")
@click.argument("ref")
@registry_option
@output_options
def show(ref: str, registry_path: str, as_json: bool) -> None:
    """Show a model version (REF is NAME or NAME:VERSION) with its lineage and evaluations.

    \b
    Example:
        tffprod model show digits-dp:1
    """
    with user_errors(), open_registry(registry_path) as registry:
        row = registry.get_model_version(ref)
        row["evaluations"] = registry.list_evaluations(row["name"], row["version"])
    if as_json:
        emit_json(row)
        return
    for key in ("name", "version", "session_id", "epsilon", "delta", "artifact_path", "created_at"):
        click.echo(f"{key:13} {row.get(key) if row.get(key) is not None else '-'}")
    click.echo(f"{'datasets':13} {', '.join(row['datasets'])}")
    click.echo(f"{'dp':13} {row['dp']}")
    click.echo(f"{'metrics':13} {row['metrics']}")
    for ev in row["evaluations"]:
        click.echo(f"  eval {ev['dataset']}: {ev['metrics']}")


@model.command("export")
@click.argument("ref")
@click.option("--out", "out", required=True, type=click.Path(), help="Directory (or .keras file) to write.")
@click.option("--format", "fmt", type=click.Choice(["savedmodel", "keras"]), default="savedmodel", show_default=True)
@registry_option
@output_options
def export(ref: str, out: str, fmt: str, registry_path: str, as_json: bool) -> None:
    """Export a model version as a SavedModel (serving_default takes raw features by name) or a .keras file.

    \b
    Example:
        tffprod model export digits-dp:1 --out ./digits-savedmodel
    """
    from tffprod.export import export_artifact

    with user_errors(), open_registry(registry_path) as registry:
        row = registry.get_model_version(ref)
        path = export_artifact(row["artifact_path"], out, fmt=fmt)
    if as_json:
        emit_json({"name": row["name"], "version": row["version"], "format": fmt, "path": str(path)})
    else:
        click.echo(f"exported {row['name']}:{row['version']} ({fmt}) to {path}")


@click.command("eval")
@click.argument("ref")
@click.option("--dataset", "datasets", multiple=True, required=True, help="SITE/NAME[:VERSION]; repeat for more.")
@click.option("--backend", type=click.Choice(["local", "remote"]), default="local", show_default=True)
@registry_option
@output_options
def eval_command(ref: str, datasets: tuple[str, ...], backend: str, registry_path: str, as_json: bool) -> None:
    """Evaluate model version REF on datasets, each at its own site, and record the results.

    \b
    Example:
        tffprod eval digits-dp:1 --dataset hospital-a/test --dataset hospital-b/test
    """
    from tffprod.backends import create_backend
    from tffprod.evaluation import evaluate_version

    with user_errors(), open_registry(registry_path) as registry:
        result = evaluate_version(registry, ref, datasets, backend=create_backend(backend, registry=registry))
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['model']}:{result['version']}")
    for ds, metrics in result["datasets"].items():
        click.echo(f"  {ds:24} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    click.echo(f"  {'overall':24} " + "  ".join(f"{k} {v:.4f}" for k, v in result["overall"].items() if isinstance(v, float)))
    for ds, reason in result["errors"].items():
        click.echo(f"  {ds:24} not evaluated: {reason}")

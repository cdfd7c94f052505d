"""``tffprod dataset``: register and inspect site datasets."""

from __future__ import annotations

from typing import Optional

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.options import emit_json, open_registry, output_options, registry_option, table
from tffprod.data.formats import FORMATS


@click.group()
def dataset() -> None:
    """Register and inspect datasets held at sites.

    \b
    Example:
        tffprod dataset register hospital-a/train data/hospital-a/train.tfrecord \\
            --task tffprod.examples.digits:task
        tffprod dataset list
    """


@dataset.command("register")
@click.argument("ref")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--schema", "schema_file", type=click.Path(dir_okay=False), help="Schema as a JSON file.")
@click.option("--task", "task_path", help="Take the schema from this task (module:attr).")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), help="File format (default: by suffix).")
@click.option("--budget-epsilon", type=float, metavar="FLOAT",
              help="Privacy budget: total epsilon for this dataset (every version); needs --budget-delta.")
@click.option("--budget-delta", type=float, metavar="FLOAT",
              help="Privacy budget: total delta, between 0 and 1; needs --budget-epsilon.")
@click.option("--client-id", "client_id", metavar="COLUMN",
              help="The column naming each row's client (customer, patient): DP then protects each client.")
@registry_option
@output_options
def register(ref: str, path: str, schema_file: Optional[str], task_path: Optional[str], fmt: Optional[str],
             budget_epsilon: Optional[float], budget_delta: Optional[float], client_id: Optional[str],
             registry_path: str, as_json: bool) -> None:
    """Validate the file at PATH against a schema and record it as REF (SITE/NAME).

    A budget given here is the coordinator's; a budget in the site's config
    (mirrored by 'tffprod site sync') wins and cannot be overridden. With
    --client-id the rows belong to many clients (counted here; the column need
    not be a model feature) and sessions sample clients; without it the whole
    dataset is one client (site-level DP).

    \b
    Example:
        tffprod dataset register hospital-a/train data/hospital-a/train.tfrecord \\
            --task tffprod.examples.digits:task --budget-epsilon 8 --budget-delta 1e-5
        tffprod dataset register bank-a/train data/bank-a/train.csv \\
            --task tffprod.examples.fraud:task --client-id customer_id
    """
    from tffprod.data.schema import load_schema_file
    from tffprod.data.register import register_dataset
    from tffprod.task import load_task

    with user_errors():
        if bool(schema_file) == bool(task_path):
            raise click.UsageError("give exactly one of --schema FILE or --task MODULE:ATTR")
        if (budget_epsilon is None) != (budget_delta is None):
            raise click.UsageError("give both --budget-epsilon and --budget-delta, or neither")
        budget = None if budget_epsilon is None or budget_delta is None else (budget_epsilon, budget_delta)
        if schema_file:
            schema = load_schema_file(schema_file)
        else:
            assert task_path  # exactly one of --schema and --task, checked above
            schema = load_task(task_path).schema
        with open_registry(registry_path) as registry:
            row = register_dataset(registry, ref, path, schema=schema, fmt=fmt, budget=budget, client_id=client_id)
    if as_json:
        emit_json(row)
        return
    clients = f", {row['num_clients']} clients by {row['client_id']}" if row.get("client_id") else ""
    click.echo(f"registered {row['ref']}: {row['num_examples']} examples{clients} "
               f"({row['format']}, {row['content_hash'][:19]}...)")
    if "budget" in row:
        click.echo(f"budget of {ref}: epsilon {row['budget']['epsilon']:g}, delta {row['budget']['delta']:g}")


@dataset.command("list")
@click.option("--site", help="Only this site's datasets.")
@registry_option
@output_options
def list_(site: Optional[str], registry_path: str, as_json: bool) -> None:
    """List the latest version of every dataset.

    \b
    Example:
        tffprod dataset list --json
    """
    with user_errors(), open_registry(registry_path) as registry:
        rows = registry.list_datasets(site=site)
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["ref", "format", "num_examples", "client_id", "num_clients", "registered_at"])


@dataset.command("show")
@click.argument("ref")
@registry_option
@output_options
def show(ref: str, registry_path: str, as_json: bool) -> None:
    """Show one dataset (REF is SITE/NAME or SITE/NAME:VERSION).

    \b
    Example:
        tffprod dataset show hospital-a/train
    """
    with user_errors(), open_registry(registry_path) as registry:
        row = registry.get_dataset(ref)
        row["versions"] = [{k: v[k] for k in ("ref", "version", "content_hash", "num_examples", "registered_at",
                                              "sessions")} for v in registry.dataset_versions(ref)]
    if as_json:
        emit_json(row)
        return
    for key in ("ref", "path", "format", "num_examples", "content_hash", "registered_at"):
        click.echo(f"{key:13} {row[key]}")
    unit = f"client (column {row['client_id']}), {row['num_clients']} clients" if row.get("client_id") \
        else "the whole dataset (site-level)"
    click.echo(f"{'privacy unit':13} {unit}")
    click.echo("schema")
    for f in row["schema"]["features"]:
        click.echo(f"  feature   {f['name']}: {f['dtype']}{f['shape']}")
    label = row["schema"]["label"]
    click.echo(f"  label     {label['name']}: {label['dtype']}{label['shape']}")
    click.echo("versions")
    for v in row["versions"]:
        used = ", ".join(f"{u['id']} ({u['status']})" for u in v["sessions"]) or "no session yet"
        click.echo(f"  {v['version']:>3}  {v['content_hash'][:23]}  {v['num_examples']} examples  "
                   f"{v['registered_at'][:19]}  sessions: {used}")


@dataset.command("infer-schema")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--label", required=True, help="The column the model learns.")
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), help="Default: from the file's suffix.")
@click.option("--client-id", "client_id", metavar="COLUMN", help="A client-id column: left out of the features.")
@click.option("--task", "task_out", type=click.Path(dir_okay=False),
              help="Also write a task module to start from (a small Keras model for this schema) to this .py file.")
@click.option("--rows", "max_rows", type=click.IntRange(1), default=10_000, show_default=True,
              help="Examples read to decide the dtypes and shapes.")
@click.option("--group", metavar="NAME",
              help="CSV: read every numeric column as one float32 vector feature NAME (one model input).")
@output_options
def infer_schema(file: str, label: str, fmt: Optional[str], client_id: Optional[str], task_out: Optional[str],
                 max_rows: int, group: Optional[str], as_json: bool) -> None:
    """Print the schema of a CSV or TFRecord FILE (the JSON that --schema files hold).

    CSV columns are int64, float32 or string by their cells; TFRecord features by their kind and value
    count. Save the output as schema.json for 'dataset register --schema', or write a task with --task.
    With --group, a CSV's numeric columns become one vector feature (a group of columns).

    \b
    Example:
        tffprod dataset infer-schema visits.csv --label readmitted > schema.json
        tffprod dataset infer-schema visits.csv --label readmitted --client-id patient_id --task visits_task.py
        tffprod dataset infer-schema labs.csv --label outcome --group labs --task labs_task.py
    """
    import json
    from pathlib import Path

    from tffprod.data.infer import infer_schema as infer, task_skeleton

    with user_errors():
        inferred = infer(file, label=label, fmt=fmt, client_id=client_id, max_rows=max_rows, group=group)
        if task_out:
            target = Path(task_out)
            if target.exists():
                raise click.UsageError(f"{target} already exists; choose a new --task path")
            target.write_text(task_skeleton(inferred, path=file))
    if as_json or not task_out:
        click.echo(json.dumps(inferred.schema.to_dict(), indent=2))
    if task_out:
        click.echo(f"wrote a task for {inferred.schema.label.name} ({len(inferred.schema.features)} features, "
                   f"{inferred.rows} examples read) to {task_out}; use it as --task {task_out}:task", err=True)

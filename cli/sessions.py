"""``tffprod session``: run training sessions and inspect them."""

from __future__ import annotations

from typing import Optional

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.options import emit_json, interactive, open_registry, output_options, registry_option, table


@click.group()
def session() -> None:
    """Run federated training sessions and inspect them.

    \b
    Example:
        tffprod session run --spec demo/digits-dp.toml
        tffprod session list
    """


@session.command("run")
@click.option("--spec", "spec_path", required=True, type=click.Path(dir_okay=False), help="Session spec (TOML).")
@click.option("--backend", type=click.Choice(["local", "remote"]), help="Where site computations run (default: the spec's).")
@registry_option
@output_options
def run(spec_path: str, backend: Optional[str], registry_path: str, as_json: bool) -> None:
    """Train a model as SPEC describes and record it as a new model version.

    \b
    Example:
        tffprod session run --spec demo/digits-dp.toml
    """
    from tffprod.spec import load_spec

    with user_errors():
        spec = load_spec(spec_path)
        from tffprod.backends import create_backend
        from tffprod.cli.progress import print_round
        from tffprod.session import train

        with open_registry(registry_path) as registry:
            result = train(
                spec,
                registry=registry,
                backend=create_backend(backend or spec.backend, registry=registry),
                progress=print_round if interactive() else None,
            )
    if as_json:
        emit_json(result)
        return
    version = result["model_version"]
    click.echo(f"session {result['id']} {result['status']}: {result['rounds_completed']} rounds")
    click.echo(f"model {version['name']}:{version['version']}  epsilon {version['epsilon']}  "
               f"artifact {version['artifact_path']}")
    if version["metrics"].get("stopped"):
        click.echo(version["metrics"]["stopped"])


@session.command("list")
@click.option("--status", help="Only sessions with this status.")
@registry_option
@output_options
def list_(status: Optional[str], registry_path: str, as_json: bool) -> None:
    """List sessions, newest first.

    \b
    Example:
        tffprod session list --json
    """
    with user_errors(), open_registry(registry_path) as registry:
        rows = registry.list_sessions(status=status)
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["id", "name", "status", "rounds_completed", "rounds_planned", "backend", "created_at"])


@session.command("show")
@click.argument("session_id")
@registry_option
@output_options
def show(session_id: str, registry_path: str, as_json: bool) -> None:
    """Show a session and its rounds.

    \b
    Example:
        tffprod session show s-20261125-183000-ab12
    """
    with user_errors(), open_registry(registry_path) as registry:
        row = registry.get_session(session_id)
        row["rounds"] = registry.list_rounds(session_id)
    if as_json:
        emit_json(row)
        return
    for key in ("id", "name", "status", "backend", "rounds_completed", "rounds_planned", "created_at",
                "finished_at", "error"):
        click.echo(f"{key:17} {row.get(key) if row.get(key) is not None else '-'}")
    for r in row["rounds"]:
        ok = sum(1 for p in r["participants"] if p["status"] == "ok")
        eps = f"  eps {r['epsilon']:.3g}" if r.get("epsilon") is not None else ""
        click.echo(f"  round {r['round_num']:>3}  sites {ok}/{len(r['participants'])}  {r['duration_s']:.2f}s{eps}")

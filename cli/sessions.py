"""``tffprod session``: run training sessions and inspect them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.logs import configure_logging, log_level_option
from tffprod.cli.options import emit_json, open_registry, output_options, registry_option, say, table
from tffprod.sessions.round_metrics import train_metrics


@click.group()
def session() -> None:
    """Run federated training sessions and inspect them.

    \b
    Example:
        tffprod session run --spec demo/fraud-user-dp.toml
        tffprod session list
    """


@session.command("run")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False), help="Session spec (TOML).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False),
              help="An approved plan ('tffprod session plan'): run exactly its computations.")
@click.option("--backend", type=click.Choice(["local", "remote"]),
              help="Where site computations run (default: the spec's).")
@registry_option
@log_level_option
@output_options
def run(spec_path: Optional[str], plan_path: Optional[str], backend: Optional[str], registry_path: str,
        log_level: str, as_json: bool) -> None:
    """Train a model as SPEC (or an approved PLAN) describes and record it as a new model version.

    Sites that require approval run only plans their operators approved: make one
    with 'tffprod session plan', have each site approve it, then run it with --plan.

    Each round is shown on stderr (a progress bar on a terminal, else one line; nothing
    with --json) and written to TensorBoard event files in
    artifacts/NAME/SESSION/tensorboard beside the registry ('tensorboard --logdir artifacts').

    \b
    Example:
        tffprod session run --spec demo/fraud-user-dp.toml
        tffprod session run --plan digits.plan.json --backend remote --log-level info
    """
    if bool(spec_path) == bool(plan_path):
        raise click.UsageError("give either --spec or --plan")
    configure_logging(log_level)
    with user_errors():
        if plan_path:
            from tffprod.protocol.plan_document import load_plan

            backend = backend or load_plan(plan_path).document["spec"].get("backend", "local")
        else:
            from tffprod.sessions.spec import load_spec

            assert spec_path  # exactly one of --spec and --plan, checked above
            spec = load_spec(spec_path)
            backend = backend or spec.backend
        from tffprod.backends import create_backend
        from tffprod.cli.progress import round_progress

        with open_registry(registry_path) as registry, round_progress(as_json=as_json) as progress:
            site_backend = create_backend(backend, registry=registry)
            if plan_path:
                from tffprod.sessions.runner import train_from_plan

                result = train_from_plan(plan_path, registry=registry, backend=site_backend, progress=progress)
            else:
                from tffprod.sessions.runner import train

                result = train(spec, registry=registry, backend=site_backend, progress=progress)
    _report(result, as_json)


def _report(result: dict, as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    click.echo(f"session {result['id']} {result['status']}: {result['rounds_completed']} rounds")
    if result["status"] == "cancelled":
        click.echo(f"{result.get('error')}; resume with 'tffprod session resume {result['id']}' or export its "
                   f"last state with 'tffprod session export {result['id']} --out DIR'")
        return
    version = result["model_version"]
    privacy = f"epsilon {version['epsilon']:.4g} at delta {version['delta']:g}" if version["epsilon"] is not None \
        else "no DP"
    click.echo(f"model {version['name']}:{version['version']}  {privacy}  artifact {version['artifact_path']}")
    if version["metrics"].get("stopped"):
        click.echo(version["metrics"]["stopped"])
    if version["metrics"].get("eval"):
        click.echo(f"evaluation, all held-out data: {_metrics_line(version['metrics']['eval'])}")


def _metrics_line(metrics: dict) -> str:
    """``loss 0.1493  binary_accuracy 0.9604 ...``: the float metrics, counts left out."""
    shown = [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and not k.startswith("num_")]
    return "  ".join(shown) or "-"




@session.command("plan")
@click.option("--spec", "spec_path", required=True, type=click.Path(dir_okay=False), help="Session spec (TOML).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The plan file to write (JSON).")
@registry_option
@output_options
def plan(spec_path: str, out_path: str, registry_path: str, as_json: bool) -> None:
    """Compile SPEC once and write a plan for site operators to review and approve.

    The plan holds the frozen computations that will run at sites with their
    SHA-256, the task and model summary, the DP terms, the datasets and rounds.
    Sites approve it with 'tffprod site approve PLAN'; run it with
    'tffprod session run --plan PLAN'.

    \b
    Example:
        tffprod session plan --spec digits.toml --out digits.plan.json
    """
    import time

    from tffprod.sessions.spec import load_spec

    start = time.perf_counter()
    with user_errors():
        spec = load_spec(spec_path)
        from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
        from tffprod.sessions.planning import plan_session
        from tffprod.sessions import plan_cache
        from tffprod.sessions.runner import artifacts_dir_for

        with open_registry(registry_path) as registry:
            session_plan = plan_session(spec, registry=registry)
            document = make_plan(session_plan,
                                 coordinators=coordinator_identities(registry, session_plan.training_sites),
                                 cache_dir=artifacts_dir_for(registry.path) / plan_cache.DIRECTORY,
                                 say=lambda message: say(message, as_json=as_json))
            write_plan(document, out_path)
            summary = {"plan_id": document["plan_id"], "path": out_path,
                       "sites": sorted({d["site"] for d in document["datasets"]}),
                       "computations": {c["role"]: c["sha256"] for c in document["computations"]},
                       "privacy": document["privacy"]}
            registry.record_action("session.plan", document["plan_id"], {
                **summary, "path": os.path.abspath(out_path), "name": spec.name})
    say(f"planned in {time.perf_counter() - start:.1f} s", as_json=as_json)
    if as_json:
        emit_json(summary)
        return
    click.echo(f"plan {summary['plan_id']} written to {out_path}")
    for role, digest in summary["computations"].items():
        click.echo(f"  {role} computation sha256 {digest}")
    click.echo(f"  privacy: {_planned_privacy(summary['privacy'], spec.rounds)}")
    if summary["privacy"].get("mechanism", "none") != "none":
        from tffprod.privacy.terms import evaluation_line, placement_line

        click.echo(f"  {placement_line(summary['privacy'], spec.rounds)}")
        if spec.eval_datasets:
            click.echo(f"  {evaluation_line(summary['privacy'])}")
    click.echo(f"  sites to approve it: {', '.join(summary['sites'])} ('tffprod site approve {out_path} --config ...')")


def _planned_privacy(terms: dict, rounds: int) -> str:
    """``epsilon 4.98 at delta 1e-05 after all 100 rounds (gaussian_fixed; unit: ...)``, or no DP."""
    if terms.get("mechanism", "none") == "none":
        return "no differential privacy"
    return (f"epsilon {terms['planned_epsilon']:.4g} at delta {terms['delta']:g} after all {rounds} rounds "
            f"({terms['mechanism']}, noise_multiplier {terms['noise_multiplier']:g}; unit: {terms['unit']})")


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
    from tffprod.sessions.resume import resumable

    with user_errors(), open_registry(registry_path) as registry:
        rows = registry.list_sessions(status=status)
    for row in rows:
        row["resumable"] = resumable(row) is None
    if as_json:
        emit_json(rows)
    else:
        gone = [dict(row, status="running (coordinator gone)") if row["status"] == "running" and row["resumable"]
                else row for row in rows]
        table(gone, ["id", "name", "status", "rounds_completed", "rounds_planned", "backend", "created_at"])


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
    from tffprod.sessions.resume import describe_health, resumable

    with user_errors(), open_registry(registry_path) as registry:
        row = registry.get_session(session_id)
        row["rounds"] = registry.list_rounds(session_id)
        row["quarantined"] = describe_health(row, row["rounds"])
        row["resumable"] = resumable(row) is None
        row["model_versions"] = [
            {"name": v["name"], "version": v["version"],
             "evaluations": registry.list_evaluations(v["name"], v["version"], kind=None)}
            for v in registry.list_model_versions(row["name"]) if v["session_id"] == session_id]
    if as_json:
        emit_json(row)
        return
    for key in ("id", "name", "status", "backend", "rounds_completed", "rounds_planned", "created_at",
                "finished_at", "error"):
        click.echo(f"{key:17} {row.get(key) if row.get(key) is not None else '-'}")
    if row["status"] != "finished":
        click.echo(f"{'resumable':17} {_resume_hint(row)}")
    for site, q in row["quarantined"].items():
        click.echo(f"{'quarantined':17} {site} since round {q['round']} ({q['failures']} failed rounds in a row: "
                   f"{q['reason']})")
    if row["spec"].get("plan_id"):
        click.echo(f"{'plan':17} {row['spec']['plan_id']}")
    privacy = row.get("privacy") or {}
    if privacy.get("unit"):
        click.echo(f"{'unit of privacy':17} {privacy['unit']} ({privacy.get('clients', '?')} clients; sampling "
                   f"{privacy.get('sampling', {}).get('mode', '-')})")
    for r in row["rounds"]:
        ok = sum(1 for p in r["participants"] if p["status"] == "ok")
        eps = f"  eps {r['epsilon']:.3g}" if r.get("epsilon") is not None else ""
        if r.get("epsilon_pld") is not None:
            eps += f" (pld {r['epsilon_pld']:.3g})"
        clients = f"  clients {r['clients']}" if r.get("clients") is not None else ""
        click.echo(f"  round {r['round_num']:>3}  sites {ok}/{len(r['participants'])}{clients}  "
                   f"{r['duration_s']:.2f}s{eps}  {_metrics_line(train_metrics(r['metrics']))}")
    for version in row["model_versions"]:
        click.echo(f"model {version['name']}:{version['version']}")
        for evaluation in version["evaluations"]:
            where = "all held-out data" if evaluation.get("kind") == "overall" else evaluation["dataset"]
            click.echo(f"  evaluation, {where}: {_metrics_line(evaluation['metrics'])}")


@session.command("report")
@click.argument("session_id")
@click.option("--out", "out_dir", required=True, type=click.Path(),
              help="Directory for report.md and its PNG plots (created if missing).")
@registry_option
@output_options
def report(session_id: str, out_dir: str, registry_path: str, as_json: bool) -> None:
    """Write a session's report: PNG plots of its training metrics, epsilon and sites' times over
    rounds, and report.md (spec, sites, dataset versions, every round, privacy, evaluation per dataset
    and overall, the model version's lineage) embedding them. Reads only the registry.

    \b
    Example:
        tffprod session report s-20261125-183000-ab12 --out report/
    """
    from tffprod.sessions.report import write_report

    with user_errors(), open_registry(registry_path) as registry:
        written = write_report(session_id, registry=registry, out_dir=Path(out_dir))
    if as_json:
        emit_json(written)
        return
    click.echo(f"session {session_id}: report written to {written['report']}")
    for path in written["files"][:-1]:
        click.echo(f"  {path}")


def _resume_hint(row: dict) -> str:
    from tffprod.sessions.resume import resumable

    reason = resumable(row)
    if reason:
        return f"no: {reason}"
    gone = " (its coordinator is gone)" if row["status"] == "running" else ""
    return f"yes{gone}: tffprod session resume {row['id']}"


@session.command("resume")
@click.argument("session_id")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False),
              help="The approved plan the session was run from.")
@click.option("--backend", type=click.Choice(["local", "remote"]), help="Where site computations run (default: "
              "the session's).")
@click.option("--force", is_flag=True, help="Take over a session whose coordinator ran on another host and is "
              "known to be dead (this host cannot check).")
@registry_option
@log_level_option
@output_options
def resume(session_id: str, plan_path: Optional[str], backend: Optional[str], force: bool, registry_path: str,
           log_level: str, as_json: bool) -> None:
    """Continue a session that failed, was cancelled or whose coordinator died, after its last
    committed round.

    \b
    Example:
        tffprod session resume s-20261125-183000-ab12
    """
    configure_logging(log_level)
    with user_errors():
        from tffprod.backends import create_backend
        from tffprod.cli.progress import round_progress
        from tffprod.sessions.resume import resume_session

        with open_registry(registry_path) as registry, round_progress(as_json=as_json) as progress:
            backend = backend or registry.get_session(session_id)["backend"]
            result = resume_session(session_id, registry=registry, backend=create_backend(backend, registry=registry),
                                    progress=progress, plan_path=plan_path, force=force)
    _report(result, as_json)


@session.command("cancel")
@click.argument("session_id")
@registry_option
@output_options
def cancel(session_id: str, registry_path: str, as_json: bool) -> None:
    """Stop a running session at its next round boundary; its last state is kept.

    The session can then be resumed ('tffprod session resume') or its last state
    exported ('tffprod session export').

    \b
    Example:
        tffprod session cancel s-20261125-183000-ab12
    """
    from tffprod.sessions.resume import cancel_session

    with user_errors(), open_registry(registry_path) as registry:
        row = cancel_session(session_id, registry=registry)
    if as_json:
        emit_json(row)
    elif row["status"] == "cancelled":
        click.echo(f"session {session_id} cancelled after round {row['rounds_completed']}")
    else:
        click.echo(f"session {session_id}: cancel requested; it stops after its current round")


@session.command("export")
@click.argument("session_id")
@click.option("--out", "out_dir", required=True, type=click.Path(),
              help="New directory for the SavedModel (or a .keras file path with --format keras).")
@click.option("--format", "fmt", type=click.Choice(["savedmodel", "keras"]), default="savedmodel",
              show_default=True)
@registry_option
@output_options
def export(session_id: str, out_dir: str, fmt: str, registry_path: str, as_json: bool) -> None:
    """Export the model of a session's last committed round (e.g. of a cancelled session).

    The layout is model export's: OUT is the SavedModel itself (tf.saved_model.load(OUT)),
    with model_card.json and model_card.md inside it.

    \b
    Example:
        tffprod session export s-20261125-183000-ab12 --out model/
    """
    with user_errors():
        from tffprod.sessions.resume import export_session

        with open_registry(registry_path) as registry:
            result = export_session(session_id, registry=registry, out_dir=Path(out_dir), fmt=fmt,
                                    say=lambda message: say(message, as_json=as_json))
    if as_json:
        emit_json(result)
    else:
        click.echo(f"session {session_id} round {result['round']} exported to {result['path']}")

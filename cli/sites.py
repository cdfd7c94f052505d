"""``tffprod site``: run a site (its gateway and worker) and manage sites."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.logs import configure_logging, log_level_option
from tffprod.cli.options import emit_json, open_registry, output_options, registry_option, table


@click.group()
def site() -> None:
    """Run a site (serve), or manage the sites this coordinator trains with.

    \b
    Example:
        tffprod site serve --config site.toml
        tffprod site add hospital-a --address 127.0.0.1:7001 --ca ca.crt --cert c.crt --key c.key --token-file t
    """


@site.command("serve")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Site config (TOML).")
@log_level_option
@output_options
def serve(config_path: str, log_level: str, as_json: bool) -> None:
    """Serve this site's datasets until SIGTERM or Ctrl-C.

    Checks every dataset file of the catalog, starts the supervised worker on
    loopback and the gateway on the public address, then prints one line (or
    JSON with --json) once the gateway accepts calls; STATE_DIR/site.json holds
    the same information while the site runs.

    \b
    Example:
        tffprod site serve --config site.toml
        tffprod site serve --config site.toml --json
        TFFPROD_LOG_LEVEL=info tffprod site serve --config site.toml
    """
    from tffprod.executors.config import load_site_config
    from tffprod.executors.serve import serve_site

    def ready(info: dict[str, Any]) -> None:
        if as_json:
            emit_json(info)
        else:
            click.echo(_ready_line(info))

    configure_logging(log_level)
    with user_errors():
        config = load_site_config(config_path)
        reason = serve_site(config, ready=ready)
    if not as_json:
        click.echo(f"site {config.name} stopped on {reason}; its worker is down")


def _ready_line(info: dict[str, Any]) -> str:
    """``site hospital-a serving on 127.0.0.1:7001 (mTLS; 2 datasets)``."""
    mode = "mTLS" if info["tls"] else "plaintext, insecure_dev"
    count = len(info["datasets"])
    return f"site {info['site']} serving on {info['address']} ({mode}; {count} dataset{'' if count == 1 else 's'})"


@site.command("add")
@click.argument("name")
@click.option("--address", required=True, help="The site gateway's HOST:PORT.")
@click.option("--ca", required=True, type=click.Path(dir_okay=False),
              help="CA certificate that signed the site's certificate.")
@click.option("--cert", required=True, type=click.Path(dir_okay=False), help="This coordinator's certificate.")
@click.option("--key", required=True, type=click.Path(dir_okay=False), help="This coordinator's private key.")
@click.option("--token-file", required=True, type=click.Path(dir_okay=False),
              help="File holding the bearer token for this site.")
@registry_option
@output_options
def add(name: str, address: str, ca: str, cert: str, key: str, token_file: str, registry_path: str,
        as_json: bool) -> None:
    """Record site NAME and how this coordinator reaches it (secrets stay in their files).

    \b
    Example:
        tffprod site add hospital-a --address 127.0.0.1:7001 --ca certs/ca.crt \\
            --cert certs/coordinator.crt --key certs/coordinator.key --token-file tokens/hospital-a
    """
    from tffprod.sites.admin import add_site

    with user_errors(), open_registry(registry_path) as registry:
        row = add_site(registry, name, address=address, ca=Path(ca), cert=Path(cert), key=Path(key),
                       token_file=Path(token_file))
    if as_json:
        emit_json(row)
    else:
        click.echo(f"site {row['name']} at {row['address']}")


@site.command("check")
@click.argument("name", required=False)
@click.option("--all", "check_all", is_flag=True, help="Check every registered site.")
@click.option("--wait", "wait_s", type=click.FloatRange(0), default=0, metavar="SECONDS",
              help="Keep trying a site that does not answer yet (starting) for up to SECONDS.")
@registry_option
@output_options
def check(name: Optional[str], check_all: bool, wait_s: float, registry_path: str, as_json: bool) -> None:
    """Prove the TLS handshake, the token, version compatibility and the catalog of a site.

    \b
    Example:
        tffprod site check hospital-a
        tffprod site check hospital-a --wait 60     # just started: wait for it
        tffprod site check --all --json
    """
    from tffprod.errors import SiteCheckError
    from tffprod.sites.admin import check_site

    if bool(name) == check_all:
        raise click.UsageError("give a site NAME or --all")
    results = []
    with user_errors(), open_registry(registry_path) as registry:
        names = [row["name"] for row in registry.list_sites() if row.get("address")] if check_all else [name]
        for site_name in names:
            try:
                results.append(check_site(registry, site_name, wait_s=wait_s))
            except SiteCheckError as e:
                if not check_all:
                    raise
                results.append({"site": site_name, "ok": False, "problems": [str(e)]})
    if as_json:
        emit_json(results if check_all else results[0])
    else:
        for r in results:
            state = "ok" if r["ok"] else "PROBLEM"
            catalog = f"  datasets: {', '.join(r.get('catalog', []))}" if r.get("catalog") is not None else ""
            click.echo(f"{r['site']}: {state}{catalog}")
            for problem in r["problems"]:
                click.echo(f"  - {problem}")
            for warning in r.get("warnings", []):
                click.secho(f"  WARNING: {warning}", fg="red", bold=True)
    if not all(r["ok"] for r in results):
        raise SystemExit(8)


@site.command("sync")
@click.argument("name")
@registry_option
@output_options
def sync(name: str, registry_path: str, as_json: bool) -> None:
    """Import site NAME's catalog (names, schemas, counts, hashes; never paths) into the registry.

    \b
    Example:
        tffprod site sync hospital-a
    """
    from tffprod.sites.admin import sync_site

    with user_errors(), open_registry(registry_path) as registry:
        rows = sync_site(registry, name)
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["ref", "format", "num_examples"])


@site.command("list")
@registry_option
@output_options
def list_(registry_path: str, as_json: bool) -> None:
    """List registered sites.

    \b
    Example:
        tffprod site list --json
    """
    with user_errors(), open_registry(registry_path) as registry:
        rows = registry.list_sites()
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["name", "address", "updated_at"])


@site.command("token-hash")
@click.argument("token_file", type=click.Path(exists=True, dir_okay=False))
def token_hash(token_file: str) -> None:
    """Print the SHA-256 of the bearer token in TOKEN_FILE, for a site config's token_sha256.

    \b
    Example:
        tffprod site token-hash tokens/hospital-a
    """
    from tffprod.executors.config import hash_token_file

    with user_errors():
        click.echo(hash_token_file(token_file))


@site.command("kit")
@click.argument("name")
@click.option("--ca", "ca_dir", required=True, type=click.Path(file_okay=False),
              help="The federation's CA directory (from 'tffprod certs init'); its key stays there.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="The kit's folder: new or empty (see --force).")
@click.option("--host", "hosts", multiple=True, metavar="HOST",
              help="DNS name or IP address coordinators reach the site at: the certificate's SANs (repeatable; "
                   "default: localhost, 127.0.0.1).")
@click.option("--token-file", "token_files", multiple=True, metavar="IDENTITY=FILE",
              help="A coordinator that may call the site: its certificate's CN and the file with its bearer token; "
                   "only the token's SHA-256 goes into the kit (repeatable).")
@click.option("--token-sha256", "token_hashes", multiple=True, metavar="IDENTITY=SHA256",
              help="As --token-file, with the token's SHA-256 ('tffprod site token-hash FILE') (repeatable).")
@click.option("--listen", default="0.0.0.0:7001", show_default=True,
              help="The gateway's address in site.toml (port 0: pick one at start).")
@click.option("--federation", "federations", multiple=True, metavar="NAME",
              help="Serve only this federation's sessions (repeatable; default: any).")
@click.option("--days", default=825, show_default=True, type=click.IntRange(min=1),
              help="The certificate's validity in days.")
@click.option("--user", default="tffprod", show_default=True,
              help="The system user the kit's systemd unit runs the site as.")
@click.option("--source", type=click.Path(file_okay=False),
              help="The tffprod checkout to build the wheel from and pin uv.lock of (default: the one this "
                   "tffprod runs from).")
@click.option("--force", is_flag=True, help="Replace --out even if it is not empty.")
@output_options
def kit(name: str, ca_dir: str, out_dir: str, hosts: tuple[str, ...], token_files: tuple[str, ...],
        token_hashes: tuple[str, ...], listen: str, federations: tuple[str, ...], days: int, user: str,
        source: Optional[str], force: bool, as_json: bool) -> None:
    """Write site NAME's startup kit: certificate, site.toml, tffprod wheel, pinned requirements, install.sh.

    The kit holds the site's key (0600) and certificate issued by the CA, the CA
    certificate, a site.toml complete but for its datasets (the values marked
    FILL-IN) with the coordinators' token hashes, the tffprod wheel, the pinned
    requirements of uv.lock with TFF's jax/jaxlib pin overridden, install.sh (one
    command: a venv with all of it on Linux with Python 3.11), a systemd unit and
    README.txt. It is written whole or not at all.

    \b
    Example:
        tffprod site kit hospital-a --ca pki/ca --out kits/hospital-a --host hospital-a.example.org \\
            --token-file coordinator=tokens/hospital-a --federation hospitals
    """
    from tffprod.executors.kit import coordinator_tokens, make_site_kit
    from tffprod.security.certs import DEFAULT_HOSTS

    with user_errors():
        coordinators = coordinator_tokens(token_files=token_files, token_hashes=token_hashes)
        made = make_site_kit(name, ca_dir=ca_dir, out_dir=out_dir, coordinators=coordinators,
                             hosts=hosts or DEFAULT_HOSTS, days=days, listen=listen, federations=federations,
                             user=user, source=source, force=force)
    if as_json:
        emit_json(made.to_dict())
        return
    cert = made.certificate
    click.echo(f"kit of site {made.site}: {made.path} ({len(made.files)} files)")
    click.echo(f"  certificate: CN {cert['subject']}, hosts {', '.join(cert['sans'])}, "
               f"valid until {cert['not_after'][:10]}")
    click.echo(f"  coordinators: {', '.join(made.coordinators)} (token hashes only)")
    if not hosts:
        click.echo(f"  note: the certificate names only {', '.join(DEFAULT_HOSTS)}: coordinators on other machines "
                   "need --host with the name they reach the site at")
    click.echo("next: copy the folder securely (it holds the site's key) to the site's machine and run ./install.sh "
               "there (README.txt: the 3 steps)")


@site.group("plan")
def plan_group() -> None:
    """Review session plans before approving them.

    \b
    Example:
        tffprod site plan show digits.plan.json
        tffprod site approve digits.plan.json --config site.toml
    """


@plan_group.command("show")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@output_options
def plan_show(plan_path: str, as_json: bool) -> None:
    """Verify PLAN and show what it would run: computations and hashes, task, DP, datasets, rounds.

    \b
    Example:
        tffprod site plan show digits.plan.json
    """
    from tffprod.protocol.plan_document import load_plan

    with user_errors():
        summary = load_plan(plan_path).summary()
    if as_json:
        emit_json(summary)
        return
    session, privacy = summary["session"], summary["privacy"]
    click.echo(f"plan {summary['plan_id']} (verified: every hash matches its content)")
    if summary.get("model"):
        model = summary["model"]
        click.echo(f"  evaluation of model {model.get('name')}:{model.get('version')} (each dataset once), "
                   f"created {summary['created_at']}")
    else:
        click.echo(f"  session {session['name']}: {session['rounds']} rounds, seed {session['seed']}, "
                   f"created {summary['created_at']}")
    task = summary["task"]
    click.echo(f"  task {task.get('task') or task.get('computation') or (summary.get('spec') or {}).get('task')}")
    if privacy.get("mechanism", "none") == "none" and isinstance(privacy.get("evaluation"), dict):
        from tffprod.privacy.terms import evaluation_line

        click.echo(f"  privacy: {evaluation_line(privacy)}")
    elif privacy.get("mechanism", "none") == "none":
        click.echo("  privacy: NO differential privacy")
    else:
        click.echo(f"  privacy: {privacy['mechanism']}, noise multiplier {privacy['noise_multiplier']:g}, clip "
                   f"{privacy['clip']:g}, sampling rate {privacy['sampling_rate']:g}, delta {privacy['delta']:g}; "
                   f"planned epsilon {privacy['planned_epsilon']:.4g}; unit of privacy: {privacy['unit']}")
        from tffprod.privacy.terms import evaluation_line, placement_line

        click.echo(f"  {placement_line(privacy, int(session.get('rounds', 0)))}")
        if any(d.get("role") == "eval" for d in summary.get("datasets", [])):
            click.echo(f"  {evaluation_line(privacy)}")
    click.echo("  datasets:")
    for d in summary["datasets"]:
        click.echo(f"    {d['role']:5} {d['site']}/{d['name']} "
                   f"({d['num_examples']} examples, {d['content_hash'][:19]})")
    click.echo("  computations run at sites (each site returns only their aggregate results):")
    for c in summary["computations"]:
        click.echo(f"    {c['role']:5} sha256 {c['sha256']} ({c['size_bytes']} bytes)")
        click.echo(f"          {c['type_signature']}")
        state = c.get("state") or {}
        click.echo(f"          the coordinator sends only: {', '.join(state.get('free') or []) or 'nothing'}")
        for pinned in state.get("pinned") or []:
            value = pinned["value"]
            shown = f"{value:.7g}" if isinstance(value, float) else repr(value)
            click.echo(f"          fixed by the plan: {pinned['path']} = {shown}")
        if c.get("bound"):
            bound = c["bound"]
            click.echo(f"          released only if the L2 norm of result {', '.join(bound['result'])} is at most "
                       f"{bound['l2_norm_per_client']:g} per client")


@site.command("approve")
@click.argument("plan_path", metavar="PLAN", type=click.Path(dir_okay=False))
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Site config (TOML).")
@output_options
def approve(plan_path: str, config_path: str, as_json: bool) -> None:
    """Approve PLAN at this site: its gateway then releases exactly the plan's computations.

    Verifies every hash, that the plan names this site and only datasets it serves
    with their current content, and that no computation returns per-client values.
    Takes effect on a running site without a restart; recorded in the audit log.

    \b
    Example:
        tffprod site approve digits.plan.json --config site.toml
    """
    from tffprod.executors.approvals import approve_at_site
    from tffprod.executors.config import load_site_config

    with user_errors():
        config = load_site_config(config_path)
        approval = approve_at_site(plan_path, config)
    if as_json:
        emit_json(approval.to_dict())
        return
    click.echo(f"site {config.name} approved plan {approval.plan_id}: {approval.rounds} rounds on "
               f"{', '.join(approval.datasets)}")
    if config.computations != "approved":
        click.echo(f"WARNING: {config_path} sets computations = \"any\": this site runs ANY computation; "
                   "approval has no effect until it is \"approved\"", err=True)


@site.command("ledger")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Site config (TOML).")
@output_options
def ledger(config_path: str, as_json: bool) -> None:
    """Show this site's own privacy ledger: approved plans, rounds served, budget spent and left.

    \b
    Example:
        tffprod site ledger --config site.toml --json
    """
    from tffprod.executors.approvals import ApprovalStore
    from tffprod.executors.config import load_site_config
    from tffprod.executors.ledger import LEDGER_FILE, SiteLedger
    from tffprod.privacy.terms import evaluation_epsilon, plan_epsilon

    with user_errors():
        config = load_site_config(config_path)
        approvals = ApprovalStore(config.state_dir).all()
        site_ledger = SiteLedger(config.state_dir / LEDGER_FILE, site=config.name,
                                 budgets={name: decl.budget for name, decl in config.datasets.items()})
        try:
            plans: list[dict[str, Any]] = []
            for a in approvals:
                served = site_ledger.served(a.plan_id)
                trained_with_dp = a.privacy.get("mechanism", "none") != "none"
                epsilon, delta = plan_epsilon(a.privacy, served) if trained_with_dp else (None, None)
                evaluation = a.privacy.get("evaluation") if isinstance(a.privacy.get("evaluation"), dict) else None
                plans.append({"plan_id": a.plan_id, "session": a.session, "approved_at": a.approved_at,
                              "rounds_approved": a.rounds, "rounds_served": served, "datasets": list(a.datasets),
                              "epsilon": epsilon, "delta": delta, "coordinator": a.coordinator,
                              "evaluation_epsilon": evaluation_epsilon(a.privacy)[0] if evaluation else None})
            budgets = site_ledger.report(approvals)
        finally:
            site_ledger.close()
    if as_json:
        emit_json({"site": config.name, "plans": plans, "budgets": budgets})
        return
    click.echo(f"site {config.name}: {len(plans)} approved plan(s)")
    for p in plans:
        spend = f"epsilon {p['epsilon']:.4g}" if p["epsilon"] is not None else "training without DP"
        if p["evaluation_epsilon"] is not None:
            spend += f", evaluation noised (epsilon {p['evaluation_epsilon']:.4g} per dataset)"
        elif p["epsilon"] is None:
            spend = "no DP (releases un-noised)"
        click.echo(f"  {p['plan_id'][:16]} {p['session']}: {p['rounds_served']}/{p['rounds_approved']} rounds served, "
                   f"{spend} on {', '.join(p['datasets'])}")
    for b in budgets:
        click.echo(f"  budget {b['dataset']}: spent epsilon {b['spent']['epsilon']:.4g} of {b['budget']['epsilon']:g}, "
                   f"remaining {b['remaining']['epsilon']:.4g}")

"""``tffprod site``: run a site (its gateway and worker) and manage sites."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from tffprod.cli.errors import user_errors
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
@output_options
def serve(config_path: str, as_json: bool) -> None:
    """Serve this site's datasets until SIGTERM or Ctrl-C.

    Checks every dataset file of the catalog, starts the supervised worker on
    loopback and the gateway on the public address, then prints one line (or
    JSON with --json) once the gateway accepts calls; STATE_DIR/site.json holds
    the same information while the site runs.

    \b
    Example:
        tffprod site serve --config site.toml
        tffprod site serve --config site.toml --json
    """
    from tffprod.executors.config import load_site_config
    from tffprod.executors.serve import serve_site

    def ready(info: dict[str, Any]) -> None:
        if as_json:
            emit_json(info)
        else:
            click.echo(_ready_line(info))

    with user_errors():
        serve_site(load_site_config(config_path), ready=ready)


def _ready_line(info: dict[str, Any]) -> str:
    """``site hospital-a serving on 127.0.0.1:7001 (mTLS; 2 datasets)``."""
    mode = "mTLS" if info["tls"] else "plaintext, insecure_dev"
    count = len(info["datasets"])
    return f"site {info['site']} serving on {info['address']} ({mode}; {count} dataset{'' if count == 1 else 's'})"


@site.command("add")
@click.argument("name")
@click.option("--address", required=True, help="The site gateway's HOST:PORT.")
@click.option("--ca", required=True, type=click.Path(dir_okay=False), help="CA certificate that signed the site's certificate.")
@click.option("--cert", required=True, type=click.Path(dir_okay=False), help="This coordinator's certificate.")
@click.option("--key", required=True, type=click.Path(dir_okay=False), help="This coordinator's private key.")
@click.option("--token-file", required=True, type=click.Path(dir_okay=False), help="File holding the bearer token for this site.")
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
    from tffprod.sites import add_site

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
@registry_option
@output_options
def check(name: Optional[str], check_all: bool, registry_path: str, as_json: bool) -> None:
    """Prove the TLS handshake, the token, version compatibility and the catalog of a site.

    \b
    Example:
        tffprod site check hospital-a
        tffprod site check --all --json
    """
    from tffprod.sites import SiteCheckError, check_site

    if bool(name) == check_all:
        raise click.UsageError("give a site NAME or --all")
    results = []
    with user_errors(), open_registry(registry_path) as registry:
        names = [row["name"] for row in registry.list_sites() if row.get("address")] if check_all else [name]
        for site_name in names:
            try:
                results.append(check_site(registry, site_name))
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
    from tffprod.sites import sync_site

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
    from tffprod.executors.config import hash_token

    with user_errors():
        click.echo(hash_token(Path(token_file).read_text().strip()))

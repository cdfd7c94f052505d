"""``tffprod certs``: a private CA and the TLS certificates of sites and coordinators."""

from __future__ import annotations

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.options import emit_json, output_options


@click.group()
def certs() -> None:
    """Create a CA and issue mutual-TLS certificates for sites and coordinators.

    \b
    Example:
        tffprod certs init --out ./pki/ca
        tffprod certs issue hospital-a --ca ./pki/ca --out ./pki/hospital-a --host hospital-a.example.org
        tffprod certs show ./pki/hospital-a/hospital-a.crt
    """


def _files(files) -> dict:
    return {"key": str(files.key), "cert": str(files.cert), "ca_cert": str(files.ca_cert)}


@certs.command("init")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for ca.key and ca.crt.")
@click.option("--name", default="tffprod-ca", show_default=True, help="The CA's common name.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(min=1), help="Validity in days.")
@output_options
def init(out_dir: str, name: str, days: int, as_json: bool) -> None:
    """Create a new CA: ca.key (mode 0600) and ca.crt in the --out directory. Never overwrites.

    \b
    Example:
        tffprod certs init --out ./pki/ca --name acme-federation-ca
    """
    from tffprod.security.certs import init_ca

    with user_errors():
        files = init_ca(out_dir, name=name, days=days)
    if as_json:
        emit_json(_files(files))
    else:
        click.echo(f"CA key:  {files.key} (keep it private)")
        click.echo(f"CA cert: {files.cert} (give it to every site and coordinator)")


@certs.command("issue")
@click.argument("name")
@click.option("--ca", "ca_dir", required=True, type=click.Path(file_okay=False),
              help="CA directory (from 'tffprod certs init').")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for NAME.key, NAME.crt and ca.crt.")
@click.option("--host", "hosts", multiple=True, metavar="HOST",
              help="DNS name or IP address the party is reached at (repeatable; default: localhost, 127.0.0.1).")
@click.option("--days", default=825, show_default=True, type=click.IntRange(min=1), help="Validity in days.")
@output_options
def issue(name: str, ca_dir: str, out_dir: str, hosts: tuple[str, ...], days: int, as_json: bool) -> None:
    """Issue a key and certificate with identity (CN) NAME, for a site or a coordinator.

    The certificate works for both TLS server and client; its SANs are the
    --host values. Writes NAME.key (mode 0600), NAME.crt and a copy of ca.crt
    into --out. Never overwrites.

    \b
    Example:
        tffprod certs issue hospital-a --ca ./pki/ca --out ./pki/hospital-a \\
            --host hospital-a.example.org --host 10.0.0.7
    """
    from tffprod.security.certs import DEFAULT_HOSTS, issue as issue_cert

    with user_errors():
        files = issue_cert(name, ca_dir=ca_dir, out_dir=out_dir, hosts=hosts or DEFAULT_HOSTS, days=days)
    if as_json:
        emit_json(_files(files))
    else:
        click.echo(f"key:     {files.key}")
        click.echo(f"cert:    {files.cert}")
        click.echo(f"CA cert: {files.ca_cert}")


@certs.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@output_options
def show(file: str, as_json: bool) -> None:
    """Show a certificate's identity, issuer, validity, hosts and fingerprint.

    \b
    Example:
        tffprod certs show ./pki/hospital-a/hospital-a.crt --json
    """
    from tffprod.security.certs import describe

    with user_errors():
        info = describe(file)
    if as_json:
        emit_json(info)
        return
    for key in ("subject", "issuer", "not_before", "not_after", "is_ca", "sha256"):
        click.echo(f"{key + ':':<12} {info[key]}")
    click.echo(f"{'sans:':<12} {', '.join(info['sans']) or '-'}")

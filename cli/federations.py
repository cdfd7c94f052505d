"""``tffprod federation``: named groups of sites that train together."""

from __future__ import annotations

import click

from tffprod.cli.errors import user_errors
from tffprod.cli.options import emit_json, open_registry, output_options, registry_option


@click.group()
def federation() -> None:
    """Group sites into federations; a session with 'federation = NAME' uses only their data.

    \b
    Example:
        tffprod federation create hospitals
        tffprod federation add-site hospitals hospital-a
    """


def _show(row: dict, as_json: bool) -> None:
    if as_json:
        emit_json(row)
    else:
        click.echo(f"{row['name']}: {', '.join(row['sites']) or '(no sites)'}")


@federation.command("create")
@click.argument("name")
@registry_option
@output_options
def create(name: str, registry_path: str, as_json: bool) -> None:
    """Create federation NAME (nothing changes if it exists).

    \b
    Example:
        tffprod federation create hospitals
    """
    with user_errors(), open_registry(registry_path) as registry, registry.atomic():
        row = registry.create_federation(name)
        registry.record_action("federation.create", name)
    _show(row, as_json)


@federation.command("add-site")
@click.argument("name")
@click.argument("site")
@registry_option
@output_options
def add_site(name: str, site: str, registry_path: str, as_json: bool) -> None:
    """Add registered SITE to federation NAME.

    \b
    Example:
        tffprod federation add-site hospitals hospital-a
    """
    with user_errors(), open_registry(registry_path) as registry, registry.atomic():
        row = registry.add_federation_site(name, site)
        registry.record_action("federation.add-site", name, {"site": site})
    _show(row, as_json)


@federation.command("remove-site")
@click.argument("name")
@click.argument("site")
@registry_option
@output_options
def remove_site(name: str, site: str, registry_path: str, as_json: bool) -> None:
    """Remove SITE from federation NAME (sessions already run keep their record).

    \b
    Example:
        tffprod federation remove-site hospitals hospital-c
    """
    with user_errors(), open_registry(registry_path) as registry, registry.atomic():
        row = registry.remove_federation_site(name, site)
        registry.record_action("federation.remove-site", name, {"site": site})
    _show(row, as_json)


@federation.command("list")
@registry_option
@output_options
def list_(registry_path: str, as_json: bool) -> None:
    """List federations and their sites.

    \b
    Example:
        tffprod federation list --json
    """
    with user_errors(), open_registry(registry_path) as registry:
        rows = registry.list_federations()
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        _show(row, False)

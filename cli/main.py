"""``tffprod``: the command line, a thin shell over the library.

Nothing on this import path imports TensorFlow; commands that train or
evaluate import it when they run.
"""

from __future__ import annotations

import signal

import click

from tffprod import __version__
from tffprod.cli.audit import audit
from tffprod.cli.certs import certs
from tffprod.cli.datasets import dataset
from tffprod.cli.demo import demo
from tffprod.cli.federations import federation
from tffprod.cli.models import eval_command, model
from tffprod.cli.options import emit_json, open_registry, output_options, registry_option
from tffprod.cli.errors import user_errors
from tffprod.cli.privacy import privacy
from tffprod.cli.sessions import session
from tffprod.cli.sites import site


def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C so workers are stopped
    raise KeyboardInterrupt


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tffprod")
def cli() -> None:
    """Federated learning on TensorFlow Federated, run across real sites.

    \b
    Example:
        tffprod demo --workdir ./demo
        tffprod session run --spec demo/fraud-user-dp.toml
    """
    signal.signal(signal.SIGTERM, _terminate)


@cli.command()
@registry_option
@output_options
def init(registry_path: str, as_json: bool) -> None:
    """Create the registry database (or migrate an existing one).

    \b
    Example:
        tffprod init --registry ./tffprod.db
    """
    with user_errors(), open_registry(registry_path) as registry:
        path = registry.path
    if as_json:
        emit_json({"registry": path})
    else:
        click.echo(f"registry ready: {path}")


cli.add_command(dataset)
cli.add_command(session)
cli.add_command(privacy)
cli.add_command(model)
cli.add_command(eval_command)
cli.add_command(demo)
cli.add_command(site)
cli.add_command(certs)
cli.add_command(audit)
cli.add_command(federation)


if __name__ == "__main__":  # pragma: no cover
    cli()

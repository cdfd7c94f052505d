"""A site's startup kit: one folder with everything a site operator needs to install and run a site.

``tffprod site kit NAME --ca DIR --out OUT`` calls :func:`make_site_kit`, which writes::

    OUT/certs/NAME.key                 the site's private key (mode 0600), issued with tffprod.security.certs
    OUT/certs/NAME.crt, certs/ca.crt   its certificate (CN NAME, SANs from the hosts) and the federation's CA
    OUT/site.toml                      the site config: ready but for its datasets (the values marked FILL-IN);
                                       the coordinators' token hashes, never their tokens
    OUT/tffprod-VERSION-py3-none-any.whl   tffprod, built from the checkout (kit_packages)
    OUT/requirements.txt               the checkout's uv.lock, pinned with hashes, and the wheel with its hash
    OUT/overrides.txt                  TFF's jax/jaxlib pin overridden as the lock does
    OUT/install.sh                     one command: a venv with all of it (kit_install)
    OUT/tffprod-site-NAME.service      a systemd unit: site serve from the venv, as a dedicated user
    OUT/README.txt                     the three steps

Everything is written into a temporary folder beside OUT and renamed into place once complete: a
failure leaves nothing behind, and a non-empty OUT is replaced only with ``force``. Nothing here
imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

from tffprod.config.names import LOWER_NAME, federation_name
from tffprod.config.toml import toml_value
from tffprod.errors import KitError, SpecError
from tffprod.executors import kit_install, kit_packages
from tffprod.executors.config import hash_token_file, load_site_config
from tffprod.security.certs import DEFAULT_HOSTS, describe, issue

PathLike = Union[str, "os.PathLike[str]"]

FILL_IN = "FILL-IN"  # every value of site.toml the operator must set holds this
DEFAULT_LISTEN = "0.0.0.0:7001"
DEFAULT_USER = "tffprod"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclasses.dataclass(frozen=True)
class SiteKit:
    """A written kit: its folder, the files in it (relative paths), the certificate and who may call."""

    path: Path
    site: str
    files: tuple[str, ...]
    certificate: Mapping[str, Any]
    coordinators: Mapping[str, str]
    listen: str
    wheel: Optional[str]

    def to_dict(self) -> dict[str, Any]:
        return {"kit": str(self.path), "site": self.site, "files": list(self.files),
                "certificate": dict(self.certificate), "coordinators": dict(self.coordinators),
                "listen": self.listen, "wheel": self.wheel}


def coordinator_tokens(*, token_files: Sequence[str] = (), token_hashes: Sequence[str] = ()) -> dict[str, str]:
    """Coordinator identity -> SHA-256 of its token, from ``IDENTITY=FILE`` and ``IDENTITY=SHA256`` pairs.

    Raises:
        SpecError: a pair is malformed, a token file cannot be read, a hash is not 64 hex digits, an
            identity is given twice, or no coordinator at all.
    """
    out: dict[str, str] = {}
    for option, pairs in (("--token-file", token_files), ("--token-sha256", token_hashes)):
        for pair in pairs:
            identity, sep, value = pair.partition("=")
            identity = identity.strip()
            if not sep or not identity or not value or not identity.isprintable():
                what = "FILE" if option == "--token-file" else "SHA256"
                raise SpecError(f"{option} {pair!r}: give IDENTITY={what} (IDENTITY: the coordinator "
                                "certificate's CN)")
            if identity in out:
                raise SpecError(f"coordinator {identity!r} is given twice")
            if option == "--token-file":
                out[identity] = hash_token_file(value)
            elif _SHA256.match(value.strip()):
                out[identity] = value.strip().lower()
            else:
                raise SpecError(f"--token-sha256 {pair!r}: the hash must be 64 hex digits "
                                "(tffprod site token-hash TOKEN_FILE prints it)")
    if not out:
        raise SpecError("give the coordinators that may call the site: --token-file IDENTITY=FILE or "
                        "--token-sha256 IDENTITY=SHA256")
    return out


def make_site_kit(
    site: str,
    *,
    ca_dir: PathLike,
    out_dir: PathLike,
    coordinators: Mapping[str, str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 825,
    listen: str = DEFAULT_LISTEN,
    federations: Sequence[str] = (),
    user: str = DEFAULT_USER,
    source: Optional[PathLike] = None,
    build_wheel: bool = True,
    force: bool = False,
) -> SiteKit:
    """Write the startup kit of site ``site`` into ``out_dir`` (see the module docstring).

    Args:
        site: the site's name (its certificate's CN and its config's ``name``).
        ca_dir: the federation's CA folder (``tffprod certs init``); its key stays there.
        out_dir: the kit's folder; it must not exist or be empty, unless ``force``.
        coordinators: who may call: certificate identity -> SHA-256 of its bearer token
            (:func:`coordinator_tokens`).
        hosts: the DNS names and IP addresses coordinators reach the site at (the certificate's SANs).
        days: the certificate's validity.
        listen: the gateway's address in ``site.toml`` (port 0 = pick one when it starts).
        federations: serve only these federations' sessions (empty: any).
        user: the system user the systemd unit runs the site as.
        source: the tffprod checkout to build the wheel and export the lock from (default: the one
            this tffprod is imported from).
        build_wheel: False leaves the wheel out (and its line of requirements.txt): only for tests of
            the rest, the kit then does not install.
        force: replace a non-empty ``out_dir``.

    Returns:
        The written kit.

    Raises:
        SpecError: a bad site name, user, listen address, federation or coordinator.
        CertError: ``ca_dir`` is not a usable CA, or a host or ``days`` is invalid.
        KitError: ``out_dir`` is taken, or there is no checkout to build from, or the build or export failed.
    """
    if not isinstance(site, str) or not LOWER_NAME.match(site) or len(site) > 64 or site == "ca":
        raise SpecError(f"invalid site name {site!r}: use up to 64 lowercase letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit")
    if not _USER.match(user):
        raise SpecError(f"invalid user {user!r}: a system user name (lowercase letters, digits, '_', '-')")
    federations = [federation_name(f) for f in federations]
    if not coordinators:
        raise SpecError("a site kit needs at least one coordinator that may call the site")
    out = Path(out_dir).expanduser().absolute()
    _check_out_dir(out, force=force)
    checkout = kit_packages.find_checkout(source)
    uv = kit_packages.find_uv(checkout)

    with _staging(out, force=force) as kit:
        certs = issue(site, ca_dir=ca_dir, out_dir=kit / "certs", hosts=hosts, days=days)
        certificate = describe(certs.cert)
        (kit / "site.toml").write_text(
            site_toml(site, listen=listen, coordinators=coordinators, federations=federations,
                      certificate=certificate), encoding="utf-8")
        _check_site_toml(kit)
        requirements = kit_packages.export_requirements(checkout, uv)
        (kit / "overrides.txt").write_text(_OVERRIDES_HEADER + kit_packages.pinned_overrides(checkout, requirements),
                                           encoding="utf-8")
        wheel = f"tffprod-{checkout.version}-py3-none-any.whl"
        wheel_line = ""
        if build_wheel:
            built = kit_packages.build_wheel(checkout, kit)
            wheel = built.name
            wheel_line = (f"# tffprod itself: the wheel in this kit\n./{wheel} \\\n"
                          f"    --hash=sha256:{kit_packages.sha256_file(built)}\n")
        (kit / "requirements.txt").write_text(
            _REQUIREMENTS_HEADER.format(site=site, lock=checkout.lock_sha256[:16]) + requirements + wheel_line,
            encoding="utf-8")
        script = kit / "install.sh"
        script.write_text(kit_install.install_script(site, wheel=wheel, user=user), encoding="utf-8")
        script.chmod(0o755)
        (kit / kit_install.unit_name(site)).write_text(
            kit_install.systemd_unit(site, kit_dir=kit_install.kit_prefix(site), user=user), encoding="utf-8")
        (kit / "README.txt").write_text(
            readme(site, certificate=certificate, listen=listen, user=user, wheel=wheel,
                   made=datetime.date.today().isoformat()), encoding="utf-8")
        files = tuple(sorted(p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file()))
    return SiteKit(path=out, site=site, files=files, certificate=certificate, coordinators=dict(coordinators),
                   listen=listen, wheel=wheel if build_wheel else None)


# ---------------------------------------------------------------- site.toml


def site_toml(site: str, *, listen: str, coordinators: Mapping[str, str], federations: Sequence[str],
              certificate: Mapping[str, Any]) -> str:
    """The kit's ``site.toml``: complete but for its datasets, whose values hold ``FILL-IN``."""
    q = toml_value
    lines = [
        f"# Site config of site {site}, from its kit. Start it with: tffprod site serve --config site.toml",
        f"# Set the values marked {FILL_IN} (the datasets, at the end); everything else is ready.",
        "# Relative paths are relative to this file's folder.",
        "",
        _line(f"name = {q(site)}"),
        _line(f"listen = {q(listen)}", f"the gateway; coordinators reach it at {_address(certificate, listen)}"),
        _line('state_dir = "state"', "audit log, approvals and privacy ledger (created)"),
        _line('computations = "approved"', "run only plans approved here (tffprod site approve PLAN)"),
    ]
    if federations:
        lines.append(_line(f"federations = {q(list(federations))}", "serve only these federations' sessions"))
    lines += [
        "",
        _line("[tls]", f"issued by the federation's CA for {', '.join(certificate['sans'])}"),
        _line(f"cert = {q(f'certs/{site}.crt')}"),
        _line(f"key = {q(f'certs/{site}.key')}", "mode 0600: it never leaves this machine"),
        _line('ca = "certs/ca.crt"', "only certificates of this CA may call"),
    ]
    for identity, digest in coordinators.items():
        lines += [
            "",
            _line("[[coordinators]]", "who may call: its certificate's CN and its token's SHA-256"),
            _line(f"identity = {q(identity)}"),
            _line(f"token_sha256 = {q(digest)}"),
        ]
    lines += [
        "",
        f"# {FILL_IN}: one [datasets.NAME] table per data file this site serves; coordinators name it {site}/NAME.",
        "[datasets.train]",
        _line(f'path = "data/{FILL_IN}.csv"', f"{FILL_IN}: the data file (.csv or .tfrecord)"),
        _line(f'schema_file = "{FILL_IN}-schema.json"', f"{FILL_IN}: its schema; print it with"),
        _line("", "tffprod dataset infer-schema data/FILE.csv --label COLUMN > schema.json"),
        _line("", 'or instead: task = "module:task" (the task the data scientist wrote)'),
        _line('# client_id = "patient_id"', "optional: the column naming whose row it is (user-level DP)"),
        _line("# budget = { epsilon = 8.0, delta = 1e-5 }", "optional: its privacy budget"),
        "",
    ]
    return "\n".join(lines)


def _line(code: str, comment: str = "") -> str:
    return f"{code:<39} # {comment}" if comment else code


def _address(certificate: Mapping[str, Any], listen: str) -> str:
    port = listen.rpartition(":")[2]
    return f"{certificate['sans'][0]}:{port}" if port != "0" else f"{certificate['sans'][0]} (the port it prints)"


def _check_site_toml(kit: Path) -> None:
    """Load the kit's site.toml as the site will, with its datasets filled in: all but the datasets must hold.

    Raises:
        SpecError: what the loader says about it (a bad listen address, federation, coordinator, ...).
    """
    probe = kit / ".probe"
    probe.mkdir()
    try:
        (probe / "schema.json").write_text('{"features": [{"name": "x", "dtype": "float32", "shape": []}], '
                                           '"label": {"name": "y", "dtype": "int64", "shape": []}}')
        filled = (kit / "site.toml").read_text(encoding="utf-8").replace(f"data/{FILL_IN}.csv", "data.csv")
        filled = filled.replace(f"{FILL_IN}-schema.json", ".probe/schema.json")
        probe_toml = kit / ".probe.toml"
        probe_toml.write_text(filled, encoding="utf-8")
        try:
            load_site_config(probe_toml)
        except SpecError as e:
            raise SpecError(f"site.toml: {str(e).removeprefix(f'{probe_toml}: ')}") from None
    finally:
        shutil.rmtree(probe, ignore_errors=True)
        (kit / ".probe.toml").unlink(missing_ok=True)


# ---------------------------------------------------------------- the folder


def _check_out_dir(out: Path, *, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise KitError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise KitError(f"{out} exists and is not empty: choose another --out, or --force to replace it")


@contextlib.contextmanager
def _staging(out: Path, *, force: bool) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed to ``out`` when the block completes, removed if it fails
    (with any parent folder it made)."""
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.kit-", dir=out.parent))
    except OSError as e:
        raise KitError(f"cannot write a kit beside {out}: {e.strerror or e}") from None
    old = None
    try:
        yield tmp
        tmp.chmod(0o755)
        if out.exists():
            _check_out_dir(out, force=force)  # the same check again: it may have filled meanwhile
            old = out.with_name(f"{tmp.name}.old")
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException as e:
        if old is not None and not out.exists():
            os.rename(old, out)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in made:
            with contextlib.suppress(OSError):
                parent.rmdir()
        if isinstance(e, OSError):
            raise KitError(f"cannot write the kit {out}: {e.strerror or e}") from None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- the text files

_REQUIREMENTS_HEADER = """\
# Every package site {site} installs, pinned with its hashes: tffprod's uv.lock (sha256 {lock}...),
# exported with: uv export --frozen --no-dev --no-emit-project. install.sh installs it with
#   uv pip install --require-hashes --override overrides.txt -r requirements.txt
"""

_OVERRIDES_HEADER = """\
# TFF 0.87.0 pins jaxlib==0.4.14, which PyPI no longer serves: tffprod's lock overrides the pin
# ([tool.uv] override-dependencies in its pyproject.toml), and so does install.sh.
"""


def readme(site: str, *, certificate: Mapping[str, Any], listen: str, user: str, wheel: str, made: str) -> str:
    """The kit's README.txt: what is in it and the three steps."""
    prefix, unit = kit_install.kit_prefix(site), kit_install.unit_name(site)
    here = "\n".join(f"  {name:<36}{what}" for name, what in (
        (f"certs/{site}.key", "the site's private key (mode 0600): it never leaves this machine"),
        (f"certs/{site}.crt", f"its certificate: CN {site}, valid until {certificate['not_after'][:10]}"),
        ("certs/ca.crt", "the federation's CA: only certificates it signed may call the site"),
        ("site.toml", "the site config, with the coordinators' token hashes (never their tokens)"),
        (wheel, "tffprod"),
        ("requirements.txt", "every package pinned with its hash (tffprod's uv.lock), and the wheel"),
        ("overrides.txt", "TFF's jax/jaxlib pin overridden, as tffprod's lock does"),
        ("install.sh", "the one command of step 1"),
        (unit, "the systemd unit of step 3"),
    ))
    return f"""\
Startup kit of tffprod site {site} (made {made})

On the site's machine: Linux, Python 3.11 (with venv), access to PyPI.

1. Install. Copy this folder to the site's machine over a secure channel (it holds the site's
   private key), e.g. to {prefix}, and run there
       ./install.sh
   It installs tffprod and every dependency, each checked against its hash, into ./venv,
   and prints the next step. Running it again is safe: it repairs, and changes nothing else.

2. Fill in site.toml: the values marked {FILL_IN}, i.e. the data files this site serves and their
   schemas ([datasets.NAME] tables). Then start the site by hand to check it (Ctrl-C stops it):
       ./venv/bin/tffprod site serve --config site.toml
   It prints "site {site} serving on ..." once coordinators can call it.

3. Run it as a service (as root; the unit names the folder install.sh ran in):
       useradd --system --home-dir {prefix} --shell /usr/sbin/nologin {user}
       chown -R {user}: certs state site.toml     # and let it read the data files
       cp {unit} /etc/systemd/system/
       systemctl daemon-reload && systemctl enable --now {unit}
       journalctl -u {unit} -f
   Approve a coordinator's plan as that user, e.g.
       sudo -u {user} ./venv/bin/tffprod site approve PLAN.json --config site.toml

Coordinators reach the site at {_address(certificate, listen)} (its certificate names \
{", ".join(certificate['sans'])}).

What is here:
{here}
"""

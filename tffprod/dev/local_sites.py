"""A federation of real site processes on this machine, for the demo and tests.

It issues a CA and certificates, writes one site config per site
(``WORKDIR/sites/NAME/site.toml``) with a bearer token per site, starts each
site as its own ``tffprod site serve`` process (gateway + supervised worker,
mTLS on loopback), and registers the sites with a coordinator registry. Every
process it starts, it stops. The files it leaves let an operator start the
same deployment by hand.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from tffprod.errors import FederationError
from tffprod.workers.process import free_port

if TYPE_CHECKING:
    from tffprod.registry.protocol import DatasetRow, RegistryStore

log = logging.getLogger(__name__)

COORDINATOR = "coordinator"


def _tffprod_executable() -> str:
    candidate = Path(sys.executable).with_name("tffprod")
    return str(candidate) if candidate.exists() else "tffprod"


class LocalFederation:
    """Sites as separate ``tffprod site serve`` processes on loopback, with mTLS.

    Args:
        workdir: where certificates, tokens and site configs are written.
        datasets: site name -> dataset name -> ``{"path": ..., "task": "module:attr"}``
            (or ``"schema_file"``), as in a site config's ``[datasets.NAME]`` table.
        computations: the sites' policy: ``"approved"`` (run only approved plans) or
            ``"any"`` (development only).
        federations: the federations every site serves (None: any).
    """

    def __init__(self, workdir: Path, datasets: Mapping[str, Mapping[str, Mapping[str, Any]]], *,
                 computations: str = "approved", federations: Optional[list[str]] = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.computations = computations
        self.federations = federations
        self.datasets = {site: dict(tables) for site, tables in datasets.items()}
        self.processes: dict[str, subprocess.Popen] = {}
        self.addresses: dict[str, str] = {}

    @property
    def certs_dir(self) -> Path:
        return self.workdir / "certs"

    def site_config_path(self, site: str) -> Path:
        return self.workdir / "sites" / site / "site.toml"

    def token_file(self, site: str) -> Path:
        return self.workdir / "tokens" / site

    def prepare(self) -> None:
        """Issue the CA and certificates, make tokens and write the site configs (idempotent)."""
        from tffprod.security.certs import init_ca, issue

        ca_dir = self.certs_dir / "ca"
        if not (ca_dir / "ca.crt").exists():
            init_ca(ca_dir)
        coordinator_dir = self.certs_dir / COORDINATOR
        if not (coordinator_dir / f"{COORDINATOR}.crt").exists():
            issue(COORDINATOR, ca_dir=ca_dir, out_dir=coordinator_dir)
        for site in self.datasets:
            site_dir = self.site_config_path(site).parent
            cert_dir = site_dir / "certs"
            if not (cert_dir / f"{site}.crt").exists():
                issue(site, ca_dir=ca_dir, out_dir=cert_dir)
            token_file = self.token_file(site)
            if not token_file.exists():
                token_file.parent.mkdir(parents=True, exist_ok=True)
                token_file.write_text(secrets.token_urlsafe(32) + "\n")
                token_file.chmod(0o600)
            self._write_config(site)

    def _write_config(self, site: str) -> None:
        """The site's config, listening on a port free now."""
        from tffprod.executors.config import hash_token, write_site_config

        token = self.token_file(site).read_text().strip()
        write_site_config(self.site_config_path(site), {
            "name": site,
            "listen": f"127.0.0.1:{free_port()}",
            "state_dir": "state",
            "computations": self.computations,
            **({"federations": list(self.federations)} if self.federations else {}),
            "tls": {"cert": f"certs/{site}.crt", "key": f"certs/{site}.key", "ca": "certs/ca.crt"},
            "coordinators": [{"identity": COORDINATOR,
                              "token_sha256": hash_token(token)}],
            "datasets": {name: {k: v if isinstance(v, (Mapping, int, float)) else str(v) for k, v in table.items()}
                         for name, table in self.datasets[site].items()},
        })

    def start(self, timeout_s: float = 120.0) -> dict[str, str]:
        """Start every site process and wait until each gateway accepts calls; returns addresses."""
        try:
            for site in self.datasets:
                self._start_first(site, timeout_s)
        except BaseException:
            self.stop()
            raise
        return dict(self.addresses)

    def _start_first(self, site: str, timeout_s: float, attempts: int = 3) -> None:
        """Start a site the first time; if another process took its port since :meth:`prepare` chose it
        (tests on other workers pick free ports too), on another port, up to ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            try:
                self.start_site(site, timeout_s=timeout_s)
                return
            except FederationError as e:
                if "cannot listen on" not in str(e) or attempt == attempts:
                    raise
                log.warning("site %s: its port was taken; trying another (%s)", site, e)
                self._write_config(site)

    def start_site(self, site: str, *, timeout_s: float = 120.0) -> str:
        """Start (or restart) one site process; returns its address."""
        serve_log = open(self.site_config_path(site).parent / "serve.log", "ab")
        proc = subprocess.Popen(
            [_tffprod_executable(), "site", "serve", "--config", str(self.site_config_path(site)), "--json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=serve_log, start_new_session=True,
        )
        serve_log.close()
        self.processes[site] = proc
        info = self._read_ready(site, proc, timeout_s)
        self.addresses[site] = info["address"]
        return info["address"]

    def _read_ready(self, site: str, proc: subprocess.Popen, timeout_s: float) -> dict:
        import io
        import selectors

        stdout = proc.stdout
        assert isinstance(stdout, io.BufferedReader)  # started with stdout=PIPE, binary and buffered
        selector = selectors.DefaultSelector()
        selector.register(stdout, selectors.EVENT_READ)
        text, deadline = b"", time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if selector.select(timeout=0.5):
                    chunk = stdout.read1(65536)
                    if not chunk:
                        break
                    text += chunk
                    try:
                        return json.loads(text)
                    except json.JSONDecodeError:
                        continue
                elif proc.poll() is not None:
                    break
        finally:
            selector.close()
        self.stop_site(site)
        serve_log = self.site_config_path(site).parent / "serve.log"
        last = serve_log.read_text(errors="replace").strip().splitlines()[-1:] if serve_log.exists() else []
        raise FederationError(f"site {site} did not start: {last[0] if last else 'no output'} (log: {serve_log})")

    def register(self, registry: RegistryStore) -> list[DatasetRow]:
        """Add every site to ``registry`` and import its catalog; returns the dataset rows."""
        from tffprod.sites.admin import add_site, sync_site

        rows = []
        coordinator = self.certs_dir / COORDINATOR
        for site, address in self.addresses.items():
            add_site(registry, site, address=address, ca=coordinator / "ca.crt",
                     cert=coordinator / f"{COORDINATOR}.crt", key=coordinator / f"{COORDINATOR}.key",
                     token_file=self.token_file(site))
            rows.extend(sync_site(registry, site))
        return rows

    def stop_site(self, site: str, *, kill: bool = False, timeout_s: float = 30.0) -> None:
        """Stop one site process (SIGTERM, or SIGKILL with ``kill``); its worker goes with it."""
        proc = self.processes.pop(site, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()

    def stop(self) -> None:
        """Stop every site process this federation started."""
        for site in list(self.processes):
            self.stop_site(site)

    def pids(self) -> dict[str, Optional[int]]:
        return {site: proc.pid for site, proc in self.processes.items()}

    def __enter__(self) -> "LocalFederation":
        self.prepare()
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

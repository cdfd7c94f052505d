"""The local backend: every site simulated by its own worker on this machine.

Each site gets its own ``worker_binary`` on loopback and the coordinator one
more, so a round has exactly the structure of a remote one (per-site part,
merge, coordinator part) and the same code path, only nearer. Data is opened
by the site's worker from the registered file path. Under an approved plan
(``frozen``) each site is simulated on the release path of a real site
(:mod:`tffprod.backends.simulated_site`): datasets are then named as at a site.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Mapping, Optional

from tffprod.backends.base import Backend, SiteTarget, catalog_reference
from tffprod.errors import DatasetError
from tffprod.workers.process import WorkerProcess


class LocalBackend(Backend):
    """Simulated sites, one supervised worker process each."""

    name = "local"

    def __init__(self, *, log_dir: Optional[Path] = None) -> None:
        super().__init__()
        self._log_dir = Path(log_dir) if log_dir else None
        self._workers: dict[str, WorkerProcess] = {}
        self._shards: dict[tuple, list[Path]] = {}
        self._sites: dict[str, Any] = {}  # site -> SimulatedSite, under a plan

    def _open(self, sites: list[SiteTarget]) -> None:
        from tffprod.backends.contexts import channel_context, insecure_channel

        try:
            names = [f"site-{site.name}" for site in sites if site.name not in self._contexts]
            if self._coordinator is None:
                names.append("coordinator")
            # Start every worker before opening any channel: fewer gRPC threads alive while forking.
            started = {name: self._start_worker(name) for name in names}
            for name, worker in started.items():
                if name == "coordinator":
                    self._coordinator = channel_context(insecure_channel(worker.address))
                else:
                    self._contexts[name.removeprefix("site-")] = channel_context(
                        insecure_channel(worker.address), compiler_fn=self.site_compiler)
            if self.frozen is not None:
                self._simulate_sites(sites)
        except BaseException:
            self.close()
            raise

    def _simulate_sites(self, sites: list[SiteTarget]) -> None:
        from tffprod.backends.simulated_site import SimulatedSite

        secure = "secure_aggregation" in self.frozen.plan.privacy
        for site in sites:
            if site.name not in self._sites:
                rows = list({row["name"]: row for row in site.datasets}.values())
                self._sites[site.name] = SimulatedSite(
                    site.name, rows, self.frozen.plan, self._workers[f"site-{site.name}"].address,
                    self._logs() / f"site-{site.name}-state", self._client_shards,
                    credentials=self._credentials(site.name) if secure else None)

    def _credentials(self, site: str) -> tuple[bytes, bytes, bytes]:
        """A simulated site's key, certificate and CA (PEM), from a CA made for this backend: what
        secure aggregation signs its keys with."""
        from tffprod.security.certs import init_ca, issue

        ca_dir, out = self._logs() / "secagg-ca", self._logs() / "secagg-certs"
        if not (ca_dir / "ca.crt").exists():
            init_ca(ca_dir, name="tffprod-local-ca")
        files = issue(site, ca_dir=ca_dir, out_dir=out)
        return files.key.read_bytes(), files.cert.read_bytes(), files.ca_cert.read_bytes()

    def secagg_sender(self, site: str) -> Any:
        """Secure aggregation steps answered by the simulated site."""
        return self._sites[site].secagg

    def release_sender(self, site: str) -> Any:
        """Releases answered by the simulated site."""
        return self._sites[site].send

    def _logs(self) -> Path:
        """The workers' log directory: a new temporary one unless given, with the simulated sites' state and
        client shards, removed when this backend is garbage-collected or the process exits."""
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="tffprod-workers-"))
            weakref.finalize(self, shutil.rmtree, self._log_dir, True)
        return self._log_dir

    def _start_worker(self, name: str) -> WorkerProcess:
        worker = WorkerProcess(name=name, log_path=self._logs() / f"{name}.log")
        self._workers[name] = worker
        return worker.start()

    def close(self) -> None:
        for simulated in self._sites.values():
            simulated.close()
        self._sites.clear()
        for worker in self._workers.values():
            worker.stop()
        self._workers.clear()
        self._contexts.clear()
        self._coordinator = None

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and monitoring)."""
        return [w.pid for w in self._workers.values() if w.alive() and w.pid is not None]

    def reference(self, dataset: Mapping[str, Any]) -> str:
        """The file's path; for one client (``client_index``) of a dataset with a client-id
        column, the path of that client's shard (split once per backend, as a site does)."""
        if dataset["path"].startswith("site://"):
            raise DatasetError(f"dataset {dataset['ref']} lives only at site {dataset['site']}; "
                               "use --backend remote")
        if self.frozen is not None:  # a simulated site maps names to its files, as a real one does
            return catalog_reference(dataset)
        path = Path(dataset["path"]).resolve()
        if dataset.get("client_index") is None:
            return str(path)
        return str(self._client_shards(dataset)[int(dataset["client_index"])])

    def _client_shards(self, dataset: Mapping[str, Any]) -> list[Path]:
        from tffprod.data.clients import split_by_client

        key = (dataset["site"], dataset["name"], dataset["content_hash"])
        if key not in self._shards:
            digest = dataset["content_hash"].removeprefix("sha256:")[:16]
            out = self._logs() / "clients" / f"{dataset['site']}-{dataset['name']}-{digest}"
            shards = split_by_client(dataset["path"], dataset["format"], dataset["client_id"], out)
            if len(shards) != dataset["num_clients"]:
                raise DatasetError(f"dataset {dataset['ref']}: holds {len(shards)} clients, "
                                   f"{dataset['num_clients']} when registered; register it again")
            self._shards[key] = shards
        return self._shards[key]

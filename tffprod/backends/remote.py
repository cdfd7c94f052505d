"""The remote backend: each site's part runs on that site's gateway over mTLS.

Datasets are referred to by catalog name; the site maps names to its own
files. Merging and the coordinator's part run on a supervised local worker.
Under an approved plan (``frozen``) a site's part is a *release* of the plan
(:mod:`tffprod.backends.release`); otherwise (sites with the development
policy ``computations = "any"``) it runs through TFF's executor protocol.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Mapping, Optional

from tffprod.backends.base import Backend, SiteTarget, catalog_reference
from tffprod.sites.connection import SiteConnection
from tffprod.errors import DatasetError, SessionError, TffprodError
from tffprod.sites.rpc_errors import site_error
from tffprod.workers.process import WorkerProcess

log = logging.getLogger(__name__)


class RemoteBackend(Backend):
    """Sites reached through their gateways; the coordinator part runs locally."""

    name = "remote"

    def __init__(self, connections: Mapping[str, SiteConnection], *, log_dir: Optional[Path] = None,
                 verify_catalogs: bool = True) -> None:
        super().__init__()
        self._connections = dict(connections)
        self._log_dir = Path(log_dir) if log_dir else None
        self._verify = verify_catalogs
        self._channels: dict[str, Any] = {}
        self._coordinator_worker: Optional[WorkerProcess] = None

    def _open(self, sites: list[SiteTarget]) -> None:
        from tffprod.backends.contexts import channel_context, insecure_channel

        try:
            if self._coordinator is None:
                log_dir = self._log_dir
                if log_dir is None:  # removed when this backend is garbage-collected or the process exits
                    log_dir = Path(tempfile.mkdtemp(prefix="tffprod-coordinator-"))
                    weakref.finalize(self, shutil.rmtree, log_dir, True)
                self._coordinator_worker = WorkerProcess(name="coordinator", log_path=log_dir / "coordinator.log")
                self._coordinator_worker.start()
                self._coordinator = channel_context(insecure_channel(self._coordinator_worker.address))
            for site in sites:
                if site.name in self._contexts:
                    continue
                connection = self._connections.get(site.name)
                if connection is None:
                    raise TffprodError(f"site {site.name} is not registered for the remote backend; "
                                       "add it with 'tffprod site add'")
                channel = connection.channel(federation=self.federation)
                self._channels[site.name] = channel
                if self._verify:
                    self._check_catalog(site, channel, connection)
                if self.frozen is None:
                    self._contexts[site.name] = channel_context(channel, compiler_fn=self.site_compiler)
        except BaseException:
            self.close()
            raise

    def reconnect(self, site: str) -> None:
        """A fresh channel and context for ``site``, after it was unavailable: a restarted site has
        none of the executors the old context still refers to, and a new channel connects at once."""
        from tffprod.backends.contexts import channel_context

        log.info("site %s: reconnecting to %s", site, self._connections[site].address)
        old = self._channels.get(site)
        channel = self._connections[site].channel(federation=self.federation)
        self._channels[site] = channel
        if self.frozen is None:
            self._contexts[site] = channel_context(channel, compiler_fn=self.site_compiler)
        if old is not None:
            old.close()

    def release_sender(self, site: str) -> Any:
        """Releases over the site's current channel (replaced when the site was unavailable)."""
        from tffprod.backends.release import grpc_sender

        return grpc_sender(lambda: self._channels[site])

    def secagg_sender(self, site: str) -> Any:
        """Secure aggregation steps over the site's current channel."""
        from tffprod.backends.release import grpc_step_sender

        return grpc_step_sender(lambda: self._channels[site])

    def _check_catalog(self, site: SiteTarget, channel: Any, connection: SiteConnection) -> None:
        """Refuse a site whose TFF, TF or tffprod differs from ours, and data that changed at the
        site since it was registered."""
        from tffprod.protocol.siteinfo import fetch_site_info
        from tffprod.sites.admin import local_versions, version_problems

        import grpc

        try:
            info = fetch_site_info(channel, connection.token())
        except grpc.RpcError as e:  # one line: the site's own reason
            raise site_error(e, what="site", refused=SessionError, prefix=f"site {site.name} refused the session: ",
                             retryable=False) from None
        if self.frozen is None and info.get("computations") == "approved":
            raise SessionError(f"site {site.name} runs only plans it approved: make a plan ('tffprod session plan', "
                               "or 'tffprod model eval-plan' to evaluate a model version), have the site approve it "
                               "('tffprod site approve'), and run with --plan")
        problems = version_problems(local_versions(), info.get("versions") or {})
        if problems:
            raise SessionError(f"site {site.name} runs other versions: {'; '.join(problems)} "
                               "(computations would not match; see 'tffprod site check')")
        catalog = {entry["name"]: entry for entry in info["catalog"]}
        for row in site.datasets:
            entry = catalog.get(row["name"])
            if entry is None:
                raise DatasetError(f"dataset {row['ref']}: site {site.name} no longer serves '{row['name']}'")
            clients = (entry.get("client_id"), entry.get("num_clients") or 1)
            if entry["content_hash"] != row["content_hash"] or clients != (row.get("client_id"), row["num_clients"]):
                raise DatasetError(f"dataset {row['ref']}: changed at site {site.name} since it was registered; "
                                   f"run 'tffprod site sync {site.name}'")

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._contexts.clear()
        if self._coordinator_worker:
            self._coordinator_worker.stop()
        self._coordinator_worker = None
        self._coordinator = None

    def reference(self, dataset: Mapping[str, Any]) -> str:
        """The catalog name, or ``NAME#INDEX`` for one client of a dataset with a client-id column."""
        return catalog_reference(dataset)

"""The local backend: every site simulated by its own worker on this machine.

Each site gets its own ``worker_binary`` on loopback and the coordinator one
more, so a round has exactly the structure of a remote one (per-site part,
merge, coordinator part) and the same code path, only nearer. Data is opened
by the site's worker from the registered file path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from tffprod.backends.base import Backend, SiteTarget
from tffprod.errors import DatasetError
from tffprod.workers import WorkerProcess


class LocalBackend(Backend):
    """Simulated sites, one supervised worker process each."""

    name = "local"

    def __init__(self, *, log_dir: Optional[Path] = None) -> None:
        super().__init__()
        self._log_dir = Path(log_dir) if log_dir else None
        self._workers: dict[str, WorkerProcess] = {}

    def open(self, sites: list[SiteTarget]) -> None:
        super().__init__()
        from tffprod.contexts import channel_context, insecure_channel

        try:
            names = [f"site-{site.name}" for site in sites if site.name not in self._contexts]
            if self._coordinator is None:
                names.append("coordinator")
            # Start every worker before opening any channel: fewer gRPC threads alive while forking.
            started = {name: self._start_worker(name) for name in names}
            for name, worker in started.items():
                context = channel_context(insecure_channel(worker.address))
                if name == "coordinator":
                    self._coordinator = context
                else:
                    self._contexts[name.removeprefix("site-")] = context
        except BaseException:
            self.close()
            raise

    def _start_worker(self, name: str) -> WorkerProcess:
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="tffprod-workers-"))
        worker = WorkerProcess(name=name, log_path=self._log_dir / f"{name}.log")
        self._workers[name] = worker
        return worker.start()

    def close(self) -> None:
        for worker in self._workers.values():
            worker.stop()
        self._workers.clear()
        self._contexts.clear()
        self._coordinator = None

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and monitoring)."""
        return [w.pid for w in self._workers.values() if w.alive()]

    def reference(self, dataset: Mapping[str, Any]) -> str:
        if dataset["path"].startswith("site://"):
            raise DatasetError(f"dataset {dataset['ref']} lives only at site {dataset['site']}; "
                               "use --backend remote")
        return str(Path(dataset["path"]).resolve())

"""Keeps a site's ``worker_binary`` running: start it, watch it, restart it, give up.

The gateway talks to one worker: by default isolated in a network namespace of its
own behind a Unix socket (``[worker] isolation = "netns"``,
:mod:`tffprod.workers.isolation`), else on a loopback port. When the worker dies (a
crash, the OOM killer, an operator's ``kill``), a watcher thread starts a new one
at the SAME address, so the gateway's gRPC channel simply reconnects. A worker that
keeps dying is not restarted forever: after ``max_restarts`` restarts within
``restart_window_s`` the supervisor marks itself failed and calls ``on_give_up``
(``tffprod site serve`` then stops the site with an error).

A worker restarted by the watcher thread is bound to that thread's life
(``tffprod.workers`` asks the kernel to kill a worker when the thread that
started it ends), which is what we want: the watcher ends only in ``stop()`` or
after giving up. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from tffprod.executors.config import SiteConfig
from tffprod.errors import WorkerError
from tffprod.workers.process import WorkerProcess

log = logging.getLogger(__name__)

class WorkerSupervisor:
    """One supervised ``worker_binary`` on a loopback port, restarted when it dies.

    Example::

        supervisor = WorkerSupervisor(config, config.state_dir / "worker.log").start()
        try:
            channel = grpc.insecure_channel(supervisor.address)
            ...
        finally:
            supervisor.stop()

    Args:
        config: the site config: its name, ``state_dir`` (the worker's working folder)
            and ``[worker]`` settings.
        log_path: the file the worker's stdout and stderr are appended to.
        on_give_up: called once, from the watcher thread, with a one-line reason when the
            worker died more than ``max_restarts`` times within ``restart_window_s``.
        poll_interval_s: how often the watcher checks the worker.
    """

    def __init__(
        self,
        config: SiteConfig,
        log_path: os.PathLike,
        *,
        on_give_up: Optional[Callable[[str], None]] = None,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.config = config
        self.log_path = Path(log_path)
        self.on_give_up = on_give_up
        self.poll_interval_s = poll_interval_s
        self._worker: Optional[WorkerProcess] = None
        self._watcher: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._restarts: collections.deque[float] = collections.deque()
        self.restart_count = 0
        self.error: Optional[str] = None

    # ------------------------------------------------------------ state

    @property
    def address(self) -> str:
        """The worker's gRPC target (the same across restarts): ``unix:PATH`` when it is isolated
        (the default, :mod:`tffprod.workers.isolation`), else ``127.0.0.1:PORT``."""
        if self._worker is None:
            raise WorkerError("the worker supervisor has not been started")
        return self._worker.address

    @property
    def pid(self) -> Optional[int]:
        """The current worker's process id (None before start)."""
        return self._worker.pid if self._worker else None

    @property
    def failed(self) -> bool:
        """True once the supervisor gave up restarting the worker (``error`` says why)."""
        return self.error is not None

    def healthy(self) -> bool:
        """True while the worker runs and the supervisor has not given up."""
        return not self.failed and not self._stopping.is_set() and self._worker is not None and self._worker.alive()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "WorkerSupervisor":
        """Start the worker (waiting until it listens), then the watcher thread.

        Raises:
            WorkerError: the worker did not start.
        """
        if self._worker is not None:
            return self
        settings = self.config.worker
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        worker = self._worker = WorkerProcess(
            name=f"{self.config.name}-worker",
            port=settings.port or None,  # None: the worker picks a free port (another if it finds it shared)
            cwd=self.config.state_dir,
            log_path=self.log_path,
            max_message_mb=settings.max_message_mb,
            isolated=settings.isolation == "netns",
        )
        worker.start()
        self._watcher = threading.Thread(target=self._watch, args=(worker,), name=f"{self.config.name}-worker-watcher",
                                         daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        """Stop watching, then stop the worker (its whole process group)."""
        self._stopping.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=60)
        if self._worker is not None:
            self._worker.stop()

    def __enter__(self) -> "WorkerSupervisor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ the watcher

    def _watch(self, worker: WorkerProcess) -> None:
        try:
            while not self._stopping.wait(self.poll_interval_s):
                if not worker.alive():
                    if not self._restart(worker):
                        return
        except Exception as e:  # never die silently: a dead watcher means an unwatched worker
            log.exception("worker watcher crashed")
            self._give_up(f"site {self.config.name}: the worker watcher crashed: {type(e).__name__}: {e}")

    def _restart(self, worker: WorkerProcess) -> bool:
        """Restart the dead ``worker``; False when the supervisor gives up (or is stopping)."""
        settings = self.config.worker
        code = worker.returncode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        while not self._stopping.is_set():
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > settings.restart_window_s:
                self._restarts.popleft()
            if len(self._restarts) >= settings.max_restarts:
                self._give_up(
                    f"site {self.config.name}: the worker kept dying ({len(self._restarts)} restart(s) within "
                    f"{settings.restart_window_s:g} s; last: {how}); giving up, see {self.log_path}"
                )
                return False
            self._restarts.append(time.monotonic())
            self.restart_count += 1
            log.warning("site %s: worker pid %s died (%s); restarting it at %s (restart %d of at most %d in %g s)",
                        self.config.name, worker.pid, how, worker.address, len(self._restarts),
                        settings.max_restarts, settings.restart_window_s)
            try:
                worker.start()
                return True
            except WorkerError as e:
                how = str(e)
                log.warning("site %s: %s", self.config.name, e)
                if self._stopping.wait(self.poll_interval_s):
                    return False
        return False

    def _give_up(self, reason: str) -> None:
        self.error = reason
        log.error("%s", reason)
        if self.on_give_up is not None:
            self.on_give_up(reason)


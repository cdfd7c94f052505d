"""Supervised ``worker_binary`` processes: TFF's C++ executor service.

TFF's own local contexts start workers that outlive Python and inherit its
stdout (shared/design/tff-0.87-facts.md section 5). tffprod starts its own:
output goes to a log file, each worker leads its own process group, the kernel
kills it if the Python thread that started it dies (``PR_SET_PDEATHSIG``, set
by util-linux ``setpriv`` just before it executes the worker), and ``stop()``
(also run at exit) ends the whole group.

No Python code runs between fork and exec (no ``preexec_fn``): with gRPC's
threads alive in this process, a plain fork can abort in gRPC's fork handlers,
so ``subprocess`` must be free to use ``vfork``.

A site's worker runs ``isolated``: in a network namespace of its own, reachable
only through a Unix socket in a private folder (:mod:`tffprod.workers.isolation`);
its ``address`` is then ``unix:PATH``.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from tffprod.errors import WorkerError
from tffprod.workers.isolation import command

_LIVE: "set[WorkerProcess]" = set()
_LIVE_LOCK = threading.Lock()


def worker_binary_path() -> Path:
    """Where TFF's wheel keeps ``worker_binary`` (found without importing TFF)."""
    spec = importlib.util.find_spec("tensorflow_federated")
    if spec is None or not spec.submodule_search_locations:
        raise WorkerError("tensorflow-federated is not installed: no worker_binary to run")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "worker_binary"
    if not path.is_file():
        raise WorkerError(f"worker_binary not found at {path}")
    return path


class _PortShared(Exception):
    """Another process listens on a worker's port beside it."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    """True when nothing listens on ``port`` (the worker binds every interface).

    SO_REUSEADDR, as the worker itself uses: a port left in TIME_WAIT by a dead
    worker's connections counts as free, one with a listener does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def _die_with_parent_prefix() -> list[str]:
    """A command prefix making the kernel SIGKILL the worker when its parent thread dies."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


_SUN_PATH_MAX = 107  # the longest path a Unix socket may have on Linux (108 bytes with the NUL)


def _socket_folder() -> Path:
    """A new private folder (0700) for an isolated worker's socket: in the temp folder, unless that path
    is too long for a Unix socket (a deep ``TMPDIR``), then in /tmp."""
    base = tempfile.gettempdir()
    if len(os.fsencode(base)) + len("/tffprod-worker-12345678/worker.sock") > _SUN_PATH_MAX:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="tffprod-worker-", dir=base))


class WorkerProcess:
    """One ``worker_binary`` on a loopback port, started and stopped by us.

    Use as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        *,
        name: str = "worker",
        port: Optional[int] = None,
        cwd: Optional[os.PathLike] = None,
        log_path: Optional[os.PathLike] = None,
        max_message_mb: int = 2000,
        isolated: bool = False,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.cwd = Path(cwd) if cwd else None
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"tffprod-{name}-{self.port}.log"
        self.max_message_mb = max_message_mb
        self.isolated = isolated
        # A private folder (0700) for the isolated worker's socket, kept across restarts.
        self._socket_dir = _socket_folder() if isolated else None
        self._proc: Optional[subprocess.Popen] = None
        self._port_chosen = port is None  # may move to another port until its address is handed out
        self._handed_out = False

    @property
    def socket_path(self) -> Optional[Path]:
        """The Unix socket of an isolated worker (None when it listens on a loopback port)."""
        return self._socket_dir / "worker.sock" if self._socket_dir else None

    @property
    def address(self) -> str:
        """The gRPC target: ``unix:PATH`` for an isolated worker, else ``127.0.0.1:PORT``."""
        return f"unix:{self.socket_path}" if self.isolated else f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> Optional[int]:
        """The exit status once the worker has ended (negative: killed by that signal)."""
        return self._proc.poll() if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> "WorkerProcess":
        """Start the worker and wait until it listens, alone, on its port.

        ``worker_binary`` lets another process listen on the same port (SO_REUSEPORT), and connections
        are then split between them: a worker that finds another listener beside it is stopped. One
        whose port this object chose and never handed out starts again on another (three tries).
        """
        tries = 3
        while True:
            try:
                return self._start(timeout_s)
            except _PortShared:
                tries -= 1
                if not self._port_chosen or self._handed_out or tries == 0:
                    raise WorkerError(f"worker {self.name}: another process listens on port {self.port} too") \
                        from None
                self.port = free_port()

    def _start(self, timeout_s: float) -> "WorkerProcess":
        if self.alive():
            return self
        if not self.isolated and not _port_is_free(self.port):
            raise WorkerError(f"worker {self.name}: port {self.port} is already in use")
        args = [
            str(worker_binary_path()),
            f"--port={self.port}",
            "--max_concurrent_computation_calls=-1",
            f"--grpc_max_message_length_megabytes={self.max_message_mb}",
        ]
        if self.isolated:
            try:
                args = command(str(self.socket_path), self.port, args)
            except FileNotFoundError as e:
                raise WorkerError(f"worker {self.name}: cannot isolate it: {e}") from None
        args = [*_die_with_parent_prefix(), *args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,
            )
        with _LIVE_LOCK:
            _LIVE.add(self)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._forget()
                raise WorkerError(f"worker {self.name} exited at start ({self._proc.returncode}); see {self.log_path}")
            if self._accepts() and self._listening_alone():
                self._handed_out = True
                return self
            time.sleep(0.05)
        self.stop()
        raise WorkerError(f"worker {self.name} did not listen on {self.address} within {timeout_s:.0f} s")

    def _listening_alone(self) -> bool:
        """Whether this worker listens on its port (always, isolated: the port is in its own network).

        Raises:
            _PortShared: another process listens on the port too (stopped first).
        """
        if self.isolated:
            return True
        import psutil

        listeners = {c.pid for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port}
        if self.pid not in listeners:
            return False
        if len(listeners) > 1:
            self.stop()
            raise _PortShared()
        return True

    def _accepts(self) -> bool:
        """Whether the worker (or, isolated, its socket) accepts a connection now."""
        try:
            if self.isolated:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(0.5)
                    s.connect(str(self.socket_path))
            else:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            return True
        except OSError:
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the worker's process group; SIGKILL if it does not exit in time. An isolated
        worker's socket folder is removed."""
        proc = self._proc
        if self._socket_dir is not None and (proc is None or proc.poll() is not None):
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._forget()

    def _forget(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@atexit.register
def stop_all_workers() -> None:
    """Stop every worker this process started and has not stopped yet."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for worker in live:
        worker.stop()

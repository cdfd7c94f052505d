"""Supervised worker processes (real ``worker_binary``, no TensorFlow in this process)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Optional

import grpc
import psutil
import pytest

from tffprod.errors import WorkerError
from tffprod.workers.process import WorkerProcess, stop_all_workers

pytestmark = pytest.mark.integration


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_worker_starts_listens_and_stops_with_its_group(tmp_path):
    worker = WorkerProcess(name="w", log_path=tmp_path / "w.log").start()
    try:
        assert worker.alive() and _listening(worker.port)
        proc = psutil.Process(worker.pid)
        assert "worker_binary" in " ".join(proc.cmdline())
        assert proc.pid == __import__("os").getpgid(proc.pid)  # leads its own process group
    finally:
        worker.stop()
    assert not worker.alive()
    assert not psutil.pid_exists(proc.pid) or proc.status() == psutil.STATUS_ZOMBIE
    assert not _listening(worker.port)


def test_workers_start_while_grpc_channels_are_busy(tmp_path):
    """Forking with gRPC threads alive once aborted a new worker in CI (SIGABRT in gRPC's fork handler)."""
    first = WorkerProcess(name="first", log_path=tmp_path / "first.log").start()
    channel = grpc.insecure_channel(first.address)
    others = []
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        for i in range(4):
            others.append(WorkerProcess(name=f"w{i}", log_path=tmp_path / f"w{i}.log").start())
        assert all(w.alive() for w in others)
    finally:
        channel.close()
        for w in [first, *others]:
            w.stop()


def _listeners(port: int) -> set[Optional[int]]:
    return {c.pid for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}


@pytest.mark.parametrize("chosen", [True, False], ids=["port it chose", "port it was given"])
def test_a_worker_never_shares_its_port(tmp_path, monkeypatch, chosen):
    """worker_binary binds with SO_REUSEPORT: a second worker started on a busy port (the race between
    checking a port and binding it, here forced) would take half of the first one's connections."""
    from tffprod.workers import process

    first = WorkerProcess(name="first", log_path=tmp_path / "first.log").start()
    monkeypatch.setattr(process, "_port_is_free", lambda port: True)  # lose the race
    second = WorkerProcess(name="second", log_path=tmp_path / "second.log", port=None if chosen else first.port)
    second.port = first.port
    try:
        if chosen:
            second.start()
            assert second.port != first.port and _listeners(second.port) == {second.pid}
        else:
            with pytest.raises(WorkerError, match=rf"^worker second: another process listens on port "
                                                  rf"{first.port} too$"):
                second.start()
            assert not second.alive()
        assert _listeners(first.port) == {first.pid}
    finally:
        second.stop()
        first.stop()


def test_stop_all_workers_ends_every_live_worker(tmp_path):
    workers = [WorkerProcess(name=f"a{i}", log_path=tmp_path / f"a{i}.log").start() for i in range(2)]
    stop_all_workers()
    assert not any(w.alive() for w in workers)


def test_a_worker_that_cannot_bind_reports_its_log(tmp_path):
    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        worker = WorkerProcess(name="clash", port=port, log_path=tmp_path / "clash.log")
        with pytest.raises(WorkerError, match=f"clash: port {port} is already in use"):
            worker.start(timeout_s=5)
        assert not worker.alive()
    finally:
        holder.close()


def _get_executor(address: str) -> str:
    from tffprod.protocol.protos import computation_pb2, executor_pb2

    request = executor_pb2.GetExecutorRequest(cardinalities=[executor_pb2.Cardinality(
        placement=computation_pb2.Placement(uri="clients"), cardinality=1)])
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/tensorflow_federated.v0.ExecutorGroup/GetExecutor",
                                   request_serializer=type(request).SerializeToString,
                                   response_deserializer=executor_pb2.GetExecutorResponse.FromString)
        return call(request, timeout=10).executor.id


def _isolated_worker_checks(tmp_path):
    import os

    worker = WorkerProcess(name="iso", log_path=tmp_path / "iso.log", isolated=True).start()
    try:
        (binary,) = [p for p in psutil.Process(worker.pid).children(recursive=True) if p.name() == "worker_binary"]
        assert worker.address == f"unix:{worker.socket_path}"
        assert not _listening(worker.port)  # nothing on this host's network reaches it, loopback included
        assert os.readlink(f"/proc/{binary.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert os.stat(worker.socket_path.parent).st_mode & 0o077 == 0  # only the site's user opens the socket
        assert _get_executor(worker.address)  # the gateway's way in works
        binary.kill()  # the relay dies as its worker did, so a supervisor sees the same cause
        for _ in range(100):
            if not worker.alive():
                break
            time.sleep(0.1)
        assert worker.returncode == -9
        worker.start()  # restarted at the same address
        assert _get_executor(worker.address)
    finally:
        worker.stop()
    assert not worker.socket_path.parent.exists()
    return worker


def test_an_isolated_worker_is_reachable_only_through_its_socket(tmp_path):
    _isolated_worker_checks(tmp_path)


def _python_for_nobody(as_nobody: list[str]) -> Optional[str]:
    """This Python, or the system's of the same version, if user ``nobody`` can start it in a user namespace
    (a Python installed under a 0700 ``/root`` is out of its reach, as it is of any other operator's)."""
    import os
    import subprocess
    import sys

    for python in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        if os.path.exists(python) and subprocess.run(
                [*as_nobody, "unshare", "--net", "--map-root-user", "--", python, "-c", "pass"],
                capture_output=True, timeout=60).returncode == 0:
            return python
    return None


def test_isolation_works_for_an_operator_who_is_not_root(request):
    """Unprivileged user namespaces: the same checks, run as user ``nobody``."""
    import os
    import shutil
    import subprocess
    import sysconfig
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    python = _python_for_nobody(as_nobody)
    if python is None:
        pytest.skip("user nobody can start neither this Python nor the system's in a user namespace")
    folder = Path(tempfile.mkdtemp(prefix="tffprod-nobody-"))  # pytest's own folders are root's alone
    os.chown(folder, 65534, 65534)
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    repo = str(Path(__file__).resolve().parents[2])
    packages = sysconfig.get_paths()["purelib"]  # this environment's, for the system's Python and its children
    code = (f"import pathlib, site, sys; site.addsitedir({packages!r}); sys.path.insert(0, {repo!r}); "
            "from tests.integration import test_workers; "
            f"test_workers._isolated_worker_checks(pathlib.Path({str(folder)!r})); "
            "print('isolated as', __import__('os').geteuid())")
    result = subprocess.run([*as_nobody, python, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HOME": str(folder), "PYTHONPATH": os.pathsep.join([repo, packages])})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "isolated as 65534" in result.stdout

"""``tffprod site serve``: a real site process with a real supervised worker on loopback.

Plaintext dev configs only (``insecure_dev`` on 127.0.0.1); the gateway's TLS is
covered by the gateway's own tests. Every test proves no worker is left behind.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from tffprod.errors import DatasetError
from tffprod.executors.config import load_site_config
from tffprod.errors import GatewayError
from tffprod.errors import SiteError
from tffprod.executors.serve import serve_site
from tffprod.protocol.siteinfo import fetch_site_info
from tffprod.errors import WorkerError

from tests.helpers.site_serve import TOKEN, ServeThread, wait_for, workers_of, write_config

pytestmark = pytest.mark.integration

TFFPROD = Path(sys.executable).parent / "tffprod"
READY = re.compile(r"^site dev-site serving on 127\.0\.0\.1:(\d+) \(plaintext, insecure_dev; 1 dataset\)$")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def listening_inside(worker: psutil.Process, port: int) -> bool:
    """Whether ``worker`` listens on ``port`` in its own network namespace (as /proc shows it)."""
    try:
        lines = Path(f"/proc/{worker.pid}/net/tcp").read_text().splitlines()[1:]
        lines += Path(f"/proc/{worker.pid}/net/tcp6").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f.split()[1].endswith(f":{port:04X}") and f.split()[3] == "0A" for f in lines)


def worker_port(worker: psutil.Process) -> int:
    (arg,) = [a for a in worker.cmdline() if a.startswith("--port=")]
    return int(arg.split("=", 1)[1])


def workers_on_port(port: int) -> list[int]:
    """Any ``worker_binary`` on ``port``, whoever started it (other tests' workers use other ports)."""
    pids = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if (proc.info["status"] != psutil.STATUS_ZOMBIE and any("worker_binary" in a for a in cmdline)
                and f"--port={port}" in cmdline):
            pids.append(proc.pid)
    return pids


def site_info(port: int) -> dict[str, Any]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return fetch_site_info(channel, TOKEN, identity="coordinator")


class SiteProcess:
    """``tffprod site serve`` as a child process, its stdout read line by line with a deadline."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.stderr_path = config.parent / "site.stderr"
        self.state_dir = config.parent / "state"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen([str(TFFPROD), "site", "serve", "--config", str(config), *extra],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                         cwd=config.parent, start_new_session=True)
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def readline(self, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer and time.monotonic() < deadline:
            if self._selector.select(timeout=deadline - time.monotonic()):
                chunk = os.read(self.proc.stdout.fileno(), 65536)  # unbuffered: select() sees what is left
                if not chunk:
                    break
                self._buffer += chunk
        if b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            return line.decode()
        raise AssertionError(f"no line from site serve (exit {self.proc.poll()}): {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def kill(self) -> None:
        """Last resort in a failed test (workers lead process groups of their own: the fixture ends them)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def site_process(tmp_path: Path):
    started: list[SiteProcess] = []
    worker_pids: list[int] = []

    def start(config: Path, *extra: str) -> SiteProcess:
        site = SiteProcess(config, *extra)
        started.append(site)
        return site

    start.worker_pids = worker_pids  # type: ignore[attr-defined]
    yield start
    for site in started:
        if site.proc.poll() is None:
            worker_pids += [w.pid for w in workers_of(site.proc.pid, site.state_dir)]
            site.kill()
        site.proc.stdout.close()
    for pid in worker_pids:  # only after a failed test: workers lead their own process groups
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ---------------------------------------------------------------- the real CLI, as a process


def test_site_serve_restarts_a_killed_worker_and_stops_cleanly(tmp_path: Path, site_process) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "state"
    site = site_process(config)
    match = READY.match(site.readline())
    assert match, site.stderr()
    port = int(match.group(1))
    assert port > 0 and listening(port)

    info = json.loads((state / "site.json").read_text())
    assert info == {"site": "dev-site", "address": f"127.0.0.1:{port}", "pid": site.proc.pid, "tls": False,
                    "computations": "approved", "federations": None, "datasets": ["train"]}
    assert (state / "privacy-ledger.sqlite").is_file()  # approval is the default: the site keeps its ledger

    # One worker, a descendant of the site process, isolated: its port is in a network namespace of its
    # own, so nothing on this host's network reaches it; the gateway reaches it through a Unix socket.
    (worker,) = wait_for("the worker", lambda: workers_of(site.proc.pid, state))
    site_process.worker_pids.append(worker.pid)
    worker_port_ = worker_port(worker)
    assert worker_port_ != port and not listening(worker_port_)
    assert os.readlink(f"/proc/{worker.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert site_info(port)["health"]["worker"] == "up"
    assert (state / "worker.log").exists()
    maps = psutil.Process(site.proc.pid).memory_maps()
    assert not [m.path for m in maps if "/tensorflow/" in m.path], "the site process loaded TensorFlow"

    # SIGKILL the worker: the supervisor starts a new one on the same port.
    os.kill(worker.pid, signal.SIGKILL)
    (restarted,) = wait_for("a restarted worker",
                            lambda: [w for w in workers_of(site.proc.pid, state) if w.pid != worker.pid])
    site_process.worker_pids.append(restarted.pid)
    assert worker_port(restarted) == worker_port_
    wait_for("the site to report its worker up", lambda: site_info(port)["health"]["worker"] == "up")
    assert site.proc.poll() is None
    assert "restarting it at unix:" in site.stderr()

    # SIGTERM: exit 0 within seconds, nothing left behind.
    site.proc.send_signal(signal.SIGTERM)
    assert site.proc.wait(timeout=15) == 0, site.stderr()
    assert gone(worker.pid) and gone(restarted.pid)
    assert workers_on_port(worker_port_) == []
    assert not listening(port)
    assert not (state / "site.json").exists()
    audit = (state / "audit.jsonl").read_text().splitlines()
    assert audit and all(json.loads(line)["identity"] == "coordinator" for line in audit)


def test_site_serve_json_and_sigint(tmp_path: Path, site_process) -> None:
    site = site_process(write_config(tmp_path), "--json")
    state = site.state_dir
    lines = [site.readline()]
    while lines[-1] != "}":
        lines.append(site.readline())
    info = json.loads("\n".join(lines))
    assert info["site"] == "dev-site" and info["pid"] == site.proc.pid
    assert info == json.loads((tmp_path / "state" / "site.json").read_text())
    (worker,) = wait_for("the worker", lambda: workers_of(site.proc.pid, state))
    site_process.worker_pids.append(worker.pid)
    site.proc.send_signal(signal.SIGINT)
    assert site.proc.wait(timeout=15) == 0, site.stderr()
    assert gone(worker.pid)
    assert not (tmp_path / "state" / "site.json").exists()


def test_a_bad_dataset_file_fails_fast_and_starts_no_worker(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    data = tmp_path / "data" / "train.tfrecord"
    data.write_bytes(b"this is not a tfrecord file at all")
    proc = subprocess.run([str(TFFPROD), "site", "serve", "--config", str(config)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == DatasetError.exit_code, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {config}: dataset 'train': {data}: example 1"), lines
    assert not (tmp_path / "state").exists()  # nothing was started: no state, no worker log, no site.json


def test_a_bad_config_fails_with_one_error_line(tmp_path: Path, run_cli) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("insecure_dev = true", "insecure_dev = 1"))
    result = run_cli("site", "serve", "--config", config)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"Error: {config}: 'insecure_dev' must be true or false, got integer 1"
    ]


# ---------------------------------------------------------------- the library, in-process


def test_serve_site_refuses_a_state_folder_in_use(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first = ServeThread(config)
    try:
        assert first.ready.wait(60), first.error
        worker = first.worker()
        with pytest.raises(SiteError, match=rf"state folder .*state is in use by another .* \(pid {os.getpid()}\)"):
            serve_site(load_site_config(config), stop_event=threading.Event())
        assert first.workers() == [worker]  # the refused call started nothing
    finally:
        first.stop()
    assert first.error is None
    assert gone(worker.pid)


def test_serve_site_gives_up_on_a_worker_that_keeps_dying(tmp_path: Path) -> None:
    serving = ServeThread(write_config(tmp_path, max_restarts=1, restart_window_s=60))
    try:
        assert serving.ready.wait(60), serving.error
        first = serving.worker()
        first.kill()
        second = serving.new_worker(first)
        wait_for("the restarted worker to listen", lambda: listening_inside(second, worker_port(second)))
        second.kill()
        serving.thread.join(timeout=30)
        assert not serving.thread.is_alive(), "serve_site should stop once the supervisor gives up"
    finally:
        serving.stop()
    assert isinstance(serving.error, WorkerError)
    # The kill can land while the supervisor is still starting the worker: then the last failure is the start's.
    assert re.fullmatch(r"site dev-site: the worker kept dying \(1 restart\(s\) within 60 s; last: (killed by "
                        r"signal 9|worker .* exited at start \(-9\); see .*)\); giving up, see .*/state/worker\.log",
                        str(serving.error)), serving.error
    assert serving.workers() == []
    assert not (tmp_path / "state" / "site.json").exists()


def test_a_gateway_that_cannot_bind_stops_the_worker_it_started(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{holder.getsockname()[1]}"))
        site = load_site_config(config)
        with pytest.raises(GatewayError, match=r"site dev-site: cannot listen on 127\.0\.0\.1:\d+"):
            serve_site(site, ready=lambda info: pytest.fail("ready without a gateway"), stop_event=threading.Event())
    assert workers_of(os.getpid(), site.state_dir) == []
    assert (site.state_dir / "worker.log").exists()  # the worker had started
    assert not (site.state_dir / "site.json").exists()


def test_a_second_site_on_a_serving_site_s_port_is_refused(tmp_path: Path) -> None:
    """gRPC servers share a port by default (SO_REUSEPORT): a second site would start and take every other
    coordinator connection, which then fails its TLS handshake or lands on the wrong site."""
    first = ServeThread(write_config(tmp_path / "first"))
    try:
        assert first.ready.wait(60), first.error
        port = int(first.info["address"].rsplit(":", 1)[1])
        second = write_config(tmp_path / "second")
        second.write_text(second.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        with pytest.raises(GatewayError, match=rf"site dev-site: cannot listen on 127\.0\.0\.1:{port}"):
            serve_site(load_site_config(second), ready=lambda info: pytest.fail("a second site on the port"),
                       stop_event=threading.Event())
        assert site_info(port)["health"]["worker"] == "up"  # the first still answers
    finally:
        first.stop()
    assert first.error is None

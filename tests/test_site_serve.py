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
from typing import Any, Callable, Optional

import grpc
import psutil
import pytest

from tffprod.data.files import write_tfrecord
from tffprod.errors import DatasetError
from tffprod.executors.config import hash_token, load_site_config, write_site_config
from tffprod.executors.gateway import GatewayError
from tffprod.executors.serve import SiteError, serve_site
from tffprod.executors.siteinfo import IDENTITY_HEADER, fetch_site_info
from tffprod.data.schema import Feature, Schema
from tffprod.workers import WorkerError

SCHEMA = Schema(features=(Feature("x", "float32", (3,)),), label=Feature("y", "int64"))
TOKEN = "dev-token"
TFFPROD = Path(sys.executable).parent / "tffprod"
READY = re.compile(r"^site dev-site serving on 127\.0\.0\.1:(\d+) \(plaintext, insecure_dev; 1 dataset\)$")


def write_config(root: Path, **worker: Any) -> Path:
    """A plaintext loopback site with one real TFRecord dataset; ``worker`` overrides ``[worker]``."""
    write_tfrecord(root / "data" / "train.tfrecord", [{"x": [i, 0.0, 1.0], "y": i % 2} for i in range(4)], SCHEMA)
    (root / "schema.json").write_text(json.dumps(SCHEMA.to_dict()))
    return write_site_config(root / "site.toml", {
        "name": "dev-site",
        "listen": "127.0.0.1:0",
        "state_dir": "state",
        "insecure_dev": True,
        "coordinators": [{"identity": "coordinator", "token_sha256": hash_token(TOKEN)}],
        "worker": {"max_restarts": 3, "restart_window_s": 300, **worker},
        "datasets": {"train": {"path": "data/train.tfrecord", "schema_file": "schema.json"}},
    })


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


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


def workers_of(pid: int, state_dir: Path) -> list[psutil.Process]:
    """Live ``worker_binary`` descendants of ``pid`` working in ``state_dir`` (the site's, not another test's)."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if (child.status() != psutil.STATUS_ZOMBIE and child.name() == "worker_binary"
                    and Path(child.cwd()) == state_dir):
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


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


class ServeThread:
    """``serve_site`` on a thread (so no signal handlers), stopped with its ``stop_event``."""

    def __init__(self, config_path: Path) -> None:
        self.config = load_site_config(config_path)
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.info: Optional[dict] = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        def ready(info: dict) -> None:
            self.info = info
            self.ready.set()

        try:
            serve_site(self.config, ready=ready, stop_event=self.stop_event)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def workers(self) -> list[psutil.Process]:
        return workers_of(os.getpid(), self.config.state_dir)

    def worker(self) -> psutil.Process:
        (worker,) = wait_for("the worker", self.workers)
        return worker

    def new_worker(self, old: psutil.Process, timeout_s: float = 30.0) -> psutil.Process:
        (worker,) = wait_for("a restarted worker", lambda: [w for w in self.workers() if w.pid != old.pid],
                             timeout_s=timeout_s)
        return worker

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


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


@pytest.mark.e2e
def test_the_gateway_reaches_a_restarted_worker_after_it_held_a_connection(tmp_path: Path) -> None:
    """The production path: the gateway's channel to the worker is connected when the worker dies."""
    serving = ServeThread(write_config(tmp_path))
    try:
        assert serving.ready.wait(60), serving.error
        port = int(serving.info["address"].rsplit(":", 1)[1])
        worker = serving.worker()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/tensorflow_federated.v0.ExecutorGroup/GetExecutor")
            metadata = [("authorization", f"Bearer {TOKEN}"), (IDENTITY_HEADER, "coordinator")]

            def worker_answers() -> bool:
                try:
                    call(b"", metadata=metadata, timeout=5)
                    return True
                except grpc.RpcError as e:  # the worker's own refusal of an empty request is an answer too
                    return e.code() != grpc.StatusCode.UNAVAILABLE

            assert worker_answers()
            worker.kill()
            start = time.monotonic()
            # Its connections linger in TIME_WAIT for up to 60 s; the restart must not wait for them.
            serving.new_worker(worker, timeout_s=10)
            wait_for("the gateway to reach the restarted worker", worker_answers, timeout_s=30, every_s=0.5)
            print(f"\n[benchmark] worker back behind the gateway {time.monotonic() - start:.1f} s after SIGKILL")
    finally:
        serving.stop()
    assert serving.error is None
    assert serving.workers() == []

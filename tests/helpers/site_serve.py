"""A plaintext loopback site config with one real dataset, and ``serve_site`` on a thread (site serve tests)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import psutil

from tffprod.data.files import write_tfrecord
from tffprod.data.schema import Feature, Schema
from tffprod.executors.config import hash_token, load_site_config, write_site_config
from tffprod.executors.serve import serve_site

SCHEMA = Schema(features=(Feature("x", "float32", (3,)),), label=Feature("y", "int64"))
TOKEN = "dev-token"


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

"""Running a site: the catalog, the supervised worker and the gateway, until told to stop.

``serve_site`` is what ``tffprod site serve`` calls. In order it:

1. validates and hashes every dataset file of the catalog (a bad file fails here,
   before any process starts, with one line naming the dataset);
2. takes ``state_dir/site.lock`` so two site processes never share a state folder;
3. starts the supervised ``worker_binary`` on a loopback port;
4. starts the gateway on the public ``listen`` address (mTLS, or plaintext with
   ``insecure_dev``; messages up to the worker's ``max_message_mb``), auditing every call to
   ``state_dir/audit.jsonl``; with
   ``computations = "approved"`` (the default) it serves only releases of plans approved in
   ``state_dir/approvals/`` (``release``) and keeps the privacy ledger
   ``state_dir/privacy-ledger.sqlite``; ``"any"`` is logged as a warning;
5. writes ``state_dir/site.json`` (``{"site", "address", "pid", ...}``) and calls ``ready``;
6. serves until SIGTERM or SIGINT (when called on the main thread), ``stop_event``
   or the supervisor giving up on the worker;
7. stops the gateway, then the worker, and removes ``site.json``, whatever happened.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from tffprod.errors import SiteError
from tffprod.executors.config import SiteConfig
from tffprod.executors.supervisor import WorkerSupervisor
from tffprod.errors import WorkerError

SITE_FILE = "site.json"
LOCK_FILE = "site.lock"
WORKER_LOG = "worker.log"
log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # how long calls in flight may finish when the site stops


def serve_site(
    config: SiteConfig,
    *,
    ready: Optional[Callable[[dict[str, Any]], None]] = None,
    stop_event: Optional[threading.Event] = None,
) -> str:
    """Serve a site until SIGTERM/SIGINT or ``stop_event``; then stop everything it started.

    Returns:
        What stopped it: the signal's name (``"SIGTERM"``) or ``"a stop request"``.

    Args:
        config: the validated site config.
        ready: called once, when the gateway accepts calls, with the site info
            ``{"site", "address", "pid", "tls", "computations", "datasets"}`` (also written to ``site.json``).
        stop_event: set it to stop serving (from another thread). Signal handlers for
            SIGTERM and SIGINT are installed only when this runs on the main thread.

    Raises:
        DatasetError: a dataset file is missing, corrupt or off its schema (nothing was started).
        SpecError: a TLS file cannot be read.
        SiteError: another site process uses ``config.state_dir``.
        WorkerError: the worker did not start, or kept dying and the supervisor gave up.
    """
    from tffprod.executors.approvals import ApprovalStore
    from tffprod.executors.audit import AUDIT_FILE, AuditLog
    from tffprod.executors.gateway import MAX_MESSAGE_BYTES, Gateway
    from tffprod.executors.ledger import LEDGER_FILE, SiteLedger

    catalog = config.build_catalog()
    tls = config.tls.read() if config.tls is not None else None
    stop = stop_event if stop_event is not None else threading.Event()
    gave_up: list[str] = []

    def give_up(reason: str) -> None:
        gave_up.append(reason)
        stop.set()

    state_dir = config.state_dir
    site_file = state_dir / SITE_FILE
    signals: list[str] = []
    reason = "a stop request"
    with _state_lock(state_dir, config.name), _stop_on_signals(stop, signals):
        supervisor = WorkerSupervisor(config, state_dir / WORKER_LOG, on_give_up=give_up)
        gateway = audit = ledger = None
        try:
            supervisor.start()
            if stop.is_set():  # told to stop while the worker started
                return signals[0] if signals else reason
            audit = AuditLog(state_dir / AUDIT_FILE)
            approvals = None
            if config.computations == "approved":
                ledger = SiteLedger(state_dir / LEDGER_FILE, site=config.name,
                                    budgets={name: entry.budget for name, entry in catalog.items()})
                approvals = ApprovalStore(state_dir)
            else:
                log.warning("site %s: computations = \"any\": ANY computation runs here and can read any file "
                            "the worker can read (development only)", config.name)
            gateway = Gateway(
                site=config.name,
                listen=config.listen,
                worker_address=supervisor.address,
                catalog=catalog,
                tokens=dict(config.coordinators),
                tls=tls,
                audit=audit,
                insecure_dev=config.insecure_dev,
                worker_health=supervisor.healthy,
                approvals=approvals,
                ledger=ledger,
                federations=config.federations,
                max_message_bytes=min(config.worker.max_message_mb * 2**20, MAX_MESSAGE_BYTES),
            )
            port = gateway.start()
            info = {
                "site": config.name,
                "address": _address(config.listen_host, port),
                "pid": os.getpid(),
                "tls": tls is not None,
                "computations": config.computations,
                "federations": None if config.federations is None else list(config.federations),
                "datasets": sorted(catalog),
            }
            _write_json(site_file, info)
            if ready is not None:
                ready(info)
            while not stop.wait(0.5):
                pass
            reason = signals[0] if signals else "a stop request"
            log.info("site %s: stopping on %s; calls in progress get up to %g s", config.name, reason, STOP_GRACE_S)
        finally:
            try:
                if gateway is not None:
                    gateway.stop(STOP_GRACE_S)
            finally:
                supervisor.stop()
                if audit is not None:
                    audit.close()
                if ledger is not None:
                    ledger.close()
                site_file.unlink(missing_ok=True)
                log.info("site %s: stopped (gateway and worker down, state folder released)", config.name)
    if gave_up:
        raise WorkerError(gave_up[0])
    return reason


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _state_lock(state_dir: Path, site: str) -> Iterator[None]:
    """Hold an exclusive lock on ``state_dir/site.lock`` (released by the kernel if we die)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _site_file_pid(state_dir / SITE_FILE)
            by = f" (pid {owner})" if owner else ""
            raise SiteError(
                f"site {site}: state folder {state_dir} is in use by another `tffprod site serve`{by}"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _site_file_pid(path: Path) -> Optional[int]:
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, received: list[str]) -> Iterator[None]:
    """On the main thread: SIGTERM and SIGINT set ``stop`` (instead of raising) until the block ends; the
    signals' names are appended to ``received``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

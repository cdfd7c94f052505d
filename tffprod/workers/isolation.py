"""A site's worker in a network namespace of its own, reachable only through a Unix socket.

TFF's ``worker_binary`` listens on every interface, without TLS or authentication,
and has no bind-address flag (shared/design/tff-0.87-facts.md section 9). A site
therefore does not run it in the host's network at all. ``tffprod site serve``
starts it as::

    unshare --net --map-root-user -- python -m tffprod.workers.isolation \\
        --socket DIR/worker.sock --port 8000 -- worker_binary --port=8000 ...

In the new (empty) network namespace this module brings up the loopback
interface, starts the worker there, waits until it listens, and then relays a
Unix socket in a private folder (mode 0700, owned by the site's user) to the
worker's port inside the namespace. The gateway connects to ``unix:DIR/worker.sock``;
nothing on the host's network, loopback included, reaches the worker, and no
other local user can open the socket. ``--map-root-user`` makes this work for
operators who are not root, wherever unprivileged user namespaces are enabled
(the Linux default). The relay exits with the worker's status when the worker
dies, by the same signal (the supervisor then restarts both) and the worker dies with the relay.

Run as a program only; nothing here imports TensorFlow or gRPC.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Optional

__all__ = ["command"]

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_PR_SET_PDEATHSIG = 1
_CHUNK = 1 << 16


def command(socket_path: str, port: int, worker_args: list[str]) -> list[str]:
    """The command line that runs ``worker_args`` isolated, reachable at ``socket_path``.

    Raises:
        FileNotFoundError: util-linux ``unshare`` is not installed.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        raise FileNotFoundError("util-linux 'unshare' is not installed")
    return [unshare, "--net", "--map-root-user", "--", sys.executable, "-m", "tffprod.workers.isolation",
            "--socket", socket_path, "--port", str(port), "--", *worker_args]


def _loopback_up() -> None:
    """Bring up ``lo`` in this (new) network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(_CHUNK)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def _serve_connection(client: socket.socket, port: int) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", port))
    except OSError:
        client.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _accept_forever(server: socket.socket, port: int) -> None:
    while True:
        try:
            client, _ = server.accept()
        except OSError:
            return
        threading.Thread(target=_serve_connection, args=(client, port), daemon=True).start()


def _wait_listening(worker: subprocess.Popen, port: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tffprod.workers.isolation")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("worker", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    worker_args = args.worker[1:] if args.worker[:1] == ["--"] else args.worker
    _die_with_parent()
    _loopback_up()
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
    worker = subprocess.Popen([*prefix, *worker_args], stdin=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, lambda *_: worker.terminate())
    if not _wait_listening(worker, args.port):
        worker.kill()
        return _exit_like(worker.wait())
    old = os.umask(0o077)
    try:
        if os.path.exists(args.socket):
            os.unlink(args.socket)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(args.socket)
    finally:
        os.umask(old)
    server.listen(64)
    threading.Thread(target=_accept_forever, args=(server, args.port), daemon=True).start()
    code = worker.wait()
    server.close()
    try:
        os.unlink(args.socket)
    except OSError:
        pass
    return _exit_like(code)


def _exit_like(code: int) -> int:
    """The worker's exit status, or (killed by a signal) die by the same signal, so the supervisor
    reports the cause it would report for an unisolated worker."""
    if code < 0:
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Supervised worker processes (real ``worker_binary``, no TensorFlow in this process)."""

from __future__ import annotations

import socket

import grpc
import psutil
import pytest

from tffprod.workers import WorkerError, WorkerProcess, stop_all_workers


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

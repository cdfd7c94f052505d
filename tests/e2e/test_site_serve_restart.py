"""The production path of a worker restart behind ``serve_site`` (moved from integration/test_site_serve.py)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from tffprod.protocol.siteinfo import IDENTITY_HEADER
from tests.helpers.site_serve import TOKEN, ServeThread, wait_for, write_config

pytestmark = pytest.mark.e2e


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

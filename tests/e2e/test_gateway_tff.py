"""The gateway with TensorFlow Federated: TFF's own protos still import, a TFF computation reads a dataset by
catalog name through the gateway, and a 50 MB value's forwarding cost (moved from integration/test_gateway.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from tffprod.executors.gateway import MESSAGE_LIMITS
from tffprod.protocol.protos import array_pb2, data_type_pb2, executor_pb2
from tests.helpers.gateway_site import Site, dispose_executor, get_executor, make_pki, make_site_dir, rpc, tls_channel

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    return make_pki()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pki):
    s = Site(tmp_path_factory.mktemp("gw"), make_site_dir(tmp_path_factory.mktemp("site")), pki)
    yield s
    s.close()


def test_tensorflow_federated_still_imports_after_the_protos_were_loaded():
    code = textwrap.dedent("""
        import sys
        from tffprod.protocol import protos
        assert not any(m.startswith("tensorflow_federated") for m in sys.modules), "stand-ins left behind"
        import tensorflow_federated as tff
        from tensorflow_federated.proto.v0 import executor_pb2
        assert tff.framework.RemoteExecutor is not None
        assert (executor_pb2.CreateValueRequest.DESCRIPTOR.full_name
                == protos.executor_pb2.CreateValueRequest.DESCRIPTOR.full_name)
        ours = protos.executor_pb2.GetExecutorRequest(cardinalities=[protos.executor_pb2.Cardinality(cardinality=3)])
        assert executor_pb2.GetExecutorRequest.FromString(ours.SerializeToString()).cardinalities[0].cardinality == 3
        print("ok")
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_a_tff_computation_reads_a_dataset_by_catalog_name_through_the_gateway(site, pki, capsys):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    import tensorflow_federated as tff

    channel = tls_channel(site, pki)
    stub = tff.framework.RemoteExecutorGrpcStub(channel)

    def stack_fn(cardinalities):
        cardinalities.setdefault(tff.CLIENTS, 0)
        executor = tff.framework.RemoteExecutor(stub)
        executor.set_cardinalities(cardinalities)
        return executor

    context = tff.framework.SyncExecutionContext(
        executor_fn=tff.framework.ResourceManagingExecutorFactory(stack_fn),
        compiler_fn=tff.backends.native.desugar_and_transform_to_native,
        transform_args=tff.tensorflow.transform_args, transform_result=tff.tensorflow.transform_result)

    @tff.tensorflow.computation(np.str_)
    def count_lines(path):
        return tf.data.TextLineDataset(path).reduce(np.int32(0), lambda n, _: n + 1)

    @tff.federated_computation(tff.FederatedType(np.str_, tff.CLIENTS))
    def total_lines(names):
        return tff.federated_sum(tff.federated_map(count_lines, names))

    try:
        with tff.framework.get_context_stack().install(context):
            assert total_lines(["train"]) == 3
            assert total_lines(["train", "eval"]) == 5
            with pytest.raises(grpc.RpcError) as info:
                total_lines(["train", "secrets"])
    finally:
        channel.close()
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert "dataset 'secrets' is not in site site-a's catalog" in info.value.details()
    assert any(r["status"] == "NOT_FOUND" and "'secrets'" in r["detail"] for r in site.records())


def test_forwarding_throughput_of_a_50_mb_value(site, pki, report_line):
    """Benchmark (printed, not asserted): a 50 MB float32 CreateValue plus its Compute, gateway vs direct.

    The value is real (the worker stores it and sends it back), so the numbers include the
    gateway's parse of every CreateValue (no strings: forwarded unchanged) and its byte scan of
    every Compute result for catalog paths.
    """
    import numpy as np

    n = 12_500_000  # float32: 50 MB
    array = array_pb2.Array(dtype=data_type_pb2.DT_FLOAT, shape=array_pb2.ArrayShape(dim=[n]),
                            content=np.arange(n, dtype=np.float32).tobytes())

    def measure(channel: grpc.Channel, reps: int = 5) -> tuple[float, float]:
        executor = get_executor(channel)
        request = executor_pb2.CreateValueRequest(executor=executor, value=executor_pb2.Value(array=array))
        raw = request.SerializeToString()
        creates, computes = [], []
        for _ in range(reps):
            t = time.perf_counter()
            ref = executor_pb2.CreateValueResponse.FromString(rpc(channel, "CreateValue", raw)).value_ref
            creates.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = rpc(channel, "Compute", executor_pb2.ComputeRequest(executor=executor, value_ref=ref))
            computes.append(time.perf_counter() - t)
            assert len(out) > n * 4
            rpc(channel, "Dispose", executor_pb2.DisposeRequest(executor=executor, value_ref=[ref]))
        dispose_executor(channel, executor)
        return float(np.median(creates)), float(np.median(computes))

    direct_channel = grpc.insecure_channel(site.worker.address, options=MESSAGE_LIMITS)
    gateway_channel = tls_channel(site, pki)
    try:
        measure(direct_channel, 1), measure(gateway_channel, 1)  # warm up both paths
        direct = measure(direct_channel)
        gateway = measure(gateway_channel)
    finally:
        direct_channel.close()
        gateway_channel.close()
    mb = n * 4 / 1e6
    report_line("50 MB value, median of 5 (CreateValue up / Compute down): " + "; ".join(
        f"{label}: {up:.3f} s ({mb / up:.0f} MB/s) / {down:.3f} s ({mb / down:.0f} MB/s)"
        for label, (up, down) in (("direct to worker", direct), ("through mTLS gateway", gateway))))

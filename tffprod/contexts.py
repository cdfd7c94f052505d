"""TFF execution contexts over gRPC channels (imports TFF)."""

from __future__ import annotations

from typing import Any, Optional

import grpc
import tensorflow_federated as tff

# Large models travel as single messages; gRPC's Python side caps at 2 GB.
GRPC_OPTIONS = (
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
)


def insecure_channel(address: str) -> grpc.Channel:
    """A plaintext channel; only for workers on loopback that this process started."""
    return grpc.insecure_channel(address, options=GRPC_OPTIONS)


def channel_context(channel: grpc.Channel, *, compiler_fn: Optional[Any] = "default") -> Any:
    """A synchronous TFF execution context that runs computations over ``channel``.

    Args:
        channel: an open gRPC channel to a TFF executor service.
        compiler_fn: TFF's compiler to apply before execution; ``None`` sends computations as given.
    """
    stub = tff.framework.RemoteExecutorGrpcStub(channel)

    def stack_fn(cardinalities):
        cardinalities.setdefault(tff.CLIENTS, 0)
        executor = tff.framework.RemoteExecutor(stub)
        executor.set_cardinalities(cardinalities)
        return executor

    if compiler_fn == "default":
        compiler_fn = tff.backends.native.desugar_and_transform_to_native
    return tff.framework.SyncExecutionContext(
        executor_fn=tff.framework.ResourceManagingExecutorFactory(stack_fn),
        compiler_fn=compiler_fn,
        transform_args=tff.tensorflow.transform_args,
        transform_result=tff.tensorflow.transform_result,
    )

"""TFF execution contexts over gRPC channels (imports TFF).

TFF's remote executor treats UNAVAILABLE and FAILED_PRECONDITION as retryable
and its context retries them forever, replaying the whole invocation (facts
section 5): a dead site would hang a round and keep a thread busy for good.
tffprod's stub fails fast instead, with ``SiteUnavailableError``, and the round
router decides how often to try again and until when.
"""

from __future__ import annotations

from typing import Any, Optional

import grpc
import tensorflow_federated as tff

from tffprod.sites.connection import GRPC_OPTIONS
from tffprod.sites.rpc_errors import status_line
from tffprod.errors import SiteUnavailableError


class FailFastStub(tff.framework.RemoteExecutorStub):
    """A ``RemoteExecutorStub`` whose retryable errors end the call instead of looping."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._inner = tff.framework.RemoteExecutorGrpcStub(channel)

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._inner, method)(request)
        except tff.framework.RetryableError as e:
            call = getattr(e, "_grpc_call", None)
            detail = status_line(call) if call is not None else str(e)
            raise SiteUnavailableError(f"executor service unavailable ({detail})") from e

    def get_executor(self, request):
        return self._call("get_executor", request)

    def create_value(self, request):
        return self._call("create_value", request)

    def create_struct(self, request):
        return self._call("create_struct", request)

    def create_call(self, request):
        return self._call("create_call", request)

    def create_selection(self, request):
        return self._call("create_selection", request)

    def compute(self, request):
        return self._call("compute", request)

    def dispose(self, request):
        return self._call("dispose", request)

    def dispose_executor(self, request):
        return self._call("dispose_executor", request)

    @property
    def is_ready(self) -> bool:
        return self._inner.is_ready

def insecure_channel(address: str) -> grpc.Channel:
    """A plaintext channel; only for workers on loopback that this process started."""
    return grpc.insecure_channel(address, options=GRPC_OPTIONS)


def channel_context(channel: grpc.Channel, *, compiler_fn: Optional[Any] = "default") -> Any:
    """A synchronous TFF execution context that runs computations over ``channel``.

    Args:
        channel: an open gRPC channel to a TFF executor service.
        compiler_fn: TFF's compiler to apply before execution; ``None`` sends computations as given.
    """
    stub = FailFastStub(channel)

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

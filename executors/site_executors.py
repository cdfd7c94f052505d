"""The site's own executors on its worker, kept between releases.

A release runs an approved computation on the site's worker through TFF's
executor protocol, spoken only by the site itself. Creating an executor and the
computation's value on it for every release costs the worker a fresh TensorFlow
graph each time (and sends the computation again). So the site keeps one
executor per approved computation and client count, with the computation
already created on it, and per release creates only the argument, the call and
the result, and disposes them after. These ids never leave the site: a caller
has no way to name, share or dispose them.

An executor the worker no longer knows (it was restarted by its supervisor) is
dropped and created again, once, within the same release. At most ``capacity``
executors are kept; the least recently used one is disposed first.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Optional

import grpc

from tffprod.executors.datarefs import RequestRefused
from tffprod.protocol.protos import executor_pb2

__all__ = ["SiteExecutors", "WorkerStageError"]

# Calls the worker: (method, request message, response class, caller's context) -> response message.
WorkerCall = Callable[[str, Any, Any, Any], Any]
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)


class WorkerStageError(Exception):
    """The worker refused or failed a step of a release (``stage``, with its status ``code``)."""

    def __init__(self, stage: str, code: grpc.StatusCode) -> None:
        super().__init__(f"{stage}: {code.name}")
        self.stage = stage
        self.code = code


class _Entry:
    def __init__(self, executor: Any, function: Any) -> None:
        self.executor = executor
        self.function = function


class SiteExecutors:
    """Runs approved computations on the worker (see the module docstring)."""

    def __init__(self, call_worker: WorkerCall, capacity: int = 16) -> None:
        self._call_worker = call_worker
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: "collections.OrderedDict[tuple[str, int], _Entry]" = collections.OrderedDict()

    def _call(self, stage: str, request: Any, response_type: Any, context: Any) -> Any:
        try:
            return self._call_worker(stage, request, response_type, context)
        except RequestRefused as refused:
            raise WorkerStageError(stage, refused.code) from None

    def run(self, key: str, computation: Any, argument: Any, clients: int, context: Any) -> Any:
        """The result ``Value`` of ``computation`` (identified by ``key``) on ``argument`` with ``clients`` clients.

        Raises:
            WorkerStageError: the worker refused or failed a step.
        """
        entry, fresh = self._entry(key, computation, clients, context)
        try:
            return self._compute(entry, argument, context)
        except WorkerStageError as error:
            if fresh or error.code in _TRANSIENT:
                raise
            self._drop((key, clients), entry)  # the worker may have been restarted: once more, afresh
            entry, _ = self._entry(key, computation, clients, context)
            return self._compute(entry, argument, context)

    def _entry(self, key: str, computation: Any, clients: int, context: Any) -> tuple[_Entry, bool]:
        with self._lock:
            entry = self._entries.get((key, clients))
            if entry is not None:
                self._entries.move_to_end((key, clients))
                return entry, False
        request = executor_pb2.GetExecutorRequest()
        cardinality = request.cardinalities.add()
        cardinality.placement.uri = "clients"
        cardinality.cardinality = clients
        executor = self._call("GetExecutor", request, executor_pb2.GetExecutorResponse, context).executor
        try:
            function = self._call("CreateValue", executor_pb2.CreateValueRequest(
                executor=executor, value=executor_pb2.Value(computation=computation)),
                executor_pb2.CreateValueResponse, context).value_ref
        except WorkerStageError:
            self._dispose(executor, context)
            raise
        entry = _Entry(executor, function)
        with self._lock:
            self._entries[(key, clients)] = entry
            evicted = self._entries.popitem(last=False)[1] if len(self._entries) > self._capacity else None
        if evicted is not None:
            self._dispose(evicted.executor, context)
        return entry, True

    def _compute(self, entry: _Entry, argument: Any, context: Any) -> Any:
        executor, created = entry.executor, []
        try:
            ref = self._call("CreateValue", executor_pb2.CreateValueRequest(executor=executor, value=argument),
                             executor_pb2.CreateValueResponse, context).value_ref
            created.append(ref)
            call = self._call("CreateCall", executor_pb2.CreateCallRequest(
                executor=executor, function_ref=entry.function, argument_ref=ref),
                executor_pb2.CreateCallResponse, context).value_ref
            created.append(call)
            return self._call("Compute", executor_pb2.ComputeRequest(executor=executor, value_ref=call),
                              executor_pb2.ComputeResponse, context).value
        finally:
            if created:
                try:
                    self._call_worker("Dispose", executor_pb2.DisposeRequest(executor=executor, value_ref=created),
                                      executor_pb2.DisposeResponse, context)
                except RequestRefused:
                    pass  # a restarted worker has none of them anyway

    def _drop(self, key: tuple[str, int], entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]

    def _dispose(self, executor: Any, context: Optional[Any]) -> None:
        try:
            self._call_worker("DisposeExecutor", executor_pb2.DisposeExecutorRequest(executor=executor),
                              executor_pb2.DisposeExecutorResponse, context)
        except RequestRefused:
            pass

"""The coordinator's side of the release protocol (imports TFF).

Under an approved plan the remote backend does not speak TFF's executor
protocol to a site. For a site's part of a round it sends a ``ReleaseRequest``
(:mod:`tffprod.executors.release` is the other end): the plan id, the role of
the computation, the round, which of the plan's datasets (and clients) to read,
and the *free* state leaves as tensors, in the order of the plan's release terms
(:mod:`tffprod.protocol.terms`). The site answers with the result's tensors,
which are packed back into the structure ``merge`` expects.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Mapping, Sequence

import grpc
import numpy as np

from tffprod.protocol import release_pb2, release_pb2_grpc
from tffprod.protocol.terms import ReleaseTerms
from tffprod.protocol.tensors import from_numpy, to_numpy
from tffprod.sites.rpc_errors import site_error

__all__ = ["ReleaseClient", "grpc_sender", "grpc_step_sender", "leaf_at", "pack", "pieces", "selection"]


def leaf_at(value: Any, path: str) -> Any:
    """The leaf of a (nested) Python value at a terms path (``a/b/0``): mappings, attrs classes,
    named tuples and TFF structs are entered by element name, sequences by position."""
    import tensorflow_federated as tff

    for part in path.split("/") if path else ():
        if isinstance(value, tff.structure.Struct):
            names = [n for n, _ in tff.structure.iter_elements(value)]
            value = value[names.index(part)] if part in names else value[int(part)]
        elif isinstance(value, Mapping):
            value = value[part]
        elif hasattr(value, part) and not part.isdigit():
            value = getattr(value, part)
        else:
            value = value[int(part)]
    return value


def selection(refs: Sequence[str]) -> list[release_pb2.DatasetSelection]:
    """The release's dataset selection from backend references (``NAME`` or ``NAME#INDEX``), in order."""
    chosen: dict[str, list[int]] = {}
    for ref in refs:
        name, sep, index = ref.partition("#")
        clients = chosen.setdefault(name, [])
        if sep:
            clients.append(int(index))
    return [release_pb2.DatasetSelection(name=name, clients=clients) for name, clients in chosen.items()]


def pack(type_spec: Any, leaves: Any) -> Any:
    """A value of ``type_spec`` (a struct of tensors, maybe SERVER-placed) from its leaves in order."""
    import tensorflow_federated as tff

    if isinstance(type_spec, tff.FederatedType):
        return pack(type_spec.member, leaves)
    if isinstance(type_spec, tff.StructType):
        return tff.structure.Struct([(name, pack(member, leaves))
                                     for name, member in tff.structure.iter_elements(type_spec)])
    return next(leaves)


class ReleaseClient:
    """Asks one site for releases of one approved plan.

    Args:
        plan: the verified :class:`tffprod.protocol.plan_document.Plan`.
        send: sends a ``ReleaseRequest`` to the site and returns its ``ReleaseResponse``
            (:func:`grpc_sender` over the site's channel; the local backend calls a simulated site).
    """

    def __init__(self, plan: Any, send: Callable[[release_pb2.ReleaseRequest], release_pb2.ReleaseResponse]) -> None:
        self._plan = plan
        self._send = send

    @functools.cached_property
    def _terms(self) -> dict[str, ReleaseTerms]:
        return {entry["role"]: ReleaseTerms(entry, self._plan.computation_bytes(entry["role"]))
                for entry in self._plan.computations}

    def release(self, role: str, round_num: int, state: Any, refs: Sequence[str], result_type: Any,
                secagg: Any = None) -> Any:
        """Run the plan's ``role`` computation at the site on ``state`` and ``refs``; its result (under
        secure aggregation, ``secagg`` the round's ``SecAggInput``: the site's masked vector).

        Raises:
            SiteUnavailableError: the site did not answer (UNAVAILABLE).
            ReleaseRefusedError: the site refused or failed the release (its one-line reason).
        """
        terms = self._terms[role]
        request = release_pb2.ReleaseRequest(
            plan_id=self._plan.plan_id, role=role, round=round_num if role == "train" else 0,
            datasets=selection(refs),
            state=[from_numpy(np.asarray(leaf_at(state, leaf.path), dtype=None if leaf.dtype == "string"
                                          else leaf.dtype)) for leaf in terms.free])
        if secagg is not None:
            request.secagg.CopyFrom(secagg)
        response = self._send(request)
        if secagg is not None:
            return to_numpy(response.result[0]) if len(response.result) == 1 else None
        return pack(result_type, iter(to_numpy(t) for t in response.result))


def pieces(request: release_pb2.ReleaseRequest, size: int = 2**20) -> Iterator[release_pb2.ReleaseChunk]:
    """``request`` as the pieces of ``ReleaseStream``: the request without its numeric state contents,
    then those contents, concatenated in order, ``size`` bytes a piece."""
    header = release_pb2.ReleaseRequest()
    header.CopyFrom(request)
    for tensor in header.state:
        tensor.ClearField("content")
    yield release_pb2.ReleaseChunk(header=header)
    content = memoryview(b"".join(tensor.content for tensor in request.state))
    for start in range(0, len(content), size):
        yield release_pb2.ReleaseChunk(data=bytes(content[start:start + size]))


def grpc_sender(channel: Callable[[], Any]) -> Callable[[release_pb2.ReleaseRequest], release_pb2.ReleaseResponse]:
    """Sends releases over the site's current channel (``channel()``); UNAVAILABLE becomes
    ``SiteUnavailableError`` (the router retries it), any other refusal ``ReleaseRefusedError``
    with the site's one-line reason (:mod:`tffprod.sites.rpc_errors`)."""

    def send(request: release_pb2.ReleaseRequest) -> release_pb2.ReleaseResponse:
        try:
            return release_pb2_grpc.ReleaseStub(channel()).ReleaseStream(pieces(request))
        except grpc.RpcError as e:
            raise site_error(e, what="site") from e

    return send


def grpc_step_sender(channel: Callable[[], Any]) -> Callable[[str, Any], Any]:
    """Sends secure aggregation steps (``advertise``, ``share``, ``unmask``) over the site's current
    channel; refusals become tffprod errors, as for releases."""
    methods = {"advertise": "SecAggAdvertise", "share": "SecAggShare", "unmask": "SecAggUnmask"}

    def send(step: str, message: Any) -> Any:
        try:
            return getattr(release_pb2_grpc.ReleaseStub(channel()), methods[step])(message, timeout=60)
        except grpc.RpcError as e:
            raise site_error(e, what="site") from e

    return send

"""Site computations and plan entries built by hand from TFF's protos (TF-free), for unit tests.

A site computation has the type ``(<state=<w=float32[2], lr=float32>@SERVER, client_data={str}@CLIENTS>
-> <float32[2]>@SERVER)``; what it computes does not matter to the checks these tests make (the e2e
tests run real ones). ``name`` changes its bytes, and so its hash.
"""

from __future__ import annotations

import base64
from typing import Optional

from tffprod.protocol.plan_document import computation_sha256
from tffprod.protocol.protos import computation_pb2, data_type_pb2

FLOAT, STRING = data_type_pb2.DT_FLOAT, data_type_pb2.DT_STRING


def _federated(type_proto, placement: str, all_equal: bool, member=None):
    federated = type_proto.federated
    federated.placement.value.uri = placement
    federated.all_equal = all_equal
    if member is not None:
        federated.member.CopyFrom(member)
    return federated


def _tensor(dtype: int, *dims: int) -> computation_pb2.Type:
    return computation_pb2.Type(tensor=computation_pb2.TensorType(dtype=dtype, dims=list(dims)))


def site_computation(name: str = "x", *, result_placement: str = "server",
                     result_all_equal: bool = True) -> computation_pb2.Computation:
    c = computation_pb2.Computation()
    function = c.type.function
    state = computation_pb2.Type()
    state.struct.element.add(name="w", value=_tensor(FLOAT, 2))
    state.struct.element.add(name="lr", value=_tensor(FLOAT))
    _federated(function.parameter.struct.element.add(name="state").value, "server", True, state)
    _federated(function.parameter.struct.element.add(name="client_data").value, "clients", False,
               _tensor(STRING))
    result = computation_pb2.Type()
    result.struct.element.add(value=_tensor(FLOAT, 2))
    _federated(function.result, result_placement, result_all_equal, result)
    c.reference.name = name
    return c


def computation_entry(comp: computation_pb2.Computation, *, role: str = "train", lr: float = 0.1,
                      bound: Optional[float] = 1.0, sha256: Optional[str] = None) -> dict:
    """A plan's ``computations[i]``: the bytes, hash and release terms (``w`` free, ``lr`` pinned)."""
    data = comp.SerializeToString(deterministic=True)
    entry = {"role": role, "sha256": sha256 or computation_sha256(comp), "size_bytes": len(data),
             "type_signature": "(<state=<w=float32[2],lr=float32>@SERVER,client_data={str}@CLIENTS> -> "
                               "<float32[2]>@SERVER)",
             "proto": base64.b64encode(data).decode(),
             "state": {"free": ["w"], "pinned": [{"path": "lr", "dtype": "float32", "shape": [], "value": lr}]}}
    if bound is not None and role == "train":
        entry["bound"] = {"result": ["0"], "l2_norm_per_client": bound}
    return entry

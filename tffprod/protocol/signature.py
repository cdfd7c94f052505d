"""What a plan's site computation takes and returns, read from its ``Type`` proto.

A site computation (the per-site part of a round, ``up_to_merge``) has the
parameter ``<state@SERVER, client_data={str}@CLIENTS>`` (or only ``{str}@CLIENTS``,
for a custom computation without a server argument; or ``str[?]@CLIENTS``, one client
holding every reference, for user-level rounds computed at once) and returns a SERVER-placed
result. Its state and its result are trees of tensors; this module lists their
leaves in a fixed order (depth first, as TFF flattens a structure) with a path
(element names, or positions for unnamed elements, joined by ``/``), a dtype and
a shape. Both ends of the release protocol use the same lists: the coordinator
sends the *free* state leaves in that order, the site checks them exactly and
fills in the *pinned* ones from the plan.

The site also builds the worker's argument ``Value`` from the leaves and reads
the result ``Value`` back into tensors here. TF-free: TFF's generated protobuf
modules and numpy only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

from tffprod.protocol.protos import array_pb2, computation_pb2, data_type_pb2, executor_pb2
from tffprod.protocol import release_pb2
from tffprod.protocol.tensors import DTYPES, TensorError, check, from_array_proto, to_array_proto

__all__ = ["Leaf", "SignatureError", "SiteSignature", "leaves_of"]

_DTYPE_BY_ENUM = {data_type_pb2.DataType.Value(enum): name for name, enum in DTYPES.items()}


class SignatureError(ValueError):
    """A computation is not a site computation the release protocol can run."""


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One tensor of a state or result tree."""

    path: str
    dtype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.path} {self.dtype}{list(self.shape)}"


def _tensor_leaf(path: str, tensor: Any) -> Leaf:
    dtype = _DTYPE_BY_ENUM.get(tensor.dtype)
    if dtype is None:
        raise SignatureError(f"{path or 'value'}: dtype {data_type_pb2.DataType.Name(tensor.dtype)} is not supported")
    if tensor.unknown_rank or any(d < 0 for d in tensor.dims):
        raise SignatureError(f"{path or 'value'}: shape is not fully known")
    return Leaf(path, dtype, tuple(int(d) for d in tensor.dims))


def leaves_of(type_proto: Any, path: str = "") -> Iterator[Leaf]:
    """The tensor leaves of an unplaced ``Type`` proto (tensors nested in structs), depth first."""
    kind = type_proto.WhichOneof("type")
    if kind == "tensor":
        yield _tensor_leaf(path, type_proto.tensor)
    elif kind == "struct":
        for i, element in enumerate(type_proto.struct.element):
            name = element.name or str(i)
            yield from leaves_of(element.value, f"{path}/{name}" if path else name)
    else:
        raise SignatureError(f"{path or 'value'}: a {kind} is not a tensor or a struct of tensors")


def _federated(type_proto: Any, placement: str, where: str) -> Any:
    if type_proto.WhichOneof("type") != "federated" or type_proto.federated.placement.value.uri != placement:
        raise SignatureError(f"{where} is not placed at {placement.upper()}")
    return type_proto.federated


def _value_of(type_proto: Any, leaves: Iterator[release_pb2.Tensor]) -> Any:
    """The ``Value`` proto of an unplaced type, its tensors taken from ``leaves`` in order."""
    kind = type_proto.WhichOneof("type")
    if kind == "tensor":
        return executor_pb2.Value(array=to_array_proto(next(leaves), array_pb2, data_type_pb2))
    value = executor_pb2.Value()
    value.struct.SetInParent()
    for element in type_proto.struct.element:
        value.struct.element.add(name=element.name, value=_value_of(element.value, leaves))
    return value


def _tensors_in(value: Any, where: str) -> Iterator[release_pb2.Tensor]:
    """The tensors of a result ``Value`` (placed values are entered), depth first."""
    kind = value.WhichOneof("value")
    if kind == "array":
        yield from_array_proto(value.array, data_type_pb2)
    elif kind == "struct":
        for element in value.struct.element:
            yield from _tensors_in(element.value, where)
    elif kind == "federated":
        if len(value.federated.value) != 1:
            raise SignatureError(f"{where}: a placed result with {len(value.federated.value)} members")
        yield from _tensors_in(value.federated.value[0], where)
    else:
        raise SignatureError(f"{where}: the result holds a {kind}, not tensors")


class SiteSignature:
    """The state and result leaves of one site computation, and the ``Value`` protos around them.

    Args:
        computation: a ``computation_pb2.Computation`` of type
            ``(<state@SERVER, {str}@CLIENTS> -> result@SERVER)``.

    Raises:
        SignatureError: the computation has another shape, or a leaf is not a fully known tensor.
    """

    state: tuple[Leaf, ...]
    result: tuple[Leaf, ...]

    def __init__(self, computation: Any) -> None:
        if computation.type.WhichOneof("type") != "function":
            raise SignatureError("the computation is not a function")
        function = computation.type.function
        parameter = function.parameter
        if parameter.WhichOneof("type") == "federated":  # {str}@CLIENTS alone: no state
            self._state_type, self._data_type = None, computation_pb2.StructType.Element(value=parameter)
        elif parameter.WhichOneof("type") == "struct" and len(parameter.struct.element) == 2:
            self._state_type, self._data_type = parameter.struct.element
        else:
            raise SignatureError("the parameter is not <state@SERVER, client_data@CLIENTS> or {str}@CLIENTS")
        clients = _federated(self._data_type.value, "clients", "the client data")
        member = clients.member
        # One string per client ({str}@CLIENTS), or one client holding them all (str[?]@CLIENTS: a site's
        # sampled users, every one's update computed in one computation).
        if clients.all_equal or member.WhichOneof("type") != "tensor" or \
                _DTYPE_BY_ENUM.get(member.tensor.dtype) != "string" or list(member.tensor.dims) not in ([], [-1]):
            raise SignatureError("the client data is not one string per client ({str}@CLIENTS) or one client's "
                                 "strings (str[?]@CLIENTS)")
        self.one_client = list(member.tensor.dims) == [-1]
        if self._state_type is None:
            self._state_member, self.state = None, ()
        else:
            self._state_member = _federated(self._state_type.value, "server", "the state").member
            self.state = tuple(leaves_of(self._state_member))
        result = function.result
        if result.WhichOneof("type") == "federated":
            self._result_member = _federated(result, "server", "the result").member
        else:
            self._result_member = result
        self.result = tuple(self._result_leaves(self._result_member, ""))

    def _result_leaves(self, type_proto: Any, path: str) -> Iterator[Leaf]:
        """Result leaves: tensors, inside structs and SERVER-placed members."""
        if type_proto.WhichOneof("type") == "federated":
            yield from self._result_leaves(_federated(type_proto, "server", path or "the result").member, path)
        elif type_proto.WhichOneof("type") == "struct":
            for i, element in enumerate(type_proto.struct.element):
                name = element.name or str(i)
                yield from self._result_leaves(element.value, f"{path}/{name}" if path else name)
        else:
            yield from leaves_of(type_proto, path)

    def argument(self, state: Sequence[release_pb2.Tensor], refs: Sequence[bytes]) -> Any:
        """The worker's argument ``Value``: ``state`` (every leaf, checked) at SERVER, ``refs`` at CLIENTS.

        Raises:
            TensorError: a state tensor is not exactly its leaf's dtype and shape.
        """
        if len(state) != len(self.state):
            raise TensorError(f"the state has {len(self.state)} tensors, got {len(state)}")
        for tensor, leaf in zip(state, self.state):
            check(tensor, leaf.dtype, leaf.shape, f"state {leaf.path}")
        data = executor_pb2.Value()
        data.federated.type.CopyFrom(self._data_type.value.federated)
        for group in [list(refs)] if self.one_client else [[ref] for ref in refs]:
            array = array_pb2.Array(dtype=data_type_pb2.DataType.Value("DT_STRING"))
            if self.one_client:
                array.shape.dim.append(len(group))
            array.string_list.value.extend(group)
            data.federated.value.append(executor_pb2.Value(array=array))
        if self._state_type is None:
            return data
        value = executor_pb2.Value()
        value.struct.SetInParent()
        server = value.struct.element.add(name=self._state_type.name).value.federated
        server.type.CopyFrom(self._state_type.value.federated)
        server.value.append(_value_of(self._state_member, iter(state)))
        value.struct.element.add(name=self._data_type.name, value=data)
        return value

    def read_result(self, value: Any) -> list[release_pb2.Tensor]:
        """The result's tensors, each checked against the declared result leaves.

        Raises:
            SignatureError: the worker's result does not have the declared type.
        """
        tensors = list(_tensors_in(value, "the result"))
        if len(tensors) != len(self.result):
            raise SignatureError(f"the result has {len(tensors)} tensors, {len(self.result)} declared")
        for tensor, leaf in zip(tensors, self.result):
            try:
                check(tensor, leaf.dtype, leaf.shape, f"result {leaf.path}", finite=False)
            except TensorError as e:
                raise SignatureError(str(e)) from None
        return tensors


def parse_computation(data: bytes) -> Any:
    """A ``Computation`` proto from its bytes."""
    return computation_pb2.Computation.FromString(data)

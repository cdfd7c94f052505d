"""Executor protocol messages as TFF's RemoteExecutor builds them, for the gateway tests."""

from __future__ import annotations

from tffprod.protocol.protos import array_pb2, computation_pb2, data_type_pb2, executor_pb2


def string_array(*values: bytes) -> executor_pb2.Value:
    return executor_pb2.Value(array=array_pb2.Array(
        dtype=data_type_pb2.DT_STRING, shape=array_pb2.ArrayShape(),
        string_list=array_pb2.Array.BytesList(value=list(values))))


def clients_strings(*names: bytes) -> executor_pb2.Value:
    """What TFF's RemoteExecutor sends for a ``FederatedType(np.str_, CLIENTS)`` argument."""
    federated_type = computation_pb2.FederatedType(
        placement=computation_pb2.PlacementSpec(value=computation_pb2.Placement(uri="clients")), all_equal=False,
        member=computation_pb2.Type(tensor=computation_pb2.TensorType(dtype=data_type_pb2.DT_STRING)))
    return executor_pb2.Value(federated=executor_pb2.Value.Federated(
        type=federated_type, value=[string_array(n) for n in names]))

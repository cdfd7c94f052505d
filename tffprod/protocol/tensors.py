"""Tensors on the wire: ``Tensor`` messages <-> numpy arrays <-> TFF ``Array`` protos.

The release protocol carries only dense tensors (``release.proto``). Both ends
use this module: the coordinator to send its state and read a result, the
site to check what arrives and to hand it to its worker. TF-free (numpy and
protobuf only).

A tensor's dtype is a numpy name from :data:`DTYPES`; numbers travel as raw
little-endian bytes in C order, strings as a list of byte strings.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tffprod.protocol import release_pb2

__all__ = ["DTYPES", "TensorError", "check", "from_array_proto", "from_numpy", "to_array_proto", "to_numpy"]

# numpy name -> TFF DataType enum name (tensorflow_federated/proto/v0/data_type.proto).
DTYPES = {
    "float16": "DT_HALF", "float32": "DT_FLOAT", "float64": "DT_DOUBLE",
    "int8": "DT_INT8", "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64",
    "uint8": "DT_UINT8", "uint16": "DT_UINT16", "uint32": "DT_UINT32", "uint64": "DT_UINT64",
    "bool": "DT_BOOL", "string": "DT_STRING",
}
_BY_ENUM_NAME = {v: k for k, v in DTYPES.items()}


class TensorError(ValueError):
    """A tensor does not match what was expected, or cannot be converted."""


def from_numpy(value: Any) -> release_pb2.Tensor:
    """A ``Tensor`` message holding ``value`` (a numpy array or scalar, bytes or str)."""
    array = np.asarray(value)
    if array.dtype.kind in "SUO":
        flat = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.reshape(-1).tolist()]
        return release_pb2.Tensor(dtype="string", shape=list(array.shape), strings=flat)
    name = array.dtype.name
    if name not in DTYPES:
        raise TensorError(f"dtype {name} is not supported")
    return release_pb2.Tensor(dtype=name, shape=list(array.shape),
                              content=np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())


def check(tensor: release_pb2.Tensor, dtype: str, shape: Sequence[int], where: str, *, finite: bool = True) -> None:
    """Raise ``TensorError`` unless ``tensor`` is exactly ``dtype[shape]`` with well-formed contents
    (and, with ``finite``, only finite floats)."""
    if tensor.dtype != dtype or list(tensor.shape) != list(shape):
        got = f"{tensor.dtype or '?'}{list(tensor.shape)}"
        raise TensorError(f"{where}: expected {dtype}{list(shape)}, got {got[:80]}")
    size = math.prod(shape)
    if dtype == "string":
        if tensor.content or len(tensor.strings) != size:
            raise TensorError(f"{where}: expected {size} string(s)")
        return
    if tensor.strings or len(tensor.content) != size * np.dtype(dtype).itemsize:
        raise TensorError(f"{where}: expected {size * np.dtype(dtype).itemsize} bytes of {dtype}, "
                          f"got {len(tensor.content)}")
    if finite and np.dtype(dtype).kind == "f" and size and not np.all(np.isfinite(to_numpy(tensor))):
        raise TensorError(f"{where}: holds a value that is not finite")


def to_numpy(tensor: release_pb2.Tensor) -> np.ndarray:
    """The numpy array of a ``Tensor`` (strings as an object array of bytes)."""
    if tensor.dtype == "string":
        return np.array(list(tensor.strings), dtype=object).reshape(tuple(tensor.shape))
    if tensor.dtype not in DTYPES:
        raise TensorError(f"dtype {tensor.dtype[:40]!r} is not supported")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    return np.frombuffer(tensor.content, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(tuple(tensor.shape))


# numpy name -> the ``Array`` list field of a scalar.
_LIST_FIELDS = {
    "float16": "float16_list", "float32": "float32_list", "float64": "float64_list",
    "int8": "int8_list", "int16": "int16_list", "int32": "int32_list", "int64": "int64_list",
    "uint8": "uint8_list", "uint16": "uint16_list", "uint32": "uint32_list", "uint64": "uint64_list",
    "bool": "bool_list", "string": "string_list",
}


def to_array_proto(tensor: release_pb2.Tensor, array_pb2: Any, data_type_pb2: Any) -> Any:
    """TFF's ``Array`` proto for a checked ``Tensor``, as TFF itself serializes one: strings as a
    list, other scalars as a one-element list, other tensors as raw ``content`` (the worker
    refuses anything else)."""
    array = array_pb2.Array(dtype=data_type_pb2.DataType.Value(DTYPES[tensor.dtype]))
    array.shape.dim.extend(tensor.shape)
    if tensor.dtype == "string":
        array.string_list.value.extend(tensor.strings)
    elif tensor.shape:
        array.content = tensor.content
    else:
        value = to_numpy(tensor).reshape(-1)
        if tensor.dtype == "float16":  # TFF keeps half floats as their 16-bit patterns
            value = value.view(np.uint16)
        getattr(array, _LIST_FIELDS[tensor.dtype]).value.extend(value.tolist())
    return array


def from_array_proto(array: Any, data_type_pb2: Any) -> release_pb2.Tensor:
    """A ``Tensor`` message from TFF's ``Array`` proto (what a worker returns)."""
    enum_name = data_type_pb2.DataType.Name(array.dtype)
    name = _BY_ENUM_NAME.get(enum_name)
    if name is None:
        raise TensorError(f"the worker returned a {enum_name} array")
    shape = list(array.shape.dim)
    if name == "string":
        return release_pb2.Tensor(dtype="string", shape=shape, strings=list(array.string_list.value))
    if array.HasField("content"):
        return release_pb2.Tensor(dtype=name, shape=shape, content=array.content)
    kind = array.WhichOneof("kind")
    values = list(getattr(array, kind).value) if kind else []
    numpy_dtype = np.dtype(name)
    if name == "float16":
        flat = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        flat = np.array(values, dtype=numpy_dtype)
    return release_pb2.Tensor(dtype=name, shape=shape,
                              content=flat.astype(numpy_dtype.newbyteorder("<")).reshape(shape).tobytes())

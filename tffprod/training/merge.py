"""Merging the sites' partial results in NumPy where that is provably what TFF's ``merge`` does.

A round's partials are folded at the coordinator with the mergeable form's ``merge``. For FedAvg and
the DP aggregators it compiles to one TensorFlow graph that adds each leaf of one partial to the same
leaf of the other (``AddV2``, maybe through ``Identity``), and calling it means a round trip through
TFF's value serialization and the coordinator's worker per site. :func:`leafwise_sum` reads the compiled
graph and, when it is exactly that, returns a merge that adds the leaves with NumPy in the same order
and dtypes: IEEE addition of the same operands, so the same bits. Any other graph (another op, a
leaf added to a different one, a sequence, an initializer) gets None, and the coordinator calls
``merge`` as before.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

__all__ = ["leafwise_sum"]

_PASS_THROUGH = {"Identity"}
_SUMS = {"AddV2", "Add"}


def leafwise_sum(merge: Any) -> Optional[Callable[[list[Any], Any], Any]]:
    """A NumPy merge equal to TFF computation ``merge`` (``<T, T> -> T``), or None if it is not one.

    The returned function takes the partials (in merge order) and the partials' TFF type, and returns
    their sum as a value of that type (``tff.structure.Struct`` of NumPy arrays).
    """
    import tensorflow_federated as tff

    proto = tff.framework.serialize_computation(tff.backends.native.desugar_and_transform_to_native(merge))
    dtypes = _summed_leaf_dtypes(proto)
    if dtypes is None:
        return None

    def merged(partials: list[Any], type_spec: Any) -> Any:
        import numpy as np

        from tffprod.backends.release import pack

        leaves = [_leaves(partial) for partial in partials]
        if any(len(flat) != len(dtypes) for flat in leaves):
            raise ValueError(f"a partial has {[len(f) for f in leaves]} leaves, the merge adds {len(dtypes)}")
        total = [np.asarray(leaf, dtype=dtype) for leaf, dtype in zip(leaves[0], dtypes)]
        for flat in leaves[1:]:
            total = [np.add(t, np.asarray(leaf, dtype=dtype)) for t, leaf, dtype in zip(total, flat, dtypes)]
        return pack(type_spec, iter(total))

    return merged


def _leaves(value: Any) -> list[Any]:
    import tensorflow_federated as tff

    return tff.structure.flatten(tff.structure.from_container(value, recursive=True))


def _summed_leaf_dtypes(proto: Any) -> Optional[list[Any]]:
    """The NumPy dtype of each leaf if ``proto`` is one TF graph computing ``a[i] + b[i]`` for every leaf."""
    import tensorflow as tf

    if proto.WhichOneof("computation") != "tensorflow":
        return None
    comp = proto.tensorflow
    if comp.initialize_op or not comp.parameter.HasField("struct") or len(comp.parameter.struct.element) != 2:
        return None
    first, second = (_tensor_names(element) for element in comp.parameter.struct.element)
    outputs = _tensor_names(comp.result)
    if first is None or second is None or outputs is None or not len(first) == len(second) == len(outputs):
        return None
    graph = tf.compat.v1.GraphDef()
    if not comp.graph_def.Unpack(graph):
        return None
    nodes = {node.name: node for node in graph.node}
    if any(node.op not in _PASS_THROUGH | _SUMS | {"Placeholder", "NoOp"} for node in graph.node):
        return None
    dtypes = []
    for a, b, out in zip(first, second, outputs):
        total = _source(nodes, out)
        if total is None or total.op not in _SUMS:
            return None
        operands = [_source(nodes, name) for name in total.input if not name.startswith("^")]
        placeholders = [nodes[node] for node in (_node_name(a), _node_name(b)) if node in nodes]
        if len(operands) != 2 or len(placeholders) != 2 or any(p.op != "Placeholder" for p in placeholders):
            return None
        if sorted(id(o) for o in operands) != sorted(id(p) for p in placeholders):
            return None
        dtype = total.attr["T"].type
        if any(p.attr["dtype"].type != dtype for p in placeholders):
            return None
        dtypes.append(tf.as_dtype(dtype).as_numpy_dtype)
    return dtypes


def _tensor_names(binding: Any) -> Optional[list[str]]:
    """The tensor names of a binding in order; None if it holds anything but tensors and structs."""
    kind = binding.WhichOneof("binding")
    if kind == "tensor":
        return [binding.tensor.tensor_name]
    if kind == "struct":
        names: list[str] = []
        for element in binding.struct.element:
            inner = _tensor_names(element)
            if inner is None:
                return None
            names += inner
        return names
    return None


def _node_name(tensor: str) -> Optional[str]:
    """``"add:0"`` -> ``"add"``; None for another output than the first (no op here has more)."""
    name, _, index = tensor.partition(":")
    return name if index in ("", "0") else None


def _source(nodes: dict[str, Any], tensor: str) -> Optional[Any]:
    """The node that computes ``tensor``, through ``Identity`` ops."""
    seen = 0
    node = nodes.get(_node_name(tensor) or "")
    while node is not None and node.op in _PASS_THROUGH and seen < len(nodes):
        inputs = [name for name in node.input if not name.startswith("^")]
        if len(inputs) != 1:
            return None
        node, seen = nodes.get(_node_name(inputs[0]) or ""), seen + 1
    return node

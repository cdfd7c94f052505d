"""The coordinator's own computations, built from the task or thawed from the plan cache.

Between the sites' parts of a round the coordinator runs five TFF computations of its own: the
learning process's ``initialize``, ``set_model_weights`` and ``get_model_weights``, and its mergeable
form's ``merge`` and ``after_merge``. Building them means building the process and compiling it to
mergeable form: about 6 s on 2 cores, most of the start of a session. ``session plan`` builds them
anyway, so it freezes them (:func:`freeze`) into the plan cache beside the sites' computations
(:mod:`tffprod.sessions.plan_cache`), and ``session run --plan`` thaws them (:func:`thaw`).

A serialized computation keeps its TFF types but not their Python containers (TFF's attrs classes
such as ``LearningAlgorithmState``, named tuples, OrderedDicts): deserialized, it would return
``tff.structure.Struct`` values. A frozen entry therefore names each container beside the proto (its
``module:path``, or a named tuple's name and fields), and :func:`thaw` annotates the deserialized
computation with the types the built one has, so it returns the same Python values: the server state,
its checkpoints, its DP event and the round metrics are the same on both paths. A process whose
containers cannot be named (a class defined inside a function) is not frozen; :func:`freeze` says
why, and the coordinator builds it.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import hashlib
import importlib
import sys
from typing import Any, Optional

import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.types import computation_types

__all__ = ["FORMAT", "ROLES", "CoordinatorComputations", "NotFreezable", "freeze", "from_process", "thaw"]

FORMAT = "tffprod-coordinator/1"
ROLES = ("initialize", "set_model_weights", "get_model_weights", "merge", "after_merge")


class NotFreezable(ValueError):
    """The process's computations cannot be frozen faithfully (the coordinator builds them instead)."""


@dataclasses.dataclass(frozen=True)
class CoordinatorComputations:
    """What the coordinator runs itself, and the type of the sites' part it expects.

    ``up_to_merge`` is the mergeable form's per-site part when built (None when thawed: the sites
    then run a plan's frozen one, checked against ``up_to_merge_type``). ``source`` says where the
    computations came from, for the log.
    """

    initialize: Any
    set_model_weights: Any
    get_model_weights: Any
    merge: Any
    after_merge: Any
    up_to_merge_type: str
    up_to_merge: Any = None
    source: str = "built"


def from_process(process: Any, form: Any) -> CoordinatorComputations:
    """The computations of a built learning ``process`` and its mergeable ``form``."""
    return CoordinatorComputations(
        initialize=process.initialize, set_model_weights=process.set_model_weights,
        get_model_weights=process.get_model_weights, merge=form.merge, after_merge=form.after_merge,
        up_to_merge_type=str(form.up_to_merge.type_signature), up_to_merge=form.up_to_merge)


def freeze(computations: CoordinatorComputations) -> dict[str, Any]:
    """A JSON-ready block of ``computations``: per role the serialized proto (base64), its SHA-256
    and the Python containers of its type.

    Raises:
        NotFreezable: a container of the computations' types cannot be imported by its name.
    """
    entries = []
    for role in ROLES:
        computation = getattr(computations, role)
        data = tff.framework.serialize_computation(computation).SerializeToString(deterministic=True)
        entries.append({"role": role, "sha256": hashlib.sha256(data).hexdigest(),
                        "proto": base64.b64encode(data).decode("ascii"),
                        "containers": _containers(computation.type_signature)})
    return {"format": FORMAT, "up_to_merge_type": computations.up_to_merge_type, "computations": entries}


def thaw(block: dict[str, Any], *, source: str = "plan cache") -> CoordinatorComputations:
    """The computations of a block :func:`freeze` made (its hashes already verified by the caller).

    Raises:
        ValueError: the block is not one of this format, or its containers do not fit its types.
    """
    from tensorflow_federated.python.core.impl.computation.computation_impl import ConcreteComputation

    from tffprod.protocol.protos import computation_pb2

    if block.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} block")
    thawed = {}
    for entry in block["computations"]:
        proto = computation_pb2.Computation.FromString(base64.b64decode(entry["proto"]))
        computation = tff.framework.deserialize_computation(proto)
        annotated = _annotate(computation.type_signature, entry["containers"])
        thawed[entry["role"]] = ConcreteComputation.with_type(computation, annotated)
    if set(thawed) != set(ROLES):
        raise ValueError(f"the block has computations {sorted(thawed)}, expected {sorted(ROLES)}")
    return CoordinatorComputations(**thawed, up_to_merge_type=block["up_to_merge_type"], source=source)


# --------------------------------------------------------------------- the Python containers of a type
# A type's containers are a tree that mirrors the type: None for a tensor (or any type without
# members), {"struct": [...], "container": "module:path"} for a struct (or "namedtuple": [typename,
# fields]; neither: a plain tff.structure.Struct), {"federated": ...}, {"sequence": ...},
# {"function": [parameter, result]}.


def _containers(type_spec: Any) -> Optional[dict[str, Any]]:
    if isinstance(type_spec, computation_types.StructType):
        tree: dict[str, Any] = {"struct": [_containers(member) for _, member in tff.structure.iter_elements(type_spec)]}
        if isinstance(type_spec, computation_types.StructWithPythonType):
            tree.update(_name_of(type_spec.python_container))
        return tree
    if isinstance(type_spec, computation_types.FederatedType):
        return {"federated": _containers(type_spec.member)}
    if isinstance(type_spec, computation_types.SequenceType):
        return {"sequence": _containers(type_spec.element)}
    if isinstance(type_spec, computation_types.FunctionType):
        parameter = None if type_spec.parameter is None else _containers(type_spec.parameter)
        return {"function": [parameter, _containers(type_spec.result)]}
    return None


def _annotate(type_spec: Any, tree: Optional[dict[str, Any]]) -> Any:
    """``type_spec`` (as deserialized: no containers) with the containers of ``tree``."""
    kind = next((k for k in ("struct", "federated", "sequence", "function") if k in tree), None) \
        if isinstance(tree, dict) else None
    if isinstance(type_spec, computation_types.StructType) and kind == "struct":
        assert tree is not None
        members = list(tff.structure.iter_elements(type_spec))
        if len(members) != len(tree["struct"]):
            raise ValueError(f"a struct of {len(members)} members, its containers name {len(tree['struct'])}")
        elements = [(name, _annotate(member, sub)) for (name, member), sub in zip(members, tree["struct"])]
        if "namedtuple" in tree:
            typename, fields = tree["namedtuple"]
            if [name for name, _ in members] != list(fields):
                raise ValueError(f"named tuple {typename} has fields {fields}, its type {[n for n, _ in members]}")
            return computation_types.StructWithPythonType(elements, _namedtuple(typename, tuple(fields)))
        if "container" in tree:
            return computation_types.StructWithPythonType(elements, _import(tree["container"]))
        return computation_types.StructType(elements)
    if isinstance(type_spec, computation_types.FederatedType) and kind == "federated":
        assert tree is not None
        return computation_types.FederatedType(_annotate(type_spec.member, tree["federated"]), type_spec.placement,
                                               type_spec.all_equal)
    if isinstance(type_spec, computation_types.SequenceType) and kind == "sequence":
        assert tree is not None
        return computation_types.SequenceType(_annotate(type_spec.element, tree["sequence"]))
    if isinstance(type_spec, computation_types.FunctionType) and kind == "function":
        assert tree is not None
        parameter, result = tree["function"]
        return computation_types.FunctionType(
            None if type_spec.parameter is None else _annotate(type_spec.parameter, parameter),
            _annotate(type_spec.result, result))
    if tree is None and not isinstance(type_spec, (computation_types.StructType, computation_types.FederatedType,
                                                   computation_types.SequenceType, computation_types.FunctionType)):
        return type_spec
    raise ValueError(f"the containers {str(tree)[:80]} do not fit type {str(type_spec)[:80]}")


def _name_of(container: type) -> dict[str, Any]:
    """How a container is written: ``{"container": "module:path"}`` for a class found by that path (a
    module's or a module class's attribute), else ``{"namedtuple": [typename, fields]}`` for a named tuple
    made on the fly (dp_accounting makes a new one for each DP event it converts)."""
    module = sys.modules.get(container.__module__)
    paths = [container.__qualname__]
    if module is not None:
        paths += [name for name, value in vars(module).items() if value is container]
        paths += [f"{name}.{attribute}" for name, value in vars(module).items()
                  if isinstance(value, type) and value.__module__ == module.__name__
                  for attribute, member in vars(value).items() if member is container]
    for path in paths:
        name = f"{container.__module__}:{path}"
        try:
            if _import(name) is container:
                return {"container": name}
        except ValueError:
            continue
    fields = getattr(container, "_fields", None)
    if issubclass(container, tuple) and isinstance(fields, tuple):
        return {"namedtuple": [container.__name__, list(fields)]}
    raise NotFreezable(f"its state holds a {container.__qualname__} (module {container.__module__}), a class "
                       "that cannot be imported by name")


@functools.lru_cache(maxsize=None)
def _namedtuple(typename: str, fields: tuple[str, ...]) -> type:
    """One named tuple class per name and fields, so equal types stay equal."""
    return collections.namedtuple(typename, fields)


def _import(name: str) -> type:
    module, _, qualname = name.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"container {name} cannot be imported: {e}") from None
    if not isinstance(found, type):
        raise ValueError(f"container {name} is not a class")
    return found

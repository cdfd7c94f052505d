"""Values of a TFF type built leaf by leaf, for tests that feed computations made-up inputs (imports TFF)."""

from __future__ import annotations

from typing import Any, Callable, Iterator


def tensor_types(type_spec: Any) -> Iterator[Any]:
    """The tensor types of ``type_spec``'s leaves, in order (through federated and struct types)."""
    import tensorflow_federated as tff

    if isinstance(type_spec, tff.FederatedType):
        yield from tensor_types(type_spec.member)
    elif isinstance(type_spec, tff.StructType):
        for _, member in tff.structure.iter_elements(type_spec):
            yield from tensor_types(member)
    else:
        yield type_spec


def value_of(type_spec: Any, leaf: Callable[[Any], Any]) -> Any:
    """A value of ``type_spec`` whose leaves are ``leaf(tensor_type)``, packed as releases are."""
    from tffprod.backends.release import pack

    return pack(type_spec, iter([leaf(t) for t in tensor_types(type_spec)]))

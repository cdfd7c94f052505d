"""Data by name: the coordinator names datasets, only the site knows their paths.

What travels, observed (a TFF 0.87 ``RemoteExecutor`` talking to a worker through
a logging proxy): every argument of an invocation is its own ``CreateValue``;
``CreateStruct`` later joins them by reference. A ``FederatedType(np.str_,
CLIENTS)`` argument arrives as ``Value.federated`` (placement ``clients``,
``all_equal`` false) whose members are scalar ``Array`` values with ``dtype:
DT_STRING`` and the bytes in ``string_list``; a SERVER-placed string is the same
with placement ``server`` and ``all_equal`` true; an unplaced string is a bare
``Value.array``. TFF never sends strings as raw ``content`` (its
``to_proto_content`` refuses ``np.str_``). Computations travel as
``Value.computation`` in their own ``CreateValue``.

The rule (applied to every ``CreateValue``):

* Every string inside a CLIENTS-placed value (``federated`` with placement
  ``clients`` and ``all_equal`` false, at any nesting depth below it) is a
  dataset reference: it must be a catalog name, and it is replaced by the
  dataset's local path before the worker sees it.
* A dataset with a client-id column is many clients, addressed as
  ``NAME#INDEX`` (index 0..num_clients-1 in the order of their sorted ids; the
  ids never leave the site): the reference becomes the path of that client's
  shard, a file of only its rows (the bare name still means the whole file, as
  evaluation reads it). An index out of range is ``NOT_FOUND``; a ``#`` on a
  dataset without a client-id column, or a malformed index, is ``INVALID_ARGUMENT``.
* With an ``allowed`` set of names (the datasets of an approved plan), any other
  dataset is ``PERMISSION_DENIED``.
* Any other CLIENTS string is refused with ``NOT_FOUND`` naming it and the
  known names.
* Strings outside CLIENTS values (SERVER state, unplaced constants) pass
  through: the server state of real processes carries strings (TFF's DP
  aggregator keeps its DP event's class name there), so refusing them would
  refuse DP training. Such a string can still reach the clients through
  ``federated_broadcast``, as can a path embedded in a computation: what
  closes that is computation approval (below), not this rule.
* A CLIENTS string array given as raw ``content`` is refused
  (``INVALID_ARGUMENT``): it cannot be checked.
* Bytes that do not parse as a ``CreateValueRequest`` are refused
  (``INVALID_ARGUMENT``).
* Requests without strings are forwarded byte for byte (never re-serialized).

On the way back, catalog paths found in ``Compute`` results (a computation that
returns its argument would hand the path to the coordinator) are turned back
into names, and paths in error messages become ``dataset 'NAME'``.

What this rule is NOT: a sandbox. Computations (``Value.computation``) and
serialized dataset graphs (``Value.sequence``) pass through untouched, and a
computation can embed any path as a constant and read any file the worker can
read (shared/design/tff-0.87-facts.md section 6). Keeping arbitrary code out is
the job of computation approval, not of this module.

TF-free: only the generated protobuf modules (``protos``) are used.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Collection, Mapping, Optional

import grpc

from tffprod.protocol.protos import array_pb2, data_type_pb2, executor_pb2

__all__ = ["CatalogEntry", "DataRefs", "RequestRefused"]

_DT_STRING = data_type_pb2.DataType.Value("DT_STRING")
_SHOWN = 120  # longest caller-provided string echoed in an error message


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """One dataset a site serves. ``path`` never leaves the site; the rest is public metadata.

    ``budget`` is the site's privacy budget for this data, ``{"epsilon", "delta"}``, or None.
    ``client_id`` names the column saying which client each row belongs to (None: the
    dataset is one client); ``client_paths`` holds client ``i``'s shard at position ``i``
    and, like ``path``, never leaves the site (only ``num_clients`` does).
    """

    name: str
    path: str
    format: str
    schema: dict
    num_examples: int
    content_hash: str
    budget: Optional[dict] = None
    client_id: Optional[str] = None
    num_clients: int = 1
    client_paths: tuple[str, ...] = ()

    def public(self) -> dict[str, Any]:
        """What the site tells coordinators about this dataset (no paths, no client ids;
        ``budget`` and ``client_id`` may be None)."""
        return {"name": self.name, "format": self.format, "schema": self.schema,
                "num_examples": self.num_examples, "content_hash": self.content_hash,
                "budget": None if self.budget is None else dict(self.budget),
                "client_id": self.client_id, "num_clients": self.num_clients}


class RequestRefused(Exception):
    """A request the gateway answers itself, with ``code`` and ``detail``."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _shown(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _is_string_array(array: array_pb2.Array) -> bool:
    return array.dtype == _DT_STRING or array.WhichOneof("kind") == "string_list"


def _is_clients(federated: executor_pb2.Value.Federated) -> bool:
    spec = federated.type
    return spec.placement.value.uri == "clients" and not spec.all_equal


def _walk_arrays(value: executor_pb2.Value, visit: Callable[[array_pb2.Array], None], *,
                 clients_only: bool = False, at_clients: bool = False) -> None:
    """Call ``visit`` on every array inside ``value`` (only those in CLIENTS values with
    ``clients_only``); code-carrying kinds are not entered."""
    kind = value.WhichOneof("value")
    if kind == "array":
        if at_clients or not clients_only:
            visit(value.array)
    elif kind == "struct":
        for element in value.struct.element:
            _walk_arrays(element.value, visit, clients_only=clients_only, at_clients=at_clients)
    elif kind == "federated":
        inside = at_clients or _is_clients(value.federated)
        for member in value.federated.value:
            _walk_arrays(member, visit, clients_only=clients_only, at_clients=inside)
    # "computation" and "sequence" are code: they pass through (see the module docstring).


def _stamp(path: str) -> Optional[tuple[int, int]]:
    """``(size, mtime_ns)`` of a file, or None if there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


class DataRefs:
    """Name <-> path translation for one site's catalog.

    Args:
        site: the site's name, used in error messages.
        catalog: catalog name -> entry.
    """

    def __init__(self, site: str, catalog: Mapping[str, CatalogEntry]) -> None:
        for key, entry in catalog.items():
            if key != entry.name:
                raise ValueError(f"catalog key {key!r} does not match its entry's name {entry.name!r}")
            if not entry.name or not entry.path:
                raise ValueError(f"catalog entry {key!r} needs a non-empty name and path")
            if entry.client_id is not None and len(entry.client_paths) != entry.num_clients:
                raise ValueError(f"catalog entry {key!r} has {entry.num_clients} clients but "
                                 f"{len(entry.client_paths)} client paths")
        self.site = site
        self._paths = {name.encode(): entry.path.encode() for name, entry in catalog.items()}
        self._clients = {name.encode(): [p.encode() for p in entry.client_paths]
                         for name, entry in catalog.items() if entry.client_id is not None}
        every = list(self._paths.items()) + [(f"{n.decode()}#{i}".encode(), p)
                                             for n, paths in self._clients.items() for i, p in enumerate(paths)]
        # Longest first, so a path that contains another path is replaced whole.
        self._names_by_path = sorted(((p, n) for n, p in every), key=lambda pn: -len(pn[0]))
        self._known = ", ".join(sorted(catalog)) or "none"
        self._stamps = {name: _stamp(entry.path) for name, entry in catalog.items()}

    def check_unchanged(self, name: str) -> None:
        """Refuse to read dataset ``name`` if its file changed since the site started (size or
        modification time): the plans approved its content then, by hash.

        Raises:
            RequestRefused: FAILED_PRECONDITION.
        """
        stamp = self._stamps.get(name)
        if stamp is not None and _stamp(self._paths[name.encode()].decode()) != stamp:
            raise RequestRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"site {self.site}: dataset '{name}' changed on disk since the site started; "
                                 "its operator restarts the site (and syncs it), and plans are made again")

    def _resolve(self, ref: bytes, allowed: Optional[set[bytes]]) -> bytes:
        """The local path of ``NAME`` or ``NAME#INDEX``; see the module docstring for refusals."""
        name, sep, index = ref.partition(b"#")
        if name not in self._paths:
            raise RequestRefused(grpc.StatusCode.NOT_FOUND,
                                 f"dataset '{_shown(name)}' is not in site {self.site}'s catalog "
                                 f"(known: {self._known})")
        if allowed is not None and name not in allowed:
            if name + b"#" not in allowed:
                raise RequestRefused(grpc.StatusCode.PERMISSION_DENIED,
                                     f"dataset '{_shown(name)}' is not in the approved plan")
            if not sep:
                raise RequestRefused(grpc.StatusCode.PERMISSION_DENIED,
                                     f"dataset '{_shown(name)}' is approved only client by client "
                                     f"('{_shown(name)}#INDEX'), not as a whole")
        if not sep:
            return self._paths[name]
        clients = self._clients.get(name)
        if clients is None:
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"dataset '{_shown(name)}' at site {self.site} has no client-id column: "
                                 f"refer to it without '#'")
        if not index.isdigit() or (len(index) > 1 and index.startswith(b"0")):
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"'{_shown(ref)}': a client index is a whole number 0..{len(clients) - 1}")
        if int(index) >= len(clients):
            raise RequestRefused(grpc.StatusCode.NOT_FOUND,
                                 f"dataset '{_shown(name)}' at site {self.site} has no client {int(index)} "
                                 f"(clients 0..{len(clients) - 1})")
        return clients[int(index)]

    @property
    def total_clients(self) -> int:
        """Clients over every dataset with a client-id column (a release selects at most these)."""
        return sum(len(paths) for paths in self._clients.values())

    def local_path(self, name: str, index: Optional[int] = None) -> bytes:
        """The local path of catalog dataset ``name``, or of its client ``index``'s shard.

        Raises:
            RequestRefused: as for a reference in ``names_to_paths`` (unknown name, no client-id
                column, index out of range).
        """
        return self._resolve(name.encode() if index is None else f"{name}#{index}".encode(), None)

    def names_to_paths(self, request: bytes, *, allowed: Optional[Collection[str]] = None) -> bytes:
        """Check and rewrite a serialized ``CreateValueRequest``.

        Args:
            request: the serialized request.
            allowed: if given, the only datasets that may be used: ``NAME`` allows the
                dataset whole and client by client, ``NAME#`` only client by client.

        Raises:
            RequestRefused: INVALID_ARGUMENT (unparseable, raw string content, a malformed client
                reference), NOT_FOUND (unknown name, client index out of range) or
                PERMISSION_DENIED (a dataset outside ``allowed``).
        """
        allowed_names = None if allowed is None else {a.encode() for a in allowed}
        try:
            message = executor_pb2.CreateValueRequest.FromString(request)
        except Exception:  # protobuf's DecodeError, or a recursion-limit error
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"site {self.site}: CreateValue request does not parse") from None
        changed = False

        def visit(array: array_pb2.Array) -> None:
            nonlocal changed
            if not _is_string_array(array):
                return
            if array.HasField("content"):
                raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"site {self.site}: string arrays must list their values (string_list)")
            values = array.string_list.value
            for i, name in enumerate(values):
                values[i] = self._resolve(name, allowed_names)
                changed = True

        _walk_arrays(message.value, visit, clients_only=True)
        return message.SerializeToString() if changed else request

    def paths_to_names(self, response: bytes) -> bytes:
        """Replace catalog paths inside string results of a serialized ``ComputeResponse``.

        Cheap when no path occurs: a byte search, no parsing.
        """
        if not any(path in response for path, _ in self._names_by_path):
            return response
        try:
            message = executor_pb2.ComputeResponse.FromString(response)
        except Exception:
            return response  # not ours to judge; the coordinator will complain
        changed = False

        def visit(array: array_pb2.Array) -> None:
            nonlocal changed
            if array.WhichOneof("kind") != "string_list":
                return
            values = array.string_list.value
            for i, value in enumerate(values):
                restored = value
                for path, name in self._names_by_path:
                    restored = restored.replace(path, name)
                if restored != value:
                    values[i] = restored
                    changed = True

        _walk_arrays(message.value, visit)
        return message.SerializeToString() if changed else response

    def redact(self, text: str) -> str:
        """``text`` with every catalog path replaced by ``dataset 'NAME'``."""
        for path, name in self._names_by_path:
            text = text.replace(path.decode(), f"dataset '{name.decode()}'")
        return text

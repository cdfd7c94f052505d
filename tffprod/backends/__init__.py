"""Backends by name: chosen at run time, never at import time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tffprod.backends.base import Backend, SiteTarget
from tffprod.errors import SpecError

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore

BACKENDS = ("local", "remote")


def create_backend(name: str, *, registry: RegistryStore | None = None, **options) -> Backend:
    """The backend called ``name``; ``remote`` reaches the sites recorded in ``registry``.

    Raises:
        SpecError: no backend has that name.
    """
    if name == "local":
        from tffprod.backends.local import LocalBackend

        return LocalBackend(**options)
    if name == "remote":
        from tffprod.backends.remote import RemoteBackend
        from tffprod.sites.connection import SiteConnection

        if registry is None:
            raise SpecError("the remote backend needs the registry's sites")
        connections = {row["name"]: SiteConnection.from_registry(row) for row in registry.list_sites()
                       if row.get("address")}
        return RemoteBackend(connections, **options)
    raise SpecError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "SiteTarget", "create_backend"]

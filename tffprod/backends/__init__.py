"""Backends by name: chosen at run time, never at import time."""

from __future__ import annotations

from tffprod.backends.base import Backend, SiteTarget
from tffprod.errors import SpecError

BACKENDS = ("local",)


def create_backend(name: str, **options) -> Backend:
    """The backend called ``name``.

    Raises:
        SpecError: no backend has that name.
    """
    if name == "local":
        from tffprod.backends.local import LocalBackend

        return LocalBackend(**options)
    if name == "remote":
        raise SpecError("backend 'remote' (sites over mTLS) is not available in this version; use --backend local")
    raise SpecError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "SiteTarget", "create_backend"]

"""Model registry operations an operator performs: aliases, access lists, the access rule.

Each change is one registry call followed by an entry in the coordinator's audit log
(``Registry.record_action``). TF-free.

The access rule (used by ``model export --for SITE`` and ``tffprod eval``): a site may receive
a version if ``site:SITE`` is on its access list, or the site belongs to a federation listed
as ``federation:NAME``. A new version's list holds the sites that trained it and the
session's federation, if any.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from tffprod.errors import AccessDeniedError

if TYPE_CHECKING:
    from tffprod.registry.protocol import ModelVersionRow, RegistryStore


def _subject(version: ModelVersionRow) -> str:
    return f"{version['name']}:{version['version']}"


def require_access(registry: RegistryStore, version: ModelVersionRow, site: str) -> None:
    """Raises ``AccessDeniedError`` unless ``site`` may receive ``version``."""
    if not registry.site_may_receive(version, site):
        allowed = ", ".join(version["access"]) or "nobody"
        raise AccessDeniedError(
            f"site {site!r} may not receive model {_subject(version)} (allowed: {allowed}); "
            f"grant it with 'tffprod model access {_subject(version)} --allow site:{site}'")


def set_alias(registry: RegistryStore, ref: str, alias: str) -> ModelVersionRow:
    """Points ``alias`` at the version ``ref`` names and audits it; returns the version."""
    with registry.atomic():
        version = registry.set_model_alias(ref, alias)
        registry.record_action("model.alias", _subject(version), {"alias": alias})
    return version


def remove_alias(registry: RegistryStore, name: str, alias: str) -> ModelVersionRow:
    """Removes ``alias`` of model ``name`` and audits it; returns the version it named."""
    with registry.atomic():
        version = registry.remove_model_alias(name, alias)
        registry.record_action("model.alias.remove", _subject(version), {"alias": alias})
    return version


def set_access(registry: RegistryStore, ref: str, *, allow: Sequence[str] = (),
               revoke: Sequence[str] = ()) -> ModelVersionRow:
    """Edits a version's access list and audits it; returns the version."""
    with registry.atomic():
        version = registry.set_model_access(ref, allow=list(allow), revoke=list(revoke))
        registry.record_action("model.access", _subject(version),
                               {"allow": list(allow), "revoke": list(revoke), "access": version["access"]})
    return version

"""The tffprod registry: sites, datasets, sessions, rounds, model versions, evaluations.

One SQLite file (via ``sqlite-utils``), schema managed by migrations::

    from tffprod.registry import Registry, default_path

    with Registry.open(default_path()) as registry:
        registry.add_dataset(site="hospital-a", name="visits", path="/data/visits.csv",
                             format="csv", schema={...}, num_examples=1200, content_hash="sha256:...")
        registry.get_dataset("hospital-a/visits")      # latest version; "hospital-a/visits:1" for one

Library code takes any ``RegistryStore`` (``tffprod.registry.protocol``): what it needs of a
registry, which ``Registry`` provides.

Importing this package is cheap: SQLite libraries load when a registry is
opened, and TensorFlow never does.
"""

from __future__ import annotations

import os

from tffprod.registry.protocol import RegistryStore
from tffprod.registry.store import Registry

__all__ = ["Registry", "RegistryStore", "default_path"]

ENV_VAR = "TFFPROD_REGISTRY"


def default_path() -> str:
    """Returns the registry path to use when none is given.

    Returns:
        ``$TFFPROD_REGISTRY`` if set (and not empty), else ``./tffprod.db``;
        made absolute, except ``":memory:"``.
    """
    path = os.environ.get(ENV_VAR) or "tffprod.db"
    return path if path == ":memory:" else os.path.abspath(path)

"""The naming rules, in one place: the registry, the session spec and the site config all use these.

- :data:`LOWER_NAME` (sessions, sites, federations): lowercase letters, digits, ``.``, ``_``, ``-``,
  starting with a letter or digit; safe as a directory name and a certificate's common name.
- :data:`NAME` (datasets, models): the same with uppercase letters; never ``/`` or ``:``, which
  references (``SITE/NAME:VERSION``, ``MODEL@ALIAS``) use as separators.

TF-free, and imports nothing of tffprod but its errors (the registry depends on it).
"""

from __future__ import annotations

import re
from typing import Any

from tffprod.errors import SpecError

__all__ = ["LOWER_NAME", "NAME", "federation_name"]

LOWER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def federation_name(name: Any) -> str:
    """A federation name (:data:`LOWER_NAME`).

    Raises:
        SpecError: naming the bad name.
    """
    if not isinstance(name, str) or not LOWER_NAME.match(name):
        raise SpecError(f"federation name {name!r} must start with a lowercase letter or digit and hold only "
                        "lowercase letters, digits, '.', '_' and '-'")
    return name

"""Turn TFF metric structures into plain JSON-ready Python values."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def plain_metrics(value: Any) -> Any:
    """Nested mappings of numbers, with numpy scalars as Python floats/ints and empty parts dropped."""
    if hasattr(value, "_asdict"):
        value = value._asdict()
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            plain = plain_metrics(item)
            if plain not in ({}, [], None):
                out[str(key)] = plain
        return out
    if isinstance(value, (list, tuple)):
        return [plain_metrics(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.item() if value.size == 1 else value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (int, bool, str)):
        return value
    try:  # tff.structure.Struct and similar
        from tensorflow_federated import structure

        if isinstance(value, structure.Struct):
            return plain_metrics(structure.to_odict_or_tuple(value))
    except ImportError:  # pragma: no cover
        pass
    return None

"""Rows with vector, string and 64-bit features, and their schema (TF-free)."""

from __future__ import annotations

from tffprod.data.schema import Feature, Schema

VECTOR = Schema(
    features=(Feature("pixels", "float32", (2, 3)), Feature("site", "string")),
    label=Feature("digit", "int64"),
)


def vector_rows(n: int = 5) -> list[dict]:
    return [
        {"pixels": [[i, 0.5, -2.0], [3.25, 4.0, 1e-3]], "site": f"hôpital-{i}", "digit": i * 10**12 - 3}
        for i in range(n)
    ]

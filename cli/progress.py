"""Per-round progress lines for people watching a terminal."""

from __future__ import annotations

import click

_SHORT = {"sparse_categorical_accuracy": "acc", "binary_accuracy": "acc", "accuracy": "acc", "loss": "loss",
          "auc": "auc"}


def print_round(report) -> None:
    """One line on stderr: round, main metrics, epsilon, sites and time."""
    parts = [f"round {report.round_num:>3}/{report.rounds}"]
    for key, label in _SHORT.items():
        value = report.metrics.get(key)
        if isinstance(value, float):
            parts.append(f"{label} {value:.4f}")
    if report.epsilon is not None:
        parts.append(f"eps {report.epsilon:.3g}")
    ok = sum(1 for s in report.sites if s["status"] == "ok")
    parts.append(f"sites {ok}/{len(report.sites)}")
    parts.append(f"{report.duration_s:.2f}s")
    click.echo("  ".join(parts), err=True)

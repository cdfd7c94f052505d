"""How values read in human output: metrics, privacy and DP parameters, never a Python ``None`` or dict."""

from __future__ import annotations

from typing import Any, Mapping, Optional


def metrics_line(metrics: Mapping[str, Any]) -> str:
    """``loss 0.1493  binary_accuracy 0.9604 (1200 examples)``: float metrics, counts left out but examples."""
    shown = [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and not k.startswith("num_")]
    examples = metrics.get("num_examples")
    line = "  ".join(shown) or "-"
    return f"{line} ({examples} examples)" if isinstance(examples, int) else line


def privacy_line(epsilon: Optional[float], delta: Optional[float], unit: Optional[str] = None) -> str:
    """``epsilon 4.494 at delta 1e-05 per client (column customer_id)``, or ``no DP``."""
    if epsilon is None:
        return "no DP"
    return f"epsilon {epsilon:.4g} at delta {delta:g}" + (f" per {unit}" if unit else "")


def dp_line(dp: Mapping[str, Any]) -> str:
    """A version's DP parameters: ``gaussian_fixed: noise_multiplier 1.202, clip 2``, or ``none`` (nested tables,
    such as the unit of privacy, are shown where they belong)."""
    mechanism = dp.get("mechanism") or "none"
    if mechanism == "none":
        return "none (no differential privacy)"
    rest = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in dp.items()
            if k != "mechanism" and v is not None and not isinstance(v, Mapping)]
    return f"{mechanism}: {', '.join(rest)}" if rest else mechanism

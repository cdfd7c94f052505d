"""PNG plots of a session's rounds (matplotlib, Agg): training metrics, epsilon and each site's time.

Each plot is a ``matplotlib.figure.Figure`` saved as PNG (Agg, without pyplot: no global backend or
figure state), from plain series built by :func:`tffprod.sessions.report` out of the registry's
round rows. A missing value (a round nobody took part in, a site not called) leaves a gap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["WIDTH_PX", "plot_epsilon", "plot_metrics", "plot_site_times"]

DPI = 100
WIDTH_PX = 800
_PANEL_HEIGHT_IN = 2.6
Series = Sequence[float | None]


def _figure(panels: int):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_PX / DPI, 0.6 + _PANEL_HEIGHT_IN * panels), dpi=DPI)
    return figure, figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]


def _values(series: Series) -> list[float]:
    return [math.nan if v is None else float(v) for v in series]


def _save(figure, path: Path, title: str) -> Path:
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _integer_rounds(axes, rounds: Sequence[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("round")
    if len(rounds) == 1:
        axes.set_xlim(rounds[0] - 1, rounds[0] + 1)


def plot_metrics(rounds: Sequence[int], metrics: Mapping[str, Series], path: Path, *, title: str) -> Path:
    """One panel per training metric (loss, accuracy, ...) over ``rounds``; writes ``path``."""
    figure, axes = _figure(len(metrics))
    for ax, (name, series) in zip(axes, metrics.items()):
        ax.plot(rounds, _values(series), marker="o", markersize=3, linewidth=1.5, color="C0")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    _integer_rounds(axes[-1], rounds)
    return _save(figure, path, title)


def plot_epsilon(rounds: Sequence[int], epsilon: Mapping[str, Series], delta: float | None, path: Path, *,
                 title: str) -> Path:
    """Epsilon spent so far after each round, one line per accountant (``rdp``, ``pld``); writes ``path``."""
    figure, (ax,) = _figure(1)
    for i, (accountant, series) in enumerate(epsilon.items()):
        ax.plot(rounds, _values(series), marker="o", markersize=3, linewidth=1.5, color=f"C{i}", label=accountant)
    ax.set_ylabel("epsilon" + (f" (delta {delta:g})" if delta is not None else ""))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if len(epsilon) > 1:
        ax.legend()
    _integer_rounds(ax, rounds)
    return _save(figure, path, title)


def plot_site_times(rounds: Sequence[int], times: Mapping[str, Series], failed: Mapping[str, Sequence[int]],
                    path: Path, *, title: str) -> Path:
    """Each site's time per round (seconds), its failed rounds marked with an x; writes ``path``."""
    figure, (ax,) = _figure(1)
    for i, (site, series) in enumerate(times.items()):
        ax.plot(rounds, _values(series), marker="o", markersize=3, linewidth=1.5, color=f"C{i}", label=site)
        bad = [(n, t) for n, t in zip(rounds, series) if n in set(failed.get(site, ())) and t is not None]
        if bad:
            ax.plot([n for n, _ in bad], [t for _, t in bad], linestyle="none", marker="x", markersize=9,
                    color=f"C{i}")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(title="site (x: failed)" if any(failed.values()) else "site")
    _integer_rounds(ax, rounds)
    return _save(figure, path, title)

"""Per-round progress of ``session run``, ``session resume`` and ``demo``, on stderr.

On a terminal, a tqdm bar (rounds done of planned; loss, accuracy and epsilon in its postfix), with
the ``tffprod`` logger's lines printed above it. Otherwise (a pipe, a log file, CI) one plain line
per round. With ``--json`` nothing: stdout and stderr stay data.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Callable, Iterator, Optional, TextIO

import click

from tffprod.cli.options import interactive
from tffprod.sessions.round_metrics import train_metrics

_SHORT = {"sparse_categorical_accuracy": "acc", "binary_accuracy": "acc", "accuracy": "acc", "loss": "loss",
          "auc": "auc"}

Progress = Callable[[Any], None]  # called with a tffprod.sessions.rounds.RoundReport after each committed round


def _main_metrics(report: Any) -> list[tuple[str, float]]:
    """``[("acc", 0.91), ("loss", 0.31), ...]``: the metrics people watch, one per short label."""
    metrics = train_metrics(report.metrics)
    shown: dict[str, float] = {}
    for key, label in _SHORT.items():
        value = metrics.get(key)
        if isinstance(value, float) and label not in shown:
            shown[label] = value
    return list(shown.items())


def round_line(report: Any) -> str:
    """``round   2/3  acc 0.8123  loss 0.4812  eps 1.63  sites 3/3  0.52s``."""
    parts = [f"round {report.round_num:>3}/{report.rounds}"]
    parts += [f"{label} {value:.4f}" for label, value in _main_metrics(report)]
    if report.epsilon is not None:
        parts.append(f"eps {report.epsilon:.3g}")
    ok = sum(1 for s in report.sites if s["status"] == "ok")
    parts.append(f"sites {ok}/{len(report.sites)}")
    parts.append(f"{report.duration_s:.2f}s")
    return "  ".join(parts)


def print_round(report: Any) -> None:
    """One line on stderr: round, main metrics, epsilon, sites and time."""
    click.echo(round_line(report), err=True)


class RoundBar:
    """A tqdm bar over a session's rounds, opened at the first report (a resumed session starts part way) and
    closed at the last planned round, so that what is printed after the training starts on a line of its own."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self.bar: Any = None

    def __call__(self, report: Any) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=report.rounds, initial=report.round_num - 1, unit="round", desc="training",
                            file=self.file, dynamic_ncols=True, leave=True)
        postfix = [f"{label} {value:.4f}" for label, value in _main_metrics(report)]
        if report.epsilon is not None:
            postfix.append(f"eps {report.epsilon:.3g}")
        self.bar.set_postfix_str("  ".join(postfix), refresh=False)
        self.bar.update(1)
        if report.round_num >= report.rounds:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def round_progress(*, as_json: bool, tty: Optional[bool] = None, file: Optional[TextIO] = None
                   ) -> Iterator[Optional[Progress]]:
    """The progress callback for a session's rounds: None with ``--json``, a tqdm bar when stderr is a
    terminal (``tty``: whether it is, by default asked of stderr), else :func:`print_round`."""
    if as_json:
        yield None
        return
    if not (interactive() if tty is None else tty):
        yield print_round
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = RoundBar(file or sys.stderr)
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger("tffprod")]):
            yield bar
    finally:
        bar.close()

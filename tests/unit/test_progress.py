"""Progress of ``session run`` / ``session resume``: one line per round off a terminal, a tqdm bar on one,
nothing with --json."""

from __future__ import annotations

import io

from tffprod.cli.progress import round_progress
from tffprod.sessions.rounds import RoundReport

from ..helpers.recorded_sessions import ACCURACY, EPSILON, LOSS, participants


def reports(first: int = 1, *, dp: bool = True) -> list[RoundReport]:
    return [RoundReport(round_num=n, rounds=3, metrics={"loss": LOSS[n - 1], "sparse_categorical_accuracy":
                                                        ACCURACY[n - 1], "num_examples": 200},
                        sites=participants(n), duration_s=0.5 + n, epsilon=EPSILON[n - 1] if dp else None,
                        clients=2) for n in range(first, 4)]


def test_off_a_terminal_each_round_is_one_plain_line_on_stderr(capsys) -> None:
    with round_progress(as_json=False) as progress:  # pytest's stderr is not a terminal
        assert progress is not None
        for report in reports():
            progress(report)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "round   1/3  acc 0.5012  loss 0.9123  eps 1.12  sites 2/2  1.50s",
        "round   2/3  acc 0.6345  loss 0.7456  eps 1.63  sites 1/2  2.50s",
        "round   3/3  acc 0.7589  loss 0.5234  eps 2.05  sites 2/2  3.50s",
    ]
    with round_progress(as_json=False, tty=False) as progress:
        assert progress is not None
        progress(reports(dp=False)[0])
    line = capsys.readouterr().err
    assert line == "round   1/3  acc 0.5012  loss 0.9123  sites 2/2  1.50s\n" and "None" not in line


def test_a_one_step_session_s_line_shows_its_loss(capsys) -> None:
    """A report holding the one-step process's nested measurements (client_work holds the metrics)."""
    report = RoundReport(round_num=1, rounds=3, metrics={"client_work": {"loss": 0.25, "binary_accuracy": 0.96,
                                                                         "num_users": 12}, "finalizer": {}},
                         sites=participants(1), duration_s=0.09, epsilon=0.5, clients=12)
    with round_progress(as_json=False, tty=False) as progress:
        assert progress is not None
        progress(report)
    assert capsys.readouterr().err == "round   1/3  acc 0.9600  loss 0.2500  eps 0.5  sites 2/2  0.09s\n"


def test_with_json_nothing_is_shown(capsys) -> None:
    for tty in (True, False):
        with round_progress(as_json=True, tty=tty) as progress:
            assert progress is None
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_a_bar_counts_the_rounds_with_the_main_metric_and_epsilon(capsys) -> None:
    screen = io.StringIO()
    with round_progress(as_json=False, tty=True, file=screen) as progress:
        assert progress is not None
        for report in reports():
            progress(report)
    shown = screen.getvalue()
    last = shown.split("\r")[-1]
    assert "3/3" in last and "loss 0.5234" in last and "acc 0.7589" in last and "eps 2.05" in last, shown
    assert "training: 100%" in last and shown.endswith("\n")  # closed, left on screen
    assert capsys.readouterr() == ("", "")  # only the bar, nothing else on stdout or stderr


def test_a_resumed_session_s_bar_starts_after_its_committed_rounds() -> None:
    screen = io.StringIO()
    with round_progress(as_json=False, tty=True, file=screen) as progress:
        assert progress is not None
        for report in reports(first=3, dp=False):
            progress(report)
    frames = [f for f in screen.getvalue().split("\r") if f.strip()]
    assert "2/3" in frames[0] and "3/3" in frames[-1]
    assert not any("0/3" in f or "1/3" in f for f in frames)
    assert "eps" not in frames[-1] and "None" not in screen.getvalue()


def test_the_bar_is_closed_at_the_last_round_so_later_lines_start_on_their_own(capsys) -> None:
    """The demo prints its comparison runs' steps after the training, inside the same progress context."""
    screen = io.StringIO()
    with round_progress(as_json=False, tty=True, file=screen) as progress:
        assert progress is not None
        for report in reports()[:2]:
            progress(report)
        assert not screen.getvalue().endswith("\n")  # open, at 2/3
        progress(reports()[2])
        assert screen.getvalue().endswith("\n") and "3/3" in screen.getvalue().split("\r")[-1]
        closed = screen.getvalue()
    assert screen.getvalue() == closed  # leaving the context draws nothing more

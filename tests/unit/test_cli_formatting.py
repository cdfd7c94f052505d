"""Human output's shared wording: metrics, privacy and DP parameters (no Python ``None`` or dicts)."""

from __future__ import annotations

from tffprod.cli.formatting import dp_line, metrics_line, privacy_line


def test_metrics_show_floats_to_four_places_and_the_example_count() -> None:
    line = metrics_line({"loss": 0.16726, "binary_accuracy": 0.96083, "num_batches": 21, "num_examples": 1200})
    assert line == "loss 0.1673  binary_accuracy 0.9608 (1200 examples)"
    assert metrics_line({"num_examples": 3}) == "- (3 examples)" and metrics_line({}) == "-"


def test_privacy_says_no_dp_or_epsilon_at_delta_per_unit() -> None:
    assert privacy_line(None, None, None) == "no DP"
    assert privacy_line(4.49371, 1e-5, "client (column customer_id)") == \
        "epsilon 4.494 at delta 1e-05 per client (column customer_id)"
    assert privacy_line(2.0, 1e-6) == "epsilon 2 at delta 1e-06"


def test_dp_parameters_read_as_words() -> None:
    assert dp_line({"mechanism": "none"}) == "none (no differential privacy)" == dp_line({})
    assert dp_line({"mechanism": "gaussian_fixed", "noise_multiplier": 1.202, "clip": 2.0, "target": None,
                   "privacy": {"unit": "client"}}) == \
        "gaussian_fixed: noise_multiplier 1.202, clip 2"

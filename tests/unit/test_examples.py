"""Tests for the example tasks and their data preparation (tffprod.examples)."""

from __future__ import annotations

import csv
import itertools
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tffprod import Task
from tffprod.data.files import content_hash, detect_format, iter_examples, validate_file
from tffprod.errors import SpecError
from tffprod.examples import digits, fraud
from tffprod.data.schema import Schema

N_DIGITS = 1797  # scikit-learn's bundled 8x8 digits


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Path]]]:
    out = tmp_path_factory.mktemp("digits")
    return out, digits.prepare(out, seed=0)


@pytest.fixture(scope="module")
def fraud_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Path]]]:
    out = tmp_path_factory.mktemp("fraud")
    return out, fraud.prepare(out, seed=0)


def labels(path: Path, schema: Schema) -> list[int]:
    return [e[schema.label.name] for e in iter_examples(path, detect_format(path), schema)]


def distribution(counts: Counter, classes: int) -> list[float]:
    total = sum(counts.values())
    return [counts[c] / total for c in range(classes)]


def total_variation(p: list[float], q: list[float]) -> float:
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q))


def all_hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): content_hash(p) for p in sorted(out.rglob("*")) if p.is_file()}


def test_modules_import_without_tensorflow() -> None:
    code = (
        "import sys, tffprod.examples.digits, tffprod.examples.fraud; "
        "print(sorted(m for m in sys.modules if m.startswith('tensorflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", [digits, fraud])
def test_tasks_are_declared(module) -> None:
    assert isinstance(module.task, Task)
    assert module.task.schema == module.SCHEMA


# --- digits -------------------------------------------------------------------------------------


def test_digits_files_validate_and_counts_add_up(digits_dir) -> None:
    out, paths = digits_dir
    assert sorted(paths) == sorted(digits.SITES)
    central = {part: out / "central" / f"{part}.tfrecord" for part in ("train", "test")}
    counts = {
        (site, part): validate_file(path, "tfrecord", digits.SCHEMA)
        for site, parts in {**paths, "central": central}.items()
        for part, path in parts.items()
    }
    for part in ("train", "test"):
        assert sum(counts[(s, part)] for s in digits.SITES) == counts[("central", part)]
    assert counts[("central", "train")] + counts[("central", "test")] == N_DIGITS
    assert counts[("central", "test")] == pytest.approx(0.2 * N_DIGITS, abs=1)
    assert paths["hospital-a"]["train"] == out / "hospital-a" / "train.tfrecord"


def test_digits_pixels_are_scaled(digits_dir) -> None:
    _, paths = digits_dir
    examples = iter_examples(paths["hospital-b"]["test"], "tfrecord", digits.SCHEMA)
    pixels = [v for e in examples for v in e["pixels"]]
    assert min(pixels) == 0.0 and max(pixels) == 1.0


def test_digits_test_split_is_stratified(digits_dir) -> None:
    out, _ = digits_dir
    per_class = Counter(labels(out / "central" / "test.tfrecord", digits.SCHEMA))
    assert sorted(per_class) == list(range(10))
    assert max(per_class.values()) - min(per_class.values()) <= 2


def test_digits_split_is_non_iid_but_covers_every_class(digits_dir) -> None:
    _, paths = digits_dir
    dists = {}
    for site, parts in paths.items():
        train = Counter(labels(parts["train"], digits.SCHEMA))
        assert min(train[c] for c in range(10)) >= 3, f"{site} lacks a digit: {train}"
        assert set(labels(parts["test"], digits.SCHEMA)) == set(range(10))
        dists[site] = distribution(train, 10)
    for a, b in itertools.combinations(dists, 2):
        assert total_variation(dists[a], dists[b]) > 0.15, (a, b)
    # Each site's test set is skewed like its training set.
    for site, parts in paths.items():
        test = distribution(Counter(labels(parts["test"], digits.SCHEMA)), 10)
        assert total_variation(test, dists[site]) < min(
            total_variation(test, dists[other]) for other in dists if other != site
        )


def test_digits_is_deterministic_for_a_seed(digits_dir, tmp_path: Path) -> None:
    out, _ = digits_dir
    digits.prepare(tmp_path / "same", seed=0)
    digits.prepare(tmp_path / "other", seed=1)
    assert all_hashes(tmp_path / "same") == all_hashes(out)
    other = all_hashes(tmp_path / "other")
    assert other.keys() == all_hashes(out).keys()
    assert other["hospital-a/train.tfrecord"] != all_hashes(out)["hospital-a/train.tfrecord"]


def test_digits_custom_sites_and_bad_arguments(tmp_path: Path) -> None:
    paths = digits.prepare(tmp_path, sites=("x", "y"), test_fraction=0.5, seed=3)
    assert sorted(paths) == ["x", "y"]
    assert sum(validate_file(p["test"], "tfrecord", digits.SCHEMA) for p in paths.values()) == N_DIGITS // 2 + 1
    for bad in [dict(sites=("a", "a")), dict(sites=("central",)), dict(sites=()), dict(test_fraction=1.0)]:
        with pytest.raises(SpecError):
            digits.prepare(tmp_path, **bad)


# --- fraud --------------------------------------------------------------------------------------


def test_fraud_files_validate_and_counts_add_up(fraud_dir) -> None:
    out, paths = fraud_dir
    assert sorted(paths) == sorted(fraud.FRAUD_RATES)
    for bank, parts in paths.items():
        assert parts == {"train": out / bank / "train.csv", "test": out / bank / "test.csv"}
        train = validate_file(parts["train"], "csv", fraud.SCHEMA)
        test = validate_file(parts["test"], "csv", fraud.SCHEMA)
        assert (train, test) == (1600, 400)
        with open(parts["train"], newline="") as f:
            assert next(csv.reader(f)) == [c.name for c in fraud.SCHEMA.columns]


def test_fraud_rates_differ_by_bank_as_designed(fraud_dir) -> None:
    _, paths = fraud_dir
    rates = {}
    for bank, parts in paths.items():
        ys = labels(parts["train"], fraud.SCHEMA) + labels(parts["test"], fraud.SCHEMA)
        rates[bank] = sum(ys) / len(ys)
        assert rates[bank] == pytest.approx(fraud.FRAUD_RATES[bank], abs=0.015), bank
        assert sum(labels(parts["test"], fraud.SCHEMA)) >= 2, "every test split holds some fraud"
    assert rates["bank-a"] < rates["bank-b"] < rates["bank-c"]


def test_fraud_features_are_in_range(fraud_dir) -> None:
    _, paths = fraud_dir
    rows = list(iter_examples(paths["bank-b"]["train"], "csv", fraud.SCHEMA))
    assert all(0 <= r["hour"] < 24 and 0 <= r["merchant_risk"] <= 1 and r["foreign"] in (0.0, 1.0) for r in rows)
    assert all(r["amount"] > 0 and r["distance_km"] >= 0 and r["card_age_days"] >= 0 for r in rows)


def test_fraud_is_deterministic_for_a_seed(fraud_dir, tmp_path: Path) -> None:
    out, _ = fraud_dir
    fraud.prepare(tmp_path / "same", seed=0)
    fraud.prepare(tmp_path / "other", seed=1)
    assert all_hashes(tmp_path / "same") == all_hashes(out)
    assert all_hashes(tmp_path / "other")["bank-a/train.csv"] != all_hashes(out)["bank-a/train.csv"]


def test_fraud_rejects_tiny_banks(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="n_per_bank"):
        fraud.prepare(tmp_path, n_per_bank=10)

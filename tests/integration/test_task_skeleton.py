"""The task ``dataset infer-schema --task`` writes loads, registers its file, and trains (TensorFlow, no TFF)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tffprod.cli.main import cli
from tffprod.examples import fraud


@pytest.mark.parametrize("labels", ["binary", "classes", "grouped"])
def test_the_written_task_loads_registers_and_trains(tmp_path: Path, labels: str) -> None:
    from tffprod.data.register import register_dataset
    from tffprod.dev.centralized import train_centrally
    from tffprod.registry import Registry
    from tffprod.task import load_task

    paths = fraud.prepare(tmp_path / "data", n_per_bank=300, customers_per_bank=30)
    train, test = paths["bank-c"]["train"], paths["bank-c"]["test"]
    if labels == "classes":  # the hour as a 24-class label
        for path in (train, test):
            path.write_text(path.read_text().replace("is_fraud", "fraud_flag").replace("hour", "is_fraud", 1))
    task_file = tmp_path / "bank_task.py"
    group = ["--group", "transaction"] if labels == "grouped" else []  # the numeric columns as one input
    result = CliRunner().invoke(cli, ["dataset", "infer-schema", str(train), "--label", "is_fraud", "--client-id",
                                      "customer_id", "--task", str(task_file), *group])
    assert result.exit_code == 0, result.output
    task = load_task(f"{task_file}:task")
    assert "customer_id" not in {f.name for f in task.schema.features}
    if group:
        (feature,) = task.schema.features
        assert feature.name == "transaction" and feature.shape == (len(fraud.FEATURE_SCALES),)
    with Registry.open(tmp_path / "r.db") as registry:
        row = register_dataset(registry, "bank-c/train", train, schema=task.schema, client_id="customer_id")
    assert row["num_examples"] == 240 and row["num_clients"] == 30
    metrics = train_centrally(task, train, test, fmt="csv", epochs=2)
    accuracy = metrics.get("binary_accuracy", metrics.get("sparse_categorical_accuracy"))
    assert accuracy is not None and 0.0 <= accuracy <= 1.0 and metrics["loss"] > 0

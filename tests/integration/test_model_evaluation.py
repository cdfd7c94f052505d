"""Evaluating a model version checks its access list first (moved from unit/test_model_registry.py:
the evaluation module imports TensorFlow Federated)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tffprod.errors import AccessDeniedError, NotFoundError
from tffprod.registry import Registry
from tests.helpers.model_versions import EVAL, add_version

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(tmp_path: Path):
    with Registry.open(tmp_path / "registry.db") as opened:
        yield opened


def test_eval_refuses_a_site_that_may_not_receive_the_version(registry, tmp_path):
    """The access rule runs before anything (task, data, backend) is touched: no backend is needed."""
    pytest.importorskip("tensorflow_federated")
    from tffprod.sessions.evaluate import evaluate_version

    add_version(registry, tmp_path)
    registry.add_dataset(site="hospital-z", name="test", path="/data/z.csv", format="csv",
                         schema={"features": []}, num_examples=10, content_hash="sha256:z")
    with pytest.raises(AccessDeniedError, match="'hospital-z' may not receive model flu:1"):
        evaluate_version(registry, "flu:1", ["hospital-a/test", "hospital-z/test"], backend=None)
    with pytest.raises(NotFoundError):
        evaluate_version(registry, "flu:1", ["nowhere/test"], backend=None)
    assert [e["dataset"] for e in registry.list_evaluations("flu", 1)] == [EVAL[0]]

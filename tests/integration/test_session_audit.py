"""A session's run and its end are audited where they run (moved from unit/test_audit_chain.py: the
session runner imports TensorFlow Federated)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tffprod.registry import Registry

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- sessions are audited where they run


class _Backend:
    """Opens nothing; ``fail`` makes opening raise (as a dead site or Ctrl-C would)."""

    name = "fake"
    frozen = False

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail

    def open(self, sites, *, frozen=None, federation=None) -> None:
        if self.fail is not None:
            raise self.fail

    def close(self) -> None:
        pass


def _run(tmp_path: Path, monkeypatch, backend: _Backend) -> list[dict]:
    from types import SimpleNamespace

    from tffprod.sessions import runner as session_module
    from tffprod.sessions.spec import SessionSpec
    from tffprod.task import load_task

    class Trainer:
        def __init__(self, plan, backend, frozen=None) -> None:
            self.refs_by_site = {"bank-a": ["train"]}

        def run_round(self, refs_by_site=None, timeout_s=None, round_num=0):
            return SimpleNamespace(output=SimpleNamespace(metrics={"loss": 1.0}), sites=[], duration_s=0.1)

        def save(self, directory, round_num):
            return directory / f"round-{round_num}", "0" * 64

        def weights(self):
            return None

        def close(self) -> None:
            pass

    monkeypatch.setattr(session_module, "_Trainer", Trainer)
    import tffprod.models.export

    # The real registration, without TensorFlow: no eval datasets, and no SavedModel to write.
    monkeypatch.setattr(tffprod.models.export, "save_artifacts", lambda task, weights, directory: Path(directory))
    spec = SessionSpec.from_dict({"name": "m", "task": "tffprod.examples.fraud:task", "rounds": 2,
                                  "datasets": ["bank-a/train"]})
    datasets = ({"ref": "bank-a/train:1", "site": "bank-a", "name": "train", "num_examples": 30},)
    plan = session_module.SessionPlan(spec, load_task(spec.task), datasets, (), "csv")
    with Registry.open(tmp_path / "r.db") as registry:
        registry.add_dataset(site="bank-a", name="train", path="/data/train.csv", format="csv",
                             schema={"features": []}, num_examples=30, content_hash="sha256:0")
        try:
            session_module.run_session(plan, registry=registry, backend=backend, artifacts_dir=tmp_path)
        except (Exception, KeyboardInterrupt):
            pass
        entries = registry.list_audit()[::-1]
        assert registry.verify_audit()["entries"] == 2
    return entries


@pytest.mark.parametrize("fail, status", [(None, "finished"), (RuntimeError("site down"), "failed"),
                                          (KeyboardInterrupt(), "cancelled")])
def test_a_session_run_and_its_end_are_audited(tmp_path: Path, monkeypatch, fail, status: str) -> None:
    started, ended = _run(tmp_path, monkeypatch, _Backend(fail))
    assert started["action"] == "session.run" and started["subject"].startswith("s-")
    assert started["details"] == {"name": "m", "plan_id": None, "backend": "fake", "datasets": ["bank-a/train:1"],
                                  "rounds_planned": 2}
    assert ended["action"] == "session.end" and ended["subject"] == started["subject"]
    assert ended["details"]["status"] == status, ended["details"]
    if status == "finished":
        assert ended["details"]["model_version"] == "m:1"
    else:
        assert ended["details"]["error"]

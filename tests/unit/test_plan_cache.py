"""Compiled plan computations cached by content (TF-free: keys and files; the compile itself is e2e)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tffprod.data.register import register_dataset
from tffprod.examples import fraud
from tffprod.registry import Registry
from tffprod.sessions import plan_cache
from tffprod.sessions.planning import plan_session
from tffprod.sessions.spec import SessionSpec


@pytest.fixture
def planned(tmp_path: Path):
    """``plan(**spec overrides)``: a SessionPlan over two fraud banks; the task is a copy in tmp_path."""
    paths = fraud.prepare(tmp_path / "data", n_per_bank=200)
    task_file = tmp_path / "fraud_task.py"
    shutil.copy(fraud.__file__, task_file)
    with Registry.open(tmp_path / "r.db") as registry:
        for bank in ("bank-a", "bank-b"):
            register_dataset(registry, f"{bank}/train", paths[bank]["train"], schema=fraud.SCHEMA)

        def plan(**overrides):
            spec = {"name": "fraud", "task": f"{task_file}:task", "datasets": ["bank-a/train", "bank-b/train"],
                    "rounds": 3, "seed": 0, **overrides}
            return plan_session(SessionSpec.from_dict(spec), registry=registry)

        yield plan, task_file


def test_the_key_follows_what_the_computations_are_compiled_from(planned) -> None:
    plan, task_file = planned
    key = plan_cache.cache_key(plan())
    assert key == plan_cache.cache_key(plan()) and len(key) == 64
    assert plan_cache.cache_key(plan(name="renamed")) == key  # the name is not compiled in
    changed = {plan_cache.cache_key(plan(seed=1)), plan_cache.cache_key(plan(rounds=4)),
               plan_cache.cache_key(plan(datasets=["bank-a/train"])),
               plan_cache.cache_key(plan(dp={"mechanism": "gaussian_fixed", "noise_multiplier": 1.0, "clip": 1.0,
                                             "delta": 1e-5}))}
    assert key not in changed and len(changed) == 4
    task_file.write_text(task_file.read_text() + "\n# an edit\n")
    assert plan_cache.cache_key(plan()) != key  # the task's source


def _entry(data: bytes) -> dict:
    return {"role": "train", "sha256": hashlib.sha256(data).hexdigest(), "proto": base64.b64encode(data).decode()}


def test_stored_computations_load_back_and_damaged_ones_are_a_miss(tmp_path: Path) -> None:
    entries = [_entry(b"train bytes"), {**_entry(b"eval bytes"), "role": "eval"}]
    plan_cache.store(tmp_path / "cache", "k" * 64, entries)
    assert plan_cache.load(tmp_path / "cache", "k" * 64) == entries
    assert plan_cache.load(tmp_path / "cache", "x" * 64) is None  # absent
    path = tmp_path / "cache" / f"{'k' * 64}.json"
    tampered = json.loads(path.read_text())
    tampered["computations"][0]["proto"] = base64.b64encode(b"other bytes").decode()
    path.write_text(json.dumps(tampered))
    assert plan_cache.load(tmp_path / "cache", "k" * 64) is None  # a proto off its hash
    path.write_text("{not json")
    assert plan_cache.load(tmp_path / "cache", "k" * 64) is None
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def _coordinator_block(*protos: bytes) -> dict:
    entries = [{**_entry(data), "role": role, "containers": {"function": [None, {"struct": [], "container": "x:y"}]}}
               for role, data in zip(("initialize", "merge"), protos)]
    return {"format": "tffprod-coordinator/1", "up_to_merge_type": "(<...> -> <...>)", "computations": entries}


def test_the_coordinators_computations_are_stored_beside_the_sites_and_verified(tmp_path: Path) -> None:
    cache, key = tmp_path / "cache", "k" * 64
    sites, block = [_entry(b"train bytes")], _coordinator_block(b"initialize bytes", b"merge bytes")
    plan_cache.store(cache, key, sites, block)
    assert plan_cache.load(cache, key) == sites  # the sites' entries as before
    assert plan_cache.load_coordinator(cache, key) == block
    assert plan_cache.load_coordinator(cache, "x" * 64) is None  # absent

    path = cache / f"{key}.json"
    stored = json.loads(path.read_text())
    for damage in (
        lambda b: b["computations"][1].update(proto=base64.b64encode(b"other bytes").decode()),  # a proto
        lambda b: b["computations"][0].update(containers=None),  # what re-annotates its types
        lambda b: b.update(up_to_merge_type="(<> -> <>)"),  # what the plan's computation is checked against
        lambda b: b.pop("sha256"),
    ):
        damaged = json.loads(json.dumps(stored))
        damage(damaged["coordinator"])
        path.write_text(json.dumps(damaged))
        assert plan_cache.load_coordinator(cache, key) is None
        assert plan_cache.load(cache, key) == sites  # the sites' entries do not depend on it
    path.write_text(json.dumps(stored)[:-40])  # truncated
    assert plan_cache.load_coordinator(cache, key) is None
    plan_cache.store(cache, key, sites)  # compiled by a tffprod that did not store them
    assert plan_cache.load(cache, key) == sites and plan_cache.load_coordinator(cache, key) is None


def test_a_process_that_cannot_be_cached_says_why(tmp_path: Path) -> None:
    unavailable = {"format": "tffprod-coordinator/1", "unavailable": "its state holds a Local (module task)"}
    plan_cache.store(tmp_path, "k" * 64, [_entry(b"train bytes")], unavailable)
    assert plan_cache.load_coordinator(tmp_path, "k" * 64) == unavailable


def test_a_run_without_cached_computations_builds_them_and_says_why(planned, tmp_path: Path, caplog,
                                                                    monkeypatch) -> None:
    """The misses need no TensorFlow: the runner hands the plan's computations on as they are."""
    import logging

    from tffprod.sessions.approval import FrozenComputations
    from tffprod.sessions.runner import artifacts_dir_for, with_cached_coordinator

    plan, _ = planned
    session, frozen = plan(), FrozenComputations("p" * 64, train=None)
    registry = type("Registry", (), {"path": tmp_path / "r.db"})()
    cache = artifacts_dir_for(registry.path) / plan_cache.DIRECTORY
    caplog.set_level(logging.INFO, logger="tffprod")
    assert with_cached_coordinator(None, session, registry) is None  # a session run from a spec
    assert with_cached_coordinator(frozen, session, registry) is frozen
    assert "the plan cache holds none for this plan's content" in caplog.text
    plan_cache.store(cache, plan_cache.cache_key(session), [_entry(b"train bytes")],
                     {"format": "tffprod-coordinator/1", "unavailable": "its state holds a Local (module task)"})
    assert with_cached_coordinator(frozen, session, registry) is frozen
    assert "they cannot be cached (its state holds a Local (module task))" in caplog.text
    monkeypatch.setattr(plan_cache, "cache_key", lambda plan: None)
    assert with_cached_coordinator(frozen, session, registry) is frozen
    assert "the task's source cannot be read" in caplog.text

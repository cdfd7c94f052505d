"""Export, evaluation and the CLI, end to end in real subprocesses."""

from __future__ import annotations

import json
import shlex
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tffprod.examples import digits

pytestmark = pytest.mark.e2e

TFFPROD = str(Path(sys.executable).with_name("tffprod"))


def tffprod(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed ``tffprod`` executable with stdout piped (as in a script)."""
    env = {**os.environ, "TFFPROD_REGISTRY": str(cwd / "tffprod.db")}
    proc = subprocess.run([TFFPROD, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A registry with one session trained through ``tffprod session run`` (piped, --json)."""
    root = tmp_path_factory.mktemp("cli")
    paths = digits.prepare(root / "data")
    for site in digits.SITES:
        for split in ("train", "test"):
            tffprod("dataset", "register", f"{site}/{split}", str(paths[site][split]),
                    "--task", "tffprod.examples.digits:task", cwd=root)
    (root / "spec.toml").write_text(
        'name = "digits"\ntask = "tffprod.examples.digits:task"\n'
        f"datasets = {json.dumps([f'{s}/train' for s in digits.SITES])}\n"
        'eval_datasets = ["hospital-a/test"]\nrounds = 3\n'
        '[dp]\nmechanism = "gaussian_fixed"\nnoise_multiplier = 0.3\nclip = 1.0\ndelta = 1e-5\n'
    )
    proc = tffprod("session", "run", "--spec", "spec.toml", "--json", cwd=root)
    return root, json.loads(proc.stdout), proc


def test_session_run_piped_prints_only_json(trained):
    _, result, proc = trained
    assert result["status"] == "finished" and result["rounds_completed"] == 3
    assert "round " not in proc.stderr  # no progress lines when nobody watches
    version = result["model_version"]
    assert (version["name"], version["version"], version["session_id"]) == ("digits", 1, result["id"])
    assert version["epsilon"] > 0 and version["delta"] == 1e-5


def test_tensorboard_event_files_equal_the_registry(trained):
    """The session's event files (artifacts/NAME/ID/tensorboard, beside its checkpoints), read back: each
    round's training metrics, epsilon, per-site participation and time, and the evaluation."""
    from tffprod.registry import Registry

    from ..helpers.tensorboard import assert_events_equal_registry, read_scalars

    root, result, _ = trained
    logdir = root / "artifacts" / "digits" / result["id"] / "tensorboard"
    assert (logdir.parent / "checkpoints").is_dir()
    with Registry.open(root / "tffprod.db") as registry:
        rounds = registry.list_rounds(result["id"])
        evaluations = registry.list_evaluations("digits", 1, kind=None)
    assert {e["kind"] for e in evaluations} == {"dataset", "overall"}
    assert_events_equal_registry(logdir, rounds, evaluations)
    train = read_scalars(logdir / "train")
    assert [train[n]["privacy/epsilon"][0] > 0 for n in (1, 2, 3)] == [True] * 3
    assert {"metrics/loss", "metrics/sparse_categorical_accuracy"} <= set(train[3])


def test_session_report_of_a_real_session(trained):
    """``session report``: the plots and report.md of the session, with the registry's per-round values."""
    import matplotlib.image

    from tffprod.registry import Registry

    root, result, _ = trained
    written = json.loads(tffprod("session", "report", result["id"], "--out", "report", "--json", cwd=root).stdout)
    assert [Path(p).name for p in written["files"]] == ["metrics.png", "epsilon.png", "site_time.png", "report.md"]
    for path in written["files"][:-1]:
        image = matplotlib.image.imread(path)
        assert image.shape[1] == 800 and image.shape[0] >= 280 and image[:, :, :3].std() > 0.05, path
    text = Path(written["report"]).read_text()
    with Registry.open(root / "tffprod.db") as registry:
        rounds = registry.list_rounds(result["id"])
    for r in rounds:
        (line,) = [line for line in text.splitlines() if line.startswith(f"| {r['round_num']} | 3/3 | ")]
        assert f"| {r['epsilon']:.4g} | {r['metrics']['client_work']['train']['loss']:.4f} |" in line
    overall = result["model_version"]["metrics"]["eval"]
    assert f"| all held-out data | - | {overall['loss']:.4f} |" in text
    assert f"`tensorboard --logdir {root / 'artifacts' / 'digits' / result['id'] / 'tensorboard'}`" in text
    assert "None" not in text


def test_session_and_model_listing_json(trained):
    root, result, _ = trained
    sessions = json.loads(tffprod("session", "list", "--json", cwd=root).stdout)
    assert [(s["id"], s["status"], s["rounds_completed"]) for s in sessions] == [(result["id"], "finished", 3)]
    shown = json.loads(tffprod("session", "show", result["id"], "--json", cwd=root).stdout)
    assert [r["round_num"] for r in shown["rounds"]] == [1, 2, 3]
    (version,) = shown["model_versions"]
    assert {e["kind"] for e in version["evaluations"]} == {"dataset", "overall"}
    # For people: each round's loss and accuracy, then the evaluation; no Python None anywhere.
    text = tffprod("session", "show", result["id"], cwd=root).stdout
    rounds = [line for line in text.splitlines() if line.startswith("  round ")]
    assert len(rounds) == 3 and all(" loss " in r and " sparse_categorical_accuracy " in r for r in rounds)
    overall = result["model_version"]["metrics"]["eval"]
    (line,) = [line for line in text.splitlines() if line.startswith("  evaluation, all held-out data: ")]
    assert f"loss {overall['loss']:.4f}" in line
    assert "None" not in text
    models = json.loads(tffprod("model", "list", "--json", cwd=root).stdout)
    assert {k: models[0][k] for k in ("name", "version", "session_id")} == {
        "name": "digits", "version": 1, "session_id": result["id"]}
    assert set(models[0]) >= {"metrics", "epsilon", "delta", "datasets"}


def test_lineage_is_complete_and_export_is_refused_outside_the_access_list(trained):
    from tffprod.models.lineage import missing_fields

    root, result, _ = trained
    shown = json.loads(tffprod("model", "show", "digits:1", "--json", cwd=root).stdout)
    lineage = shown["lineage"]
    assert missing_fields(lineage) == []
    assert lineage["session"]["id"] == result["id"] and lineage["session"]["rounds_completed"] == 3
    assert lineage["sites"] == list(digits.SITES) and lineage["epsilon"] == shown["epsilon"] > 0
    assert {d["ref"] for d in lineage["datasets"]} == {f"{s}/train:1" for s in digits.SITES} | {"hospital-a/test:1"}
    assert set(lineage["metrics"]["per_site"]) == {"hospital-a"} and lineage["metrics"]["overall"]
    assert shown["access"] == [f"site:{s}" for s in digits.SITES]
    tffprod("model", "alias", "digits:1", "production", cwd=root)
    proc = tffprod("model", "export", "digits@production", "--out", "out/denied", "--for", "elsewhere", cwd=root,
                   check=False)
    assert proc.returncode == 12 and "may not receive" in proc.stderr and not (root / "out/denied").exists()
    tffprod("model", "export", "digits@production", "--out", "out/for-a", "--for", "hospital-a", cwd=root)
    card = json.loads((root / "out/for-a/model_card.json").read_text())
    assert card["lineage"] == lineage and card["exported_for"] == "hospital-a"
    assert (root / "out/for-a/model_card.md").is_file()


def test_exported_savedmodel_predicts_like_the_trained_model(trained):
    import tensorflow as tf

    from tffprod.models.export import keras_model_with_weights, load_weights

    root, result, _ = trained
    tffprod("model", "export", "digits:1", "--out", "out/sm", cwd=root)
    tffprod("model", "export", "digits", "--out", "out/m.keras", "--format", "keras", cwd=root)
    x = np.random.default_rng(0).random((7, 64), dtype=np.float32)

    trained_model = keras_model_with_weights(digits.task, load_weights(result["model_version"]["artifact_path"]))
    expected = trained_model({"pixels": x}).numpy()

    loaded = tf.saved_model.load(str(root / "out/sm"))
    serve = loaded.signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["pixels"]
    got = serve(pixels=tf.constant(x))["predictions"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)

    keras_model = tf.keras.models.load_model(root / "out/m.keras")
    np.testing.assert_allclose(keras_model({"pixels": x}).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_export_refuses_to_overwrite(trained):
    root, _, _ = trained
    (root / "taken").mkdir()
    (root / "taken" / "file").write_text("keep me")
    proc = tffprod("model", "export", "digits:1", "--out", "taken", cwd=root, check=False)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    assert (root / "taken" / "file").read_text() == "keep me"


def test_eval_command_records_per_site_metrics(trained):
    from tffprod.models.export import keras_model_with_weights, load_weights
    from tffprod.data.tfdata import read_examples, to_model_input

    root, result, _ = trained
    proc = tffprod("eval", "digits:1", "--dataset", "hospital-b/test", "--dataset", "hospital-c/test",
                   "--json", cwd=root)
    evaluated = json.loads(proc.stdout)
    assert set(evaluated["datasets"]) == {"hospital-b/test:1", "hospital-c/test:1"}
    # Each site's federated evaluation equals plain Keras on that site's file.
    model = keras_model_with_weights(digits.task, load_weights(result["model_version"]["artifact_path"]))
    model.compile(loss=digits.task.loss_fn(), metrics=digits.task.metrics_fn())
    for site in ("hospital-b", "hospital-c"):
        data = read_examples(str(root / f"data/{site}/test.tfrecord"), digits.SCHEMA, "tfrecord")
        expected = model.evaluate(data.map(to_model_input(digits.SCHEMA)).batch(64), verbose=0, return_dict=True)
        got = evaluated["datasets"][f"{site}/test:1"]
        assert got["sparse_categorical_accuracy"] == pytest.approx(expected["sparse_categorical_accuracy"], abs=1e-6)
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    shown = json.loads(tffprod("model", "show", "digits:1", "--json", cwd=root).stdout)
    assert {e["dataset"] for e in shown["evaluations"]} >= {"hospital-b/test:1", "hospital-c/test:1"}
    assert {e["dataset"] for e in shown["evaluations"] if e["kind"] == "overall"} >= {
        "hospital-b/test:1,hospital-c/test:1"}


def _ready_info(site: subprocess.Popen) -> dict:
    """The JSON that ``site serve --json`` prints once it accepts calls."""
    text = ""
    for line in site.stdout:
        text += line
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"site exited before it was ready: {text!r}")


def _first_stderr_line(args: list[str], *, cwd: Path, says: str) -> tuple[float, float]:
    """Run ``tffprod ARGS``; seconds until it said what it is doing on stderr (starting ``says``), and until
    it finished."""
    import time

    start = time.perf_counter()
    proc = subprocess.Popen([TFFPROD, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    first = proc.stderr.readline()
    said = time.perf_counter() - start
    rest, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert first.startswith(says), first
    assert err.strip().splitlines()[-1].startswith("planned in ") and "written to" in rest
    return said, time.perf_counter() - start


def test_demo_trains_through_real_sites_and_leaves_everything_in_the_workdir(tmp_path):
    from tffprod.examples import fraud
    from tffprod.sessions.spec import load_spec

    proc = tffprod("demo", "--workdir", str(tmp_path / "demo"), "--rounds", "3", "--json", cwd=tmp_path)
    summary = json.loads(proc.stdout)
    work, banks = tmp_path / "demo", list(fraud.FRAUD_RATES)
    assert summary["backend"] == "remote"
    assert Path(summary["registry"]) == work / "tffprod.db" and (work / "tffprod.db").is_file()
    assert Path(summary["spec"]).parent == work and Path(summary["spec"]).suffix == ".toml"
    assert (Path(summary["saved_model"]) / "saved_model.pb").is_file()
    assert {Path(p) for p in summary["sites"].values()} == {work / "sites" / s / "site.toml" for s in banks}
    # User-level DP with the noise at the banks and secure aggregation, within epsilon 5.
    spec = load_spec(Path(summary["spec"]))
    assert spec.sampling.user_update == "one_step" and spec.dp.secure_aggregation
    assert spec.dp.noise_placement == "distributed"
    shown = json.loads(tffprod("model", "show", summary["model"], "--registry", summary["registry"], "--json",
                               cwd=tmp_path).stdout)
    assert summary["accuracy"] == shown["metrics"]["eval"]["binary_accuracy"]
    assert summary["auc"] == shown["metrics"]["eval"]["auc"]
    assert 0 < summary["epsilon"] == shown["epsilon"] <= 5 and summary["delta"] <= 1e-5
    assert shown["dp"]["privacy"]["unit"] == "client (column customer_id)"
    assert summary["privacy"]["against_coordinator"]["secure_aggregation"] is True
    assert shown["dp"]["privacy"]["against_coordinator"]["noise_placement"] == "distributed"
    assert set(summary["per_site"]) == {f"{b}/test:1" for b in banks}
    # The comparison ran on the same data: non-private FedAvg and a centralized model.
    baseline = json.loads(tffprod("model", "show", summary["baseline"]["model"], "--registry",
                                  summary["baseline"]["registry"], "--json", cwd=tmp_path).stdout)
    assert summary["baseline"]["accuracy"] == baseline["metrics"]["eval"]["binary_accuracy"]
    assert baseline["dp"] == {"mechanism": "none"} and baseline["epsilon"] is None
    assert abs(summary["accuracy"] - summary["baseline"]["accuracy"]) <= 0.03
    assert 0.5 < summary["central"]["accuracy"] <= 1.0 and 0.5 < summary["central"]["auc"] <= 1.0
    assert 0.9 < summary["central"]["majority_accuracy"] < 1.0  # skewed labels: the demo prints AUC beside accuracy
    # Each site audited the coordinator's calls.
    for site in banks:
        audit = (work / "sites" / site / "state" / "audit.jsonl").read_text().splitlines()
        lines = [json.loads(line) for line in audit]
        assert lines and all(line["identity"] == "coordinator" for line in lines if line["method"] != "approve")
        assert any(line["method"] == "approve" and line["plan"] for line in lines)  # the operator's approval
        assert any(line.get("release", {}).get("round") == 3 for line in lines)  # the third round's release
    plan_cmd, *approve_cmds, run_cmd = summary["repeat_commands"]
    assert plan_cmd.startswith("tffprod session plan --spec ") and run_cmd.startswith("tffprod session run ")
    assert len(approve_cmds) == len(banks)
    # By hand: start the same sites from the configs the demo left, then repeat the training.
    sites = [subprocess.Popen([TFFPROD, "site", "serve", "--config", config, "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
             for config in summary["sites"].values()]
    try:
        for site in sites:
            assert _ready_info(site)["tls"] is True
        # The demo's plan has trained its 3 approved rounds: the coordinator refuses to replay it before
        # anything runs, and records nothing.
        before = json.loads(tffprod("session", "list", "--registry", summary["registry"], "--json",
                                    cwd=tmp_path).stdout)
        replay = tffprod("session", "run", "--plan", summary["plan"], "--registry", summary["registry"],
                         cwd=tmp_path, check=False)
        assert replay.returncode == 10 and f"has been used: session {summary['session_id']} trained 3 of its 3" \
            in replay.stderr
        assert json.loads(tffprod("session", "list", "--registry", summary["registry"], "--json",
                                  cwd=tmp_path).stdout) == before
        plan_cmd, *approve_cmds = summary["repeat_commands"][:-1]
        plan_args = shlex.split(plan_cmd)[1:]
        said, planned = _first_stderr_line(plan_args, cwd=tmp_path, says="planning fraud-user-dp: its datasets "
                                                                       "check out; compiling what the sites will run")
        # The same spec again: the computations compiled above are reused (a new plan, the same bytes).
        twin = [*plan_args[:plan_args.index("--out") + 1], str(tmp_path / "twin.plan.json"),
                *plan_args[plan_args.index("--out") + 2:]]
        said_again, planned_again = _first_stderr_line(twin, cwd=tmp_path, says="planning fraud-user-dp: its "
                                                       "datasets check out; reusing the computations compiled")
        first_plan, second_plan = (json.loads(Path(p).read_text()) for p in (plan_args[plan_args.index("--out") + 1],
                                                                              tmp_path / "twin.plan.json"))
        assert [c["sha256"] for c in first_plan["computations"]] == [c["sha256"] for c in second_plan["computations"]]
        print(f"\nsession plan: first line on stderr after {said:.2f} s, planned after {planned:.1f} s; the same "
              f"spec again: {said_again:.2f} s, planned after {planned_again:.1f} s")
        for command in approve_cmds:
            tffprod(*shlex.split(command)[1:], cwd=tmp_path)
        rerun = tffprod(*shlex.split(summary["repeat_commands"][-1])[1:], "--json", cwd=tmp_path)
        assert json.loads(rerun.stdout)["model_version"]["version"] == 2
    finally:
        for site in sites:
            site.terminate()
        for site in sites:
            assert site.wait(timeout=30) == 0

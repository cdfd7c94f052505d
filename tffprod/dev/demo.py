"""The end-to-end demo: three hospitals train a digits classifier with DP-FedAvg.

On the real path (the default): it prepares each hospital's data, issues
certificates and tokens, starts each hospital as its own ``tffprod site serve``
process (gateway + worker, mTLS on loopback), registers and syncs the sites,
trains through the gateways, evaluates at each site, exports a SavedModel, and
trains a centralized reference for comparison. With ``backend="local"`` the
sites are simulated by local workers instead. Every process it starts, it
stops; every file it makes stays in the workdir.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from tffprod.sessions.spec import SessionSpec, dump_spec

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore

TASK_PATH = "tffprod.examples.digits:task"
SPEC_FILE = "digits-dp.toml"
PLAN_FILE = "digits-dp.plan.json"


def demo_spec(rounds: int, sites: tuple[str, ...], backend: str) -> SessionSpec:
    """The demo's session: DP-FedAvg (fixed clipping) over the hospitals' training sets."""
    return SessionSpec.from_dict(
        {
            "name": "digits-dp",
            "task": TASK_PATH,
            "datasets": [f"{site}/train" for site in sites],
            "eval_datasets": [f"{site}/test" for site in sites],
            "rounds": rounds,
            "seed": 0,
            "backend": backend,
            "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": 0.1, "clip": 1.0, "delta": 1e-5},
        }
    )


def run_demo(
    workdir: Path,
    *,
    rounds: int = 25,
    backend: str = "remote",
    registry_factory: Callable[[Path], Any],
    progress: Optional[Callable] = None,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the whole demo in ``workdir``; returns a summary (paths, accuracy, epsilon, reference).

    Args:
        rounds: training rounds.
        backend: ``"remote"`` (real site processes over mTLS) or ``"local"`` (simulated sites).
        registry_factory: opens the registry at a path (``tffprod.registry.Registry.open``).
        progress: per-round callback.
        say: where to report steps, for people watching.
    """
    from tffprod.examples import digits

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"preparing digits data for {', '.join(digits.SITES)} in {workdir / 'data'}")
    paths = digits.prepare(workdir / "data")
    spec = demo_spec(rounds, digits.SITES, backend)
    spec_path = workdir / SPEC_FILE
    dump_spec(spec, spec_path)
    registry_path = workdir / "tffprod.db"
    with registry_factory(registry_path) as registry:
        if backend == "remote":
            summary = _train_with_sites(workdir, paths, spec, registry, progress, say)
        else:
            summary = _train_locally(workdir, paths, spec, registry, progress, say)
    say("training the centralized reference (pooled data, same passes)")
    reference = _central_reference(workdir / "data", rounds)
    summary.update({
        "workdir": str(workdir),
        "registry": str(registry_path),
        "spec": str(spec_path),
        "central_accuracy": reference.get("sparse_categorical_accuracy"),
        "repeat_commands": _repeat_commands(summary, spec_path, registry_path),
    })
    return summary


def _repeat_commands(summary: dict, spec_path: Path, registry_path: Path) -> list[str]:
    """How to train again by hand; with sites, a new plan each site approves (a plan's rounds are used up)."""
    run = f"tffprod session run --registry {registry_path}"
    if "plan" not in summary:
        return [f"{run} --spec {spec_path}"]
    plan = Path(summary["plan"]).with_name("again.plan.json")
    return ([f"tffprod session plan --spec {spec_path} --out {plan} --registry {registry_path}"]
            + [f"tffprod site approve {plan} --config {config}" for config in summary["sites"].values()]
            + [f"{run} --plan {plan}"])


def _train_with_sites(workdir, paths, spec, registry: RegistryStore, progress, say) -> dict[str, Any]:
    from tffprod.backends import create_backend
    from tffprod.examples import digits
    from tffprod.dev.local_sites import LocalFederation

    datasets = {site: {split: {"path": paths[site][split], "task": TASK_PATH} for split in ("train", "test")}
                for site in digits.SITES}
    federation = LocalFederation(workdir, datasets, computations="approved")
    say(f"issuing certificates and site configs in {workdir / 'certs'} and {workdir / 'sites'}")
    federation.prepare()
    with federation:
        for site, address in federation.addresses.items():
            say(f"site {site} serving on {address} (mTLS; log {federation.site_config_path(site).parent})")
        for row in federation.register(registry):
            say(f"synced {row['ref']} ({row['num_examples']} examples; path stays at the site)")
        plan_path = _plan_and_approve(spec, registry, federation, workdir, say)
        summary = _train(spec, registry, create_backend("remote", registry=registry), workdir, progress, say,
                         plan_path=plan_path)
        summary["plan"] = str(plan_path)
    summary["sites"] = {site: str(federation.site_config_path(site)) for site in digits.SITES}
    return summary


def _plan_and_approve(spec, registry: RegistryStore, federation, workdir, say) -> Path:
    """Compile the session into a plan and approve it at every site, as their operators would."""
    from tffprod.executors.approvals import approve_at_site
    from tffprod.executors.config import load_site_config
    from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
    from tffprod.sessions.planning import plan_session

    session_plan = plan_session(spec, registry=registry)
    document = make_plan(session_plan, coordinators=coordinator_identities(registry, session_plan.training_sites))
    plan_path = write_plan(document, workdir / PLAN_FILE)
    for site in federation.datasets:
        approval = approve_at_site(plan_path, load_site_config(federation.site_config_path(site)))
        say(f"site {site} approved plan {approval.plan_id[:16]} ('tffprod site plan show {plan_path}')")
    return plan_path


def _train_locally(workdir, paths, spec, registry: RegistryStore, progress, say) -> dict[str, Any]:
    from tffprod.backends import create_backend
    from tffprod.data.register import register_dataset
    from tffprod.examples import digits

    for site in digits.SITES:
        for split in ("train", "test"):
            row = register_dataset(registry, f"{site}/{split}", paths[site][split], schema=digits.SCHEMA)
            say(f"registered {row['ref']} ({row['num_examples']} examples)")
    backend = create_backend("local", log_dir=workdir / "logs")
    return _train(spec, registry, backend, workdir, progress, say)


def _train(spec, registry: RegistryStore, backend, workdir, progress, say, plan_path=None) -> dict[str, Any]:
    from tffprod.models.export import export_artifact
    from tffprod.sessions.runner import train_from_plan
    from tffprod.sessions.runner import train

    say(f"training {spec.name}: {spec.rounds} rounds of DP-FedAvg over {len(spec.datasets)} sites ({backend.name})")
    if plan_path is not None:
        result = train_from_plan(plan_path, registry=registry, backend=backend, progress=progress)
    else:
        result = train(spec, registry=registry, backend=backend, progress=progress)
    version = result["model_version"]
    evaluations = registry.list_evaluations(version["name"], version["version"])
    export_dir = workdir / "export" / f"{version['name']}-v{version['version']}"
    export_artifact(version["artifact_path"], export_dir)
    return {
        "backend": backend.name,
        "session_id": result["id"],
        "model": f"{version['name']}:{version['version']}",
        "saved_model": str(export_dir),
        "accuracy": version["metrics"].get("eval", {}).get("sparse_categorical_accuracy"),
        "per_site_accuracy": {e["dataset"]: e["metrics"].get("sparse_categorical_accuracy") for e in evaluations},
        "epsilon": version["epsilon"],
        "delta": version["delta"],
    }


def _central_reference(data_dir: Path, rounds: int) -> dict[str, float]:
    from tffprod.dev.centralized import train_centrally
    from tffprod.examples import digits

    central = data_dir / digits.CENTRAL
    return train_centrally(digits.task, central / "train.tfrecord", central / "test.tfrecord", fmt="tfrecord",
                           epochs=rounds)

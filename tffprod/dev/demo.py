"""The end-to-end demo: three banks train a fraud model with user-level DP that holds against the coordinator.

Each bank has thousands of customers; DP protects every customer (user-level DP,
``[sampling] user_update = "one_step"``): each round samples customers at rate
``SAMPLING_RATE``, each sampled customer takes one clipped step, each bank adds its
share of the Gaussian noise before anything leaves it (``noise_placement =
"distributed"``) and the coordinator learns only the sum of the banks' releases
(``secure_aggregation``). The noise multiplier is calibrated so that the session's
epsilon stays at most ``TARGET_EPSILON`` at ``DELTA``, whatever the number of rounds.

On the real path (the default): it prepares each bank's data, issues certificates and
tokens, starts each bank as its own ``tffprod site serve`` process (gateway + worker,
mTLS on loopback), registers and syncs the sites, compiles the session into a plan
each bank approves, trains through the gateways, evaluates at each bank and exports a
SavedModel. With ``backend="local"`` the banks are simulated by local workers. Then,
for comparison on the same data, non-private FedAvg (simulated banks, one client
each) and a centralized model on the pooled data. Every process it starts, it stops;
every file it makes stays in the workdir.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from tffprod.sessions.spec import SessionSpec, dump_spec

if TYPE_CHECKING:
    from tffprod.registry.protocol import RegistryStore

TASK_PATH = "tffprod.examples.fraud:user_task"
BASELINE_TASK_PATH = "tffprod.examples.fraud:task"
SPEC_FILE = "fraud-user-dp.toml"
PLAN_FILE = "fraud-user-dp.plan.json"
TRANSACTIONS_PER_BANK = 30_000
CUSTOMERS_PER_BANK = 3_000
SAMPLING_RATE = 0.1  # each customer's chance to take part in a round
CLIP = 2.0  # the L2 bound on one customer's step
TARGET_EPSILON = 4.5  # calibrated below 5: secure aggregation's discrete noise costs a little epsilon
DELTA = 1e-5
BASELINE_ROUNDS = 10  # non-private FedAvg and the centralized reference: passes over the data


def calibrated_noise(rounds: int) -> float:
    """The noise multiplier that keeps ``rounds`` rounds at ``SAMPLING_RATE`` within ``TARGET_EPSILON``."""
    from tffprod.privacy.calibrate import noise_for

    return round(noise_for(TARGET_EPSILON, delta=DELTA, rounds=rounds, sampling_rate=SAMPLING_RATE).noise_multiplier
                 + 5e-4, 3)  # rounded up: never below the calibrated noise


def demo_spec(rounds: int, banks: tuple[str, ...], backend: str) -> SessionSpec:
    """The demo's session: user-level DP, one step per sampled customer, noise at the banks, secure sum."""
    return SessionSpec.from_dict(
        {
            "name": "fraud-user-dp",
            "task": TASK_PATH,
            "datasets": [f"{bank}/train" for bank in banks],
            "eval_datasets": [f"{bank}/test" for bank in banks],
            "rounds": rounds,
            "seed": 0,
            "backend": backend,
            "min_sites": len(banks),
            "dp": {"mechanism": "gaussian_fixed", "noise_multiplier": calibrated_noise(rounds), "clip": CLIP,
                   "delta": DELTA, "noise_placement": "distributed", "secure_aggregation": True},
            "sampling": {"client_rate": SAMPLING_RATE, "user_update": "one_step"},
        }
    )


def run_demo(
    workdir: Path,
    *,
    rounds: int = 60,
    backend: str = "remote",
    registry_factory: Callable[[Path], Any],
    progress: Optional[Callable] = None,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the whole demo in ``workdir``; returns a summary (paths, metrics, epsilon, comparisons).

    Args:
        rounds: rounds of the user-level DP session.
        backend: ``"remote"`` (real site processes over mTLS) or ``"local"`` (simulated sites).
        registry_factory: opens the registry at a path (``tffprod.registry.Registry.open``).
        progress: per-round callback.
        say: where to report steps, for people watching.
    """
    from tffprod.examples import fraud

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    banks = tuple(fraud.FRAUD_RATES)
    say(f"preparing fraud data for {', '.join(banks)} ({CUSTOMERS_PER_BANK} customers, "
        f"{TRANSACTIONS_PER_BANK} transactions each) in {workdir / 'data'}")
    paths = fraud.prepare(workdir / "data", n_per_bank=TRANSACTIONS_PER_BANK, customers_per_bank=CUSTOMERS_PER_BANK)
    spec = demo_spec(rounds, banks, backend)
    spec_path = workdir / SPEC_FILE
    dump_spec(spec, spec_path)
    registry_path = workdir / "tffprod.db"
    with registry_factory(registry_path) as registry:
        if backend == "remote":
            summary = _train_with_sites(workdir, paths, spec, registry, progress, say)
        else:
            summary = _train_locally(workdir, paths, spec, registry, progress, say)
    baseline_rounds = min(rounds, BASELINE_ROUNDS)
    say(f"training non-private FedAvg for comparison ({baseline_rounds} rounds, simulated banks, one client each)")
    baseline = _fedavg_baseline(workdir / "baseline", paths, baseline_rounds, registry_factory)
    say(f"training the centralized reference (pooled data, {baseline_rounds} passes)")
    central = _central_reference(workdir / "data", paths, baseline_rounds)
    summary.update({
        "workdir": str(workdir),
        "registry": str(registry_path),
        "spec": str(spec_path),
        "baseline": {"rounds": baseline_rounds, **baseline},
        "central": {"epochs": baseline_rounds, **central},
        "repeat_commands": _repeat_commands(summary, spec_path, registry_path),
    })
    return summary


def _metrics(metrics: dict[str, Any]) -> dict[str, Optional[float]]:
    """Accuracy and AUC from a fraud model's evaluation metrics."""
    return {"accuracy": metrics.get("binary_accuracy"), "auc": metrics.get("auc")}


def _repeat_commands(summary: dict, spec_path: Path, registry_path: Path) -> list[str]:
    """How to train again by hand: a new plan each bank approves (a plan's rounds are used up)."""
    run = f"tffprod session run --registry {registry_path}"
    if "sites" not in summary:
        return [f"{run} --spec {spec_path}"]
    plan = Path(summary["plan"]).with_name("again.plan.json")
    return ([f"tffprod session plan --spec {spec_path} --out {plan} --registry {registry_path}"]
            + [f"tffprod site approve {plan} --config {config}" for config in summary["sites"].values()]
            + [f"{run} --plan {plan}"])


def _site_datasets(paths: dict) -> dict[str, dict[str, dict[str, Any]]]:
    """Each bank's datasets: training data with one client per customer, test data as one."""
    from tffprod.examples import fraud

    return {bank: {"train": {"path": split["train"], "task": TASK_PATH, "client_id": fraud.CUSTOMER_ID},
                   "test": {"path": split["test"], "task": TASK_PATH}}
            for bank, split in paths.items()}


def _train_with_sites(workdir, paths, spec, registry: RegistryStore, progress, say) -> dict[str, Any]:
    from tffprod.backends import create_backend
    from tffprod.dev.local_sites import LocalFederation

    federation = LocalFederation(workdir, _site_datasets(paths), computations="approved")
    say(f"issuing certificates and site configs in {workdir / 'certs'} and {workdir / 'sites'}")
    federation.prepare()
    with federation:
        for site, address in federation.addresses.items():
            say(f"site {site} serving on {address} (mTLS; log {federation.site_config_path(site).parent})")
        for row in federation.register(registry):
            clients = f", {row['num_clients']} customers" if row.get("client_id") else ""
            say(f"synced {row['ref']} ({row['num_examples']} examples{clients}; the file stays at the bank)")
        plan_path = _plan_and_approve(spec, registry, federation, workdir, say)
        summary = _train(spec, registry, create_backend("remote", registry=registry), workdir, progress, say,
                         plan_path=plan_path)
        summary["plan"] = str(plan_path)
    summary["sites"] = {site: str(federation.site_config_path(site)) for site in federation.datasets}
    return summary


def _plan_and_approve(spec, registry: RegistryStore, federation, workdir, say) -> Path:
    """Compile the session into a plan and approve it at every site, as their operators would."""
    from tffprod.executors.approvals import approve_at_site
    from tffprod.executors.config import load_site_config
    from tffprod.sessions.approval import coordinator_identities, make_plan, write_plan
    from tffprod.sessions.planning import plan_session

    say("compiling the session into a plan (about 20 s)")
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
    from tffprod.examples import fraud

    for bank, split in paths.items():
        for name, path in split.items():
            client_id = fraud.CUSTOMER_ID if name == "train" else None
            row = register_dataset(registry, f"{bank}/{name}", path, schema=fraud.SCHEMA, client_id=client_id)
            say(f"registered {row['ref']} ({row['num_examples']} examples)")
    backend = create_backend("local", log_dir=workdir / "logs")
    return _train(spec, registry, backend, workdir, progress, say)


def _train(spec, registry: RegistryStore, backend, workdir, progress, say, plan_path=None) -> dict[str, Any]:
    from tffprod.models.export import export_artifact
    from tffprod.sessions.runner import train, train_from_plan

    dp = spec.dp
    say(f"training {spec.name}: {spec.rounds} rounds over {len(spec.datasets)} banks ({backend.name}); "
        f"customers sampled at {SAMPLING_RATE:g}, noise multiplier {dp.noise_multiplier:g} added at the banks, "
        "secure aggregation")
    if plan_path is not None:
        result = train_from_plan(plan_path, registry=registry, backend=backend, progress=progress)
    else:
        result = train(spec, registry=registry, backend=backend, progress=progress,
                       artifacts_dir=workdir / "artifacts")
    version = result["model_version"]
    evaluations = registry.list_evaluations(version["name"], version["version"])
    export_dir = workdir / "export" / f"{version['name']}-v{version['version']}"
    export_artifact(version["artifact_path"], export_dir)
    privacy = version["dp"]["privacy"]
    return {
        "backend": backend.name,
        "session_id": result["id"],
        "model": f"{version['name']}:{version['version']}",
        "saved_model": str(export_dir),
        **_metrics(version["metrics"].get("eval", {})),
        "per_site": {e["dataset"]: _metrics(e["metrics"]) for e in evaluations},
        "epsilon": version["epsilon"],
        "delta": version["delta"],
        "privacy": {"unit": privacy["unit"], "sampling_rate": SAMPLING_RATE,
                    "noise_multiplier": dp.noise_multiplier, "clip": dp.clip,
                    "against_coordinator": privacy.get("against_coordinator")},
    }


def _fedavg_baseline(workdir: Path, paths: dict, rounds: int, registry_factory) -> dict[str, Any]:
    """Non-private FedAvg on the same files: each bank one client, every round, simulated locally."""
    from tffprod.backends import create_backend
    from tffprod.data.register import register_dataset
    from tffprod.examples import fraud
    from tffprod.sessions.runner import train

    workdir.mkdir(parents=True, exist_ok=True)
    spec = SessionSpec.from_dict({
        "name": "fraud-fedavg", "task": BASELINE_TASK_PATH, "rounds": rounds, "seed": 0,
        "datasets": [f"{bank}/train" for bank in paths], "eval_datasets": [f"{bank}/test" for bank in paths],
    })
    with registry_factory(workdir / "tffprod.db") as registry:
        for bank, split in paths.items():
            for name, path in split.items():
                register_dataset(registry, f"{bank}/{name}", path, schema=fraud.SCHEMA)
        result = train(spec, registry=registry, backend=create_backend("local", log_dir=workdir / "logs"),
                       artifacts_dir=workdir / "artifacts")
    version = result["model_version"]
    return {"registry": str(workdir / "tffprod.db"), "model": f"{version['name']}:{version['version']}",
            **_metrics(version["metrics"]["eval"])}


def _central_reference(data_dir: Path, paths: dict, epochs: int) -> dict[str, Any]:
    from tffprod.dev.centralized import train_centrally
    from tffprod.examples import fraud

    pooled = fraud.pool(paths, data_dir / "central")
    metrics = _metrics(train_centrally(fraud.task, pooled["train"], pooled["test"], fmt="csv", epochs=epochs))
    return {**metrics, "majority_accuracy": _majority_accuracy(pooled["test"])}


def _majority_accuracy(path: Path) -> float:
    """The accuracy of always answering "not fraud" on a CSV file: what accuracy means on skewed labels."""
    import csv

    from tffprod.examples import fraud

    with open(path, newline="") as f:
        labels = [int(row[fraud.SCHEMA.label.name]) for row in csv.DictReader(f)]
    return labels.count(0) / len(labels)

"""Hand-built plans, site configs and catalogs for one site (``SITE``), TF-free (unit tests of plans,
approvals, the site ledger and federations)."""

from __future__ import annotations

import json
from pathlib import Path

from tffprod.executors.datarefs import CatalogEntry
from tffprod.protocol.plan_document import PLAN_FORMAT, canonical_id
from tffprod.protocol.protos import computation_pb2
from tests.helpers.site_plans import computation_entry, site_computation

SITE = "bank-a"
Z, DELTA = 1.1, 1e-5


def computation(result_placement: str = "server", all_equal: bool = True,
                name: str = "x") -> computation_pb2.Computation:
    return site_computation(name, result_placement=result_placement, result_all_equal=all_equal)


def plan_document(*, sites=(SITE,), rounds=3, comp=None, hashes=None, privacy=None, coordinator=None) -> dict:
    comp = comp or computation()
    body = {
        "format": PLAN_FORMAT,
        "created_at": "2026-11-25T00:00:00+00:00",
        "session": {"name": "fraud", "rounds": rounds, "seed": 0, "min_sites": 1},
        "spec": {"task": "tffprod.examples.fraud:task"},
        "task": {"task": "tffprod.examples.fraud:task"},
        "privacy": privacy or {"mechanism": "gaussian_fixed", "noise_multiplier": Z, "clip": 1.0, "delta": DELTA,
                               "sampling_rate": 1.0, "accountant": "rdp", "unit": "site dataset (site-level)",
                               "planned_epsilon": 1.0},
        "datasets": [{"role": "train", "ref": f"{s}/train:1", "site": s, "name": "train",
                      "content_hash": "sha256:abc", "num_examples": 10} for s in sites],
        "coordinators": {s: coordinator for s in sites} if coordinator else {},
        "computations": [computation_entry(comp, sha256=hashes,
                                           bound=(privacy or {}).get("clip", 1.0) if privacy is None or
                                           privacy.get("mechanism") == "gaussian_fixed" else None)],
    }
    return {**body, "plan_id": canonical_id(body)}


def write(tmp_path: Path, document: dict, name: str = "plan.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def catalog(content_hash: str = "sha256:abc", budget=None) -> dict[str, CatalogEntry]:
    return {"train": CatalogEntry("train", "/data/train.csv", "csv", {}, 10, content_hash, budget)}


def site_toml(tmp_path: Path, extra: str = "") -> Path:
    """A plaintext dev site config for SITE with one small CSV dataset 'train'; ``extra`` top-level lines."""
    data = tmp_path / "train.csv"
    data.write_text("amount,is_fraud\n1.0,0\n2.0,1\n")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"features": [{"name": "amount", "dtype": "float32"}],
                                  "label": {"name": "is_fraud", "dtype": "int64"}}))
    config = tmp_path / "site.toml"
    config.write_text(f'name = "{SITE}"\nlisten = "127.0.0.1:0"\ninsecure_dev = true\n{extra}'
                      '[[coordinators]]\nidentity = "c"\ntoken_sha256 = "' + "0" * 64 + '"\n'
                      f'[datasets.train]\npath = "{data}"\nschema_file = "{schema}"\n')
    return config

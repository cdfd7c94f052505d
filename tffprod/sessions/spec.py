"""Session specs: the TOML file that says what to train, on which data, with what privacy.

A spec is read with the standard library's ``tomllib`` and validated strictly:
an unknown key, a wrong type, a missing field or an out-of-range value raises
:class:`tffprod.errors.SpecError` with one line that names the file, the key and
the problem. Nothing here imports TensorFlow, TFF or dp_accounting.

Example::

    name = "digits-dp"
    task = "tffprod.examples.digits:task"
    datasets = ["hospital-a/train", "hospital-b/train:2"]
    rounds = 10

    [dp]
    mechanism = "gaussian_fixed"
    noise_multiplier = 0.5
    clip = 1.0
    delta = 1e-5

    [sampling]                  # only for datasets with a client-id column
    client_rate = 0.05          # Poisson: each client takes part with this chance;
    # clients_per_round = 20    # or exactly this many, drawn without replacement

    [reliability]               # optional: see tffprod.sessions.reliability
    quarantine_after = 3
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from tffprod.config import fields
from tffprod.config.names import LOWER_NAME, federation_name
from tffprod.config.reliability import ReliabilityConfig
from tffprod.privacy.mechanisms import get_mechanism
from tffprod.privacy.placement import model_noise_multiplier
from tffprod.privacy.config import DP_KEYS, SAMPLING_KEYS, DPConfig, SamplingConfig  # noqa: F401 (re-exported)
from tffprod.errors import SpecError
from tffprod.task import resolve_task, task_path
from tffprod.config.toml import read_toml, toml_document

BACKENDS = ("local", "remote")

# Site and dataset names follow the registry's rule (tffprod.registry.codec.check_name).
_DATASET_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(:[0-9]+)?$")

_TOP_REQUIRED = ("name", "task", "datasets", "rounds")
_TOP_KEYS = _TOP_REQUIRED + ("eval_datasets", "seed", "backend", "min_sites", "round_timeout_s", "federation", "dp",
                             "sampling", "reliability")
_TABLE_KEYS = (("dp", DP_KEYS), ("sampling", SAMPLING_KEYS),
               ("reliability", tuple(f.name for f in dataclasses.fields(ReliabilityConfig))))


# ---------------------------------------------------------------- value checks


MAX_ROUNDS = 1_000_000


def _dataset_refs(key: str, value: Any, *, allow_empty: bool) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"{key!r} must be an array of dataset refs, got {fields.type_name(value)} {value!r}")
    if not value and not allow_empty:
        raise SpecError(f"{key!r} must name at least one dataset")
    seen: set[str] = set()
    for ref in value:
        if not isinstance(ref, str) or not _DATASET_REF.match(ref):
            raise SpecError(f"{key!r}: {ref!r} is not a dataset ref of the form SITE/NAME or SITE/NAME:VERSION")
        site_name = ref.split(":")[0]
        if site_name in seen:
            raise SpecError(f"{key!r} names dataset {site_name!r} more than once")
        seen.add(site_name)
    return tuple(value)


# ---------------------------------------------------------------- SessionSpec


@dataclasses.dataclass(frozen=True)
class SessionSpec:
    """One federated training session, as a spec file declares it.

    Attributes:
        name: the model name the trained version is recorded under.
        task: ``module:attr`` or ``file.py:attr``; a relative file path read from a spec
            file is made absolute against that file's folder.
        datasets: training dataset refs (``SITE/NAME`` or ``SITE/NAME:VERSION``).
        rounds: number of training rounds (>= 1).
        eval_datasets: dataset refs evaluated after training.
        seed: seed of the initial weights and data shuffling (>= 0).
        backend: ``"local"`` or ``"remote"``.
        min_sites: fewest sites whose results a round needs to count.
        round_timeout_s: deadline of one round, in seconds.
        federation: the federation the session belongs to (its datasets must be at its sites), or None.
        dp: the differential privacy settings.
        sampling: client sampling (``[sampling]``), or None: every client every round.
        reliability: quarantine and per-round deadlines (``[reliability]``).
        source: the spec file this was read from, if any (not compared).
    """

    name: str
    task: str
    datasets: tuple[str, ...]
    rounds: int
    eval_datasets: tuple[str, ...] = ()
    seed: int = 0
    backend: str = "local"
    min_sites: int = 1
    round_timeout_s: float = 600.0
    federation: Optional[str] = None
    dp: DPConfig = DPConfig()
    sampling: Optional[SamplingConfig] = None
    reliability: ReliabilityConfig = ReliabilityConfig()
    source: Optional[str] = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        try:
            self._validate()
        except SpecError as e:
            raise SpecError(f"{self.source}: {e}" if self.source else str(e)) from None

    def _validate(self) -> None:
        set_ = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731
        name = fields.string("name", self.name)
        if not LOWER_NAME.match(name):
            raise SpecError(
                f"'name' must start with a lowercase letter or digit and hold only "
                f"lowercase letters, digits, '.', '_' and '-', got {name!r}"
            )
        task_path("task", self.task)
        set_("datasets", _dataset_refs("datasets", self.datasets, allow_empty=False))
        set_("eval_datasets", _dataset_refs("eval_datasets", self.eval_datasets, allow_empty=True))
        fields.integer("rounds", self.rounds, minimum=1, maximum=MAX_ROUNDS)
        fields.integer("seed", self.seed, minimum=0)
        fields.choice("backend", self.backend, BACKENDS)
        fields.integer("min_sites", self.min_sites, minimum=1)
        if self.min_sites > len(self.sites):
            raise SpecError(
                f"'min_sites' is {self.min_sites} but 'datasets' span only {len(self.sites)} site(s)"
            )
        set_("round_timeout_s", fields.number("round_timeout_s", self.round_timeout_s, lambda v: v > 0, "a number > 0"))
        if self.federation is not None:
            federation_name(fields.string("federation", self.federation))
        if not isinstance(self.dp, DPConfig):
            raise SpecError(f"'dp' must be a DPConfig, got {type(self.dp).__name__}")
        if self.sampling is not None and not isinstance(self.sampling, SamplingConfig):
            raise SpecError(f"'sampling' must be a SamplingConfig, got {type(self.sampling).__name__}")
        if not isinstance(self.reliability, ReliabilityConfig):
            raise SpecError(f"'reliability' must be a ReliabilityConfig, got {type(self.reliability).__name__}")
        self.reliability.check_timeout(self.round_timeout_s)
        if self.sampling is not None and self.sampling.user_update == "one_step" and \
                self.dp.mechanism != "gaussian_fixed":
            raise SpecError("'sampling.user_update' = \"one_step\" clips each sampled client's step at dp.clip "
                            "inside the site's computation: it needs [dp] mechanism = \"gaussian_fixed\"")
        if self.dp.secure_aggregation and len(self.sites) < 3:
            raise SpecError(f"'dp.secure_aggregation' needs at least 3 training sites (with 2, the sum and one's own "
                            f"release give away the other's); 'datasets' span {len(self.sites)}")
        # With sampling, clients per round are known only with the datasets (checked when planning).
        if self.sampling is None:
            get_mechanism(self.dp.mechanism).check_clients(self.dp, self.clients_per_round, "dataset(s) per round")

    @property
    def sites(self) -> tuple[str, ...]:
        """The distinct sites of ``datasets``, in order of first appearance."""
        return tuple(dict.fromkeys(ref.split("/")[0] for ref in self.datasets))

    @property
    def model_noise_multiplier(self) -> Optional[float]:
        """The noise multiplier of a round's sum, which the model's epsilon is accounted at (None
        without DP): ``dp.noise_multiplier``, times sqrt(min_sites) when each site adds it locally."""
        if not self.dp.enabled or self.dp.noise_multiplier is None:
            return None
        return model_noise_multiplier({"noise_multiplier": self.dp.noise_multiplier, "noise_sites": self.min_sites,
                                       "noise_placement": self.dp.noise_placement})

    @property
    def clients_per_round(self) -> int:
        """Clients that train each round without client-id columns: one per training dataset
        (with them, the session's ``Population`` knows the expected number)."""
        return len(self.datasets)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what ``from_dict`` reads back; ``source`` is left out)."""
        return {
            "name": self.name,
            "task": self.task,
            "datasets": list(self.datasets),
            "eval_datasets": list(self.eval_datasets),
            "rounds": self.rounds,
            "seed": self.seed,
            "backend": self.backend,
            "min_sites": self.min_sites,
            "round_timeout_s": self.round_timeout_s,
            **({"federation": self.federation} if self.federation is not None else {}),
            "dp": self.dp.to_dict(),
            **({"sampling": self.sampling.to_dict()} if self.sampling is not None else {}),
            # Only when set, so that specs (and plan ids) without the table stay as they were.
            **({"reliability": self.reliability.to_dict()} if self.reliability != ReliabilityConfig() else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: Optional[str] = None) -> "SessionSpec":
        """Validates plain data (a parsed TOML document) into a spec.

        Args:
            data: the spec's keys; ``dp`` is a nested table.
            source: the file the data came from: named in errors, and the folder that
                relative ``file.py`` task paths resolve against.

        Raises:
            SpecError: with one line naming the file, the key and the problem.
        """
        try:
            if not isinstance(data, Mapping):
                raise SpecError(f"a spec must be a table, got {fields.type_name(data)}")
            for key in data:
                if key not in _TOP_KEYS:
                    table = next((t for t, keys in _TABLE_KEYS if key in keys), None)
                    hint = f" (did you mean '[{table}] {key}'?)" if table else fields.did_you_mean(key, _TOP_KEYS)
                    raise SpecError(f"unknown key {key!r}{hint}")
            for key in _TOP_REQUIRED:
                if key not in data:
                    raise SpecError(f"missing required key {key!r}")
            values = dict(data)
            values["dp"] = DPConfig.from_dict(data["dp"]) if "dp" in data else DPConfig()
            if "sampling" in data:
                values["sampling"] = SamplingConfig.from_dict(data["sampling"])
            if "reliability" in data:
                values["reliability"] = ReliabilityConfig.from_dict(data["reliability"])
            values["task"] = resolve_task(task_path("task", data["task"]), source)
        except SpecError as e:
            raise SpecError(f"{source}: {e}" if source else str(e)) from None
        return cls(**values, source=source)


# ---------------------------------------------------------------- files


def load_spec(path: Union[str, os.PathLike]) -> SessionSpec:
    """Reads and validates a TOML session spec.

    Raises:
        SpecError: the file cannot be read, is not TOML, or is not a valid spec.
    """
    where = os.fspath(path)
    return SessionSpec.from_dict(read_toml(path, what="spec"), source=where)


def dump_spec(spec: SessionSpec, path: Union[str, os.PathLike]) -> None:
    """Writes ``spec`` as a TOML file that :func:`load_spec` reads back to an equal spec.

    A relative ``file.py`` task path (only a spec built in code has one) is written
    absolute, against the current folder, so that it keeps naming the same file.
    """
    data = spec.to_dict()
    # A relative file.py task path of a spec built in code means "from the current folder";
    # written as is, it would be read back relative to the new file's folder.
    data["task"] = resolve_task(spec.task, os.path.join(os.getcwd(), "_"))
    Path(path).write_text(toml_document(data), encoding="utf-8")  # the tables last

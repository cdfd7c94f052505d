"""The session spec's ``[dp]`` and ``[sampling]`` tables: how much noise, and who trains each round.

See :mod:`tffprod.sessions.spec` for a whole spec; both tables are optional. ``DPConfig()`` is
``mechanism = "none"``; no ``[sampling]`` table means every client (or site) every round.
Nothing here imports anything heavy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from tffprod.config import fields
from tffprod.errors import SpecError
from tffprod.privacy.mechanisms import MECHANISMS as REGISTERED
from tffprod.privacy.mechanisms import get_mechanism
from tffprod.privacy.placement import PLACEMENTS

MECHANISMS = tuple(REGISTERED)  # the names, in the registry's order
SAMPLING_KEYS = ("client_rate", "clients_per_round", "user_update")
USER_UPDATES = ("local_epochs", "one_step")
_DP_KEYS = {name: ("mechanism", *mechanism.keys) for name, mechanism in REGISTERED.items()}
ON_BUDGET = ("refuse", "stop")
EVAL_BOUND = 16.2  # Keras' cross-entropy clips probabilities to [1e-7, 1 - 1e-7]: at most 16.12 per example
DP_KEYS = tuple(dict.fromkeys(key for keys in reversed(list(_DP_KEYS.values())) for key in keys))


# ---------------------------------------------------------------- DPConfig


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """How model updates are made differentially private (the spec's ``[dp]`` table).

    Attributes:
        mechanism: a name in :data:`tffprod.privacy.mechanisms.MECHANISMS`: ``"none"``,
            ``"gaussian_fixed"`` or ``"gaussian_adaptive"``.
        noise_multiplier: Gaussian noise stddev over the clip norm (>= 0); None for ``none``.
        clip: the L2 clip norm (fixed) or the initial clip norm (adaptive); > 0.
        target_quantile: adaptive only: the quantile of update norms the clip tracks, in (0, 1).
        learning_rate: adaptive only: the clip's learning rate (>= 0).
        delta: the delta epsilon is reported for, in (0, 1).
        on_budget: when the planned epsilon exceeds a dataset's remaining privacy budget:
            ``"refuse"`` to start (the default), or ``"stop"`` after the last round that fits.
        noise_placement: fixed clip only: where the noise is added, ``"coordinator"`` (the default),
            ``"distributed"`` or ``"local"`` (at each site; :mod:`tffprod.privacy.placement`).
        secure_aggregation: fixed clip with distributed noise only: the sites quantize their releases,
            add discrete Gaussian noise shares and mask them, so the coordinator learns only their sum
            (:mod:`tffprod.privacy.secagg`).
        eval_noise_multiplier: the sites noise each evaluation release at this multiplier times
            ``eval_bound`` (per metric), and charge it to the evaluation dataset's budget; None: evaluation
            metrics leave un-noised (a site refuses that for a dataset with a budget).
        eval_bound: the most one example adds to any evaluation metric sum (default 16.2: Keras'
            cross-entropy is at most -ln 1e-7 = 16.12 per example; counts add 1).
    """

    mechanism: str = "none"
    noise_multiplier: Optional[float] = None
    clip: Optional[float] = None
    target_quantile: Optional[float] = None
    learning_rate: Optional[float] = None
    delta: Optional[float] = None
    on_budget: Optional[str] = None
    noise_placement: Optional[str] = None
    secure_aggregation: Optional[bool] = None
    eval_noise_multiplier: Optional[float] = None
    eval_bound: Optional[float] = None

    def __post_init__(self) -> None:
        mechanism = fields.choice("dp.mechanism", self.mechanism, MECHANISMS)
        applicable = _DP_KEYS[mechanism]
        for key in DP_KEYS:
            if key not in applicable and getattr(self, key) is not None:
                raise SpecError(_not_applicable(key, mechanism))
        if not self.enabled:
            return
        for key, default in get_mechanism(mechanism).defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, default)
        object.__setattr__(self, "on_budget", fields.choice("dp.on_budget", self.on_budget or "refuse", ON_BUDGET))
        if "noise_placement" in applicable:
            object.__setattr__(self, "noise_placement", fields.choice(
                "dp.noise_placement", self.noise_placement or "coordinator", PLACEMENTS))
        if "secure_aggregation" in applicable:
            secure = fields.boolean("dp.secure_aggregation", bool(self.secure_aggregation) if
                                    self.secure_aggregation is None else self.secure_aggregation)
            object.__setattr__(self, "secure_aggregation", secure)
            if secure and self.noise_placement != "distributed":
                raise SpecError("'dp.secure_aggregation' sums the sites' noise shares: it needs "
                                "noise_placement = \"distributed\"")
        for key in get_mechanism(mechanism).required:
            if getattr(self, key) is None:
                raise SpecError(f"missing required key 'dp.{key}' for mechanism {mechanism!r}")
        if self.eval_noise_multiplier is not None and self.eval_bound is None:
            object.__setattr__(self, "eval_bound", EVAL_BOUND)
        if self.eval_bound is not None and self.eval_noise_multiplier is None:
            raise SpecError("'dp.eval_bound' applies only with 'dp.eval_noise_multiplier'")
        checks = {
            "eval_noise_multiplier": (lambda v: v > 0, "a number > 0"),
            "eval_bound": (lambda v: v > 0, "a number > 0"),
            "noise_multiplier": (lambda v: v >= 0, "a number >= 0"),
            "clip": (lambda v: v > 0, "a number > 0"),
            "target_quantile": (lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)"),
            "learning_rate": (lambda v: v >= 0, "a number >= 0"),
            "delta": (lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)"),
        }
        for key in (k for k in applicable if k in checks and getattr(self, k) is not None):
            ok, want = checks[key]
            object.__setattr__(self, key, fields.number(f"dp.{key}", getattr(self, key), ok, want))

    @property
    def enabled(self) -> bool:
        """True unless the mechanism adds no noise (``none``)."""
        return get_mechanism(self.mechanism).private

    def to_dict(self) -> dict[str, Any]:
        """The ``[dp]`` table: the mechanism and only the keys that apply to it (and are set)."""
        return {key: getattr(self, key) for key in _DP_KEYS[self.mechanism] if getattr(self, key) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DPConfig":
        """Builds a config from a ``[dp]`` table.

        Raises:
            SpecError: on an unknown or inapplicable key, a missing key or a bad value.
        """
        if not isinstance(data, Mapping):
            raise SpecError(f"'dp' must be a table, got {fields.type_name(data)} {data!r}")
        for key in data:
            if key not in DP_KEYS:
                raise SpecError(f"unknown key 'dp.{key}'{fields.did_you_mean(key, DP_KEYS)}")
        if "mechanism" not in data:
            raise SpecError("missing required key 'dp.mechanism' (one of " + ", ".join(MECHANISMS) + ")")
        return cls(**data)


def _not_applicable(key: str, mechanism: str) -> str:
    owners = [m for m, keys in _DP_KEYS.items() if key in keys]
    return (
        f"key 'dp.{key}' does not apply to mechanism {mechanism!r} "
        f"(only to {', '.join(repr(m) for m in owners)})"
    )


# ---------------------------------------------------------------- SamplingConfig


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Which clients train each round (the spec's ``[sampling]`` table); exactly one key.

    Sampling draws from every client of every training dataset across sites, so it needs
    datasets with a client-id column; draws come from a numpy Generator seeded with the
    spec's ``seed``, so a session is reproducible.

    Attributes:
        client_rate: Poisson sampling: each client takes part in a round with this
            probability q, in (0, 1]; DP accounting uses q.
        clients_per_round: exactly this many clients a round, drawn without replacement;
            DP accounting uses k of N (replace-one neighbours).
        user_update: how a sampled client's update is made: ``"local_epochs"`` (the default: each
            client trains the task's local epochs as a TFF client of its own) or ``"one_step"`` (one
            gradient step per client, every sampled client of a site computed at once:
            :mod:`tffprod.training.user_level`; needs ``gaussian_fixed``).
    """

    client_rate: Optional[float] = None
    clients_per_round: Optional[int] = None
    user_update: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_update",
                           fields.choice("sampling.user_update", self.user_update or "local_epochs", USER_UPDATES))
        if (self.client_rate is None) == (self.clients_per_round is None):
            raise SpecError("'[sampling]' needs exactly one of 'sampling.client_rate' (Poisson) "
                            "or 'sampling.clients_per_round' (a fixed number)")
        if self.client_rate is not None:
            object.__setattr__(self, "client_rate", fields.number("sampling.client_rate", self.client_rate,
                                                            lambda v: 0 < v <= 1, "a number with 0 < q <= 1"))
        else:
            fields.integer("sampling.clients_per_round", self.clients_per_round, minimum=1)

    @property
    def mode(self) -> str:
        """``"poisson"`` or ``"fixed"``."""
        return "poisson" if self.client_rate is not None else "fixed"

    def to_dict(self) -> dict[str, Any]:
        """The ``[sampling]`` table: its sampling key, and ``user_update`` unless it is the default."""
        table: dict[str, Any] = {"client_rate": self.client_rate} if self.mode == "poisson" else \
            {"clients_per_round": self.clients_per_round}
        return table if self.user_update == "local_epochs" else {**table, "user_update": self.user_update}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SamplingConfig":
        """Builds a config from a ``[sampling]`` table.

        Raises:
            SpecError: an unknown key, both or neither key, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise SpecError(f"'sampling' must be a table, got {fields.type_name(data)} {data!r}")
        for key in data:
            if key not in SAMPLING_KEYS:
                raise SpecError(f"unknown key 'sampling.{key}'{fields.did_you_mean(key, SAMPLING_KEYS)}")
        return cls(**data)

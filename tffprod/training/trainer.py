"""The coordinator's side of training: the compiled process and its server state.

A :class:`Trainer` compiles the session's learning process once (or, running a plan, takes the
coordinator's computations from the plan cache: :mod:`tffprod.training.coordinator`), runs rounds
through the :class:`tffprod.training.router.RoundRouter`, and saves or restores its server state
as round checkpoints (:mod:`tffprod.training.checkpoint`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from tffprod.backends.base import Backend
from tffprod.errors import SessionError
from tffprod.privacy.placement import AT_SITES

log = logging.getLogger(__name__)


def initial_weights(task: Any, seed: int) -> Any:
    """The task model's initial weights, drawn reproducibly from ``seed``."""
    import tensorflow as tf
    import tensorflow_federated as tff

    tf.keras.utils.set_random_seed(seed)
    return tff.learning.models.ModelWeights.from_model(task.model_fn())


def training_process(plan: Any) -> Any:
    """The session's TFF learning process over dataset references (imports TFF)."""
    from tffprod.training.process import build_training_process

    spec = plan.spec
    if one_step(spec):  # user-level DP, a site's sampled clients at once (tffprod.training.user_level)
        from tffprod.privacy.placement import AT_SITES
        from tffprod.training.user_level import build_user_level_process

        clip, z = float(spec.dp.clip or 0.0), float(spec.dp.noise_multiplier or 0.0)
        return build_user_level_process(plan.task, fmt=plan.fmt, clip=clip,
                                        expected_users=float(plan.population.expected_clients_per_round),
                                        noise_stddev=0.0 if spec.dp.noise_placement in AT_SITES else z * clip)
    return build_training_process(
        plan.task, spec.dp, fmt=plan.fmt, seed=spec.seed,
        clients_per_round=plan.population.expected_clients_per_round,
    )


def one_step(spec: Any) -> bool:
    """Whether a session's sampled clients each take one step, a site's all at once."""
    return spec.sampling is not None and spec.sampling.user_update == "one_step"


def build_coordinator(plan: Any) -> Any:
    """The coordinator's computations, from the session's process built and compiled to mergeable form."""
    import tensorflow_federated as tff

    from tffprod.training.coordinator import from_process

    process = training_process(plan)
    return from_process(process, tff.backends.native.compile_to_mergeable_comp_form(process.next))


class Trainer:
    """Holds the coordinator's computations and the server state between rounds.

    With ``frozen`` (a plan's computations), sites run the plan's frozen training
    computation instead of a fresh compile; its type must match the process's. When
    ``frozen.coordinator`` holds the coordinator's computations (from the plan cache), the
    process is not built at all.
    """

    def __init__(self, plan: Any, backend: Backend, frozen: Any = None) -> None:
        import tensorflow_federated as tff

        from tffprod.training.router import RoundRouter

        spec = plan.spec
        self._Struct = tff.structure.Struct
        self.computations = _coordinator_computations(plan, frozen)
        self.ctx = backend.coordinator_context()
        site_computation = None
        if frozen is not None:
            check_signature("train", frozen.train, self.computations.up_to_merge_type, frozen.plan_id)
            site_computation = frozen.train
        self.router = RoundRouter(backend, self.computations, timeout_s=spec.round_timeout_s,
                                  min_sites=spec.min_sites, site_computation=site_computation,
                                  secure=_secure_rounds(backend, frozen))
        state = self.ctx.invoke(self.computations.initialize, None)
        self.state = self.ctx.invoke(
            self.computations.set_model_weights, self._Struct.unnamed(state, initial_weights(plan.task, spec.seed))
        )
        self.min_sites = spec.min_sites
        # Noise at the sites: a round's sum carries the noise its epsilon is accounted at only with at
        # least min_sites releases, sampled or not (tffprod.privacy.placement).
        self.noise_shares = spec.min_sites if spec.dp.noise_placement in AT_SITES else None
        self.refs_by_site: dict[str, list[str]] = {}
        if not plan.population.client_level:
            for row in plan.datasets:
                self.refs_by_site.setdefault(row["site"], []).append(backend.reference(row))

    def run_round(self, refs_by_site: Optional[Mapping[str, list[str]]] = None, *,
                  timeout_s: Optional[float] = None, round_num: int = 0):
        """Round ``round_num`` over ``refs_by_site`` (default: every dataset, one client each)."""
        refs = self.refs_by_site if refs_by_site is None else refs_by_site
        if self.noise_shares and len(refs) < self.noise_shares:
            raise SessionError(f"round {round_num}: {len(refs)} site(s) take part, but with the noise at the sites "
                               f"the releases of min_sites = {self.noise_shares} must add up to the planned noise")
        needed = self.noise_shares or min(self.min_sites, len(refs))
        outcome = self.router.run_round(self.state, refs, min_sites=needed,
                                        timeout_s=timeout_s, round_num=round_num)
        self.state = outcome.output.state
        return outcome

    def save(self, directory: Path, round_num: int) -> tuple[Path, str]:
        """Write the server state as round ``round_num``'s checkpoint; ``(path, sha256)``."""
        from tffprod.training.checkpoint import save_checkpoint

        return save_checkpoint(self.state, directory, round_num)

    def restore(self, path: str, sha256: str) -> None:
        """Continue from a committed checkpoint (raises CheckpointError if it is damaged)."""
        from tffprod.training.checkpoint import load_checkpoint

        self.state = load_checkpoint(path, sha256, self.state)

    def dp_event(self) -> Any:
        """The DP event TFF's aggregator reports for the last round.

        Raises:
            SessionError: the process has no TFF DP aggregator state (e.g. a custom
                ``process_builder`` that ignored the DP aggregator it was given).
        """
        from tensorflow_federated.python.aggregators.differential_privacy import extract_dp_event_from_state

        try:
            return extract_dp_event_from_state(self.state.aggregator)
        except Exception as e:
            raise SessionError(
                "the spec asks for DP but the training process reports no DP event; a custom "
                f"process_builder must use the aggregator it is given ({type(e).__name__})"
            ) from e

    def weights(self) -> Any:
        return self.ctx.invoke(self.computations.get_model_weights, self.state)


def _coordinator_computations(plan: Any, frozen: Any) -> Any:
    """The plan cache's computations that ``frozen`` carries, or the ones built from the task now."""
    cached = getattr(frozen, "coordinator", None)
    if cached is not None:
        log.info("coordinator computations: from the %s, without building the training process", cached.source)
        return cached
    started = time.monotonic()
    built = build_coordinator(plan)
    log.info("coordinator computations: built from the task in %.1f s", time.monotonic() - started)
    return built


def _secure_rounds(backend: Backend, frozen: Any) -> Optional[Callable[[int, list[str]], Any]]:
    """Makes each round's secure aggregation, for a plan that has it (None otherwise)."""
    if frozen is None or "secure_aggregation" not in frozen.plan.privacy:
        return None
    from tffprod.backends.secure_round import SecureRound

    def send(site: str, step: str, message: Any) -> Any:
        return backend.secagg_sender(site)(step, message)

    return lambda round_num, sites: SecureRound(frozen.plan, round_num, sites, send)


def check_signature(role: str, frozen: Any, expected: Any, plan_id: str) -> None:
    """Refuse a frozen computation whose type differs from what this task compiles to now (``expected``:
    that computation, or its type as a string)."""
    if str(frozen.type_signature) != (expected if isinstance(expected, str) else str(expected.type_signature)):
        raise SessionError(f"plan {plan_id[:16]}: its {role} computation does not match the task as it is now; "
                           "make a new plan with 'tffprod session plan'")

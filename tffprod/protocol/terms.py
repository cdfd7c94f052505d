"""A plan's release terms: what a coordinator may choose in a release, and what it may not.

Each site computation of a plan carries, beside its bytes, its terms
(``computations[i]["state"]`` and ``["bound"]`` in the plan document):

* ``state.free``: path prefixes of the state leaves the coordinator sends every
  release (the model weights, and the server optimizer's state, which only the
  coordinator's part of a round reads);
* ``state.pinned``: every other state leaf, with its value fixed by the plan
  (client learning rate, clip, noise parameters, ...). The site fills these in
  itself: whatever a coordinator might send for them is never used;
* ``bound`` (DP plans): result path prefixes whose L2 norm may be at most
  ``l2_norm_per_client`` times the number of clients in the release (the sum of
  clipped updates), checked at the site before anything leaves.

Both ends read the terms with :class:`ReleaseTerms`: the coordinator to know
which leaves to send, the site to check and complete what it receives.
TF-free.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tffprod.protocol import release_pb2
from tffprod.protocol.signature import Leaf, SignatureError, SiteSignature, parse_computation
from tffprod.protocol.tensors import TensorError, check, from_numpy, to_numpy

__all__ = ["Bound", "ReleaseTerms", "TermsError", "pinned_entry"]

_NORM_SLACK = 1e-4  # float32 sums of clipped vectors may exceed the exact bound by rounding


class TermsError(ValueError):
    """A plan's release terms are missing or do not fit its computation."""


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


@dataclasses.dataclass(frozen=True)
class Bound:
    """The largest L2 norm of the result leaves under ``prefixes``, per client of a release."""

    prefixes: tuple[str, ...]
    l2_norm_per_client: float


def pinned_entry(leaf: Leaf, value: Any) -> dict[str, Any]:
    """The plan's JSON for a pinned leaf (readable in ``site plan show``)."""
    array = np.asarray(value)
    plain = [v.decode("utf-8") if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]
    return {"path": leaf.path, "dtype": leaf.dtype, "shape": list(leaf.shape),
            "value": plain[0] if not leaf.shape else plain}


def _pinned_tensor(entry: Mapping[str, Any], leaf: Leaf) -> release_pb2.Tensor:
    shape = entry.get("shape", ())
    if entry.get("dtype") != leaf.dtype or not isinstance(shape, list | tuple) or list(shape) != list(leaf.shape):
        raise TermsError(f"pinned state {leaf.path}: declared {entry.get('dtype')}{entry.get('shape')}, "
                         f"the computation takes {leaf.dtype}{list(leaf.shape)}")
    raw = entry.get("value")
    values = raw if isinstance(raw, list) else [raw]
    try:
        if leaf.dtype == "string":
            array = np.array([str(v).encode("utf-8") for v in values], dtype=object).reshape(leaf.shape)
        else:
            array = np.array(values, dtype=leaf.dtype).reshape(leaf.shape)
    except (TypeError, ValueError, OverflowError):
        raise TermsError(f"pinned state {leaf.path}: its value is not {leaf.dtype}{list(leaf.shape)}") from None
    tensor = from_numpy(array) if leaf.dtype != "string" else release_pb2.Tensor(
        dtype="string", shape=list(leaf.shape), strings=list(array.reshape(-1)))
    try:
        check(tensor, leaf.dtype, leaf.shape, f"pinned state {leaf.path}")
    except TensorError as e:
        raise TermsError(str(e)) from None
    return tensor


class ReleaseTerms:
    """One site computation of a plan with its terms.

    Args:
        entry: the plan's ``computations[i]`` (``role``, ``sha256``, ``state``, optional ``bound``).
        computation: the computation's bytes (already checked against ``sha256``).

    Raises:
        TermsError: the computation is not a site computation, or the terms do not cover its
            state exactly (every leaf free or pinned, pinned values of the right type).
    """

    def __init__(self, entry: Mapping[str, Any], computation: bytes) -> None:
        self.role = str(entry.get("role"))
        self.sha256 = str(entry.get("sha256"))
        self.computation = parse_computation(computation)
        try:
            self.signature = SiteSignature(self.computation)
        except SignatureError as e:
            raise TermsError(f"computation '{self.role}': {e}") from None
        state = entry.get("state")
        if not isinstance(state, Mapping) or not isinstance(state.get("free"), list) \
                or not isinstance(state.get("pinned"), list):
            raise TermsError(f"computation '{self.role}' has no release terms (state.free, state.pinned); "
                             "make a new plan with 'tffprod session plan'")
        self.free_prefixes = tuple(str(p) for p in state["free"])
        pinned = {e["path"]: e for e in state["pinned"] if isinstance(e, Mapping) and isinstance(e.get("path"), str)}
        self.free: list[Leaf] = []
        self._pinned: dict[str, release_pb2.Tensor] = {}
        for leaf in self.signature.state:
            if _under(leaf.path, self.free_prefixes):
                self.free.append(leaf)
            elif leaf.path in pinned:
                self._pinned[leaf.path] = _pinned_tensor(pinned.pop(leaf.path), leaf)
            else:
                raise TermsError(f"computation '{self.role}': state leaf {leaf.path} is neither free nor pinned")
        if pinned:
            raise TermsError(f"computation '{self.role}': pinned {sorted(map(str, pinned))[0]} is not in its state")
        self.bound = self._bound(entry.get("bound"))

    def _bound(self, raw: Any) -> Optional[Bound]:
        if raw is None:
            return None
        try:
            bound = Bound(tuple(str(p) for p in raw["result"]), float(raw["l2_norm_per_client"]))
        except (TypeError, KeyError, ValueError):
            raise TermsError(f"computation '{self.role}': bound needs 'result' and 'l2_norm_per_client'") from None
        if not any(_under(leaf.path, bound.prefixes) for leaf in self.signature.result) \
                or not bound.l2_norm_per_client > 0 or not math.isfinite(bound.l2_norm_per_client):
            raise TermsError(f"computation '{self.role}': its bound names no result leaf or is not positive")
        return bound

    def content_sizes(self) -> list[int]:
        """Each free state tensor's content bytes (0 for strings, which travel as a list)."""
        return [0 if leaf.dtype == "string" else math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
                for leaf in self.free]

    @property
    def state_bytes(self) -> int:
        """The largest state a release of this computation carries, in content bytes (no strings)."""
        return sum(self.content_sizes())

    def full_state(self, sent: Sequence[release_pb2.Tensor]) -> list[release_pb2.Tensor]:
        """Every state leaf: the free ones from ``sent`` (checked exactly), the pinned ones from the plan.

        Raises:
            TensorError: ``sent`` is not exactly the free leaves.
        """
        if len(sent) != len(self.free):
            raise TensorError(f"the plan's {self.role} state has {len(self.free)} free tensors, got {len(sent)}")
        for tensor, leaf in zip(sent, self.free):
            check(tensor, leaf.dtype, leaf.shape, f"state {leaf.path}")
        given = iter(sent)
        return [self._pinned[leaf.path] if leaf.path in self._pinned else next(given)
                for leaf in self.signature.state]

    def bounded_indices(self) -> list[int]:
        """Positions of the result tensors under the bound (the clipped sum); none without a bound."""
        if self.bound is None:
            return []
        return [i for i, leaf in enumerate(self.signature.result) if _under(leaf.path, self.bound.prefixes)]

    def result_slots(self) -> list[tuple[str, tuple[int, ...], bool]]:
        """Each result leaf as ``(dtype, shape, bounded)``, in order (how secure aggregation packs a release)."""
        bounded = set(self.bounded_indices())
        return [(leaf.dtype, tuple(leaf.shape), i in bounded) for i, leaf in enumerate(self.signature.result)]

    def check_result(self, result: Sequence[release_pb2.Tensor], clients: int) -> Optional[float]:
        """The bounded leaves' L2 norm (None without a bound).

        Raises:
            TensorError: the norm exceeds the bound for ``clients`` clients.
        """
        if self.bound is None:
            return None
        squares = 0.0
        for tensor, leaf in zip(result, self.signature.result):
            if _under(leaf.path, self.bound.prefixes):
                squares += float(np.sum(np.square(to_numpy(tensor).astype(np.float64))))
        norm = math.sqrt(squares)
        limit = clients * self.bound.l2_norm_per_client
        if not norm <= limit * (1 + _NORM_SLACK) + _NORM_SLACK:
            raise TensorError(f"the result's norm {norm:.4g} exceeds the plan's bound {limit:.4g} "
                              f"({clients} client(s) x {self.bound.l2_norm_per_client:g})")
        return norm

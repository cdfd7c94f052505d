"""What a plan with secure aggregation fixes, and what each round derives from it (both sides alike).

A plan's privacy terms carry ``secure_aggregation``: the plan's training sites, the modulus 2**bits,
the quantization (a clip is ``levels`` integer steps) and the fixed-point scale of the other result
tensors (metric sums). For a round, both the sites and the coordinator derive from them and from
the round's participants: the Shamir threshold (a majority), the packing of a release
(:mod:`tffprod.privacy.secagg.codec`) and the stddev of each site's discrete Gaussian noise share,
which makes the sum of ``noise_sites`` shares carry noise ``noise_multiplier`` times the sensitivity
of the quantized sum (:mod:`tffprod.privacy.discrete_gaussian`). TF-free.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from tffprod.privacy.discrete_gaussian import effective_noise_multiplier, integer_sensitivity, share_sigma
from tffprod.privacy.secagg.codec import Layout, Slot
from tffprod.privacy.secagg.errors import SecAggError

__all__ = ["BITS", "FIXED_SCALE", "LEVELS", "MIN_SITES", "RoundSettings", "layout_of", "plan_terms",
           "round_settings"]

BITS = 62  # the modulus 2**62: far above any sum, so nothing wraps in practice (and wrapping is post-processing)
LEVELS = 2**20  # integer steps per clip: rounding adds at most sqrt(dim) to a sensitivity of 2**20
FIXED_SCALE = 2.0**16  # metric sums: 1/65536 resolution
MIN_SITES = 3  # with 2, the sum and one's own input give away the other's


def plan_terms(sites: Sequence[str]) -> dict[str, Any]:
    """The ``secure_aggregation`` entry of a plan's privacy terms over its training ``sites``."""
    names = sorted(set(sites))
    if len(names) < MIN_SITES:
        raise SecAggError(f"secure aggregation needs at least {MIN_SITES} training sites, the plan has {len(names)}")
    return {"sites": names, "bits": BITS, "levels": LEVELS, "fixed_scale": FIXED_SCALE}


def layout_of(leaves: Sequence[tuple[str, Sequence[int], bool]]) -> Layout:
    """The packing of a release whose result leaves are ``(dtype, shape, bounded)``: the bounded
    (clipped-sum) leaves are quantized for DP, other float leaves are fixed point, integers as they are."""
    slots = []
    for dtype, shape, bounded in leaves:
        kind = "dp" if bounded else "int" if dtype.startswith(("int", "uint")) else "fixed"
        if bounded and not dtype.startswith("float"):
            raise SecAggError(f"a bounded result of dtype {dtype} cannot be quantized for DP")
        slots.append(Slot(dtype, tuple(int(d) for d in shape), kind))
    return Layout(tuple(slots))


@dataclasses.dataclass(frozen=True)
class RoundSettings:
    """One round's secure aggregation, as both sides derive it."""

    participants: tuple[str, ...]
    threshold: int
    bits: int
    scale: float
    fixed_scale: float
    layout: Layout
    share_sigma: float  # each site's discrete Gaussian stddev, in quantized units
    noise_multiplier: float  # the sum's effective noise multiplier (the KLS bound), for accounting

    def index(self, site: str) -> int:
        return self.participants.index(site)


def round_settings(privacy: Mapping[str, Any], participants: Sequence[str], layout: Layout) -> RoundSettings:
    """The settings of a round of a plan (its privacy terms) among ``participants``.

    Raises:
        SecAggError: the plan has no secure aggregation, or the participants are fewer than three,
            repeat, or are not the plan's training sites.
    """
    terms = privacy.get("secure_aggregation")
    if not isinstance(terms, Mapping):
        raise SecAggError("the plan has no secure aggregation")
    names = tuple(participants)
    allowed = set(terms.get("sites") or ())
    if len(set(names)) != len(names) or not set(names) <= allowed or len(names) < MIN_SITES:
        raise SecAggError(f"a round of secure aggregation needs at least {MIN_SITES} distinct sites of the plan, "
                          f"got {len(names)}")
    clip, z, shares = float(privacy["clip"]), float(privacy["noise_multiplier"]), int(privacy.get("noise_sites", 1))
    scale = float(terms["levels"]) / clip
    sigma = share_sigma(z, clip, scale, layout.dp_size, shares)
    l2, l1 = integer_sensitivity(clip, scale, layout.dp_size)
    return RoundSettings(participants=names, threshold=len(names) // 2 + 1, bits=int(terms["bits"]), scale=scale,
                         fixed_scale=float(terms["fixed_scale"]), layout=layout, share_sigma=sigma,
                         noise_multiplier=effective_noise_multiplier(sigma, shares, l2, l1))

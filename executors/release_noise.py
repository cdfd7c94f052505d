"""The noise a site adds to its training releases before they leave, as its approved plan says.

With the noise at the sites (``noise_placement`` distributed or local) a release's clipped sum gets
Gaussian noise at the plan's multiplier times the clip; under secure aggregation the whole release is
quantized, the clipped sum gets a discrete Gaussian share, and the result is masked for the round's
sum (:mod:`tffprod.executors.secagg_site`). Either way the noise comes from a stream keyed by the
site's secret and the request's digest (:mod:`tffprod.privacy.noise`): unpredictable to the caller,
the same for the same request. TF-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import grpc
import numpy as np

from tffprod.executors.approvals import Approval
from tffprod.executors.datarefs import RequestRefused
from tffprod.executors.secagg_site import SiteSecAgg
from tffprod.executors.site_secret import load_or_create
from tffprod.privacy import discrete_gaussian
from tffprod.privacy.noise import derive_key, standard_normal
from tffprod.privacy.placement import AT_SITES, site_stddev
from tffprod.privacy.secagg import SecAggError
from tffprod.privacy.secagg.codec import encode, reduce
from tffprod.privacy.secagg.settings import layout_of, round_settings
from tffprod.protocol import release_pb2
from tffprod.protocol.tensors import from_numpy, to_numpy

__all__ = ["ReleaseNoise"]


class ReleaseNoise:
    """Adds a site's noise to its training releases.

    Args:
        site: the site's name, for messages.
        state_dir: where the site's noise secret lives (``STATE_DIR``).
        credentials: the site's TLS ``(key, certificate, CA)`` PEM bytes, for secure aggregation.
    """

    def __init__(self, site: str, state_dir: Path, credentials: Optional[tuple[bytes, bytes, bytes]]) -> None:
        self.site = site
        self.secagg = SiteSecAgg(site, credentials)
        self._state_dir = state_dir
        self._secret: Optional[bytes] = None  # read when a plan first needs it

    def _key(self, digest: str) -> bytes:
        if self._secret is None:
            self._secret = load_or_create(self._state_dir)
        return derive_key(self._secret, bytes.fromhex(digest))

    def _refused(self, detail: str) -> RequestRefused:
        return RequestRefused(grpc.StatusCode.FAILED_PRECONDITION, f"site {self.site}: {detail}")

    def apply(self, approval: Approval, terms: Any, request: release_pb2.ReleaseRequest, result: list,
              digest: str) -> tuple[list, Optional[float]]:
        """A training release's result as it may leave, and the stddev of continuous noise added (or None)."""
        if "secure_aggregation" in approval.privacy:
            return self._masked(approval, terms, request, result, digest), None
        stddev = self.stddev(approval, terms)
        return (result, None) if stddev is None else (self._noised(terms, result, stddev, digest), stddev)

    def evaluation(self, approval: Approval, result: list, digest: str) -> tuple[list, Optional[float]]:
        """An evaluation release as it may leave: every metric sum noised at the plan's evaluation multiplier
        times its per-example bound times sqrt(number of sums) (the release's L2 sensitivity to one example);
        integer sums get the noise rounded. Un-noised when the plan noises no evaluation."""
        evaluation = approval.privacy.get("evaluation")
        if not isinstance(evaluation, dict) or not result:
            return result, None
        stddev = float(evaluation["noise_multiplier"]) * float(evaluation["bound"]) * len(result) ** 0.5
        arrays = [to_numpy(t) for t in result]
        normals = standard_normal(self._key(digest), sum(a.size for a in arrays))
        out, offset = [], 0
        for array in arrays:
            noise = normals[offset:offset + array.size].reshape(array.shape) * stddev
            offset += array.size
            noised = array.astype(np.float64) + (noise if array.dtype.kind == "f" else np.rint(noise))
            out.append(from_numpy(noised.astype(array.dtype)))
        return out, stddev

    def stddev(self, approval: Approval, terms: Any) -> Optional[float]:
        """The stddev this site adds to a training release of ``approval`` (None: the plan adds none here)."""
        if approval.privacy.get("noise_placement", "coordinator") not in AT_SITES:
            return None
        if terms.bound is None:  # approval refuses such a plan; never release un-noised instead
            raise self._refused(f"plan {approval.plan_id[:16]} puts the noise at the sites but bounds no release")
        return site_stddev(approval.privacy, terms.bound.l2_norm_per_client)

    def _noised(self, terms: Any, result: list, stddev: float, digest: str) -> list:
        """``result`` with N(0, stddev^2) added to each coordinate of its bounded (clipped-sum) tensors."""
        bounded = terms.bounded_indices()
        arrays = {i: to_numpy(result[i]) for i in bounded}
        normals = standard_normal(self._key(digest), sum(a.size for a in arrays.values()))
        out, offset = list(result), 0
        for i, array in arrays.items():
            if array.dtype.kind != "f":
                raise self._refused("the plan's clipped sum is not floating point; the site cannot noise it")
            noise = normals[offset:offset + array.size].reshape(array.shape) * stddev
            out[i] = from_numpy((array.astype(np.float64) + noise).astype(array.dtype))
            offset += array.size
        return out

    def _masked(self, approval: Approval, terms: Any, request: release_pb2.ReleaseRequest, result: list,
                digest: str) -> list:
        """``result`` quantized, with a discrete Gaussian share on the clipped sum, masked for the round."""
        settings = self.round_settings(approval, terms, request.secagg.round.participants)
        layout = settings.layout
        try:
            values = encode([to_numpy(t) for t in result], layout, scale=settings.scale,
                            fixed_scale=settings.fixed_scale, bits=settings.bits)
        except ValueError as e:
            raise self._refused(f"the release cannot be quantized: {e}") from None
        noise = discrete_gaussian.sample(self._key(digest), layout.dp_size, settings.share_sigma)
        values[layout.dp_positions] += noise
        masked = self.secagg.mask(approval.plan_id, request.round, settings, request.secagg,
                                   reduce(values, settings.bits))
        return [from_numpy(masked)]

    def round_settings(self, approval: Approval, terms: Any, participants: Any) -> Any:
        """The secure aggregation settings of a round of ``approval`` among ``participants`` (its training
        computation's ``terms`` give the packing).

        Raises:
            RequestRefused: INVALID_ARGUMENT when the participants are not three or more of the plan's sites.
        """
        try:
            return round_settings(approval.privacy, list(participants), layout_of(terms.result_slots()))
        except SecAggError as e:
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, f"site {self.site}: {e}") from None
